"""`lmlab pretrain --config FILE.yaml [--out RUN] [--resume] [key=value ...]`: train a GPT from scratch."""

from __future__ import annotations

import os
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain an lmlab GPT from a YAML config (checkpoints, resume, DDP or FSDP2 under torchrun)",
        description="Pretrain an lmlab GPT. Launch with `torchrun --nproc_per_node N lmlab ...` "
        "for data-parallel training.",
    )
    p.add_argument("--config", required=True, help="YAML run config (e.g. configs/tiny.yaml)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.n_layers=2 train.max_steps=50")
    p.set_defaults(func=run)


def run(args) -> int:
    from lmlab.config import load_config
    from lmlab.train import pretrain

    cfg = load_config(args.config, args.overrides)  # validated before any heavy work
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    result = pretrain(cfg, out, resume=args.resume)
    if result["interrupted"]:
        return 130
    summary = f"done: step {result['step']}, {result['tokens_seen']:,} tokens"
    if result["loss"] is not None:
        summary += f", loss {result['loss']:.4f}"
    if result["val_loss"] is not None:
        summary += f", val loss {result['val_loss']:.4f}"
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary, not one per process
        print(f"{summary}; checkpoints in {out}")
    return 0
