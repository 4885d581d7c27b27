"""Sequence taggers for Sumerian POS and NER: majority baselines, an HMM with Viterbi decoding, a CRF with
Sumerian-specific features (sklearn-crfsuite) and a BiLSTM-CRF (PyTorch, CRF layer written here).

Every tagger has `fit(sentences)`, `predict(list of token lists) -> list of tag lists`, `save(dir)` and
`load(dir)` (JSON / native crfsuite / safetensors files; no pickles).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from lmlab.methods.sumerian.loaders import TaggedSentence
from lmlab.methods.sumerian.metrics import entity_spans
from lmlab.train import clip_and_step
from lmlab.utils import LmlabError, atomic_write_bytes, atomic_write_json

NUMERAL = re.compile(r"^\d+(/\d+)?\([^)]*\)")
CONTEXT_WORDS = ("dumu", "ki", "igi", "kiszib3", "giri3", "ugula", "szu", "mu")


def word_shape(w: str) -> str:
    """A coarse class for unseen words (numeral, divine/place determinative, damaged, name-like…)."""
    if NUMERAL.match(w):
        return "num"
    if "{d}" in w:
        return "div"
    if "{ki}" in w:
        return "place"
    if w in ("x", "X", "...", "(X)") or "x" in w.split("-") or "..." in w:
        return "damaged"
    if any(c.isupper() for c in w):
        return "sign"
    if w.startswith(("ur-", "lu2-")) or w.count("-") >= 2:
        return "name"
    return "hyphen" if "-" in w else "plain"


# ---------------------------------------------------------------- baselines
class MajorityTagger:
    """Every token gets the most frequent training tag."""

    name = "majority"

    def fit(self, sents: list[TaggedSentence]) -> MajorityTagger:
        """Learn the most frequent tag."""
        self.tag = Counter(t for s in sents for t in s.tags).most_common(1)[0][0]
        return self

    def predict(self, tokens: list[list[str]]) -> list[list[str]]:
        """The most frequent tag for every token."""
        return [[self.tag] * len(t) for t in tokens]


class WordMajorityTagger(MajorityTagger):
    """Each known word gets its most frequent training tag; unknown words the overall majority tag."""

    name = "word_majority"

    def fit(self, sents):
        """Learn each word's most frequent tag (and the overall one for unseen words)."""
        super().fit(sents)
        counts: dict[str, Counter] = defaultdict(Counter)
        for s in sents:
            for w, t in zip(s.tokens, s.tags):
                counts[w][t] += 1
        self.lexicon = {w: c.most_common(1)[0][0] for w, c in counts.items()}
        return self

    def predict(self, tokens):
        """Each word's most frequent training tag, the overall one for unseen words."""
        return [[self.lexicon.get(w, self.tag) for w in ws] for ws in tokens]


class WordShapeMajorityTagger(WordMajorityTagger):
    """Each known word gets its most frequent training tag; an unknown word the most frequent tag of the training
    words of its shape (`word_shape`: numeral, divine or place determinative, name-like, ...) seen only once —
    hapax legomena, the usual stand-in for unseen words, as in `HMMTagger` — and the overall majority tag when
    no such word has that shape. The strongest of the simple lookup baselines here."""

    name = "word_shape_majority"

    def fit(self, sents):
        """Learn each word's and each word shape's most frequent tag."""
        super().fit(sents)
        freq = Counter(w for s in sents for w in s.tokens)
        by_shape: dict[str, Counter] = defaultdict(Counter)
        for s in sents:
            for w, t in zip(s.tokens, s.tags):
                if freq[w] == 1:
                    by_shape[word_shape(w)][t] += 1
        self.shape_tag = {sh: c.most_common(1)[0][0] for sh, c in by_shape.items()}
        return self

    def predict(self, tokens):
        """Each word's most frequent tag; unseen words fall back to their shape's."""
        return [[self.lexicon[w] if w in self.lexicon else self.shape_tag.get(word_shape(w), self.tag) for w in ws]
                for ws in tokens]


# ---------------------------------------------------------------- HMM
def viterbi(
    log_start: np.ndarray, log_trans: np.ndarray, log_emit: np.ndarray, log_end: np.ndarray | None = None
) -> tuple[list[int], float]:
    """Best state path of an HMM in log space. log_start (S,), log_trans (S,S) [from, to],
    log_emit (T,S) per position, log_end (S,) optional. Returns (path, log score)."""
    n, s = log_emit.shape
    score = log_start + log_emit[0]
    back = np.zeros((n, s), dtype=np.int64)
    for t in range(1, n):
        cand = score[:, None] + log_trans  # (from, to)
        back[t] = cand.argmax(0)
        score = cand.max(0) + log_emit[t]
    if log_end is not None:
        score = score + log_end
    best = int(score.argmax())
    path = [best]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1], float(score.max())


class HMMTagger:
    """First-order HMM with add-k smoothed transitions/emissions. Unseen words are scored through their
    word shape, with emission counts taken from training words seen once (hapax legomena)."""

    name = "hmm"

    def __init__(self, k: float = 0.1):
        self.k = k

    def fit(self, sents: list[TaggedSentence]) -> HMMTagger:
        """Estimate smoothed transition and emission log-probabilities from tagged sentences."""
        tags = sorted({t for s in sents for t in s.tags})
        ti = {t: i for i, t in enumerate(tags)}
        n = len(tags)
        start, end, trans = np.zeros(n), np.zeros(n), np.zeros((n, n))
        emit: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(n))
        for s in sents:
            ids = [ti[t] for t in s.tags]
            start[ids[0]] += 1
            end[ids[-1]] += 1
            for a, b in zip(ids, ids[1:]):
                trans[a, b] += 1
            for w, i in zip(s.tokens, ids):
                emit[w][i] += 1
        word_total = Counter({w: c.sum() for w, c in emit.items()})
        for w, c in list(emit.items()):
            if word_total[w] == 1:
                emit.setdefault(f"<unk:{word_shape(w)}>", np.zeros(n))
                emit[f"<unk:{word_shape(w)}>"] += c
        k = self.k
        tag_total = np.stack(list(emit.values())).sum(0)
        denom = np.log(tag_total + k * (len(emit) + 1))
        self.tags = tags
        self.log_start = np.log((start + k) / (start.sum() + k * n))
        self.log_end = np.log((end + k) / (end.sum() + k * n))
        self.log_trans = np.log((trans + k) / (trans.sum(1, keepdims=True) + k * n))
        self.log_emit = {w: np.log(c + k) - denom for w, c in emit.items()}
        self._floor = np.log(np.full(n, k)) - denom
        return self

    def emission_matrix(self, tokens: list[str]) -> np.ndarray:
        """(tokens, tags) emission log-probabilities; unseen words use their shape's class."""
        rows = [
            self.log_emit.get(w, self.log_emit.get(f"<unk:{word_shape(w)}>", self._floor)) for w in tokens
        ]
        return np.stack(rows)

    def predict(self, tokens: list[list[str]]) -> list[list[str]]:
        """The Viterbi tag sequence of each sentence."""
        out = []
        for ws in tokens:
            if not ws:
                out.append([])
                continue
            path, _ = viterbi(self.log_start, self.log_trans, self.emission_matrix(ws), self.log_end)
            out.append([self.tags[i] for i in path])
        return out

    def save(self, d: str | Path) -> None:
        """Write the model as hmm.json in folder `d` (atomically)."""
        atomic_write_json(
            Path(d) / "hmm.json",
            {
                "k": self.k,
                "tags": self.tags,
                "log_start": self.log_start,
                "log_end": self.log_end,
                "log_trans": self.log_trans,
                "floor": self._floor,
                "log_emit": self.log_emit,
            },
        )

    @classmethod
    def load(cls, d: str | Path) -> HMMTagger:
        """The HMM saved in folder `d`."""
        data = json.loads((Path(d) / "hmm.json").read_text())
        m = cls(data["k"])
        m.tags = data["tags"]
        m.log_start, m.log_end = np.array(data["log_start"]), np.array(data["log_end"])
        m.log_trans, m._floor = np.array(data["log_trans"]), np.array(data["floor"])
        m.log_emit = {w: np.array(v) for w, v in data["log_emit"].items()}
        return m


# ---------------------------------------------------------------- CRF (sklearn-crfsuite)
def crf_features(tokens: list[str], i: int) -> dict:
    """Hand-written Sumerian features: position, neighbours, numerals N(unit), damage, determinatives
    {d}/{ki}, name prefixes/suffixes, and the administrative context words
    (dumu, ki, igi, kiszib3, giri3…)."""
    w = tokens[i]
    segs = w.split("-")
    f = {
        "bias": 1.0,
        "w": w,
        "first_seg": segs[0],
        "last_seg": segs[-1],
        "suf3": w[-3:],
        "pre3": w[:3],
        "shape": word_shape(w),
        "n_segs": min(len(segs), 4),
        "numeral": bool(NUMERAL.match(w)),
        "damaged": word_shape(w) == "damaged",
        "det_d": "{d}" in w,
        "det_ki": "{ki}" in w,
        "name_prefix": w.startswith(("ur-", "lu2-", "ur-{d}", "lu2-{d}")),
        "suffix_mu": w.endswith("-mu"),
        "lugal": "lugal" in w,
        "upper": any(c.isupper() for c in w),
        "is_first": i == 0,
        "is_last": i == len(tokens) - 1,
    }
    for off in (-2, -1, 1, 2):
        j = i + off
        if 0 <= j < len(tokens):
            f[f"w{off:+d}"] = tokens[j]
            f[f"shape{off:+d}"] = word_shape(tokens[j])
            if abs(off) == 1 and tokens[j] in CONTEXT_WORDS:
                f[f"ctx{off:+d}"] = tokens[j]
    return f


class CRFTagger:
    name = "crf"

    def __init__(self, c1: float = 0.01, c2: float = 0.1, max_iterations: int = 1000):
        self.c1, self.c2, self.max_iterations = c1, c2, max_iterations
        self._tagger = None

    @staticmethod
    def featurize(tokens: list[str]) -> list[dict]:
        """The CRF feature dicts of each token of a sentence."""
        return [crf_features(tokens, i) for i in range(len(tokens))]

    def fit(self, sents: list[TaggedSentence]) -> CRFTagger:
        """Train the CRF (sklearn-crfsuite, L-BFGS) on tagged sentences."""
        import sklearn_crfsuite  # heavy: imported only when a CRF is trained

        crf = sklearn_crfsuite.CRF(
            algorithm="lbfgs",
            c1=self.c1,
            c2=self.c2,
            max_iterations=self.max_iterations,
            all_possible_transitions=True,
        )
        crf.fit([self.featurize(s.tokens) for s in sents], [s.tags for s in sents])
        self._model_bytes = Path(crf.modelfile.name).read_bytes()
        self._tagger = crf.tagger_
        return self

    def predict(self, tokens: list[list[str]]) -> list[list[str]]:
        """The CRF's tag sequence of each sentence."""
        return [self._tagger.tag(self.featurize(ws)) if ws else [] for ws in tokens]

    def save(self, d: str | Path) -> None:
        """Write the model as crf.crfsuite in folder `d`."""
        atomic_write_bytes(Path(d) / "crf.crfsuite", self._model_bytes)

    @classmethod
    def load(cls, d: str | Path) -> CRFTagger:
        """The CRF saved in folder `d`."""
        import pycrfsuite  # heavy: the CRF backend, imported only when a CRF is loaded

        m = cls()
        m._model_bytes = (Path(d) / "crf.crfsuite").read_bytes()
        m._tagger = pycrfsuite.Tagger()
        m._tagger.open(str(Path(d) / "crf.crfsuite"))
        return m


# ---------------------------------------------------------------- BiLSTM-CRF (PyTorch)
class CRFLayer(nn.Module):
    """Linear-chain CRF: score(y) = start[y0] + Σ emit[t, y_t] + Σ trans[y_{t-1}, y_t] + end[y_last].
    `mask` (B, L) is True for real tokens; sequences are left-aligned (padding at the end)."""

    def __init__(self, num_tags: int):
        super().__init__()
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        self.trans = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]

    def score(self, emissions, tags, mask):
        """Score of each tag sequence under the emissions and transitions (masked positions skipped)."""
        b, n, _ = emissions.shape
        m = mask.float()
        s = self.start[tags[:, 0]] + emissions[:, 0].gather(1, tags[:, :1]).squeeze(1)
        if n > 1:
            e = emissions[:, 1:].gather(2, tags[:, 1:, None]).squeeze(2)
            tr = self.trans[tags[:, :-1], tags[:, 1:]]
            s = s + ((e + tr) * m[:, 1:]).sum(1)
        last = tags.gather(1, (mask.long().sum(1) - 1)[:, None]).squeeze(1)
        return s + self.end[last]

    def log_partition(self, emissions, mask):
        """Log-sum-exp of the scores of all tag sequences (forward algorithm)."""
        alpha = self.start + emissions[:, 0]  # (B, S)
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha[:, :, None] + self.trans[None], dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t, None], nxt, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def nll(self, emissions, tags, mask):
        """Mean negative log-likelihood of the gold tag paths."""
        return (self.log_partition(emissions, mask) - self.score(emissions, tags, mask)).mean()

    @torch.no_grad()
    def decode(self, emissions, mask) -> list[list[int]]:
        """The highest-scoring tag sequence of each sentence (Viterbi)."""
        score = self.start + emissions[:, 0]
        backs = []
        for t in range(1, emissions.shape[1]):
            cand = score[:, :, None] + self.trans[None]  # (B, from, to)
            best, idx = cand.max(1)
            backs.append(idx)
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
        score = score + self.end
        lengths = mask.long().sum(1).tolist()
        # the backtrace runs on host lists: indexing device tensors here would sync once per token
        last = score.argmax(-1).tolist()
        backs = torch.stack(backs, 1).tolist() if backs else [[] for _ in lengths]  # (B, T-1, tags)
        out = []
        for b, n in enumerate(lengths):
            path = [last[b]]
            for t in range(n - 1, 0, -1):
                path.append(backs[b][t - 1][path[-1]])
            out.append(path[::-1])
        return out


@dataclass
class BiLSTMCRFConfig:
    word_dim: int = 64
    char_dim: int = 16
    char_filters: int = 32
    hidden: int = 64
    dropout: float = 0.2
    word_dropout: float = 0.1  # replace training words by <unk> so the model learns to use characters
    epochs: int = 5
    batch_size: int = 32
    lr: float = 3e-3
    max_len: int = 64  # longer training sentences are cut into chunks
    seed: int = 0


class BiLSTMCRF(nn.Module):
    """Word embeddings + a character CNN → BiLSTM → per-tag emission scores → CRF layer."""

    def __init__(self, n_words: int, n_chars: int, n_tags: int, cfg: BiLSTMCRFConfig):
        super().__init__()
        self.cfg = cfg
        self.word_emb = nn.Embedding(n_words, cfg.word_dim, padding_idx=0)
        self.char_emb = nn.Embedding(n_chars, cfg.char_dim, padding_idx=0)
        self.char_cnn = nn.Conv1d(cfg.char_dim, cfg.char_filters, kernel_size=3, padding=1)
        self.lstm = nn.LSTM(cfg.word_dim + cfg.char_filters, cfg.hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.proj = nn.Sequential(
            nn.Linear(2 * cfg.hidden, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, n_tags)
        )
        self.crf = CRFLayer(n_tags)

    def token_features(self, words, chars):
        """(B, L) word ids and (B, L, C) char ids → (B, L, word_dim + char_filters) input features."""
        b, n, c = chars.shape
        ce = self.char_emb(chars.view(b * n, c)).transpose(1, 2)
        cf = self.char_cnn(ce).masked_fill((chars.view(b * n, 1, c) == 0), -1e4).max(2).values
        cf = torch.where(cf < -1e3, torch.zeros_like(cf), cf).view(b, n, -1)
        return torch.cat([self.word_emb(words), cf], dim=-1)

    def emissions_from_features(self, feats, mask):
        """Per-token tag scores from the BiLSTM over the token features."""
        lengths = mask.long().sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.drop(feats), lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=feats.shape[1])
        return self.proj(self.drop(out))

    def forward(self, words, chars, mask):
        """Per-token tag scores of a batch of word and character ids."""
        return self.emissions_from_features(self.token_features(words, chars), mask)


class BiLSTMCRFTagger:
    name = "bilstm_crf"

    def __init__(self, cfg: BiLSTMCRFConfig | None = None, device: str | torch.device = "cpu"):
        self.cfg = cfg or BiLSTMCRFConfig()
        self.device = torch.device(device)

    # -- vocabularies
    def _build_vocab(self, sents):
        words = Counter(w for s in sents for w in s.tokens)
        self.words = ["<pad>", "<unk>"] + sorted(words)
        self.chars = ["<pad>", "<unk>"] + sorted({c for w in words for c in w})
        self.tags = sorted({t for s in sents for t in s.tags})
        self._index()

    def _index(self):
        self.wi = {w: i for i, w in enumerate(self.words)}
        self.ci = {c: i for i, c in enumerate(self.chars)}
        self.ti = {t: i for i, t in enumerate(self.tags)}

    def encode(self, batch: list[list[str]]):
        """(word ids, character ids, mask) of a batch of sentences, padded."""
        n = max(1, max(len(ws) for ws in batch))
        c = max(3, max((len(w) for ws in batch for w in ws), default=3))
        words = torch.zeros(len(batch), n, dtype=torch.long)
        chars = torch.zeros(len(batch), n, c, dtype=torch.long)
        mask = torch.zeros(len(batch), n, dtype=torch.bool)
        for b, ws in enumerate(batch):
            for i, w in enumerate(ws):
                words[b, i] = self.wi.get(w, 1)
                chars[b, i, : len(w)] = torch.tensor([self.ci.get(ch, 1) for ch in w])
                mask[b, i] = True
        return words.to(self.device), chars.to(self.device), mask.to(self.device)

    # -- training
    def fit(self, sents: list[TaggedSentence], log=None) -> BiLSTMCRFTagger:
        """Train the BiLSTM-CRF on tagged sentences (negative log-likelihood, Adam)."""
        cfg = self.cfg
        self._build_vocab(sents)
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.model = BiLSTMCRF(len(self.words), len(self.chars), len(self.tags), cfg).to(self.device)
        chunks = [
            (s.tokens[i : i + cfg.max_len], s.tags[i : i + cfg.max_len])
            for s in sents
            for i in range(0, len(s), cfg.max_len)
        ]
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        steps = cfg.epochs * math.ceil(len(chunks) / cfg.batch_size)
        # OneCycleLR divides by (pct_start * total_steps - 1) and by the length of its decay: at 10 steps a 10 %
        # warm-up is zero steps long, so short runs warm up over 1.5 steps (runs of 15 steps or more are unchanged)
        warmup = 0.1 if steps <= 1 else min(0.75, max(0.1, 1.5 / steps))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(1, steps), pct_start=warmup
        )
        self.model.train()
        self.losses = []
        for epoch in range(cfg.epochs):
            for idx in _length_bucketed(len(chunks), lambda j: len(chunks[j][0]), cfg.batch_size, gen):
                batch = [chunks[j] for j in idx]
                words, chars, mask = self.encode([ws for ws, _ in batch])
                tags = torch.zeros_like(words)
                for b, (_, ts) in enumerate(batch):
                    tags[b, : len(ts)] = torch.tensor([self.ti[t] for t in ts])
                drop = (torch.rand(words.shape, generator=gen) < cfg.word_dropout).to(self.device)
                words = words.masked_fill(drop & mask, 1)
                loss = self.model.crf.nll(self.model(words, chars, mask), tags, mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                clip_and_step(self.model, opt, 5.0, loss)  # a NaN/Inf step is not applied: TrainingDiverged
                sched.step()
                self.losses.append(float(loss.detach()))
            if log:
                log(f"bilstm_crf epoch {epoch + 1}/{cfg.epochs}: loss {np.mean(self.losses[-50:]):.3f}")
        self.model.eval()
        return self

    @torch.no_grad()
    def predict(self, tokens: list[list[str]], batch_size: int = 256) -> list[list[str]]:
        """The decoded tag sequence of each sentence."""
        self.model.eval()
        out: list[list[str]] = [[] for _ in tokens]
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
        for i in range(0, len(order), batch_size):
            idx = [j for j in order[i : i + batch_size] if tokens[j]]
            if not idx:
                continue
            words, chars, mask = self.encode([tokens[j] for j in idx])
            paths = self.model.crf.decode(self.model(words, chars, mask), mask)
            for j, p in zip(idx, paths):
                out[j] = [self.tags[k] for k in p]
        return out

    # -- persistence
    def save(self, d: str | Path) -> None:
        """Write the config, vocabularies and weights into folder `d`."""
        d = Path(d)
        atomic_write_json(
            d / "bilstm_crf.json",
            {"config": asdict(self.cfg), "words": self.words, "chars": self.chars, "tags": self.tags},
        )
        atomic_write_bytes(
            d / "bilstm_crf.safetensors",
            st_save({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}),
        )

    @classmethod
    def load(cls, d: str | Path, device: str | torch.device = "cpu") -> BiLSTMCRFTagger:
        """The BiLSTM-CRF saved in folder `d`."""
        d = Path(d)
        meta = json.loads((d / "bilstm_crf.json").read_text())
        m = cls(BiLSTMCRFConfig(**meta["config"]), device)
        m.words, m.chars, m.tags = meta["words"], meta["chars"], meta["tags"]
        m._index()
        m.model = BiLSTMCRF(len(m.words), len(m.chars), len(m.tags), m.cfg).to(m.device)
        m.model.load_state_dict(load_file(str(d / "bilstm_crf.safetensors"), device=str(m.device)))
        m.model.eval()
        return m


def _length_bucketed(n: int, length, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Random batches of similar-length items (sorted within pools of 50 batches), in random order; the CRF
    recursion then runs over fewer padded steps."""
    order = torch.randperm(n, generator=gen).tolist()
    pool = 50 * batch_size
    batches = []
    for p in range(0, n, pool):
        chunk = sorted(order[p : p + pool], key=length)
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


TAGGERS = {"hmm": HMMTagger, "crf": CRFTagger, "bilstm_crf": BiLSTMCRFTagger}


def load_tagger(d: str | Path, device: str | torch.device = "cpu"):
    """Load whichever tagger was saved in `d` (hmm.json, crf.crfsuite or bilstm_crf.json)."""
    d = Path(d)
    if (d / "crf.crfsuite").exists():
        return CRFTagger.load(d)
    if (d / "bilstm_crf.json").exists():
        return BiLSTMCRFTagger.load(d, device)
    if (d / "hmm.json").exists():
        return HMMTagger.load(d)
    raise LmlabError(
        f"no saved tagger in {d} (expected hmm.json, crf.crfsuite or bilstm_crf.json): "
        "train one with `lmlab sumerian train`"
    )


def entity_swap(
    ner_sents: list[TaggedSentence],
    lexicon: dict[str, list[list[str]]],
    copies: int = 1,
    seed: int = 0,
    pos_sents: list[TaggedSentence] | None = None,
    pos_entity_tag: str = "NE",
):
    """Entity-swap augmentation: for each sentence with named entities, make `copies` new sentences in which
    every entity span is replaced by a random entity of the same class from `lexicon` ({tag: [tokens]}).

    With `pos_sents` (the same sentences with POS tags), returns matching POS sentences too: swapped-in
    tokens get `pos_entity_tag`. Returns (ner_aug, pos_aug or None); originals are not included."""
    rng = np.random.default_rng(seed)
    ner_out, pos_out = [], []
    for k, s in enumerate(ner_sents):
        spans = [sp for sp in entity_spans(s.tags) if lexicon.get(sp[0])]
        if not spans:
            continue
        for _ in range(copies):
            toks, ner, pos, prev = [], [], [], 0
            ptags = pos_sents[k].tags if pos_sents is not None else None
            for typ, a, b in spans:
                toks += s.tokens[prev:a]
                ner += s.tags[prev:a]
                if ptags is not None:
                    pos += ptags[prev:a]
                cands = lexicon[typ]
                new = cands[int(rng.integers(len(cands)))]
                toks += new
                ner += [typ] * len(new)
                pos += [pos_entity_tag] * len(new)
                prev = b
            toks += s.tokens[prev:]
            ner += s.tags[prev:]
            ner_out.append(TaggedSentence(toks, ner))
            if ptags is not None:
                pos += ptags[prev:]
                pos_out.append(TaggedSentence(toks, pos))
    return ner_out, (pos_out if pos_sents is not None else None)


def entity_lexicon(
    ner_sents: list[TaggedSentence],
    lists: dict[str, list[list[str]]] | None = None,
) -> dict[str, list[list[str]]]:
    """{NER tag: distinct entity token sequences} from training sentences plus named-entity lists."""
    lex: dict[str, dict[tuple, None]] = defaultdict(dict)
    for s in ner_sents:
        for typ, a, b in entity_spans(s.tags):
            lex[typ][tuple(s.tokens[a:b])] = None
    for typ, items in (lists or {}).items():
        for toks in items:
            if toks:
                lex[typ][tuple(toks)] = None
    return {t: [list(x) for x in d] for t, d in lex.items()}


def attested_entries(
    lists: dict[str, list[list[str]]], corpus: list[TaggedSentence]
) -> tuple[dict[str, list[list[str]]], dict[str, tuple[int, int]]]:
    """The named-entity list entries that `corpus` (tagged NER training sentences) attests as an entity
    span whose most frequent tag is the list's tag. Entries in another spelling than the corpus (most of
    the city and royal-name lists: `akhetaten`, `urnammak`) or that the corpus labels differently would
    add out-of-distribution tokens or wrong labels to entity-swap augmentation, so they are dropped.
    Returns ({tag: kept entries}, {tag: (kept, listed)})."""
    seen: dict[tuple, Counter] = defaultdict(Counter)
    for s in corpus:
        for typ, a, b in entity_spans(s.tags):
            seen[tuple(s.tokens[a:b])][typ] += 1
    kept, counts = {}, {}
    for typ, items in lists.items():
        ok = [e for e in items if e and seen.get(tuple(e)) and seen[tuple(e)].most_common(1)[0][0] == typ]
        kept[typ] = ok
        counts[typ] = (len(ok), len(items))
    return kept, counts
