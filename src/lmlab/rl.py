"""GRPO for verifiable tasks, on lmlab GPT or a Hugging Face causal LM.

One step: sample a group of G completions for each of P prompts with the KV-cached engine
(`lmlab.generate`; HF models use their own cached `generate`), score them with the task's strict
verifier or reward (`task.score`; + an optional format reward), turn rewards into group-relative advantages
(`r - mean`, optionally divided by the group std — GRPO — or not — Dr.GRPO / nanochat), and minimise
the token-mean policy-gradient loss

    L = Σ_i Σ_t -min(ρ_it Â_i, clip(ρ_it, 1-ε, 1+ε) Â_i) / Σ_i |o_i|  +  β · token-mean k3-KL(π_θ ‖ π_ref)

with ρ the ratio to the rollout policy (≡ 1 for one on-policy update; the clip matters only with
several updates per batch: `ppo_epochs` > 1 or `minibatches` > 1). Only completion tokens count: prompt
and padding positions are masked out.

Log-probs (loss, ratio, KL) are taken under the sampling distribution: logits divided by the rollout
temperature, exactly as `lmlab.generate` scores the tokens it draws (`Generation.logprobs`,
`generate.sequence_logprobs`). Top-k truncation changes which tokens can be drawn but not these
log-probs, so the ratio and the k3 estimate would refer to a policy that did not produce the samples:
`top_k` is therefore refused together with ratios (ppo_epochs/minibatches > 1) and the KL.

A completion is scored only if it contains no special token other than a final EOS (a `<pad>` or `<bos>`
sampled mid-trace must not vanish in decoding and turn a malformed trace into a verified one).
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from lmlab.checkpoint import phase_range
from lmlab.evaluate import pass_at_k, sample_and_verify
from lmlab.generate import generate
from lmlab.sft import forward_logits
from lmlab.train import clip_and_step, make_optimizer
from lmlab.utils import LmlabError, check_lr, pad_batch


@dataclass
class GRPOConfig:
    steps: int = 50
    prompts_per_step: int = 8
    group_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 32
    scale_advantages: str = "std"  # "std" (GRPO) | "none" (mean-only: Dr.GRPO / nanochat)
    adv_eps: float = 1e-6
    ppo_epochs: int = 1
    minibatches: int = 1
    clip_eps: float = 0.2
    kl_coef: float = 0.0  # > 0 adds β·k3-KL to a frozen copy of the starting model
    log_kl: bool = False  # keep the frozen reference to log the KL even without the penalty
    format_reward: float = 0.0  # reward for a well-formed but wrong trace
    pass_ks: tuple[int, ...] = (1, 4, 16)

    def validate(self) -> None:
        """LmlabError naming the config field and its CLI flag for every unusable setting."""
        if self.scale_advantages not in ("std", "none"):
            raise LmlabError(f"rl.scale_advantages (--scale-advantages) must be 'std' or 'none', "
                             f"got {self.scale_advantages!r}")
        if self.steps < 0:
            raise LmlabError(f"rl.steps (--rl-steps) must be >= 0, got {self.steps}")
        if self.prompts_per_step < 1:
            raise LmlabError(f"rl.prompts_per_step (--prompts-per-step) must be >= 1, got {self.prompts_per_step}")
        if self.group_size < 2:
            raise LmlabError(f"rl.group_size (--group-size) must be >= 2 for group-relative advantages, "
                             f"got {self.group_size}")
        if not self.temperature > 0:
            raise LmlabError(f"rl.temperature (--temperature) must be > 0, got {self.temperature}: greedy rollouts "
                             "give identical samples, every group has zero reward std and RL never updates")
        if self.max_new_tokens < 1:
            raise LmlabError(f"rl.max_new_tokens (--max-new-tokens) must be >= 1, got {self.max_new_tokens}")
        check_lr(self.lr, "rl.lr (--rl-lr)")
        for name in ("kl_coef", "clip_eps", "format_reward"):
            if not math.isfinite(getattr(self, name)):
                raise LmlabError(f"rl.{name} (--{name.replace('_', '-')}) must be finite, got {getattr(self, name)}")
        if self.ppo_epochs < 1:
            raise LmlabError(f"rl.ppo_epochs (--ppo-epochs) must be >= 1, got {self.ppo_epochs}")
        if self.minibatches < 1:
            raise LmlabError(f"rl.minibatches (--minibatches) must be >= 1, got {self.minibatches}")
        if not self.clip_eps > 0:
            raise LmlabError(f"rl.clip_eps (--clip-eps) must be > 0, got {self.clip_eps}")
        if self.kl_coef < 0:
            raise LmlabError(f"rl.kl_coef (--kl-coef) must be >= 0, got {self.kl_coef}")
        if self.top_k is not None:
            if self.top_k < 1:
                raise LmlabError(f"rl.top_k must be >= 1 or None, got {self.top_k}")
            if self.ppo_epochs > 1 or self.minibatches > 1 or self.kl_coef > 0 or self.log_kl:
                raise LmlabError(
                    "rl.top_k cannot be combined with ppo_epochs/minibatches > 1 (--ppo-epochs/--minibatches) or "
                    "the KL (--kl-coef/--log-kl): rollouts come from the top-k truncated distribution, the "
                    "log-probs are the temperature-scaled untruncated ones, so ratios and the k3 KL would refer "
                    "to a policy that did not draw the samples")


# ---------------------------------------------------------------------------------------------- math
def group_advantages(rewards: torch.Tensor, scale: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """rewards (P, G) -> advantages (P, G): r - group mean, divided by (group std + eps) when scale="std"
    (the sample std, as verl's GRPO estimator)."""
    adv = rewards - rewards.mean(1, keepdim=True)
    if scale == "std":
        adv = adv / (rewards.std(1, keepdim=True) + eps)
    return adv


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π‖π_ref) for tokens sampled from π: e^{d} - d - 1 with d = log π_ref - log π."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def token_logprobs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, with_entropy: bool = False,
                   temperature: float = 1.0):
    """log p_T(ids[:, t+1] | ids[:, :t+1]) as (B, T-1) (and the per-position entropy when asked) under the
    sampling distribution at `temperature` (logits / T), i.e. what `Generation.logprobs` reports for the
    sampled tokens and what `lmlab.generate.sequence_logprobs` computes for completions alone. GRPO needs the
    full right-padded (B, T-1) layout of its rollout batch and the entropy, hence this variant."""
    if not temperature > 0:
        raise LmlabError(f"log-probs need a sampling temperature > 0, got {temperature}")
    logits = forward_logits(model, ids, mask).float()[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)
    if not with_entropy:
        return logp
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


# ---------------------------------------------------------------------------------------------- decoding
def special_ids(codec) -> set[int]:
    """Ids of the codec's special tokens (lmlab tokenizers: `specials`; HF: `all_special_ids`)."""
    out = {codec.bos_id, codec.eos_id, codec.pad_id}
    if hasattr(codec, "tok") and hasattr(codec.tok, "all_special_ids"):
        out |= set(codec.tok.all_special_ids)
    elif hasattr(codec, "specials"):
        out |= {codec.token_id(s) for s in codec.specials}
    return {int(i) for i in out if i is not None}


def completion_text(codec, ids, specials: set[int] | None = None) -> str | None:
    """The text of a sampled completion without its final EOS, or None when it contains any other special
    token (a `<pad>`/`<bos>` mid-trace, or an EOS that is not last): such a completion is not a well-formed
    trace, and decoding with skip_special would silently drop the token and could make it verify."""
    ids = [int(i) for i in ids]
    specials = special_ids(codec) if specials is None else specials
    if ids and ids[-1] == codec.eos_id:
        ids = ids[:-1]
    if any(i in specials for i in ids):
        return None
    return codec.decode(ids)


# ---------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_ids(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, stop_id: int | None = None, pad_id: int = 0,
               seeds: list[int] | None = None, generator: torch.Generator | None = None,
               batch_size: int = 512) -> list[list[int]]:
    """Completion ids per prompt (the stop token kept when hit) from the KV-cached engine `lmlab.generate`
    (lmlab GPT or HF model), in chunks of batch_size. `seeds` (one per prompt) make every sample
    independent of the batch it ran in."""
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        g = generate(model, prompts[i:i + batch_size], max_new_tokens, temperature=temperature, top_k=top_k,
                     stop_tokens=None if stop_id is None else {stop_id}, pad_id=pad_id, generator=generator,
                     seeds=None if seeds is None else seeds[i:i + batch_size])
        out += g.tokens
    return out


def sample_completions(model, codec, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                       top_k: int | None = None, seeds: list[int] | None = None, batch_size: int = 512) -> list[str]:
    """Completion texts without the final EOS. A completion with another special token inside comes back
    decoded with its special tokens visible (`completion_text` rejects it), so it never matches a plain answer."""
    ids = sample_ids(model, prompts, max_new_tokens, temperature, top_k, codec.eos_id, codec.pad_id, seeds,
                     batch_size=batch_size)
    specials = special_ids(codec)
    out = []
    for c in ids:
        text = completion_text(codec, c, specials)
        out.append(text if text is not None else codec.decode(c, skip_special=False))
    return out


def sample_pass_at_k(model, codec, task, problems, n: int, ks=(1,), temperature: float = 1.0,
                     top_k: int | None = None, max_new_tokens: int | None = None, seed: int = 0,
                     batch_size: int = 512) -> dict:
    """Sample n completions per problem, verify them strictly and return unbiased pass@k (for `ks` and the
    curve k = 1..n), per-problem correct counts and the well-formed rate (`lmlab.evaluate.sample_and_verify`)."""
    max_new = max_new_tokens or max(task.max_completion_chars(p.difficulty) for p in problems) + 1
    prompts = [[codec.bos_id] + codec.encode(p.prompt) for p in problems]
    texts: dict = {}
    specials = special_ids(codec)

    def verify(i: int, ids: list[int]) -> bool:
        text = completion_text(codec, ids, specials)  # None: a special token inside the trace
        texts.setdefault(i, []).append(text)
        return text is not None and task.verify(problems[i], text)

    res = sample_and_verify(model, prompts, verify, n, max_new, temperature=temperature, top_k=top_k,
                            stop_tokens={codec.eos_id}, pad_id=codec.pad_id, seed=seed, batch_size=batch_size,
                            ks=ks)
    formed = sum(t is not None and task.well_formed(t) for group in texts.values() for t in group)
    return {"n": n, "counts": res["counts"], "pass": res["pass"], "curve": res["curve"],
            "format_rate": formed / (n * len(problems))}


# ---------------------------------------------------------------------------------------------- rollouts
@dataclass
class RolloutBatch:
    ids: torch.Tensor  # (B, T) prompt + completion, right-padded
    mask: torch.Tensor  # (B, T) real tokens
    completion_mask: torch.Tensor  # (B, T-1) float: 1 where position t predicts a completion token
    advantages: torch.Tensor  # (B,)
    rewards: torch.Tensor  # (P, G)
    correct: torch.Tensor  # (P, G) bool
    completion_lens: list[int]
    old_logp: torch.Tensor | None = None  # (B, T-1) under the rollout policy (for ratios)
    ref_logp: torch.Tensor | None = None  # (B, T-1) under the frozen reference (for the KL)
    stats: dict = field(default_factory=dict)


def build_rollout_batch(prompts: list[list[int]], completions: list[list[int]], rewards: torch.Tensor,
                        correct: torch.Tensor, pad_id: int, scale: str = "std", eps: float = 1e-6) -> RolloutBatch:
    """Pack P·G (prompt, completion) pairs (prompt-major: G consecutive samples per prompt)."""
    ids, mask = pad_batch([p + c for p, c in zip(prompts, completions)], pad_id)
    cmask = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        cmask[i, len(p) - 1:len(p) - 1 + len(c)] = 1.0
    adv = group_advantages(rewards, scale, eps).reshape(-1)
    return RolloutBatch(ids, mask, cmask, adv, rewards, correct, [len(c) for c in completions])


def grpo_loss(model: nn.Module, batch: RolloutBatch, cfg: GRPOConfig, rows: slice | torch.Tensor = slice(None)):
    """Token-mean clipped policy-gradient loss (+ β·k3-KL) on `rows` of the batch; returns (loss, stats)."""
    dev = next(model.parameters()).device
    ids, mask = batch.ids[rows].to(dev), batch.mask[rows].to(dev)
    cm, adv = batch.completion_mask[rows].to(dev), batch.advantages[rows].to(dev)[:, None]
    logp, ent = token_logprobs(model, ids, mask, with_entropy=True, temperature=cfg.temperature)
    old = logp.detach() if batch.old_logp is None else batch.old_logp[rows].to(dev)
    ratio = torch.exp(logp - old)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
    loss = masked_mean(-surrogate, cm)
    stats = {"entropy": float(masked_mean(ent.detach(), cm)),
             "clip_frac": float(masked_mean(((ratio - 1).abs() > cfg.clip_eps).float(), cm))}
    if cfg.kl_coef > 0 and batch.ref_logp is None:
        raise LmlabError("rl.kl_coef > 0 needs reference log-probs: build the trainer with a reference model")
    if batch.ref_logp is not None:
        kl = masked_mean(k3_kl(logp, batch.ref_logp[rows].to(dev)), cm)
        if cfg.kl_coef > 0:
            loss = loss + cfg.kl_coef * kl
        stats["kl"] = float(kl.detach())
    return loss, stats


class GRPOTrainer:
    """GRPO on a verifiable task. `step()` = one rollout batch + its update(s); `rollout()` and
    `backward(batch)` are exposed for mixed SFT+RL schemes (parallel averaging, combined, interleaved)."""

    def __init__(self, model: nn.Module, codec, task, problems: list, cfg: GRPOConfig, seed: int = 0,
                 optimizer: torch.optim.Optimizer | None = None, ref_model: nn.Module | None = None):
        cfg.validate()
        if not problems:
            raise LmlabError("RL needs training problems: the training split is empty")
        self.model, self.codec, self.task, self.problems, self.cfg = model, codec, task, list(problems), cfg
        self.opt = optimizer or make_optimizer(model, cfg.lr, cfg.weight_decay, betas=cfg.betas)
        self.ref = None
        if cfg.kl_coef > 0 or cfg.log_kl:
            self.ref = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref.eval().requires_grad_(False)
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.max_new = cfg.max_new_tokens

    def _next_problems(self) -> list:
        out = []
        while len(out) < self.cfg.prompts_per_step:
            if not self.order:
                self.order = list(range(len(self.problems)))
                self.rng.shuffle(self.order)
            out.append(self.problems[self.order.pop()])
        return out

    @torch.no_grad()
    def rollout(self) -> RolloutBatch:
        cfg, codec = self.cfg, self.codec
        probs = self._next_problems()
        g = cfg.group_size
        prompts = [[codec.bos_id] + codec.encode(p.prompt) for p in probs for _ in range(g)]
        t0 = time.perf_counter()
        seeds = [self.rng.randrange(2**62) for _ in prompts]
        comps = sample_ids(self.model, prompts, self.max_new, cfg.temperature, cfg.top_k, codec.eos_id,
                           codec.pad_id, seeds)
        t_roll = time.perf_counter() - t0
        specials = special_ids(codec)
        texts = [completion_text(codec, c, specials) for c in comps]  # None: a special token inside
        scores = [(0.0, False) if t is None else self.task.score(probs[i // g], t) for i, t in enumerate(texts)]
        correct = torch.tensor([ok for _, ok in scores]).view(-1, g)
        formed = torch.tensor([t is not None and self.task.well_formed(t) for t in texts]).view(-1, g)
        rewards = torch.tensor([r for r, _ in scores]).view(-1, g) + cfg.format_reward * (formed & ~correct).float()
        batch = build_rollout_batch(prompts, comps, rewards, correct, codec.pad_id, cfg.scale_advantages, cfg.adv_eps)
        dev = next(self.model.parameters()).device
        if self.ref is not None:
            batch.ref_logp = token_logprobs(self.ref, batch.ids.to(dev), batch.mask.to(dev),
                                            temperature=cfg.temperature).cpu()
        if cfg.ppo_epochs > 1 or cfg.minibatches > 1:  # ratios need the rollout policy's log-probs
            batch.old_logp = token_logprobs(self.model, batch.ids.to(dev), batch.mask.to(dev),
                                            temperature=cfg.temperature).cpu()
        n_tok = sum(batch.completion_lens)
        counts = correct.sum(1).tolist()
        batch.stats = {
            "reward": float(rewards.mean()), "reward_std": float(rewards.std(1, unbiased=False).mean()),
            "frac_zero_std": float((rewards.std(1, unbiased=False) == 0).float().mean()),
            "completion_len": n_tok / len(comps), "format_rate": float(formed.float().mean()),
            "rollout_s": t_roll, "rollout_tok_s": n_tok / max(t_roll, 1e-9),
            **{f"train_pass@{k}": sum(pass_at_k(g, c, k) for c in counts) / len(counts)
               for k in cfg.pass_ks if k <= g},
        }
        return batch

    def backward(self, batch: RolloutBatch, scale: float = 1.0, rows=slice(None)) -> tuple[float, dict]:
        loss, stats = grpo_loss(self.model, batch, self.cfg, rows)
        (loss * scale).backward()
        return float(loss.detach()), stats

    def update(self, batch: RolloutBatch) -> dict:
        """ppo_epochs × minibatches optimizer steps on one rollout batch."""
        t0 = time.perf_counter()
        b = batch.ids.shape[0]
        stats: dict = {}
        for _ in range(self.cfg.ppo_epochs):
            perm = torch.randperm(b, generator=torch.Generator().manual_seed(self.rng.randrange(2**31)))
            for rows in perm.chunk(self.cfg.minibatches):
                self.opt.zero_grad(set_to_none=True)
                loss, stats = self.backward(batch, rows=rows if self.cfg.minibatches > 1 else slice(None))
                clip_and_step(self.model, self.opt, self.cfg.grad_clip)
                stats["loss"] = loss
        stats["update_s"] = time.perf_counter() - t0
        return stats

    def step(self) -> dict:
        self.model.train()
        batch = self.rollout()
        return {**batch.stats, **self.update(batch)}


def train_grpo(model: nn.Module, codec, task, problems: list, cfg: GRPOConfig, seed: int = 0,
               ref_model: nn.Module | None = None, callback=None, resume=None, until=None) -> list[dict]:
    """Run `cfg.steps` GRPO steps; returns per-step logs (callback(step, log) after each).
    `resume`: a `lmlab.checkpoint.Resume` (snapshots between steps, exact continuation).
    `until(logs so far)`, asked after every step: true ends the run early, so `cfg.steps` is a cap (e.g. a stop on a
    flat training reward); a resumed run would not see the logs before its snapshot, so the two do not combine."""
    if until is not None and resume is not None:
        raise LmlabError("train_grpo: an early stop (until) cannot be combined with resume")
    trainer = GRPOTrainer(model, codec, task, problems, cfg, seed, ref_model=ref_model)
    history = []
    for step in phase_range(resume, "rl", cfg.steps, model, {"rl": trainer.opt}, {"rl": trainer}, trainer.ref):
        log = {"step": step, **trainer.step()}
        history.append(log)
        if callback is not None:
            callback(step, log)
        if until is not None and until(history):
            break
    model.eval()
    return history


def summarize_history(history: list[dict]) -> dict:
    """Totals a run reports: rollout tokens/s overall and the rollout-vs-update time split."""
    roll = sum(h.get("rollout_s", 0.0) for h in history)
    upd = sum(h.get("update_s", 0.0) for h in history)
    toks = sum(h.get("rollout_tok_s", 0.0) * h.get("rollout_s", 0.0) for h in history)
    return {"rollout_s": roll, "update_s": upd, "rollout_frac": roll / max(roll + upd, 1e-9),
            "rollout_tok_s": toks / max(roll, 1e-9)}
