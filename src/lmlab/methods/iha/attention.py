"""Interleaved Head Attention (IHA; Duvvuri, Ekbote et al., 2026), registered as attention "iha".

Per layer: Q, K, V are projected as in MHA ([B, N, H, d]); each head h gets P pseudo-heads, learned
mixtures of all heads, Q̃_{h,p} = Σ_m α^Q_{m,h,p} Q_m (same for K, V); the pseudos are interleaved
token-major into the sequence axis (N·P virtual tokens, order (1,1),(1,2),…,(N,P)); ordinary
attention runs on that sequence; a collapse map R folds the P·H pseudo outputs back into H heads;
then W_O as in MHA.

Options (`GPTConfig.attention_options`):
    n_pseudo     P (default H). P = 1 is only a reparameterisation of W_Q/W_K/W_V (MHA's expressivity).
    collapse     "global" (R ∈ R^{H×HP}, the theorems' form, default) or "per_head" (R ∈ R^{H×P}).
    mask         "flat" (causal over the N·P virtual sequence: the paper's "standard causal attention")
                 or "token" (block-causal: every pseudo of token n sees all pseudos of tokens ≤ n).
    rope         "virtual" (virtual position n·P+p, the paper), "shared" (position n) or "none".
    window       sliding window in original tokens (None = global).
    init_noise   std of the Gaussian noise added to the identity mixing and collapse (default 1e-2).
    collapse_init "last" (default), "first" or "mean": which pseudo R selects at init. Only "last"
                 makes IHA equal MHA under the flat mask (pseudo (n,P) is the only one of token n that
                 sees all of token n's keys); any choice does under the token mask.
    backend      "auto" (FlexAttention on CUDA for windows / token masks, SDPA otherwise), "sdpa"
                 (dense masks), or "flex".

Grouped-query attention is refused: the paper's mixing assumes as many KV heads as query heads.
KV-cached decoding stores P virtual keys/values per token. With a frozen cache (qTTT) and the flat
mask or a window, query positions are needed (`AttnContext.positions`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from lmlab.hooks import HookPoint
from lmlab.model import (
    AttnContext,
    GPTConfig,
    apply_rope,
    attend,
    attention_flops_per_token,
    register_attention,
)

IHA_DEFAULTS = {"n_pseudo": None, "collapse": "global", "mask": "flat", "rope": "virtual", "window": None,
                "init_noise": 1e-2, "collapse_init": "last", "backend": "auto"}
_CHOICES = {"collapse": ("global", "per_head"), "mask": ("flat", "token"),
            "rope": ("virtual", "shared", "none"), "collapse_init": ("last", "first", "mean"),
            "backend": ("auto", "sdpa", "flex")}


def iha_options(cfg: "GPTConfig") -> dict:
    """Validated IHA options of a config, defaults filled in (n_pseudo resolved to H when unset)."""
    opts = dict(cfg.attention_options or {})
    unknown = set(opts) - set(IHA_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown IHA option(s) {sorted(unknown)}; known: {sorted(IHA_DEFAULTS)}")
    o = {**IHA_DEFAULTS, **opts}
    for key, allowed in _CHOICES.items():
        if o[key] not in allowed:
            raise ValueError(f"IHA option {key}={o[key]!r} is not one of {allowed}")
    o["n_pseudo"] = cfg.n_heads if o["n_pseudo"] is None else o["n_pseudo"]
    if not isinstance(o["n_pseudo"], int) or o["n_pseudo"] < 1:
        raise ValueError(f"IHA option n_pseudo must be a positive integer, got {o['n_pseudo']!r}")
    if o["window"] is not None and (not isinstance(o["window"], int) or o["window"] < 1):
        raise ValueError("IHA option window must be a positive integer (original tokens) or None, "
                         f"got {o['window']!r}")
    if cfg.kv_heads != cfg.n_heads:
        raise ValueError(f"IHA is defined for equal query and KV heads, got n_heads={cfg.n_heads}, "
                         f"n_kv_heads={cfg.kv_heads}: set n_kv_heads=None "
                         "(grouped-query IHA is not in the paper)")
    return o


# ------------------------------------------------------------------ functional core
def mix_pseudo(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Pseudo-head mixing and token-major interleave.

    x: (B, N, H, d) per-head projections; alpha: (H_src, H, P). Returns (B, H, N·P, d) where virtual
    token n·P+p of head h is Σ_m alpha[m, h, p]·x[:, n, m].
    """
    b, n, _, d = x.shape
    h, p = alpha.shape[1], alpha.shape[2]
    y = torch.einsum("bnmd,mhp->bhnpd", x, alpha.to(x.dtype)).reshape(b, h, n * p, d)
    return y.contiguous()  # flash/mem-efficient SDPA kernels need a unit stride on d (P = 1 gives a view)


def collapse_pseudo(y: torch.Tensor, r: torch.Tensor, per_head: bool) -> torch.Tensor:
    """Fold (B, H, N·P, d) pseudo outputs back into (B, H, N, d) heads.

    Global: r (H, H·P), O_h = Σ_{h',p} r[h, h'·P+p]·Ȳ_{h',p}.
    Per-head: r (H, P), O_h = Σ_p r[h, p]·Ȳ_{h,p}.
    """
    b, h, tp, d = y.shape
    p = r.shape[1] if per_head else r.shape[1] // h
    y = y.view(b, h, tp // p, p, d)
    r = r.to(y.dtype)
    if per_head:
        return torch.einsum("bhnpd,hp->bhnd", y, r)
    return torch.einsum("bjnpd,hjp->bhnd", y, r.view(r.shape[0], h, p))


def virtual_rope(cos: torch.Tensor, sin: torch.Tensor, n_pseudo: int, inv_freq: torch.Tensor, mode: str,
                 positions: torch.Tensor | None = None):
    """RoPE tables for the virtual sequence from the model's per-token tables (B, 1, T, d).

    "virtual": angle θ·(n·P + p). With `positions` (B, T) (integer token positions, as the model passes
    them) it is computed in float32 from n·P + p directly, like the model's own tables; without them it
    is rebuilt from the tables' phase θ·n (which multiplies their rounding error by P, large when the
    tables are bf16). "shared": every pseudo of token n keeps position n.
    """
    p = n_pseudo
    if mode == "shared":
        return cos.repeat_interleave(p, dim=2), sin.repeat_interleave(p, dim=2)
    if positions is not None:
        pos = positions.to(device=cos.device, dtype=torch.long)
        vpos = (pos[:, :, None] * p + torch.arange(p, device=cos.device)).flatten(1, 2)  # (B, T·P)
        ang = (vpos.float()[:, None, :, None] * inv_freq.float().to(cos.device))  # (B, 1, T·P, d/2)
        ang = torch.cat((ang, ang), dim=-1)
        return ang.cos().to(cos.dtype), ang.sin().to(cos.dtype)
    half = cos.shape[-1] // 2
    phase = torch.atan2(sin[..., :half].float(), cos[..., :half].float())  # θ·n mod 2π
    offs = torch.arange(p, device=cos.device, dtype=torch.float32)[:, None] * inv_freq  # (P, d/2)
    ang = (phase.unsqueeze(-2) * p + offs).flatten(2, 3)  # (B, 1, T·P, d/2)
    ang = torch.cat((ang, ang), dim=-1)
    return ang.cos().to(cos.dtype), ang.sin().to(cos.dtype)


def virtual_mask(ctx: AttnContext, t: int, n_pseudo: int, flat: bool, window: int | None,
                 device: torch.device) -> torch.Tensor:
    """Boolean mask (B|1, 1, t·P, Tk·P) over the virtual sequence, derived from the token-level context.

    Token-level rule: the model's mask (causality, padding) and the window, which counts RoPE positions
    (`ctx.positions` and the cache's `key_pos`) so that padding slots do not use it up (slots only when
    no positions are given). Between the pseudos of one token the flat mask keeps p' ≤ p; the token mask
    keeps all.
    """
    p, cache = n_pseudo, ctx.cache
    if cache is not None and cache.frozen:
        s = cache.length
        allowed = ctx.mask
        if allowed is None:
            allowed = torch.ones(1, 1, t, s, dtype=torch.bool, device=device)
        if flat or window is not None:
            if ctx.positions is None:
                raise ValueError("IHA with a frozen KV cache and a flat mask or a window needs query "
                                 "positions in AttnContext.positions (pass them from the model forward)")
            dist = (ctx.positions[:, :, None] - cache.key_pos[:, None, :s])[:, None]  # (B, 1, T, S)
            same = dist == 0
    else:
        s = cache.length if cache is not None else 0
        q_slot = s + torch.arange(t, device=device)
        slot_dist = (q_slot[:, None] - torch.arange(s + t, device=device)[None])[None, None]
        allowed = ctx.mask if ctx.mask is not None else slot_dist >= 0
        same = slot_dist == 0  # the query's own token
        dist = slot_dist
        if window is not None and ctx.positions is not None:
            # the window counts positions, not slots, so padding inside the cache does not use it up
            key_pos = ctx.positions if cache is None else torch.cat(
                [cache.key_pos[:, :s].to(ctx.positions.device), ctx.positions], dim=1)
            dist = (ctx.positions[:, :, None] - key_pos[:, None, :])[:, None]  # (B, 1, T, S+T)
    if window is not None:
        allowed = allowed & (dist < window)
    allowed = allowed.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
    if flat:
        same = same.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
        pq = torch.arange(allowed.shape[-2], device=device) % p
        pk = torch.arange(allowed.shape[-1], device=device) % p
        allowed = allowed & (~same | (pk[None, :] <= pq[:, None]))
    return allowed


_FLEX: dict = {}


def _flex_attention(q, k, v, n_pseudo: int, flat: bool, window: int | None):
    """FlexAttention over the virtual sequence with a cached block mask (CUDA training path)."""
    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention)  # static first, dynamic shapes after a new length
    p, length = n_pseudo, q.shape[2]
    key = (length, p, flat, window, q.device)
    if key not in _FLEX:
        def mask_mod(b, h, qi, ki):
            ok = (ki <= qi) if flat else (ki // p <= qi // p)
            if window is not None:
                ok = ok & (qi // p - ki // p < window)
            return ok

        _FLEX[key] = create_block_mask(mask_mod, None, None, length, length, device=q.device)
    return _FLEX["fn"](q, k, v, block_mask=_FLEX[key])


# ------------------------------------------------------------------ the layer
@register_attention("iha")
class InterleavedHeadAttention(nn.Module):
    """IHA behind the MHA interface (`q_proj`, `k_proj`, `v_proj`, `o_proj`, same hook names).

    hook_q/hook_k/hook_v see the virtual (mixed, interleaved) tensors (B, H, N·P, d) before RoPE, and
    hook_rot_q/hook_rot_k the same after RoPE (TransformerLens semantics, as in MHA); hook_pattern the
    (N·P)×(N·P) pattern; hook_z the collapsed heads (B, H, N, d).
    """

    @classmethod
    def validate_options(cls, cfg: "GPTConfig") -> bool:
        iha_options(cfg)  # ValueError on unknown or bad options, or grouped-query heads
        return True

    def __init__(self, cfg: "GPTConfig", layer_idx: int):
        super().__init__()
        o = iha_options(cfg)
        self.layer_idx = layer_idx
        self.n_heads, self.head_dim, self.n_pseudo = cfg.n_heads, cfg.head_dim, o["n_pseudo"]
        self.collapse, self.mask_mode, self.rope_mode = o["collapse"], o["mask"], o["rope"]
        self.window, self.init_noise, self.collapse_init, self.backend = (
            o["window"], o["init_noise"], o["collapse_init"], o["backend"])
        h, d, p = self.n_heads, cfg.d_model, self.n_pseudo
        self.q_proj = nn.Linear(d, h * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, h * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, h * self.head_dim, bias=False)
        self.o_proj = nn.Linear(h * self.head_dim, d, bias=False)
        self.alpha_q = nn.Parameter(torch.empty(h, h, p))
        self.alpha_k = nn.Parameter(torch.empty(h, h, p))
        self.alpha_v = nn.Parameter(torch.empty(h, h, p))
        self.collapse_r = nn.Parameter(torch.empty(h, h * p if self.collapse == "global" else p))
        for param in self.mixing_parameters():
            param._no_weight_decay = True
            param._custom_init = True
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self._plain_masks: dict = {}
        self.reset_custom_parameters()

    def mixing_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_q, self.alpha_k, self.alpha_v, self.collapse_r]

    @torch.no_grad()
    def reset_custom_parameters(self) -> None:
        """Identity mixing; R selects one pseudo (or the mean) of its own head; plus N(0, init_noise²)."""
        h, p = self.n_heads, self.n_pseudo
        eye = torch.eye(h, device=self.alpha_q.device)[:, :, None].expand(h, h, p)
        for a in (self.alpha_q, self.alpha_k, self.alpha_v):
            a.copy_(eye)
        sel = torch.zeros(p, device=self.alpha_q.device)
        if self.collapse_init == "mean":
            sel.fill_(1.0 / p)
        else:
            sel[-1 if self.collapse_init == "last" else 0] = 1.0
        if self.collapse == "global":
            r = torch.zeros(h, h, p, device=sel.device)
            r[torch.arange(h), torch.arange(h)] = sel
            self.collapse_r.copy_(r.view(h, h * p))
        else:
            self.collapse_r.copy_(sel.expand(h, p))
        if self.init_noise:
            for param in self.mixing_parameters():
                param.add_(torch.randn_like(param) * self.init_noise)

    def extra_parameters(self) -> int:
        """Parameters beyond MHA's: 4H²P (global collapse) or 3H²P + HP (per-head)."""
        return sum(p.numel() for p in self.mixing_parameters())

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim)

    def forward(self, x: torch.Tensor, rope, ctx: AttnContext) -> torch.Tensor:
        b, t, _ = x.shape
        cache = ctx.cache
        if self.rope_mode != "none":
            cos, sin = virtual_rope(*rope, self.n_pseudo, self.inv_freq, self.rope_mode, ctx.positions)
            rot = lambda z: apply_rope(z, cos, sin)  # noqa: E731
        else:
            rot = lambda z: z  # noqa: E731
        q = self.hook_rot_q(rot(self.hook_q(mix_pseudo(self._heads(self.q_proj(x)), self.alpha_q))))
        if cache is not None and cache.frozen:
            k, v = cache.layer(self.layer_idx)  # qTTT: read-only virtual keys/values
        else:
            k = self.hook_rot_k(rot(self.hook_k(mix_pseudo(self._heads(self.k_proj(x)), self.alpha_k))))
            v = self.hook_v(mix_pseudo(self._heads(self.v_proj(x)), self.alpha_v))
            if cache is not None:
                k, v = cache.append(self.layer_idx, k, v)
        y = self._attend(q, k, v, ctx, t)
        z = self.hook_z(collapse_pseudo(y, self.collapse_r, self.collapse == "per_head"))
        return self.o_proj(z.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def _attend(self, q, k, v, ctx: AttnContext, t: int) -> torch.Tensor:
        flat = self.mask_mode == "flat"
        plain = ctx.cache is None and ctx.mask is None
        if plain and flat and self.window is None:
            return attend(q, k, v, AttnContext(), self.hook_pattern)  # SDPA is_causal on N·P tokens
        use_flex = self.backend == "flex" or (self.backend == "auto" and q.is_cuda)
        if plain and use_flex and not self.hook_pattern.active():
            return _flex_attention(q, k, v, self.n_pseudo, flat, self.window)
        if plain:  # the mask depends only on the length: build it once
            key = (t, q.device)
            if key not in self._plain_masks:  # positions 0..t-1 (slots), whatever ctx.positions holds
                self._plain_masks = {key: virtual_mask(AttnContext(), t, self.n_pseudo, flat, self.window,
                                                       q.device)}
            mask = self._plain_masks[key]
        else:
            mask = virtual_mask(ctx, t, self.n_pseudo, flat, self.window, q.device)
        return attend(q, k, v, AttnContext(mask=mask), self.hook_pattern)

    def flops_per_token(self, seq_len: int) -> float:
        """Attention-score FLOPs on the virtual sequence (fwd+bwd, MHA's convention) plus the mixing and
        collapse einsums (each mixing weight is used head_dim times per token; `GPT.estimate_flops`
        counts only Linear weights in its 6·N term)."""
        scores = attention_flops_per_token(seq_len, self.n_heads, self.head_dim, self.n_pseudo, self.window)
        return scores + 6 * self.extra_parameters() * self.head_dim

    @classmethod
    def score_flops(cls, cfg: GPTConfig, seq_len: int, causal: bool = False) -> float:
        """Attention-score FLOPs per token of one IHA layer of `cfg` on its N·P virtual tokens (see
        `lmlab.model.attention_flops_per_token`); the mixing einsums are not score FLOPs."""
        o = iha_options(cfg)
        return attention_flops_per_token(seq_len, cfg.n_heads, cfg.head_dim, o["n_pseudo"], o["window"], causal)


# ------------------------------------------------------------------ hybrid schedule
def hybrid_layer_attention(n_layers: int, local_per_global: int = 4) -> list[str]:
    """The paper's 4:1 pattern: `local_per_global` window-IHA layers, then one global MHA layer."""
    return ["mha" if (i + 1) % (local_per_global + 1) == 0 else "iha" for i in range(n_layers)]


def hybrid_window(seq_len: int, n_pseudo: int) -> int:
    """W = N/(2P²) original tokens: a window-IHA layer then costs half a global MHA layer."""
    w = seq_len // (2 * n_pseudo * n_pseudo)
    if w < 1:
        raise ValueError(f"seq_len={seq_len} is too short for a FLOP-matched window with P={n_pseudo} "
                         f"(N/(2P²) < 1): use seq_len >= {2 * n_pseudo * n_pseudo}")
    return w


def hybrid_config(cfg: "GPTConfig", n_pseudo: int = 2, local_per_global: int = 4, seq_len: int | None = None,
                  **iha_options) -> "GPTConfig":
    """A copy of `cfg` with the FLOP-matched hybrid stack: window-IHA layers (W = N/(2P²)) and one
    global MHA layer after every `local_per_global` of them. Check with `lmlab.model.flop_ratio_vs_mha`
    (3/5 under the paper's convention)."""
    n = seq_len or cfg.seq_len
    opts = {**iha_options, "n_pseudo": n_pseudo, "window": hybrid_window(n, n_pseudo)}
    return dataclasses.replace(cfg, layer_attention=hybrid_layer_attention(cfg.n_layers, local_per_global),
                               attention_options=opts)


__all__ = ["InterleavedHeadAttention", "mix_pseudo", "collapse_pseudo", "virtual_rope", "virtual_mask",
           "iha_options", "hybrid_config", "hybrid_layer_attention", "hybrid_window"]
