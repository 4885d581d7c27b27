"""A synthetic "translation" task with known word alignments, for testing attribution methods.

Source sentences are random words `s0…s{V-1}`; the target translates every word through a fixed random
one-to-one lexicon into `t0…t{V-1}` and reorders the words (reverse, swap adjacent pairs, or keep the order).
The true alignment (target index → source index) is therefore known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REORDERINGS = ("reverse", "swap_pairs", "monotone")


@dataclass
class AlignedExample:
    source: list[str]
    target: list[str]
    alignment: list[tuple[int, int]]  # (target index, source index)


@dataclass
class AlignedTranslationTask:
    n_words: int = 24
    min_len: int = 4
    max_len: int = 8
    reorder: str = "reverse"
    seed: int = 0

    def __post_init__(self):
        if self.reorder not in REORDERINGS:
            raise ValueError(f"reorder must be one of {REORDERINGS}, got {self.reorder!r}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError("need 1 <= min_len <= max_len")
        perm = np.random.default_rng(self.seed).permutation(self.n_words)
        self.lexicon = {f"s{i}": f"t{int(perm[i])}" for i in range(self.n_words)}
        self.src_vocab = [f"s{i}" for i in range(self.n_words)]
        self.tgt_vocab = [f"t{i}" for i in range(self.n_words)]

    def order(self, n: int) -> list[int]:
        """Source index of each target position."""
        if self.reorder == "reverse":
            return list(range(n - 1, -1, -1))
        if self.reorder == "swap_pairs":
            out = []
            for i in range(0, n - 1, 2):
                out += [i + 1, i]
            return out + ([n - 1] if n % 2 else [])
        return list(range(n))

    def example(self, source: list[str]) -> AlignedExample:
        order = self.order(len(source))
        return AlignedExample(source, [self.lexicon[source[j]] for j in order], list(enumerate(order)))

    def sample(self, n: int, seed: int) -> list[AlignedExample]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            length = int(rng.integers(self.min_len, self.max_len + 1))
            out.append(self.example([self.src_vocab[i] for i in rng.integers(0, self.n_words, length)]))
        return out

    def verify(self, source: list[str], target: list[str]) -> bool:
        return target == self.example(source).target
