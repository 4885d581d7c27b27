"""A tiny experiment on the "nope" attention: a one-layer NoPE GPT learns to predict a periodic sequence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmlab.experiment import RunContext, experiment, presets
from lmlab.model import GPT, GPTConfig
from lmlab.train import fit

MARGIN = 0.5  # nats below the uniform guess: chosen for this example, not taken from a paper


@dataclass
class Config:
    """One run: a one-layer NoPE GPT trained `steps` steps on periodic sequences over `vocab` symbols."""

    steps: int = 40
    vocab: int = 8
    seq_len: int = 16
    batch: int = 16
    lr: float = 1e-2


PRESETS = presets(Config, tiny={}, small={"steps": 200, "seq_len": 32, "batch": 32},
                  gpu={"steps": 1000, "vocab": 16, "seq_len": 64, "batch": 64, "lr": 3e-3})


@experiment(name="nope_periodic", paper="(test-only example method)",
            claims={"learns_periodic": "a one-layer NoPE GPT predicts a periodic sequence below the uniform loss "
                                       f"by {MARGIN} nats"},
            presets=PRESETS)
def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    model = GPT(GPTConfig(vocab_size=cfg.vocab, n_layers=1, n_heads=2, d_model=32, seq_len=cfg.seq_len,
                          attention="nope")).to(ctx.device)
    g = torch.Generator().manual_seed(ctx.seed)

    def batches():
        while True:
            start = torch.randint(0, cfg.vocab, (cfg.batch, 1), generator=g)
            x = (start + torch.arange(cfg.seq_len + 1)) % cfg.vocab
            yield x[:, :-1].to(ctx.device), x[:, 1:].to(ctx.device)

    losses = fit(model, lambda m, b: m(b[0], targets=b[1]), batches(), cfg.steps, lr=cfg.lr)
    final, uniform = float(losses[-1]), math.log(cfg.vocab)
    ctx.report.metric("final_loss", final)
    ctx.report.decide("learns_periodic", uniform - final >= MARGIN,
                      f"final loss {final:.3f} vs the uniform {uniform:.3f} (margin {MARGIN})")
