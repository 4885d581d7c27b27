"""TransformerLens-style hook points: identity modules whose forward hooks can read or replace
activations. Names follow TransformerLens (`blocks.{i}.hook_resid_post`, `blocks.{i}.attn.hook_pattern`).

Meaning and layout of the attention hooks (lmlab GPT, and `lmlab.hf.HFModel` where noted):

- `attn.hook_q`, `attn.hook_k`, `attn.hook_v`: the projections split into heads, **before RoPE**, as in
  TransformerLens (and in the HF adapter). `attn.hook_rot_q`, `attn.hook_rot_k`: q and k **after RoPE**,
  the tensors the attention scores are computed from (TL's `hook_rot_q/k`; in the HF adapter after RoPE and
  QK-norm, and a replaced `hook_rot_k` is refused during KV-cached decoding, as the cache keeps the HF keys).
- Layout of q/k/v/rot_q/rot_k/z: `layout="lmlab"` (the default of `hooks` and `run_with_cache`) is heads
  first, **(batch, heads, pos, d_head)**: index a head as `z[:, h]`. `layout="tl"` gives TransformerLens's
  **(batch, pos, heads, d_head)** (index a head as `z[:, :, h]`); a hook's replacement is then taken in that
  layout too. With grouped-query attention k/v have n_kv_heads heads. IHA's q/k/v/rot_q/rot_k are the virtual
  sequences (batch, heads, pos·P, d_head) (in "tl": (batch, pos·P, heads, d_head)).
- `attn.hook_pattern`: (batch, heads, query pos, key pos), rows summing to 1, in either layout (as in
  TransformerLens). `attn.hook_z`: the attention output per head, before the output projection.
- `blocks.{i}.hook_resid_*`, `hook_attn_out`, `hook_mlp_out`, `mlp.hook_pre/post`, `hook_embed`:
  (batch, pos, features), as in TransformerLens.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
import torch.nn as nn

from lmlab.errors import LmlabError

HEAD_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z")  # (batch, heads, pos, d_head)
LAYOUTS = {"lmlab": "(batch, heads, pos, d_head)", "tl": "(batch, pos, heads, d_head), as TransformerLens"}


class HookPoint(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def active(self) -> bool:
        return bool(self._forward_hooks) or bool(self._forward_pre_hooks)


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    return {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}


def _in_layout(fn: Callable, name: str, layout: str) -> Callable:
    """`fn` seeing (and replacing) a per-head hook's tensor in `layout`; the model keeps its own."""
    if layout not in LAYOUTS:
        raise LmlabError(f"unknown hook layout {layout!r}; choose from " +
                         ", ".join(f"{k} {v}" for k, v in LAYOUTS.items()))
    if layout == "lmlab" or name.rsplit(".", 1)[-1] not in HEAD_HOOKS:
        return fn

    def tl(x, n):
        out = fn(x.transpose(1, 2), n)
        return None if out is None else out.transpose(1, 2)

    return tl


@contextlib.contextmanager
def hooks(model: nn.Module, fwd_hooks: Iterable[tuple[str, Callable]], layout: str = "lmlab"):
    """Temporarily attach `fn(activation, name) -> activation | None` to named hook points.

    Returning a tensor replaces the activation (patching); returning None leaves it unchanged. `layout`: how the
    per-head attention hooks (q/k/v/rot_q/rot_k/z) are seen, "lmlab" (batch, heads, pos, d_head) or "tl"
    (batch, pos, heads, d_head), TransformerLens's; the other hooks are the same in both.
    """
    fwd_hooks = [(name, _in_layout(fn, name, layout)) for name, fn in fwd_hooks]
    points = hook_points(model)
    handles = []
    try:
        for name, fn in fwd_hooks:
            if name not in points:
                close = [n for n in points if n.split(".")[-1] == name.split(".")[-1]][:5]
                raise KeyError(f"no hook point {name!r} in {type(model).__name__}; e.g. {close}")
            handles.append(points[name].register_forward_hook(
                lambda mod, inp, out, _fn=fn, _n=name: _fn(out, _n)))
        yield
    finally:
        for h in handles:
            h.remove()


def run_with_cache(model: nn.Module, *args, names: Iterable[str] | Callable[[str], bool] | None = None,
                   detach: bool = True, layout: str = "lmlab", **kwargs):
    """Run the model and return (output, {hook name: activation}) for the selected hook points; `layout="tl"`
    caches the per-head attention activations as TransformerLens does, (batch, pos, heads, d_head)."""
    points = hook_points(model)
    if names is None:
        selected = list(points)
    elif callable(names):
        selected = [n for n in points if names(n)]
    else:
        selected = list(names)
    store: dict[str, torch.Tensor] = {}

    def save(x, name):
        store[name] = x.detach() if detach else x

    with hooks(model, [(n, save) for n in selected], layout):
        out = model(*args, **kwargs)
    return out, store
