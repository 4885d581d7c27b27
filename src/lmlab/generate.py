"""Batched sampling with a KV cache for lmlab models (and Hugging Face models through `lmlab.hf`).

Prompts of different lengths are left-padded; each sequence has its own stop tokens and budget.
In fp32, `generate(...)` equals naive no-cache sampling (`generate_naive`) token for token under the same
seed (log-probs agree to ~1e-6). In bf16 (a model cast with `.to(torch.bfloat16)`) it does not: the cached
and uncached paths accumulate in different orders, so log-probs can differ by several nats and sampled
tokens diverge after a few steps. Compare generation log-probs with `sequence_logprobs` in fp32, or allow
for that noise (e.g. treat bf16 rollouts as slightly off-policy).

Decoding runs without per-step host syncs: tokens, log-probs and stop/budget bookkeeping stay in
tensors and are read back once at the end. A plain lmlab GPT (standard attention, no active hooks) is
decoded by `_StaticDecoder`, a lean step over preallocated K/V buffers that is kept per model and shape
and reused across calls; on CUDA its step is captured as CUDA graphs (one per 64-slot bucket of
attended keys) and replayed per token. Other models (hybrid attention stacks, hooked models, HF
adapters) take the generic step `model(token, cache=cache)`.

`seeds=[...]` gives every sequence its own counter-based random stream, so its sample depends only on
its prompt and seed — not on the batch it ran in (batch-size invariant evaluation, reproducible RL).
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.hf import as_lmlab
from lmlab.lengths import check_length
from lmlab.model import GPT, MLP, Block, MultiHeadAttention, RMSNorm
from lmlab.utils import LmlabError, pad_batch


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per sequence (the stop token included when hit)
    logprobs: list[
        list[float]
    ]  # log-prob of each new token under the sampling distribution (temperature-scaled)
    finished: list[bool]  # stopped on a stop token (vs. ran out of budget)

    def padded(self, pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens (B, T) right-padded with pad_id, log-probs (B, T) zero-padded, mask (B, T) bool)."""
        b, t = len(self.tokens), max((len(x) for x in self.tokens), default=0)
        ids = torch.full((b, t), pad_id, dtype=torch.long)
        lps = torch.zeros((b, t))
        mask = torch.zeros((b, t), dtype=torch.bool)
        for i, (tok, lp) in enumerate(zip(self.tokens, self.logprobs)):
            ids[i, : len(tok)] = torch.tensor(tok, dtype=torch.long)
            lps[i, : len(lp)] = torch.tensor(lp)
            mask[i, : len(tok)] = True
        return ids.to(device), lps.to(device), mask.to(device)


# ----------------------------------------------------------------------------- sampling
def process_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """Return (scaled logits for log-probs, filtered logits for sampling)."""
    if temperature <= 0:
        return logits, logits
    scaled = logits / temperature if temperature != 1.0 else logits
    filt = scaled
    if top_k is not None and top_k < filt.shape[-1]:
        kth = torch.topk(filt, top_k, dim=-1).values[..., -1:]
        filt = filt.masked_fill(filt < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = torch.sort(filt, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        remove = cum - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        filt = torch.full_like(filt, float("-inf")).scatter(-1, idx, sorted_logits)
    return scaled, filt


def sample_next(
    logits: torch.Tensor, temperature: float, top_k, top_p, generator, uniforms: torch.Tensor | None = None
):
    """logits: (B, V) -> (token ids (B,), log-probs (B,)).

    Sampling is by inverse CDF from one uniform per row: drawn from `generator`, or given as
    `uniforms` (B,) float64 in [0, 1) (per-sequence seeds).
    """
    scaled, filt = process_logits(logits.float(), temperature, top_k, top_p)
    if temperature <= 0:
        nxt = filt.argmax(-1)
    else:
        if uniforms is None:
            uniforms = torch.rand(filt.shape[0], dtype=torch.float64, device=filt.device, generator=generator)
        # inverse CDF: one uniform per row (cheaper than torch.multinomial, and per-row seedable)
        cdf = torch.softmax(filt, dim=-1).double().cumsum_(-1)
        target = (uniforms * cdf[:, -1])[:, None]
        nxt = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
    logp = torch.log_softmax(scaled, dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
    return nxt, logp


_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = x + _signed(0x9E3779B97F4A7C15)  # int64 arithmetic wraps like uint64
    x = (x ^ _shr(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * _signed(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def seeded_uniforms(seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Counter-based uniforms in [0, 1): one per seed for this step (broadcasting over tensors of
    steps); the same on every device and in every batch."""
    z = _splitmix64(_splitmix64(seeds) + step)
    return _shr(z, 11).double() * (1.0 / (1 << 53))


class _Sampler:
    """The sampling settings and the uniforms of every step, drawn up front: (steps, B) from the shared
    generator, or from each sequence's seed. The engine and the naive sampler consume the same table."""

    def __init__(self, temperature, top_k, top_p, seed, generator, seeds, b, dev, steps: int):
        if top_k is not None and top_k <= 0:
            raise LmlabError(f"top_k must be a positive integer or None, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise LmlabError(f"top_p must be in (0, 1], got {top_p}")
        self.args = (temperature, top_k, top_p)
        self.seeds = None
        if seeds is not None:
            if len(seeds) != b:
                raise LmlabError(f"seeds has {len(seeds)} entries for {b} prompts: give one seed per prompt")
            self.seeds = torch.tensor(
                [_signed(int(s) & _MASK64) for s in seeds], dtype=torch.long, device=dev
            )
        self.table = None
        if temperature > 0 and self.seeds is not None:
            self.table = seeded_uniforms(self.seeds[None, :], torch.arange(steps, device=dev)[:, None])
        elif temperature > 0:
            if generator is None:
                generator = torch.Generator(device=dev)
                generator.manual_seed(0 if seed is None else seed)
            self.table = torch.rand(
                (steps, b), dtype=torch.float64, device=generator.device, generator=generator
            ).to(dev)

    def __call__(self, logits, step: int):
        return sample_next(
            logits, *self.args, None, uniforms=None if self.table is None else self.table[step]
        )


# ----------------------------------------------------------------------------- inputs
def _as_lists(prompts, prompt_mask=None) -> list[list[int]]:
    """Prompts as lists of ids; a (B, T) tensor may come left- or right-padded with a bool/0-1 mask."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise LmlabError(f"prompt tensor must be (batch, length), got shape {tuple(prompts.shape)}")
        if prompt_mask is None:
            return prompts.tolist()
        m = prompt_mask.bool()
        return [row[mrow].tolist() for row, mrow in zip(prompts.cpu(), m.cpu())]
    if prompt_mask is not None:
        raise LmlabError("prompt_mask is only used with a (batch, length) prompt tensor")
    return [list(map(int, p)) for p in prompts]


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded for decoding, (B, T) ids and bool mask of real tokens; each needs a token."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise LmlabError("every prompt needs at least one token (e.g. BOS)")
    return pad_batch(prompts, pad_id, left=True, device=device)


def _budgets(max_new_tokens, b):
    if isinstance(max_new_tokens, int):
        out = [max_new_tokens] * b
    elif len(max_new_tokens) != b:
        raise LmlabError(f"max_new_tokens has {len(max_new_tokens)} entries for {b} prompts")
    else:
        out = [int(x) for x in max_new_tokens]
    if any(x < 0 for x in out):
        raise LmlabError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    return out


def _stops(stop_tokens, b):
    if stop_tokens is None:
        return [set() for _ in range(b)]
    if isinstance(stop_tokens, int):
        return [{stop_tokens} for _ in range(b)]
    if isinstance(stop_tokens, (set, frozenset)) or (
        stop_tokens and isinstance(next(iter(stop_tokens)), int)
    ):
        return [set(stop_tokens) for _ in range(b)]
    if len(stop_tokens) != b:
        raise LmlabError(f"stop_tokens has {len(stop_tokens)} per-sequence sets for {b} prompts")
    return [set() if s is None else ({s} if isinstance(s, int) else set(s)) for s in stop_tokens]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def as_generation_model(model: nn.Module) -> nn.Module:
    """lmlab models pass through; a raw `transformers` causal LM is wrapped in `lmlab.hf.HFModel`."""
    if hasattr(model, "new_cache"):
        return model
    if hasattr(model, "config") and hasattr(model, "get_input_embeddings"):
        return as_lmlab(model)
    raise LmlabError(
        f"{type(model).__name__} cannot generate: pass an lmlab GPT, a lmlab.hf.HFModel or a "
        "transformers causal LM"
    )


# ----------------------------------------------------------------------------- bookkeeping
class _Tracker:
    """Per-sequence outputs, stop and budget state, all on device (no host syncs per step)."""

    def __init__(self, budgets: list[int], stops: list[set[int]], max_new: int, pad_id: int, dev):
        b = len(budgets)
        self.budgets = torch.tensor(budgets, dtype=torch.long, device=dev)
        width = max(1, max((len(s) for s in stops), default=1))
        table = torch.full((b, width), -1, dtype=torch.long)
        for i, s in enumerate(stops):
            if s:
                table[i, : len(s)] = torch.tensor(sorted(s), dtype=torch.long)
        self.stop_table = table.to(dev)
        self.any_stops = any(stops)
        self.tokens = torch.full((b, max(1, max_new)), pad_id, dtype=torch.long, device=dev)
        self.logprobs = torch.zeros((b, max(1, max_new)), dtype=torch.float32, device=dev)
        self.length = torch.zeros(b, dtype=torch.long, device=dev)
        self.done = self.budgets == 0
        self.finished = torch.zeros(b, dtype=torch.bool, device=dev)

    def record(self, t: int, nxt: torch.Tensor, logp: torch.Tensor) -> None:
        active = ~self.done
        self.tokens[:, t] = nxt
        self.logprobs[:, t] = logp
        self.length += active
        if self.any_stops:
            hit = active & (nxt[:, None] == self.stop_table).any(-1)
            self.finished |= hit
            self.done |= hit
        self.done |= self.length >= self.budgets

    def all_done(self) -> bool:
        return bool(self.done.all())

    def result(self) -> Generation:
        lengths = self.length.tolist()
        toks, lps = self.tokens.tolist(), self.logprobs.tolist()
        return Generation(
            [r[:n] for r, n in zip(toks, lengths)],
            [r[:n] for r, n in zip(lps, lengths)],
            self.finished.tolist(),
        )


# ----------------------------------------------------------------------------- fast decode step
def _static_decodable(model: nn.Module) -> bool:
    """A plain lmlab GPT with standard attention and no hooks: the static decoder reproduces its forward."""
    if type(model) is not GPT:
        return False
    for blk in model.blocks:
        if (
            type(blk) is not Block
            or type(blk.attn) is not MultiHeadAttention
            or type(blk.mlp) is not MLP
            or type(blk.ln1) is not RMSNorm
        ):
            return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class _StaticDecoder:
    """One-token decode step of a plain GPT over preallocated K/V buffers.

    The same math as `GPT.forward` with a cache (RMSNorm, RoPE, SDPA, SwiGLU/ReLU²) without hook points
    or per-step mask rebuilding: q/k/v and gate/up projections are fused into one matmul each, RoPE comes
    from a table, logits are computed for the real vocabulary only. The decoder owns its buffers and
    lends them to the model's KVCache for the prefill (`attach`), so it can be kept and reused across
    calls of the same shape (`_decoder_for`). With `graph=True` (CUDA) the step attends over the next
    64-slot bucket of the buffer with a validity mask, so its shapes are static; it is captured once per
    bucket as a CUDA graph that each token (and each later call) replays.
    """

    def __init__(self, model, batch: int, max_len: int, graph: bool, full: bool | None = None):
        cfg = model.cfg
        self.cfg, self.batch, self.max_len = cfg, batch, max_len
        w = model.embed.weight
        dev = w.device
        self.kv_dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else w.dtype
        self.params = self._param_key(model)
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.kv = [
            (
                torch.zeros(shape, dtype=self.kv_dtype, device=dev),
                torch.zeros(shape, dtype=self.kv_dtype, device=dev),
            )
            for _ in range(cfg.n_layers)
        ]
        self.fused = []  # (buffer, source parameters) refreshed from the model at every call
        self.layers = []
        for blk, (kb, vb) in zip(model.blocks, self.kv):
            a, m = blk.attn, blk.mlp
            wqkv = self._fuse([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            w_in = (
                self._fuse([m.gate_proj.weight, m.up_proj.weight]) if m.kind == "swiglu" else m.up_proj.weight
            )
            self.layers.append(
                (blk.ln1.weight, wqkv, a.o_proj.weight, blk.ln2.weight, w_in, m.down_proj.weight, kb, vb)
            )
        self.embed, self.head, self.ln_f = w, model.lm_head.weight[: cfg.vocab_size], model.ln_f.weight
        self.eps = cfg.norm_eps
        self.swiglu = cfg.mlp == "swiglu"
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(batch, dtype=torch.long, device=dev)
        self.filled = 0  # host copy of slot for the eager path
        # RoPE table exactly as GPT.rope computes it (positions never exceed the slot index);
        # rotate-half is applied as roll + a sign-folded sin
        cos, sin = model.rope(torch.arange(max_len + 1, device=dev)[None], w.dtype)
        half = cfg.head_dim // 2
        self.cos = cos[0, 0]
        self.sin = torch.cat([-sin[0, 0, :, :half], sin[0, 0, :, half:]], -1)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.sdpa = dev.type != "cpu"
        self.graphs: dict[int, tuple] = {}  # attended slots -> (CUDA graph, its logits buffer)
        self.use_graph = graph
        self.full = bool(full)  # eager: attend over 64-slot buckets like the graphs do (for testing)

    @staticmethod
    def _param_key(model):
        return tuple((p.data_ptr(), p.dtype, p.device) for p in model.parameters())

    def _fuse(self, parts):
        buf = torch.cat(parts)
        self.fused.append((buf, parts))
        return buf

    def matches(self, model) -> bool:
        return self._param_key(model) == self.params

    def attach(self, cache) -> None:
        """Let the model's prefill write its keys/values straight into this decoder's buffers."""
        for i, (kb, vb) in enumerate(self.kv):
            cache._kv[i] = (kb, vb)
            cache._fill[i] = 0

    def start(self, cache) -> None:
        """Take over after the prefill: current weights, validity, next slot and positions."""
        if cache.length >= self.max_len:
            raise RuntimeError("no room left in the KV buffers after the prefill")
        for buf, parts in self.fused:  # weights may have been trained since the last call
            torch.cat(parts, out=buf)
        self.valid.copy_(cache.key_valid)
        self.slot.fill_(cache.length)
        self.filled = cache.length
        self.pos.copy_(cache.next_pos)

    def _norm(self, x, weight):  # lmlab.model.RMSNorm as one fused op
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def _forward(self, tok: torch.Tensor, keys: int) -> torch.Tensor:
        """Decode one token for every sequence, attending over the first `keys` buffer slots."""
        cfg = self.cfg
        b = tok.shape[0]
        h_q, h_kv, d = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        x = F.embedding(tok, self.embed)[:, None]  # (B, 1, d_model)
        cos, sin = self.cos[self.pos][:, None, None], self.sin[self.pos][:, None, None]  # (B, 1, 1, D)
        self.valid.index_fill_(1, self.slot, True)
        mask = self.valid[:, None, None, :keys]
        bias = (
            None
            if self.sdpa
            else torch.zeros(mask.shape, dtype=self.embed.dtype, device=mask.device).masked_fill_(
                ~mask, float("-inf")
            )
        )
        for ln1, wqkv, wo, ln2, w_in, w_down, kb, vb in self.layers:
            qkv = F.linear(self._norm(x, ln1), wqkv).view(b, h_q + 2 * h_kv, 1, d)
            qk = qkv[:, : h_q + h_kv]
            qk = qk * cos + qk.roll(d // 2, -1) * sin
            q, k, v = qk[:, :h_q], qk[:, h_q:], qkv[:, h_q + h_kv :]
            kb.index_copy_(2, self.slot, k.to(kb.dtype))
            vb.index_copy_(2, self.slot, v.to(vb.dtype))
            if self.sdpa:
                y = F.scaled_dot_product_attention(
                    q.to(kb.dtype), kb[:, :, :keys], vb[:, :, :keys], attn_mask=mask, enable_gqa=h_q != h_kv
                )
            else:  # CPU: SDPA's flash kernel is slow for one masked query; grouped matmuls are not
                scores = q.to(kb.dtype).reshape(b, h_kv, h_q // h_kv, d) @ kb[:, :, :keys].transpose(-1, -2)
                probs = torch.softmax((scores * self.scale + bias).float(), dim=-1).to(vb.dtype)
                y = probs @ vb[:, :, :keys]
            x = x + F.linear(y.reshape(b, 1, h_q * d), wo)
            hid = F.linear(self._norm(x, ln2), w_in)
            if self.swiglu:
                gate, up = hid.chunk(2, -1)
                hid = F.silu(gate) * up
            else:
                hid = F.relu(hid).square()
            x = x + F.linear(hid, w_down)
        logits = F.linear(self._norm(x[:, 0], self.ln_f), self.head)
        self.pos.add_(1)
        self.slot.add_(1)
        return logits

    def _keys(self) -> int:
        """Slots to attend over: everything filled so far (eager), or the next 64-slot bucket (graphs),
        so a graph serves many steps while attention reads little more than the filled prefix."""
        if self.use_graph or self.full:
            return min(self.max_len, _round_up(self.filled + 1))
        return self.filled + 1

    def _capture(self, keys: int):
        dev = self.valid.device
        if not hasattr(self, "tok_in"):
            self.tok_in = torch.zeros(self.batch, dtype=torch.long, device=dev)
            self.pool = torch.cuda.graph_pool_handle()
        saved = (self.valid.clone(), self.slot.clone(), self.pos.clone())

        def restore():
            self.valid.copy_(saved[0])
            self.slot.copy_(saved[1])
            self.pos.copy_(saved[2])

        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):  # warm-up (allocations, kernel selection) off the capture
            self._forward(self.tok_in, keys)
        torch.cuda.current_stream(dev).wait_stream(stream)
        restore()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._forward(self.tok_in, keys)
        restore()
        self.graphs[keys] = (graph, out)
        return self.graphs[keys]

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        keys = self._keys()
        entry = self.graphs.get(keys)
        if self.use_graph and entry is None:
            try:
                entry = self._capture(keys)
            except RuntimeError as e:  # decode on eagerly rather than fail the generation
                warnings.warn(f"CUDA graph capture failed ({e}); decoding without CUDA graphs")
                self.use_graph = False
        if self.use_graph:
            graph, out = entry
            self.tok_in.copy_(tok)
            graph.replay()
        else:
            out = self._forward(tok, keys)
        self.filled += 1
        return out


_DECODERS: weakref.WeakKeyDictionary[nn.Module, OrderedDict] = weakref.WeakKeyDictionary()
_DECODERS_PER_MODEL = 2  # each holds K/V buffers for its (batch, length)


def _decoder_for(model, batch: int, max_len: int, graph: bool, full: bool | None = None) -> _StaticDecoder:
    """A static decoder for this model and shape, reused across calls while the parameters stay in place."""
    dev = model.embed.weight.device
    key = (batch, max_len, graph, full, torch.is_autocast_enabled(dev.type))
    per_model = _DECODERS.setdefault(model, OrderedDict())
    dec = per_model.get(key)
    if dec is None or not dec.matches(model):
        per_model.pop(key, None)
        while len(per_model) >= _DECODERS_PER_MODEL:
            per_model.popitem(last=False)
        dec = per_model[key] = _StaticDecoder(model, batch, max_len, graph, full)
    per_model.move_to_end(key)
    return dec


def _use_static(model, fast: bool | None) -> bool:
    if fast is None:
        return _static_decodable(model)
    if fast and not _static_decodable(model):
        raise LmlabError(
            f"fast=True needs a plain lmlab GPT with standard attention and no active hooks; "
            f"{type(model).__name__} here: use fast=None (automatic) or fast=False"
        )
    return bool(fast)


def _round_up(n: int, m: int = 64) -> int:
    return -(-n // m) * m


# ----------------------------------------------------------------------------- engine
@torch.no_grad()
def generate(
    model: nn.Module,
    prompts,
    max_new_tokens: int | list[int] = 32,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens=None,
    pad_id: int = 0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    *,
    seeds: list[int] | None = None,
    prompt_mask: torch.Tensor | None = None,
    fast: bool | None = None,
    cuda_graph: bool | None = None,
) -> Generation:
    """Sample continuations for a batch of token-id prompts with a KV cache.

    prompts: list of id lists (any lengths), or a (B, T) tensor with `prompt_mask` (left or right padding).
    temperature 0 is greedy. stop_tokens: an id or set of ids for all sequences, or one set per sequence.
    max_new_tokens: one budget or one per sequence. seed/generator: the shared random stream;
    seeds: one seed per sequence (batch-composition independent). fast/cuda_graph: None = automatic
    (static decoder for plain GPTs; CUDA graphs on CUDA).
    """
    model = as_generation_model(model)
    prompts = _as_lists(prompts, prompt_mask)
    dev = _device(model)
    b = len(prompts)
    budgets, stops = _budgets(max_new_tokens, b), _stops(stop_tokens, b)
    max_new = max(budgets)
    sampler = _Sampler(temperature, top_k, top_p, seed, generator, seeds, b, dev, max_new)
    ids, mask = left_pad(prompts, pad_id, dev)
    check_length(model, ids.shape[1] + max_new, "a prompt with its new tokens")  # before any decoding
    track = _Tracker(budgets, stops, max_new, pad_id, dev)
    if max_new == 0:
        return track.result()
    sync_every = 1 if dev.type == "cpu" else 16  # all-done checks sync the device
    with _eval_mode(model):
        static = max_new > 1 and _use_static(model, fast)
        length = ids.shape[1] + max_new
        if static:  # lengths are bucketed so that repeated calls reuse one decoder (and its CUDA graph)
            if cuda_graph is None:
                cuda_graph = not torch.is_autocast_enabled(dev.type)
            dec = _decoder_for(model, b, _round_up(length), bool(cuda_graph) and dev.type == "cuda")
            cache = model.new_cache(b, dec.max_len)
            dec.attach(cache)
        else:
            cache = model.new_cache(b, length)
        logits = model(ids, cache=cache, key_mask=mask)[:, -1]
        if static:
            dec.start(cache)
            step = dec
        else:

            def step(tok):
                return model(tok[:, None], cache=cache)[:, -1]

        for t in range(max_new):
            nxt, logp = sampler(logits, t)
            track.record(t, nxt, logp)
            if t + 1 == max_new or ((t + 1) % sync_every == 0 and track.all_done()):
                break
            logits = step(nxt)
    return track.result()


@torch.no_grad()
def generate_naive(
    model: nn.Module,
    prompts,
    max_new_tokens: int | list[int] = 32,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens=None,
    pad_id: int = 0,
    seed: int | None = None,
    *,
    seeds: list[int] | None = None,
    prompt_mask: torch.Tensor | None = None,
) -> Generation:
    """Reference sampler: re-runs the full forward on the whole sequence each step (no cache)."""
    model = as_generation_model(model)
    prompts = _as_lists(prompts, prompt_mask)
    dev = _device(model)
    b = len(prompts)
    budgets, stops = _budgets(max_new_tokens, b), _stops(stop_tokens, b)
    sampler = _Sampler(temperature, top_k, top_p, seed, None, seeds, b, dev, max(budgets))
    ids, mask = left_pad(prompts, pad_id, dev)
    out = [[] for _ in range(b)]
    lps = [[] for _ in range(b)]
    done = [budgets[i] == 0 for i in range(b)]
    finished = [False] * b
    with _eval_mode(model):
        for t in range(max(budgets)):
            if all(done):
                break
            logits = model(ids, key_mask=mask)[:, -1]
            nxt, logp = sampler(logits, t)
            for i in range(b):
                if done[i]:
                    continue
                out[i].append(int(nxt[i]))
                lps[i].append(float(logp[i]))
                if int(nxt[i]) in stops[i]:
                    done[i], finished[i] = True, True
                elif len(out[i]) >= budgets[i]:
                    done[i] = True
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool, device=dev)], 1)
    return Generation(out, lps, finished)


# ----------------------------------------------------------------------------- teacher forcing
def forward_logits(model: nn.Module, ids: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V) of an lmlab GPT, a `lmlab.hf.HFModel` or a raw `transformers` causal LM."""
    if hasattr(model, "new_cache"):
        return model(ids, key_mask=key_mask)
    return as_generation_model(model)(ids, key_mask=key_mask)


def sequence_logprobs(
    model: nn.Module,
    prompt_ids,
    completion_ids,
    temperature: float = 1.0,
    pad_id: int = 0,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probs of each completion token given its prompt.

    Returns (logprobs (B, Tc) float32, mask (B, Tc) bool), right-padded to the longest completion.
    Differentiable (call under `torch.no_grad()` for reference/old-policy log-probs). With the
    sampling temperature it equals `Generation.logprobs` of the same tokens (no top-k/top-p: those
    only change which tokens are drawn, the log-prob is under the temperature-scaled distribution).
    """
    prompts, comps = _as_lists(prompt_ids), _as_lists(completion_ids)
    if len(prompts) != len(comps):
        raise LmlabError(f"{len(prompts)} prompts but {len(comps)} completions")
    if any(len(p) == 0 for p in prompts):
        raise LmlabError("every prompt needs at least one token (e.g. BOS)")
    dev = _device(model)
    b = len(prompts)
    tc = max((len(c) for c in comps), default=0)
    out_lp = torch.zeros((b, tc), dtype=torch.float32, device=dev)
    out_mask = torch.zeros((b, tc), dtype=torch.bool, device=dev)
    for i, c in enumerate(comps):
        out_mask[i, : len(c)] = True
    if tc == 0:
        return out_lp, out_mask
    step = batch_size or b
    rows = []
    for s in range(0, b, step):
        rows.append(
            _chunk_logprobs(model, prompts[s : s + step], comps[s : s + step], temperature, pad_id, tc, dev)
        )
    return torch.cat(rows, 0), out_mask


def _chunk_logprobs(model, prompts, comps, temperature, pad_id, tc, dev):
    b = len(prompts)
    seqs = [p + c for p, c in zip(prompts, comps)]
    t = max(len(s) for s in seqs)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    mask = torch.zeros((b, t), dtype=torch.bool)
    # positions of the logits that predict completion token j: len(prompt) - 1 + j
    src = torch.zeros((b, tc), dtype=torch.long)
    tgt = torch.full((b, tc), -100, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, comps)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        mask[i, : len(p) + len(c)] = True
        src[i, : len(c)] = torch.arange(len(p) - 1, len(p) - 1 + len(c))
        tgt[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    ids, mask, src, tgt = ids.to(dev), mask.to(dev), src.to(dev), tgt.to(dev)
    logits = forward_logits(model, ids, mask)
    picked = logits.gather(1, src[:, :, None].expand(-1, -1, logits.shape[-1])).float()
    if temperature > 0:
        picked = picked / temperature
    lp = -F.cross_entropy(picked.transpose(1, 2), tgt, ignore_index=-100, reduction="none")
    return lp
