"""How task_competition decides, from the per-seed numbers of `measure` (pure functions; `lmlab.verdict.RULE`).

Paper claims c1–c5 are decided on the ReLU toy, where they can fail: a ReLU network has no closed-form optimum,
its errors are graded, and which tasks it keeps is an empirical matter. The same quantities on the linear toy are
CHECKS of the theory: a linear two-layer net trained to convergence sits at the Eckart–Young optimum (the rank-N
truncation of the frequency-weighted task map), which fixes which tasks it learns, how it allocates its units
and from which width on it keeps an injected rank-r task — so they cannot fail once SGD has converged, and they
are reported apart from the claims. c4 is decided on the interference mechanism itself (the first-order effect
of the common steps on the rare loss), c6 on the LM ladder (small and gpu presets).

A seed measures a population of `nets` networks per width; the claims read the population's mean per seed, and
the seeds are the replicates the rule needs to agree.
"""

from __future__ import annotations

import math
import statistics
from itertools import pairwise

import numpy as np

from lmlab.verdict import Verdict, all_of, by_threshold, check, rounded, undecided

# ---- margins, each with its source (committed before any run of this version)
TOP = 3  # spec 02 §8.1 criterion 2: the allocation share of the top-3 frequent tasks
ALLOC_DROP = 0.20  # the previous version's committed c2 criterion: the top-3 share is >= 0.20 lower at the widest
#                    width than at the narrowest (in every seed)
ALLOC_TOL = 0.02  # the previous version's tolerance for "non-increasing" in c2 (a rise below 2 points is noise)
GROWTH = 0.5  # c1: at least one more task learned at the widest width than at the narrowest (counts are integers)
VISIBLE_PEAK = 0.05  # a rise of the rare-task signal that a plot shows (5 % of the task); also the tolerance for
#                      "non-decreasing in width" of the final signal
FORGOT = 0.5  # spec 02 §5 "update-and-forget": at least half of each injection's gain is lost before the next
MAJORITY = 0.5  # more than half of a seed's nets must show a pattern for the seed to show it
UNDO_GAP = 0.5  # c4: the common steps' first-order undoing of each injection's gain is at least half the gain
#                 larger at the widths that lose the rare task than at those that keep it (the FORGOT line)
GAIN_MIN = 1e-3  # c4: an injection must raise the rare signal by at least 0.1 % of the task for the share of it
#                  the common steps undo to be a measured ratio (below it there is nothing to overwrite)
LM_SHIFT = 0.5  # c6: the largest LM's lowest learned frequency is at least one grid step below the smallest's
LM_RATIO = 2.0  # the previous version's committed c6 criterion: interference (|g_bg·ĝ_task|) smallest ÷ largest
#                 model >= 2
EY_TOL = 0.1  # k1: the linear nets' errors within 0.1 of the Eckart–Young optimum: below the learned line, so a
#               deviation cannot change which tasks count as learned


# ============================================================================ the sweep: c1, c2, k1, k2
def mean_errors(sweep: dict) -> np.ndarray:
    """(widths, K) per-task normalised error, mean over the seed's nets."""
    return np.array([np.mean(e, 0) for e in sweep["errors"]])


def dominance_violations(learned: np.ndarray, p, c) -> list[tuple[int, int]]:
    """Pairs (u, l): unlearned u at least as frequent and at most as complex as learned l (one strictly)."""
    bad = []
    for u in np.nonzero(~learned)[0]:
        for l_ in np.nonzero(learned)[0]:
            if p[u] >= p[l_] and c[u] <= c[l_] and (p[u] > p[l_] or c[u] < c[l_]):
                bad.append((int(u), int(l_)))
    return bad


def learned_counts(sweep: dict, thr: float) -> list[int]:
    return [int(v) for v in (mean_errors(sweep) < thr).sum(1)]


def _c1_parts(sweeps: list[dict], cfg, what: str) -> dict[str, Verdict] | Verdict:
    thr = cfg.learned_err
    counts = [learned_counts(s, thr) for s in sweeps]
    if all(c[-1] == 0 for c in counts):
        return undecided(f"not learned: the widest {what} nets learn no task (error < {thr}) in any seed: tasks "
                         f"learned per width per seed {counts}", counts=counts)
    growth, bad, noise = [], [], []
    for s, c in zip(sweeps, counts):
        learned = mean_errors(s) < thr
        drops = sum(max(0, a - b) for a, b in pairwise(c))
        viol = sum(len(dominance_violations(row, s["freqs"], s["complexities"])) for row in learned)
        growth.append(c[-1] - c[0])
        bad.append(-(drops + viol))
        per_net = [int((np.asarray(s["errors"][-1][m]) < thr).sum() - (np.asarray(s["errors"][0][m]) < thr).sum())
                   for m in range(len(s["errors"][0]))]
        noise.append(statistics.stdev(per_net) if len(per_net) > 1 else 0.0)
    shown = "; ".join(f"seed #{i} {dict(zip(s['widths'], c))}" for i, (s, c) in enumerate(zip(sweeps, counts)))
    return {"more tasks at the widest width": by_threshold(
                growth, GROWTH, noise=max(noise), fmt=".3g",
                what=f"tasks learned (error < {thr}, mean of the seed's nets) at the widest minus the narrowest "
                     f"width ({shown}; noise = the largest sd of that difference over one seed's nets)"),
            "rarest/most complex stay unlearned": by_threshold(
                bad, -0.5, fmt=".3g",
                what="−(drops of the count from one width to the next + pairs where an unlearned task is as "
                     "frequent and as simple as a learned one, one strictly)")}


def decide_c1(per_seed: list[dict], cfg) -> Verdict:
    """c1 (ReLU toy): more tasks learned at the widest width than at the narrowest, the count never drops with
    width, and no unlearned task dominates a learned one (as frequent and as simple) — every seed."""
    parts = _c1_parts([n["sweep"]["relu"] for n in per_seed], cfg, "ReLU")
    return parts if isinstance(parts, Verdict) else all_of(parts, "tasks learned grow with width (ReLU)")


def top_share(sweep: dict, top: int = TOP) -> np.ndarray:
    """(widths,) the share of all units allocated to the `top` most frequent tasks, mean of the seed's nets."""
    return np.array([np.mean(np.asarray(a)[:, :top].sum(1)) for a in sweep["alloc"]])


def _c2_parts(sweeps: list[dict], cfg, what: str) -> dict[str, Verdict] | Verdict:
    """From the narrowest width whose nets learn the most frequent task in every seed (learned before compared: a
    net that learned nothing has allocated nothing) to the widest."""
    first = np.array([mean_errors(s)[:, 0] for s in sweeps])  # (seeds, widths) error of the most frequent task
    ok = np.nonzero((first < cfg.learned_err).all(0))[0]
    widths = sweeps[0]["widths"]
    if not len(ok) or ok[0] == len(widths) - 1:
        return undecided(f"not learned: no {what} width below the widest learns even the most frequent task in every "
                         f"seed (its error per seed and width {np.round(first, 3).tolist()} vs {cfg.learned_err}), "
                         "so there is no allocation to compare", errors=first.tolist())
    i0 = int(ok[0])
    shares = [top_share(s)[i0:] for s in sweeps]
    drops = [float(sh[0] - sh[-1]) for sh in shares]
    rise = [float(ALLOC_TOL - max(b - a for a, b in pairwise(sh))) for sh in shares]
    noise = []
    for s in sweeps:
        per_net = [float(np.sum(np.asarray(s["alloc"][i0])[m, :TOP]) - np.sum(np.asarray(s["alloc"][-1])[m, :TOP]))
                   for m in range(len(s["alloc"][0]))]
        noise.append(statistics.stdev(per_net) if len(per_net) > 1 else 0.0)
    shown = "; ".join(f"seed #{i} " + ", ".join(f"N={w}: {v:.2f}" for w, v in zip(widths[i0:], sh))
                      for i, sh in enumerate(shares))
    skipped = (f"; from N={widths[i0]}, the narrowest width whose nets learn the most frequent task in every seed "
               f"(error per seed at N={widths[0]}: {rounded(first[:, 0])})" if i0 else "")
    return {"falls with width": by_threshold(
                drops, ALLOC_DROP, noise=max(noise), fmt=".3f",
                what=f"top-{TOP} share of units at the narrowest minus the widest width ({shown}{skipped}; noise = "
                     "the largest sd of that difference over one seed's nets)"),
            "never rises": by_threshold(rise, 0.0, fmt=".3f",
                                        what=f"{ALLOC_TOL} − the largest rise of the share from one width to the next")}


def decide_c2(per_seed: list[dict], cfg) -> Verdict:
    """c2 (ReLU toy, allocation by exact unit ablation): the top-3 share falls by ALLOC_DROP from the narrowest width
    that learned the most frequent task to the widest, and never rises by more than ALLOC_TOL — every seed."""
    parts = _c2_parts([n["sweep"]["relu"] for n in per_seed], cfg, "ReLU")
    return parts if isinstance(parts, Verdict) else all_of(parts, "allocation to the top tasks falls (ReLU)")


def check_eckart_young(per_seed: list[dict], cfg) -> Verdict:
    """k1 (linear toy): per-task errors within EY_TOL of the Eckart–Young rank-N optimum at every width, and the
    tasks learned grow with width in utility order (c1's criterion) — the theory, once SGD has converged."""
    sweeps = [n["sweep"]["linear"] for n in per_seed]
    dev = [float(np.max(np.abs(mean_errors(s) - np.asarray(s["optimal"])))) for s in sweeps]
    parts = _c1_parts(sweeps, cfg, "linear")
    c1 = parts if isinstance(parts, Verdict) else all_of(parts, "tasks learned grow")
    worst = [s["widths"][int(np.argmax(np.abs(mean_errors(s) - np.asarray(s["optimal"])).max(1)))] for s in sweeps]
    ok = all(d <= EY_TOL for d in dev) and c1.held is True
    return check(ok, f"max |error − Eckart–Young optimum| per seed {rounded(dev, 4)} (at widths {worst}; passes "
                     f"if ≤ {EY_TOL}: SGD reached the optimum); c1's criterion on the linear nets: {c1.status} — "
                     f"{c1.reason}", deviation=dev)


def check_linear_allocation(per_seed: list[dict], cfg) -> Verdict:
    """k2 (linear toy, allocation by path strength): c2's criterion on the linear nets."""
    parts = _c2_parts([n["sweep"]["linear"] for n in per_seed], cfg, "linear")
    v = parts if isinstance(parts, Verdict) else all_of(parts, "allocation to the top tasks falls (linear)")
    return check(v.held, f"c2's criterion on the linear nets: {v.status} — {v.reason}")


# ============================================================================ injection: c3, c4, c5, k3
def finals(inj: dict) -> dict[int, float]:
    """{width: final rare signal, mean of the seed's nets}."""
    return {c["width"]: float(np.mean(c["final"])) for c in inj["cells"]}


def rise_and_decay(cell: dict, retained: float) -> float:
    """Share of the nets whose signal rose visibly (peak ≥ VISIBLE_PEAK), lost at least FORGOT of each injection's
    gain before the next, and did not keep the task (final ≤ retained)."""
    ok = [p >= VISIBLE_PEAK and d is not None and d >= FORGOT and f <= retained
          for p, d, f in zip(cell["peak"], cell["decay_frac"], cell["final"])]
    return float(np.mean(ok))


def _slow_fast(runs: list[dict]) -> tuple[dict, dict]:
    by = sorted(runs, key=lambda r: r["period"])
    return by[-1], by[0]


def _kept_somewhere(runs_per_seed: list[list[dict]], cfg) -> Verdict | None:
    best = [max(max(finals(r).values()) for r in runs) for runs in runs_per_seed]
    if all(b <= cfg.retained for b in best):
        return undecided(f"not learned: no width keeps the rare task (final signal > {cfg.retained}) at any "
                         f"injection schedule in any seed (best per seed {rounded(best)})", best=best)
    return None


def _c3_parts(runs_per_seed: list[list[dict]], cfg) -> dict[str, Verdict]:
    ends, mono, rd, shown = [], [], [], []
    for i, runs in enumerate(runs_per_seed):
        slow, _ = _slow_fast(runs)
        f = finals(slow)
        w = sorted(f)
        ends.append(min(cfg.lost - f[w[0]], f[w[-1]] - cfg.retained))
        mono.append(VISIBLE_PEAK - max(0.0, *(f[a] - f[b] for a, b in pairwise(w))))
        cells = [(r["period"], c) for r in runs for c in r["cells"] if np.mean(c["final"]) <= cfg.retained]
        frac = {(p, c["width"]): rise_and_decay(c, cfg.retained) for p, c in cells}
        rd.append(max(frac.values(), default=0.0) - MAJORITY)
        best = max(frac, key=frac.get) if frac else None
        shown.append(f"seed #{i} every {slow['period']}: " + ", ".join(f"N={k}: {f[k]:.2f}" for k in w)
                     + (f"; most rise-and-decay: N={best[1]} every {best[0]} ({frac[best]:.2f} of nets)" if best
                        else "; every width keeps the task"))
    return {"lost at the narrowest, kept at the widest": by_threshold(
                ends, 0.0, fmt=".3f",
                what=f"min({cfg.lost} − final signal at the narrowest width, final at the widest − {cfg.retained}) "
                     f"at the slowest schedule ({'; '.join(shown)})"),
            "non-decreasing in width": by_threshold(
                mono, 0.0, fmt=".3f", what=f"{VISIBLE_PEAK} − the largest drop of the final signal from one width "
                                           "to the next"),
            "rise-and-decay below the threshold": by_threshold(
                rd, 0.0, fmt=".3f",
                what=f"the largest share of nets with rise-and-decay (peak ≥ {VISIBLE_PEAK}, ≥ {FORGOT} of each gain "
                     f"lost before the next injection, final ≤ {cfg.retained}) at a width that does not keep the "
                     f"task, at any schedule, minus {MAJORITY}")}


def decide_c3(per_seed: list[dict], cfg) -> Verdict:
    """c3 (ReLU toy): at the slowest schedule the narrowest width loses the rare task and the widest keeps it
    (after a full interval without it), the final signal does not fall with width, and a width that does not keep
    it shows rise-and-decay in most of its nets."""
    runs = [n["inj"]["relu"] for n in per_seed]
    gate = _kept_somewhere(runs, cfg)
    return gate or all_of(_c3_parts(runs, cfg), "retention threshold (ReLU)")


def undo_share(cells: list[dict]) -> tuple[float, float, float]:
    """Over the cells' nets and last cycles: (Σ first-order undoing U / Σ gain G, Σ realised undoing R / Σ G, mean
    G per injection)."""
    u = sum(float(np.sum(c["U"])) for c in cells)
    r = sum(float(np.sum(c["R"])) for c in cells)
    g = sum(float(np.sum(c["G"])) for c in cells)
    n = sum(np.size(c["G"]) for c in cells)
    return (u / g if g > 0 else math.nan), (r / g if g > 0 else math.nan), g / max(n, 1)


def _net_shares(cells: list[dict]) -> list[float]:
    out = []
    for c in cells:
        for u, g in zip(c["U"], c["G"]):
            if np.mean(g) >= GAIN_MIN:
                out.append(float(np.sum(u) / np.sum(g)))
    return out


def decide_c4(per_seed: list[dict], cfg) -> Verdict:
    """c4 (ReLU toy): over the last `cycles` intervals, the common steps' first-order effect on the rare error
    (Σ −η·g_common·g_rare per interval) undoes a share of each injection's gain that is at least UNDO_GAP larger
    at the widths that do not keep the rare task (final ≤ retained, as in c3's rise-and-decay) than at those that
    keep it, at every schedule with both; widths whose injections barely raise the signal (mean gain < GAIN_MIN)
    have nothing to overwrite and are left out."""
    runs = [n["inj"]["relu"] for n in per_seed]
    gate = _kept_somewhere(runs, cfg)
    if gate:
        return gate
    effect, noise, shown, missing = [], [], [], []
    for i, seed_runs in enumerate(runs):
        gaps = []
        for r in sorted(seed_runs, key=lambda r: -r["period"]):
            lose = [c for c in r["cells"] if np.mean(c["final"]) <= cfg.retained]
            keep = [c for c in r["cells"] if np.mean(c["final"]) > cfg.retained]
            moving = [c for c in lose if undo_share([c])[2] >= GAIN_MIN]
            if not keep or not moving:
                missing.append(f"seed #{i} every {r['period']}: "
                               + (", ".join(f"N={c['width']} gain {undo_share([c])[2]:.1e}" for c in lose)
                                  or "no width loses the task")
                               + ("" if keep else "; no width keeps it"))
                continue
            lo = undo_share(moving)
            hi = {c["width"]: undo_share([c]) for c in keep}
            worst = max(v[0] for v in hi.values())
            gaps.append(lo[0] - worst)
            net = _net_shares(moving)
            noise.append(statistics.stdev(net) / math.sqrt(len(net)) if len(net) > 1 else 0.0)
            shown.append(f"seed #{i} every {r['period']}: not keeping N={[c['width'] for c in moving]} first-order "
                         f"{lo[0]:.2f} (realised {lo[1]:.2f}, gain {lo[2]:.1e}) vs keeping "
                         + ", ".join(f"N={w} {v[0]:.2f} (realised {v[1]:.2f}, gain {v[2]:.1e})" for w, v in hi.items()))
        effect.append(min(gaps) if gaps else None)
    if any(e is None for e in effect):
        return undecided("not learned (no rise to undo): at no schedule of some seed does a width that does not keep "
                         f"the rare task (final signal ≤ {cfg.retained}) gain"
                         f" at least {GAIN_MIN} per injection while another width keeps it ("
                         + "; ".join(missing) + ")", missing=missing)
    return by_threshold(effect, UNDO_GAP, noise=max(noise), fmt=".3f",
                        what="share of each injection's gain undone by the common steps' first-order effect "
                             "(Σ −η·g_common·g_rare over the interval ÷ the gain, last cycles, pooled over nets) at "
                             "the widths that do not keep the task minus the largest at a keeping width, the smallest over schedules ("
                             + "; ".join(shown) + "; noise = the largest standard error of the losing widths' "
                             "per-net shares)")


def _c5_parts(runs_per_seed: list[list[dict]], cfg) -> dict[str, Verdict]:
    flips, reverse, shown = [], [], []
    for i, runs in enumerate(runs_per_seed):
        slow, fast = _slow_fast(runs)
        fs, ff = finals(slow), finals(fast)
        flips.append(max(min(cfg.lost - fs[w], ff[w] - cfg.retained) for w in fs))
        reverse.append(-sum(fs[w] > cfg.retained and ff[w] < cfg.retained for w in fs))
        shown.append(f"seed #{i} every {slow['period']} → {fast['period']}: "
                     + ", ".join(f"N={w}: {fs[w]:.2f}→{ff[w]:.2f}" for w in sorted(fs)))
    return {"a width flips from lost to kept": by_threshold(
                flips, 0.0, fmt=".3f",
                what=f"the largest min({cfg.lost} − final signal at the slow schedule, final at the fast one − "
                     f"{cfg.retained}) over widths ({'; '.join(shown)})"),
            "none flips back": by_threshold(reverse, -0.5, fmt=".3g",
                                            what="−(widths kept at the slow schedule but lost at the fast one)")}


def decide_c5(per_seed: list[dict], cfg) -> Verdict:
    """c5 (ReLU toy): injecting more often turns some width from losing the rare task (< lost) to keeping it
    (> retained), and no width that keeps it at the slow rate loses it at the fast one."""
    runs = [n["inj"]["relu"] for n in per_seed]
    gate = _kept_somewhere(runs, cfg)
    return gate or all_of(_c5_parts(runs, cfg), "frequency substitutes for width (ReLU)")


def check_linear_retention(per_seed: list[dict], cfg) -> Verdict:
    """k3 (linear toy): c3's and c5's criteria on linear nets, whose retention threshold is the Eckart–Young
    capacity (the common tasks' directions plus the rare task's rank)."""
    if any(not n["inj"].get("linear") for n in per_seed):
        return check(None, "not run: the linear injection runs are off in this preset (linear_inj_widths is empty, "
                           "as at tiny for the time budget); run --preset small")
    runs = [n["inj"]["linear"] for n in per_seed]
    gate = _kept_somewhere(runs, cfg)
    if gate:
        return check(False, f"no linear width keeps the rare task: {gate.reason}")
    c3 = all_of(_c3_parts(runs, cfg), "retention threshold (linear)")
    c5 = all_of(_c5_parts(runs, cfg), "frequency substitutes (linear)")
    return check(c3.held is True and c5.held is True, f"c3's criterion: {c3.status} — {c3.reason}. c5's criterion: "
                 f"{c5.status} — {c5.reason}")


# ============================================================================ the LM ladder: c6
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


def lm_grid(cells: list[dict]) -> tuple[list[tuple[int, int]], list[float], dict]:
    """(sizes small→large, frequencies low→high, {(layers, d_model, freq): cell})."""
    sizes = sorted({(c["layers"], c["d_model"]) for c in cells}, key=lambda s: s[0] * s[1] ** 2)
    freqs = sorted({c["freq"] for c in cells})
    return sizes, freqs, {(c["layers"], c["d_model"], c["freq"]): c for c in cells}


def lowest_learned(cells: list[dict], thr: float) -> dict[tuple[str, tuple[int, int]], float]:
    """{(task, size): lowest frequency at which the task is learned (accuracy on trained pairs ≥ thr), inf if
    never}."""
    sizes, freqs, by = lm_grid(cells)
    tasks = list(cells[0]["tasks"])
    out = {}
    for t in tasks:
        for s in sizes:
            ok = [f for f in freqs if by[(*s, f)]["tasks"][t]["acc_train"] >= thr]
            out[(t, s)] = min(ok) if ok else math.inf
    return out


def decide_c6(per_seed: list[dict], cfg) -> Verdict:
    """c6 (LM ladder): the lowest injection frequency at which a task is learned does not rise with size and is at
    least one grid step lower for the largest model than for the smallest in some task, and the background
    gradient's interference with the tasks falls LM_RATIO× from the smallest to the largest model — every seed.
    Undecided (not learned) when no cell below the top frequency learns a task."""
    if not cfg.lm:
        return undecided("moved to small for the time budget: the LM ladder is not part of the tiny preset (it "
                         "trains len(lm_sizes) × len(lm_freqs) GPTs per seed); run --preset small or gpu")
    ladders = [n.get("lm") or [] for n in per_seed]
    if any(not cells for cells in ladders):
        return undecided("the LM ladder of some seed recorded no cell (the run stopped before it finished)")
    thr = cfg.lm_learned_acc
    shift, ratio, shown = [], [], []
    below_top = False
    for i, cells in enumerate(ladders):
        sizes, freqs, by = lm_grid(cells)
        tasks = list(cells[0]["tasks"])
        low = lowest_learned(cells, thr)
        below_top |= any(v < max(freqs) for v in low.values())
        grid = {f: j for j, f in enumerate(freqs)}
        step = {k: (len(freqs) if v == math.inf else grid[v]) for k, v in low.items()}  # grid index, never = top+1
        mono = all(step[(t, b)] <= step[(t, a)] for t in tasks for a, b in pairwise(sizes))
        best = max(step[(t, sizes[0])] - step[(t, sizes[-1])] for t in tasks)
        shift.append(float(best) if mono else min(0.0, float(best)))
        itf_by = {s: lm_interference([by[(*s, f)] for f in freqs], tasks) for s in sizes}
        ratio.append(itf_by[sizes[0]]["projection"] / max(itf_by[sizes[-1]]["projection"], 1e-30))
        shown.append(f"seed #{i}: lowest learned frequency small→large "
                     + "; ".join(f"{t}: " + ", ".join("never" if low[(t, s)] == math.inf else f"{low[(t, s)]:g}"
                                                      for s in sizes) for t in tasks)
                     + f" ({'monotone' if mono else 'not monotone'}); |g_bg·ĝ_task| "
                     + ", ".join(f"d{s[1]}: {itf_by[s]['projection']:.3g}" for s in sizes))
    if not below_top:
        acc = "; ".join(f"seed #{i}: " + ", ".join(
            f"{t} L{c['layers']}d{c['d_model']}@{c['freq']:g} {c['tasks'][t]['acc_train']:.2f}"
            for c in cells for t in c["tasks"]) for i, cells in enumerate(ladders))
        return undecided(f"not learned: no cell below the top frequency {max(lm_grid(ladders[0])[1]):g}/batch "
                         f"learns a task (accuracy on trained pairs ≥ {thr}), so the learned-frequency frontier "
                         f"cannot move; accuracies {acc}", shown=shown)
    parts = {"frontier moves to lower frequencies": by_threshold(
                 shift, LM_SHIFT, fmt=".3g",
                 what="grid steps by which the largest model's lowest learned frequency lies below the smallest's, "
                      "best task, if no task's frontier rises with size (" + "; ".join(shown) + ")"),
             "less interference": by_threshold(
                 ratio, LM_RATIO, fmt=".3g",
                 what="|g_background·ĝ_task| (mean over tasks, frequencies and the second half of training), "
                      "smallest ÷ largest model")}
    return all_of(parts, "larger LMs learn rarer tasks with less interference")


def decide(per_seed: list[dict], cfg) -> dict[str, Verdict]:
    return {"c1_tasks_learned_grow": decide_c1(per_seed, cfg), "c2_allocation": decide_c2(per_seed, cfg),
            "c3_retention_threshold": decide_c3(per_seed, cfg), "c4_interference": decide_c4(per_seed, cfg),
            "c5_frequency_substitutes": decide_c5(per_seed, cfg), "c6_lm_rare_tasks": decide_c6(per_seed, cfg),
            "k1_linear_eckart_young": check_eckart_young(per_seed, cfg),
            "k2_linear_allocation": check_linear_allocation(per_seed, cfg),
            "k3_linear_retention": check_linear_retention(per_seed, cfg)}
