"""Part A of task_competition, one seed: the multi-task regression toy (spec 02 §8.1).

`sweep` trains a population of `nets` width-N networks per width on the Zipf mixture and returns per-task errors,
unit allocation and the loss at log-spaced steps. `injection` trains them on the common tasks with one rare-task
batch every `period` steps and returns the rare-task signal (1 − normalised error) before and after each injection,
the final signal, and — over the last `cycles` intervals — the interference of the common steps with the rare task:
their first-order effect on the rare error, g_rare·Δθ = −η·g_rare·g_common summed over each interval, next to the
realised change of the rare error over the same steps and the injection's gain. Every number comes back as plain
lists (JSON-able); nothing is decided here.

ReLU networks (`activation="relu"`) are evaluated on fixed balanced batches (`eval_per_task` examples of every
task); linear ones on the exact population loss. Toy networks always train on the CPU with one thread (they are
launch-bound on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from lmlab.methods.competition import interference as itf
from lmlab.methods.competition import tasks as tc

Log = Callable[[str], None]
SEED_STRIDE = 100_003  # init and data-order seeds of one seed's nets: apart from every other seed's


def mixture(cfg, seed: int) -> tc.RegressionMixture:
    """The sweep's mixture: `n_tasks` Zipf tasks with ranks cycled from `cfg.ranks`."""
    return tc.RegressionMixture(n_tasks=cfg.n_tasks, block_dim=cfg.block_dim, zipf=cfg.zipf,
                                ranks=tuple(cfg.ranks), seed=seed)


def injection_mixture(cfg, seed: int) -> tc.RegressionMixture:
    """K−1 Zipf common tasks plus one rare task (frequency 0 in the mixture; it arrives by injection)."""
    k = cfg.n_tasks
    ranks = [cfg.ranks[i % len(cfg.ranks)] for i in range(k - 1)] + [cfg.rare_rank]
    freqs = tuple(tc.zipf_frequencies(k - 1, cfg.zipf)) + (0.0,)
    return tc.RegressionMixture(n_tasks=k, block_dim=cfg.block_dim, ranks=tuple(ranks), freqs=freqs, seed=seed)


def balanced_batch(mix: tc.RegressionMixture, per_task: int, n_models: int, seed: int, tasks=None):
    """A fixed evaluation batch (x (M, B, dim), task (M, B)) with exactly `per_task` examples of each task in
    `tasks` (default: all), x ~ N(0, I) on the task's block and zero elsewhere."""
    tasks = list(range(mix.n_tasks)) if tasks is None else list(tasks)
    g = torch.Generator().manual_seed(seed)
    task = torch.tensor(tasks).repeat_interleave(per_task).expand(n_models, -1).contiguous()
    xb = torch.randn(n_models, task.shape[1], 1, mix.block_dim, generator=g)
    x = torch.zeros(n_models, task.shape[1], mix.n_tasks, mix.block_dim)
    x.scatter_(2, task[:, :, None, None].expand(-1, -1, 1, mix.block_dim), xb)
    return x.view(n_models, task.shape[1], mix.dim), task


def errors(nets: tc.TwoLayerNets, mix: tc.RegressionMixture, batch) -> torch.Tensor:
    """(M, K) normalised errors: exact for linear nets; on `batch` otherwise, as each task's summed squared error
    over its summed squared target on that batch (so a net that outputs nothing scores exactly 1, whatever the
    batch's sampling noise). Tasks absent from the batch get 0."""
    if nets.activation == "linear":
        return tc.normalised_errors(nets, mix)
    x, task = batch
    y = x @ mix.full_map().T.to(x)
    err, norm = (nets(x) - y).pow(2).sum(-1), y.pow(2).sum(-1)  # (M, B)
    k = mix.n_tasks
    num = err.new_zeros(task.shape[0], k).scatter_add(1, task, err)
    den = err.new_zeros(task.shape[0], k).scatter_add(1, task, norm)
    return num / den.clamp_min(1e-30)


def allocation(nets: tc.TwoLayerNets, mix: tc.RegressionMixture, batch) -> np.ndarray:
    """(M, K) fraction of hidden units allocated to each task: per-unit path strength for linear nets (no
    privileged basis), exact unit-ablation effects on `batch` for ReLU nets."""
    blocks = [mix.block(k) for k in range(mix.n_tasks)]
    if nets.activation == "linear":
        s = [itf.path_strength(nets.W[m], nets.A[m], blocks, blocks) for m in range(nets.n_models)]
    else:
        s = list(tc.toy_unit_ablation(nets, mix, batch))
    return np.stack([itf.allocation(x, min_frac=0.01)["fractions"].numpy() for x in s])


def sweep(cfg, seed: int, activation: str, widths, log: Log) -> dict:
    """Per width: a population of `cfg.nets` nets trained `sweep_steps` SGD steps; their per-task errors, unit
    allocation and mixture loss at log-spaced steps."""
    mix = mixture(cfg, seed)
    steps = cfg.sweep_steps
    checkpoints = sorted({int(steps * 2.0 ** -i) for i in range(6)} - {0})
    batch = balanced_batch(mix, cfg.eval_per_task, cfg.nets, seed + 5)
    scale = mix.maps.pow(2).sum((1, 2)).numpy() * mix.frequencies
    out = {"activation": activation, "widths": list(widths), "checkpoints": checkpoints,
           "freqs": mix.frequencies.tolist(), "complexities": mix.complexities.tolist(),
           "errors": [], "alloc": [], "loss_at": [], "optimal": []}
    for n in widths:
        nets = tc.TwoLayerNets(cfg.nets, n, mix.dim, mix.dim, activation, cfg.init_std, seed=SEED_STRIDE * seed + n)
        losses = []

        def cb(step, nets_, _l=losses):
            if step + 1 in checkpoints:
                with torch.no_grad():
                    _l.append((errors(nets_, mix, batch).numpy() * scale).sum(1).tolist())  # raw mixture loss

        tc.train_toy(nets, mix, steps, cfg.toy_lr, cfg.toy_batch, seed=SEED_STRIDE * seed + 7 * n, callback=cb)
        with torch.no_grad():
            err = errors(nets, mix, batch).numpy()
        out["errors"].append(err.tolist())
        out["alloc"].append(allocation(nets, mix, batch).tolist())
        out["loss_at"].append(losses)
        out["optimal"].append(mix.optimal_errors(n).tolist())
        log(f"seed {seed} toy {activation} width {n}: mean errors {np.round(err.mean(0), 2).tolist()}")
    return out


def _flat(nets: tc.TwoLayerNets) -> torch.Tensor:
    return torch.cat([nets.W.detach().flatten(1), nets.A.detach().flatten(1)], 1)


def _rare_error(nets: tc.TwoLayerNets, mix: tc.RegressionMixture, batch) -> torch.Tensor:
    """(M,) normalised error of the rare (last) task, with the graph (for its gradient)."""
    return errors(nets, mix, batch)[:, -1]


def _rare_gradient(nets, mix, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) rare error and (M, P) its gradient per model."""
    e = _rare_error(nets, mix, batch)
    gw, ga = torch.autograd.grad(e.sum(), [nets.W, nets.A])
    return e.detach(), torch.cat([gw.flatten(1), ga.flatten(1)], 1)


def _minibatch_grad_norm(nets, mix, probs, batch_size, draws=8, seed=99) -> np.ndarray:
    """Mean norm of the gradient of one common-task minibatch (the size of the update SGD applies)."""
    g = torch.Generator().manual_seed(seed)
    norms = []
    for _ in range(draws):
        loss = tc.batch_loss(nets, mix, mix.sample(batch_size, nets.n_models, g, probs))
        gw, ga = torch.autograd.grad(loss, [nets.W, nets.A])
        norms.append(torch.cat([gw.flatten(1), ga.flatten(1)], 1).norm(dim=1))
    return torch.stack(norms).mean(0).numpy()


def injection(cfg, seed: int, activation: str, period: int, widths, log: Log) -> dict:
    """Common Zipf batches with one rare-task batch every `period` steps, per width. Recorded: the rare signal
    before and after every injection and at the end; over the last `cfg.cycles` intervals, per interval, the
    injection's gain G (drop of the rare error at the injection), the realised rise R of the rare error over the
    interval's common steps, and its first-order part U = Σ g_rare(θ_t)·(θ_{t+1} − θ_t) over those steps
    (= −η·g_rare·g_common per step); all in normalised-error units."""
    mix = injection_mixture(cfg, seed)
    k, steps = mix.n_tasks, cfg.inj_steps
    sched = tc.InjectionSchedule(1.0 / period)
    inj_steps = sched.steps_with_injection(steps)
    rare = np.eye(k)[k - 1]
    batch = balanced_batch(mix, cfg.eval_per_task, cfg.nets, seed + 5, tasks=[k - 1])
    window = inj_steps[-cfg.cycles:]  # the last `cycles` injections; each interval runs to the next or the end
    ends = [*window[1:], steps]
    common = {t for s, e in zip(window, ends) for t in range(s + 1, e)}
    out = {"activation": activation, "period": period, "widths": list(widths), "inj_steps": inj_steps,
           "cells": []}
    for n in widths:
        nets = tc.TwoLayerNets(cfg.nets, n, mix.dim, mix.dim, activation, cfg.init_std, seed=SEED_STRIDE * seed + n)
        before, after = [], []
        state = {"err": None, "grad": None, "theta": None, "u": None, "us": []}

        def cb(step, nets_, before=before, after=after, st=state):
            if step in common:  # the first-order effect of this common step on the rare error
                st["u"] += (st["grad"] * (_flat(nets_) - st["theta"])).sum(1)
            if sched.count(step + 1) and step + 1 < steps:  # the next step injects
                with torch.no_grad():
                    before.append(_rare_error(nets_, mix, batch).numpy().copy())
            if sched.count(step):
                with torch.no_grad():
                    after.append(_rare_error(nets_, mix, batch).numpy().copy())
                if step in window:
                    if st["u"] is not None:
                        st["us"].append(st["u"].numpy().copy())
                    st["u"] = torch.zeros(nets_.n_models)
            if step + 1 in common:
                _, st["grad"] = _rare_gradient(nets_, mix, batch)
                st["theta"] = _flat(nets_)

        with torch.no_grad():
            if sched.count(0):
                before.append(_rare_error(nets, mix, batch).numpy().copy())
        tc.train_toy(nets, mix, steps, cfg.toy_lr, cfg.toy_batch,
                     probs=lambda s: rare if sched.count(s) else None, seed=SEED_STRIDE * seed + 11 * n, callback=cb)
        state["us"].append(state["u"].numpy().copy())
        with torch.no_grad():
            final = 1 - _rare_error(nets, mix, batch).numpy()
        sig_b, sig_a = 1 - np.stack(before, 1), 1 - np.stack(after, 1)  # (M, injections) signal
        nxt = np.concatenate([sig_b[:, 1:], final[:, None]], 1)  # the signal at the end of each interval
        gain, lost = sig_a - sig_b, sig_a - nxt
        c = len(window)
        cell = {"width": n, "final": final.tolist(), "peak": np.maximum(sig_a.max(1), final).tolist(),
                "before": sig_b.tolist(), "after": sig_a.tolist(),
                "jump": gain.mean(1).tolist(),
                "decay_frac": [float(lost[m].mean() / gain[m].mean()) if gain[m].mean() > 0 else None
                               for m in range(cfg.nets)],
                "G": gain[:, -c:].tolist(), "R": lost[:, -c:].tolist(), "U": np.stack(state["us"], 1).tolist(),
                "g_common": _minibatch_grad_norm(nets, mix, mix.frequencies, cfg.toy_batch).tolist()}
        out["cells"].append(cell)
        log(f"seed {seed} injection {activation} every {period} width {n}: final rare signal "
            f"{np.round(final, 3).tolist()}, first-order undoing per interval {np.mean(cell['U']):.2e}, "
            f"realised {lost[:, -c:].mean():.2e}, gain {gain[:, -c:].mean():.2e}")
    return out
