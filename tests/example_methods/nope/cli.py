"""`lmlab nope-flops`: attention-score FLOPs per token of a NoPE stack."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("nope-flops", help="attention-score FLOPs per token of a NoPE GPT (example method)")
    p.add_argument("--layers", type=int, default=2, help="number of layers (default: 2)")
    p.add_argument("--seq-len", type=int, default=64, help="sequence length (default: 64)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lmlab.model import GPTConfig, stack_attention_flops  # torch: when the command runs, not for --help

    cfg = GPTConfig(vocab_size=16, n_layers=args.layers, n_heads=2, d_model=32, seq_len=args.seq_len,
                    attention="nope")
    print(f"{stack_attention_flops(cfg):.0f}")
    return 0
