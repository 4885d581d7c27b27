"""CoSe-Co: a sentence-conditioned generator of commonsense knowledge paths (Bansal et al., NAACL 2022).

1. Dataset: pair sentences with KG paths — link the KG entities a sentence mentions and extract the
   paths connecting them (or the walks leaving a lone entity); or, the paper's direction, sample paths
   and find sentences for them with Q1/Q2 BM25 queries (`pair_paths`).
2. Generator: sentence -> linearised path `e1 <Rel1> e2 <Rel2> e3`, trained with p_mask entity masking
   (lmlab GPT prefix-LM, or a local HF seq2seq model); decoding with the paper's diverse-path search.
3. Use: append generated paths to a multiple-choice QA model's input (`EncoderChoiceScorer`).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlab.methods.knowledge.kg import KnowledgeGraph, Triple, norm, relation_words
from lmlab.methods.knowledge.lmcore import GPTReader, ReadExample
from lmlab.methods.knowledge.retrieval import BM25, EntityLinker, Mention, tokens
from lmlab.utils import LmlabError

MASK = "<mask>"
Path = list[Triple]


# ---------------------------------------------------------------------- paths as text
def relation_token(relation: str) -> str:
    """The single token a relation is written as in linearised paths: 'AtLocation' -> '<AtLocation>'."""
    return f"<{relation}>"


def linearise(path: Path) -> str:
    """[(a, R1, b), (b, R2, c)] -> 'a <R1> b <R2> c'."""
    if not path:
        return ""
    return " ".join([path[0].head] + [f"{relation_token(t.relation)} {t.tail}" for t in path])


def parse_path(text: str) -> Path:
    """Inverse of `linearise`; malformed pieces (empty entities) end the path."""
    parts = re.split(r"<([A-Za-z_]\w*)>", text)
    ents, rels = [p.strip() for p in parts[0::2]], parts[1::2]
    out = []
    for i, rel in enumerate(rels):
        if not ents[i] or not ents[i + 1]:
            break
        out.append(Triple(ents[i], rel, ents[i + 1]))
    return out


# ---------------------------------------------------------------------- dataset construction
def walks_from(kg: KnowledgeGraph, entity: str, max_hops: int) -> list[Path]:
    """Every directed path of 1..max_hops edges leaving `entity`, without revisiting entities."""
    out, frontier = [], [[t] for t in kg.about(entity) if norm(t.head) == norm(entity)]
    for _ in range(max_hops):
        out += frontier
        nxt = []
        for p in frontier:
            seen = {norm(p[0].head)} | {norm(t.tail) for t in p}
            nxt += [p + [t] for t in kg.about(p[-1].tail)
                    if norm(t.head) == norm(p[-1].tail) and norm(t.tail) not in seen]
        frontier = nxt
    return out


def connecting_paths(kg: KnowledgeGraph, a: str, b: str, max_hops: int = 2) -> list[Path]:
    """Directed paths a -> ... -> b of at most max_hops edges."""
    return [p for p in walks_from(kg, a, max_hops) if norm(p[-1].tail) == norm(b)]


def sample_paths(kg: KnowledgeGraph, n: int, hops: tuple[int, int] = (1, 3), seed: int = 0) -> list[Path]:
    """Random walks along edge direction with a length drawn from `hops` (shorter where walks dead-end)."""
    rng = random.Random(seed)
    heads = sorted({t.head for t in kg})
    if not heads:
        raise LmlabError("cannot sample paths from an empty knowledge graph")
    out = []
    for _ in range(n):
        path, cur = [], rng.choice(heads)
        seen = {norm(cur)}
        for _ in range(rng.randint(*hops)):
            edges = [t for t in kg.about(cur) if norm(t.head) == norm(cur) and norm(t.tail) not in seen]
            if not edges:
                break
            t = rng.choice(edges)
            path.append(t)
            cur = t.tail
            seen.add(norm(cur))
        if path:
            out.append(path)
    return out


@dataclass
class SentencePaths:
    sentence: str
    paths: list[Path]
    mentions: list[Mention]


def sentence_paths(kg: KnowledgeGraph, linker: EntityLinker, sentence: str, max_hops: int = 2,
                   max_paths: int = 4) -> SentencePaths:
    """Link the sentence's KG entities; keep the paths connecting two of them, or else the walks leaving them."""
    mentions = linker.link(sentence)
    ents = list(dict.fromkeys(m.entity for m in mentions))
    paths = [p for a, b in itertools.permutations(ents, 2) for p in connecting_paths(kg, a, b, max_hops)]
    if not paths:
        paths = [p for e in ents for p in walks_from(kg, e, max_hops) if len(p) == max_hops]
        paths = paths or [p for e in ents for p in walks_from(kg, e, 1)]
    paths.sort(key=len)
    return SentencePaths(sentence, paths[:max_paths], mentions)


def build_dataset(kg: KnowledgeGraph, sentences: Sequence[str], linker: EntityLinker | None = None,
                  max_hops: int = 2, max_paths: int = 4) -> list[SentencePaths]:
    """Sentence-path pairs for every sentence that links to at least one path."""
    linker = linker or EntityLinker(kg)
    items = (sentence_paths(kg, linker, s, max_hops, max_paths) for s in sentences)
    return [it for it in items if it.paths]


def path_queries(path: Path) -> tuple[list[str], list[str]]:
    """The paper's retrieval queries: Q1 (e_i, r_i, e_i+2) and (e_i, r_i+1, e_i+2); Q2 (e_i, e_i+1)."""
    ents = [path[0].head] + [t.tail for t in path]
    rels = [t.relation for t in path]
    q1 = []
    for i in range(len(ents) - 2):
        q1 += [f"{ents[i]} {rels[i]} {ents[i + 2]}", f"{ents[i]} {rels[i + 1]} {ents[i + 2]}"]
    q2 = [f"{ents[i]} {ents[i + 1]}" for i in range(len(ents) - 1)]
    return q1, q2


def pair_paths(paths: Sequence[Path], sentences: Sequence[str], top_k: int = 1, candidates: int = 10,
               rerank=None, min_entities: int = 2) -> list[tuple[str, Path]]:
    """Paper direction: for each path, BM25-search the sentences with its Q1+Q2 queries, keep those that
    mention at least `min_entities` of the path's entities, optionally rerank by `rerank(sentences, path_text)`
    scores (e.g. MiniLM cosine), and return the top_k (sentence, path) pairs per path."""
    bm25 = BM25(sentences)
    padded = [f" {' '.join(tokens(s))} " for s in sentences]
    out = []
    for path in paths:
        q1, q2 = path_queries(path)
        scores = bm25.scores(" ".join(q1 + q2))
        top = [int(i) for i in scores.argsort()[::-1][:candidates] if scores[i] > 0]
        ents = [f" {' '.join(tokens(e))} " for e in entities_of(path)]
        keep = [i for i in top if sum(e in padded[i] for e in ents) >= min_entities]
        if rerank is not None and keep:
            sims = rerank([sentences[i] for i in keep], linearise(path))
            keep = [keep[j] for j in sorted(range(len(keep)), key=lambda j: -float(sims[j]))]
        out += [(sentences[i], path) for i in keep[:top_k]]
    return out


def items_from_pairs(pairs: Sequence[tuple[str, Path]], linker: EntityLinker) -> list[SentencePaths]:
    """`pair_paths`' (sentence, path) pairs grouped by sentence (first-seen order) into training items, with the
    sentence's entity mentions (for masking)."""
    by_sentence: dict[str, list[Path]] = {}
    for sentence, path in pairs:
        paths = by_sentence.setdefault(sentence, [])
        if path not in paths:
            paths.append(path)
    return [SentencePaths(s, ps, linker.link(s)) for s, ps in by_sentence.items()]


def mask_entity(sentence: str, mentions: Sequence[Mention], path: Path, rng: random.Random,
                p_mask: float = 0.33) -> str:
    """With probability p_mask, replace one mention of an entity that also occurs in `path` by <mask>."""
    ents = {norm(path[0].head)} | {norm(t.tail) for t in path} if path else set()
    shared = [m for m in mentions if norm(m.entity) in ents]
    if not shared or rng.random() >= p_mask:
        return sentence
    m = rng.choice(shared)
    return sentence[: m.start] + MASK + sentence[m.end:]


def training_pairs(items: Sequence[SentencePaths], rng: random.Random, p_mask: float = 0.33) -> list[ReadExample]:
    """One (sentence, path) example per item, the path drawn among its paths, the sentence maybe masked."""
    out = []
    for it in items:
        path = rng.choice(it.paths)
        out.append(ReadExample(mask_entity(it.sentence, it.mentions, path, rng, p_mask), "", linearise(path)))
    return out


# ---------------------------------------------------------------------- generator
class PathGenerator:
    """lmlab GPT prefix-LM: `<bos>{sentence}<sep> {path}<eos>` (a `GPTReader` with relation tokens)."""

    def __init__(self, reader: GPTReader, relations: Sequence[str]):
        self.reader = reader
        self.model = reader.model
        self.rel_ids = {reader.tok.token_id(relation_token(r)) for r in relations}

    @classmethod
    def create(cls, texts: Sequence[str], relations: Sequence[str], tokenizer: str = "bpe", vocab_size: int = 1000,
               **kw) -> PathGenerator:
        """A fresh generator whose tokenizer is built from `texts`, each relation one token."""
        specials = [MASK] + [relation_token(r) for r in relations]
        return cls(GPTReader.create(texts, tokenizer, vocab_size, extra_specials=specials, **kw), relations)

    def loss(self, examples: Sequence[ReadExample]) -> torch.Tensor:
        """Mean next-token loss on the examples' linearised paths."""
        return self.reader.loss(examples)

    @torch.no_grad()
    def generate(self, sentences: Sequence[str], k: int = 1, branch_at: int | str = 0) -> list[list[Path]]:
        """k paths per sentence. k=1: greedy. k>1: diverse-path search — decode greedily up to the branch
        point (`branch_at` tokens, or "relation": the first relation token), take the top-k tokens there
        (relation tokens only in "relation" mode), then continue each greedily (the paper: branch_at=0)."""
        r = self.reader
        prompts = [r.prompt_ids(ReadExample(s, "", "")) for s in sentences]
        if k == 1:
            return [[parse_path(r.decode(t))] for t in r.continue_greedy(prompts)]
        if branch_at == "relation":
            pre = r.continue_greedy(prompts, stop=self.rel_ids | {r.tok.eos_id})
            prefixes = [t[:-1] if t and t[-1] in self.rel_ids else [] for t in pre]
        elif isinstance(branch_at, int) and branch_at >= 0:
            prefixes = r.continue_greedy(prompts, max_new=branch_at) if branch_at else [[] for _ in prompts]
        else:
            raise LmlabError(f"branch_at must be a step index ≥ 0 or 'relation', got {branch_at!r}")
        branches = []
        ends = self._last_logits([p + pre for p, pre in zip(prompts, prefixes)])
        for p, pre, logits in zip(prompts, prefixes, ends):
            if branch_at == "relation" and pre:
                allowed = torch.full_like(logits, float("-inf"))
                allowed[list(self.rel_ids)] = 0
                logits = logits + allowed
            top = logits.topk(min(k, int(torch.isfinite(logits).sum()))).indices.tolist()
            branches.append([p + pre + [t] for t in top])
        flat = [b for bs in branches for b in bs]
        cont = r.continue_greedy(flat)
        out, i = [], 0
        for p, pre, bs in zip(prompts, prefixes, branches):
            paths = []
            for b in bs:
                new = b[len(p):] + ([] if b[-1] == r.tok.eos_id else cont[i])  # a branch may end at once
                paths.append(parse_path(r.decode(new)))
                i += 1
            out.append(paths)
        return out

    def _last_logits(self, seqs: list[list[int]], batch_size: int = 128) -> torch.Tensor:
        """Next-token logits after each sequence, in right-padded batches (causal: padding after a sequence's
        last token cannot change its logits)."""
        out = []
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            n = max(map(len, chunk))
            ids = torch.tensor([q + [self.reader.tok.pad_id] * (n - len(q)) for q in chunk], device=self.reader.device)
            logits = self.model(ids)
            last = torch.tensor([len(q) - 1 for q in chunk], device=ids.device)
            out.append(logits[torch.arange(len(chunk), device=ids.device), last].float())
        return torch.cat(out)


class Seq2SeqPathGenerator:
    """A local HF encoder-decoder (e.g. T5 via `lmlab.hf.load_model(path, kind="seq2seq")`) as the generator.
    Relation tokens are added to its tokenizer; diverse search forces k different first decoder tokens."""

    def __init__(self, model, tokenizer, relations: Sequence[str], max_length: int = 128, max_new_tokens: int = 48):
        from transformers import AddedToken  # heavy: transformers only for the HF generator

        self.model, self.tok, self.max_length, self.max_new = model, tokenizer, max_length, max_new_tokens
        new = [relation_token(r) for r in relations] + [MASK]
        added = [AddedToken(t, normalized=False) for t in new if t not in tokenizer.get_vocab()]
        if tokenizer.add_tokens(added):  # not normalised: lower-casing tokenizers keep "<AtLocation>" whole
            model.resize_token_embeddings(len(tokenizer))
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id

    @property
    def device(self) -> torch.device:
        """The device of the generator's model."""
        return next(self.model.parameters()).device

    def _encode(self, texts: Sequence[str]) -> dict:
        enc = self.tok(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def loss(self, examples: Sequence[ReadExample]) -> torch.Tensor:
        """The seq2seq loss of each sentence's linearised path (labels end with EOS)."""
        enc = self._encode([e.context for e in examples])
        ids = [self.tok(e.answer, add_special_tokens=False)["input_ids"][: self.max_length - 1] + [self.eos]
               for e in examples]
        lab = torch.full((len(ids), max(map(len, ids))), -100, dtype=torch.long)
        for i, row in enumerate(ids):
            lab[i, : len(row)] = torch.tensor(row)
        return self.model(**enc, labels=lab.to(self.device)).loss

    @torch.no_grad()
    def generate(self, sentences: Sequence[str], k: int = 1, branch_at: int | str = 0) -> list[list[Path]]:
        """k paths per sentence: greedy for k=1, else k different first tokens, each continued."""
        if k > 1 and branch_at != 0:
            raise LmlabError("the seq2seq generator's diverse search branches at the first token only (branch_at=0)")
        self.model.eval()
        enc = self._encode(sentences)
        if k == 1:
            out = self.model.generate(**enc, max_new_tokens=self.max_new, do_sample=False, eos_token_id=self.eos)
            return [[parse_path(self.tok.decode(o, skip_special_tokens=True))] for o in out]
        start = self.model.config.decoder_start_token_id
        first = self.model(**enc, decoder_input_ids=torch.full((len(sentences), 1), start, device=self.device))
        top = first.logits[:, -1].topk(k).indices  # (N, k)
        dec = torch.stack([torch.full_like(top, start), top], -1).view(-1, 2)
        out = self.model.generate(input_ids=enc["input_ids"].repeat_interleave(k, 0),
                                  attention_mask=enc["attention_mask"].repeat_interleave(k, 0),
                                  decoder_input_ids=dec, max_new_tokens=self.max_new, do_sample=False,
                                  eos_token_id=self.eos)
        texts = [parse_path(self.tok.decode(o, skip_special_tokens=True)) for o in out]
        return [texts[i * k:(i + 1) * k] for i in range(len(sentences))]


# ---------------------------------------------------------------------- metrics
def entities_of(path: Path) -> set[str]:
    """The entities a path passes through (heads and tails)."""
    return ({norm(path[0].head)} | {norm(t.tail) for t in path}) if path else set()


def bleu1(candidate: Sequence, references: Sequence[Sequence]) -> float:
    """Sentence BLEU with unigrams only (Papineni et al. 2002, N = 1): clipped unigram precision times the
    brevity penalty. A candidate item counts at most as often as it occurs in any single reference; the
    brevity penalty uses the reference length closest to the candidate's (ties: the shorter)."""
    if not candidate or not references:
        return 0.0
    cand = Counter(candidate)
    max_ref: Counter = Counter()
    for ref in references:
        for item, n in Counter(ref).items():
            max_ref[item] = max(max_ref[item], n)
    clipped = sum(min(n, max_ref[item]) for item, n in cand.items())
    c = len(candidate)
    r = min((len(ref) for ref in references), key=lambda n: (abs(n - c), n))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * clipped / c


def path_metrics(generated: Sequence[Sequence[Path]], gold: Sequence[Sequence[Path]], kg: KnowledgeGraph,
                 train_entities: set[str]) -> dict:
    """CoSe-Co's path metrics (paper §5, as given in the spec), per input: its k generated paths vs its gold paths.

    relevance: BLEU with each triple as a unigram (`bleu1`): the input's k generated paths together are the
        candidate and each gold path is a reference, so counts are clipped (a gold triple repeated in several
        generated paths counts once per occurrence in a gold path) and a too-short candidate pays the brevity
        penalty; mean over inputs (0 for an input with no parsed triple).
    diversity: 1 − mean pairwise IoU of the k paths' entity sets; an input where fewer than 2 of its paths parse
        scores 0 (nothing diverse was produced); mean over inputs that asked for k ≥ 2 paths.
    novelty: share of the distinct generated entities (over all inputs together, each entity once) that occur
        in no training path (`train_entities`).
    gold_hit: share of inputs with a generated path equal to a gold path.
    validity: share of generated triples (every occurrence) that exist in `kg`."""
    def key(t: Triple):
        return (norm(t.head), t.relation, norm(t.tail))

    kg_keys = {key(t) for t in kg}
    rel, hit, val, div = [], [], [], []
    all_ents: set[str] = set()
    n_triples = 0
    for gen, gl in zip(generated, gold):
        g_paths = {tuple(key(t) for t in p) for p in gl}
        triples = [key(t) for p in gen for t in p]
        rel.append(bleu1(triples, [[key(t) for t in p] for p in gl if p]))
        val += [t in kg_keys for t in triples]
        hit.append(any(tuple(key(t) for t in p) in g_paths for p in gen if p))
        sets = [entities_of(p) for p in gen if p]
        if len(gen) >= 2:
            pairs = list(itertools.combinations(sets, 2))
            div.append(1 - sum(len(a & b) / len(a | b) for a, b in pairs) / len(pairs) if pairs else 0.0)
        all_ents |= set().union(*sets) if sets else set()
        n_triples += len(triples)

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    return {"relevance": mean(rel), "gold_hit": mean(hit), "validity": mean(val), "diversity": mean(div),
            "novelty": mean([e not in train_entities for e in all_ents]), "triples": n_triples,
            "entities": len(all_ents)}


# ---------------------------------------------------------------------- downstream multiple choice
def knowledge_words(paths: Sequence[Path]) -> str:
    """Paths as plain words for a QA model: 'a at location b located near c ; ...'."""
    return " ; ".join(" ".join([p[0].head] + [f"{relation_words(t.relation)} {t.tail}" for t in p]) for p in paths if p)


@dataclass
class MCItem:
    question: str
    choices: list[str]
    knowledge: str = ""  # appended to the question

    @property
    def text(self) -> str:
        """The question with its appended knowledge."""
        return f"{self.question} {self.knowledge}".strip()


class EncoderChoiceScorer:
    """Multiple-choice QA on a frozen sentence encoder (MiniLM): each choice gets the features
    cos(question ⊕ knowledge, choice), cos(question, choice), cos(knowledge, choice), and a linear head
    fitted with a softmax over the choices scores them. Few parameters, so a handful of questions fit it."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.head = torch.nn.Linear(3, 1)

    def features(self, items: Sequence[MCItem]) -> torch.Tensor:
        """(questions, choices, 3) cosine features of every choice."""
        n = {len(it.choices) for it in items}
        if len(n) != 1:
            raise LmlabError(f"all questions need the same number of choices, got {sorted(n)}")
        enc = self.encoder.encode
        both, ques = enc([it.text for it in items]), enc([it.question for it in items])
        know = enc([it.knowledge or "" for it in items])
        ch = enc([c for it in items for c in it.choices]).reshape(len(items), n.pop(), -1)
        has_k = torch.tensor([[1.0 if it.knowledge else 0.0] for it in items])
        feats = [torch.from_numpy((ch * e[:, None, :]).sum(-1)) for e in (both, ques, know)]
        feats[2] = feats[2] * has_k
        return torch.stack(feats, -1).float()

    def fit(self, items: Sequence[MCItem], answers: Sequence[int], steps: int = 300, lr: float = 0.05) -> float:
        """Fit the linear head with a softmax over the choices; returns the final loss."""
        x, y = self.features(items), torch.tensor(list(answers))
        opt = torch.optim.Adam(self.head.parameters(), lr)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(self.head(x).squeeze(-1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, items: Sequence[MCItem]) -> list[int]:
        """The index of the best-scored choice of each question."""
        return self.head(self.features(items)).squeeze(-1).argmax(-1).tolist()

    def accuracy(self, items: Sequence[MCItem], answers: Sequence[int]) -> float:
        """Share of questions whose predicted choice is the answer."""
        pred = self.predict(items)
        return sum(p == a for p, a in zip(pred, answers)) / max(1, len(answers))
