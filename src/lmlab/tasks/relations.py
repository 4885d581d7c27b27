"""Relation composition (Interleaved Head Attention, App. D): R∘R and R∘R∘R on random boolean matrices.

An input is a random m×m boolean matrix R flattened row-major into m² binary tokens; the target at
each position (i, j) is (R∘R)_{ij} = 1 iff ∃k: R_ik ∧ R_kj (order 2), or the same for R∘R∘R
(order 3).
Sequence-to-sequence with aligned positions; batches are right-padded. The paper's settings:
order 2: m ~ U{6..10}, p = 0.325; order 3: m ~ U{5..8}, p = 0.264 (labels roughly balanced).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD = 2  # token id of padding (0 and 1 are the matrix entries)
PAPER_SETTINGS = {2: ((6, 10), 0.325), 3: ((5, 8), 0.264)}


def compose(r: torch.Tensor, order: int) -> torch.Tensor:
    """Boolean relation power R∘…∘R (`order` factors). r: (..., m, m) bool."""
    out = r
    for _ in range(order - 1):
        out = (out.float() @ r.float()) > 0
    return out


@dataclass
class RelationBatch:
    tokens: torch.Tensor  # (B, L) long: 0/1 entries, PAD after m²
    labels: torch.Tensor  # (B, L) float: 0/1 targets (0 where padded)
    valid: torch.Tensor  # (B, L) bool
    sizes: torch.Tensor  # (B,) m per example


class RelationCompositionTask:
    def __init__(self, order: int = 2, m_range: tuple[int, int] | None = None, p: float | None = None):
        if order not in PAPER_SETTINGS:
            raise ValueError(f"relation order must be 2 or 3, got {order!r}")
        default_range, default_p = PAPER_SETTINGS[order]
        self.order = order
        self.m_range = tuple(m_range or default_range)
        self.p = default_p if p is None else p
        if not (1 <= self.m_range[0] <= self.m_range[1]) or not 0 < self.p < 1:
            raise ValueError(f"need 1 <= m_min <= m_max and 0 < p < 1, got {self.m_range}, {self.p}")
        self.max_len = self.m_range[1] ** 2

    def sample(self, batch: int, generator: torch.Generator | None = None) -> RelationBatch:
        lo, hi = self.m_range
        sizes = torch.randint(lo, hi + 1, (batch,), generator=generator)
        length = int(sizes.max()) ** 2
        tokens = torch.full((batch, length), PAD, dtype=torch.long)
        labels = torch.zeros(batch, length)
        for m in sizes.unique().tolist():
            rows = (sizes == m).nonzero().squeeze(1)
            r = torch.rand(len(rows), m, m, generator=generator) < self.p
            tokens[rows, : m * m] = r.flatten(1).long()
            labels[rows, : m * m] = compose(r, self.order).flatten(1).float()
        valid = tokens != PAD
        return RelationBatch(tokens, labels, valid, sizes)

    def dataset(self, n: int, seed: int, batch: int = 256) -> list[RelationBatch]:
        """A fixed split (e.g. validation/test) as a list of batches."""
        g = torch.Generator().manual_seed(seed)
        return [self.sample(min(batch, n - i), g) for i in range(0, n, batch)]
