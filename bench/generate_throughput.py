"""New tokens/s of lmlab's sampling engine vs `transformers` `generate()` on the same weights.

An lmlab GPT (mha, SwiGLU) is exported with `lmlab.hf.export_llama` and loaded back with
`LlamaForCausalLM.from_pretrained`; both engines sample (temperature 1, no top-k/top-p) from the same
64-token prompts, after a warm-up run, in one process. Printed: tokens/s of lmlab, HF with its default
dynamic cache, HF with `cache_implementation="static"` (auto-compiled by transformers on CUDA), and the
ratios. The engines run in interleaved repeats (every repeat times each engine once, in a rotated order), and
the printed rates and ratios are medians over the repeats (default 3): a single run of HF's rate was seen to move
by 40 % between two runs. Wall-clock and process CPU time are both reported (the CPU machine may be shared).

    python bench/generate_throughput.py --tiny             # CPU, under a minute: 0.5M model, short outputs
    python bench/generate_throughput.py --quick            # CPU, ~3 minutes: 0.5M model, 1 thread
    python bench/generate_throughput.py --device cpu       # CPU, 4.3M model (weight-bandwidth bound)
    python bench/generate_throughput.py --device cuda      # 124M model in bf16, batch 1 and 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

import torch

from lmlab.generate import generate
from lmlab.hf import export_llama
from lmlab.model import GPT, GPTConfig

MODELS = {  # name: GPTConfig kwargs
    "124m": dict(vocab_size=50257, n_layers=12, n_heads=12, d_model=768, seq_len=1024),
    "small": dict(vocab_size=4096, n_layers=4, n_heads=4, d_model=256, seq_len=512),
    "tiny": dict(vocab_size=512, n_layers=2, n_heads=4, d_model=128, seq_len=512),
}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev):
    sync(dev)
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    sync(dev)
    return out, time.perf_counter() - w, time.process_time() - c


def run_lmlab(model, prompts, new_tokens, seed=0, **kw):
    return generate(model, prompts.tolist(), new_tokens, temperature=1.0, seed=seed, **kw)


def run_hf(hf, prompts, new_tokens, cache_implementation=None):
    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=0,
    )
    if cache_implementation:
        kwargs["cache_implementation"] = cache_implementation
    out = hf.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), **kwargs)
    assert out.shape[1] == prompts.shape[1] + new_tokens, out.shape
    return out


def check_engine(dev) -> dict:
    """Correctness on this device: the engine (CUDA graph on CUDA) vs its eager step vs naive sampling."""
    from lmlab.generate import generate_naive

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, n_layers=3, n_heads=4, d_model=64, n_kv_heads=2, init_std=0.1)).to(
        dev
    )
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 300, (n,), generator=g).tolist() for n in (5, 17, 9, 1)]
    out = {}
    for name, kw in (("greedy", dict(temperature=0)), ("sample", dict(temperature=1.0, top_k=50, seed=3))):
        ref = generate_naive(model, prompts, 100, stop_tokens={7}, **kw)
        for mode, extra in (("graph", {}), ("eager", dict(cuda_graph=False)), ("generic", dict(fast=False))):
            got = generate(model, prompts, 100, stop_tokens={7}, **kw, **extra)
            same = sum(a == b for a, b in zip(got.tokens, ref.tokens))
            dlp = max(
                (abs(x - y) for r, s in zip(got.logprobs, ref.logprobs) for x, y in zip(r, s)), default=0.0
            )
            out[f"{name}_{mode}"] = {"sequences_equal": f"{same}/{len(prompts)}", "max_logprob_diff": dlp}
            print(
                f"  check {name:6s} {mode:7s}: {same}/{len(prompts)} sequences equal to naive, "
                f"max |logprob diff| {dlp:.2e}",
                flush=True,
            )
    return out


def bench(args) -> list[dict]:
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODELS[args.model])).to(dev, dtype).eval()
    with tempfile.TemporaryDirectory() as d:
        export_llama(model.float(), d)
        model.to(dtype)
        hf = LlamaForCausalLM.from_pretrained(d, dtype=dtype).to(dev).eval()
    vocab = model.cfg.vocab_size
    print(
        f"model {args.model}: {model.num_params() / 1e6:.1f}M params, {dtype}, device {dev}"
        + (
            f" ({torch.cuda.get_device_name(dev)})"
            if dev.type == "cuda"
            else f", {torch.get_num_threads()} threads, load avg {os.getloadavg()[0]:.1f}"
        ),
        flush=True,
    )
    rows = []
    engines = [("lmlab", lambda p, n: run_lmlab(model, p, n))]
    if dev.type == "cuda" and not args.skip_eager:  # what the CUDA graph buys
        engines.append(("lmlab_no_graph", lambda p, n: run_lmlab(model, p, n, cuda_graph=False)))
    engines += [
        ("hf_dynamic", lambda p, n: run_hf(hf, p, n)),
        ("hf_static", lambda p, n: run_hf(hf, p, n, "static")),
    ]
    for b in args.batch:
        g = torch.Generator().manual_seed(b)
        prompts = torch.randint(1, vocab, (b, args.prompt_len), generator=g).to(dev)
        res = {"batch": b, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats}
        live, runs = {}, {}
        with torch.no_grad():
            for name, fn in engines:  # warm-up: compilation, graph capture, allocator
                try:
                    t0 = time.perf_counter()
                    for _ in range(args.warmup):
                        fn(prompts, args.new_tokens)
                    live[name], runs[name] = fn, []
                    res.setdefault("warmup_s", {})[name] = time.perf_counter() - t0
                except Exception:  # report and go on with the other engines
                    traceback.print_exc()
            for r in range(args.repeats):  # interleaved, the order rotated each repeat
                names = list(live)
                for name in names[r % len(names):] + names[: r % len(names)]:
                    try:
                        _, w, c = timed(lambda fn=live[name], p=prompts: fn(p, args.new_tokens), dev)
                    except Exception:
                        traceback.print_exc()
                        continue
                    runs[name].append((w, c))
        for name, rs in runs.items():
            if not rs:
                continue
            w = statistics.median(x[0] for x in rs)
            c = statistics.median(x[1] for x in rs)
            res[name] = {"tok_s": b * args.new_tokens / w, "wall_s": w, "cpu_s": c,
                         "runs_tok_s": [b * args.new_tokens / x[0] for x in rs]}
            print(
                f"  batch {b:3d} {name:14s} {res[name]['tok_s']:10.1f} new tok/s median of {len(rs)} (runs: "
                + ", ".join(f"{v:.0f}" for v in res[name]["runs_tok_s"])
                + f"; cpu {c:.2f}s; warm-up {res['warmup_s'][name]:.1f}s)",
                flush=True,
            )
        if not all(k in res for k in ("lmlab", "hf_dynamic", "hf_static")):
            rows.append(res)
            continue
        for ref in ("hf_dynamic", "hf_static"):  # the median of the per-repeat ratios (same repeat: same load)
            pairs = list(zip(runs["lmlab"], runs[ref]))
            res[f"ratio_vs_{ref}"] = statistics.median(h[0] / m[0] for m, h in pairs)
            res[f"cpu_time_ratio_vs_{ref}"] = statistics.median(h[1] / m[1] for m, h in pairs)
            res[f"ratios_vs_{ref}"] = [h[0] / m[0] for m, h in pairs]
        line = (
            f"  batch {b:3d} lmlab / HF dynamic = {res['ratio_vs_hf_dynamic']:.2f}x, "
            f"lmlab / HF static = {res['ratio_vs_hf_static']:.2f}x (wall-clock tokens/s, median of "
            f"{len(runs['lmlab'])} interleaved repeats; per repeat "
            + "/".join(f"{v:.2f}" for v in res["ratios_vs_hf_dynamic"]) + " and "
            + "/".join(f"{v:.2f}" for v in res["ratios_vs_hf_static"]) + ")"
        )
        if dev.type == "cpu":
            line += (
                f"; by process CPU time {res['cpu_time_ratio_vs_hf_dynamic']:.2f}x and "
                f"{res['cpu_time_ratio_vs_hf_static']:.2f}x"
            )
        print(line, flush=True)
        rows.append(res)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=list(MODELS), default=None)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed repeats (median; at least 3)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="CPU-sized run (~3 min): tiny model, 1 thread")
    p.add_argument("--tiny", action="store_true", help="the smallest run (CPU dry run): tiny model, 32 new tokens")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--check", action="store_true", help="first compare the engine with naive sampling here")
    p.add_argument(
        "--skip-eager", action="store_true", help="CUDA: do not also time lmlab without CUDA graphs"
    )
    args = p.parse_args(argv)
    if args.tiny:
        args.quick = True
        args.batch, args.prompt_len, args.new_tokens = [1, 8], 16, 32
    if args.model is None:
        args.model = "tiny" if args.quick else ("small" if args.device == "cpu" else "124m")
    if args.quick:
        args.threads = args.threads or 1  # a shared CPU; tiny models are fastest single-threaded
    if args.threads:
        torch.set_num_threads(args.threads)
    check = None
    if args.check:
        try:
            check = check_engine(torch.device(args.device))
        except Exception:
            traceback.print_exc()
    rows = bench(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "check": check, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
