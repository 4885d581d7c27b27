"""qTTT: query-only test-time training for long contexts (Bansal et al., 2025; spec 04).

One prefill computes the context's keys and values, and that cache then stays frozen. N steps of
next-token loss on length-k context spans, each span attending to the frozen cache, update only the
query projections of every attention layer (full matrices by default, LoRA on q as an option), with
AdamW, weight decay and gradient clipping. The answer is decoded with the adapted queries over the
unchanged cache. The adaptation lives in per-context deltas installed as forward hooks on the query
projections: leaving `QTTT.adapt(...)` removes them, so nothing leaks into the next context.

    qttt = QTTT(model, QTTTConfig(steps=32, span_len=128, lr=1e-5))
    with qttt.adapt([context_ids]) as s:          # prefill + N span steps
        out = s.generate([question_ids], max_new_tokens=32, temperature=0)

Works for lmlab `GPT` (batched per-sample adaptation with left padding; each sample has its own
deltas, optimizer state and clipping, so a batch equals a loop over single contexts) and for Hugging
Face decoders with named or fused query projections (Llama, Qwen2/3, Mistral, OLMo, GPT-2, GPT-NeoX), batched
the same way: left-padded contexts keep their own positions, so a batch equals a loop there too.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.generate import Generation as SampledGeneration
from lmlab.generate import sample_next
from lmlab.hf import attention_projections, unwrap_hf
from lmlab.lengths import check_length
from lmlab.model import GPT, IGNORE_INDEX, KVCache
from lmlab.progress import Progress
from lmlab.train import TrainingDiverged, check_finite
from lmlab.utils import MAX_LR, LmlabError, autocast_ctx, pad_batch

PARAMS = ("q_full", "q_lora")


@dataclass
class QTTTConfig:
    steps: int = 32  # N_qTTT
    span_len: int = 128  # k
    lr: float = 1e-5
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    params: str = "q_full"  # "q_full" (paper) | "q_lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    sampler: str | Callable = "uniform"  # a name in SAMPLERS or a callable (see `SpanSampler`)
    seed: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise LmlabError(f"qTTT steps must be an integer >= 0, got {self.steps!r}")
        if not isinstance(self.span_len, int) or self.span_len < 1:
            raise LmlabError(f"qTTT span length must be a positive integer, got {self.span_len!r}")
        if not 0 < self.lr <= MAX_LR:  # also refuses NaN
            raise LmlabError(
                f"qTTT learning rate must be a finite number > 0 and at most {MAX_LR:g}, got {self.lr!r} "
                "(the paper's grid: 1e-6 .. 3e-4)"
            )
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise LmlabError(f"qTTT {name} must be finite, got {getattr(self, name)!r}")
        if self.params not in PARAMS:
            raise LmlabError(f"qTTT params must be one of {', '.join(PARAMS)}, got {self.params!r}")
        if self.params == "q_lora" and self.lora_rank < 1:
            raise LmlabError(f"LoRA rank must be >= 1, got {self.lora_rank}")
        if not callable(self.sampler) and self.sampler not in SAMPLERS:
            raise LmlabError(
                f"unknown span sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)} or pass a callable"
            )


# ---------------------------------------------------------------- span samplers
@dataclass
class SpanInfo:
    """What a sampler may use: the context length, the span length and optional per-position weights
    (e.g. 1 at tokens whose prediction needs retrieval; used by the "targeted" sampler)."""

    length: int
    span_len: int
    weights: np.ndarray | None = None


def uniform_spans(rng: np.random.Generator, n: int, info: SpanInfo) -> np.ndarray:
    """The paper's sampler: t ~ Uniform over all starts whose k targets stay inside the context."""
    return rng.integers(0, info.length - info.span_len, size=n)


def sweep_spans(rng: np.random.Generator, n: int, info: SpanInfo) -> np.ndarray:
    """Stratified: the context cut into n equal strata, one uniform start per stratum, in random order
    (covers the whole context evenly; same marginal as uniform)."""
    hi = info.length - info.span_len
    edges = np.linspace(0, hi, n + 1)
    starts = np.minimum((edges[:-1] + rng.random(n) * (edges[1:] - edges[:-1])).astype(int), hi - 1)
    return rng.permutation(starts)


def tail_spans(rng: np.random.Generator, n: int, info: SpanInfo) -> np.ndarray:
    """Always the last k+1 tokens (the most recent text)."""
    return np.full(n, info.length - info.span_len - 1)


def targeted_spans(rng: np.random.Generator, n: int, info: SpanInfo) -> np.ndarray:
    """Spans that contain a position drawn with probability ∝ weights (an oracle-ish control: spans
    whose next-token loss exercises retrieval). Falls back to uniform when no weight is positive."""
    w = info.weights
    if w is None or not np.any(np.asarray(w) > 0):
        return uniform_spans(rng, n, info)
    w = np.asarray(w, dtype=float)[: info.length]
    w = np.clip(w, 0, None)
    pos = rng.choice(len(w), size=n, p=w / w.sum())  # target token index, predicted at position pos-1
    offset = rng.integers(0, info.span_len, size=n)
    return np.clip(pos - 1 - offset, 0, info.length - info.span_len - 1)


SpanSampler = Callable[[np.random.Generator, int, SpanInfo], np.ndarray]
SAMPLERS: dict[str, SpanSampler] = {
    "uniform": uniform_spans,
    "sweep": sweep_spans,
    "tail": tail_spans,
    "targeted": targeted_spans,
}


# ---------------------------------------------------------------- query deltas
class QueryDeltas:
    """Per-sample additive changes to every attention layer's query projection, as forward hooks.

    q_full: ΔW (B, out, in) so the query is (W + ΔW[b]) x. q_lora: (α/r)·B[b] A[b] x with A random,
    B zero. The base weights are never written; `remove()` detaches the hooks.
    """

    def __init__(self, model: nn.Module, batch: int, cfg: QTTTConfig, device, seeds: Sequence[int]):
        self.cfg, self.batch = cfg, batch
        self.entries = []  # (module, its query output channels (None: all), base weight (out, in) or None)
        for proj in attention_projections(model):
            if "q" in proj:
                mod, rows = proj["q"], None
                w = mod.weight if isinstance(mod, nn.Linear) else None
            elif "qkv" in proj:  # GPT-2 fused c_attn (Conv1D, weight (in, 3d)): queries are the first third
                mod = proj["qkv"]
                d = mod.weight.shape[1] // 3
                rows, w = torch.arange(d, device=mod.weight.device), mod.weight[:, :d].t()
            else:  # GPT-NeoX fused query_key_value (Linear, weight (3d, in)): per head [q | k | v]
                mod = proj["qkv_heads"]
                n_heads = unwrap_hf(model).config.num_attention_heads
                hd = mod.weight.shape[0] // (3 * n_heads)
                rows = (torch.arange(n_heads)[:, None] * 3 * hd + torch.arange(hd)).flatten().to(mod.weight.device)
                w = mod.weight[rows] if isinstance(mod, nn.Linear) else None
            if w is None:
                raise LmlabError(f"qTTT needs nn.Linear query projections, found {type(mod).__name__}")
            self.entries.append((mod, rows, w))
        self.tensors: list[list[torch.Tensor]] = []
        for _, _, w in self.entries:
            out_f, in_f = w.shape
            if cfg.params == "q_full":
                self.tensors.append([torch.zeros(batch, out_f, in_f, device=device, requires_grad=True)])
            else:
                r = cfg.lora_rank
                a = torch.stack(
                    [
                        torch.randn(r, in_f, generator=torch.Generator().manual_seed(sd + len(self.tensors)))
                        for sd in seeds
                    ]
                ).to(device) / math.sqrt(in_f)
                self.tensors.append(
                    [a.requires_grad_(True), torch.zeros(batch, out_f, r, device=device, requires_grad=True)]
                )
        self.handles = [
            mod.register_forward_hook(self._hook(i)) for i, (mod, _, _) in enumerate(self.entries)
        ]

    def params(self) -> list[torch.Tensor]:
        return [t for ts in self.tensors for t in ts]

    def delta_weights(self) -> list[torch.Tensor]:
        """The effective ΔW_Q per layer, (B, out, in)."""
        if self.cfg.params == "q_full":
            return [ts[0].detach() for ts in self.tensors]
        s = self.cfg.lora_alpha / self.cfg.lora_rank
        return [s * (ts[1] @ ts[0]).detach() for ts in self.tensors]

    def _delta_out(self, i: int, x: torch.Tensor) -> torch.Tensor:
        ts = self.tensors[i]
        b = x.shape[0]
        if ts[0].shape[0] not in (1, b):
            raise LmlabError(
                f"qTTT deltas were made for {ts[0].shape[0]} contexts but the model got a batch of "
                f"{b}: adapt and decode the same batch"
            )
        if self.cfg.params == "q_full":
            return torch.einsum("bti,boi->bto", x, ts[0].to(x.dtype).expand(b, -1, -1))
        a, bm = (t.to(x.dtype).expand(b, -1, -1) for t in ts)
        s = self.cfg.lora_alpha / self.cfg.lora_rank
        return s * torch.einsum("btr,bor->bto", torch.einsum("bti,bri->btr", x, a), bm)

    def _hook(self, i: int):
        rows = self.entries[i][1]

        def hook(mod, inputs, out):
            d = self._delta_out(i, inputs[0]).to(out.dtype)
            return out + d if rows is None else out.index_add(-1, rows, d)

        return hook

    def decay_(self, lr: float) -> None:
        """Decoupled weight decay of the full query matrix W + ΔW toward 0 (AdamW on W_Q, as in the
        paper), applied before the Adam step like torch's AdamW. LoRA factors decay inside AdamW."""
        wd = self.cfg.weight_decay
        if wd == 0 or self.cfg.params != "q_full":
            return
        with torch.no_grad():
            for (_, _, w), ts in zip(self.entries, self.tensors):
                ts[0].sub_(lr * wd * (w.detach().float()[None] + ts[0]))

    def clip_(self, max_norm: float | None) -> torch.Tensor:
        """Per-sample gradient clipping over all layers (each context is its own batch-size-1 run)."""
        grads = [p.grad for p in self.params()]
        norms = torch.sqrt(sum(g.float().pow(2).flatten(1).sum(1) for g in grads))
        if max_norm:
            scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
        return norms

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


# ---------------------------------------------------------------- backends
def _cache_kwarg(model: nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _sum_per_sample(loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean loss per sample over weighted targets, (B,)."""
    return (loss * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class _GPTBackend:
    """lmlab GPT: batched, left-padded contexts; the frozen `KVCache` does the span attention."""

    def __init__(self, model: GPT):
        self.model = model
        self.device = model.embed.weight.device

    def prefill(self, contexts: list[list[int]]):
        ids, mask = pad_batch(contexts, 0, left=True, device=self.device)
        b, n = ids.shape
        cache = self.model.new_cache(b, n)
        with torch.no_grad(), autocast_ctx(self.device):
            self.model(ids, cache=cache, key_mask=mask, return_hidden=True)
        cache.freeze()
        self.ids, self.pad = ids, [n - len(c) for c in contexts]
        return cache

    def span_loss(self, cache: KVCache, starts: np.ndarray, k: int, weights: torch.Tensor) -> torch.Tensor:
        """Per-sample mean next-token loss on spans [t, t+k) attending to the frozen cache, (B,)."""
        slot0 = torch.tensor([p + int(t) for p, t in zip(self.pad, starts)], device=self.device)
        idx = slot0[:, None] + torch.arange(k + 1, device=self.device)
        toks = self.ids.gather(1, idx)
        positions = torch.as_tensor(starts, device=self.device)[:, None] + torch.arange(k, device=self.device)
        with autocast_ctx(self.device):
            loss = self.model(
                toks[:, :-1], toks[:, 1:], cache=cache, positions=positions, loss_reduction="none"
            )
        return _sum_per_sample(loss.float(), weights)

    def fork(self, cache: KVCache, extra: int) -> KVCache:
        """A writable copy of the frozen cache with room for `extra` more tokens (the prefill stays intact)."""
        new = KVCache(cache.batch_size, cache.length + extra, device=self.device)
        n = cache.length
        new.key_pos[:, :n] = cache.key_pos[:, :n]
        new.key_valid[:, :n] = cache.key_valid[:, :n]
        new.next_pos = cache.next_pos.clone()
        new.length = n
        for layer, (kb, vb) in cache._kv.items():
            per_tok = kb.shape[2] // cache.max_len  # IHA stores several entries per token
            k_new = kb.new_zeros(kb.shape[0], kb.shape[1], new.max_len * per_tok, kb.shape[3])
            v_new = vb.new_zeros(vb.shape[0], vb.shape[1], new.max_len * per_tok, vb.shape[3])
            fill = cache._fill[layer]
            k_new[:, :, :fill] = kb[:, :, :fill]
            v_new[:, :, :fill] = vb[:, :, :fill]
            new._kv[layer], new._fill[layer] = (k_new, v_new), fill
        return new

    def step(self, cache: KVCache, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        with autocast_ctx(self.device):
            return self.model(ids, cache=cache, key_mask=mask).float()

    def context_slots(self, i: int) -> int:
        """Cache slot of context token 0 of sample i (left padding offset)."""
        return self.pad[i]


class _HFFork:
    """A writable copy of the prefill for decoding on a Hugging Face model: the cache, the 2D key mask over its
    slots (left padding of contexts and questions is 0) and each sample's next position."""

    def __init__(self, cache, mask: torch.Tensor, next_pos: torch.Tensor):
        self.cache, self.mask, self.next_pos = cache, mask, next_pos


class _HFBackend:
    """Hugging Face decoder, a batch of left-padded contexts. Positions count each context's own tokens, so a
    padded sample sees what it would see alone. A span forward sees the whole frozen prefill (a cache layer that
    returns the prefill's K/V and stores nothing) through a 4D mask: sample i's span token j attends to its own
    context slots up to its own slot, exactly the keys a one-context forward of that span would see."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.device = next(model.parameters()).device
        self.kw = _cache_kwarg(model)
        self.last_only = "logits_to_keep" in inspect.signature(model.forward).parameters

    def _call(self, ids, cache, last_only: bool = False, **kwargs):
        extra = {"logits_to_keep": 1} if last_only and self.last_only else {}
        with autocast_ctx(self.device):
            return self.model(input_ids=ids, use_cache=True, **{self.kw: cache}, **extra, **kwargs)

    def prefill(self, contexts: list[list[int]]):
        from transformers import DynamicCache  # heavy: transformers only for Hugging Face models

        self.ids, self.mask = pad_batch(contexts, 0, left=True, device=self.device)
        self.pad = [self.ids.shape[1] - len(c) for c in contexts]
        with torch.no_grad():
            out = self._call(self.ids, DynamicCache(), last_only=True, attention_mask=self.mask.long(),
                             position_ids=_positions(self.mask))
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return [(k.detach(), v.detach()) for k, v in _hf_layers_kv(cache)]

    def span_loss(self, kv, starts: np.ndarray, k: int, weights: torch.Tensor) -> torch.Tensor:
        """Per-sample mean next-token loss on spans [t, t+k) of each context attending to the frozen prefill."""
        from transformers import DynamicCache  # heavy: transformers only for Hugging Face models

        n = self.ids.shape[1]
        starts_t = torch.as_tensor(starts, device=self.device)
        slot0 = torch.tensor(self.pad, device=self.device) + starts_t
        toks = self.ids.gather(1, slot0[:, None] + torch.arange(k + 1, device=self.device))
        own_slot = slot0[:, None] + torch.arange(k, device=self.device)  # (B, k): each span token's cache slot
        keys = torch.arange(n, device=self.device)
        allowed = (keys[None, None] <= own_slot[:, :, None]) & self.mask[:, None, :]  # (B, k, n)
        dtype = kv[0][0].dtype
        bias = torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[:, None]
        cache = DynamicCache()
        cache.layers = [_frozen_layer(kk, vv, n - k) for kk, vv in kv]
        logits = self._call(toks[:, :-1], cache, attention_mask=bias,
                            position_ids=starts_t[:, None] + torch.arange(k, device=self.device)).logits.float()
        loss = F.cross_entropy(logits.transpose(1, 2), toks[:, 1:], reduction="none")
        return _sum_per_sample(loss, weights)

    def fork(self, kv, extra: int) -> _HFFork:
        from transformers import DynamicCache  # heavy: transformers only for Hugging Face models

        cache = DynamicCache()
        for i, (kk, vv) in enumerate(kv):
            cache.update(kk.clone(), vv.clone(), i)
        return _HFFork(cache, self.mask.clone(), self.mask.sum(1))

    def step(self, fork: _HFFork, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        positions = fork.next_pos[:, None] + (mask.long().cumsum(1) - 1).clamp(min=0)
        fork.mask = torch.cat([fork.mask, mask], 1)
        fork.next_pos = fork.next_pos + mask.sum(1)
        return self._call(ids, fork.cache, attention_mask=fork.mask.long(), position_ids=positions).logits.float()

    def context_slots(self, i: int) -> int:
        return self.pad[i]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: each sample's tokens count from 0 (pads get 0)."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


def _hf_layers_kv(cache):
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # older transformers


_FROZEN_LAYER_CLS = None


def _frozen_layer(keys: torch.Tensor, values: torch.Tensor, visible: int):
    """A DynamicLayer that shows `visible` cached tokens and, for a forward of n new tokens, returns the
    prefill's K/V for positions [0, visible + n) instead of storing the recomputed ones."""
    global _FROZEN_LAYER_CLS
    if _FROZEN_LAYER_CLS is None:
        try:  # heavy and version-dependent: transformers only for Hugging Face models
            from transformers.cache_utils import DynamicLayer
        except ImportError as e:  # pragma: no cover - depends on the installed transformers
            raise LmlabError("qTTT on Hugging Face models needs transformers >= 4.56 (cache layers)") from e

        class FrozenPrefixLayer(DynamicLayer):
            def __init__(self, keys, values, visible):
                super().__init__()
                self.full_keys, self.full_values, self.visible = keys, values, visible
                self.keys, self.values = keys[..., :visible, :], values[..., :visible, :]
                self.device, self.is_initialized = keys.device, True

            def update(self, key_states, value_states, *args, **kwargs):
                end = self.visible + key_states.shape[-2]
                return self.full_keys[..., :end, :], self.full_values[..., :end, :]

            def get_seq_length(self, *args, **kwargs) -> int:
                return self.visible

        _FROZEN_LAYER_CLS = FrozenPrefixLayer
    return _FROZEN_LAYER_CLS(keys, values, visible)


def backend_for(model: nn.Module):
    return _GPTBackend(model) if isinstance(model, GPT) else _HFBackend(model)


# ---------------------------------------------------------------- the method
@dataclass
class Generation(SampledGeneration):
    """`lmlab.generate.Generation` (tokens, log-probs, finished) plus the first answer token's logits."""

    first_logits: torch.Tensor  # (B, V) logits of the first answer token


@dataclass
class AdaptedContexts:
    """What `QTTT.adapt` yields: the frozen prefill and the adapted query deltas (if steps > 0)."""

    qttt: QTTT
    backend: object
    cache: object
    deltas: QueryDeltas | None
    losses: list[list[float]] = field(
        default_factory=list
    )  # per step, per sample span loss (before the update)
    grad_norms: list[list[float]] = field(default_factory=list)
    spans: list[list[int]] = field(default_factory=list)  # per sample, the span starts used
    context_len: int = 0  # tokens of the longest context

    @property
    def batch(self) -> int:
        return len(self.backend.pad)

    def context_slot(self, sample: int, position: int) -> int:
        """Cache slot (the key index seen by attention) of context token `position` of `sample`."""
        return self.backend.context_slots(sample) + position

    def forward(self, questions: list[list[int]]) -> torch.Tensor:
        """Logits (B, Tq, V) of the question tokens, read over a copy of the frozen cache with the adapted
        queries (hook `blocks.{i}.attn.hook_pattern` around this call to see attention; keys are the
        cache slots followed by the question tokens). Questions are left-padded."""
        ids, mask = _pad_left(questions, self.backend.device)
        check_length(self.qttt.model, self.context_len + ids.shape[1], "the context with its question")
        cache = self.backend.fork(self.cache, ids.shape[1])
        with torch.no_grad():
            return self.backend.step(cache, ids, mask)

    def generate(
        self,
        questions: list[list[int]],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens=None,
        seed: int = 0,
    ) -> Generation:
        """Decode answers after each question over a copy of the frozen cache (temperature 0 = greedy)."""
        if len(questions) != self.batch:
            raise LmlabError(f"got {len(questions)} questions for {self.batch} adapted contexts")
        dev = self.backend.device
        gen = torch.Generator(device=dev)
        gen.manual_seed(seed)
        ids, mask = _pad_left(questions, dev)
        check_length(self.qttt.model, self.context_len + ids.shape[1] + max_new_tokens,
                     "the context with its question and answer")
        cache = self.backend.fork(self.cache, ids.shape[1] + max_new_tokens)
        stops = set(stop_tokens or ())
        out = [[] for _ in questions]
        lps = [[] for _ in questions]
        done = [max_new_tokens == 0] * len(questions)
        finished = [False] * len(questions)
        with torch.no_grad():
            logits = self.backend.step(cache, ids, mask)[:, -1]
            first = logits.clone()
            for _ in range(max_new_tokens):
                nxt, logp = sample_next(logits, temperature, top_k, top_p, gen)
                for i, (t, lp) in enumerate(zip(nxt.tolist(), logp.tolist())):
                    if done[i]:
                        continue
                    out[i].append(t)
                    lps[i].append(lp)
                    if t in stops:
                        done[i] = finished[i] = True
                    elif len(out[i]) >= max_new_tokens:
                        done[i] = True
                if all(done):
                    break
                logits = self.backend.step(cache, nxt[:, None], None)[:, -1]
        return Generation(out, lps, finished, first)


def _context_seed(seed: int, context: Sequence[int]) -> int:
    """Per-context randomness that does not depend on the batch a context is adapted in."""
    return (seed * 1_000_003 + zlib.crc32(np.asarray(context, dtype=np.int64).tobytes())) % (2**31)


def _pad_left(seqs: list[list[int]], device):
    if not seqs or any(len(s) == 0 for s in seqs):
        raise LmlabError("every question needs at least one token")
    return pad_batch(seqs, 0, left=True, device=device)


class QTTT:
    """Query-only test-time training for one model; `adapt(contexts)` is the per-context entry point."""

    def __init__(self, model: nn.Module, cfg: QTTTConfig | None = None):
        self.model = unwrap_hf(model)
        self.cfg = cfg or QTTTConfig()

    @contextlib.contextmanager
    def adapt(
        self,
        contexts: Sequence[Sequence[int]],
        span_weights: Sequence[np.ndarray] | None = None,
        target_weights: Sequence[np.ndarray] | None = None,
        steps: int | None = None,
        progress: str | None = None,
    ):
        """Prefill `contexts` (token-id lists), run the qTTT steps, and yield an `AdaptedContexts`.

        span_weights: per context, per-position weights for the "targeted" sampler. target_weights: per
        context, a weight for the loss of predicting token j (index j of the context; default 1): e.g.
        restrict the span loss to answer-like tokens. steps: override cfg.steps (0 = no adaptation,
        the in-context baseline through the same code path). progress: the label of a progress bar over the
        steps (`lmlab.progress.Progress`; None: none). On exit the deltas are removed.
        """
        cfg = self.cfg
        contexts = [list(map(int, c)) for c in contexts]
        n_steps = cfg.steps if steps is None else steps
        if not contexts:
            raise LmlabError("qTTT needs at least one context")
        lengths = [len(c) for c in contexts]
        k = min(cfg.span_len, min(lengths) - 1)
        if n_steps > 0 and k < 1:
            raise LmlabError(
                f"a context of {min(lengths)} tokens is too short for qTTT: it needs at least 2 tokens"
            )
        model = self.model
        check_length(model, max(lengths), "the context")  # before the prefill
        was_training = model.training
        model.eval()
        backend = backend_for(model)
        deltas = None
        try:
            cache = backend.prefill(contexts)
            dev = backend.device
            state = AdaptedContexts(self, backend, cache, None, context_len=max(lengths))
            if n_steps > 0:
                deltas = QueryDeltas(
                    model, len(contexts), cfg, dev, [_context_seed(cfg.seed, c) for c in contexts]
                )
                state.deltas = deltas
                with Progress(n_steps, progress or "qTTT", enabled=progress is not None) as bar:
                    self._train(backend, cache, deltas, contexts, k, n_steps, span_weights, target_weights, state,
                                bar)
            yield state
        finally:
            if deltas is not None:
                deltas.remove()
            model.train(was_training)

    def _train(
        self,
        backend,
        cache,
        deltas: QueryDeltas,
        contexts,
        k,
        n_steps,
        span_weights,
        target_weights,
        state: AdaptedContexts,
        bar: Progress,
    ) -> None:
        cfg = self.cfg
        sampler = cfg.sampler if callable(cfg.sampler) else SAMPLERS[cfg.sampler]
        starts = []
        for i, c in enumerate(contexts):
            rng = np.random.default_rng(_context_seed(cfg.seed, c))
            w = None if span_weights is None else np.asarray(span_weights[i], dtype=float)
            s = np.asarray(sampler(rng, n_steps, SpanInfo(len(c), k, w)), dtype=int)
            if s.shape != (n_steps,) or s.min() < 0 or s.max() + k >= len(c):
                raise LmlabError(
                    f"span sampler returned invalid starts for a context of {len(c)} tokens "
                    f"(span {k}): need {n_steps} starts in [0, {len(c) - k - 1}]"
                )
            starts.append(s)
        state.spans = [s.tolist() for s in starts]
        tw = None
        if target_weights is not None:
            tw = [torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in target_weights]
        params = deltas.params()
        wd_inside = cfg.weight_decay if cfg.params == "q_lora" else 0.0
        fused = params[0].is_cuda
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=wd_inside, fused=fused)
        dev = backend.device
        for step in range(n_steps):
            st = np.array([s[step] for s in starts])
            if tw is None:
                w = torch.ones(len(contexts), k, device=dev)
            else:
                w = torch.stack([tw[i][t + 1 : t + k + 1] for i, t in enumerate(st)]).to(dev)
            loss = backend.span_loss(cache, st, k, w)
            grads = torch.autograd.grad(loss.sum(), params)
            for p, g in zip(params, grads):
                p.grad = g.contiguous()  # einsum's grads are permuted views; fused CUDA AdamW rejects those
            norms = deltas.clip_(cfg.grad_clip)
            try:
                check_finite(opt, norms, loss)  # before decay and step: a NaN update is never applied
            except TrainingDiverged as e:
                raise TrainingDiverged(f"qTTT step {step + 1} of {n_steps}: {e}") from None
            deltas.decay_(cfg.lr)
            opt.step()
            opt.zero_grad(set_to_none=True)
            state.losses.append(loss.detach().cpu().tolist())
            state.grad_norms.append(norms.detach().cpu().tolist())
            bar.update(1, span_loss=sum(state.losses[-1]) / len(state.losses[-1]))


__all__ = [
    "IGNORE_INDEX",
    "QTTT",
    "SAMPLERS",
    "AdaptedContexts",
    "QTTTConfig",
    "QueryDeltas",
    "SpanInfo",
    "sweep_spans",
    "tail_spans",
    "targeted_spans",
    "uniform_spans",
]
