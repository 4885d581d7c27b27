"""GPT: a small, fast decoder-only transformer (RMSNorm, RoPE, SwiGLU or ReLU², SDPA, tied embeddings).

No training code lives here. Forward returns logits, or the loss when targets are given.
Hook points carry TransformerLens names (see `lmlab.hooks`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab import plugins
from lmlab.hooks import HookPoint, run_with_cache
from lmlab.speed import chunked_lm_loss

IGNORE_INDEX = -100

# ------------------------------------------------------------------ attention interface
# Attention layers behind one interface, chosen by name from a registry.
#
# An attention module is built as `cls(cfg, layer_idx)` and called as
# `attn(x, rope, ctx)` where `rope = (cos, sin)` for the query positions and `ctx` is an
# `AttnContext` (KV cache, masks). Projections are named like Llama's (`q_proj`, `k_proj`, `v_proj`,
# `o_proj`) so that export, qTTT and analysis code find them by name.
#
# Options: `GPTConfig.attention_options` is validated when the config is built. A class declares what it
# accepts with a classmethod `validate_options(cfg) -> bool` (raise ValueError on bad options; return
# whether it reads them) or with `takes_options = False` in its own class body (it reads none). Classes
# that declare neither are assumed to read them (see `check_attention_options`).

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

    @classmethod
    def score_flops(cls, cfg: GPTConfig, seq_len: int, causal: bool = False) -> float:
        """Attention-score FLOPs per token of one such layer of `cfg` (see `attention_flops_per_token`)."""
        return attention_flops_per_token(seq_len, cfg.n_heads, cfg.head_dim, causal=causal)


# ------------------------------------------------------------------ attention FLOPs
# Two conventions for the attention-score FLOPs (QKᵀ and AV, forward + backward = 3 × 4·H·d per
# query-key pair). `causal=False` (the IHA paper's and `MultiHeadAttention.flops_per_token`'s): every
# query is charged min(N, W)·P keys, as if the causal mask saved nothing. `causal=True`: only the pairs
# a flat causal mask over N·P virtual tokens keeps, with a token-aligned window of W tokens.


def _pairs_causal(n: int, p: int, window: int) -> int:
    """Query-key pairs kept by the flat causal mask with a token-aligned window over N·P virtual
    tokens: virtual query (n, p) sees min(n, W−1)·P + p + 1 keys."""
    k = min(window, n) - 1
    earlier = k * (k + 1) // 2 + (n - 1 - k) * k  # Σ_n min(n, W−1)
    return earlier * p * p + n * p * (p + 1) // 2


def attention_flops_per_token(seq_len: int, n_heads: int, head_dim: int, n_pseudo: int = 1,
                              window: int | None = None, causal: bool = False) -> float:
    """Forward+backward attention-score FLOPs per original token at sequence length `seq_len`.

    n_pseudo: virtual tokens per token (IHA's P; 1 = MHA); window: sliding window in tokens (None = global).
    """
    p = n_pseudo
    w = seq_len if window is None else min(window, seq_len)
    per_pair = 12 * n_heads * head_dim
    if not causal:
        return float(per_pair * p * (w * p))
    return per_pair * _pairs_causal(seq_len, p, w) / seq_len


def stack_attention_flops(cfg: GPTConfig, seq_len: int | None = None, causal: bool = False) -> float:
    """Attention-score FLOPs per token summed over all layers; each layer's attention class counts its own
    (`score_flops(cfg, seq_len, causal)`)."""
    t = seq_len or cfg.seq_len
    return sum(ATTENTIONS[cfg.attention_for(i)].score_flops(cfg, t, causal) for i in range(cfg.n_layers))


def flop_ratio_vs_mha(cfg: GPTConfig, seq_len: int | None = None, causal: bool = False) -> float:
    """Attention FLOPs of `cfg` divided by those of the same stack with MHA in every layer."""
    t = seq_len or cfg.seq_len
    mha = cfg.n_layers * attention_flops_per_token(t, cfg.n_heads, cfg.head_dim, causal=causal)
    return stack_attention_flops(cfg, t, causal) / mha


@dataclass
class GPTConfig:
    vocab_size: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    n_kv_heads: int | None = None  # grouped-query attention when < n_heads
    seq_len: int = 256  # max positions (RoPE table grows on demand)
    mlp: str = "swiglu"  # "swiglu" | "relu2"
    mlp_hidden: int | None = None  # default: 4*d for relu2, 8/3*d (rounded to 32) for swiglu
    attention: str = "mha"
    attention_options: dict = field(default_factory=dict)  # passed to the attention class (e.g. IHA's P)
    layer_attention: list[str] | None = None  # per-layer attention names (hybrid stacks)
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02
    pad_vocab_to: int = 64

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(msg):
            raise ValueError(msg)

        for name in ("vocab_size", "n_layers", "n_heads", "d_model", "seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                bad(f"model.{name} must be a positive integer, got {v!r}")
        if self.d_model % self.n_heads:
            bad(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}: "
                f"choose d_model a multiple of n_heads (e.g. {self.n_heads * max(1, self.d_model // self.n_heads)})")
        if self.head_dim % 2:
            bad(f"head dim d_model/n_heads={self.head_dim} must be even for RoPE")
        if self.n_kv_heads is not None and (
                not isinstance(self.n_kv_heads, int) or not 1 <= self.n_kv_heads <= self.n_heads):
            bad(f"model.n_kv_heads must be None (as many KV heads as query heads) or an integer in "
                f"1..model.n_heads={self.n_heads}, got {self.n_kv_heads!r}")
        if self.n_heads % self.kv_heads:
            bad(f"model.n_heads={self.n_heads} is not a multiple of model.n_kv_heads={self.kv_heads}")
        if not isinstance(self.pad_vocab_to, int) or self.pad_vocab_to < 1:
            bad(f"model.pad_vocab_to must be a positive integer (1: no padding), got {self.pad_vocab_to!r}")
        if self.mlp_hidden is not None and (not isinstance(self.mlp_hidden, int) or self.mlp_hidden < 1):
            bad(f"model.mlp_hidden must be None (the default width) or a positive integer, "
                f"got {self.mlp_hidden!r}")
        for name in ("norm_eps", "rope_theta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                bad(f"model.{name} must be a number > 0, got {v!r}")
        std = self.init_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or std < 0:
            bad(f"model.init_std must be a number >= 0, got {self.init_std!r}")
        if self.mlp not in ("swiglu", "relu2"):
            bad(f"model.mlp must be 'swiglu' or 'relu2', got {self.mlp!r}")
        names = self.layer_attention or [self.attention]
        if self.layer_attention is not None and len(self.layer_attention) != self.n_layers:
            bad(f"model.layer_attention has {len(self.layer_attention)} entries for {self.n_layers} layers")
        if any(a not in ATTENTIONS for a in names):  # a variant a method registers (e.g. "iha")
            plugins.import_parts("attention")
        for a in names:
            if a not in ATTENTIONS:
                bad(f"unknown attention {a!r}; registered: {', '.join(sorted(ATTENTIONS))}")
        # options are checked here, not when the layers are built, so a bad one fails at config time
        used = []
        for a in dict.fromkeys(names):
            try:
                used.append(check_attention_options(a, self))
            except ValueError as e:
                bad(f"model.attention_options: {e}")
        if self.attention_options and not any(used):
            bad(f"model.attention_options {sorted(self.attention_options)} were given, but attention "
                f"{', '.join(dict.fromkeys(names))} takes no options: remove model.attention_options "
                "(they are for attentions such as 'iha': set model.attention=iha)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def padded_vocab(self) -> int:
        m = self.pad_vocab_to
        return ((self.vocab_size + m - 1) // m) * m

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "relu2":
            return 4 * self.d_model
        return 32 * math.ceil(8 * self.d_model / 3 / 32)

    def attention_for(self, layer: int) -> str:
        return self.layer_attention[layer] if self.layer_attention else self.attention

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * xf.to(x.dtype))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind = cfg.mlp
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.down_proj = nn.Linear(cfg.hidden, cfg.d_model, bias=False)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()  # the hidden "neuron" activations

    def forward(self, x):
        if self.kind == "swiglu":
            h = F.silu(self.hook_pre(self.gate_proj(x))) * self.up_proj(x)
        else:
            h = F.relu(self.hook_pre(self.up_proj(x))).square()
        return self.down_proj(self.hook_post(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = build_attention(cfg.attention_for(layer_idx), cfg, layer_idx)
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x, rope, ctx: AttnContext):
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), rope, ctx)))
        x = self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))
        return x


class KVCache:
    """Per-layer key/value buffers for incremental decoding.

    Slots are filled left to right for the whole batch; `key_pos` holds each slot's RoPE position and
    `key_valid` marks real (non-padding) tokens. Attention modules store what they need through
    `append(layer, k, v)` (tensors shaped (B, H, T, D); IHA stores P virtual entries per token the same
    way). A `frozen` cache is read-only: queries attend to it without adding keys (qTTT).
    """

    def __init__(self, batch_size: int, max_len: int, device=None):
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0
        self.frozen = False
        self.key_pos = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.key_valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._fill: dict[int, int] = {}

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if layer not in self._kv:
            scale = k.shape[2] // max(1, self._new_tokens)  # entries per token (IHA: P)
            shape_k = (k.shape[0], k.shape[1], self.max_len * scale, k.shape[3])
            shape_v = (v.shape[0], v.shape[1], self.max_len * scale, v.shape[3])
            self._kv[layer] = (k.new_zeros(shape_k), v.new_zeros(shape_v))
            self._fill[layer] = 0
        kb, vb = self._kv[layer]
        s, n = self._fill[layer], k.shape[2]
        if s + n > kb.shape[2]:
            raise RuntimeError(f"KV cache full: {self.max_len} tokens; create it with a larger max_len")
        kb[:, :, s:s + n] = k
        vb[:, :, s:s + n] = v
        self._fill[layer] = s + n
        return kb[:, :, : s + n], vb[:, :, : s + n]

    def layer(self, layer: int):
        kb, vb = self._kv[layer]
        n = self._fill[layer]
        return kb[:, :, :n], vb[:, :, :n]

    def freeze(self) -> "KVCache":
        self.frozen = True
        return self

    _new_tokens: int = 1


class GPT(nn.Module):
    # rows per chunk of `lmlab.speed.chunked_lm_loss` for the mean loss (0: the plain head and F.cross_entropy);
    # a run setting, not part of the config: the training loops set it (train.loss_chunk)
    loss_chunk: int = 0

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._rope_cache: dict = {}
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or ".ln" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, out_std)
            elif p.dim() >= 2 and not getattr(p, "_custom_init", False):
                nn.init.normal_(p, 0.0, std)
        for m in self.modules():
            if m is not self and hasattr(m, "reset_custom_parameters"):
                m.reset_custom_parameters()

    # ------------------------------------------------------------------ rope
    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos/sin for integer positions (B, T) -> each (B, 1, T, head_dim)."""
        d = self.cfg.head_dim
        key = (positions.device, d)
        if key not in self._rope_cache:
            inv = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, d, 2, device=positions.device).float() / d))
            self._rope_cache[key] = inv
        inv = self._rope_cache[key]
        ang = positions.float().unsqueeze(-1) * inv  # (B, T, d/2)
        emb = torch.cat((ang, ang), dim=-1)
        return emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)

    # ------------------------------------------------------------------ forward
    def forward(self, idx: torch.Tensor | None = None, targets: torch.Tensor | None = None, *,
                cache: KVCache | None = None, positions: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                loss_reduction: str = "mean", return_hidden: bool = False):
        """idx: (B, T) token ids (or `inputs_embeds` (B, T, d)).

        targets: (B, T) next-token ids, IGNORE_INDEX (-100) where no loss is taken; then the loss is
        returned (mean over counted tokens, or per token (B, T) with loss_reduction="none").
        cache: KVCache for incremental decoding. positions: (B, T) RoPE positions (default: continue
        from the cache, or 0..T-1). key_mask: (B, T) bool, False for padding tokens of this call.
        return_hidden: return the final normed hidden states (B, T, d) instead of logits.
        """
        x = self.embed(idx) if inputs_embeds is None else inputs_embeds
        b, t, _ = x.shape
        x = self.hook_embed(x)
        dev = x.device
        if positions is None:
            base = cache.next_pos if cache is not None else torch.zeros(b, dtype=torch.long, device=dev)
            if key_mask is not None:
                positions = base[:, None] + (key_mask.long().cumsum(1) - 1).clamp(min=0)
            else:
                positions = base[:, None] + torch.arange(t, device=dev)[None]
        ctx = AttnContext(cache=cache, mask=self._mask(positions, key_mask, cache, t), positions=positions)
        rope = self.rope(positions, x.dtype)
        if cache is not None and not cache.frozen:
            cache._new_tokens = t
        for block in self.blocks:
            x = block(x, rope, ctx)
        if cache is not None and not cache.frozen:
            s = cache.length
            cache.key_pos[:, s:s + t] = positions
            cache.key_valid[:, s:s + t] = True if key_mask is None else key_mask
            cache.length += t
            cache.next_pos = positions[:, -1] + 1
        h = self.ln_f(x)
        if return_hidden:
            return h
        if targets is not None and loss_reduction == "mean" and self.loss_chunk:
            return chunked_lm_loss(h, self.lm_head.weight, targets, self.cfg.vocab_size, self.loss_chunk,
                                   IGNORE_INDEX)
        logits = self.lm_head(h)[..., : self.cfg.vocab_size]
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="none").view(b, t)
        if loss_reduction == "none":
            return loss
        n = (targets != IGNORE_INDEX).sum().clamp(min=1)
        return loss.sum() / n

    def _mask(self, positions, key_mask, cache: KVCache | None, t: int):
        """Bool mask (B, 1, T, Tk) or None for the plain causal fast path."""
        if cache is None:
            if key_mask is None:
                return None
            causal = torch.ones(t, t, dtype=torch.bool, device=positions.device).tril()
            allowed = causal[None] & key_mask[:, None, :]
            allowed |= torch.eye(t, dtype=torch.bool, device=positions.device)[None]
            return allowed[:, None]
        s = cache.length
        if cache.frozen:
            kpos, kval = cache.key_pos[:, :s], cache.key_valid[:, :s]
            return ((kpos[:, None, :] <= positions[:, :, None]) & kval[:, None, :])[:, None]
        if t == 1 and key_mask is None and bool(cache.key_valid[:, :s].all()):
            return None
        new_valid = torch.ones(positions.shape, dtype=torch.bool, device=positions.device) \
            if key_mask is None else key_mask
        kval = torch.cat([cache.key_valid[:, :s], new_valid], dim=1)
        slot = torch.arange(s + t, device=positions.device)
        causal = slot[None, :] <= (s + torch.arange(t, device=positions.device))[:, None]  # (T, S+T)
        allowed = causal[None] & kval[:, None, :]
        allowed[:, :, s:] |= torch.eye(t, dtype=torch.bool, device=positions.device)[None]
        return allowed[:, None]

    # ------------------------------------------------------------------ utilities
    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache(batch_size, max_len, device=self.embed.weight.device)

    def run_with_cache(self, *args, names=None, **kwargs):
        return run_with_cache(self, *args, names=names, **kwargs)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
        return n

    def estimate_flops(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6·N over the Linear weights (embedding lookup
        excluded, lm_head included) plus the attention-score FLOPs of each layer at this sequence length."""
        t = seq_len or self.cfg.seq_len
        n = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))  # lm_head counted once
        attn = sum(b.attn.flops_per_token(t) for b in self.blocks)
        return 6 * n + attn

    def optimizer_groups(self, weight_decay: float):
        """Decay matrices; never norms, gains, or parameters flagged `_no_weight_decay` (IHA mixing)."""
        decay, no_decay, seen = [], [], set()
        for _, p in self.named_parameters():
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (decay if p.dim() >= 2 and not getattr(p, "_no_weight_decay", False) else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
