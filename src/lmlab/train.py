"""One training loop for every gradient method.

This module holds the shared pieces (optimizer, schedule, one optimisation step) and the loops built
on them. `fit()` is the light loop experiments use for small models; `pretrain()` is the full run
(checkpoints, resume, DDP or FSDP2, logging).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from lmlab import checkpoint as ck
from lmlab.checkpoint import load_snapshot, rng_state, save_snapshot, set_rng_state
from lmlab.config import BF16_NEEDS_CUDA
from lmlab.data import DataSpec
from lmlab.model import GPT
from lmlab.progress import MetricsLog, Progress
from lmlab.runlock import RunLock
from lmlab.speed import GraphedStep, palm_flops, pick_sdpa_backend, sdpa_context
from lmlab.tokenizer import Tokenizer
from lmlab.utils import LmlabError, atomic_write_text, autocast_ctx, get_device, seed_everything

try:  # FSDP2; torch 2.5 has it under the private name
    from torch.distributed.fsdp import FSDPModule, fully_shard
except ImportError:  # pragma: no cover
    from torch.distributed._composable.fsdp import FSDPModule, fully_shard

log = logging.getLogger(__name__)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.95), eps: float = 1e-8,
                   params=None, fused: bool | None = None, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW (fused on CUDA unless `fused` says otherwise) with decay only on matrices (see
    `GPT.optimizer_groups`). `capturable` (CUDA only, for `GraphedStep`): the step count and the learning rate
    live on the GPU, so a CUDA graph can replay the update; `set_lr` fills the lr tensor."""
    if params is None:
        if hasattr(model, "optimizer_groups"):
            params = model.optimizer_groups(weight_decay)
        else:
            params = [p for p in model.parameters() if p.requires_grad]
    first = next(iter(model.parameters()))
    fused = first.is_cuda if fused is None else fused
    if capturable and first.is_cuda:
        return torch.optim.AdamW(params, lr=torch.tensor(float(lr), device=first.device), betas=betas, eps=eps,
                                 weight_decay=weight_decay, fused=fused, capturable=True)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


SCHEDULES = ("cosine", "constant", "wsd")


def wsd_decay_start(max_steps: int, decay_frac: float, warmup: int = 0) -> int:
    """First step of the warmup-stable-decay schedule's linear decay (the last decay_frac of the run)."""
    return max(max_steps - round(decay_frac * max_steps), warmup)


def lr_at(step: int, max_steps: int, lr: float, warmup: int = 0, min_lr_frac: float = 0.1,
          schedule: str = "cosine", decay_frac: float = 0.2) -> float:
    """Linear warmup, then: cosine decay to min_lr_frac·lr at max_steps; constant; or "wsd" (warmup-stable-decay):
    constant until the last decay_frac of the run, then linear decay to min_lr_frac·lr at max_steps."""
    if schedule not in SCHEDULES:
        raise LmlabError(f"unknown learning-rate schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule == "wsd":
        start = wsd_decay_start(max_steps, decay_frac, warmup)
        if step < start:
            return lr
        progress = min(1.0, (step - start) / max(1, max_steps - start))
        return lr * (1 - (1 - min_lr_frac) * progress)
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        if isinstance(g["lr"], torch.Tensor):  # a capturable optimizer: filled in place, no host sync
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def make_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[nn.Module, object], torch.Tensor], *,
              grad_clip: float | None = 1.0, device: torch.device | None = None, amp: bool = True,
              guard: bool = False, compile: bool | str = False, cuda_graph: bool = False,
              sdpa: str = "default") -> Callable[[Sequence, float], torch.Tensor]:
    """One optimisation step as `step(micro_batches, lr) -> loss` (a 0-d tensor: the mean of the micro-batch
    losses; the gradients are averaged). With the defaults it is the plain eager step of `fit`: forward under bf16
    autocast on CUDA, backward, clipping, AdamW.

    compile: `torch.compile` the model (True, or a mode such as "max-autotune-no-cudagraphs"); `loss_fn` gets the
    compiled module. cuda_graph (CUDA only, ignored elsewhere): the whole step is captured as one CUDA graph after
    three eager steps (`lmlab.speed.GraphedStep`; needs `make_optimizer(..., capturable=True)`). sdpa: the
    attention kernel tried first ("default", "flash", "cudnn", "efficient", "math"; `lmlab.speed.sdpa_context`).
    `guard`: see `fit`.
    """
    dev = device or next(model.parameters()).device
    fwd = model
    if compile:
        fwd = torch.compile(model, dynamic=False, **({} if compile is True else {"mode": compile}))
    if cuda_graph and dev.type == "cuda":
        if guard:
            raise ValueError("cuda_graph cannot guard against NaN: the check reads the GPU back before the update")
        if compile == "reduce-overhead":
            raise ValueError("compile='reduce-overhead' makes CUDA graphs of its own: use it or cuda_graph")
        graphed = GraphedStep(fwd, opt, loss_fn, grad_clip, amp=amp, sdpa=sdpa)

        def graph_step(micro: Sequence, lr: float) -> torch.Tensor:
            set_lr(opt, lr)
            return graphed(micro)

        return graph_step

    def step(micro: Sequence, lr: float) -> torch.Tensor:
        set_lr(opt, lr)
        n = len(micro)
        with sdpa_context(sdpa):
            if n == 1:
                with autocast_ctx(dev, amp):
                    loss = loss_fn(fwd, micro[0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
            else:
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for batch in micro:
                    with autocast_ctx(dev, amp):
                        part = loss_fn(fwd, batch)
                    (part / n).backward()
                    total = total + part.detach().float()
                loss = total / n
        if guard:
            clip_and_step(model, opt, grad_clip, loss)
        else:
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        return loss

    return step


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor], batches: Iterable, steps: int,
        lr: float = 3e-3, weight_decay: float = 0.0, warmup: int = 0, grad_clip: float | None = 1.0,
        schedule: str = "cosine", optimizer: torch.optim.Optimizer | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None, device: torch.device | None = None,
        start: int = 0, guard: bool = False, compile: bool | str = False, cuda_graph: bool = False,
        sdpa: str = "default") -> list[float]:
    """Train steps `start`..`steps`-1 on `loss_fn(model, batch)`; returns the loss per step.

    The light loop for experiments on small models (no checkpoints). bf16 autocast on CUDA. The loss is
    not read back every step (that would stall the CPU on the GPU each step): `callback(step, loss)` gets
    it as a 0-d tensor (`float(loss)` waits for the GPU) and the floats are returned at the end.
    `guard` (the commands that save what they train): a NaN/Inf loss or gradient stops training with
    `TrainingDiverged` before the update is applied (`clip_and_step`), at the price of one read-back a step.
    `compile`, `cuda_graph` (CUDA only) and `sdpa`: the fast paths of `make_step`, all off by default; with
    `cuda_graph` and no `optimizer` given, the optimizer is made capturable.
    """
    dev = device or next(model.parameters()).device
    opt = optimizer or make_optimizer(model, lr, weight_decay, capturable=cuda_graph)
    one_step = make_step(model, opt, loss_fn, grad_clip=grad_clip, device=dev, guard=guard, compile=compile,
                         cuda_graph=cuda_graph, sdpa=sdpa)
    model.train()
    losses = []
    it = iter(batches)
    for step in range(start, steps):  # start > 0: a resumed run (its optimizer and batches restored by the caller)
        loss = one_step([next(it)], lr_at(step, steps, lr, warmup, schedule=schedule))
        losses.append(loss.detach())
        if callback is not None:
            callback(step, losses[-1])
    model.eval()
    return torch.stack(losses).float().tolist() if losses else []


# ---------------------------------------------------------------- one optimisation step
def check_finite(opt: torch.optim.Optimizer, norm: torch.Tensor, loss: torch.Tensor | None = None) -> None:
    """Raise `TrainingDiverged` when the gradient norm(s) or the loss are NaN/Inf, dropping the gradients first,
    so the update is never applied and the weights stay those of the last good step."""
    bad_loss = loss is not None and not bool(torch.isfinite(loss.detach()).all())
    if bad_loss or not bool(torch.isfinite(norm).all()):
        opt.zero_grad(set_to_none=True)
        what, value = ("loss", loss.detach()) if bad_loss else ("gradient norm", norm)  # the loss: the cause
        shown = float(value) if value.numel() == 1 else value.flatten().tolist()
        raise TrainingDiverged(f"the {what} is {shown}: the update was not applied and the weights are those of "
                               "the last good step; lower the learning rate or check the loss")


def clip_and_step(model: nn.Module, opt: torch.optim.Optimizer, grad_clip: float | None,
                  loss: torch.Tensor | None = None) -> torch.Tensor:
    """Clip (when `grad_clip`) and apply the update — unless the gradient (or `loss`) is NaN/Inf: then the
    gradients are dropped, the weights stay as they were, and `TrainingDiverged` says so. Returns the norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    check_finite(opt, norm, loss)
    opt.step()
    return norm


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    *,
    grad_clip: float | None = None,
    weights: Sequence[float] | None = None,
    amp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Accumulate gradients over `micro_batches`, clip, and step unless the loss or gradient is NaN/Inf.

    The loss is the weighted mean of the micro-batch losses (equal weights by default: pass each
    micro-batch's share of the counted tokens when they differ). Under DDP only the last micro-batch
    all-reduces gradients, and the finite check is agreed across ranks. Returns (loss, grad norm, applied).
    """
    n = len(micro_batches)
    w = [1.0 / n] * n if weights is None else [float(x) for x in weights]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    dev = params[0].device
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=dev)
    inner = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP module
    ddp = inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None
    for i, batch in enumerate(micro_batches):
        if isinstance(inner, FSDPModule):  # reduce-scatter the gradients once, after the last micro-batch
            inner.set_requires_gradient_sync(i == n - 1)
        with contextlib.nullcontext() if ddp is None or i == n - 1 else ddp.no_sync():
            with autocast_ctx(dev, amp):
                loss = loss_fn(model, batch)
            (loss * w[i]).backward()
        total += loss.detach().float() * w[i]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP: sharded gradients give a DTensor norm (already reduced)
        norm = norm.full_tensor()
    ok = (torch.isfinite(total) & torch.isfinite(norm)).float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    applied = bool(ok.item())
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, norm, applied


# ---------------------------------------------------------------- throughput
# Dense bf16 tensor-core peaks (datasheet, FLOP/s), matched in order against the device name.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("A6000", 155e12),
)


def peak_flops(device: torch.device) -> float | None:
    """The card's dense bf16 peak, or None (CPU, unknown card: no MFU is reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS:
        if key in name:
            return flops
    return None


# ---------------------------------------------------------------- pretraining
class TrainingDiverged(LmlabError):
    """The loss or gradient became NaN/Inf; the update was not applied."""


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return model(x, y)


def _setup_distributed(device_name: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we initialised the process group). torchrun sets WORLD_SIZE."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not (dist.is_available() and dist.is_initialized()):
        return 0, 1, get_device(device_name), False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = get_device(device_name)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev, created


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


class StopRequested(Exception):
    """Raised by `StopOnSigint.stop_here()` at a step boundary after a Ctrl-C / SIGTERM."""


class StopOnSigint:
    """First Ctrl-C (or SIGTERM, which torchrun and schedulers send): finish the step, save, return
    (the loop checks `requested`, or calls `stop_here()` between steps). A second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s: saving a checkpoint after this step (again to abort)", signal.Signals(signum).name)

    def stop_here(self) -> None:
        if self.requested:
            raise StopRequested

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


class FitResume:
    """Exact resume of one `fit` loop whose batches come from a deterministic stream. A snapshot at `path` holds
    the model and optimizer state, the steps done, the losses so far and the global RNGs (dropout); it is written
    atomically every `save_every` steps and when `stop` (a StopOnSigint) asks to stop, which then raises
    StopRequested. `restore` loads it (when `resume` and it exists) and returns the steps done: the caller
    replays its batch stream past them and passes `start=` to `fit`. `finish` removes it."""

    def __init__(self, path: str | Path, run: dict, resume: bool = False, stop: StopOnSigint | None = None,
                 save_every: int = 0):
        self.path, self.run, self.resume, self.stop, self.save_every = Path(path), run, resume, stop, save_every
        self.model = self.opt = None
        self.restored: list[float] = []  # the losses of the steps done before the resume
        self.losses: list = []  # every step's loss so far (0-d tensors: read back only when saved)

    def restore(self, model: nn.Module, opt: torch.optim.Optimizer) -> int:
        self.model, self.opt = model, opt
        if not (self.resume and self.path.exists()):
            return 0
        snap = load_snapshot(self.path, self.run, "written on Ctrl-C or every --save-every steps")
        model.load_state_dict(snap["model"])
        opt.load_state_dict(snap["opt"])
        set_rng_state(snap["rng"])
        self.restored = [float(x) for x in snap["losses"]]
        self.losses = list(self.restored)
        return snap["step"]

    def save(self, steps_done: int) -> None:
        save_snapshot(self.path, {
            "run": self.run, "step": steps_done, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "losses": [float(x) for x in self.losses], "rng": rng_state(),
        })

    def callback(self, inner: Callable[[int, torch.Tensor], None] | None = None):
        """A `fit` callback: runs `inner`, keeps the loss, saves on schedule, stops on request."""

        def cb(step: int, loss: torch.Tensor) -> None:
            if inner is not None:
                inner(step, loss)
            self.losses.append(loss)
            stopping = self.stop is not None and self.stop.requested
            if stopping or (self.save_every and (step + 1) % self.save_every == 0):
                self.save(step + 1)
            if self.stop is not None:
                self.stop.stop_here()

        return cb

    def finish(self, losses: list[float]) -> list[float]:
        """The whole run's losses (the restored ones, then `fit`'s); removes the snapshot."""
        self.path.unlink(missing_ok=True)
        return self.restored + list(losses)


# train keys an exact resume needs unchanged: the data stream, the initialisation, the learning-rate schedule
# and the optimizer (a resumed optimizer keeps its saved weight_decay/betas, so a new value would be ignored)
EXACT_RESUME_KEYS = ("batch_size", "grad_accum", "seq_len", "seed", "data_seed", "lr", "warmup",
                     "min_lr_frac", "schedule", "decay_frac", "weight_decay", "betas", "grad_clip", "parallel")


def _check_resume_config(saved: dict | None, cfg, run: Path, saved_world: int | None = None,
                         world: int = 1, step: int = 0) -> None:
    """Refuse a resume whose config would not continue the saved run exactly. train.max_steps may change
    (to extend or shorten a run) with schedule=constant, and with schedule=wsd while the checkpoint (`step`) is
    before both schedules' decay: the cosine schedule's rate at every step depends on max_steps."""
    if not saved:
        return
    now = cfg.to_dict()
    for section in ("model", "data"):
        if saved.get(section) != now[section]:
            raise LmlabError(
                f"cannot resume {run}: its {section} config differs from the one given "
                f"(saved {saved.get(section)}); resume with the run's config.yaml"
            )
    old_train, new_train = saved.get("train", {}), now["train"]
    for key in EXACT_RESUME_KEYS:
        if key in old_train and old_train[key] != new_train[key]:
            raise LmlabError(
                f"cannot resume {run}: train.{key} was {old_train[key]}, now {new_train[key]}; an exact "
                f"resume needs the same value: pass train.{key}={old_train[key]} (or resume with the run's "
                "config.yaml), or start a new run to change it"
            )
    old_max, new_max = old_train.get("max_steps"), new_train["max_steps"]
    if new_train["schedule"] != "constant" and old_max is not None and old_max != new_max:
        if new_train["schedule"] == "wsd":
            frac, warmup = new_train["decay_frac"], new_train["warmup"]
            start = min(wsd_decay_start(old_max, frac, warmup), wsd_decay_start(new_max, frac, warmup))
            if step <= start:
                return _check_world(run, saved_world, world)
            raise LmlabError(
                f"cannot resume {run}: train.max_steps was {old_max}, now {new_max}, and its checkpoint (step "
                f"{step}) is past step {start}, where one of the two wsd schedules already decays: pass "
                f"train.max_steps={old_max} (a wsd run can change max_steps only from a checkpoint before its decay)"
            )
        raise LmlabError(
            f"cannot resume {run}: train.max_steps was {old_max}, now {new_max}, and the "
            f"{new_train['schedule']} schedule's learning rate at every step depends on max_steps: pass "
            f"train.max_steps={old_max} (only runs with train.schedule=constant, or wsd before its decay, can "
            "be extended)"
        )
    _check_world(run, saved_world, world)


def _check_world(run: Path, saved_world: int | None, world: int) -> None:
    if saved_world is not None and saved_world != world:
        launch = "without torchrun" if saved_world == 1 else f"with torchrun --nproc_per_node {saved_world}"
        raise LmlabError(
            f"cannot resume {run}: it was trained on {saved_world} process(es), now {world}; a step takes "
            "train.batch_size rows per process, so an exact resume needs the same number of processes: "
            f"launch it {launch}"
        )


class _Pretrainer:
    """The state of one pretraining run on one process (see `pretrain`)."""

    def __init__(self, cfg, out: Path, resume: bool, loss_fn, rank: int, world: int, device: torch.device):
        self.cfg, self.t, self.out, self.loss_fn = cfg, cfg.train, out, loss_fn
        t = self.t
        if t.dtype == "bf16" and device.type != "cuda":
            raise LmlabError(BF16_NEEDS_CUDA.format(device=device.type))
        self.rank, self.world, self.device = rank, world, device
        self.main = rank == 0
        if self.main:
            ck.remove_partial(out)
        steps = ck.list_steps(out)
        if steps and not resume:
            raise LmlabError(
                f"{out} already holds checkpoints (steps {steps[0]}..{steps[-1]}): pass --resume to "
                "continue it, or choose another --out"
            )
        start = steps[-1] if resume and steps else None
        if start is not None:
            last = ck.read_meta(ck.resolve(out, start))
            _check_resume_config(last.get("run_config"), cfg, out,
                                 (last.get("extra") or {}).get("world_size"), world, start)
            if start >= t.max_steps:
                how = "" if t.schedule == "constant" else (
                    f" (with train.schedule={t.schedule} the learning rate depends on max_steps, so only a "
                    "train.schedule=constant run, or a wsd run before its decay, can be extended: start a new run "
                    "to train further)")
                raise RunFinished(
                    f"run {out} is already at step {start} >= train.max_steps={t.max_steps}: raise "
                    f"train.max_steps to continue{how}"
                )

        # the tokenizer is built once by rank 0 and saved with the run: resumes and other ranks reuse it
        self.spec = DataSpec(cfg.data)
        tok_path = out / "tokenizer.json"
        if self.main and not (start is not None and tok_path.exists()):
            self.spec.build_tokenizer().save(tok_path)
            atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        _barrier(self.world)
        self.tokenizer = Tokenizer.load(tok_path)
        mcfg = cfg.model_config(self.tokenizer.vocab_size)
        if mcfg.vocab_size < self.tokenizer.vocab_size:
            raise LmlabError(
                f"model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size}: remove model.vocab_size (it defaults to the tokenizer's)"
            )
        self.seq_len = cfg.seq_len
        self.data_seed = t.seed if t.data_seed is None else t.data_seed

        seed_everything(t.seed)
        self.model = GPT(mcfg).to(self.device)
        meta = ck.load_into(self.model, None, out, start) if start is not None else None  # before sharding
        self.fsdp = t.parallel == "fsdp" and self.world > 1
        if t.parallel == "fsdp" and self.world == 1:
            log.warning("train.parallel=fsdp shards across torchrun processes; in one process the model trains "
                        "unsharded")
        if self.fsdp:
            for block in self.model.blocks:
                fully_shard(block)
            fully_shard(self.model)
            self.replica = GPT(mcfg) if self.main else None  # rank 0 saves the gathered weights through it
        self.opt = make_optimizer(self.model, t.lr, t.weight_decay, betas=tuple(t.betas))
        self.loader = self.spec.loader(
            self.tokenizer, self.seq_len, rows=t.batch_size * self.world, seed=self.data_seed
        )
        self.step, self.tokens_seen, self.resumed = 0, 0, start is not None
        if meta is not None:
            state = ck.load_optimizer_state(out, start, self.device)
            if state.get("state"):  # empty in the seed checkpoint: a fresh optimizer is what it holds
                if self.fsdp:
                    full = StateDictOptions(full_state_dict=True)
                    set_optimizer_state_dict(self.model, self.opt, state, options=full)
                else:
                    ck.load_optimizer_into(self.opt, self.model, state, ck.step_dir(out, start) / ck.OPTIM_FILE)
            self.loader.load_state_dict(meta["data_state"])
            if meta.get("rng"):
                ck.set_rng_state(meta["rng"])
            self.step, self.tokens_seen = meta["step"], meta["tokens_seen"]
        else:
            self.save()  # the seed checkpoint (step 0)

        self.amp = t.dtype == "bf16" or (t.dtype == "auto" and self.device.type == "cuda")
        self.train_model: nn.Module = self.model
        if self.world > 1 and not self.fsdp:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if t.compile:
            mode = {} if t.compile_mode == "default" else {"mode": t.compile_mode}
            self.train_model = torch.compile(self.train_model, dynamic=False, **mode)
        cuda = self.device.type == "cuda"
        self.model.loss_chunk = (8192 if cuda else 0) if t.loss_chunk is None else t.loss_chunk
        self.sdpa = t.sdpa_backend
        if self.sdpa == "auto":  # the faster of cuDNN and flash at this run's shape; PyTorch's own order off CUDA
            self.sdpa = pick_sdpa_backend(t.batch_size, mcfg.n_heads, self.seq_len, mcfg.head_dim, self.device)
        self.val_batches = []
        if (self.main or self.fsdp) and t.eval_every:  # FSDP: every rank takes part in the forward
            vl = self.spec.loader(
                self.tokenizer, self.seq_len, rows=t.batch_size, seed=self.data_seed, split="val"
            )
            self.val_batches = [vl.next_batch() for _ in range(t.eval_batches)]
        # rank 0 writes the metrics; lines past the checkpoint we resume from are dropped (they will be recomputed)
        self.metrics = MetricsLog(out / "metrics.jsonl", keep=lambda r: r.get("step", 0) <= self.step,
                                  tensorboard=out / "tb" if t.tensorboard else None,
                                  purge_step=self.step if self.resumed else None) if self.main else None

    # ------------------------------------------------------------ pieces
    def save(self, extra: dict | None = None) -> None:
        model, opt, opt_state = self.model, self.opt, None
        if self.fsdp:  # gather full weights and optimizer state (collectives: every rank calls)
            full = StateDictOptions(full_state_dict=True, cpu_offload=True)
            weights = get_model_state_dict(self.model, options=full)
            # before the first step there is no state, and reading it would initialise one with a zero step
            opt_state = get_optimizer_state_dict(self.model, self.opt, options=full) if self.opt.state else {}
            if self.main:
                self.replica.load_state_dict(weights)
            model, opt = self.replica, None
        if self.main:
            ck.save(
                self.out,
                self.step,
                model,
                opt,
                optimizer_state=opt_state,
                config=self.cfg.to_dict(),
                tokens_seen=self.tokens_seen,
                data_state=self.loader.state_dict(),
                extra={"world_size": self.world, **(extra or {})},  # checked on resume
            )
        _barrier(self.world)

    def micro_batches(self) -> list:
        """This rank's slice of the next global micro-batches (every rank packs the same global rows)."""
        b, lo = self.t.batch_size, self.rank * self.t.batch_size
        out = []
        for _ in range(self.t.grad_accum):
            x, y = self.loader.next_batch()
            x, y = x[lo : lo + b], y[lo : lo + b]
            if self.device.type == "cuda":
                x, y = x.pin_memory(), y.pin_memory()
            out.append((x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)))
        return out

    def evaluate(self) -> float:
        self.model.eval()
        losses = []
        with torch.no_grad():
            for x, y in self.val_batches:
                with autocast_ctx(self.device, self.amp):
                    losses.append(float(self.model(x.to(self.device), y.to(self.device))))
        self.model.train()
        return sum(losses) / len(losses)

    def log(self, rec: dict) -> None:
        if self.metrics is not None:
            self.metrics.log(rec)

    def agree(self, flag: bool) -> bool:
        """True on every rank when it is True on any (Ctrl-C may reach the ranks at different steps)."""
        if self.world == 1:
            return flag
        f = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(f, op=dist.ReduceOp.MAX)
        return bool(f.item())

    def diverged(self, loss, norm) -> TrainingDiverged:
        last = ck.latest_step(self.out)
        self.log({"step": self.step + 1, "event": "diverged"})
        return TrainingDiverged(
            f"loss or gradient became NaN/Inf at step {self.step + 1} (loss {float(loss):.4g}, grad "
            f"norm {float(norm):.4g}); the update was not applied and training stopped; the last good "
            f"checkpoint is {ck.step_dir(self.out, last) if last is not None else 'none'}. Lower train.lr, "
            "raise train.warmup or set train.grad_clip"
        )

    # ------------------------------------------------------------ the loop
    def due(self, every: int, extra=()) -> bool:
        return bool(every and self.step % every == 0) or self.step == self.t.max_steps or self.step in extra

    def report(self, loss, norm, lr: float, meter: "_Throughput", bar: Progress) -> float:
        """Log the step's metrics (loss averaged over ranks) and update the progress line."""
        if self.world > 1:
            dist.all_reduce(loss)
            loss /= self.world
        tok_s = meter.rate(self.tokens_seen)
        mfu = meter.mfu(tok_s)
        rec = {
            "step": self.step,
            "loss": float(loss),
            "lr": lr,
            "grad_norm": float(norm),
            "tokens": self.tokens_seen,
            "tok_per_s": tok_s,
            **({"mfu": mfu} if mfu else {}),
        }
        self.log(rec)
        shown = {"loss": round(rec["loss"], 4), "tok/s": f"{tok_s:,.0f}", **({"MFU": f"{100 * mfu:.1f}%"} if mfu else {})}
        bar.update(0, **shown)
        if self.main and not self.t.progress:  # a line per logged step instead of the bar
            log.info("step %d/%d | %s | lr %.2e", self.step, self.t.max_steps,
                     " | ".join(f"{k} {v}" for k, v in shown.items()), lr)
        return rec["loss"]

    def run(self) -> dict:
        t = self.t
        tokens_per_step = t.grad_accum * t.batch_size * self.world * self.seq_len
        flops, count = palm_flops(self.model, self.seq_len)
        peak = peak_flops(self.device)
        meter = _Throughput(self.tokens_seen, flops, peak, self.world)
        if self.main and peak:
            log.info("MFU against %.0f TFLOP/s dense bf16 per GPU (%s), PaLM count: %s", peak / 1e12,
                     torch.cuda.get_device_name(self.device), count)
        bar = Progress(t.max_steps, f"pretrain {self.out.name}", initial=self.step, enabled=self.main and t.progress)
        last_loss = val_loss = None
        interrupted = False
        self.model.train()
        try:
            with StopOnSigint() as sigint:
                while self.step < t.max_steps and not interrupted:
                    lr = lr_at(self.step, t.max_steps, t.lr, t.warmup, t.min_lr_frac, t.schedule, t.decay_frac)
                    set_lr(self.opt, lr)
                    with sdpa_context(self.sdpa):
                        loss, norm, applied = train_step(
                            self.train_model,
                            self.opt,
                            self.micro_batches(),
                            self.loss_fn,
                            grad_clip=t.grad_clip,
                            amp=self.amp,
                        )
                    if not applied:
                        raise self.diverged(loss, norm)
                    self.step += 1
                    self.tokens_seen += tokens_per_step
                    bar.update(1)
                    interrupted = self.agree(sigint.requested)
                    if self.due(t.log_every) or interrupted:
                        last_loss = self.report(loss, norm, lr, meter, bar)
                    with meter.paused():  # evaluation and saving do not count against tok/s
                        if self.val_batches and self.due(t.eval_every):
                            val_loss = self.evaluate()
                            self.log({"step": self.step, "val_loss": val_loss})
                            if self.main:
                                log.info("step %d: val loss %.4f", self.step, val_loss)
                        if self.due(t.save_every, t.save_steps) or interrupted:
                            self.save({"loss": last_loss, "val_loss": val_loss})
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
        if self.main and interrupted:
            log.warning("interrupted at step %d: checkpoint saved in %s; continue with --resume", self.step, self.out)
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "loss": last_loss,
            "val_loss": val_loss,
            "interrupted": interrupted,
            "run_dir": str(self.out),
        }


class _Throughput:
    """Tokens/s between reports (pauses excluded) and MFU against the card's peak."""

    def __init__(self, tokens: int, flops_per_token: float, peak: float | None, world: int):
        self.t0, self.tokens0 = time.perf_counter(), tokens
        self.flops_per_token, self.peak, self.world = flops_per_token, peak, world

    def rate(self, tokens: int) -> float:
        now = time.perf_counter()
        r = (tokens - self.tokens0) / max(now - self.t0, 1e-9)
        self.t0, self.tokens0 = now, tokens
        return r

    def mfu(self, tok_s: float) -> float | None:
        return tok_s * self.flops_per_token / (self.peak * self.world) if self.peak else None

    @contextlib.contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - start



class RunFinished(LmlabError):
    """`--resume` of a run that already reached train.max_steps: nothing to do (the CLI exits 0 saying so)."""


def pretrain(
    cfg,
    out_dir: str | Path,
    resume: bool = False,
    loss_fn: Callable[[nn.Module, object], torch.Tensor] = lm_loss,
    force_unlock: bool = False,
) -> dict:
    """Train an lmlab GPT from a `lmlab.config.RunConfig`; writes to out_dir: step_N/ checkpoints (step 0 =
    the seed), metrics.jsonl, tb/ (TensorBoard), tokenizer.json and config.yaml.

    Launch under `torchrun --nproc_per_node N` for DDP. `resume=True` continues from the latest checkpoint
    and ends with exactly the weights of an uninterrupted run (bit for bit on CPU); it refuses a config that
    would change the run (model, data, `EXACT_RESUME_KEYS`, the number of processes, and train.max_steps
    unless train.schedule=constant) and a run already at train.max_steps. Ctrl-C saves and
    returns with "interrupted": True. Returns {"step", "tokens_seen", "loss", "val_loss", "interrupted",
    "run_dir"}; raises TrainingDiverged on NaN/Inf. The run folder is locked for this process (`RunLock`): a second
    writer is refused before it touches anything; `force_unlock` takes over a lock from another host.
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    rank, world, device, owns_group = _setup_distributed(cfg.train.device)
    try:
        # rank 0 owns the folder (it alone writes checkpoints and cleans temporary files)
        lock = RunLock(out_dir, "lmlab pretrain", force=force_unlock) if rank == 0 else contextlib.nullcontext()
        with lock:
            return _Pretrainer(cfg, Path(out_dir), resume, loss_fn, rank, world, device).run()
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
