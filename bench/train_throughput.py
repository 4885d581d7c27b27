"""Training throughput of lmlab's GPT against Hugging Face `LlamaForCausalLM` of the same shape.

Both models get the same width, depth, heads, SwiGLU hidden size, vocabulary, sequence length, tied
embeddings, batch, AdamW and (on CUDA) bf16 autocast, and are timed in the same process in alternating
rounds so that machine load hits both alike. Prints tokens/s of each, the ratio lmlab/HF and, on GPU,
MFU against the card's dense bf16 peak (lmlab.train.PEAK_FLOPS).

    python bench/train_throughput.py --quick                      # CPU: tiny and ~10M (a couple of minutes)
    python bench/train_throughput.py --configs 124m --compile     # GPU: 124M eager and compiled
"""

from __future__ import annotations

import argparse
import time

import torch

CONFIGS = {  # name: (d_model, n_layers, n_heads, vocab, seq_len, batch)
    "tiny": (128, 4, 4, 256, 256, 8),
    "10m": (384, 6, 6, 8192, 256, 8),
    "124m": (768, 12, 12, 50304, 1024, 16),
}


def build(name: str, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.model import GPT, GPTConfig

    d, layers, heads, vocab, seq, _ = CONFIGS[name]
    cfg = GPTConfig(vocab_size=vocab, n_layers=layers, n_heads=heads, d_model=d, seq_len=seq, mlp="swiglu")
    torch.manual_seed(0)
    ours = GPT(cfg).to(device)
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
    theirs = LlamaForCausalLM(hf_cfg).to(device)
    return cfg, ours, theirs


class Trainer:
    """One model's training step (forward with loss, backward, clip, AdamW) on a fixed batch."""

    def __init__(self, model, kind: str, x: torch.Tensor, compile: bool):
        from lmlab.train import make_optimizer

        self.model, self.kind, self.x = model, kind, x
        self.y = x.roll(-1, dims=1)
        self.opt = make_optimizer(model, 3e-4, 0.1)
        self.fwd = torch.compile(model, dynamic=False) if compile else model
        self.device = x.device

    def step(self) -> None:
        from lmlab.utils import autocast_ctx

        with autocast_ctx(self.device):
            if self.kind == "lmlab":
                loss = self.fwd(self.x, self.y)
            else:  # HF shifts labels itself
                loss = self.fwd(input_ids=self.x, labels=self.x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed(self, steps: int) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) for `steps` steps."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        w, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        sync()
        return time.perf_counter() - w, time.process_time() - c


def bench(
    name: str, device: torch.device, steps: int, rounds: int, warmup: int, compile: bool, with_hf: bool = True
) -> dict:
    from lmlab.train import peak_flops

    cfg, ours, theirs = build(name, device)
    *_, seq, batch = CONFIGS[name]
    x = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    trainers = {"lmlab": Trainer(ours, "lmlab", x, compile)}
    if with_hf:
        trainers["hf_llama"] = Trainer(theirs, "hf", x, compile)
    for t in trainers.values():
        t.timed(warmup)  # compile, allocator and autotuning warm-up: not timed
    wall = dict.fromkeys(trainers, 0.0)
    cpu = dict.fromkeys(trainers, 0.0)
    for r in range(rounds):  # alternate (and swap the order) so load drifts hit both
        for k in list(trainers) if r % 2 == 0 else list(trainers)[::-1]:
            w, c = trainers[k].timed(steps)
            wall[k] += w
            cpu[k] += c
    tokens = batch * seq * steps * rounds
    peak = peak_flops(device)
    flops = ours.estimate_flops(seq)
    out = {
        "config": name,
        "compile": compile,
        "params_M": ours.num_params() / 1e6,
        "tokens_per_step": batch * seq,
    }
    for k in trainers:
        out[f"{k}_tok_s"] = tokens / wall[k]
        out[f"{k}_cpu_tok_s"] = tokens / cpu[k]
        if peak:
            out[f"{k}_mfu"] = tokens / wall[k] * flops / peak
    if with_hf:
        out["ratio"] = out["lmlab_tok_s"] / out["hf_llama_tok_s"]
        out["ratio_cpu_time"] = out["lmlab_cpu_tok_s"] / out["hf_llama_cpu_tok_s"]
    del trainers, ours, theirs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def fmt_row(r: dict) -> str:
    def cell(key: str, width: int, spec: str, scale: float = 1.0, suffix: str = "") -> str:
        return f"{format(r[key] * scale, spec) + suffix:>{width}}" if key in r else f"{'-':>{width}}"

    return " ".join(
        [
            f"{r['config']:>6}",
            f"{'compiled' if r['compile'] else 'eager':>8}",
            f"{r['params_M']:7.1f}M",
            cell("lmlab_tok_s", 12, ",.0f"),
            cell("hf_llama_tok_s", 12, ",.0f"),
            cell("ratio", 6, ".2f"),
            cell("ratio_cpu_time", 15, ".2f"),
            cell("lmlab_mfu", 9, ".1f", 100, "%"),
            cell("hf_llama_mfu", 9, ".1f", 100, "%"),
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=None, help=f"comma list of {','.join(CONFIGS)} (default: by device)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="few steps (CPU: about two minutes)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd lmlab (for MFU)")
    p.add_argument("--compile-hf", action="store_true", help="with --compile, compile the HF model too")
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: stable on shared machines)"
    )
    args = p.parse_args()

    from lmlab.utils import get_device

    device = get_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(args.threads)
    names = args.configs.split(",") if args.configs else (["124m"] if cuda else ["tiny", "10m"])
    steps = args.steps or ((10 if args.quick else 30) if cuda else (2 if args.quick else 5))
    rounds = args.rounds or (2 if args.quick else 4)
    warmup = 5 if cuda else 1
    card = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(
        f"device: {card} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
        f"{steps} steps x {rounds} rounds | {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{'config':>6} {'mode':>8} {'params':>8} {'lmlab tok/s':>12} {'HF tok/s':>12} {'ratio':>6} "
        f"{'ratio(cpu-time)':>15} {'lmlab MFU':>9} {'HF MFU':>9}"
    )
    for name in names:
        for comp in [False, True] if args.compile else [False]:
            r = bench(
                name,
                device,
                steps,
                rounds,
                warmup + (3 if comp else 0),
                comp,
                with_hf=not comp or args.compile_hf,
            )
            print(fmt_row(r), flush=True)


if __name__ == "__main__":
    main()
