"""LM-CORE: give a language model the retrieved facts in its input and train it to read them.

An input (a cloze prompt such as "trobex was born in") is paired with a knowledge context: the
retrieved triples verbalised through their relation templates. The model is trained with the answer
recoverable from the context, so it learns to copy knowledge from the context rather than store it;
then the knowledge graph can change without retraining (Kaur et al., Findings of NAACL 2022).

Readers: `GPTReader` (lmlab GPT + a char or BPE tokenizer, causal objective) and `HFReader` (a local
Hugging Face causal LM, or a masked LM whose answer span is masked as in LM-CORE's entity masking).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.generate import generate
from lmlab.methods.knowledge.kg import KnowledgeGraph, Probe, Triple, norm
from lmlab.methods.knowledge.retrieval import Retriever, recall_at_k
from lmlab.model import GPT, IGNORE_INDEX, GPTConfig
from lmlab.tokenizer import BPETokenizer, CharTokenizer, Tokenizer
from lmlab.train import fit
from lmlab.utils import LmlabError, pad_batch

SEP, UNK = "<sep>", "?"


@dataclass
class ReadExample:
    context: str  # verbalised knowledge ("" for none)
    prompt: str  # text before the answer
    answer: str
    suffix: str = ""  # text after the answer (used by masked LMs)


def verbalise(kg: KnowledgeGraph, triples: Sequence[Triple]) -> str:
    """The triples as sentences through their relation templates, joined by spaces."""
    return " ".join(kg.verbalise(t) for t in triples)


def probe_example(probe: Probe, context: str = "") -> ReadExample:
    """A reading example of `probe` with `context` as its knowledge (the answer's suffix kept for MLMs)."""
    return ReadExample(context, probe.prompt(), probe.answer, probe.template.split("[Y]", 1)[1].strip())


def training_example(kg: KnowledgeGraph, probe: Probe, k: int, rng: random.Random,
                     all_triples: Sequence[Triple], tail: str | None = None) -> ReadExample:
    """The gold fact plus k-1 distractors (half from the same subject, half random), in random order. With `tail`
    the example is counterfactual: the probed fact is moved to `tail` in the knowledge and in the answer, and no
    other fact of the subject under that relation is shown, so only reading the knowledge answers it."""
    if tail is not None:
        probe = Probe(probe.subject, probe.relation, tail, probe.template)
    gold = probe.triple

    def shown(t: Triple) -> bool:  # a counterfactual hides the subject's real facts of the moved relation
        return t != gold and (tail is None or (t.head, t.relation) != (gold.head, gold.relation))

    own = [t for t in kg.about(probe.subject) if shown(t)]
    ctx = [gold]
    for _ in range(20 * k):  # bounded: a tiny KG may hold fewer than k distinct facts
        if len(ctx) >= k:
            break
        pool = own if own and rng.random() < 0.5 else all_triples
        t = rng.choice(pool)
        if t not in ctx and shown(t):
            ctx.append(t)
    rng.shuffle(ctx)
    return probe_example(probe, verbalise(kg, ctx))


# ---------------------------------------------------------------------- lmlab GPT reader
class GPTReader:
    """lmlab GPT with an lmlab tokenizer: `<bos>{context}<sep>{prompt}` then ` {answer}<eos>` (loss there).

    A character tokenizer maps unseen characters to "?"; a BPE tokenizer covers any text. With `prompt_loss` the
    probe's text after `<sep>` carries loss too (the causal counterpart of LM-CORE's masked-LM training on the
    whole input sentence with its knowledge appended); the knowledge itself never does."""

    def __init__(self, model: GPT, tok: Tokenizer, max_answer: int = 16, prompt_loss: bool = False):
        self.model, self.tok, self.max_answer, self.prompt_loss = model, tok, max_answer, prompt_loss
        self.sep_id = tok.token_id(SEP)
        if isinstance(tok, CharTokenizer) and UNK not in tok.stoi:
            raise LmlabError(f"the reader's character tokenizer must contain {UNK!r} (for unseen characters)")

    @classmethod
    def create(cls, texts: Sequence[str], tokenizer: str = "char", vocab_size: int = 800, n_layers: int = 2,
               d_model: int = 64, n_heads: int = 4, seq_len: int = 256, device: torch.device | str = "cpu",
               max_answer: int = 16, extra_specials: Sequence[str] = (), prompt_loss: bool = False) -> GPTReader:
        """A fresh reader whose tokenizer ("char" or "bpe") is built from `texts`; `extra_specials` (e.g.
        relation tokens "<AtLocation>") become single tokens."""
        specials = ["<pad>", "<bos>", "<eos>", SEP, *extra_specials]
        if tokenizer == "char":
            tok = CharTokenizer(set("".join(texts)) | {UNK, " "}, specials=specials)
        elif tokenizer == "bpe":
            tok = BPETokenizer.train(list(texts), vocab_size, specials=specials)
        else:
            raise LmlabError(f"tokenizer must be 'char' or 'bpe', got {tokenizer!r}")
        cfg = GPTConfig(vocab_size=tok.vocab_size, n_layers=n_layers, n_heads=n_heads, d_model=d_model,
                        seq_len=seq_len)
        return cls(GPT(cfg).to(device), tok, max_answer, prompt_loss)

    @property
    def device(self) -> torch.device:
        """The device of the reader's model."""
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a character tokenizer maps unseen characters to '?'."""
        if isinstance(self.tok, CharTokenizer):
            return [self.tok.stoi.get(c, self.tok.stoi[UNK]) for c in text]
        return self.tok.encode(text)

    def prompt_ids(self, ex: ReadExample) -> list[int]:
        """`<bos>{context}<sep>{prompt}` as ids, the context cut so the answer still fits seq_len."""
        tail = [self.sep_id] + self.encode(ex.prompt)
        budget = self.model.cfg.seq_len - len(tail) - self.max_answer - 2
        if budget < 0:
            raise LmlabError(f"a prompt of {len(tail)} tokens does not fit seq_len {self.model.cfg.seq_len}")
        return [self.tok.bos_id] + self.encode(ex.context)[:budget] + tail

    def batch(self, examples: Sequence[ReadExample]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of the examples, targets on the answer and its <eos> (and with `prompt_loss` on the
        probe's text after <sep>)."""
        seqs, starts = [], []
        for ex in examples:
            p = self.prompt_ids(ex)
            seqs.append(p + self.encode(" " + ex.answer)[: self.max_answer] + [self.tok.eos_id])
            starts.append(len(p) - len(self.encode(ex.prompt)) if self.prompt_loss else len(p))  # after <sep>
        n = max(map(len, seqs)) - 1
        idx = torch.full((len(seqs), n), self.tok.pad_id, dtype=torch.long)
        tgt = torch.full((len(seqs), n), IGNORE_INDEX, dtype=torch.long)
        for i, (s, st) in enumerate(zip(seqs, starts)):
            idx[i, : len(s) - 1] = torch.tensor(s[:-1])
            tgt[i, st - 1: len(s) - 1] = torch.tensor(s[st:])
        return idx.to(self.device), tgt.to(self.device)

    def loss(self, examples: Sequence[ReadExample]) -> torch.Tensor:
        """Mean next-token loss on the examples' answers."""
        idx, tgt = self.batch(examples)
        return self.model(idx, tgt)

    def decode(self, ids: Sequence[int]) -> str:
        """Answer text; task specials (relation tokens) are kept, control tokens dropped."""
        control = {self.tok.pad_id, self.tok.bos_id, self.tok.eos_id, self.sep_id}
        return self.tok.decode([i for i in ids if i not in control]).strip()

    @torch.no_grad()
    def predict(self, examples: Sequence[ReadExample], batch_size: int = 256) -> list[str]:
        """The greedy answer to each example."""
        return [self.decode(t) for t in self.continue_greedy([self.prompt_ids(ex) for ex in examples], batch_size)]

    @torch.no_grad()
    def continue_greedy(self, prompts: list[list[int]], batch_size: int = 256, stop: set[int] | None = None,
                        max_new: int | None = None) -> list[list[int]]:
        """Greedy continuations (stop token included when hit) of token-id prompts."""
        out = []
        for i in range(0, len(prompts), batch_size):
            gen = generate(self.model, prompts[i:i + batch_size], max_new or self.max_answer + 1, temperature=0.0,
                           stop_tokens=stop or {self.tok.eos_id}, pad_id=self.tok.pad_id)
            out += gen.tokens
        return out


# ---------------------------------------------------------------------- Hugging Face reader
class HFReader:
    """A local HF model reading knowledge. kind="causal": `{context} {sep} {prompt}` then the answer tokens and
    EOS when the tokenizer has one (loss there; prediction continues the prompt); kind="masked": the answer span becomes mask tokens (MLM on the entity span)."""

    def __init__(self, model: nn.Module, tokenizer, kind: str = "causal", max_length: int = 256,
                 max_answer_tokens: int = 8):
        if kind not in ("causal", "masked"):
            raise LmlabError(f"HFReader kind must be 'causal' or 'masked', got {kind!r}")
        if kind == "masked" and tokenizer.mask_token_id is None:
            raise LmlabError("a masked reader needs a tokenizer with a mask token")
        self.model, self.tok, self.kind = model, tokenizer, kind
        self.max_length, self.max_answer_tokens = max_length, max_answer_tokens
        self.sep = tokenizer.sep_token or tokenizer.eos_token or "\n"

    @property
    def device(self) -> torch.device:
        """The device of the reader's model."""
        return next(self.model.parameters()).device

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _layout(self, ex: ReadExample, n_answer: int | None = None, predict: bool = False):
        """(input ids, answer positions, answer ids); the context is cut to fit max_length. `predict` (causal):
        the input stops after the prompt, exactly where the training input's answer tokens begin — no answer
        tokens at all (encoding " " would leave a lone space token, e.g. GPT-2's 'Ġ', that training never has
        there), with room for max_answer_tokens kept in max_length."""
        ans = self._ids(" " + ex.answer)[: self.max_answer_tokens]
        if predict and self.kind == "causal":
            ans = []
        q = self._ids(f" {self.sep} {ex.prompt}")
        if self.kind == "masked":
            n = len(ans) if n_answer is None else n_answer
            body = q + [self.tok.mask_token_id] * n + self._ids(" " + ex.suffix)
            cls = [self.tok.cls_token_id] if self.tok.cls_token_id is not None else []
            end = [self.tok.sep_token_id] if self.tok.sep_token_id is not None else []
            ctx = self._ids(ex.context)[: max(0, self.max_length - len(body) - len(cls) - len(end))]
            ids = cls + ctx + body + end
            start = len(cls) + len(ctx) + len(q)
            return ids, list(range(start, start + n)), ans
        if ans and self.tok.eos_token_id is not None:
            ans = ans + [self.tok.eos_token_id]  # learn to stop after the answer (generation stops at EOS)
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        room = self.max_answer_tokens + 1 if predict else len(ans)
        ctx = self._ids(ex.context)[: max(0, self.max_length - len(bos) - len(q) - room)]
        ids = bos + ctx + q + ans
        start = len(ids) - len(ans)
        return ids, list(range(start, len(ids))), ans

    def _pad(self, rows: list[list[int]]):
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids, mask = pad_batch(rows, pad, device=self.device)
        return ids, mask.long()

    def loss(self, examples: Sequence[ReadExample]) -> torch.Tensor:
        """The HF model's loss on the examples' answer tokens only."""
        rows, labels = [], []
        for ex in examples:
            ids, pos, ans = self._layout(ex)
            lab = [IGNORE_INDEX] * len(ids)
            for p, a in zip(pos, ans):
                lab[p] = a
            rows.append(ids)
            labels.append(lab)
        ids, att = self._pad(rows)
        lab = torch.full_like(ids, IGNORE_INDEX)
        for i, l in enumerate(labels):
            lab[i, : len(l)] = torch.tensor(l)
        return self.model(input_ids=ids, attention_mask=att, labels=lab).loss  # HF shifts causal labels

    @torch.no_grad()
    def predict(self, examples: Sequence[ReadExample]) -> list[str]:
        """The answer to each example (greedy for causal LMs, the likeliest mask filling for MLMs)."""
        self.model.eval()
        return [self._predict_one(ex) for ex in examples]

    def _predict_one(self, ex: ReadExample) -> str:
        if self.kind == "causal":
            ids, _, _ = self._layout(ex, predict=True)
            x, att = self._pad([ids])
            eos = self.tok.eos_token_id
            out = self.model.generate(input_ids=x, attention_mask=att, max_new_tokens=self.max_answer_tokens,
                                      do_sample=False, eos_token_id=eos, pad_token_id=self.tok.pad_token_id or eos)
            return self.tok.decode(out[0, x.shape[1]:], skip_special_tokens=True).strip()
        best, best_lp = "", -float("inf")  # masked: try 1..max answer lengths, keep the most likely filling
        for n in range(1, self.max_answer_tokens + 1):
            ids, pos, _ = self._layout(ex, n_answer=n)
            x, att = self._pad([ids])
            logp = torch.log_softmax(self.model(input_ids=x, attention_mask=att).logits[0, pos].float(), -1)
            lp, tok = logp.max(-1)
            if float(lp.mean()) > best_lp:
                best, best_lp = self.tok.decode(tok.tolist(), skip_special_tokens=True).strip(), float(lp.mean())
        return best


# ---------------------------------------------------------------------- training and probing
def train_reader(reader, sample: Callable[[random.Random], Sequence[ReadExample]], steps: int, lr: float = 3e-3,
                 seed: int = 0, warmup: int = 20, weight_decay: float = 0.0) -> list[float]:
    """Train any reader (`.model`, `.loss`) on batches drawn by `sample(rng)` with lmlab's light loop."""
    rng = random.Random(seed)

    def batches() -> Iterator[Sequence[ReadExample]]:
        while True:
            yield sample(rng)

    return fit(reader.model, lambda _m, b: reader.loss(b), batches(), steps, lr=lr, warmup=warmup,
               weight_decay=weight_decay)


def oracle_triples(kg: KnowledgeGraph, probes: Sequence[Probe], k: int, seed: int = 0) -> list[list[Triple]]:
    """The gold fact plus k-1 other facts about the subject, in random order (retrieval with recall 1)."""
    rng = random.Random(seed)
    out = []
    for p in probes:
        own = [t for t in kg.about(p.subject) if t != p.triple]
        ts = [p.triple] + rng.sample(own, min(k - 1, len(own)))
        rng.shuffle(ts)
        out.append(ts)
    return out


def evaluate(reader, kg: KnowledgeGraph, probes: Sequence[Probe], source: Retriever | str | None, k: int,
             answers: Sequence[str] | None = None) -> dict:
    """Probe accuracy with knowledge from `source` (a Retriever, "oracle", or None for no knowledge), next to
    the retrieval's recall@k and the accuracy split by whether the gold fact was retrieved."""
    if source is None:
        triples = [[] for _ in probes]
    elif source == "oracle":
        triples = oracle_triples(kg, probes, k)
    else:
        triples = [[s.triple for s in got] for got in source.retrieve_many([p.prompt() for p in probes], k)]
    examples = [probe_example(p, verbalise(kg, ts)) for p, ts in zip(probes, triples)]
    preds = reader.predict(examples)
    answers = list(answers) if answers is not None else [p.answer for p in probes]
    hit = [p.triple in set(ts) for p, ts in zip(probes, triples)]
    right = [norm(a) == norm(b) for a, b in zip(preds, answers)]

    def acc_where(flag: bool) -> float:
        sel = [r for r, h in zip(right, hit) if h == flag]
        return sum(sel) / len(sel) if sel else float("nan")

    return {"accuracy": sum(right) / max(1, len(right)), "recall": recall_at_k(triples, [p.triple for p in probes], k),
            "acc_if_retrieved": acc_where(True), "acc_if_missed": acc_where(False), "predictions": preds}
