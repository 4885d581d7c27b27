"""Sumerian→English translation: BPE tokenizers, a small encoder–decoder Transformer trained from scratch,
greedy/beam decoding, BLEU/chrF (sacrebleu), copy and lexicon baselines, one round of self-training
(forward translation of monolingual Sumerian, the paper's "M-BT"),
and fine-tuning of a local Hugging Face seq2seq model as an alternative."""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from lmlab.hf import load_model, load_tokenizer
from lmlab.methods.sumerian.seq2seq import Seq2SeqConfig, Seq2SeqTransformer, beam_search, greedy_decode
from lmlab.progress import MetricsLog, Progress
from lmlab.tokenizer import BPETokenizer, Tokenizer
from lmlab.train import FitResume, fit, make_optimizer
from lmlab.utils import LmlabError, atomic_write_bytes, atomic_write_json


@dataclass
class MTConfig:
    src_vocab_size: int = 1000
    tgt_vocab_size: int = 1000
    d_model: int = 128
    n_heads: int = 4
    enc_layers: int = 2
    dec_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.1
    max_len: int = 96
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> MTConfig:
        """An MTConfig from a saved dict, unknown keys ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def bleu_chrf(hyps: list[str], refs: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu) of the hypotheses against the references."""
    import sacrebleu  # heavy: imported only when scoring

    return {
        "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
        "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
    }


# ---------------------------------------------------------------- the from-scratch translator
class Translator:
    """A Seq2SeqTransformer with its source/target BPE tokenizers."""

    def __init__(self, model: Seq2SeqTransformer, src_tok: Tokenizer, tgt_tok: Tokenizer, cfg: MTConfig):
        self.model, self.src_tok, self.tgt_tok, self.cfg = model, src_tok, tgt_tok, cfg

    @property
    def device(self) -> torch.device:
        """The device of the translator's model."""
        return next(self.model.parameters()).device

    def encode_source(self, lines: list[str]) -> torch.Tensor:
        """Right-padded (B, S) source ids, each ending in <eos>; an over-long line keeps its start (as in
        training, see `truncate_pair`)."""
        ids = [truncate_source(self.src_tok.encode(s, eos=True), self.cfg.max_len) for s in lines]
        return _pad(ids, self.src_tok.pad_id).to(self.device)

    @torch.no_grad()
    def translate(
        self,
        lines: list[str],
        beam: int = 1,
        batch_size: int = 64,
        max_len: int | None = None,
        length_penalty: float = 0.6,
    ) -> list[str]:
        """The English translation of each line (greedy, or beam search when beam > 1)."""
        out: list[str] = [""] * len(lines)
        order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
        max_len = max_len or self.cfg.max_len
        bos, eos = self.tgt_tok.bos_id, self.tgt_tok.eos_id
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            src = self.encode_source([lines[j] for j in idx])
            limit = min(max_len, 2 * src.shape[1] + 10)  # stops degenerate repetition early
            if beam > 1:
                seqs = beam_search(self.model, src, bos, eos, limit, beam, length_penalty)
            else:
                seqs = greedy_decode(self.model, src, bos, eos, limit)
            for j, s in zip(idx, seqs):
                out[j] = " ".join(self.tgt_tok.decode(s, skip_special=True).split())
        return out

    def save(self, d: str | Path) -> None:
        """Write both tokenizers, the config and the weights into folder `d`."""
        d = Path(d)
        self.src_tok.save(d / "src_tokenizer.json")
        self.tgt_tok.save(d / "tgt_tokenizer.json")
        atomic_write_json(d / "mt_config.json", {"mt": asdict(self.cfg), "model": self.model.cfg.to_dict()})
        state = {
            k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if k != "out.weight"
        }
        atomic_write_bytes(d / "mt.safetensors", st_save(state))

    @classmethod
    def load(cls, d: str | Path, device: str | torch.device = "cpu") -> Translator:
        """The translator saved in folder `d`."""
        d = Path(d)
        if not (d / "mt_config.json").exists():
            raise LmlabError(
                f"no translation model in {d} (mt_config.json missing): train one with "
                "`lmlab sumerian train --out DIR`"
            )
        meta = json.loads((d / "mt_config.json").read_text())
        model = Seq2SeqTransformer(Seq2SeqConfig(**meta["model"]))
        weights = d / "mt.safetensors"
        if not weights.exists():
            raise LmlabError(f"{weights} is missing: retrain with `lmlab sumerian train --out DIR`")
        state = load_file(str(weights))
        # strict, except for the output projection: it is tied to tgt_emb and not saved
        missing = sorted(set(model.state_dict()) - set(state) - {"out.weight"})
        unexpected = sorted(set(state) - set(model.state_dict()))
        if missing or unexpected:

            def listed(keys, what):
                more = ", …" if len(keys) > 5 else ""
                return f"{len(keys)} {what} tensor(s) ({', '.join(keys[:5])}{more})" if keys else ""

            problems = "; ".join(x for x in (listed(missing, "missing"), listed(unexpected, "unexpected")) if x)
            raise LmlabError(
                f"{weights} does not match the model described by {d / 'mt_config.json'}: {problems}. The "
                "file is incomplete or from another version of the model: retrain or re-save it"
            )
        try:
            model.load_state_dict(state, strict=False)  # only out.weight (tied) may be absent, checked above
        except RuntimeError as e:  # shape mismatches
            raise LmlabError(
                f"{weights} does not fit the model described by {d / 'mt_config.json'} "
                f"({str(e).splitlines()[-1].strip()}): retrain or re-save the model"
            ) from e
        model.to(device).eval()
        return cls(
            model,
            Tokenizer.load(d / "src_tokenizer.json"),
            Tokenizer.load(d / "tgt_tokenizer.json"),
            MTConfig.from_dict(meta["mt"]),
        )


def truncate_source(ids: list[int], n: int) -> list[int]:
    """The first `n` ids of an encoded source line, keeping its final <eos>."""
    return ids if len(ids) <= n else ids[: n - 1] + ids[-1:]


def truncate_pair(src: list[int], tgt: list[int], n: int) -> tuple[list[int], list[int]]:
    """Cut an encoded training pair to the model's length from the same end on both sides: the source keeps
    its first n-1 tokens and <eos>, the target (<bos> … <eos>) its first n+1 ids. Keeping the start of both
    means the model never learns to produce the beginning of the English from the end of the Sumerian."""
    return truncate_source(src, n), tgt[: n + 1]


def _pad(seqs: list[list[int]], pad: int) -> torch.Tensor:
    n = max(1, max(len(s) for s in seqs))
    out = torch.full((len(seqs), n), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def train_bpe(texts: list[str], vocab_size: int) -> BPETokenizer:
    """BPE (HF `tokenizers`) that splits on whitespace only, so a frequent hyphenated Sumerian word such as
    `a-sza3` or a numeral `1(disz)` can become a single token (byte-level pre-tokenization would cut it at
    every digit and hyphen). Unseen characters map to <unk>."""
    # third-party BPE trainer, used only here: imported only when a BPE is trained (as in lmlab.tokenizer)
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    tok = HFTok(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, min_frequency=2, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)


def train_tokenizers(pairs: list[tuple[str, str]], cfg: MTConfig) -> tuple[BPETokenizer, BPETokenizer]:
    """A source and a target BPE trained on the two sides of the pairs."""
    return (
        train_bpe([s for s, _ in pairs], cfg.src_vocab_size),
        train_bpe([t for _, t in pairs], cfg.tgt_vocab_size),
    )


def _batches(examples: list[tuple[list[int], list[int]]], batch_size: int, seed: int):
    """Endless length-bucketed random batches of (src ids, tgt ids)."""
    rng = random.Random(seed)
    while True:
        idx = list(range(len(examples)))
        rng.shuffle(idx)
        pool = 50 * batch_size  # sort within pools so a batch has similar lengths (less padding)
        batches = []
        for p in range(0, len(idx), pool):
            chunk = sorted(idx[p : p + pool], key=lambda i: len(examples[i][0]))
            batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        yield from batches


@contextlib.contextmanager
def step_reporter(inner, steps: int, start: int, progress: str | None, metrics: str | Path | None):
    """A `fit` callback that shows each step on a progress bar labelled `progress` and appends it to the
    `metrics` file (with TensorBoard under tb/ beside it) as a line {"phase": progress, "step", "loss"}, then
    calls `inner`. The file is shared by the stages of one run: a stage keeps the lines of the other stages and
    its own before `start` (a resume). Without `progress` it is `inner` itself."""
    if progress is None:
        yield inner
        return
    mlog = None
    if metrics is not None:
        mlog = MetricsLog(metrics, tensorboard=Path(metrics).parent / "tb",
                         keep=lambda r: r.get("phase") != progress or r.get("step", 0) < start)

    def cb(step: int, loss: torch.Tensor) -> None:
        value = float(loss)  # no extra stall: fit's guard reads the loss back every step already
        bar.update(1, loss=value)
        if mlog is not None:
            mlog.log({"phase": progress, "step": step, "loss": value})
        if inner is not None:
            inner(step, loss)

    with Progress(steps, progress, initial=start) as bar:
        try:
            yield cb
        finally:
            if mlog is not None:
                mlog.close()


def train_translator(
    pairs: list[tuple[str, str]],
    cfg: MTConfig,
    device: str | torch.device = "cpu",
    tokenizers: tuple[Tokenizer, Tokenizer] | None = None,
    log=None,
    resume: FitResume | None = None,
    progress: str | None = None,
    metrics: str | Path | None = None,
) -> Translator:
    """Train a Seq2SeqTransformer on (Sumerian, English) pairs for `cfg.steps` steps (AdamW, warmup +
    cosine, label smoothing). With `resume`, snapshots allow an exact continuation (see `FitResume`).
    progress: the label of a progress bar over the steps, and the "phase" of their lines in `metrics` (a
    metrics.jsonl, see `step_reporter`)."""
    if not pairs:
        raise LmlabError("no training pairs: check the parallel corpus path")
    torch.manual_seed(cfg.seed)
    src_tok, tgt_tok = tokenizers or train_tokenizers(pairs, cfg)
    if src_tok.pad_id != tgt_tok.pad_id:
        raise LmlabError("source and target tokenizers must share the <pad> id")
    mcfg = Seq2SeqConfig(
        src_tok.vocab_size,
        tgt_tok.vocab_size,
        cfg.d_model,
        cfg.n_heads,
        cfg.enc_layers,
        cfg.dec_layers,
        cfg.d_ff,
        cfg.dropout,
        cfg.max_len + 1,
        src_tok.pad_id,
    )
    model = Seq2SeqTransformer(mcfg).to(device)
    tr = Translator(model, src_tok, tgt_tok, cfg)
    n = cfg.max_len
    encoded = [(src_tok.encode(s, eos=True), tgt_tok.encode(t, bos=True, eos=True)) for s, t in pairs]
    examples = [truncate_pair(a, b, n) for a, b in encoded]
    cut = sum(len(a) > n or len(b) > n + 1 for a, b in encoded)
    if cut and log:
        log(f"{cut} of {len(pairs)} training pairs are longer than max_len={n}: both sides keep their start")
    pad = src_tok.pad_id

    def make(batch):
        src = _pad([examples[i][0] for i in batch], pad).to(device)
        tgt = _pad([examples[i][1] for i in batch], pad).to(device)
        return src, tgt

    def loss_fn(m, batch):
        src, tgt = batch
        logits = m(src, tgt[:, :-1])
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            tgt[:, 1:].reshape(-1),
            ignore_index=pad,
            label_smoothing=cfg.label_smoothing,
        )

    every = max(1, cfg.steps // 5)
    cb = (
        (
            lambda step, loss: (
                log(f"mt step {step + 1}/{cfg.steps}: loss {loss:.3f}") if (step + 1) % every == 0 else None
            )
        )
        if log
        else None
    )
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)  # the one `fit` would make
    start = resume.restore(model, opt) if resume else 0
    stream = _batches(examples, cfg.batch_size, cfg.seed)
    for _ in range(start):  # replay the batch order past the steps already done
        next(stream)
    with step_reporter(cb, cfg.steps, start, progress, metrics) as cb:
        tr.losses = fit(
            model,
            loss_fn,
            (make(b) for b in stream),
            cfg.steps,
            lr=cfg.lr,
            warmup=cfg.warmup,
            grad_clip=1.0,
            optimizer=opt,
            callback=resume.callback(cb) if resume else cb,
            device=torch.device(device),
            start=start,
            guard=True,
        )
    if resume:
        tr.losses = resume.finish(tr.losses)
    model.eval()
    return tr


def self_training_round(
    translator: Translator,
    pairs: list[tuple[str, str]],
    mono_sumerian: list[str],
    cfg: MTConfig | None = None,
    beam: int = 1,
    device="cpu",
    log=None,
) -> Translator:
    """One round of self-training (forward translation): the current Sumerian→English model translates
    monolingual Sumerian, the (real Sumerian, synthetic English) pairs are stacked onto the parallel data,
    and a model is retrained (same tokenizers) on the union.

    This is the procedure the paper calls monolingual back-translation ("M-BT"): it translates *source-side*
    monolingual text with the forward model. It is not back-translation in the usual sense (a reverse
    English→Sumerian model producing synthetic sources for real English), so it is named for what it does.
    Keep `mono_sumerian` free of evaluation sources (see `drop_overlapping`)."""
    synthetic = translator.translate(mono_sumerian, beam=beam)
    extra = [(s, e) for s, e in zip(mono_sumerian, synthetic) if s.strip() and e.strip()]
    if log:
        log(f"self-training: {len(extra)} forward-translated pairs added to {len(pairs)}")
    return train_translator(
        pairs + extra,
        cfg or translator.cfg,
        device,
        tokenizers=(translator.src_tok, translator.tgt_tok),
        log=log,
    )


def _span_hits(hay: list[tuple[str, ...]], needles: set[tuple[str, ...]]):
    """(indices of `hay` lines containing some needle as a contiguous word sequence, the needles found)."""
    lengths = sorted({len(x) for x in needles})
    lines, found = set(), set()
    for i, words in enumerate(hay):
        for k in lengths:
            if k > len(words):
                break
            for j in range(len(words) - k + 1):
                t = words[j : j + k]
                if t in needles:
                    lines.add(i)
                    found.add(t)
    return lines, found


def overlaps_held_out(lines: list[str], held_out: list[str]) -> list[bool]:
    """For each line: does it contain, or is it contained in, a `held_out` line (whole-word match after
    whitespace normalisation)? Blank lines count as overlapping (they are never wanted)."""
    words = [tuple(x.split()) for x in lines]
    held = {tuple(x.split()) for x in held_out if x.split()}
    contain, _ = _span_hits(words, held)
    _, inside = _span_hits(list(held), {w for w in words if w})
    return [not w or i in contain or w in inside for i, w in enumerate(words)]


def drop_overlapping(lines: list[str], held_out: list[str]) -> list[str]:
    """`lines` without those that contain, or are contained in, a `held_out` line: monolingual text for
    self-training must not expose the model to the test sources, even without their references."""
    return [x for x, bad in zip(lines, overlaps_held_out(lines, held_out)) if not bad]


# ---------------------------------------------------------------- baselines
def copy_baseline(lines: list[str]) -> list[str]:
    """Output the Sumerian transliteration unchanged (names and numerals are often shared)."""
    return list(lines)


class LexiconBaseline:
    """Word-by-word translation with a lexicon from co-occurrence (Dice coefficient) in the training pairs.
    Unknown words are copied. Numerals `N(unit)` are rewritten `N unit`, as the English side writes them."""

    def __init__(self, min_dice: float = 0.1):
        self.min_dice = min_dice

    def fit(self, pairs: list[tuple[str, str]]) -> LexiconBaseline:
        """Learn a word-to-word lexicon from the pairs by Dice co-occurrence."""
        cs, ce, co = Counter(), Counter(), defaultdict(Counter)
        for s, e in pairs:
            sw, ew = set(s.split()), set(e.split())
            cs.update(sw)
            ce.update(ew)
            for a in sw:
                co[a].update(ew)
        self.lexicon = {}
        for a, cands in co.items():
            # sorted: ties go to the alphabetically first word, not to the (hash-seeded) order of a set
            best, score = max(((b, 2 * c / (cs[a] + ce[b])) for b, c in sorted(cands.items())), key=lambda x: x[1])
            if score >= self.min_dice:
                self.lexicon[a] = best
        return self

    def translate(self, lines: list[str]) -> list[str]:
        """Word-by-word translations through the lexicon (numbers rendered as numbers)."""
        num = re.compile(r"^(\d+(?:/\d+)?)\(([^)]*)\)$")
        out = []
        for line in lines:
            words = []
            for w in line.split():
                m = num.match(w)
                words.append(self.lexicon.get(w) or (f"{m.group(1)} {m.group(2)}" if m else w))
            out.append(" ".join(words))
        return out


# ---------------------------------------------------------------- Hugging Face seq2seq alternative
class HFTranslator:
    """A local `AutoModelForSeq2SeqLM` (T5, Marian, mBART…) with its tokenizer, fine-tuned on the pairs."""

    def __init__(self, model, tokenizer, device="cpu", max_len: int = 96):
        self.model, self.tok, self.max_len = model.to(device), tokenizer, max_len
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", max_len: int = 96) -> HFTranslator:
        """The HF seq2seq model and tokenizer saved in a local folder."""
        return cls(load_model(path, kind="seq2seq"), load_tokenizer(path), device, max_len)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        ids = self.tok(texts, add_special_tokens=True, truncation=True, max_length=self.max_len)["input_ids"]
        eos = self.tok.eos_token_id
        # keep the start of an over-long text (as the from-scratch translator does) and end it with <eos>
        return [x if eos is None or (x and x[-1] == eos) else x[: self.max_len - 1] + [eos] for x in ids]

    def batch(self, pairs: list[tuple[str, str]]) -> dict:
        """Model inputs of (Sumerian, English) pairs: padded source ids, mask and labels."""
        pad = self.tok.pad_token_id
        src = _pad(self._ids([s for s, _ in pairs]), pad)
        labels = _pad(self._ids([e for _, e in pairs]), -100)
        return {
            "input_ids": src.to(self.device),
            "attention_mask": (src != pad).long().to(self.device),
            "labels": labels.to(self.device),
        }

    def finetune(
        self,
        pairs: list[tuple[str, str]],
        steps: int,
        lr: float = 5e-4,
        batch_size: int = 16,
        seed: int = 0,
        log=None,
        resume: FitResume | None = None,
        progress: str | None = None,
        metrics: str | Path | None = None,
    ) -> list[float]:
        """Fine-tune on (Sumerian, English) pairs for `steps` steps; `resume`, `progress` and `metrics` as in
        `train_translator`."""
        rng = random.Random(seed)
        k = min(batch_size, len(pairs))
        opt = make_optimizer(self.model, lr)  # the one `fit` would make
        start = resume.restore(self.model, opt) if resume else 0
        for _ in range(start):  # replay the batch draws past the steps already done
            rng.sample(pairs, k)

        def batches():
            while True:
                yield self.batch(rng.sample(pairs, k))

        every = max(1, steps // 5)
        cb = (
            (
                lambda s, loss: (
                    log(f"hf step {s + 1}/{steps}: loss {loss:.3f}") if (s + 1) % every == 0 else None
                )
            )
            if log
            else None
        )
        with step_reporter(cb, steps, start, progress, metrics) as cb:
            losses = fit(
                self.model,
                lambda m, b: m(**b).loss,
                batches(),
                steps,
                lr=lr,
                warmup=max(1, steps // 10),
                optimizer=opt,
                callback=resume.callback(cb) if resume else cb,
                device=self.device,
                start=start,
                guard=True,
            )
        self.model.eval()
        return resume.finish(losses) if resume else losses

    @torch.no_grad()
    def translate(
        self, lines: list[str], beam: int = 1, batch_size: int = 32, max_len: int | None = None
    ) -> list[str]:
        """The English translation of each line (greedy, or beam search when beam > 1)."""
        out = []
        pad = self.tok.pad_token_id
        for i in range(0, len(lines), batch_size):
            src = _pad(self._ids(lines[i : i + batch_size]), pad).to(self.device)
            gen = self.model.generate(
                input_ids=src,
                attention_mask=(src != pad).long(),
                num_beams=beam,
                max_new_tokens=max_len or self.max_len,
                do_sample=False,
            )
            out += [" ".join(t.split()) for t in self.tok.batch_decode(gen, skip_special_tokens=True)]
        return out

    def save(self, d: str | Path) -> None:
        """save_pretrained the model and tokenizer into folder `d`."""
        self.model.save_pretrained(str(d))
        self.tok.save_pretrained(str(d))


def epochs_covered(cfg: MTConfig, n_pairs: int) -> float:
    """Passes over the training pairs made by a run of `cfg.steps` batches."""
    return cfg.steps * cfg.batch_size / max(1, n_pairs)
