"""GRPO rollout throughput: the KV-cached engine (`lmlab.rl.sample_ids` → `lmlab.generate`) against the
no-cache reference loop (`lmlab.generate.generate_naive`) on the same prompts and seeds, plus the
rollout-vs-update time split of real GRPO steps.

    python bench/rl_rollout_speed.py            # CPU-sized defaults
    python bench/rl_rollout_speed.py --d 256 --layers 6 --prompts 64 --group 16   # GPU-sized
"""

from __future__ import annotations

import argparse
import time

import torch

from lmlab.generate import generate_naive
from lmlab.model import GPT, GPTConfig
from lmlab.rl import GRPOConfig, GRPOTrainer, sample_ids, summarize_history
from lmlab.methods.posttrain.tasks import DigitSumTask, make_split
from lmlab.tokenizer import CharTokenizer
from lmlab.utils import get_device, tiny_threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--digits", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    dev = get_device(args.device)
    if dev.type == "cpu":
        tiny_threads()
    task = DigitSumTask()
    tok = CharTokenizer(task.alphabet)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=args.layers, n_heads=4, d_model=args.d,
                          seq_len=128)).to(dev)
    probs = make_split(task, args.prompts, args.digits, seed=0)
    prompts = [[tok.bos_id] + tok.encode(p.prompt) for p in probs for _ in range(args.group)]
    seeds = list(range(len(prompts)))
    max_new = task.max_completion_chars(args.digits) + 1

    def timed(fn):
        fn()  # warm-up (decoder buffers, CUDA graphs)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    cached, t_cached = timed(lambda: sample_ids(model, prompts, max_new, stop_id=None, pad_id=tok.pad_id,
                                                seeds=seeds))
    naive, t_naive = timed(lambda: generate_naive(model, prompts, max_new, pad_id=tok.pad_id, seeds=seeds).tokens)
    n_tok = sum(len(c) for c in cached)
    print(f"{len(prompts)} rollouts x {max_new} tokens on {dev}: KV-cached {n_tok / t_cached:,.0f} tok/s, "
          f"no-cache {n_tok / t_naive:,.0f} tok/s -> speed-up x{t_naive / t_cached:.1f} "
          f"(same samples: {cached == naive})")

    cfg = GRPOConfig(steps=args.steps, prompts_per_step=args.prompts, group_size=args.group, max_new_tokens=max_new)
    trainer = GRPOTrainer(model, tok, task, make_split(task, 64, args.digits, seed=1), cfg)
    logs = [trainer.step() for _ in range(args.steps)]
    s = summarize_history(logs)
    print(f"GRPO steps: rollout {s['rollout_s']:.2f}s ({s['rollout_frac']:.0%}), update {s['update_s']:.2f}s, "
          f"rollout {s['rollout_tok_s']:,.0f} tok/s")


if __name__ == "__main__":
    main()
