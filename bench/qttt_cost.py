"""Time of one qTTT step (span of k tokens over the frozen cache, forward + backward + AdamW on the query
deltas) against one prefill of T tokens, next to the FLOP model's ratio (qTTT paper App. C).

A qTTT step must cost O(k·T) attention, not a re-prefill: the measured step/prefill ratio should track
G_step(k; T) / F_prefill(T), which falls roughly like k/T at long context.

    python bench/qttt_cost.py            # CUDA: T ∈ {1k, 4k, 16k}, d = 1024, 8 layers, k = 128
    python bench/qttt_cost.py --quick    # CPU-sized: T ∈ {256, 1024}, d = 128, 2 layers, k = 32
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lmlab.methods.qttt.flops import FlopModel
from lmlab.model import GPT, GPTConfig
from lmlab.methods.qttt.ttt import QTTTConfig, QueryDeltas, _GPTBackend
from lmlab.utils import get_device


def timed(fn, dev, iters: int, warmup: int) -> float:
    """Median seconds per call (CPU: process time, robust to other load)."""
    clock = time.perf_counter if dev.type == "cuda" else time.process_time
    out = []
    for i in range(warmup + iters):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            out.append(clock() - t0)
    return float(np.median(out))


def measure(model: GPT, flops: FlopModel, T: int, k: int, dev, iters: int) -> dict:
    """Median time of one prefill of T tokens and of one qTTT step (span k) over its frozen cache."""
    ctx = torch.randint(0, model.cfg.vocab_size, (T,)).tolist()
    backend = _GPTBackend(model)
    t_prefill = timed(lambda: backend.prefill([ctx]), dev, iters, 1)
    cache = backend.prefill([ctx])
    deltas = QueryDeltas(model, 1, QTTTConfig(span_len=k), dev, [0])
    opt = torch.optim.AdamW(deltas.params(), lr=1e-5, fused=dev.type == "cuda")
    rng = np.random.default_rng(0)
    w = torch.ones(1, k, device=dev)

    def step():
        loss = backend.span_loss(cache, rng.integers(0, T - k - 1, size=1), k, w).sum()
        loss.backward()
        deltas.clip_(1.0)
        deltas.decay_(1e-5)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_step = timed(step, dev, iters, 2)
    deltas.remove()
    return {
        "T": T,
        "k": k,
        "prefill_s": t_prefill,
        "qttt_step_s": t_step,
        "measured_ratio": t_step / t_prefill,
        "flop_ratio": flops.qttt_step(k, T) / flops.prefill(T),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized run")
    ap.add_argument("--lengths", type=int, nargs="*", default=None)
    ap.add_argument("--span", type=int, default=None)
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    dev = get_device(a.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    quick = a.quick or dev.type == "cpu"
    lengths = a.lengths or ([256, 1024] if quick else [1024, 4096, 16384])
    k = a.span or (32 if quick else 128)
    d = a.d_model or (128 if quick else 1024)
    n_layers = a.layers or (2 if quick else 8)
    torch.manual_seed(0)
    model = (
        GPT(
            GPTConfig(
                vocab_size=1024, n_layers=n_layers, n_heads=max(1, d // 64), d_model=d, seq_len=max(lengths)
            )
        )
        .to(dev)
        .eval()
    )
    for p in model.parameters():
        p.requires_grad_(False)
    flops = FlopModel.from_model(model)
    rows = [measure(model, flops, T, k, dev, a.iters) for T in lengths]
    hw = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU (1 thread, process time)"
    print(f"qTTT step vs prefill — {hw}; GPT d={d}, {n_layers} layers, k={k}, bf16 autocast on CUDA")
    print(f"{'T':>7} {'prefill ms':>11} {'step ms':>9} {'step/prefill':>13} {'FLOP model':>11}")
    for r in rows:
        print(
            f"{r['T']:>7} {1e3 * r['prefill_s']:>11.2f} {1e3 * r['qttt_step_s']:>9.2f} "
            f"{r['measured_ratio']:>13.3f} {r['flop_ratio']:>11.3f}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"hardware": hw, "d_model": d, "layers": n_layers, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
