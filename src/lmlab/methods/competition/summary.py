"""task_competition's tables and figures over the seeds (nothing here decides a claim): per-task errors and unit
allocation per width, retention and interference per width and schedule, the L(N, D) fit of the linear sweep, and
the LM ladder's frequency × size grid."""

from __future__ import annotations

import numpy as np

from lmlab.methods.competition.decide import finals, lm_grid, mean_errors, top_share, undo_share
from lmlab.methods.competition.scaling import fit_scaling_law, unreachable_band

MIN_FIT_R2 = 0.9  # below this the L(N, D) power law does not describe the sweep, and no band is read off it


def summarize(ctx, per_seed: list[dict], verdicts: dict) -> None:
    rep, cfg = ctx.report, ctx.cfg
    for act in ("relu", "linear"):
        sweeps = [n["sweep"][act] for n in per_seed if act in n["sweep"]]
        if not sweeps:
            continue
        widths = sweeps[0]["widths"]
        err = np.mean([mean_errors(s) for s in sweeps], 0)
        share = np.mean([top_share(s) for s in sweeps], 0)
        rows = [[w, int((e < cfg.learned_err).sum()), ", ".join(str(k) for k in np.nonzero(e >= cfg.learned_err)[0])
                 or "-", float(sh)] + ([float(np.abs(e - np.asarray(sweeps[0]["optimal"][i])).max())]
                                       if act == "linear" else [])
                for i, (w, e, sh) in enumerate(zip(widths, err, share))]
        rep.table(rows, ["width", f"tasks learned (err < {cfg.learned_err})", "unlearned tasks (0 = most frequent)",
                         "top-3 share of units"] + (["max |err − Eckart–Young|"] if act == "linear" else []),
                  title=f"{act} toy sweep, mean over {len(sweeps)} seed(s) × {cfg.nets} nets"
                        + (" (the checks k1, k2)" if act == "linear" else " (claims c1, c2)"))
        rep.metric(f"{act}_errors", {w: e for w, e in zip(widths, err)})
        rep.metric(f"{act}_top3_share", {w: float(s) for w, s in zip(widths, share)})
        _heatmap(rep, act, widths, err, sweeps[0])
    if all("linear" in n["sweep"] for n in per_seed):
        _scaling(rep, [n["sweep"]["linear"] for n in per_seed])
    for act in ("relu", "linear"):
        runs = [n["inj"][act] for n in per_seed if n["inj"].get(act)]
        if runs:
            _injection_table(rep, act, runs, cfg)
    _retention_figure(rep, per_seed[0]["inj"]["relu"], ctx.report.seeds[0])
    if all(n.get("lm") for n in per_seed):
        _lm(rep, per_seed, cfg)


def _heatmap(rep, act, widths, err, sweep):
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    fig, ax = plt.subplots(figsize=(7, 3.6))
    im = ax.imshow(err, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(err.shape[1]),
                  [f"{k}\np={p:.2f}\nr={c:.0f}" for k, (p, c) in enumerate(zip(sweep["freqs"], sweep["complexities"]))],
                  fontsize=6)
    ax.set_yticks(range(len(widths)), [str(n) for n in widths])
    ax.set_xlabel("task (frequency p, rank r)")
    ax.set_ylabel("width N")
    fig.colorbar(im, label="normalised error")
    ax.set_title(f"Toy ({act}): per-task error vs width (seed mean)")
    rep.figure(fig, f"error_heatmap_{act}", f"Per-task normalised error vs width, {act} nets: rare/complex tasks need "
               "more units.")


def _scaling(rep, sweeps):
    """L(N, D) = E + A·N^−α + B·D^−β fitted to the linear sweep's mixture loss at log-spaced steps (D = steps)."""
    widths, checkpoints = sweeps[0]["widths"], sweeps[0]["checkpoints"]
    loss = np.mean([np.mean(np.asarray(s["loss_at"]), 2) for s in sweeps], 0)  # (widths, checkpoints)
    ns, ds, ls = zip(*[(n, d, max(float(loss[i, j]), 1e-8)) for i, n in enumerate(widths)
                       for j, d in enumerate(checkpoints)])
    fit = fit_scaling_law(list(ns), list(ds), list(ls))
    rep.metric("scaling_fit_linear_toy", fit.to_dict())
    mid = len(checkpoints) // 2
    small_inf, large_mid = float(loss[0, -1]), float(loss[-1, mid])
    head = (f"**L(N, D) fit (linear toy, D = steps)**: L = {fit.E:.3g} + {fit.A:.3g}·N^-{fit.alpha:.2f} + "
            f"{fit.B:.3g}·D^-{fit.beta:.2f} (R² on log L = {fit.r2:.3f}, {fit.n_points} points). ")
    measured = (f"Measured: N={widths[0]} at the longest training (D={checkpoints[-1]}) has loss {small_inf:.3g} vs "
                f"N={widths[-1]} at D={checkpoints[mid]}: {large_mid:.3g}.")
    if fit.r2 < MIN_FIT_R2:
        rep.text(head + f"The sweep is not described by this power law (R² < {MIN_FIT_R2}), so no unreachable band "
                 "is derived from it. " + measured)
        return
    band = unreachable_band(fit, widths[0], widths[-1])
    rep.metric("unreachable_band_linear_toy", band)
    rep.text(head + f"Unreachable band for N={widths[0]} vs N={widths[-1]}: [{band['band_low']:.3g}, "
             f"{band['band_high']:.3g}]. " + measured)


def _injection_table(rep, act, runs, cfg):
    rows = []
    for r0_i, r0 in enumerate(runs[0]):
        for c_i, c0 in enumerate(r0["cells"]):
            cells = [seed_runs[r0_i]["cells"][c_i] for seed_runs in runs]
            u, real, g = undo_share(cells)
            rows.append([r0["period"], c0["width"], " ".join(f"{finals(sr[r0_i])[c0['width']]:.2f}" for sr in runs),
                         float(np.mean([np.mean(c["jump"]) for c in cells])),
                         float(np.nanmean([np.nan if d is None else d for c in cells for d in c["decay_frac"]])),
                         g, u, real, float(np.mean([np.mean(c["g_common"]) for c in cells]))])
    rep.table(rows, ["every (steps)", "width", "final rare signal per seed", "mean gain per injection",
                     "share lost before the next (whole run)", f"gain per injection (last {cfg.cycles})",
                     "first-order undone share (−η·g_c·g_r)", "realised undone share", "‖common minibatch grad‖"],
              title=f"{act} toy: rare-task injection, retention and interference over the last {cfg.cycles} intervals "
                    f"(pooled over seeds × {cfg.nets} nets)")


def _retention_figure(rep, runs, seed):
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.4), squeeze=False)
    for ax, r in zip(axes[0], sorted(runs, key=lambda r: -r["period"])):
        steps = np.asarray(r["inj_steps"])
        for c in r["cells"]:
            b, a = np.asarray(c["before"])[0], np.asarray(c["after"])[0]
            x = np.ravel(np.column_stack([steps, steps + 1]))
            ax.semilogy(x, np.clip(np.ravel(np.column_stack([b, a])), 1e-6, None), lw=0.7, label=f"N={c['width']}")
        ax.set_xlabel("training step")
        ax.set_ylabel("rare-task signal 1 − error (log)")
        ax.set_title(f"ReLU: rare task injected every {r['period']} steps")
        ax.legend(fontsize=7)
    rep.figure(fig, "retention", f"Rare-task signal just before and just after each injection (ReLU toy, first net of "
               f"seed {seed}, log scale): a saw-tooth that returns to the floor is rise-and-decay; a rising envelope "
               "is accumulation.")


def _lm(rep, per_seed, cfg):
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    ladders = [n["lm"] for n in per_seed]
    sizes, freqs, _ = lm_grid(ladders[0])
    bys = [lm_grid(cells)[2] for cells in ladders]
    names = list(ladders[0][0]["tasks"])
    rows = []
    for t in names:
        for s in sizes:
            rows.append([t, f"L{s[0]} d{s[1]} ({bys[0][(*s, freqs[0])]['params'] / 1e6:.2f}M)"]
                        + [" ".join(f"{by[(*s, f)]['tasks'][t]['acc_train']:.2f}/{by[(*s, f)]['tasks'][t]['acc_heldout']:.2f}"
                                    for by in bys) for f in freqs])
    rep.table(rows, ["task", "model"] + [f"{f:g}/batch" for f in freqs],
              title=f"LM ladder: answer accuracy on trained/held-out pairs per seed (learned: trained ≥ "
                    f"{cfg.lm_learned_acc})")
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
    for ax, t in zip(axes[0], names):
        grid = np.array([[np.mean([by[(*s, f)]["tasks"][t]["acc_train"] for by in bys]) for f in freqs]
                         for s in sizes])
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", origin="lower")
        for i in range(len(sizes)):
            for j in range(len(freqs)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(freqs)), [f"{f:g}" for f in freqs])
        ax.set_yticks(range(len(sizes)), [f"d{s[1]}" for s in sizes])
        ax.set_xlabel("injected instances per batch")
        ax.set_ylabel("model")
        ax.set_title(f"LM: {t} accuracy (trained pairs, seed mean)")
    fig.colorbar(im, ax=axes[0].tolist(), label="accuracy")
    rep.figure(fig, "lm_frequency_size_grid", f"Frequency × size grid: injected-task accuracy, mean over seeds "
               f"(learned ≥ {cfg.lm_learned_acc}).")
