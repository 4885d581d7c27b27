"""The polynomial-filter task of Interleaved Head Attention (Sec. 3.1, 4.2, App. B.2).

A fixed full-rank graph operator A ∈ R^{N×N} (spectral norm 1) defines the task; an input is a node
feature matrix X ∈ R^{N×d}, its target the filter bank [X, AX, A²X, …, A^{k−1}X] ∈ R^{N×kd} (each
block standardised). It stands in for k-hop reasoning: a linear-attention head whose queries and keys
read only positions realises one operator S = QKᵀ, so MHA needs k heads (a rank argument), while IHA
needs ⌈√k⌉ heads with ⌈√k⌉ pseudo-heads.
"""

from __future__ import annotations

import torch


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
