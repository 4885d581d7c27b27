"""FLOP accounting for attention layers, including IHA's virtual sequence and sliding windows.

Two conventions for the attention-score FLOPs (QKᵀ and AV, forward + backward = 3 × 4·H·d per
query-key pair):

- `causal=False` (the paper's and `MultiHeadAttention.flops_per_token`'s): every query is charged
  min(N, W)·P keys, as if the causal mask saved nothing. Under it the paper's hybrid schedule
  (4 window-IHA : 1 global MHA, W = N/(2P²)) costs 3/5 of an all-MHA stack.
- `causal=True`: only the pairs the flat causal mask keeps: min(n, W−1)·P + p + 1 keys for virtual
  query (n, p) (the windows are token-aligned; spec §12.1 writes ≈ min(n·P+p+1, W·P)). Causal
  kernels skip the masked half of a global layer but not of a window, so under this count the
  hybrid schedule costs about as much as all-MHA (ratio → 1 for N ≫ W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmlab.model import GPTConfig


def _pairs_causal(n: int, p: int, window: int) -> int:
    """Query-key pairs kept by the flat causal mask with a token-aligned window over N·P virtual
    tokens: virtual query (n, p) sees min(n, W−1)·P + p + 1 keys."""
    k = min(window, n) - 1
    earlier = k * (k + 1) // 2 + (n - 1 - k) * k  # Σ_n min(n, W−1)
    return earlier * p * p + n * p * (p + 1) // 2


def attention_flops_per_token(seq_len: int, n_heads: int, head_dim: int, n_pseudo: int = 1,
                              window: int | None = None, causal: bool = False) -> float:
    """Forward+backward attention-score FLOPs per original token at sequence length `seq_len`.

    n_pseudo: IHA's P (1 = MHA); window: sliding window in original tokens (None = global).
    """
    p = n_pseudo
    w = seq_len if window is None else min(window, seq_len)
    per_pair = 12 * n_heads * head_dim
    if not causal:
        return float(per_pair * p * (w * p))
    return per_pair * _pairs_causal(seq_len, p, w) / seq_len


def layer_attention_flops(cfg: "GPTConfig", layer: int, seq_len: int, causal: bool = False) -> float:
    """Attention-score FLOPs per token of one layer of a GPTConfig (MHA or IHA with its options)."""
    name = cfg.attention_for(layer)
    if name == "mha":
        return attention_flops_per_token(seq_len, cfg.n_heads, cfg.head_dim, causal=causal)
    if name == "iha":
        from lmlab.attention_iha import iha_options

        o = iha_options(cfg)
        return attention_flops_per_token(seq_len, cfg.n_heads, cfg.head_dim, o["n_pseudo"], o["window"],
                                         causal)
    raise ValueError(f"no FLOP formula for attention {name!r} (known: mha, iha)")


def stack_attention_flops(cfg: "GPTConfig", seq_len: int | None = None, causal: bool = False) -> float:
    """Attention-score FLOPs per token summed over all layers."""
    t = seq_len or cfg.seq_len
    return sum(layer_attention_flops(cfg, i, t, causal) for i in range(cfg.n_layers))


def flop_ratio_vs_mha(cfg: "GPTConfig", seq_len: int | None = None, causal: bool = False) -> float:
    """Attention FLOPs of `cfg` divided by those of the same stack with MHA in every layer."""
    t = seq_len or cfg.seq_len
    mha = cfg.n_layers * attention_flops_per_token(t, cfg.n_heads, cfg.head_dim, causal=causal)
    return stack_attention_flops(cfg, t, causal) / mha
