"""Attention layers behind one interface, chosen by name from a registry.

An attention module is built as `cls(cfg, layer_idx)` and called as
`attn(x, rope, ctx)` where `rope = (cos, sin)` for the query positions and `ctx` is an
`AttnContext` (KV cache, masks). Projections are named like Llama's (`q_proj`, `k_proj`, `v_proj`,
`o_proj`) so that export, qTTT and analysis code find them by name.

Options: `GPTConfig.attention_options` is validated when the config is built. A class declares what it
accepts with a classmethod `validate_options(cfg) -> bool` (raise ValueError on bad options; return
whether it reads them) or with `takes_options = False` in its own class body (it reads none). Classes
that declare neither are assumed to read them (see `check_attention_options`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.hooks import HookPoint

if TYPE_CHECKING:
    from lmlab.model import GPTConfig, KVCache

ATTENTIONS: dict[str, type[nn.Module]] = {}


def register_attention(name: str):
    def deco(cls):
        ATTENTIONS[name] = cls
        cls.registry_name = name
        return cls

    return deco


def build_attention(name: str, cfg: GPTConfig, layer_idx: int) -> nn.Module:
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; registered: {', '.join(sorted(ATTENTIONS))}")
    return ATTENTIONS[name](cfg, layer_idx)


def check_attention_options(name: str, cfg: GPTConfig) -> bool:
    """Validate `cfg.attention_options` for attention `name` (ValueError when bad); True when it reads them.

    `takes_options` is looked up in the class's own body only, so a subclass of MHA that reads options
    (a custom attention) is not taken for one that ignores them.
    """
    cls = ATTENTIONS[name]
    validate = getattr(cls, "validate_options", None)
    if validate is not None:
        return bool(validate(cfg))
    return bool(cls.__dict__.get("takes_options", True))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the Llama convention). x: (B, H, T, D); cos/sin: (B, 1, T, D)."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


@dataclass
class AttnContext:
    """What an attention layer needs beyond its input.

    mask: None (plain causal over the given tokens, no cache), or a bool tensor (B, 1, Tq, Tk) over
    [cached keys ++ new keys] (True = may attend). cache: the KVCache or None. positions: (B, T) query
    positions when the caller provides them (IHA needs them with a frozen cache).
    """

    mask: torch.Tensor | None = None
    cache: KVCache | None = None
    positions: torch.Tensor | None = None


def attend(q, k, v, ctx: AttnContext, hook_pattern: HookPoint | None = None, causal_if_no_mask: bool = True):
    """Scaled dot-product attention, with an explicit pattern only when someone hooks it.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv.
    """
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    mask = ctx.mask
    is_causal = mask is None and causal_if_no_mask and q.shape[2] > 1
    if hook_pattern is not None and hook_pattern.active():
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif is_causal:
            tq, tk = q.shape[2], k.shape[2]
            causal = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
            scores = scores.masked_fill(~causal, float("-inf"))
        pattern = hook_pattern(torch.softmax(scores.float(), dim=-1).to(q.dtype))
        return pattern @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


@register_attention("mha")
class MultiHeadAttention(nn.Module):
    """Standard causal multi-head attention with RoPE, optional grouped-query KV heads, no biases.

    Hooks (TransformerLens semantics, lmlab layout (B, heads, T, head_dim)): hook_q/hook_k/hook_v are the
    projections split into heads, before RoPE; hook_rot_q/hook_rot_k are q/k after RoPE (what the scores
    use); hook_pattern (B, H, Tq, Tk); hook_z the attention output per head (B, H, T, head_dim).
    """

    takes_options = False

    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        d = cfg.d_model
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def _split(self, x, n):
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, rope, ctx: AttnContext) -> torch.Tensor:
        b, t, _ = x.shape
        cos, sin = rope
        q = self.hook_q(self._split(self.q_proj(x), self.n_heads))
        q = self.hook_rot_q(apply_rope(q, cos, sin))
        cache = ctx.cache
        if cache is not None and cache.frozen:
            k, v = cache.layer(self.layer_idx)  # qTTT: read-only context keys/values
        else:
            k = self.hook_k(self._split(self.k_proj(x), self.n_kv_heads))
            k = self.hook_rot_k(apply_rope(k, cos, sin))
            v = self.hook_v(self._split(self.v_proj(x), self.n_kv_heads))
            if cache is not None:
                k, v = cache.append(self.layer_idx, k, v)
        y = attend(q, k, v, ctx, self.hook_pattern)
        y = self.hook_z(y)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def flops_per_token(self, seq_len: int) -> float:
        """Attention-score FLOPs per token (fwd+bwd), excluding the projections (counted as parameters)."""
        return 12 * self.n_heads * self.head_dim * seq_len


@register_attention("nope")
class NoPositionAttention(MultiHeadAttention):
    """Causal attention without positional encoding (NoPE): content-only retrieval at any length.
    (hook_rot_q/hook_rot_k equal hook_q/hook_k here.)"""

    takes_options = False

    def forward(self, x, rope, ctx):
        cos, sin = rope
        return super().forward(x, (torch.ones_like(cos), torch.zeros_like(sin)), ctx)


# Registers "iha" (Interleaved Head Attention); imported last because it builds on the names above.
from lmlab import attention_iha  # noqa: F401
