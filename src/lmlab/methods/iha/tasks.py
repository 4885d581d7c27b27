"""The synthetic tasks of Interleaved Head Attention: polynomial filters (Sec. 3.1, 4.2, App. B.2),
Count Permutation Match-3 (Sec. 4.3, App. B.3) and relation composition (App. D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch



# ------------------------------------------------------------------------------------------------
# The polynomial-filter task of Interleaved Head Attention (Sec. 3.1, 4.2, App. B.2).
#
# A fixed full-rank graph operator A ∈ R^{N×N} (spectral norm 1) defines the task; an input is a node
# feature matrix X ∈ R^{N×d}, its target the filter bank [X, AX, A²X, …, A^{k−1}X] ∈ R^{N×kd} (each
# block standardised). It stands in for k-hop reasoning: a linear-attention head whose queries and keys
# read only positions realises one operator S = QKᵀ, so MHA needs k heads (a rank argument), while IHA
# needs ⌈√k⌉ heads with ⌈√k⌉ pseudo-heads.

def filter_bank(a: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """[X, AX, …, A^{k−1}X] along the feature axis. a: (N, N); x: (B, N, d) -> (B, N, k·d)."""
    blocks, cur = [x], x
    for _ in range(k - 1):
        cur = torch.einsum("ij,bjd->bid", a, cur)
        blocks.append(cur)
    return torch.cat(blocks, dim=-1)


class PolynomialFilterTask:
    """One task instance: a random operator A with ‖A‖₂ = 1, Gaussian node features X."""

    def __init__(self, n_nodes: int = 8, n_features: int = 2, k: int = 4, seed: int = 0):
        if min(n_nodes, n_features, k) < 1:
            raise ValueError(f"n_nodes, n_features and k must be positive, got {n_nodes}, {n_features}, {k}")
        self.n_nodes, self.n_features, self.k = n_nodes, n_features, k
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(n_nodes, n_nodes, generator=g)
        self.a = a / torch.linalg.matrix_norm(a, ord=2)
        # per-block scale so every power has unit variance (A^i shrinks X)
        probe = filter_bank(self.a, torch.randn(4096, n_nodes, n_features, generator=g), k)
        self.block_std = probe.view(-1, k, n_features).std(dim=(0, 2))  # (k,)

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """(X (B, N, d), standardised targets (B, N, k·d))."""
        x = torch.randn(batch, self.n_nodes, self.n_features, generator=generator)
        y = filter_bank(self.a, x, self.k).view(batch, self.n_nodes, self.k, self.n_features)
        return x, (y / self.block_std[:, None]).flatten(2)


def nmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error normalised by the target's variance (0 = perfect, ≈1 = predicting the mean)."""
    return float(((pred - target) ** 2).mean() / target.var())


# ------------------------------------------------------------------------------------------------
# Count Permutation Match-3 (CPM-3) of Interleaved Head Attention (Sec. 4.3, App. B.3).
#
# For natural numbers x_1..x_N (N ≤ N_max),
# CPM_i(3) = |{(j₁, j₂) ∈ [N]² : (x_i + G·x_{j₁} + x_{j₂}) mod M = 0}|,
# with G > 2M (which makes the predicate order-sensitive). The constructions first build, at every position, a "workspace" holding every symbol in a known cyclic order — the shifts (x_i, x_{i+1}, …,
# x_{i+N−1}) — with attention, then count with an MLP. MHA's construction needs N_max heads (one shift
# each), IHA's ⌈√N_max⌉ heads with as many pseudo-heads.

def cpm3_counts(x: torch.Tensor, modulus: int, g: int) -> torch.Tensor:
    """CPM_i(3) for every position. x: (B, N) integers -> (B, N) counts over all (j₁, j₂) ∈ [N]²."""
    s = x[:, :, None, None] + g * x[:, None, :, None] + x[:, None, None, :]  # (B, i, j1, j2)
    return (s % modulus == 0).sum(dim=(2, 3))


def cyclic_workspace(x: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, N, N) with [b, i, t] = x[b, (i + t) mod N]: every symbol, in cyclic order."""
    n = x.shape[1]
    idx = (torch.arange(n)[:, None] + torch.arange(n)[None, :]) % n
    return x[:, idx]


class CPM3Task:
    """Random sequences of N_max tokens in 0..n_values−1 with their workspace and CPM-3 counts."""

    def __init__(self, n_max: int = 4, n_values: int = 10, modulus: int = 3, g: int = 7):
        if g <= 2 * modulus:
            raise ValueError(f"CPM-3 needs G > 2M for an order-sensitive predicate, got G={g}, M={modulus}")
        if n_max < 2 or n_values < 2:
            raise ValueError(f"need n_max >= 2 and n_values >= 2, got {n_max}, {n_values}")
        self.n_max, self.n_values, self.modulus, self.g = n_max, n_values, modulus, g
        self.mean = (n_values - 1) / 2
        self.std = ((n_values ** 2 - 1) / 12) ** 0.5  # of the discrete uniform on 0..n_values−1

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch, n_max) random values."""
        return torch.randint(0, self.n_values, (batch, self.n_max), generator=generator)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Token values standardised to zero mean and unit variance (the uniform law over 0..n_values-1)."""
        return (x.float() - self.mean) / self.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised predictions back to the nearest valid integer symbols."""
        return (z * self.std + self.mean).round().clamp(0, self.n_values - 1).long()

    def workspace_row_accuracy(self, pred_std: torch.Tensor, x: torch.Tensor) -> float:
        """Fraction of positions whose whole predicted workspace row decodes to the right symbols."""
        return float((self.decode(pred_std) == cyclic_workspace(x)).all(dim=-1).float().mean())

    def counts(self, x: torch.Tensor) -> torch.Tensor:
        """The CPM-3 counts of each row of `x`."""
        return cpm3_counts(x, self.modulus, self.g)


# ------------------------------------------------------------------------------------------------
# Relation composition (Interleaved Head Attention, App. D): R∘R and R∘R∘R on random boolean matrices.
#
# An input is a random m×m boolean matrix R flattened row-major into m² binary tokens; the target at
# each position (i, j) is (R∘R)_{ij} = 1 iff ∃k: R_ik ∧ R_kj (order 2), or the same for R∘R∘R
# (order 3).
# Sequence-to-sequence with aligned positions; batches are right-padded. The paper's settings:
# order 2: m ~ U{6..10}, p = 0.325; order 3: m ~ U{5..8}, p = 0.264 (labels roughly balanced).

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
        """A batch of random relations (0/1 entries) with their composition targets, valid mask and sizes."""
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
