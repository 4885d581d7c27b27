"""Forward+backward time and peak memory of IHA vs MHA, next to the theoretical FLOP ratios.

One attention layer (projections included) on (B, N, D) inputs, B·N fixed. Variants: MHA; global IHA
with P ∈ {1, 2, 4} (flat causal mask, SDPA on N·P virtual tokens); window IHA with the FLOP-matched
window W = N/(2P²) (FlexAttention on CUDA, dense mask on CPU); and the hybrid schedule's per-layer
average (4 window-IHA layers : 1 MHA layer), derived from the measured layer times.

FLOP ratios printed: `paper` = attention scores, every query charged all its window (the paper's
P² and 3/5); `causal` = scores actually kept by the causal mask; `layer` = causal scores plus
projections, mixing and collapse — the honest comparator for a measured layer time.

    python bench/attention_cost.py            # CUDA: N ∈ {256, 1024, 4096}, D = 512, H = 8
    python bench/attention_cost.py --quick    # CPU-sized: N ∈ {64, 128}, D = 64, H = 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lmlab.model import AttnContext, MultiHeadAttention
from lmlab.methods.iha.attention import InterleavedHeadAttention, hybrid_window
from lmlab.model import attention_flops_per_token
from lmlab.model import GPTConfig
from lmlab.utils import autocast_ctx


def build(kind: str, d_model: int, heads: int, p: int, window: int | None, dev):
    if kind == "mha":
        cfg = GPTConfig(vocab_size=8, n_heads=heads, d_model=d_model)
        return MultiHeadAttention(cfg, 0).to(dev)
    cfg = GPTConfig(vocab_size=8, n_heads=heads, d_model=d_model, attention="iha",
                    attention_options={"n_pseudo": p, "window": window})
    return InterleavedHeadAttention(cfg, 0).to(dev)


def rope(n: int, d: int, dev):
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=dev).float() / d))
    ang = torch.arange(n, device=dev).float()[:, None] * inv
    emb = torch.cat((ang, ang), -1)
    return emb.cos()[None, None], emb.sin()[None, None]


def measure(layer, x, rp, iters: int, warmup: int) -> tuple[float, float | None]:
    """Median seconds per forward+backward (CPU: process time, robust to other load), and peak CUDA
    memory (MiB) above the input."""
    dev = x.device
    clock = time.perf_counter if dev.type == "cuda" else time.process_time
    times = []
    for i in range(warmup + iters):
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = clock()
        with autocast_ctx(dev):
            y = layer(x, rp, AttnContext())
        y.float().square().mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(clock() - t0)
        layer.zero_grad(set_to_none=True)
        x.grad = None
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else None
    return sorted(times)[len(times) // 2], peak


def layer_flops(n: int, d_model: int, heads: int, p: int, window: int | None, causal: bool) -> float:
    """fwd+bwd FLOPs per token of one layer: 4 projections, mixing/collapse (IHA) and the scores."""
    hd = d_model // heads
    proj = 6 * 4 * d_model * d_model
    mix = 0 if p == 0 else 6 * 4 * heads * heads * p * hd
    return proj + mix + attention_flops_per_token(n, heads, hd, max(p, 1), window, causal)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small CPU-sized run")
    ap.add_argument("--lengths", type=int, nargs="*")
    ap.add_argument("--pseudo", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--tokens", type=int, help="batch × length per step")
    ap.add_argument("--iters", type=int)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if args.quick:
        lengths, d_model, heads, tokens, iters = [64, 128], 64, 4, 512, 3
        torch.set_num_threads(1)
    else:
        lengths, d_model, heads, tokens, iters = [256, 1024, 4096], 512, 8, 16384, 10
    lengths, tokens, iters = args.lengths or lengths, args.tokens or tokens, args.iters or iters
    print(f"device {dev} ({torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu'}), D={d_model}, "
          f"H={heads}, {tokens} tokens per step, median of {iters}")
    head = (f"{'N':>5} {'variant':<16} {'ms':>8} {'MiB':>8} {'t ratio':>8} {'mem ratio':>9} "
            f"{'paper':>6} {'causal':>6} {'layer':>6} {'t/layer':>7}")
    rows = []
    for n in lengths:
        b = max(1, tokens // n)
        x = torch.randn(b, n, d_model, device=dev, requires_grad=True)
        rp = rope(n, d_model // heads, dev)
        variants = [("MHA", "mha", 0, None)]
        variants += [(f"IHA P={p} global", "iha", p, None) for p in args.pseudo]
        variants += [(f"IHA P={p} W={hybrid_window(n, p)}", "iha", p, hybrid_window(n, p))
                     for p in args.pseudo if n >= 2 * p * p]
        results = {}
        print(f"\n{head}")
        for name, kind, p, w in variants:
            torch.manual_seed(0)
            layer = build(kind, d_model, heads, p, w, dev)
            try:
                sec, mem = measure(layer, x, rp, iters, warmup=3)
            except torch.OutOfMemoryError:
                print(f"{n:>5} {name:<16} out of memory")
                continue
            finally:
                del layer
            results[name] = (sec, mem, p, w)
        mha_t, mha_m = results["MHA"][0], results["MHA"][1]
        for name, (sec, mem, p, w) in results.items():
            paper = attention_flops_per_token(n, heads, d_model // heads, max(p, 1), w) / \
                attention_flops_per_token(n, heads, d_model // heads)
            causal = attention_flops_per_token(n, heads, d_model // heads, max(p, 1), w, causal=True) / \
                attention_flops_per_token(n, heads, d_model // heads, causal=True)
            lay = layer_flops(n, d_model, heads, p, w, True) / layer_flops(n, d_model, heads, 0, None, True)
            row = {"N": n, "batch": b, "variant": name, "ms": 1e3 * sec, "peak_mib": mem,
                   "time_ratio": sec / mha_t, "mem_ratio": None if mem is None else mem / mha_m,
                   "flop_ratio_paper": paper, "flop_ratio_causal": causal, "flop_ratio_layer": lay}
            rows.append(row)
            print_row(row)
        windows = [k for k in results if "W=" in k]
        for name in windows:  # the hybrid stack's per-layer average: 4 window-IHA layers + 1 MHA layer
            sec, mem, p, w = results[name]
            hd = d_model // heads
            mha_paper = attention_flops_per_token(n, heads, hd)
            paper = (4 * attention_flops_per_token(n, heads, hd, p, w) + mha_paper) / (5 * mha_paper)
            causal = (4 * attention_flops_per_token(n, heads, hd, p, w, True) +
                      attention_flops_per_token(n, heads, hd, causal=True)) / \
                (5 * attention_flops_per_token(n, heads, hd, causal=True))
            mha_layer = layer_flops(n, d_model, heads, 0, None, True)
            lay = (4 * layer_flops(n, d_model, heads, p, w, True) + mha_layer) / (5 * mha_layer)
            row = {"N": n, "batch": b, "variant": f"hybrid 4:1 P={p}", "ms": 1e3 * (4 * sec + mha_t) / 5,
                   "peak_mib": None, "time_ratio": (4 * sec / mha_t + 1) / 5, "mem_ratio": None,
                   "flop_ratio_paper": paper, "flop_ratio_causal": causal, "flop_ratio_layer": lay}
            rows.append(row)
            print_row(row)
    over = [r for r in rows if r["time_ratio"] / r["flop_ratio_layer"] > 1.5]
    note = "" if dev.type == "cuda" else " (CPU: report only)"
    print(f"\ntarget (GPU): measured time ratio within 1.5x of the layer FLOP ratio; "
          f"{len(rows) - len(over)}/{len(rows)} rows meet it{note}")
    for r in over:
        print(f"  over: N={r['N']} {r['variant']}: {r['time_ratio'] / r['flop_ratio_layer']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def print_row(r: dict) -> None:
    mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
    memr = "n/a" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}"
    print(f"{r['N']:>5} {r['variant']:<16} {r['ms']:>8.2f} {mem:>8} {r['time_ratio']:>8.2f} {memr:>9} "
          f"{r['flop_ratio_paper']:>6.2f} {r['flop_ratio_causal']:>6.2f} {r['flop_ratio_layer']:>6.2f} "
          f"{r['time_ratio'] / r['flop_ratio_layer']:>7.2f}")


if __name__ == "__main__":
    main()
