"""The qTTT paper's FLOP model (App. C) for compute-matched comparisons.

Notation: L layers, width d, MLP ratio r; C_quad = 2·L·d (attention scores), C_tok = (4 + 2r)·L·d²
(per-token projections and MLP). With grouped K/V heads (g = n_kv_heads / n_heads < 1) the K and V
projections are d × g·d each, so C_tok = (2 + 2g + 2r)·L·d² (g = 1 gives the paper's 4 + 2r).

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
    kv_ratio: float = 1.0  # n_kv_heads / n_heads (grouped-query attention: < 1)

    def __post_init__(self):
        if self.n_layers < 1 or self.d_model < 1 or self.mlp_ratio <= 0 or not 0 < self.kv_ratio <= 1:
            raise LmlabError(
                f"FLOP model needs positive n_layers, d_model and mlp_ratio and 0 < kv_ratio <= 1, got {self}"
            )

    @classmethod
    def from_model(cls, model: nn.Module) -> FlopModel:
        """L, d, an MLP ratio r such that 2·r·d² equals the MLP's parameter count per layer (gated MLP
        with hidden h, e.g. SwiGLU: r = 1.5·h/d; a plain two-matrix MLP: r = h/d) and the K/V head ratio
        g = n_kv_heads / n_heads, from an lmlab `GPT` or a Hugging Face causal LM (or its config).

        Hugging Face naming: Llama/Qwen/Mistral/OLMo `intermediate_size` (gated), Pythia/GPT-NeoX and Phi
        `intermediate_size` (plain), GPT-2 `n_inner` (plain, None = 4·d); `num_key_value_heads` for GQA."""
        cfg = getattr(model, "cfg", None)
        if cfg is not None and hasattr(cfg, "d_model"):
            gated = cfg.mlp == "swiglu"
            return cls(
                cfg.n_layers,
                cfg.d_model,
                (1.5 if gated else 1.0) * cfg.hidden / cfg.d_model,
                cfg.kv_heads / cfg.n_heads,
            )
        inner = getattr(model, "hf", None)  # lmlab's HFModel adapter
        c = getattr(model, "config", None) or getattr(inner, "config", None)
        if c is None and hasattr(model, "model_type"):  # a transformers config itself
            c, model = model, None
        if c is None:
            raise LmlabError(f"cannot read layer count and width from {type(model).__name__}")
        d = _first(c, "hidden_size", "n_embd", "d_model")
        n_layers = _first(c, "num_hidden_layers", "n_layer", "num_layers")
        heads = _first(c, "num_attention_heads", "n_head")
        if d is None or n_layers is None:
            raise LmlabError(f"config {type(c).__name__} names no hidden size / layer count")
        hidden = _first(c, "intermediate_size", "n_inner", "ffn_dim") or 4 * d
        gated = _gated_mlp(c, inner if isinstance(inner, nn.Module) else model)
        kv = _first(c, "num_key_value_heads", "n_head_kv", "num_kv_heads")
        if kv is None and getattr(c, "multi_query", False):
            kv = 1
        kv_ratio = kv / heads if kv and heads else 1.0
        return cls(n_layers, d, (1.5 if gated else 1.0) * hidden / d, kv_ratio)

    @property
    def c_quad(self) -> float:
        """FLOPs per token pair (the attention term that grows with context length)."""
        return 2.0 * self.n_layers * self.d_model

    @property
    def c_tok(self) -> float:
        """FLOPs per token of the projections and the MLP."""
        return (2 + 2 * self.kv_ratio + 2 * self.mlp_ratio) * self.n_layers * self.d_model**2

    def prefill(self, T: float) -> float:
        """FLOPs of prefilling T context tokens."""
        return self.c_quad * T * T + self.c_tok * T

    def thinking(self, M: float, T: float) -> float:
        """FLOPs of M thinking tokens decoded after a context of T."""
        return self.c_quad * (M * T + M * (M - 1) / 2) + self.c_tok * M

    def qttt_step(self, k: float, T: float) -> float:
        """FLOPs of one qTTT step on a span of k tokens over a cached context of T."""
        # the span step reuses the cached K/V: only W_Q, W_O and the MLP run per span token
        return 2 * (self.c_quad * k * T + (2 + 2 * self.mlp_ratio) * self.n_layers * k * self.d_model**2)

    def qttt(self, N: float, k: float, T: float) -> float:
        """FLOPs of N qTTT steps on spans of k tokens."""
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


# Hugging Face model types whose MLP is gated (three matrices) or plain (two matrices)
_GATED_TYPES = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "olmo",
    "olmo2",
    "olmoe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "granite",
    "cohere",
    "deepseek_v2",
    "deepseek_v3",
    "smollm3",
}
_PLAIN_TYPES = {
    "gpt_neox",
    "gpt2",
    "gptj",
    "gpt_neo",
    "gpt_bigcode",
    "phi",
    "opt",
    "bloom",
    "falcon",
    "codegen",
    "starcoder2",
    "mpt",
    "biogpt",
}


def _first(c, *names):
    for n in names:
        v = getattr(c, n, None)
        if v is not None:
            return v
    return None


def _gated_mlp(c, model: nn.Module | None) -> bool:
    """Whether the MLP has a gate matrix: from the modules when there is a model (a `gate_proj`, fused
    `gate_up_proj` or Llama-style `w3`), else from the config's model_type, else from the activation."""
    if isinstance(model, nn.Module):
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        if names & {"gate_proj", "gate_up_proj", "w3"}:
            return True
        if names & {"dense_h_to_4h", "c_fc", "fc1", "fc_in", "up_proj"}:
            return False
    t = getattr(c, "model_type", None)
    if t in _GATED_TYPES:
        return True
    if t in _PLAIN_TYPES:
        return False
    act = str(_first(c, "hidden_act", "activation_function") or "")
    return act in ("silu", "swiglu", "swish")
