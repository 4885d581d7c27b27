"""Supervised fine-tuning on worked solutions: loss on completion tokens only, exact gradient accumulation.

* `sft_examples(..., mode="one")` — SFT: one randomly chosen gold solution per question (fixed per seed);
* `sft_examples(..., mode="gold")` — SFT-Gold: all (up to `gold_limit`) distinct solutions per question.

The loss is the mean over *all completion tokens of the full batch*. With micro-batches every
micro-batch's token-loss sum is divided by the full batch's token count, so the accumulated gradient
equals the full-batch gradient exactly (dividing each micro-batch by its own count — or by the number
of micro-batches — silently re-weights tokens; a known source of bogus SFT baselines).
Works on lmlab GPT and Hugging Face causal LMs (`forward_logits`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.checkpoint import phase_range
from lmlab.model import IGNORE_INDEX
from lmlab.train import clip_and_step, lr_at, make_optimizer, set_lr
from lmlab.utils import LmlabError, autocast_ctx, check_lr, pad_batch


@dataclass
class SFTExample:
    prompt_ids: list[int]  # BOS + prompt
    completion_ids: list[int]  # solution + EOS


@dataclass
class SFTConfig:
    steps: int = 100
    batch_size: int = 64  # sequences per optimizer step
    micro_batch_size: int | None = None  # None = the whole batch at once
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0
    schedule: str = "constant"  # "constant" | "cosine"
    grad_clip: float | None = 1.0

    def validate(self) -> None:
        """LmlabError naming the config field and its CLI flag for every unusable setting."""
        if self.steps < 0:
            raise LmlabError(f"sft.steps (--sft-steps) must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise LmlabError(f"sft.batch_size (--sft-batch-size) must be >= 1, got {self.batch_size}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise LmlabError(f"sft.micro_batch_size (--sft-micro-batch-size) must be >= 1 or unset, "
                             f"got {self.micro_batch_size}")
        check_lr(self.lr, "sft.lr (--sft-lr)")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise LmlabError(f"sft.{name} must be finite, got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------- tensors
def forward_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V) of an lmlab GPT / `lmlab.hf.HFModel`, or of a raw HF causal LM, for right-padded
    `ids` (padding only follows real tokens, so causal attention never lets a real token see it)."""
    with autocast_ctx(ids.device):
        if hasattr(model, "new_cache"):
            return model(ids)
        return model(input_ids=ids, attention_mask=None if mask is None else mask.long()).logits


def completion_batch(examples: list[SFTExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """inputs (B, T), targets (B, T) with IGNORE_INDEX outside completion tokens, attention mask (B, T)."""
    seqs = [e.prompt_ids + e.completion_ids for e in examples]
    ids, mask = pad_batch(seqs, pad_id)
    targets = torch.full_like(ids, IGNORE_INDEX)
    for i, e in enumerate(examples):
        p, c = len(e.prompt_ids), len(e.completion_ids)
        targets[i, p - 1:p + c - 1] = ids[i, p:p + c]  # position t predicts token t+1
    return ids[:, :-1], targets[:, :-1], mask[:, :-1]


def completion_loss_sum(model: nn.Module, examples: list[SFTExample], pad_id: int) -> tuple[torch.Tensor, int]:
    """Sum of next-token losses over completion tokens, and their count."""
    dev = next(model.parameters()).device
    ids, targets, mask = (t.to(dev) for t in completion_batch(examples, pad_id))
    logits = forward_logits(model, ids, mask).float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


def sft_backward(model: nn.Module, examples: list[SFTExample], pad_id: int, micro_batch_size: int | None = None,
                 scale: float = 1.0) -> float:
    """Accumulate ∇(scale · token-mean completion loss over `examples`) into .grad; returns the loss value."""
    mb = micro_batch_size or len(examples)
    total_tokens = sum(len(e.completion_ids) for e in examples)
    if total_tokens == 0:
        raise LmlabError("SFT batch has no completion tokens: every example needs a non-empty solution")
    value = 0.0
    for i in range(0, len(examples), mb):
        loss_sum, _ = completion_loss_sum(model, examples[i:i + mb], pad_id)
        (loss_sum * (scale / total_tokens)).backward()
        value += float(loss_sum.detach())
    return value / total_tokens


# ---------------------------------------------------------------------------------------------- data
def sft_examples(task, problems, codec, mode: str = "one", gold_limit: int = 16, seed: int = 0) -> list[SFTExample]:
    """SFT data from a reasoning task: mode "one" (one gold solution per question) or "gold" (all)."""
    if mode not in ("one", "gold"):
        raise LmlabError(f"unknown SFT mode {mode!r}: use 'one' (SFT) or 'gold' (SFT-Gold)")
    rng = random.Random(seed)
    out = []
    for p in problems:
        prompt = [codec.bos_id] + codec.encode(p.prompt)
        sols = task.solutions(p, 1 if mode == "one" else gold_limit, rng)
        for s in sols:
            out.append(SFTExample(prompt, codec.encode(s) + [codec.eos_id]))
    return out


class BatchStream:
    """Endless shuffled mini-batches (epochs without replacement)."""

    def __init__(self, items: list, batch_size: int, seed: int = 0):
        if not items:
            raise LmlabError("no training examples: the training split is empty")
        self.items, self.batch_size = list(items), batch_size
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next(self) -> list:
        out = []
        while len(out) < self.batch_size:
            if not self.order:
                self.order = list(range(len(self.items)))
                self.rng.shuffle(self.order)
            out.append(self.items[self.order.pop()])
        return out


# ---------------------------------------------------------------------------------------------- training
def make_sft_optimizer(model: nn.Module, cfg: SFTConfig) -> torch.optim.Optimizer:
    return make_optimizer(model, cfg.lr, cfg.weight_decay, betas=cfg.betas)


def train_sft(model: nn.Module, examples: list[SFTExample], pad_id: int, cfg: SFTConfig, seed: int = 0,
              callback: Callable[[int, dict], None] | None = None, resume=None) -> list[dict]:
    """SFT with AdamW on the shared schedule (`lmlab.train.lr_at`); returns per-step logs.
    `resume`: a `lmlab.checkpoint.Resume` (snapshots between steps, exact continuation)."""
    cfg.validate()
    opt = make_sft_optimizer(model, cfg)
    stream = BatchStream(examples, cfg.batch_size, seed)
    model.train()
    history = []
    for step in phase_range(resume, "sft", cfg.steps, model, {"sft": opt}, {"sft": stream}):
        t0 = time.perf_counter()
        set_lr(opt, lr_at(step, cfg.steps, cfg.lr, cfg.warmup, schedule=cfg.schedule))
        opt.zero_grad(set_to_none=True)
        loss = sft_backward(model, stream.next(), pad_id, cfg.micro_batch_size)
        clip_and_step(model, opt, cfg.grad_clip)
        history.append({"step": step, "sft_loss": loss, "update_s": time.perf_counter() - t0})
        if callback is not None:
            callback(step, history[-1])
    model.eval()
    return history
