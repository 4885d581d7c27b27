"""The "nope" attention variant: lmlab's multi-head attention with the rotary embedding switched off."""

from __future__ import annotations

import torch

from lmlab.model import MultiHeadAttention, register_attention


@register_attention("nope")
class NoPositionAttention(MultiHeadAttention):
    """Causal attention without positional encoding (hook_rot_q/hook_rot_k equal hook_q/hook_k)."""

    takes_options = False

    def forward(self, x, rope, ctx):
        cos, sin = rope
        return super().forward(x, (torch.ones_like(cos), torch.zeros_like(sin)), ctx)
