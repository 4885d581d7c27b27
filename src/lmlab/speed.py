"""The fast training path: pieces a careful PyTorch user adds without writing CUDA.

Each is opt-in or taken only on CUDA, so a CPU run computes exactly what it computed without them.

- `chunked_lm_loss`: the next-token loss from the final hidden states, through the LM head a chunk of rows at
  a time, with the chunk's gradients computed at once: the (tokens, vocab) fp32 logits never exist whole.
- `sdpa_context` / `pick_sdpa_backend`: the scaled-dot-product-attention kernel (flash, cuDNN, ...) for a run.
- `GraphedStep`: a whole optimisation step (forward, backward, clipping, AdamW) captured as one CUDA graph and
  replayed; tiny models are bound by the per-step launch overhead, not by the GPU.
- `palm_flops` / `mfu`: the PaLM FLOP count behind MFU, written out.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- chunked cross-entropy
class _ChunkedLMLoss(torch.autograd.Function):
    """Sum of token losses; the gradients are computed in the forward pass, chunk by chunk, and only scaled in
    the backward pass (the loss is a scalar, so its gradient is one number)."""

    @staticmethod
    def forward(ctx, h, weight, targets, vocab: int, chunk: int, dtype: torch.dtype, ignore_index: int):
        w = weight.to(dtype)
        acc = torch.promote_types(dtype, torch.float32)  # softmax and sums: fp32 at least
        grad_h = torch.empty(h.shape, dtype=dtype, device=h.device)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        total = torch.zeros((), dtype=acc, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hc = h[s : s + chunk].to(dtype)
            y = targets[s : s + chunk]
            valid = y != ignore_index
            y = torch.where(valid, y, 0)[:, None]
            logits = (hc @ w.t()).to(acc)
            if vocab < logits.shape[1]:  # rows of a padded head are no tokens
                logits[:, vocab:] = float("-inf")
            lse = torch.logsumexp(logits, dim=1, keepdim=True)
            total += torch.where(valid, lse.squeeze(1) - logits.gather(1, y).squeeze(1), 0.0).sum()
            g = logits.sub_(lse).exp_()  # softmax, in place of the logits
            g.scatter_add_(1, y, torch.full(y.shape, -1.0, dtype=g.dtype, device=g.device))
            g = g.mul_(valid[:, None]).to(dtype)
            grad_h[s : s + chunk] = g @ w
            grad_w += (g.t() @ hc).to(acc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = h.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (grad_h, grad_w), (h_dtype, w_dtype) = ctx.saved_tensors, ctx.dtypes
        return (grad_h * grad_out).to(h_dtype), (grad_w * grad_out).to(w_dtype), None, None, None, None, None


def chunked_lm_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab: int, chunk: int,
                    ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` (its first `vocab` columns) against `targets` over the counted
    tokens: F.cross_entropy(logits.float(), targets, ignore_index) without the full logits.

    h: (..., d) final hidden states; weight: (V_padded, d) LM head; chunk: rows per chunk. The head runs in the
    autocast dtype when autocast is on (as `nn.Linear` would), the softmax in fp32."""
    dev = h.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    flat = targets.reshape(-1)
    total = _ChunkedLMLoss.apply(h.reshape(-1, h.shape[-1]), weight, flat, vocab, chunk, dtype, ignore_index)
    return total / (flat != ignore_index).sum().clamp(min=1)


# ---------------------------------------------------------------- attention kernel
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
SDPA_CHOICES = ("auto", "default", *SDPA_BACKENDS)


def sdpa_context(name: str | None, strict: bool = False):
    """A context that makes SDPA try backend `name` first ("default"/None: PyTorch's own order). The others stay
    enabled behind it (a masked call the chosen kernel cannot take falls back) unless `strict`."""
    if name in (None, "default", "auto"):
        return contextlib.nullcontext()
    first = SDPA_BACKENDS[name]
    if strict:
        return sdpa_kernel([first])
    order = [first, *(b for b in SDPA_BACKENDS.values() if b != first)]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch < 2.6 has no priorities: the set is enabled, tried in PyTorch's order
        return sdpa_kernel(order)


_PICKED: dict = {}


def pick_sdpa_backend(batch: int, n_heads: int, seq_len: int, head_dim: int, device: torch.device,
                      dtype: torch.dtype = torch.bfloat16, candidates=("cudnn", "flash"), iters: int = 10) -> str:
    """The fastest of `candidates` for causal self-attention of this shape (forward + backward, timed here once
    per shape); "default" off CUDA or when none of them runs."""
    if device.type != "cuda":
        return "default"
    key = (batch, n_heads, seq_len, head_dim, str(device), dtype, tuple(candidates))
    if key in _PICKED:
        return _PICKED[key]
    q, k, v = (torch.randn(batch, n_heads, seq_len, head_dim, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))

    def run():
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    times = {}
    for name in candidates:
        try:
            with sdpa_context(name, strict=True):
                for _ in range(3):
                    run()
                torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                for _ in range(iters):
                    run()
                torch.cuda.synchronize(device)
            times[name] = (time.perf_counter() - t0) / iters
        except RuntimeError as e:  # the kernel does not take this shape, dtype or card
            log.info("SDPA backend %s not available here: %s", name, str(e).splitlines()[0])
    _PICKED[key] = min(times, key=times.get) if times else "default"
    log.info("SDPA backend for %s: %s (fwd+bwd ms: %s)", key[:4], _PICKED[key],
             ", ".join(f"{k} {1e3 * t:.3f}" for k, t in times.items()))
    return _PICKED[key]


# ---------------------------------------------------------------- whole-step CUDA graph
def _layout(x):
    """(signature, tensors) of a batch made of tensors, tuples, lists, dicts and plain values."""
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), x.dtype, x.device), [x]
    if isinstance(x, (tuple, list)):
        parts = [_layout(v) for v in x]
        return (type(x).__name__, tuple(p[0] for p in parts)), [t for p in parts for t in p[1]]
    if isinstance(x, dict):
        parts = {k: _layout(v) for k, v in x.items()}
        return ("dict", tuple((k, p[0]) for k, p in parts.items())), [t for p in parts.values() for t in p[1]]
    return ("V", x), []


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_clone(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return x


class GraphedStep:
    """`step(micro_batches) -> loss`: after `warmup` eager steps, the whole step (forward and backward of every
    micro-batch, gradient clipping, the optimizer update) is captured once as a CUDA graph and then replayed, the
    batch copied into the captured input buffers. The learning rate is read from the optimizer's lr tensors at
    each replay, so the optimizer must be capturable (`lmlab.train.make_optimizer(..., capturable=True)`).

    A batch of another layout (shapes, dtypes, structure) runs as an eager step. `loss_fn(model, batch)` must
    depend on the batch's tensors alone: Python state it reads is frozen into the graph at capture.
    """

    def __init__(self, model, opt, loss_fn, grad_clip: float | None, amp: bool = True, sdpa: str = "default",
                 warmup: int = 3):
        self.model, self.opt, self.loss_fn, self.grad_clip = model, opt, loss_fn, grad_clip
        self.amp, self.sdpa, self.warmup = amp, sdpa, warmup
        self.params = [p for g in opt.param_groups for p in g["params"]]
        if not all(g.get("capturable") for g in opt.param_groups):
            raise ValueError("a CUDA-graphed step needs a capturable optimizer: make_optimizer(..., capturable=True)")
        self.calls, self.graph, self.eager_only = 0, None, False
        self.stream = torch.cuda.Stream()

    def _body(self, micro):
        n = len(micro)
        total = None
        with sdpa_context(self.sdpa):
            for b in micro:
                # the autocast weight cache would hold casts made outside the graph
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
                    loss = self.loss_fn(self.model, b)
                (loss if n == 1 else loss / n).backward()
                total = loss.detach().float() if total is None else total + loss.detach().float()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        return total if n == 1 else total / n

    def _eager(self, micro):
        self.opt.zero_grad(set_to_none=self.graph is None)  # after capture the grads are the graph's buffers
        return self._body(micro)

    def __call__(self, micro):
        sig, tensors = _layout(micro)
        if self.graph is None and not self.eager_only:
            if any(t.device.type != "cuda" for t in tensors):
                log.warning("a batch tensor is not on the GPU: the step runs eagerly (a graph cannot copy it)")
                self.eager_only = True
            elif self.calls < self.warmup:  # on a side stream, as PyTorch's whole-network capture recipe does
                self.calls += 1
                self.stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self.stream):
                    loss = self._eager(micro)
                torch.cuda.current_stream().wait_stream(self.stream)
                loss.record_stream(torch.cuda.current_stream())
                return loss
            else:
                self.static = _clone(micro)
                self.sig, self.inputs = _layout(self.static)
                self.opt.zero_grad(set_to_none=True)  # the backward allocates the grads inside the graph
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.loss = self._body(self.static)
        if self.graph is None or sig != self.sig:
            return self._eager(micro)
        for dst, src in zip(self.inputs, tensors):
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.loss.clone()


# ---------------------------------------------------------------- MFU
def palm_flops(model, seq_len: int) -> tuple[float, str]:
    """Training FLOPs per token by the PaLM count (Chowdhery et al. 2022, appendix B) and the count written out:
    6 × every trainable parameter (`parameters()` yields a tied embedding once) + 12·L·d·T for the attention
    scores, T the sequence length."""
    cfg = model.cfg
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    attn = 12 * cfg.n_layers * cfg.d_model * seq_len
    text = (f"6 × {n:,} params + 12 × {cfg.n_layers} layers × {cfg.d_model} d × {seq_len} T = "
            f"{6 * n:.4g} + {attn:.4g} = {6 * n + attn:.4g} FLOP/token")
    return float(6 * n + attn), text


def mfu(tok_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the card's dense bf16 peak (None when the peak is unknown)."""
    return tok_s * flops_per_token / peak if peak else None
