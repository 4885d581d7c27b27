"""Training throughput of lmlab's GPT against Hugging Face `LlamaForCausalLM` of the same shape, in one process.

Both models get the same width, depth, heads, SwiGLU hidden size, vocabulary, sequence length, tied embeddings,
batch (and micro-batches), AdamW (fused on CUDA), clipping and (on CUDA) bf16 autocast, and both train through
`lmlab.train.make_step`, timed in alternating rounds so that machine load hits all alike.

lmlab runs its fast path: on CUDA the chunked cross-entropy (`--loss-chunk`) and the faster of the cuDNN and
flash attention kernels (`--sdpa`); mode `graph` adds a CUDA-graphed step. `--baseline` runs today's plain step
instead (the same code with every new option off); `--add-baseline` times that plain step beside the fast one
(mode eager or compiled: the same mode; graph modes: the plain eager step, what experiments run today) and prints
fast / baseline. Printed: tokens/s, ms per step, the ratios and, on a known GPU, MFU by the PaLM count (written out)
against the card's dense bf16 peak (lmlab.train.PEAK_FLOPS). `--check` first compares the fast paths' losses
with the plain step's on a small model.

    python bench/train_throughput.py --tiny                                   # CPU, about a minute
    python bench/train_throughput.py --quick                                  # CPU: tiny and ~10M
    python bench/train_throughput.py --configs 124m --modes eager,compiled --add-baseline   # GPU vs HF
    python bench/train_throughput.py --configs d128 --modes eager,graph,compiled+graph --add-baseline --no-hf
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time

import torch

from lmlab.model import GPT, GPTConfig
from lmlab.speed import SDPA_CHOICES, mfu, palm_flops, pick_sdpa_backend
from lmlab.train import make_optimizer, make_step, peak_flops
from lmlab.utils import get_device

log = logging.getLogger("train_throughput")

CONFIGS = {  # name: (d_model, n_layers, n_heads, vocab, seq_len, batch, micro-batch)
    "micro": (64, 2, 2, 96, 64, 4, 4),  # the lease script's CPU dry run
    "tiny": (128, 4, 4, 256, 256, 8, 8),
    "d128": (128, 2, 2, 48, 128, 128, 128),  # the lab's tiny models (scaling_smoke's gpu preset shape)
    "10m": (384, 6, 6, 8192, 256, 8, 8),
    "124m": (768, 12, 12, 50304, 1024, 64, 32),
}
MODES = ("eager", "compiled", "graph", "compiled+graph")


def model_config(name: str) -> GPTConfig:
    d, layers, heads, vocab, seq, *_ = CONFIGS[name]
    return GPTConfig(vocab_size=vocab, n_layers=layers, n_heads=heads, d_model=d, seq_len=seq, mlp="swiglu")


def build(name: str, device: torch.device, with_hf: bool):
    cfg = model_config(name)
    d, layers, heads, vocab, seq = cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.vocab_size, cfg.seq_len
    torch.manual_seed(0)
    ours = GPT(cfg).to(device)
    if not with_hf:
        return cfg, ours, None
    from transformers import LlamaConfig, LlamaForCausalLM  # optional heavy dependency: only for the HF rows

    hf_cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=cfg.hidden,
        max_position_embeddings=seq,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
    )
    hf_cfg._attn_implementation = "sdpa"
    return cfg, ours, LlamaForCausalLM(hf_cfg).to(device)


def lmlab_loss(m, b):
    return m(b[0], b[1])


def hf_loss(m, b):  # HF shifts the labels itself
    return m(input_ids=b[0], labels=b[0]).loss


class Trainer:
    """One model's training step through `make_step` on a fixed batch split into micro-batches."""

    def __init__(self, model, loss_fn, x: torch.Tensor, micro: int, opts: dict):
        self.model, self.opts = model, opts
        if isinstance(model, GPT):
            model.loss_chunk = opts.get("loss_chunk", 0)
        graph = opts.get("cuda_graph", False)
        self.opt = make_optimizer(model, 3e-4, 0.1, capturable=graph)
        self.step = make_step(model, self.opt, loss_fn, grad_clip=1.0, compile=opts.get("compile", False),
                              cuda_graph=graph, sdpa=opts.get("sdpa", "default"))
        y = x.roll(-1, dims=1)
        self.micro = [(x[i : i + micro], y[i : i + micro]) for i in range(0, len(x), micro)]
        self.device = x.device
        self.losses: list[torch.Tensor] = []

    def timed(self, steps: int) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) for `steps` steps."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        w, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.losses.append(self.step(self.micro, 3e-4).detach())
        sync()
        return time.perf_counter() - w, time.process_time() - c


def fast_options(mode: str, args, cfg: GPTConfig, micro: int, device: torch.device) -> dict:
    """lmlab's options in `mode`: the fast path, or today's plain step with --baseline."""
    compiled = mode in ("compiled", "compiled+graph")
    if args.baseline:
        return {"compile": compiled}
    cuda = device.type == "cuda"
    chunk = args.loss_chunk if args.loss_chunk is not None else (8192 if cuda else 0)
    sdpa = args.sdpa
    if sdpa == "auto":
        sdpa = pick_sdpa_backend(micro, cfg.n_heads, cfg.seq_len, cfg.head_dim, device)
    return {"compile": compiled, "cuda_graph": "graph" in mode and cuda, "loss_chunk": chunk, "sdpa": sdpa}


def bench(name: str, mode: str, device: torch.device, args) -> dict:
    *_, seq, batch, micro = CONFIGS[name]
    batch, micro = args.batch or batch, args.micro_batch or args.batch or micro
    with_hf = not args.no_hf and mode in ("eager", "compiled")
    cfg, ours, theirs = build(name, device, with_hf)
    x = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    opts = fast_options(mode, args, cfg, micro, device)
    plain = {"compile": mode == "compiled"}  # today's step in this mode (graph modes: the eager loop)
    todo = {"lmlab": (ours, lmlab_loss, opts)}
    if args.add_baseline and not args.baseline:
        todo["baseline"] = (copy.deepcopy(ours), lmlab_loss, plain)
    if theirs is not None:
        todo["hf_llama"] = (theirs, hf_loss, {"compile": mode == "compiled"})
    trainers, failed = {}, {}
    for k, (model, loss_fn, o) in todo.items():
        try:
            trainers[k] = Trainer(model, loss_fn, x, micro, o)
            trainers[k].timed(args.warmup + (3 if o.get("compile") else 0))  # compilation, graph capture
        except torch.cuda.OutOfMemoryError as e:  # report the row and go on with the others
            failed[k] = f"OOM: {str(e).splitlines()[0][:120]}"
            trainers.pop(k, None)
            torch.cuda.empty_cache()
    wall = dict.fromkeys(trainers, 0.0)
    cpu = dict.fromkeys(trainers, 0.0)
    for r in range(args.rounds):  # alternate (and swap the order) so load drifts hit all alike
        for k in list(trainers) if r % 2 == 0 else list(trainers)[::-1]:
            try:
                w, c = trainers[k].timed(args.steps)
            except torch.cuda.OutOfMemoryError as e:
                failed[k] = f"OOM: {str(e).splitlines()[0][:120]}"
                del trainers[k], wall[k], cpu[k]
                torch.cuda.empty_cache()
                continue
            wall[k] += w
            cpu[k] += c
    steps = args.steps * args.rounds
    tokens = batch * seq * steps
    flops, count = palm_flops(ours, seq)
    peak = peak_flops(device)
    out = {"config": name, "mode": mode, "params_M": ours.num_params() / 1e6, "batch": batch, "micro_batch": micro,
           "tokens_per_step": batch * seq, "lmlab_options": opts, "flops_per_token": flops, "palm_count": count,
           "peak_flops": peak, "failed": failed}
    for k in trainers:
        out[f"{k}_tok_s"] = tokens / wall[k]
        out[f"{k}_ms_step"] = 1e3 * wall[k] / steps
        out[f"{k}_cpu_tok_s"] = tokens / cpu[k]
        out[f"{k}_mfu"] = mfu(tokens / wall[k], flops, peak)
        out[f"{k}_last_loss"] = float(trainers[k].losses[-1])
    for ref in ("hf_llama", "baseline"):
        if "lmlab_tok_s" in out and f"{ref}_tok_s" in out:
            out[f"ratio_vs_{ref}"] = out["lmlab_tok_s"] / out[f"{ref}_tok_s"]
            out[f"cpu_time_ratio_vs_{ref}"] = out["lmlab_cpu_tok_s"] / out[f"{ref}_cpu_tok_s"]
    del trainers, ours, theirs, todo
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def check(device: torch.device, args) -> list[dict]:
    """Loss curves of the fast paths against the plain step: same init, same 20 batches, d=128, 2 layers."""
    cfg = GPTConfig(vocab_size=48, n_layers=2, n_heads=2, d_model=128, seq_len=64)
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 48, (16, 64), generator=g).to(device) for _ in range(20)]
    cuda = device.type == "cuda"
    variants = {"chunked loss": {"loss_chunk": 100}}
    if cuda:
        sdpa = pick_sdpa_backend(16, 2, 64, 64, device)
        variants[f"sdpa {sdpa}"] = {"sdpa": sdpa}
        variants["cuda graph"] = {"cuda_graph": True}
    if args.check_compile:
        variants["compiled"] = {"compile": True}
        if cuda:
            variants["compiled + cuda graph + chunked"] = {"compile": True, "cuda_graph": True, "loss_chunk": 100}

    def curve(opts):
        torch.manual_seed(0)
        t = Trainer(GPT(cfg).to(device), lmlab_loss, data[0], 16, opts)
        for b in data:
            t.micro = [(b, b.roll(-1, 1))]
            t.timed(1)
        return torch.stack(t.losses).float().cpu()

    ref = curve({})
    rows = []
    for name, opts in variants.items():
        try:
            d = (curve(opts) - ref).abs()
            rows.append({"variant": name, "max_abs_loss_diff": float(d.max()), "final_loss": float(ref[-1])})
        except Exception as e:  # report and go on with the others
            rows.append({"variant": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        r = rows[-1]
        print(f"  check {name:34s} " + (f"max |loss - plain| over 20 steps {r['max_abs_loss_diff']:.2e} "
                                         f"(plain final loss {r['final_loss']:.4f})" if "error" not in r else r["error"]),
              flush=True)
    return rows


def fmt(v, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if v is None else format(v * scale, spec) + suffix


def print_row(r: dict) -> None:
    cells = [f"{r['config']:>5}", f"{r['mode']:>14}"]
    for k in ("lmlab", "baseline", "hf_llama"):
        cells.append(f"{fmt(r.get(f'{k}_tok_s'), ',.0f'):>11}")
    cells.append(f"{fmt(r.get('lmlab_ms_step'), '.2f'):>8}")
    cells.append(f"{fmt(r.get('baseline_ms_step'), '.2f'):>8}")
    cells.append(f"{fmt(r.get('ratio_vs_hf_llama'), '.2f', suffix='x'):>7}")
    cells.append(f"{fmt(r.get('cpu_time_ratio_vs_hf_llama'), '.2f', suffix='x'):>7}")
    cells.append(f"{fmt(r.get('ratio_vs_baseline'), '.2f', suffix='x'):>7}")
    cells.append(f"{fmt(r.get('lmlab_mfu'), '.1f', 100, '%') if r.get('peak_flops') else 'n/a':>6}")
    cells.append(f"{fmt(r.get('hf_llama_mfu'), '.1f', 100, '%') if r.get('peak_flops') else 'n/a':>6}")
    print(" ".join(cells) + "".join(f"  [{k} {v}]" for k, v in r["failed"].items()), flush=True)


HEADER = (f"{'cfg':>5} {'mode':>14} {'lmlab tok/s':>11} {'base tok/s':>11} {'HF tok/s':>11} {'ms/step':>8} "
          f"{'base ms':>8} {'vs HF':>7} {'(cpu)':>7} {'vs base':>7} {'MFU':>6} {'HF MFU':>6}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=None, help=f"comma list of {','.join(CONFIGS)} (default: by device)")
    p.add_argument("--modes", default="eager", help=f"comma list of {','.join(MODES)}")
    p.add_argument("--compile", action="store_true", help="also the compiled mode (= --modes eager,compiled)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="CPU-sized: the tiny config, 1 thread, few steps")
    p.add_argument("--quick", action="store_true", help="few steps (CPU: about two minutes)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (at least 4 for graph modes)")
    p.add_argument("--batch", type=int, default=None, help="rows per step (default: the config's)")
    p.add_argument("--micro-batch", type=int, default=None, help="rows per micro-batch (gradient accumulation)")
    p.add_argument("--baseline", action="store_true", help="lmlab runs today's plain step (new options off)")
    p.add_argument("--add-baseline", action="store_true", help="also time the plain step and print fast/plain")
    p.add_argument("--no-hf", action="store_true", help="no HF rows")
    p.add_argument("--loss-chunk", type=int, default=None, help="rows per loss chunk (default 8192 on CUDA, 0 on CPU)")
    p.add_argument("--sdpa", default="auto", choices=SDPA_CHOICES, help="attention kernel (auto: timed on CUDA)")
    p.add_argument("--check", action="store_true", help="first compare the fast paths' losses with the plain step")
    p.add_argument("--check-compile", action="store_true", help="with --check, the compiled paths too")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: stable on shared machines)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = get_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",") + (["compiled"] if args.compile and "compiled" not in args.modes else [])
    if bad := [m for m in modes if m not in MODES]:
        p.error(f"unknown modes {bad}: choose from {', '.join(MODES)}")
    if not cuda and any("graph" in m for m in modes):
        log.info("graph modes need CUDA: skipped on %s", device)
        modes = [m for m in modes if "graph" not in m]
    default = ["micro"] if args.tiny else (["124m"] if cuda else ["tiny", "10m"])
    names = args.configs.split(",") if args.configs else default
    args.steps = args.steps or (2 if args.tiny else (10 if args.quick else 30) if cuda else (2 if args.quick else 5))
    args.rounds = args.rounds or (2 if args.quick or args.tiny else 4)
    args.warmup = args.warmup or (6 if cuda else 1)
    card = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = peak_flops(device)
    print(f"device: {card} | torch {torch.__version__} | threads {torch.get_num_threads()} | {args.steps} steps x "
          f"{args.rounds} rounds | {time.strftime('%Y-%m-%d %H:%M:%S %Z')} | peak "
          + (f"{peak / 1e12:.0f} TFLOP/s dense bf16" if peak else "n/a (MFU n/a)"), flush=True)
    result = {"device": card, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    if args.check:
        result["check"] = check(device, args)
    result["rows"] = []
    for name in names:
        cfg = model_config(name)
        print(f"{name}: MFU count (PaLM) {palm_flops(GPT(cfg), cfg.seq_len)[1]}", flush=True)
        print(HEADER, flush=True)
        for mode in modes:
            r = bench(name, mode, device, args)
            print_row(r)
            result["rows"].append(r)
            if args.json:  # after every row: a run cut by its time limit keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
