"""Finding the facts relevant to a text: entity linking, BM25 and dense (MiniLM) triple ranking, recall@k.

`Retriever` follows LM-CORE's pipeline: link the entities a query mentions, take their triples as
candidates (all triples when nothing links) and rank the verbalised candidates against the query.
Indexes are rebuilt lazily whenever the knowledge graph's `version` changes, so an edit to the
graph shows up in the very next retrieval.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from lmlab.hf import MiniLMEncoder
from lmlab.methods.knowledge.kg import KnowledgeGraph, Triple
from lmlab.utils import LmlabError

TOKEN = re.compile(r"\w+(?:['\-]\w+)*")
METHODS = ("bm25", "dense", "entity", "random")


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens of `text` (BM25's and the linker's tokenization)."""
    return [m.group().lower() for m in TOKEN.finditer(text)]


# ---------------------------------------------------------------------- entity linking
@dataclass(frozen=True)
class Mention:
    entity: str
    surface: str
    start: int  # character offsets in the linked text
    end: int


class EntityLinker:
    """Greedy longest-match dictionary linker over entity names and aliases (case-insensitive, whole words).

    `skip` drops candidate surface forms that are only stop words (ConceptNet has entities such as "go")."""

    def __init__(self, kg: KnowledgeGraph, skip: Iterable[str] = (), min_chars: int = 1):
        self.kg, self.skip, self.min_chars = kg, {s.lower() for s in skip}, min_chars
        self._version = -1

    def _sync(self) -> None:
        if self._version == self.kg.version:
            return
        self.forms: dict[tuple[str, ...], str] = {}
        for surface, ent in self.kg.surface_forms().items():
            toks = tuple(tokens(surface))
            if toks and len(surface) >= self.min_chars and not all(t in self.skip for t in toks):
                self.forms.setdefault(toks, ent)
        self.max_len = max((len(k) for k in self.forms), default=1)
        self._version = self.kg.version

    def link(self, text: str) -> list[Mention]:
        """The KG entities (or aliases) `text` mentions: the longest match at each word, left to right."""
        self._sync()
        spans = list(TOKEN.finditer(text))
        words = [m.group().lower() for m in spans]
        out, i = [], 0
        while i < len(words):
            for n in range(min(self.max_len, len(words) - i), 0, -1):
                ent = self.forms.get(tuple(words[i:i + n]))
                if ent is not None:
                    s, e = spans[i].start(), spans[i + n - 1].end()
                    out.append(Mention(ent, text[s:e], s, e))
                    i += n
                    break
            else:
                i += 1
        return out

    def entities(self, text: str) -> list[str]:
        """The distinct entities `text` mentions, in order of appearance."""
        return list(dict.fromkeys(m.entity for m in self.link(text)))


# ---------------------------------------------------------------------- lexical ranking
class BM25:
    """Okapi BM25 (k1, b) over a fixed document list with sparse matrices (sklearn tokenisation)."""

    def __init__(self, docs: Sequence[str], k1: float = 1.5, b: float = 0.75):
        from sklearn.feature_extraction.text import CountVectorizer  # heavy: sklearn imported only for BM25

        self.vec = CountVectorizer(token_pattern=r"(?u)\b\w+\b", lowercase=True)
        self.n_docs = len(docs)
        if not any(re.search(r"\w", d) for d in docs):  # no word at all (an empty KG, punctuation only)
            self.weights = None
            return
        tf = self.vec.fit_transform(list(docs)).tocsr().astype(np.float64)
        n = tf.shape[0]
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        self.idf = np.log((n - df + 0.5) / (df + 0.5) + 1.0)
        dl = np.asarray(tf.sum(1)).ravel()
        norm_len = k1 * (1 - b + b * dl / max(dl.mean(), 1e-9))
        rows = np.repeat(np.arange(n), np.diff(tf.indptr))
        tf.data = tf.data * (k1 + 1) / (tf.data + norm_len[rows]) * self.idf[tf.indices]
        self.weights = tf  # (docs, vocab): per-term BM25 contribution

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query` (each distinct query term counted once)."""
        if self.weights is None:
            return np.zeros(self.n_docs)
        q = self.vec.transform([query])
        q.data[:] = 1.0  # each distinct query term counts once
        return np.asarray((self.weights @ q.T).todense()).ravel()


# ---------------------------------------------------------------------- retriever
@dataclass(frozen=True)
class Scored:
    triple: Triple
    score: float


class Retriever:
    """Top-k triples for a query text.

    method: "bm25" (lexical), "dense" (MiniLM cosine), "entity" (the linked entities' triples in random
    order: linking without relevance ranking), "random" (any k triples). `restrict_to_linked` ranks only
    the linked entities' triples (LM-CORE); with no linked entity every triple is a candidate."""

    def __init__(self, kg: KnowledgeGraph, method: str = "bm25", k: int = 2, restrict_to_linked: bool = True,
                 linker: EntityLinker | None = None, encoder: MiniLMEncoder | None = None, seed: int = 0):
        if method not in METHODS:
            raise LmlabError(f"unknown retrieval method {method!r}; choose from {', '.join(METHODS)}")
        if k < 1:
            raise LmlabError(f"k must be at least 1, got {k}")
        self.kg, self.method, self.k, self.restrict = kg, method, k, restrict_to_linked
        self.linker = linker or EntityLinker(kg)
        self.encoder = encoder if encoder is not None else (MiniLMEncoder() if method == "dense" else None)
        self.rng = random.Random(seed)
        self._version = -1

    def _sync(self) -> None:
        if self._version == self.kg.version:
            return
        self.triples = self.kg.triples
        self.row = {t: i for i, t in enumerate(self.triples)}
        self.texts = [self.kg.verbalise(t) for t in self.triples]
        if self.method == "bm25":
            self.bm25 = BM25(self.texts)
        elif self.method == "dense":
            self.emb = self.encoder.encode(self.texts)
        self._version = self.kg.version

    def candidates(self, query: str) -> list[int]:
        """Rows of the triples to rank: the linked entities' (LM-CORE), or all when none links."""
        if self.restrict:
            linked = self.linker.entities(query)
            rows = list(dict.fromkeys(self.row[t] for e in linked for t in self.kg.about(e)))
            if rows:
                return rows
        return list(range(len(self.triples)))

    def retrieve(self, query: str, k: int | None = None) -> list[Scored]:
        """The top-k scored triples for `query`."""
        return self.retrieve_many([query], k)[0]

    def retrieve_many(self, queries: Sequence[str], k: int | None = None) -> list[list[Scored]]:
        """The top-k scored triples for each query."""
        self._sync()
        k = k or self.k
        qemb = self.encoder.encode(list(queries)) if self.method == "dense" else None
        out = []
        for qi, q in enumerate(queries):
            if self.method == "random":
                rows = self.rng.sample(range(len(self.triples)), min(k, len(self.triples)))
                out.append([Scored(self.triples[r], 0.0) for r in rows])
                continue
            rows = np.array(self.candidates(q), dtype=np.int64)
            if self.method == "entity":
                scores = np.array([self.rng.random() for _ in rows])
            elif self.method == "bm25":
                scores = self.bm25.scores(q)[rows]
            else:
                scores = self.emb[rows] @ qemb[qi]
            order = np.argsort(-scores, kind="stable")[:k]
            out.append([Scored(self.triples[rows[i]], float(scores[i])) for i in order])
        return out


def recall_at_k(retrieved: Sequence[Sequence[Triple | Scored]], gold: Sequence[Triple | Iterable[Triple]],
                k: int) -> float:
    """Mean over queries of |gold ∩ top-k| / |gold| (a single gold triple per query gives the hit rate)."""
    if len(retrieved) != len(gold):
        raise ValueError(f"{len(retrieved)} retrieval lists for {len(gold)} gold entries")
    if not gold:
        return float("nan")
    total = 0.0
    for got, g in zip(retrieved, gold):
        gs = {g} if isinstance(g, Triple) else set(g)
        top = {x.triple if isinstance(x, Scored) else x for x in list(got)[:k]}
        total += len(gs & top) / max(1, len(gs))
    return total / len(gold)


def bm25_top_k(docs: Sequence[str], queries: Sequence[str], k: int) -> list[list[int]]:
    """For each query, the indices of the `k` documents with the highest BM25 score (ties: the earlier
    document), e.g. verbalised KG paths ranked against a sentence (CoSe-Co's retrieval baseline)."""
    if k < 1:
        raise LmlabError(f"k must be at least 1, got {k}")
    bm25 = BM25(docs)
    return [np.argsort(-bm25.scores(q), kind="stable")[:k].tolist() for q in queries]
