"""The qTTT paper's FLOP model (App. C) for compute-matched comparisons.

Notation: L layers, width d, MLP ratio r; C_quad = 2·L·d (attention scores), C_tok = (4 + 2r)·L·d²
(per-token projections and MLP).

    prefill      F_prefill(T)     = C_quad·T² + C_tok·T                         (shared by every method)
    thinking     F_think(M; T)    = C_quad·(M·T + M(M−1)/2) + C_tok·M           (M tokens decoded with a KV cache)
    qTTT step    G_step(k; T)     = 2·(C_quad·k·T + (2 + 2r)·L·k·d²)            (fwd + bwd, no K/V projections)
    qTTT         F_qTTT(N, k; T)  = N·G_step(k; T)

`matched_thinking_tokens(N, k, T)` solves F_think(M; T) = F_qTTT(N, k; T) for M. When T ≫ d and k ≪ T,
M ≈ 2·N·k (the paper's Eq. 3.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from lmlab.utils import LmlabError


@dataclass(frozen=True)
class FlopModel:
    n_layers: int
    d_model: int
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if self.n_layers < 1 or self.d_model < 1 or self.mlp_ratio <= 0:
            raise LmlabError(f"FLOP model needs positive n_layers, d_model and mlp_ratio, got {self}")

    @classmethod
    def from_model(cls, model: nn.Module) -> FlopModel:
        """L, d and an MLP ratio r such that 2·r·d² equals the MLP's parameter count per layer
        (SwiGLU with hidden h: r = 1.5·h/d; a plain two-matrix MLP: r = h/d)."""
        cfg = getattr(model, "cfg", None)
        if cfg is not None and hasattr(cfg, "d_model"):
            gated = cfg.mlp == "swiglu"
            return cls(cfg.n_layers, cfg.d_model, (1.5 if gated else 1.0) * cfg.hidden / cfg.d_model)
        c = getattr(model, "config", None)
        if c is None:
            raise LmlabError(f"cannot read layer count and width from {type(model).__name__}")
        d = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None)
        n_layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
        inter = getattr(c, "intermediate_size", None)
        if inter is not None:  # Llama/Qwen/Mistral: gated MLP with three matrices
            return cls(n_layers, d, 1.5 * inter / d)
        inner = getattr(c, "n_inner", None) or 4 * d
        return cls(n_layers, d, inner / d)

    @property
    def c_quad(self) -> float:
        return 2.0 * self.n_layers * self.d_model

    @property
    def c_tok(self) -> float:
        return (4 + 2 * self.mlp_ratio) * self.n_layers * self.d_model**2

    def prefill(self, T: float) -> float:
        return self.c_quad * T * T + self.c_tok * T

    def thinking(self, M: float, T: float) -> float:
        return self.c_quad * (M * T + M * (M - 1) / 2) + self.c_tok * M

    def qttt_step(self, k: float, T: float) -> float:
        return 2 * (self.c_quad * k * T + (2 + 2 * self.mlp_ratio) * self.n_layers * k * self.d_model**2)

    def qttt(self, N: float, k: float, T: float) -> float:
        return N * self.qttt_step(k, T)

    def matched_thinking_tokens(self, N: float, k: float, T: float) -> float:
        """M with F_think(M; T) = F_qTTT(N, k; T) (positive root of a·M² + b·M − F = 0)."""
        a = self.c_quad / 2
        b = self.c_quad * (T - 0.5) + self.c_tok
        f = self.qttt(N, k, T)
        return (-b + math.sqrt(b * b + 4 * a * f)) / (2 * a)

    def matched_qttt_steps(self, M: float, k: float, T: float) -> float:
        """N with F_qTTT(N, k; T) = F_think(M; T) (may be fractional)."""
        return self.thinking(M, T) / self.qttt_step(k, T)

    def budget_table(self, N: int, k: int, lengths) -> list[dict]:
        """Per context length: FLOPs of prefill, qTTT, the matched thinking tokens and 2·N·k."""
        rows = []
        for T in lengths:
            m = self.matched_thinking_tokens(N, k, T)
            rows.append(
                {
                    "T": T,
                    "prefill_flops": self.prefill(T),
                    "qttt_flops": self.qttt(N, k, T),
                    "qttt_over_prefill": self.qttt(N, k, T) / self.prefill(T),
                    "matched_think_tokens": m,
                    "rule_2Nk": 2 * N * k,
                    "ratio_to_2Nk": m / (2 * N * k),
                }
            )
        return rows
