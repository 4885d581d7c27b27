"""Post-training pipelines on any checkpoint (lmlab GPT or HF causal LM).

    rl            GRPO on the checkpoint
    sft           SFT on one gold solution per question
    sft_gold      SFT on all gold solutions
    sft_rl        SFT, then GRPO from the SFT model
    parallel_avg  every step, from the same θ an RL AdamW and an SFT AdamW (separate states and LRs)
                  each take a step; θ ← ½(θ_RL + θ_SFT)  (the paper's definition)
    combined      ablation: one optimizer (the RL AdamW and LR) on w_rl·L_RL + w_sft·L_SFT
    interleaved   ablation: alternating blocks of pure-SFT and pure-RL steps (each with its own optimizer)

The mixed schemes run `rl.steps` steps; each RL step pairs one rollout batch with one SFT batch of
`mixed_sft_batch` sequences (default `sft.batch_size`) at `mixed_sft_lr` (default `sft.lr`). They take one RL
update per rollout batch, so `rl.ppo_epochs` / `rl.minibatches` > 1 are refused there.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lmlab.checkpoint import Resume, phase_range
from lmlab.methods.posttrain import MIXED, PIPELINES
from lmlab.rl import GRPOConfig, GRPOTrainer, train_grpo
from lmlab.sft import BatchStream, SFTConfig, sft_backward, sft_examples, train_sft
from lmlab.train import clip_and_step, make_optimizer
from lmlab.utils import LmlabError, check_lr


@dataclass
class PostTrainConfig:
    rl: GRPOConfig = field(default_factory=GRPOConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    gold_limit: int = 16  # solutions per question for SFT-Gold
    mixed_sft_lr: float | None = None  # SFT-side LR in parallel_avg/combined/interleaved (default sft.lr)
    mixed_sft_batch: int | None = None  # SFT sequences per mixed step (default sft.batch_size)
    mixed_sft_data: str = "one"  # SFT data of the mixed schemes: "one" (realistic, as the paper) | "gold"
    combined_weights: tuple[float, float] = (1.0, 1.0)  # (w_rl, w_sft)
    interleave_block: int = 5  # steps per block in `interleaved`

    def validate(self, pipeline: str | None = None) -> None:
        """LmlabError naming the config field and its CLI flag; with `pipeline`, also the settings that
        pipeline cannot honour."""
        if pipeline is not None and pipeline not in PIPELINES:
            raise LmlabError(f"unknown pipeline {pipeline!r}; choose from {', '.join(PIPELINES)}")
        self.rl.validate()
        self.sft.validate()
        if self.gold_limit < 1:
            raise LmlabError(f"gold_limit (--gold-limit) must be >= 1, got {self.gold_limit}")
        if self.mixed_sft_lr is not None:
            check_lr(self.mixed_sft_lr, "mixed_sft_lr (--mixed-sft-lr)")
        if self.mixed_sft_batch is not None and self.mixed_sft_batch < 1:
            raise LmlabError(f"mixed_sft_batch must be >= 1, got {self.mixed_sft_batch}")
        if self.mixed_sft_data not in ("one", "gold"):
            raise LmlabError(f"mixed_sft_data must be 'one' or 'gold', got {self.mixed_sft_data!r}")
        if len(self.combined_weights) != 2 or not all(w >= 0 and math.isfinite(w) for w in self.combined_weights):
            raise LmlabError(f"combined_weights (--combined-weights) must be two weights >= 0, "
                             f"got {self.combined_weights}")
        if self.interleave_block < 1:
            raise LmlabError(f"interleave_block (--interleave-block) must be >= 1, got {self.interleave_block}")
        if pipeline in MIXED and (self.rl.ppo_epochs > 1 or self.rl.minibatches > 1):
            raise LmlabError(f"the {pipeline} pipeline takes exactly one RL update per rollout batch: "
                             f"rl.ppo_epochs (--ppo-epochs) and rl.minibatches (--minibatches) must be 1, got "
                             f"{self.rl.ppo_epochs} and {self.rl.minibatches}")


# ---------------------------------------------------------------------------------------------- the averaged step
def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def parallel_avg_step(model: nn.Module, rl_opt: torch.optim.Optimizer, sft_opt: torch.optim.Optimizer,
                      rl_backward: Callable[[], float], sft_backward_fn: Callable[[], float],
                      rl_clip: float | None = 1.0, sft_clip: float | None = 1.0) -> tuple[float, float]:
    """θ̄ ← θ; RL optimizer steps on ∇L_RL(θ̄) → θ_A; restore θ̄; SFT optimizer steps on ∇L_SFT(θ̄) → θ_B;
    θ ← ½(θ_A + θ_B). Each optimizer only ever sees its own gradients; each side is clipped separately.
    The backward callables accumulate their gradients into .grad and return the loss value."""
    params = _params(model)
    theta = [p.detach().clone() for p in params]
    for p in params:
        p.grad = None
    rl_val = rl_backward()
    clip_and_step(model, rl_opt, rl_clip)
    theta_rl = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, t in zip(params, theta):
            p.copy_(t)
            p.grad = None
    sft_val = sft_backward_fn()
    clip_and_step(model, sft_opt, sft_clip)
    with torch.no_grad():
        for p, a in zip(params, theta_rl):
            p.add_(a).mul_(0.5)
            p.grad = None
    return rl_val, sft_val


# ---------------------------------------------------------------------------------------------- pipelines
def _sft_optimizer(model, lr: float, cfg: SFTConfig):
    return make_optimizer(model, lr, cfg.weight_decay, betas=cfg.betas)


def _mixed(model, codec, task, problems, cfg: PostTrainConfig, pipeline: str, seed: int,
           callback=None, resume: Resume | None = None, until=None) -> list[dict]:
    """parallel_avg / combined / interleaved: cfg.rl.steps steps, each with an RL batch and an SFT batch
    (cfg already validated for `pipeline` by run_pipeline); `until(rl_logs)` true ends them early."""
    sft_data = sft_examples(task, problems, codec, cfg.mixed_sft_data, cfg.gold_limit, seed)
    stream = BatchStream(sft_data, cfg.mixed_sft_batch or cfg.sft.batch_size, seed)
    sft_lr = cfg.mixed_sft_lr if cfg.mixed_sft_lr is not None else cfg.sft.lr
    trainer = GRPOTrainer(model, codec, task, problems, cfg.rl, seed)
    sft_opt = _sft_optimizer(model, sft_lr, cfg.sft)
    pad, mb = codec.pad_id, cfg.sft.micro_batch_size
    history = []
    steps = phase_range(resume, pipeline, cfg.rl.steps, model, {"rl": trainer.opt, "sft": sft_opt},
                         {"rl": trainer, "sft": stream})
    for step in steps:
        model.train()
        log = {"step": step}
        t0 = time.perf_counter()
        if pipeline == "interleaved" and (step // cfg.interleave_block) % 2 == 0:
            sft_opt.zero_grad(set_to_none=True)
            log["sft_loss"] = sft_backward(model, stream.next(), pad, mb)
            clip_and_step(model, sft_opt, cfg.sft.grad_clip)
            log["update_s"] = time.perf_counter() - t0
            history.append(log)
            if callback is not None:
                callback(step, log)
            continue
        batch = trainer.rollout()
        log.update(batch.stats)
        t0 = time.perf_counter()
        rl_stats: dict = {}

        def rl_bw(scale: float = 1.0, batch=batch, rl_stats=rl_stats) -> float:
            loss, st = trainer.backward(batch, scale)
            rl_stats.update(st)
            return loss

        if pipeline == "parallel_avg":
            sft_batch = stream.next()
            log["loss"], log["sft_loss"] = parallel_avg_step(
                model, trainer.opt, sft_opt, rl_bw, lambda b=sft_batch: sft_backward(model, b, pad, mb),
                cfg.rl.grad_clip, cfg.sft.grad_clip)
        elif pipeline == "combined":
            w_rl, w_sft = cfg.combined_weights
            trainer.opt.zero_grad(set_to_none=True)
            log["loss"] = rl_bw(w_rl)
            log["sft_loss"] = sft_backward(model, stream.next(), pad, mb, scale=w_sft)
            clip_and_step(model, trainer.opt, cfg.rl.grad_clip)
        else:  # interleaved, RL block
            trainer.opt.zero_grad(set_to_none=True)
            log["loss"] = rl_bw()
            clip_and_step(model, trainer.opt, cfg.rl.grad_clip)
        log.update(rl_stats)
        log["update_s"] = time.perf_counter() - t0
        history.append(log)
        if callback is not None:
            callback(step, log)
        if until is not None and until([h for h in history if "reward" in h]):
            break
    model.eval()
    return history


def run_pipeline(pipeline: str, model: nn.Module, codec, task, problems: list, cfg: PostTrainConfig,
                 seed: int = 0, callback: Callable[[str, int, dict], None] | None = None,
                 resume: Resume | None = None, until: Callable[[list[dict]], bool] | None = None
                 ) -> dict[str, list[dict]]:
    """Post-train `model` in place; returns {"sft": [...logs], "rl": [...logs]} (phases that ran).

    until(rl_logs) is asked after every RL step (with the RL logs so far): true ends RL before `rl.steps`, which
    is then a cap (e.g. stop on a flat training reward). It cannot be combined with `resume`.

    callback(phase, step, log) is called after every step (e.g. to evaluate pass@k dynamics); there
    `resume.snapshot(step + 1)` captures the run, and a run given `Resume(snapshot)` (with the snapshot's weights
    loaded into `model`) continues exactly where it stopped."""
    cfg.validate(pipeline)  # includes the pipeline name
    if until is not None and resume is not None:
        raise LmlabError("run_pipeline: an early stop (until) cannot be combined with resume")

    def cb(phase):
        return None if callback is None else (lambda step, log: callback(phase, step, log))

    out: dict[str, list[dict]] = {}
    if pipeline in ("sft", "sft_gold", "sft_rl"):
        data = sft_examples(task, problems, codec, "gold" if pipeline == "sft_gold" else "one", cfg.gold_limit, seed)
        out["sft"] = train_sft(model, data, codec.pad_id, cfg.sft, seed, cb("sft"), resume=resume)
    if pipeline in ("rl", "sft_rl"):
        ref = copy.deepcopy(model) if cfg.rl.kl_coef > 0 or cfg.rl.log_kl else None  # KL to the RL start
        out["rl"] = train_grpo(model, codec, task, problems, cfg.rl, seed, ref_model=ref, callback=cb("rl"),
                               resume=resume, until=until)
    if pipeline in MIXED:
        out[pipeline] = _mixed(model, codec, task, problems, cfg, pipeline, seed, cb(pipeline), resume, until)
    return out
