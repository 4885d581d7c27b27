"""Token streams for training: document sources, a weighted mixture, BOS-aligned packing, exact resume.

    sources ──► Mixture (weights = data composition) ──► PackedLoader ──► (x, y) batches (rows, seq_len)

- A *source* yields tokenised documents, each starting with BOS: `TextSource` (a file split into
  documents, reshuffled every epoch) or `GeneratorSource` (a python function `fn(rng) -> str | ids`
  called with a fresh `random.Random` per document: synthetic tasks).
- `Mixture` gives each source its weight's share of the tokens.
- `PackedLoader` packs documents into rows of seq_len+1 tokens by best fit (after nanochat's
  BOS-aligned packing): each row is filled with the longest buffered documents that fit, so rows
  start at a document (BOS) unless a document is longer than a row (it is cut into row-sized pieces).
  When nothing fits the rest of a row, the shortest document ends the row and its tail goes back to
  the buffer: no token is dropped and no padding is needed.

Every random choice is a pure function of (seed, counter), so `state_dict()` is a handful of counters
plus the packing buffer, and `load_state_dict()` resumes the exact stream.
"""

from __future__ import annotations

import bisect
import importlib
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from lmlab.inputs import read_text
from lmlab.tokenizer import BPETokenizer, CharTokenizer, Tokenizer
from lmlab.utils import LmlabError

Doc = np.ndarray  # 1-D int64 token ids


# ---------------------------------------------------------------- built-in synthetic generators
_NOUNS = {
    "cat": "cats",
    "dog": "dogs",
    "bird": "birds",
    "child": "children",
    "king": "kings",
    "queen": "queens",
    "farmer": "farmers",
    "horse": "horses",
    "teacher": "teachers",
    "fox": "foxes",
}
_TRANSITIVE = {
    "sees": "see",
    "likes": "like",
    "follows": "follow",
    "finds": "find",
    "helps": "help",
    "watches": "watch",
}
_INTRANSITIVE = {"sleeps": "sleep", "runs": "run", "sings": "sing", "waits": "wait"}
_ADJECTIVES = ("old", "young", "small", "happy", "red", "quiet", "clever")
_PREPOSITIONS = ("near", "behind", "with", "under")


def _noun_phrase(rng: random.Random, depth: int = 0) -> tuple[str, bool]:
    plural = rng.random() < 0.4
    noun = rng.choice(list(_NOUNS))
    det = rng.choice(("the", "these", "some") if plural else ("the", "this", "every"))
    words = (
        [det] + ([rng.choice(_ADJECTIVES)] if rng.random() < 0.3 else []) + [_NOUNS[noun] if plural else noun]
    )
    if depth == 0 and rng.random() < 0.25:  # "the cat near the dogs sees ..." (agreement skips the PP)
        words += [rng.choice(_PREPOSITIONS), _noun_phrase(rng, depth + 1)[0]]
    return " ".join(words), plural


def grammar_doc(rng: random.Random) -> str:
    """A few sentences of a toy English with number agreement between subject and verb."""
    sentences = []
    for _ in range(rng.randint(1, 5)):
        subject, plural = _noun_phrase(rng)
        if rng.random() < 0.6:
            verb = rng.choice(list(_TRANSITIVE))
            rest = f"{_TRANSITIVE[verb] if plural else verb} {_noun_phrase(rng)[0]}"
        else:
            verb = rng.choice(list(_INTRANSITIVE))
            rest = _INTRANSITIVE[verb] if plural else verb
        s = f"{subject} {rest}."
        sentences.append(s[0].upper() + s[1:])
    return " ".join(sentences) + "\n"


_WORDS = (
    list(_NOUNS.items())
    + list(_TRANSITIVE.items())
    + list(_INTRANSITIVE.items())
    + [(w, w) for w in _ADJECTIVES + _PREPOSITIONS + ("the", "these", "some", "this", "every")]
)
grammar_doc.alphabet = "".join(
    sorted({c for pair in _WORDS for w in pair for c in w + w.capitalize()} | set(". \n"))
)


def arithmetic_doc(rng: random.Random) -> str:
    """Lines of 3-digit addition and subtraction with answers."""
    lines = []
    for _ in range(rng.randint(1, 8)):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-")
        lines.append(f"{a}{op}{b}={a + b if op == '+' else a - b}")
    return "\n".join(lines) + "\n"


arithmetic_doc.alphabet = "0123456789+-=\n"

SYNTHETIC: dict[str, Callable[[random.Random], str | Sequence[int]]] = {
    "grammar": grammar_doc,
    "arithmetic": arithmetic_doc,
}


# ---------------------------------------------------------------- sources
def _as_doc(ids, bos_id: int) -> Doc:
    a = np.asarray(ids, dtype=np.int64)
    if a.size == 0 or a[0] != bos_id:
        a = np.concatenate([np.array([bos_id], dtype=np.int64), a])
    return a


def encode_docs(tokenizer: Tokenizer, texts: list[str]) -> list[Doc]:
    """Tokenise documents (BOS first); BPE uses the fast batched encoder."""
    if isinstance(tokenizer, BPETokenizer):
        encs = tokenizer.tok.encode_batch(texts, add_special_tokens=False)  # BOS is added here, once
        return [_as_doc(e.ids, tokenizer.bos_id) for e in encs]
    return [_as_doc(tokenizer.encode(t), tokenizer.bos_id) for t in texts]


class TextSource:
    """Fixed documents, visited in a fresh permutation every epoch (seeded by (seed, epoch))."""

    def __init__(self, docs: list[Doc], seed: int, name: str = "text"):
        if not docs:
            raise LmlabError(f"text source {name!r} has no documents")
        self.name, self.seed = name, seed
        self.offsets = np.cumsum([0] + [len(d) for d in docs]).tolist()  # python ints: fast scalar access
        self.tokens = np.concatenate(docs)
        self.epoch, self.pos = 0, 0
        self._perm: tuple[int, list[int]] = (-1, [])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def next_doc(self) -> Doc:
        """The next document of this epoch's shuffled order (a new order each epoch)."""
        if self.pos >= len(self):
            self.epoch, self.pos = self.epoch + 1, 0
        if self._perm[0] != self.epoch:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self)).tolist()
            self._perm = (self.epoch, order)
        i = self._perm[1][self.pos]
        self.pos += 1
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def state_dict(self) -> dict:
        """Position in the stream (epoch, document) for an exact resume."""
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        """Continue from a `state_dict()`."""
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])


class GeneratorSource:
    """Documents from `make_doc(rng)`; document i uses `random.Random(f"{seed}:{stream}:{i}")`."""

    def __init__(
        self,
        make_doc: Callable[[random.Random], str | Sequence[int]],
        tokenizer: Tokenizer,
        seed: int,
        name: str = "synthetic",
        stream: str = "train",
    ):
        self.make_doc, self.tokenizer = make_doc, tokenizer
        self.seed, self.name, self.stream = seed, name, stream
        self.index = 0

    def next_doc(self) -> Doc:
        """The next generated document, as token ids."""
        doc = self.make_doc(random.Random(f"{self.seed}:{self.stream}:{self.index}"))
        self.index += 1
        ids = self.tokenizer.encode(doc) if isinstance(doc, str) else doc
        return _as_doc(ids, self.tokenizer.bos_id)

    def state_dict(self) -> dict:
        """Documents drawn so far, for an exact resume."""
        return {"index": self.index}

    def load_state_dict(self, s: dict) -> None:
        """Continue from a `state_dict()`."""
        self.index = int(s["index"])


class Mixture:
    """Mix sources so that each takes weights[k] / sum(weights) of the tokens.

    The next document comes from the source furthest below its share of the tokens drawn so far (ties:
    the first), so the realised composition tracks the weights within one document, deterministically.
    """

    def __init__(self, sources: list, weights: Sequence[float] | None = None):
        if not sources:
            raise LmlabError("a mixture needs at least one source")
        w = np.asarray(weights if weights is not None else [1.0] * len(sources), dtype=np.float64)
        if len(w) != len(sources) or (w <= 0).any():
            raise LmlabError(f"mixture weights {list(w)} must be positive, one per source ({len(sources)})")
        self.sources, self.shares = list(sources), (w / w.sum()).tolist()
        self.draws = 0
        self.tokens = [0] * len(sources)  # tokens drawn per source (the realised composition)

    def next_doc(self) -> Doc:
        """The next document from the source furthest below its token share."""
        k = 0
        if len(self.sources) > 1:
            total = sum(self.tokens)
            deficits = [share * total - n for share, n in zip(self.shares, self.tokens)]
            k = max(range(len(self.sources)), key=deficits.__getitem__)
        self.draws += 1
        doc = self.sources[k].next_doc()
        self.tokens[k] += len(doc)
        return doc

    def composition(self) -> dict[str, float]:
        """The realised share of tokens drawn from each source, by name."""
        total = max(1, sum(self.tokens))
        return {s.name: n / total for s, n in zip(self.sources, self.tokens)}

    def state_dict(self) -> dict:
        """Draws, tokens per source and every source's state, for an exact resume."""
        return {
            "draws": self.draws,
            "tokens": list(self.tokens),
            "sources": [s.state_dict() for s in self.sources],
        }

    def load_state_dict(self, s: dict) -> None:
        """Continue from a `state_dict()` made with the same sources."""
        if len(s["sources"]) != len(self.sources):
            raise LmlabError(
                f"data state has {len(s['sources'])} sources, the config has {len(self.sources)}: "
                "resume with the same data.sources"
            )
        self.draws, self.tokens = int(s["draws"]), [int(t) for t in s["tokens"]]
        for src, st in zip(self.sources, s["sources"]):
            src.load_state_dict(st)


# ---------------------------------------------------------------- packing
class PackedLoader:
    """Rows of `seq_len + 1` tokens packed by best fit; `next_batch()` -> (x, y), each (rows, seq_len)."""

    def __init__(self, mixture: Mixture, seq_len: int, rows: int, buffer_docs: int = 64):
        self.mixture, self.seq_len, self.rows, self.buffer_docs = mixture, seq_len, rows, buffer_docs
        self._lens: list[int] = []  # sorted ascending, parallel to _docs
        self._docs: list[Doc] = []
        self.rows_emitted = 0
        self.splits = 0  # documents split across rows

    def _push(self, doc: Doc) -> None:
        # among equal lengths the newest goes first, so `_row` (which takes the last that fits) is FIFO
        i = bisect.bisect_left(self._lens, len(doc))
        self._lens.insert(i, len(doc))
        self._docs.insert(i, doc)

    def _refill(self) -> None:
        width = self.seq_len + 1
        while len(self._docs) < self.buffer_docs:
            doc = self.mixture.next_doc()
            if len(doc) <= width:
                self._push(doc)
                continue
            for s in range(0, len(doc), width):  # long documents become row-sized pieces
                self._push(doc[s : s + width])

    def _row(self, out: np.ndarray) -> None:
        filled, width = 0, len(out)
        while filled < width:
            self._refill()
            rem = width - filled
            i = bisect.bisect_right(self._lens, rem) - 1  # the longest document that fits
            if i < 0:  # nothing fits: the shortest ends the row, its tail goes back to the buffer
                self._lens.pop(0)
                doc = self._docs.pop(0)
                self._push(doc[rem:])
                self.splits += 1
            else:
                self._lens.pop(i)
                doc = self._docs.pop(i)
            doc = doc[:rem]
            out[filled : filled + len(doc)] = doc
            filled += len(doc)

    def next_rows(self, n: int | None = None) -> np.ndarray:
        """`n` packed rows of seq_len + 1 tokens (documents cut and carried over between rows)."""
        n = self.rows if n is None else n
        out = np.empty((n, self.seq_len + 1), dtype=np.int64)
        for r in range(n):
            self._row(out[r])
        self.rows_emitted += n
        return out

    def next_batch(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of `n` packed rows, targets shifted by one."""
        rows = torch.from_numpy(self.next_rows(n))
        return rows[:, :-1], rows[:, 1:]

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """Mixture state, carried-over documents and rows emitted, for an exact resume."""
        return {
            "mixture": self.mixture.state_dict(),
            "buffer": [d.tolist() for d in self._docs],
            "rows_emitted": self.rows_emitted,
            "splits": self.splits,
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, s: dict) -> None:
        """Continue from a `state_dict()` saved with the same seq_len."""
        if int(s["seq_len"]) != self.seq_len:
            raise LmlabError(
                f"data state was saved with seq_len={s['seq_len']}, this loader has {self.seq_len}: "
                "resume with the same train.seq_len"
            )
        self.mixture.load_state_dict(s["mixture"])
        self._docs = [np.asarray(d, dtype=np.int64) for d in s["buffer"]]
        self._lens = [len(d) for d in self._docs]
        self.rows_emitted, self.splits = int(s["rows_emitted"]), int(s["splits"])


# ---------------------------------------------------------------- building from a DataConfig
def _read_text_docs(path: Path, sep: str) -> list[str]:
    text = read_text(path, "data file")  # invalid UTF-8 or binary is refused, never trained on
    docs = [d for d in (text.split(sep) if sep else [text]) if d.strip()]
    if not docs:
        raise LmlabError(f"data file {path} holds no text")
    return [d + sep if sep else d for d in docs]


def _sample_texts(fn, n: int, stream: str) -> list[str]:
    """Documents from a stream that training never uses (for building tokenizers)."""
    docs = (fn(random.Random(f"{stream}:{i}")) for i in range(n))
    return [d for d in docs if isinstance(d, str)]


def _generator_alphabet(fn) -> set[str]:
    if getattr(fn, "alphabet", None):
        return set(fn.alphabet)
    return set("".join(_sample_texts(fn, 2000, "alphabet")))


def resolve_data_file(path: str, key: str) -> Path:
    """A text file given as absolute, relative to the cwd, or relative to $LMLAB_DATA."""
    p = Path(path).expanduser()
    cands = [p] if p.is_absolute() else [Path.cwd() / p]
    root = os.environ.get("LMLAB_DATA")
    if not p.is_absolute() and root:
        cands.append(Path(root) / p)
    for c in cands:
        if c.is_file():
            return c
    where = " or ".join(str(c) for c in cands)
    fix = "" if root else "; set LMLAB_DATA to the data root"
    raise LmlabError(
        f"data file for {key} not found at {where}: give an existing path{fix}, "
        "or use data.sources.0.kind=synthetic (needs no file)"
    )


def resolve_generator(spec: str, key: str):
    """A document generator `fn(rng: random.Random) -> str | list[int]` from a name or 'module:function'."""
    if ":" not in spec:
        if spec not in SYNTHETIC:
            raise LmlabError(
                f"unknown generator {spec!r} for {key}: use one of {', '.join(SYNTHETIC)} "
                "or 'package.module:function'"
            )
        return SYNTHETIC[spec]
    mod, fn = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise LmlabError(
            f"cannot import generator {spec!r} for {key} ({e}): "
            "give 'package.module:function' of an importable function"
        ) from None
    if not callable(obj):
        raise LmlabError(f"generator {spec!r} for {key} is not callable")
    return obj


class DataSpec:
    """The resolved sources of a DataConfig: file texts read once, generators imported."""

    def __init__(self, dcfg):
        self.cfg = dcfg
        self.entries = []  # (label, kind, payload: list[str] docs | generator fn, weight)
        self._encoded: dict = {}  # (tokenizer id, source index, split) -> token docs
        for i, s in enumerate(dcfg.sources):
            key = f"data.sources.{i}"
            if s.kind == "text":
                payload = _read_text_docs(resolve_data_file(s.path, f"{key}.path"), s.doc_sep)
            else:
                payload = resolve_generator(s.generator, f"{key}.generator")
            self.entries.append((s.label(), s.kind, payload, s.weight))
            if s.kind == "text":
                n, n_val = len(payload), self.n_val(len(payload))
                if n_val >= n:
                    raise LmlabError(
                        f"text source {s.label()!r} ({key}) has {n} document(s): holding out {n_val} for "
                        f"validation (data.val_frac={dcfg.val_frac}) leaves none to train on: give at least "
                        f"{n_val + 1} documents (see {key}.doc_sep) or set data.val_frac=0 and "
                        "train.eval_every=0 (no validation)"
                    )

    def n_val(self, n_docs: int) -> int:
        """Documents of a text source held out for validation: none when data.val_frac=0, else at least one.
        The same count is taken out of the training split, so validation never sees a training document."""
        if self.cfg.val_frac <= 0:
            return 0
        return max(1, round(n_docs * self.cfg.val_frac))

    def build_tokenizer(self) -> Tokenizer:
        """The tokenizer data.tokenizer names: a char or BPE one built from the sources, or a file."""
        kind = self.cfg.tokenizer
        specials = ["<pad>", "<bos>", "<eos>"]
        for _, k, p, _ in self.entries:
            if k == "synthetic":
                specials += [t for t in getattr(p, "specials", ()) if t not in specials]
        if kind == "char":
            chars: set[str] = set()
            for _, k, p, _ in self.entries:
                chars |= set("".join(p)) if k == "text" else _generator_alphabet(p)
            return CharTokenizer(chars, specials)
        if kind == "bpe":
            texts: list[str] = []
            for _, k, p, _ in self.entries:
                texts += p if k == "text" else _sample_texts(p, 2000, "bpe")
            return BPETokenizer.train(texts, vocab_size=self.cfg.bpe_vocab_size, specials=specials)
        return Tokenizer.load(Path(kind).expanduser())

    def loader(
        self, tokenizer: Tokenizer, seq_len: int, rows: int, seed: int, split: str = "train"
    ) -> PackedLoader:
        """split="val": held-out documents (the last `n_val` of each text file, which the train split
        leaves out; another generator stream)."""
        sources = []
        for i, (label, kind, payload, _) in enumerate(self.entries):
            if kind == "text":
                n_val = self.n_val(len(payload))
                if split == "val" and n_val == 0:
                    raise LmlabError(
                        f"text source {label!r} has no validation documents (data.val_frac=0): set "
                        "data.val_frac > 0 or train.eval_every=0"
                    )
                part = payload[len(payload) - n_val :] if split == "val" else payload[: len(payload) - n_val]
                key = (id(tokenizer), i, split)
                if key not in self._encoded:
                    self._encoded[key] = encode_docs(tokenizer, part)
                sources.append(TextSource(self._encoded[key], seed=seed * 1000 + i, name=label))
            else:
                sources.append(
                    GeneratorSource(payload, tokenizer, seed=seed * 1000 + i, name=label, stream=split)
                )
        weights = [w for *_, w in self.entries]
        return PackedLoader(Mixture(sources, weights), seq_len, rows, self.cfg.buffer_docs)


# ---------------------------------------------------------------- producing batches beside the GPU
class _Produced(torch.utils.data.IterableDataset):
    def __init__(self, make_batches: Callable[[], Iterator]):
        self.make_batches = make_batches

    def __iter__(self):
        return iter(self.make_batches())


def in_background(make_batches: Callable[[], Iterator], depth: int = 8, pin_memory: bool = False) -> Iterator:
    """The items of `make_batches()`, in the same order, produced by one forked worker process.

    Synthetic batches are generated in Python; on a GPU the training step waits for that generation
    unless another process does it. One worker keeps the stream sequential (a `Mixture`'s choice of the
    next document depends on every earlier one), so the batches are exactly those of `make_batches()`.
    The worker must only build CPU tensors (a forked child cannot use CUDA); move them in the step.
    """
    loader = torch.utils.data.DataLoader(_Produced(make_batches), batch_size=None, num_workers=1,
                                         prefetch_factor=depth, pin_memory=pin_memory,
                                         multiprocessing_context="fork")
    return iter(loader)
