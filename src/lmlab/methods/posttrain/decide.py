"""How rl_checkpoints decides, from the per-seed numbers of `measure` (pure functions; `lmlab.verdict.RULE`).

A seed's numbers: `checkpoints` (per pre-training step: `ready`, the base's pass@n on the RL training prompts, and
`arms`, per pipeline the test pass@1 / pass@n, per-question correct counts, general capability and RL
diagnostics), `mixed_lr` (the parallel-averaging SFT LR grid and the validation scores that chose from it) and
`data_arm` (before / after RL for the base mix, the targeted mix and the 2x model at the latest checkpoint). Pass-rate
effects count beyond their margin and beyond 2 standard errors over the test questions (paired), the measured
sampling noise of the difference.
"""

from __future__ import annotations

import math

import numpy as np

from lmlab.evaluate import pass_at_k
from lmlab.verdict import Verdict, all_of, by_threshold, check, rounded, undecided

CLAIMS = {
    "c1_too_early": "RL is effective as soon as the base sometimes samples a verified solution on the RL training "
                    "prompts: at the checkpoints whose RL-readiness (base pass@n on those prompts) is in the lowest "
                    "non-zero bin, RL raises test pass@1 by a margin.",
    "c2_expand_vs_sharpen": "RL from a base checkpoint raises pass@1 and pass@k_max (expansion); RL after SFT "
                            "raises pass@1 but not pass@k_max (sharpening).",
    "c3_general": "General capability is about unchanged by RL and degraded by SFT (on two measures: held-out loss "
                  "on the general language and the loss of in-context copy answers).",
    "c4_parallel_avg": "Parallel averaging (its SFT learning rate chosen on a validation split) reaches the best "
                       "pass@k_max of all pipelines while preserving general capability as RL does.",
    "c5_data_vs_size": "Targeted pre-training data (more hard problems) raises the RL gain (test pass@1 after minus "
                       "before RL) more than the base mix does and more than doubling model size does.",
}
CHECKS = {
    "k1_zero_reward_zero_update": "Where every RL group had zero reward (the base never succeeds on the RL prompts), "
                                  "the RL update is exactly zero: the RL row equals the base row (cannot fail unless "
                                  "the GRPO implementation is wrong).",
    "k2_rl_plateau": "Every RL run stopped on a flat training reward before its step cap (RL trained to a plateau).",
}

# ---- margins, each with its source (committed before the runs of this version)
M_RL_GAIN = 0.10  # c1: the previous version's committed margin; the paper's first useful GSM8K checkpoint gains
#                   +0.16 pass@1 (2 % -> 18 %, spec §9)
READY_LOW = 0.25  # c1: the lowest non-zero readiness bin (0, 0.25]: the base solves at most a quarter of the RL
#                   prompts in n samples ("sometimes"); own design, fixed before the dense-grid runs
READY_BINS = (0.0, READY_LOW, 0.75, 1.0)  # the bins the summary tabulates
M_PASS1 = 0.05  # c2: pass@1 rise (the previous version's committed margin)
M_PASSK = 0.03  # c2: pass@k_max rise that counts as expansion (the previous version's committed margin)
SATURATED = 0.98  # c2/c4: pass@k_max at or above this cannot show a difference (the previous version's line)
M_NLL = 0.02  # c3/c4: nats of general loss (the previous version's committed margin)
UNIFORM = math.log(16)  # the loss of a uniform guess over the 16 letters of the general suite
LEARNED_NLL = 0.10  # c3: a general measure carries signal when the base is this far below uniform guessing
M_PASSK_TIE = 0.02  # c4: pass@k_max within this of the best counts as best (the previous version's margin)
M_DATA = 0.05  # c5: RL-gain advantage (the previous version's committed margin; spec §11.2 criterion 5 gives none)
POST = ("rl", "sft", "sft_gold", "sft_rl", "parallel_avg")


def se_diff(a: list[int], b: list[int], n: int, k: int) -> float:
    """Standard error over questions of pass@k(a) − pass@k(b), paired (correct counts a, b of n per question)."""
    d = [pass_at_k(n, x, k) - pass_at_k(n, y, k) for x, y in zip(a, b)]
    return float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")


def _noise(ses: list[float]) -> float | None:
    """2 SE (the largest over seeds) as the replicate noise of a pass-rate difference; None when unmeasured."""
    ok = [s for s in ses if math.isfinite(s)]
    return 2 * max(ok) if ok else None


def _rows(seed_numbers: dict) -> list[dict]:
    return seed_numbers["checkpoints"]


# ============================================================================ c1
def decide_c1(per_seed: list[dict], cfg) -> Verdict:
    """Per seed: the mean RL test Δpass@1 over the checkpoints whose readiness lies in (0, READY_LOW]; seeds whose
    grid has no such checkpoint do not vote (listed)."""
    gains, ses, shown, missed = [], [], [], []
    for i, s in enumerate(per_seed):
        n = s["n"]
        ready = {r["step"]: r["ready"]["passk"] for r in _rows(s)}
        low = [r for r in _rows(s) if 0 < r["ready"]["passk"] <= READY_LOW and "rl" in r["arms"]]
        if not low:
            missed.append(f"seed #{i} readiness {({k: round(v, 3) for k, v in ready.items()})}")
            continue
        g = [r["arms"]["rl"]["pass1"] - r["arms"]["base"]["pass1"] for r in low]
        gains.append(float(np.mean(g)))
        ses.append(max(se_diff(r["arms"]["rl"]["counts"], r["arms"]["base"]["counts"], n, 1) for r in low))
        shown.append(f"seed #{i} steps {[r['step'] for r in low]} (readiness {rounded(ready[r['step']] for r in low)}, "
                     f"base test pass@1 {rounded(r['arms']['base']['pass1'] for r in low)}, RL gain {rounded(g)})")
    if not gains:
        return undecided(f"the checkpoint grid has no checkpoint with RL-readiness in (0, {READY_LOW}] in any seed, "
                         "so 'as soon as the base sometimes succeeds' is not tested: " + "; ".join(missed))
    v = by_threshold(gains, M_RL_GAIN, noise=_noise(ses), fmt=".3f",
                     what=f"RL test Δpass@1 at readiness (0, {READY_LOW}]: " + "; ".join(shown)
                          + (f" [no such checkpoint, not voting: {'; '.join(missed)}]" if missed else "")
                          + "; noise = 2 SE over test questions")
    return v


# ============================================================================ c2
def _c2_point(row: dict) -> bool:
    a = row["arms"]
    return (row["ready"]["passk"] > 0 and all(k in a for k in ("rl", "sft", "sft_rl"))
            and 0 < a["base"]["passk"] < SATURATED and a["sft"]["passk"] < SATURATED)


def no_rise(per_seed: list[float], ses: list[float], margin: float, what: str) -> Verdict:
    """'Does not rise by `margin`', per seed: yes when estimate + 2 SE < margin, no when estimate − 2 SE ≥ margin
    (it rose beyond the noise), else that seed is underpowered; the seeds must agree (RULE)."""
    states = [True if e + 2 * s < margin else False if e - 2 * s >= margin else None for e, s in zip(per_seed, ses)]
    head = (f"{what} per seed {rounded(per_seed)} ± 2 SE {rounded(2 * s for s in ses)} vs margin {margin} (no rise "
            f"needs estimate + 2 SE < margin; a rise needs estimate − 2 SE >= margin)")
    common = {"effect": float(np.mean(per_seed)), "per_seed": tuple(per_seed), "margin": margin,
              "threshold": margin, "n": len(per_seed), "noise": _noise(ses)}
    if all(x is True for x in states):
        return Verdict(True, f"{head}: no rise in every seed", **common)
    if all(x is False for x in states):
        return Verdict(False, f"{head}: it rose in every seed", **common)
    return Verdict(None, f"seeds disagree or underpowered: {head}: per seed {states}", **common)


def decide_c2(per_seed: list[dict], cfg) -> Verdict:
    """At each seed's latest checkpoint with an unsaturated, non-zero base pass@k_max and an unsaturated SFT."""
    pts = []
    for s in per_seed:
        rows = [r for r in _rows(s) if _c2_point(r)]
        if not rows:
            return undecided(f"at no checkpoint of some seed are the base's pass@{s['n']} in (0, {SATURATED}) and "
                             f"SFT's below it with RL signal, so k_max cannot show expansion vs sharpening: base / "
                             f"SFT pass@{s['n']} per step "
                             + ", ".join(f"{r['step']}: {r['arms']['base']['passk']:.3f} / "
                                         f"{r['arms'].get('sft', {}).get('passk', float('nan')):.3f}"
                                         for r in _rows(s)))
        pts.append((s["n"], rows[-1]))
    steps = [r["step"] for _, r in pts]

    def diff(a, b, k):
        vals = [r["arms"][a]["pass1" if k == 1 else "passk"] - r["arms"][b]["pass1" if k == 1 else "passk"]
                for _, r in pts]
        ses = [se_diff(r["arms"][a]["counts"], r["arms"][b]["counts"], n, 1 if k == 1 else n) for n, r in pts]
        return vals, ses

    d1, e1 = diff("rl", "base", 1)
    dk, ek = diff("rl", "base", "k")
    s1, f1 = diff("sft_rl", "sft", 1)
    sk, fk = diff("sft_rl", "sft", "k")
    where = f" (steps per seed {steps}; noise = 2 SE over test questions)"
    return all_of({
        "RL from base raises pass@1": by_threshold(d1, M_PASS1, noise=_noise(e1), fmt=".3f",
                                                   what="RL − base pass@1" + where),
        "RL from base raises pass@k_max": by_threshold(dk, M_PASSK, noise=_noise(ek), fmt=".3f",
                                                       what="RL − base pass@k_max" + where),
        "SFT→RL raises pass@1": by_threshold(s1, M_PASS1, noise=_noise(f1), fmt=".3f",
                                             what="SFT→RL − SFT pass@1" + where),
        "SFT→RL does not raise pass@k_max": no_rise(sk, fk, M_PASSK, "SFT→RL − SFT pass@k_max" + where),
    }, "RL from base expands, RL after SFT sharpens")


# ============================================================================ c3
def _ready_rows(s: dict, arms: tuple) -> list[dict]:
    """The checkpoints where RL has signal (readiness > 0) and every arm in `arms` ran."""
    return [r for r in _rows(s) if r["ready"]["passk"] > 0 and all(a in r["arms"] for a in arms)]


def decide_c3(per_seed: list[dict], cfg) -> Verdict:
    """Per seed, the change of each general measure against the base, mean over the checkpoints with RL signal:
    |ΔRL| below M_NLL, and ΔSFT − ΔRL at least M_NLL, on both measures; a measure on which the base is not M below
    uniform guessing carries no signal (not learned)."""
    rows = [_ready_rows(s, ("rl", "sft")) for s in per_seed]
    if not all(rows):
        return undecided("no checkpoint with RL signal (readiness > 0) and both the rl and sft arms in some seed: "
                         f"checkpoints per seed {[[r['step'] for r in rr] for rr in rows]}")
    parts = {}
    for key, name in (("general_nll", "general-language loss"), ("copy_nll", "copy-answer loss")):
        d = {a: [float(np.mean([r["arms"][a][key] - r["arms"]["base"][key] for r in rr])) for rr in rows]
             for a in ("rl", "sft")}
        base = [float(np.mean([r["arms"]["base"][key] for r in rr])) for rr in rows]
        if max(base) > UNIFORM - LEARNED_NLL:
            parts[f"{name}: RL unchanged"] = undecided(
                f"not learned: the base's {name} {rounded(base)} per seed is not {LEARNED_NLL} below uniform guessing "
                f"({UNIFORM:.3f}), so this measure carries no signal")
            continue
        parts[f"{name}: RL unchanged"] = by_threshold(
            [-abs(x) for x in d["rl"]], -M_NLL, fmt=".4f",
            what=f"−|RL − base| {name} (nats; RL change per seed {rounded(d['rl'], 4)}; held needs |Δ| < {M_NLL})")
        parts[f"{name}: SFT degrades beyond RL"] = by_threshold(
            [a - b for a, b in zip(d["sft"], d["rl"])], M_NLL, fmt=".4f",
            what=f"(SFT − base) − (RL − base) {name} (nats; SFT change per seed {rounded(d['sft'], 4)})")
    return all_of(parts, "general capability unchanged by RL, degraded by SFT (checkpoints with RL signal: "
                  f"{[[r['step'] for r in rr] for rr in rows]})")


# ============================================================================ c4
def decide_c4(per_seed: list[dict], cfg) -> Verdict:
    """Per seed, at the checkpoints with RL signal where parallel averaging is unsaturated: its pass@k_max minus the
    best other arm's (the smallest over those checkpoints) against −M_PASSK_TIE, and its general-loss change minus
    RL's against M_NLL."""
    grids = [s["mixed_lr"]["grid"] for s in per_seed]
    if min(len(g) for g in grids) < 2:
        return undecided(f"the parallel-averaging SFT learning rate was not swept (grid {grids[0]}) while the paper "
                         "swept it: run --preset small or gpu")
    arms = tuple(a for a in POST if all(a in r["arms"] for s in per_seed for r in _ready_rows(s, ("rl",))))
    if not {"rl", "parallel_avg"} <= set(arms):
        return undecided(f"needs the rl and parallel_avg pipelines at every checkpoint with RL signal (have {arms})")
    gaps, pres, shown = [], [], []
    for i, s in enumerate(per_seed):
        rows = [r for r in _ready_rows(s, arms) if r["arms"]["parallel_avg"]["passk"] < SATURATED]
        if not rows:
            return undecided(f"parallel averaging's pass@{s['n']} is saturated (>= {SATURATED}) at every checkpoint "
                             f"with RL signal of seed #{i}, so 'best' cannot be told from 'tied'")
        best = [max(r["arms"][a]["passk"] for a in ("base",) + arms if a != "parallel_avg") for r in rows]
        pa = [r["arms"]["parallel_avg"]["passk"] for r in rows]
        if max(best + pa) == 0:
            return undecided(f"not learned: no arm solves a test question (pass@{s['n']} = 0) at the checkpoints "
                             f"{[r['step'] for r in rows]} of seed #{i}")
        gaps.append(min(p - b for p, b in zip(pa, best)))
        pres.append(float(np.mean([(r["arms"]["parallel_avg"]["general_nll"] - r["arms"]["rl"]["general_nll"])
                                   for r in rows])))
        shown.append(f"seed #{i} (SFT LR {s['mixed_lr']['chosen']}) steps {[r['step'] for r in rows]}: parallel_avg "
                     f"{rounded(pa)} vs best other {rounded(best)}")
    return all_of({
        "best pass@k_max": by_threshold(gaps, -M_PASSK_TIE, fmt=".3f",
                                        what="parallel_avg − best other arm pass@k_max (smallest over checkpoints; "
                                             f"best when above −{M_PASSK_TIE}): " + "; ".join(shown)),
        "preserves general capability": by_threshold(
            [-x for x in pres], -M_NLL, fmt=".4f",
            what=f"−(parallel_avg − RL) general-language loss (nats; preserved when the excess is below {M_NLL})"),
    }, f"parallel averaging best on pass@k_max ({', '.join(arms)} and base compared) and keeps general capability")


# ============================================================================ c5
def _gain_diff(a: dict, b: dict, n: int) -> tuple[float, float]:
    """(RL gain of a − RL gain of b on test pass@1, its SE over questions)."""
    g = lambda x: x["after"]["pass1"] - x["before"]["pass1"]
    per_q = [(ta - tb) / n - (ba - bb) / n for ta, tb, ba, bb in
             zip(a["after"]["counts"], a["before"]["counts"], b["after"]["counts"], b["before"]["counts"])]
    se = float(np.std(per_q, ddof=1) / math.sqrt(len(per_q))) if len(per_q) > 1 else float("nan")
    return g(a) - g(b), se


def decide_c5(per_seed: list[dict], cfg) -> Verdict:
    """The targeted mix's RL gain minus the base mix's and minus the 2x model's, per seed. Undecided when some model's
    base never samples a verified test solution (not learned), or when the 2x model is worse than the 1x model at its
    base checkpoint (no stronger baseline)."""
    arms = [s.get("data_arm") for s in per_seed]
    if not all(arms):
        return undecided("this preset does not run the data-composition arm (data_arm false): run --preset small "
                         "or gpu")
    tg, bm, big = "targeted mix", "base mix", "base mix, 2x model"
    n = per_seed[0]["n"]
    unlearned = {nm: rounded(a[nm]["before"]["passk"] for a in arms) for nm in (tg, bm, big)}
    unlearned = {nm: v for nm, v in unlearned.items() if min(v) == 0}
    if unlearned:  # learned before compared: a base that never samples a verified test solution has no RL gain to show
        return undecided("not learned: at the latest checkpoint the base of "
                         + "; ".join(f"the {nm} never samples a verified test solution in some seed (pass@{n} per "
                                     f"seed {v})" for nm, v in unlearned.items()), passk=unlearned)
    b1 = [a[bm]["before"]["pass1"] for a in arms]
    b2 = [a[big]["before"]["pass1"] for a in arms]
    if any(y < x for x, y in zip(b1, b2)):
        return undecided(f"the 2x model is not at least as good as the 1x model at its base checkpoint (test pass@1 "
                         f"per seed: 2x {rounded(b2)} vs 1x {rounded(b1)}), so it is no stronger model to compare RL "
                         "gains with",
                         pass1_2x=b2, pass1_1x=b1)
    vs_base = [_gain_diff(a[tg], a[bm], n) for a in arms]
    vs_big = [_gain_diff(a[tg], a[big], n) for a in arms]
    gains = {nm: rounded(a[nm]["after"]["pass1"] - a[nm]["before"]["pass1"] for a in arms) for nm in (tg, bm, big)}
    note = f" (RL gain per seed: {gains}; noise = 2 SE over test questions)"
    return all_of({
        "targeted beats the base mix": by_threshold([d for d, _ in vs_base], M_DATA, noise=_noise([e for _, e in vs_base]),
                                                    fmt=".3f", what="targeted − base-mix RL gain" + note),
        "targeted beats the 2x model": by_threshold([d for d, _ in vs_big], M_DATA, noise=_noise([e for _, e in vs_big]),
                                                    fmt=".3f", what="targeted − 2x-model RL gain"),
    }, "targeted data raises the RL gain more than the base mix and the 2x model")


# ============================================================================ checks
def decide_k1(per_seed: list[dict], cfg) -> Verdict:
    same, runs = [], []
    for i, s in enumerate(per_seed):
        for r in _rows(s):
            rl = r["arms"].get("rl")
            if rl is not None and rl.get("rl_frac_zero_std") == 1.0 and rl.get("rl_end_reward") == 0:
                b = r["arms"]["base"]
                same.append(all(rl[k] == b[k] for k in ("counts", "general_nll", "copy_nll")))
                runs.append(f"seed #{i} step {r['step']}: {'identical' if same[-1] else 'differs'}")
    if not same:
        return check(None, "no RL run had zero reward in every group (every checkpoint had some RL signal)")
    return check(all(same), "RL rows at zero-reward checkpoints vs base: " + "; ".join(runs))


def decide_k2(per_seed: list[dict], cfg) -> Verdict:
    runs = [(f"seed #{i} step {r['step']} {a}", v) for i, s in enumerate(per_seed) for r in _rows(s)
            for a, v in r["arms"].items() if "rl_steps" in v]
    runs += [(f"seed #{i} data arm {nm}", v["after"]) for i, s in enumerate(per_seed)
             for nm, v in (s.get("data_arm") or {}).items() if "rl_steps" in v["after"]]
    capped = [f"{name} ({v['rl_steps']} steps, end reward {v.get('rl_end_reward', float('nan')):.3f})"
              for name, v in runs if not v["rl_plateau"]]
    steps = [v["rl_steps"] for _, v in runs]
    if not runs:
        return check(None, "no RL run")
    return check(not capped, f"{len(runs) - len(capped)} of {len(runs)} RL runs stopped on a flat training reward "
                 f"(steps run: median {np.median(steps):.0f}, max {max(steps)})"
                 + (f"; at the step cap {cfg.rl_steps} while still rising: {'; '.join(capped)}" if capped else ""))


def decide(per_seed: list[dict], cfg) -> dict[str, Verdict]:
    return {"c1_too_early": decide_c1(per_seed, cfg), "c2_expand_vs_sharpen": decide_c2(per_seed, cfg),
            "c3_general": decide_c3(per_seed, cfg), "c4_parallel_avg": decide_c4(per_seed, cfg),
            "c5_data_vs_size": decide_c5(per_seed, cfg),
            "k1_zero_reward_zero_update": decide_k1(per_seed, cfg), "k2_rl_plateau": decide_k2(per_seed, cfg)}
