"""Task competition (spec 02): why larger models learn rare and complex tasks.

Part A (every preset): the multi-task regression toy — K tasks on orthogonal blocks, Zipf frequencies,
rank complexity — over a width sweep (claims 1, 2), a rare-task injection protocol (claims 3–5) and
an L(N, D) fit. Toy networks always train on the CPU (they are launch-bound on a GPU).
Part B (small, gpu): a ladder of lmlab GPTs (relu² MLPs: a privileged neuron basis) on a Markov
background stream with comparison and modular-addition instances injected at controlled frequencies
(claim 6), with injection signals, gradient interference and per-layer linear probes.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import pickle
import signal
import time
import traceback
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.experiment import RunContext, experiment, presets
from lmlab.methods.competition import interference as itf
from lmlab.methods.competition import tasks as tc
from lmlab.methods.competition.scaling import fit_scaling_law, unreachable_band
from lmlab.model import GPT, GPTConfig
from lmlab.train import lr_at, make_optimizer, set_lr
from lmlab.utils import autocast_ctx


@dataclass
class Config:
    """One run. Part A (every preset): the multi-task regression toy — `n_tasks` tasks on orthogonal blocks of
    `block_dim`, Zipf(`zipf`) frequencies, `ranks` complexities — trained `seeds` nets per width over `widths`
    (linear; ReLU over `relu_widths` when `relu`), then rare-task injection every `inj_periods` steps over
    `inj_widths`. Part B (when `lm`): a ladder of GPTs `lm_sizes` ([layers, d_model]) on a Markov background with
    comparison and modular-addition instances injected at `lm_freqs` per batch. The defaults are the tiny
    preset: the toy only."""

    # part A: the toy regression
    n_tasks: int = 12
    block_dim: int = 8
    zipf: float = 1.2
    ranks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    toy_lr: float = 0.2
    toy_batch: int = 64
    init_std: float = 0.01
    seeds: int = 3
    widths: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128])
    sweep_steps: int = 2000
    relu: bool = False
    relu_widths: list[int] = field(default_factory=list)
    inj_periods: list[int] = field(default_factory=lambda: [100, 20])
    inj_widths: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    inj_steps: int = 2999
    rare_rank: int = 2
    # the toy claims' thresholds (normalised error; rare-task signal 1 − error)
    learned_err: float = 0.1
    retained: float = 0.8
    lost: float = 0.1
    # part B: the LM ladder (off: no sizes, no frequencies)
    lm: bool = False
    lm_sizes: list[list[int]] = field(default_factory=list)  # [n_layers, d_model] per model
    lm_freqs: list[int | float] = field(default_factory=list)  # injected instances of each task per batch
    lm_probe_freqs: list[int | float] = field(default_factory=list)
    lm_steps: int = 0
    lm_batch: int = 16
    lm_seq: int = 32
    lm_lr: float = 3e-3
    lm_vocab: int = 64
    lm_order: int = 2
    lm_branching: int = 3
    cmp_items: int = 12
    mod_p: int = 11
    heldout_frac: float = 0.2
    lm_learned_acc: float = 0.8
    lm_eval_every: int = 50
    toy_in_process: bool | None = None  # run the toy in a forked process beside the LM ladder (None: when lm is on)


PRESETS = presets(
    Config,
    tiny={},
    small={"relu": True, "relu_widths": [8, 16, 32, 64, 128], "inj_widths": [8, 16, 32, 64, 128],
           "lm": True, "lm_sizes": [[1, 32], [2, 64], [2, 128]], "lm_freqs": [4, 1, 0.25],
           "lm_probe_freqs": [4, 1, 0.25], "lm_steps": 1500},
    # The toy part runs on the CPU in every preset, in its own process beside the LM cells. Sized to finish in
    # ~5 min on one H100/H200: the toy is the small preset's, and the LM ladder starts at 10/batch (a higher
    # frequency did not separate the sizes); see docs/results/run_history_from_code.md.
    gpu={"relu": True, "relu_widths": [8, 16, 32, 64, 128], "inj_widths": [8, 16, 32, 64, 128],
         "lm": True, "lm_sizes": [[2, 64], [4, 128], [6, 256], [8, 512]], "lm_freqs": [10, 1, 0.1],
         "lm_probe_freqs": [10, 1], "lm_steps": 1000, "lm_batch": 64, "lm_seq": 128, "lm_vocab": 128,
         "cmp_items": 16, "mod_p": 23, "lm_eval_every": 100},
)


CLAIMS = {
    "c1_tasks_learned_grow": "the number of tasks learned grows with width, and the unlearned ones are the "
                             "rarest/most complex",
    "c2_allocation": "small models allocate most units to frequent/simple tasks (the allocation share of the "
                     "top tasks falls with width)",
    "c3_retention_threshold": "under injection a rare task is retained only above a width threshold, while smaller "
                              "models show rise-and-decay",
    "c4_common_gradient": "the common-task gradient norm at the end of training is several times smaller in large "
                          "models (reduced interference)",
    "c5_frequency_substitutes": "raising the rare task's frequency lets a mid-size model learn it (data as a "
                                "substitute for scale)",
    "c6_lm_rare_tasks": "(LM) larger LMs learn the injected tasks at lower frequencies and show less gradient "
                        "interference between background and injected task",
}


# ================================================================ part A: toy regression
def _mixture(cfg: Config, seed) -> tc.RegressionMixture:
    return tc.RegressionMixture(n_tasks=cfg.n_tasks, block_dim=cfg.block_dim, zipf=cfg.zipf,
                                ranks=tuple(cfg.ranks), seed=seed)


def _injection_mixture(cfg: Config, seed) -> tc.RegressionMixture:
    """K−1 Zipf common tasks plus one rare task (frequency 0 in the mixture; it arrives by injection)."""
    k = cfg.n_tasks
    ranks = [cfg.ranks[i % len(cfg.ranks)] for i in range(k - 1)] + [cfg.rare_rank]
    freqs = tuple(tc.zipf_frequencies(k - 1, cfg.zipf)) + (0.0,)
    return tc.RegressionMixture(n_tasks=k, block_dim=cfg.block_dim, ranks=tuple(ranks), freqs=freqs, seed=seed)


def _eval_errors(nets, mix, n_eval=4096, seed=123):
    batch = None if nets.activation == "linear" else mix.sample(n_eval, nets.n_models, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return tc.normalised_errors(nets, mix, batch).numpy()


def toy_sweep(cfg: Config, seed, activation, widths, log) -> dict:
    """Train `seeds` nets per width; errors per task, allocation, and the loss at log-spaced steps."""
    mix = _mixture(cfg, seed)
    steps = cfg.sweep_steps
    checkpoints = sorted({int(steps * 2.0 ** -i) for i in range(6)} - {0})
    out = {"errors": {}, "alloc": {}, "loss_at": {}, "checkpoints": checkpoints}
    for n in widths:
        nets = tc.TwoLayerNets(cfg.seeds, n, mix.dim, mix.dim, activation, cfg.init_std, seed=seed + n)
        losses = {}

        def cb(step, nets_, _l=losses):
            if step + 1 in checkpoints:
                e = _eval_errors(nets_, mix, 1024)
                _l[step + 1] = (e * mix.maps.pow(2).sum((1, 2)).numpy() * mix.frequencies).sum(1)  # raw mixture loss
        tc.train_toy(nets, mix, steps, cfg.toy_lr, cfg.toy_batch, seed=seed + 7 * n, callback=cb)
        out["errors"][n] = _eval_errors(nets, mix)  # (seeds, K)
        out["loss_at"][n] = losses
        if activation == "linear":
            s = [itf.path_strength(nets.W[m], nets.A[m], [mix.block(k) for k in range(mix.n_tasks)],
                                   [mix.block(k) for k in range(mix.n_tasks)]) for m in range(nets.n_models)]
        else:
            eff = tc.toy_unit_ablation(nets, mix, mix.sample(4096, nets.n_models, torch.Generator().manual_seed(5)))
            s = list(eff)
        out["alloc"][n] = np.stack([itf.allocation(x, min_frac=0.01)["fractions"].numpy() for x in s])
        log(f"toy {activation} width {n}: mean errors {[round(float(e), 2) for e in out['errors'][n].mean(0)]}")
    out["mix"] = mix
    return out


def _minibatch_grad_norm(nets, mix, probs, batch_size, draws=8, seed=99) -> np.ndarray:
    """Mean norm of the gradient of one common-task minibatch (the size of the update SGD applies)."""
    g = torch.Generator().manual_seed(seed)
    norms = []
    for _ in range(draws):
        nets.zero_grad(set_to_none=True)
        tc.batch_loss(nets, mix, mix.sample(batch_size, nets.n_models, g, probs)).backward()
        norms.append(torch.cat([nets.W.grad.flatten(1), nets.A.grad.flatten(1)], 1).norm(dim=1))
    nets.zero_grad(set_to_none=True)
    return torch.stack(norms).mean(0).numpy()


def _toy_interference(nets, mix, common_p) -> list[dict]:
    """Per model: interference of the expected common gradient with the rare task (last task)."""
    k = mix.n_tasks
    batch = None if nets.activation == "linear" else mix.sample(4096, nets.n_models, torch.Generator().manual_seed(3))
    G = tc.toy_task_gradients(nets, mix, batch)
    names = [str(i) for i in range(k)]
    return [itf.interference({names[i]: G[m, i] for i in range(k)}, {names[i]: common_p[i] for i in range(k - 1)},
                             names[:-1], names[-1]) for m in range(nets.n_models)]


def toy_injection(cfg: Config, seed, period, widths, log) -> dict:
    """Common Zipf batches with one rare-task batch every `period` steps; the rare signal 1 − error is
    recorded after every update, gradient interference every `period` steps."""
    mix = _injection_mixture(cfg, seed)
    k, steps = mix.n_tasks, cfg.inj_steps
    sched = tc.InjectionSchedule(1.0 / period)
    common_p = mix.frequencies.copy()
    rare = np.eye(k)[k - 1]
    grad_every = period * max(1, steps // 30 // period)  # measured mid-interval, away from injections
    out = {}
    for n in widths:
        nets = tc.TwoLayerNets(cfg.seeds, n, mix.dim, mix.dim, "linear", cfg.init_std, seed=seed + n)
        signal = [1 - _eval_errors(nets, mix)[:, -1]]
        gsteps, gnorm, gcos = [], [], []

        def cb(step, nets_, signal=signal, gsteps=gsteps, gnorm=gnorm, gcos=gcos):
            signal.append(1 - _eval_errors(nets_, mix)[:, -1])
            if (step + 1 + grad_every // 2) % grad_every == 0 and not sched.count(step):
                gsteps.append(step + 1)
                gnorm.append(_minibatch_grad_norm(nets_, mix, common_p, cfg.toy_batch, draws=2, seed=step))
                gcos.append([d["cos_common_rare"] for d in _toy_interference(nets_, mix, common_p)])
        tc.train_toy(nets, mix, steps, cfg.toy_lr, cfg.toy_batch,
                     probs=lambda s: rare if sched.count(s) else None, seed=seed + 11 * n, callback=cb)
        sig = np.stack(signal, 1)  # (seeds, steps+1)
        inj = [itf.injection_signal(sig[m], sched.steps_with_injection(steps)) for m in range(nets.n_models)]
        end = _toy_interference(nets, mix, common_p)
        out[n] = {"signal": sig, "final": sig[:, -1], "peak": sig.max(1),
                  "decay_frac": np.array([d["decay_frac"] for d in inj]),
                  "jump": np.array([d["mean_jump"] for d in inj]),
                  "g_batch": _minibatch_grad_norm(nets, mix, common_p, cfg.toy_batch),
                  "g_expected": np.array([d["common_norm"] for d in end]),
                  "cos_end": np.array([d["cos_common_rare"] for d in end]),
                  "grad_steps": gsteps, "grad_norm": np.array(gnorm), "grad_cos": np.array(gcos)}
        log(f"injection period {period} width {n}: final rare signal {np.round(out[n]['final'], 3).tolist()}, "
            f"common minibatch |g| {out[n]['g_batch'].mean():.2e}")
    return out


# ---------------------------------------------------------------- toy claims
def _dominance_violations(learned: np.ndarray, p: np.ndarray, c: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (u, l): unlearned u at least as frequent and at most as complex as learned l (one strictly)."""
    bad = []
    for u in np.nonzero(~learned)[0]:
        for l_ in np.nonzero(learned)[0]:
            if p[u] >= p[l_] and c[u] <= c[l_] and (p[u] > p[l_] or c[u] < c[l_]):
                bad.append((int(u), int(l_)))
    return bad


def decide_c1(rep, sweep, cfg: Config):
    mix, widths, thr = sweep["mix"], sorted(sweep["errors"]), cfg.learned_err
    p, c = mix.frequencies, mix.complexities
    per_seed_ok, rows = [], []
    for m in range(cfg.seeds):
        counts = [int((sweep["errors"][n][m] < thr).sum()) for n in widths]
        viol = sum(len(_dominance_violations(sweep["errors"][n][m] < thr, p, c)) for n in widths)
        per_seed_ok.append(all(b >= a for a, b in pairwise(counts)) and counts[-1] > counts[0] and viol == 0)
    for n in widths:
        e = sweep["errors"][n].mean(0)
        learned = e < thr
        rows.append([n, int(learned.sum()), ", ".join(str(k) for k in np.nonzero(~learned)[0]) or "-",
                     float(np.abs(e - mix.optimal_errors(n)).max())])
    rep.table(rows, ["width", f"tasks learned (err<{thr})", "unlearned tasks (0 = most frequent)",
                     "max |err − Eckart–Young|"], title="Claim 1: tasks learned per width (linear toy, seed mean)")
    counts = [r[1] for r in rows]
    held = all(per_seed_ok)
    rep.decide("c1_tasks_learned_grow", held,
               f"tasks learned per width {dict(zip(widths, counts))} (err < {thr}, seed mean); criterion per seed: "
               f"count non-decreasing in width, larger at the widest than the narrowest, and no unlearned task "
               f"dominates a learned one (as frequent and as simple); {sum(per_seed_ok)}/{len(per_seed_ok)} seeds "
               f"pass. Learned errors match the Eckart–Young rank-N prediction within "
               f"{max(r[3] for r in rows):.2f}.")
    return counts


def decide_c2(rep, sweep, cfg: Config, top=3):
    widths = sorted(sweep["alloc"])
    share = {n: sweep["alloc"][n][:, :top].sum(1) for n in widths}  # fraction of all units
    mean = [float(share[n].mean()) for n in widths]
    mono = all(b <= a + 0.02 for a, b in pairwise(mean))
    drop = mean[0] - mean[-1]
    seeds_ok = sum(share[widths[0]][m] - share[widths[-1]][m] >= 0.2 for m in range(cfg.seeds))
    held = mono and drop >= 0.2 and seeds_ok == cfg.seeds
    rep.decide("c2_allocation", held,
               f"share of units allocated to the top-{top} frequent tasks (path strength, seed mean): "
               + ", ".join(f"N={n}: {s:.2f}" for n, s in zip(widths, mean))
               + f"; criterion: non-increasing (tolerance 0.02) and ≥ 0.20 lower at the widest width in every seed "
                 f"(drop {drop:.2f}; {seeds_ok}/{cfg.seeds} seeds).")
    return mean


def _split_threshold(final: dict, lost: float, kept: float):
    """The smallest width from which every model keeps the task (> kept) while all narrower lose it (< lost)."""
    widths = sorted(final)
    for i in range(1, len(widths)):
        if all(final[w] < lost for w in widths[:i]) and all(final[w] > kept for w in widths[i:]):
            return widths[i]
    return None


MIN_FIT_R2 = 0.9  # below this the L(N, D) power law does not describe the sweep
VISIBLE_PEAK = 0.05  # a rise of the rare-task signal that a plot shows (5% of the task)


def _rise_and_decay(r, retained: float) -> np.ndarray:
    """Per seed: the signal rose visibly (peak ≥ VISIBLE_PEAK), each injection's gain was mostly lost before
    the next one (decay fraction ≥ 0.5), and the task was not retained at the end."""
    return (r["peak"] >= VISIBLE_PEAK) & (np.nan_to_num(r["decay_frac"]) >= 0.5) & (r["final"] < retained)


def decide_c3(rep, inj, cfg: Config):
    """Threshold at the slowest schedule; rise-and-decay must be visible in a narrow model (majority of seeds) at
    some schedule where it loses the task, and every width from the threshold on must accumulate."""
    slow = max(inj)
    res = inj[slow]
    final = {n: float(r["final"].mean()) for n, r in res.items()}
    thr = _split_threshold(final, cfg.lost, cfg.retained)
    if thr is None:
        rep.decide("c3_retention_threshold", False,
                   f"injection every {slow} steps: final rare signal (1 − error, seed mean) "
                   + ", ".join(f"N={n}: {v:.2f}" for n, v in sorted(final.items()))
                   + f" — no width splits lost (< {cfg.lost}) from retained (> {cfg.retained}).")
        return None
    rd = {(p, n): _rise_and_decay(r, cfg.retained) for p in inj for n, r in inj[p].items() if n < thr}
    shown = sorted(((p, n) for (p, n), ok in rd.items() if ok.sum() * 2 > len(ok)), key=lambda k: (-k[0], k[1]))
    accum = {(p, n): float(np.nanmean(r["decay_frac"])) for p in inj for n, r in inj[p].items() if n >= thr}
    accumulates = all(v < 0.5 for v in accum.values())
    jumps = {n: float(r["jump"].mean()) for n, r in res.items()}
    held = bool(shown) and accumulates
    rep.decide("c3_retention_threshold", held,
               f"injection every {slow} steps: final rare signal (1 − error, seed mean) "
               + ", ".join(f"N={n}: {v:.2f}" for n, v in sorted(final.items()))
               + f" → retained only from N={thr} on (criterion: < {cfg.lost} below, > {cfg.retained} from it on). "
                 f"Rise-and-decay (peak ≥ {VISIBLE_PEAK}, ≥ half of each injection's gain lost before the next, not "
                 f"retained) in a majority of seeds of a width below N={thr}: "
               + (", ".join(f"N={n} every {p} steps ({int(rd[(p, n)].sum())}/{len(rd[(p, n)])} seeds)" for p, n in shown)
                  or "none")
               + f". At every {slow} steps the narrow widths barely respond to an injection (mean gain per injection "
               + ", ".join(f"N={n}: {v:.4f}" for n, v in sorted(jumps.items()) if n < thr)
               + f", vs N={thr}: {jumps[thr]:.4f}), so there they never learn the task rather than learn and forget it. "
                 f"Accumulation from N={thr} on (fraction of each gain lost < 0.5 at every schedule): "
               + ("yes" if accumulates else "no: " + ", ".join(f"N={n} every {p}: {v:.2f}" for (p, n), v in
                                                              sorted(accum.items()) if v >= 0.5)) + ".")
    return thr


def decide_c4(rep, inj, thr, cfg: Config):
    """Every width below the retention threshold must have a ≥ 5× larger common-task gradient than every width
    from it on (a mean over widths hides a narrow width that sits at a small-gradient saddle)."""
    slow = max(inj)
    res = inj[slow]
    g = {n: float(r["g_batch"].mean()) for n, r in res.items()}
    ge = {n: float(r["g_expected"].mean()) for n, r in res.items()}
    if thr is None:
        rep.decide("c4_common_gradient", None, "undecided: no retention threshold was found (claim 3), so there "
                   "is no small/large split; common minibatch |g| " + ", ".join(f"N={n}: {v:.1e}" for n, v in g.items()))
        return
    small = {n: v for n, v in g.items() if n < thr}
    large = {n: v for n, v in g.items() if n >= thr}
    worst = min(small.values()) / max(max(large.values()), 1e-30)
    mean_ratio = np.mean(list(small.values())) / max(np.mean(list(large.values())), 1e-30)
    rep.decide("c4_common_gradient", bool(worst >= 5),
               f"norm of a common-task minibatch gradient at the end (seed mean, injection every {slow} steps): "
               + ", ".join(f"N={n}: {v:.1e}" for n, v in sorted(g.items()))
               + f"; smallest below the threshold N={thr} ÷ largest from it on = {worst:.1f}× (criterion ≥ 5×: every "
                 f"narrow width several times above every wide one; ratio of the means {mean_ratio:.1f}×). Expected "
                 f"(population) common gradient: " + ", ".join(f"N={n}: {v:.1e}" for n, v in sorted(ge.items()))
               + ("" if worst >= 5 else f". N={min(small, key=small.get)} loses the rare task yet has a smaller "
                  "common gradient than a width that keeps it, so here a small common gradient is not specific to "
                  "wide models."))


def decide_c5(rep, inj, cfg: Config):
    slow, fast = max(inj), min(inj)
    flips = [n for n in inj[slow] if inj[slow][n]["final"].mean() < cfg.lost
             and inj[fast][n]["final"].mean() > cfg.retained]
    worse = [n for n in inj[slow] if inj[slow][n]["final"].mean() > cfg.retained
             and inj[fast][n]["final"].mean() < cfg.retained]
    rep.decide("c5_frequency_substitutes", bool(flips) and not worse,
               f"final rare signal every {slow} vs every {fast} steps: "
               + ", ".join(f"N={n}: {inj[slow][n]['final'].mean():.2f}→{inj[fast][n]['final'].mean():.2f}"
                           for n in sorted(inj[slow]))
               + f"; widths flipped from lost (< {cfg.lost}) to retained (> {cfg.retained}): {flips or 'none'}"
               + (f"; retained only at the slow rate: {worse}" if worse else ""))


def scaling_section(rep, sweep, label):
    ns, ds, ls = [], [], []
    for n, d in sweep["loss_at"].items():
        for step, loss in d.items():
            ns.append(n), ds.append(step), ls.append(max(float(np.mean(loss)), 1e-8))
    fit = fit_scaling_law(ns, ds, ls)
    widths = sorted(sweep["loss_at"])
    last, mid = max(sweep["checkpoints"]), sorted(sweep["checkpoints"])[len(sweep["checkpoints"]) // 2]
    small_inf = float(np.mean(sweep["loss_at"][widths[0]][last]))
    large_mid = float(np.mean(sweep["loss_at"][widths[-1]][mid]))
    rep.metric(f"scaling_fit_{label}", fit.to_dict())
    measured = (f"Measured: N={widths[0]} at the longest training (D={last}) has loss {small_inf:.3g} vs N={widths[-1]} "
                f"at D={mid}: {large_mid:.3g} ({'larger model ahead with less data' if large_mid < small_inf else 'no unreachable band seen'}).")
    head = (f"**L(N, D) fit ({label})**: L = {fit.E:.3g} + {fit.A:.3g}·N^-{fit.alpha:.2f} + {fit.B:.3g}·D^-{fit.beta:.2f} "
            f"(R² on log L = {fit.r2:.3f}, {fit.n_points} points; {label.split('_')[-1]}). ")
    if fit.r2 < MIN_FIT_R2:
        band = None  # a band read off a curve that does not describe the data is not evidence
        rep.text(head + f"The sweep is not described by this power law (R² < {MIN_FIT_R2}), so no unreachable band "
                 "is derived from it. " + measured)
    else:
        band = unreachable_band(fit, widths[0], widths[-1])
        rep.text(head + f"Unreachable band for N={widths[0]} vs N={widths[-1]}: [{band['band_low']:.3g}, "
                 f"{band['band_high']:.3g}]; the larger model passes the smaller one's infinite-data loss at "
                 f"D* ≈ {band['d_star']:.3g}. " + measured)
    rep.metric(f"unreachable_band_{label}", band)
    return fit, band


# ================================================================ part B: LM ladder
class LMSetup:
    def __init__(self, cfg: Config, seed):
        v = cfg.lm_vocab
        self.bg = tc.MarkovBackground(v, cfg.lm_order, cfg.lm_branching, seed=seed)
        marker_cmp, marker_add, eq = v, v + 1, v + 2
        self.tasks = [tc.make_comparison(cfg.cmp_items, v, marker_cmp, eq, cfg.heldout_frac, seed=seed),
                      tc.make_modular_addition(cfg.mod_p, v, marker_add, eq, cfg.heldout_frac, seed=seed)]
        self.entropy = self.bg.entropy_rate()


def _answer_stats(model, prompts, answers):
    """(mean log-prob of the answer, accuracy) at the last prompt position."""
    with torch.no_grad():
        logp = F.log_softmax(model(prompts)[:, -1].float(), -1)
    return float(logp.gather(1, answers[:, None]).mean()), float((logp.argmax(-1) == answers).float().mean())


def lm_run(cfg: Config, setup: LMSetup, layers, d_model, freq, seed, device, log) -> dict:
    t0 = time.time()
    torch.manual_seed(seed)
    stream = tc.InjectionStream(setup.bg, setup.tasks, [freq] * len(setup.tasks), cfg.lm_batch, cfg.lm_seq,
                                seed=seed + 1)
    mcfg = GPTConfig(vocab_size=stream.vocab_size, n_layers=layers, n_heads=max(1, d_model // 32), d_model=d_model,
                     seq_len=cfg.lm_seq + 8, mlp="relu2")
    model = GPT(mcfg).to(device)
    opt = make_optimizer(model, cfg.lm_lr, weight_decay=0.1)
    steps = cfg.lm_steps
    evals = {}
    for t in setup.tasks:
        for split, idx in (("train", t.train_idx), ("heldout", t.heldout_idx)):
            evals[(t.name, split)] = (stream.eval_batch(t, idx, seed=seed + 5).to(device), t.answers[idx].to(device))
    bg_eval = setup.bg.sample(32, cfg.lm_seq + 1, torch.Generator().manual_seed(seed + 9)).to(device)

    def loss_fns():
        fns = {"background": lambda m: m(bg_eval[:, :-1], bg_eval[:, 1:])}
        for t in setup.tasks:
            p, a = evals[(t.name, "train")]
            fns[t.name] = lambda m, _p=p, _a=a: F.cross_entropy(m(_p)[:, -1].float(), _a)
        return fns

    def grad_stats():
        model.eval()
        g = itf.task_gradients(model, loss_fns())
        model.train()
        return {t.name: itf.interference(g, {"background": 1.0}, ["background"], t.name) for t in setup.tasks}

    track = itf.TaskHistory({t.name: lambda m, _t=t: _answer_stats(m, *evals[(_t.name, "train")])[0]
                             for t in setup.tasks})  # log p(answer) on trained pairs
    inj = {t.name: {"before": [], "after": []} for t in setup.tasks}
    grads = {"steps": [], "bg_norm": [], **{t.name: {"cos": [], "projection": []} for t in setup.tasks}}

    model.train()
    track.record(0, model)
    for step in range(steps):
        seq, counts = stream.batch(step)
        seq = seq.to(device)
        injected = sum(counts) > 0 and freq < 1
        if injected:
            before = {t.name: track.metric_fns[t.name](model) for t in setup.tasks}
        set_lr(opt, lr_at(step, steps, cfg.lm_lr, warmup=min(100, steps // 10)))
        with autocast_ctx(device):
            loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if injected:
            for t in setup.tasks:
                inj[t.name]["before"].append(before[t.name])
                inj[t.name]["after"].append(track.metric_fns[t.name](model))
        if (step + 1) % cfg.lm_eval_every == 0 or step + 1 == steps:
            track.record(step + 1, model)
            st = grad_stats()
            grads["steps"].append(step + 1)
            grads["bg_norm"].append(st[setup.tasks[0].name]["common_norm"])
            for t in setup.tasks:
                grads[t.name]["cos"].append(st[t.name]["cos_common_rare"])
                grads[t.name]["projection"].append(st[t.name]["projection"])
    model.eval()
    res = {"params": model.num_params(), "layers": layers, "d_model": d_model, "freq": freq,
           "token_frac": freq * tc.InjectedTask.LENGTH / (cfg.lm_batch * (cfg.lm_seq + 1)),
           "track": {"steps": track.steps, **track.values}, "grads": grads, "tasks": {}}
    with torch.no_grad():
        res["bg_loss"] = float(model(bg_eval[:, :-1], bg_eval[:, 1:]))
    for t in setup.tasks:
        lp, acc = _answer_stats(model, *evals[(t.name, "train")])
        lph, acch = _answer_stats(model, *evals[(t.name, "heldout")])
        b, a = np.array(inj[t.name]["before"]), np.array(inj[t.name]["after"])
        res["tasks"][t.name] = {
            "acc_train": acc, "acc_heldout": acch, "logp_train": lp, "logp_heldout": lph,
            "jump": float((a - b).mean()) if len(a) else None,
            "decay_frac": float((a[:-1] - b[1:]).mean() / (a - b).mean()) if len(a) > 1 and (a - b).mean() > 0 else None,
            "bg_projection_end": grads[t.name]["projection"][-1], "cos_end": grads[t.name]["cos"][-1],
            "probe": _probe(model, stream, t, seed, device) if freq in cfg.lm_probe_freqs else {},
        }
    res["bg_grad_end"] = grads["bg_norm"][-1]
    res["alloc_injected"] = _lm_allocation(model, loss_fns(), setup)
    log(f"LM L={layers} d={d_model} ({res['params'] / 1e6:.2f}M) freq {freq}/batch: "
        + ", ".join(f"{n} acc {v['acc_train']:.2f}/{v['acc_heldout']:.2f}" for n, v in res["tasks"].items())
        + f", bg loss {res['bg_loss']:.3f} (entropy {setup.entropy:.3f}) in {time.time() - t0:.1f}s")
    return res


def _probe(model, stream, task, seed, device) -> dict[int, float]:
    """Linear-probe accuracy of the task variable at the `=` position (train pairs → held-out pairs) at the
    embeddings, the middle block and the last block."""
    idx = torch.arange(len(task.answers))
    n = model.cfg.n_layers
    layers = sorted({-1, n // 2 - 1, n - 1})
    feats = itf.layer_features(model, stream.eval_batch(task, idx, seed=seed + 5).to(device), position=-1,
                               layers=layers)
    return itf.probe_layers(feats, task.labels.numpy(), task.heldout.numpy())


def _lm_allocation(model, fns, setup) -> float:
    """Soft share of the last-layer MLP units' (first-order) ablation effects that goes to the injected tasks
    (each unit split across tasks in proportion to its effects; not a count of units)."""
    eff = itf.unit_attributions(model, fns, layer=model.cfg.n_layers - 1)
    names, mat = itf.effect_matrix(eff)
    alloc = itf.allocation(mat, min_frac=0.01)
    return float(sum(alloc["fractions"][i] for i, n in enumerate(names) if n != "background"))


def decide_c6(rep, lm, cfg: Config, setup):
    sizes = sorted({(r["layers"], r["d_model"]) for r in lm}, key=lambda s: s[0] * s[1] ** 2)
    freqs = sorted({r["freq"] for r in lm})
    thr = cfg.lm_learned_acc
    by = {(r["layers"], r["d_model"], r["freq"]): r for r in lm}
    min_freq, rows = {}, []
    for t in setup.tasks:
        for s in sizes:
            learned = [f for f in freqs if by[(*s, f)]["tasks"][t.name]["acc_train"] >= thr]
            min_freq[(t.name, s)] = min(learned) if learned else math.inf
            rows.append([t.name, f"L{s[0]} d{s[1]} ({by[(*s, freqs[0])]['params'] / 1e6:.2f}M)"]
                        + [f"{by[(*s, f)]['tasks'][t.name]['acc_train']:.2f}/{by[(*s, f)]['tasks'][t.name]['acc_heldout']:.2f}"
                           for f in freqs])
    rep.table(rows, ["task", "model"] + [f"{f}/batch" for f in freqs],
              title=f"Claim 6: answer accuracy on trained/held-out pairs (learned: trained ≥ {thr})")
    mono = all(min_freq[(t.name, b)] <= min_freq[(t.name, a)] for t in setup.tasks for a, b in pairwise(sizes))
    lower = any(min_freq[(t.name, sizes[-1])] < min_freq[(t.name, sizes[0])] for t in setup.tasks)
    learned_freqs = sorted({f for f in min_freq.values() if f != math.inf})
    itf_by = {s: lm_interference([by[(*s, f)] for f in freqs], [t.name for t in setup.tasks]) for s in sizes}
    proj = {s: v["projection"] for s, v in itf_by.items()}
    ratio = proj[sizes[0]] / max(proj[sizes[-1]], 1e-30)
    proj_mono = all(proj[b] <= proj[a] for a, b in pairwise(sizes))
    held = mono and lower and ratio >= 2
    fmt = lambda v: "never" if v == math.inf else f"{v:g}"
    name = lambda s: f"d{s[1]}"
    rep.decide("c6_lm_rare_tasks", held,
               "lowest frequency (instances/batch) at which each task is learned, small→large: "
               + "; ".join(f"{t.name}: " + ", ".join(fmt(min_freq[(t.name, s)]) for s in sizes) for t in setup.tasks)
               + f" (criterion: non-increasing with size and lower for the largest model in ≥ 1 task: "
                 f"{'yes' if mono and lower else 'no'}"
               + (f"; every learned cell is at {learned_freqs[0]:g}/batch, the highest frequency tested, so this "
                  "shows larger models learning at a frequency too low for the smallest, not a learned region moving "
                  "further down" if learned_freqs == [max(freqs)] else "")
               + "). Interference = |g_background·ĝ_task| (the background gradient's component along the task "
                 "gradient: the first-order change in task loss per unit step), mean over tasks, frequencies and the "
                 "second half of training: " + ", ".join(f"{name(s)}: {proj[s]:.3g}" for s in sizes)
               + f" (smallest ÷ largest = {ratio:.2f}, criterion ≥ 2; {'monotone' if proj_mono else 'not monotone'} "
                 "in size). Its parts: background gradient norm "
               + ", ".join(f"{name(s)}: {itf_by[s]['bg_norm']:.3g}" for s in sizes)
               + "; alignment above chance |cos|·√P (≈ 0.8 for unrelated directions in P dimensions) "
               + ", ".join(f"{name(s)}: {itf_by[s]['alignment']:.1f}" for s in sizes)
               + ". " + _interference_reading(itf_by[sizes[0]], itf_by[sizes[-1]])
               + f" One seed per cell; {cfg.lm_steps} steps"
               + ("." if len(freqs) == len(cfg.lm_freqs) else f"; only frequencies {freqs} of {cfg.lm_freqs} "
                  "finished (the run was interrupted)."))


def _interference_reading(small: dict, large: dict) -> str:
    if large["alignment"] < small["alignment"]:
        return (f"The alignment above chance fell too ({small['alignment']:.1f} → {large['alignment']:.1f}): the "
                "larger model's background gradient points less along the task.")
    bg = large["bg_norm"] < small["bg_norm"] / 1.5
    return (f"The alignment above chance did not fall ({small['alignment']:.1f} → {large['alignment']:.1f}), so "
            "the smaller interference comes from near-orthogonal gradients in the larger parameter space"
            + (f" and a smaller background gradient ({small['bg_norm']:.3g} → {large['bg_norm']:.3g})" if bg else "")
            + ", not from gradients less aligned than chance.")


def lm_interference(cells: list[dict], tasks: list[str]) -> dict:
    """Mean over cells, tasks and the second half of the evaluation points of |g_bg·ĝ_task|, |cos|·√P and
    the background gradient norm (one point at the end is as noisy as the sign flips of the cosine)."""
    proj, align, bg = [], [], []
    for c in cells:
        g = c["grads"]
        half = len(g["steps"]) // 2
        bg.append(np.mean(g["bg_norm"][half:]))
        for t in tasks:
            proj.append(np.mean(np.abs(g[t]["projection"][half:])))
            align.append(np.mean(np.abs(g[t]["cos"][half:])) * math.sqrt(c["params"]))
    return {"projection": float(np.mean(proj)), "alignment": float(np.mean(align)), "bg_norm": float(np.mean(bg))}


# ================================================================ figures
def _figures(rep, sweep, inj, lm, cfg: Config):
    import matplotlib  # heavy: imported only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted(sweep["errors"])
    err = np.stack([sweep["errors"][n].mean(0) for n in widths])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    im = ax.imshow(err, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(err.shape[1]))
    mix = sweep["mix"]
    ax.set_xticklabels([f"{k}\np={mix.frequencies[k]:.2f}\nr={int(mix.complexities[k])}" for k in range(err.shape[1])],
                       fontsize=6)
    ax.set_yticks(range(len(widths)), [str(n) for n in widths])
    ax.set_xlabel("task (frequency p, rank r)")
    ax.set_ylabel("width N")
    fig.colorbar(im, label="normalised error")
    ax.set_title("Toy: per-task error vs width (linear, seed mean)")
    rep.figure(fig, "error_heatmap", "Per-task normalised error vs width: rare/complex tasks need more units.")

    fig, ax = plt.subplots(figsize=(7, 3.6))
    bottom = np.zeros(len(widths))
    alloc = np.stack([sweep["alloc"][n].mean(0) for n in widths])
    cmap = plt.get_cmap("tab20")
    for k in range(alloc.shape[1]):
        ax.bar([str(n) for n in widths], alloc[:, k], bottom=bottom, color=cmap(k), label=f"task {k}")
        bottom += alloc[:, k]
    ax.set_xlabel("width N")
    ax.set_ylabel("fraction of units allocated")
    ax.set_title("Toy: unit allocation per task (path strength)")
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    rep.figure(fig, "allocation", "Fraction of hidden units allocated to each task (task 0 most frequent).")

    fig, axes = plt.subplots(1, len(inj), figsize=(5 * len(inj), 3.4), squeeze=False)
    for ax, period in zip(axes[0], sorted(inj, reverse=True)):
        for n, r in sorted(inj[period].items()):
            ax.semilogy(np.clip(r["signal"][0], 1e-6, None), label=f"N={n}", lw=0.7)
        ax.set_xlabel("training step")
        ax.set_ylabel("rare-task signal 1 − error (log)")
        ax.set_title(f"rare task injected every {period} steps (seed 0)")
        ax.legend(fontsize=7)
    rep.figure(fig, "retention", "Rare-task signal under injection (one seed, log scale): small widths rise at each "
               "injection and decay before the next; above the threshold the signal accumulates to 1.")

    fig, ax = plt.subplots(figsize=(6, 3.4))
    slow = max(inj)
    for n, r in sorted(inj[slow].items()):
        if len(r["grad_steps"]):
            ax.semilogy(r["grad_steps"], r["grad_norm"].mean(1), marker=".", label=f"N={n}")
    ax.set_xlabel("training step")
    ax.set_ylabel("‖common-task minibatch gradient‖")
    ax.set_title(f"Toy: common-task gradient norm (injection every {slow})")
    ax.legend(fontsize=7)
    rep.figure(fig, "gradient_norms", "Norm of the common-task minibatch gradient over training, per width.")

    if lm:
        sizes = sorted({(r["layers"], r["d_model"]) for r in lm}, key=lambda s: s[0] * s[1] ** 2)
        freqs = sorted({r["freq"] for r in lm})
        by = {(r["layers"], r["d_model"], r["freq"]): r for r in lm}
        names = list(lm[0]["tasks"])
        fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            grid = np.array([[by[(*s, f)]["tasks"][name]["acc_train"] for f in freqs] for s in sizes])
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", origin="lower")
            for i in range(len(sizes)):
                for j in range(len(freqs)):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(freqs)), [f"{f:g}" for f in freqs])
            ax.set_yticks(range(len(sizes)), [f"{by[(*s, freqs[0])]['params'] / 1e6:.2f}M" for s in sizes])
            ax.set_xlabel("injected instances per batch")
            ax.set_ylabel("model size (params)")
            ax.set_title(f"LM: {name} accuracy (trained pairs)")
        fig.colorbar(im, ax=axes[0].tolist(), label="accuracy")
        rep.figure(fig, "lm_frequency_size_grid", "Frequency × size grid: injected-task accuracy (learned ≥ "
                   f"{cfg.lm_learned_acc}).")

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        f0 = freqs[0]
        for s in sizes:
            r = by[(*s, f0)]
            for name, ls in zip(names, ("-", "--")):
                axes[0].plot(r["track"]["steps"], r["track"][name], ls=ls,
                             label=f"{r['params'] / 1e6:.2f}M {name}")
            proj = np.mean([r["grads"][n]["projection"] for n in names], 0)
            axes[1].semilogy(r["grads"]["steps"], proj, marker=".", label=f"{r['params'] / 1e6:.2f}M")
        axes[0].set_xlabel("training step")
        axes[0].set_ylabel("log p(answer), trained pairs")
        axes[0].set_title(f"LM: injected-task signal at {f0:g} instances/batch")
        axes[0].legend(fontsize=6)
        axes[1].set_xlabel("training step")
        axes[1].set_ylabel("|g_background · ĝ_task|")
        axes[1].set_title("LM: background-gradient interference")
        axes[1].legend(fontsize=7)
        rep.figure(fig, "lm_signal_interference", f"LM at the lowest injection frequency ({f0:g}/batch): answer "
                   "log-probability over training and the background gradient's component along the task gradient.")


# ================================================================ entry point
@experiment(name="task_competition",
            paper="Huang et al., Why Larger Models Learn More: Effects of Capacity, Interference, and Rare-Task "
                  "Retention, 2026 (arXiv:2605.29548)",
            claims=CLAIMS, presets=PRESETS)
def run(ctx: RunContext) -> None:
    """Task competition: allocation, interference and rare-task retention vs width."""
    cfg, rep = ctx.cfg, ctx.report
    overlap = cfg.lm if cfg.toy_in_process is None else cfg.toy_in_process
    toy = _ToyProcess(cfg, ctx.seed, ctx.log) if overlap else None  # the CPU toy beside the LM ladder
    if toy is None:
        threads = torch.get_num_threads()
        try:
            results = toy_part(cfg, ctx.seed, ctx.log)
        finally:
            torch.set_num_threads(threads)
    lm = []
    if cfg.lm:
        if ctx.device.type == "cpu":
            torch.set_num_threads(1)  # small models on a shared CPU
        setup = LMSetup(cfg, ctx.seed)
        with ctx.interruptible():  # e.g. a time limit: claim 6 is decided on the frequencies all sizes did
            for f in cfg.lm_freqs:
                for layers, d in cfg.lm_sizes:
                    lm.append(lm_run(cfg, setup, layers, d, f, ctx.seed, ctx.device, ctx.log))
        if ctx.interrupted:
            done = len(lm) // len(cfg.lm_sizes)  # frequencies that every size finished
            lm = lm[: done * len(cfg.lm_sizes)]
            ctx.log(f"interrupted in the LM ladder; reporting {done} finished frequencies")
    if toy is not None:
        results = toy.result()
    sweep, inj = report_toy(rep, cfg, results)
    if cfg.lm:
        rep.metric("lm", [{k: v for k, v in r.items() if k not in ("track",)} for r in lm])
        rep.metric("lm_background_entropy", setup.entropy)
        if lm:
            decide_c6(rep, lm, cfg, setup)
            _lm_tables(rep, lm)
    else:
        rep.decide("c6_lm_rare_tasks", None, "undecided: the LM sweep is not part of the tiny preset "
                   "(run --preset small or gpu)")
    _figures(rep, sweep, inj, lm, cfg)


def toy_part(cfg: Config, seed, log) -> dict:
    """Every toy-regression run (linear sweep, ReLU sweep, injection), on the CPU with one thread."""
    torch.set_num_threads(1)  # the toy nets are tiny: one thread is fastest
    out = {"sweep": toy_sweep(cfg, seed, "linear", cfg.widths, log)}
    if cfg.relu:
        out["relu"] = toy_sweep(cfg, seed, "relu", cfg.relu_widths, log)
    out["inj"] = {p: toy_injection(cfg, seed, p, cfg.inj_widths, log) for p in cfg.inj_periods}
    return out


class _ToyProcess:
    """`toy_part` in a forked process, so that the CPU-only toy runs while the parent trains the LM ladder.

    Forked, not spawned: the child inherits the config and imports, and it never touches the GPU. Its result
    comes back as plain pickle bytes (multiprocessing would pass tensors as shared-memory handles, which die
    with the child); an exception in it is raised again here with the child's traceback. The child ignores
    SIGINT: a Ctrl-C or a time limit's SIGINT to the process group stops the LM ladder, and the toy result
    (claims 1-5) is still reported; a Ctrl-C while waiting for it ends the child.
    """

    def __init__(self, cfg: Config, seed, log):
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=self._main, args=(child, cfg, seed, log), daemon=True)
        self.proc.start()
        child.close()  # so that a child that dies without sending gives EOFError here, not a hang

    @staticmethod
    def _main(conn, cfg: Config, seed, log):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            msg = ("ok", pickle.dumps(toy_part(cfg, seed, log)))
        except Exception:
            msg = ("error", traceback.format_exc())
        conn.send(msg)

    def result(self) -> dict:
        try:
            status, value = self.conn.recv()
        except EOFError:
            status, value = "died", None
        except BaseException:
            self.proc.terminate()
            raise
        finally:
            self.proc.join()
        if status == "died":
            raise RuntimeError(f"the toy-regression process died without a result (exit code {self.proc.exitcode})")
        if status == "error":
            raise RuntimeError(f"the toy-regression process failed:\n{value}")
        return pickle.loads(value)


def report_toy(rep, cfg: Config, toy) -> tuple[dict, dict]:
    """Claims 1-5 from the toy runs; returns (linear sweep, injection runs) for the figures."""
    sweep, inj = toy["sweep"], toy["inj"]
    rep.metric("toy_errors", {n: e.mean(0) for n, e in sweep["errors"].items()})
    rep.metric("toy_alloc", {n: a.mean(0) for n, a in sweep["alloc"].items()})
    rep.metric("toy_learned_counts", decide_c1(rep, sweep, cfg))
    rep.metric("toy_top3_share", decide_c2(rep, sweep, cfg))
    scaling_section(rep, sweep, "linear_toy_D=steps")
    if "relu" in toy:
        rs = toy["relu"]
        widths = sorted(rs["errors"])
        rep.table([[n, int((rs["errors"][n].mean(0) < cfg.learned_err).sum()),
                    float(rs["alloc"][n][:, :3].sum(1).mean()),
                    " ".join(f"{e:.2f}" for e in rs["errors"][n].mean(0))] for n in widths],
                  ["width", "tasks learned", "top-3 allocation (ablation)", "errors per task"],
                  title="ReLU toy (supplementary): same ordering, graded errors; allocation by exact unit ablation")
        rep.metric("relu_errors", {n: e.mean(0) for n, e in rs["errors"].items()})
        rep.metric("relu_top3_share", {n: float(rs["alloc"][n][:, :3].sum(1).mean()) for n in widths})
    rep.metric("injection", {p: {n: {k: r[k] for k in ("final", "peak", "decay_frac", "jump", "g_batch",
                                                       "g_expected", "cos_end")} for n, r in res.items()}
                             for p, res in inj.items()})
    thr = decide_c3(rep, inj, cfg)
    decide_c4(rep, inj, thr, cfg)
    decide_c5(rep, inj, cfg)
    return sweep, inj


def _lm_tables(rep, lm):
    rows = []
    for r in lm:
        for name, t in r["tasks"].items():
            probe = t["probe"]
            rows.append([f"L{r['layers']} d{r['d_model']}", f"{r['freq']:g} ({100 * r['token_frac']:.2g}% tok)", name,
                         t["acc_train"], t["acc_heldout"], "-" if t["jump"] is None else f"{t['jump']:+.3f}",
                         "-" if t["decay_frac"] is None else f"{t['decay_frac']:.2f}", t["cos_end"],
                         t["bg_projection_end"], " ".join(f"{probe[k]:.2f}" for k in sorted(probe)) or "-",
                         r["bg_loss"], r["alloc_injected"]])
    rep.table(rows, ["model", "freq/batch", "task", "acc trained", "acc held-out", "Δlogp at injection",
                     "lost before next", "cos(g_bg, g_task)", "|g_bg·ĝ_task|", "probe acc (emb, mid, last)",
                     "bg loss", "injected share of last-layer unit effects"],
              title="LM sweep details (probe: task variable at '=' per layer, trained on train pairs, tested on "
                    "held-out pairs)")
