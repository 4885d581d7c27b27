"""How calm_kv decides, from the per-seed numbers of `measure` (pure functions; `lmlab.verdict.RULE`).

Each claim reads one row — a KV-MATH format with a rehearsal share — named in its text: the composition claims
decide on the direct format (the paper's) with bridges trained on D_C alone (the paper's setting); the fine-tune
comparisons also on the rehearsal row, where CALM and the fine-tuned anchor see the same share of anchor-labelled
NUM-MATH. The noise of a difference of two accuracies is twice the binomial standard error of that difference on
the seed's evaluation prompts (the sampling noise of the eval set), the largest over the seeds.
"""

from __future__ import annotations

import dataclasses
import math

from lmlab.verdict import Verdict, all_of, by_threshold, rounded, undecided

# ---- margins, each with its source (committed before any run of this version)
SUBS_MIN = 0.8  # augment_knows_values: the previous version's committed KV-SUBS floor (paper Table 1: 98.1 %)
MATH_MAX = 0.2  # both base models' KV-MATH ceiling, the previous version's (paper Table 1: 0.7 and 0.0 %)
NUM_MIN = 0.6  # anchor_does_arithmetic: the previous version's NUM-MATH floor (paper Table 1: 73.7 %)
SOLVE_MARGIN = 0.3  # composed_solves_heldout: the previous version's margin over the better base model (paper: 84.3
#                     vs 0.7 %); also how far above the base models an arm must score on D_C keys to count as learned
RANDOM_GAP = 0.2  # gain_needs_augment: the previous version's margin of CALM over a random augmenting model
KEEP_MARGIN = 0.1  # calm_keeps_anchor_skill: the previous version's tolerance (paper Table 1: 72.0 vs 73.7 %)
FT_GAP = 0.2  # beats_anchor_finetune: the previous version's margin of CALM over the fine-tuned anchor
FORGET_MARGIN = KEEP_MARGIN  # finetune_forgets_calm_keeps: CALM keeps ≥ this much more NUM-MATH (the keep tolerance)
PAPER_FORMAT = "direct"


def diff_noise(pairs, n_evals) -> float:
    """Twice the binomial standard error of p1 − p2 on n prompts each, the largest over the seeds."""
    return max(2 * math.sqrt((a * (1 - a) + b * (1 - b)) / max(1, n)) for (a, b), n in zip(pairs, n_evals))


def _row(per_seed: list[dict], fmt: str, share: str) -> tuple[str, Verdict | None]:
    """The row's name and None, or an undecided verdict when some seed did not measure that row."""
    name = f"{fmt}/{share}"
    if all(name in n["rows"] for n in per_seed):
        return name, None
    why = {"dc_only": f"the {fmt} format was not measured (formats lists the measured ones)",
           "rehearsal": f"the {fmt} rehearsal row was not measured (rehearsal lists its formats)"}[share]
    return name, undecided(f"moved to small for the time budget: {why}; run --preset small")


def _arm(per_seed: list[dict], row: str, arm: str) -> Verdict | None:
    if all(arm in n["rows"][row] for n in per_seed):
        return None
    return undecided(f"moved to small for the time budget: the {arm} baseline was not trained (baselines lists the "
                     "trained ones); run --preset small")


def best_base(n: dict, fmt: str) -> float:
    """The better base model's held-out KV-MATH in format `fmt`."""
    return max(n["base"]["aug"]["kv_math"][fmt], n["base"]["anchor"]["kv_math"][fmt])


def _bases_learned(per_seed: list[dict], fmt: str) -> Verdict | None:
    subs = [n["base"]["aug"]["kv_subs"][fmt] for n in per_seed]
    num = [n["base"]["anchor"]["num_math"][fmt] for n in per_seed]
    if min(subs) >= SUBS_MIN and min(num) >= NUM_MIN:
        return None
    return undecided(f"not learned: a base model lacks its skill (augmenting KV-SUBS per seed {rounded(subs, 2)} vs "
                     f"{SUBS_MIN}; anchor {fmt} NUM-MATH per seed {rounded(num, 2)} vs {NUM_MIN})", kv_subs=subs,
                     num_math=num)


def _arms_learned(per_seed: list[dict], fmt: str, row: str, arms: list[str]) -> Verdict | None:
    """Undecided when an arm did not fit the composition data: its D_C-key KV-MATH is not SOLVE_MARGIN above the
    better base model in every seed."""
    for arm in arms:
        gain = [n["rows"][row][arm]["dc"] - best_base(n, fmt) for n in per_seed]
        if min(gain) <= SOLVE_MARGIN:
            dc = [n["rows"][row][arm]["dc"] for n in per_seed]
            return undecided(f"not learned: {arm} did not fit D_C ({row}): KV-MATH on D_C keys per seed "
                             f"{rounded(dc, 2)}, {rounded(gain, 2)} above the better base model, vs {SOLVE_MARGIN} "
                             "needed", dc=dc)
    return None


def _gate(per_seed, fmt, share, arms) -> tuple[str, Verdict | None]:
    row, missing = _row(per_seed, fmt, share)
    if missing:
        return row, missing
    for arm in arms:
        if (m := _arm(per_seed, row, arm)) is not None:
            return row, m
    return row, _bases_learned(per_seed, fmt) or _arms_learned(per_seed, fmt, row, arms[:1])


# ============================================================================ the base models
def _base_model(per_seed: list[dict], fmt: str, model: str, name: str, skill: str, floor: float, skill_label: str,
                kvm_label: str) -> Verdict:
    """A base model has its own skill (`skill` accuracy ≥ `floor`) but not the composed one (KV-MATH ≤ MATH_MAX)."""
    base = [n["base"][model] for n in per_seed]
    if any(fmt not in b[skill] or fmt not in b["kv_math"] for b in base):
        return undecided(f"the {fmt} format was not measured (formats lists the measured ones)")
    own, kvm = [b[skill][fmt] for b in base], [b["kv_math"][fmt] for b in base]
    short = skill_label.split()[-1]
    return by_threshold([min(a - floor, MATH_MAX - k) for a, k in zip(own, kvm)], 0.0, fmt=".3g",
                        what=f"min({skill_label} − {floor}, {MATH_MAX} − {kvm_label}) of the {name} ({short} per seed "
                             f"{rounded(own, 2)}, KV-MATH {rounded(kvm, 2)})")


def decide_augment(per_seed: list[dict], cfg=None, fmt: str = PAPER_FORMAT) -> Verdict:
    return _base_model(per_seed, fmt, "aug", "augmenting model", "kv_subs", SUBS_MIN, "KV-SUBS", f"{fmt} KV-MATH")


def decide_anchor(per_seed: list[dict], cfg=None, fmt: str = PAPER_FORMAT) -> Verdict:
    return _base_model(per_seed, fmt, "anchor", "anchor", "num_math", NUM_MIN, f"{fmt} NUM-MATH", "KV-MATH")


# ============================================================================ the composition
def decide_solves(per_seed: list[dict], cfg=None, fmt: str = PAPER_FORMAT) -> Verdict:
    """CALM's held-out KV-MATH minus the better base model's, on the D_C-alone row of `fmt`."""
    row, gate = _gate(per_seed, fmt, "dc_only", ["calm"])
    if gate:
        return gate
    calm = [n["rows"][row]["calm"]["heldout"] for n in per_seed]
    base = [best_base(n, fmt) for n in per_seed]
    noise = diff_noise(zip(calm, base), [n["rows"][row]["calm"]["n"] for n in per_seed])
    return by_threshold([c - b for c, b in zip(calm, base)], SOLVE_MARGIN, noise=noise, fmt=".3g",
                        what=f"CALM's held-out KV-MATH ({row}) minus the better base model's (CALM per seed "
                             f"{rounded(calm, 2)}, base {rounded(base, 2)})")


def decide_gain(per_seed: list[dict], cfg=None, fmt: str = PAPER_FORMAT) -> Verdict:
    row, gate = _gate(per_seed, fmt, "dc_only", ["calm", "random_augment"])
    if gate:
        return gate
    calm = [n["rows"][row]["calm"]["heldout"] for n in per_seed]
    rnd = [n["rows"][row]["random_augment"]["heldout"] for n in per_seed]
    noise = diff_noise(zip(calm, rnd), [n["rows"][row]["calm"]["n"] for n in per_seed])
    return by_threshold([c - r for c, r in zip(calm, rnd)], RANDOM_GAP, noise=noise, fmt=".3g",
                        what=f"CALM minus the random-augment composition on held-out KV-MATH ({row}; CALM per seed "
                             f"{rounded(calm, 2)}, random {rounded(rnd, 2)})")


def decide_keep(per_seed: list[dict], cfg=None, fmt: str = PAPER_FORMAT) -> Verdict:
    """KEEP_MARGIN minus CALM's NUM-MATH drop (exact completions) from the anchor's, on the D_C-alone row; a
    composition that did not learn D_C would keep the anchor's skill vacuously, so it leaves the claim undecided."""
    row, gate = _gate(per_seed, fmt, "dc_only", ["calm"])
    if gate:
        return gate
    calm = [n["rows"][row]["calm"]["num_math_exact"] for n in per_seed]
    anc = [n["base"]["anchor"]["num_math_exact"][fmt] for n in per_seed]
    noise = diff_noise(zip(calm, anc), [n["rows"][row]["calm"]["n"] for n in per_seed])
    v = by_threshold([KEEP_MARGIN - (a - c) for c, a in zip(calm, anc)], 0.0, noise=noise, fmt=".3g",
                     what=f"{KEEP_MARGIN} minus CALM's NUM-MATH drop from the anchor's, exact completions ({row}; CALM "
                          f"per seed {rounded(calm, 2)}, anchor {rounded(anc, 2)})")
    reh = f"{fmt}/rehearsal"
    if all(reh in n["rows"] for n in per_seed):  # reported, not decided: the paper's CALM has no rehearsal
        kept = [n["rows"][reh]["calm"]["num_math_exact"] for n in per_seed]
        v = dataclasses.replace(v, reason=f"{v.reason}; with the rehearsal share CALM keeps {rounded(kept, 2)}",
                                extra={**v.extra, "rehearsal_calm_num_math_exact": kept})
    return v


def _ft_part(per_seed, fmt, share, what_key: str, margin: float, label: str) -> Verdict:
    row, gate = _gate(per_seed, fmt, share, ["calm", "anchor_finetune"])
    if gate is None:
        gate = _arms_learned(per_seed, fmt, row, ["anchor_finetune"])
    if gate:
        return gate
    calm = [n["rows"][row]["calm"][what_key] for n in per_seed]
    ft = [n["rows"][row]["anchor_finetune"][what_key] for n in per_seed]
    noise = diff_noise(zip(calm, ft), [n["rows"][row]["calm"]["n"] for n in per_seed])
    return by_threshold([c - f for c, f in zip(calm, ft)], margin, noise=noise, fmt=".3g",
                        what=f"CALM minus the fine-tuned anchor, {label} ({row}; CALM per seed {rounded(calm, 2)}, "
                             f"fine-tuned {rounded(ft, 2)})")


def decide_beats_finetune(per_seed: list[dict], cfg=None, fmt: str = PAPER_FORMAT) -> Verdict:
    return all_of({share: _ft_part(per_seed, fmt, share, "heldout", FT_GAP, "held-out KV-MATH")
                      for share in ("dc_only", "rehearsal")}, "CALM generalises beyond the fine-tuned anchor")


def decide_forgetting(per_seed: list[dict], cfg=None, fmt: str = PAPER_FORMAT) -> Verdict:
    return all_of({share: _ft_part(per_seed, fmt, share, "num_math", FORGET_MARGIN, "NUM-MATH")
                      for share in ("dc_only", "rehearsal")}, "the fine-tuned anchor forgets more than CALM")


def decide(per_seed: list[dict], cfg) -> dict[str, Verdict]:
    return {"augment_knows_values": decide_augment(per_seed, cfg),
            "anchor_does_arithmetic": decide_anchor(per_seed, cfg),
            "composed_solves_heldout": decide_solves(per_seed, cfg),
            "composed_solves_heldout_scratchpad": decide_solves(per_seed, cfg, "scratchpad"),
            "gain_needs_augment": decide_gain(per_seed, cfg),
            "calm_keeps_anchor_skill": decide_keep(per_seed, cfg),
            "beats_anchor_finetune": decide_beats_finetune(per_seed, cfg),
            "finetune_forgets_calm_keeps": decide_forgetting(per_seed, cfg)}
