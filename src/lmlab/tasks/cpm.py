"""Count Permutation Match-3 (CPM-3) of Interleaved Head Attention (Sec. 4.3, App. B.3).

For natural numbers x_1..x_N (N ≤ N_max),
CPM_i(3) = |{(j₁, j₂) ∈ [N]² : (x_i + G·x_{j₁} + x_{j₂}) mod M = 0}|,
with G > 2M (which makes the predicate order-sensitive). The constructions first build, at every position, a "workspace" holding every symbol in a known cyclic order — the shifts (x_i, x_{i+1}, …,
x_{i+N−1}) — with attention, then count with an MLP. MHA's construction needs N_max heads (one shift
each), IHA's ⌈√N_max⌉ heads with as many pseudo-heads.
"""

from __future__ import annotations

import torch


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
        return torch.randint(0, self.n_values, (batch, self.n_max), generator=generator)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised predictions back to the nearest valid integer symbols."""
        return (z * self.std + self.mean).round().clamp(0, self.n_values - 1).long()

    def workspace_row_accuracy(self, pred_std: torch.Tensor, x: torch.Tensor) -> float:
        """Fraction of positions whose whole predicted workspace row decodes to the right symbols."""
        return float((self.decode(pred_std) == cyclic_workspace(x)).all(dim=-1).float().mean())

    def counts(self, x: torch.Tensor) -> torch.Tensor:
        return cpm3_counts(x, self.modulus, self.g)
