"""One training loop for every gradient method.

This module holds the shared pieces (optimizer, schedule, one optimisation step) and the loops built
on them. `fit()` is the light loop experiments use for small models; `pretrain()` is the full run
(checkpoints, resume, DDP, logging).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.95), eps: float = 1e-8,
                   params=None) -> torch.optim.AdamW:
    """AdamW (fused on CUDA) with decay only on matrices (see `GPT.optimizer_groups`)."""
    if params is None:
        if hasattr(model, "optimizer_groups"):
            params = model.optimizer_groups(weight_decay)
        else:
            params = [p for p in model.parameters() if p.requires_grad]
    first = next(iter(model.parameters()))
    fused = first.is_cuda
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


def lr_at(step: int, max_steps: int, lr: float, warmup: int = 0, min_lr_frac: float = 0.1,
          schedule: str = "cosine") -> float:
    """Linear warmup, then cosine (or constant) decay to min_lr_frac·lr at max_steps."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor], batches: Iterable, steps: int,
        lr: float = 3e-3, weight_decay: float = 0.0, warmup: int = 0, grad_clip: float | None = 1.0,
        schedule: str = "cosine", optimizer: torch.optim.Optimizer | None = None,
        callback: Callable[[int, float], None] | None = None, device: torch.device | None = None) -> list[float]:
    """Train for `steps` steps on `loss_fn(model, batch)`; returns the loss per step.

    The light loop for experiments on small models (no checkpoints). bf16 autocast on CUDA.
    """
    from lmlab.utils import autocast_ctx

    dev = device or next(model.parameters()).device
    opt = optimizer or make_optimizer(model, lr, weight_decay)
    model.train()
    losses = []
    it = iter(batches)
    for step in range(steps):
        set_lr(opt, lr_at(step, steps, lr, warmup, schedule=schedule))
        batch = next(it)
        with autocast_ctx(dev):
            loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step, losses[-1])
    model.eval()
    return losses
