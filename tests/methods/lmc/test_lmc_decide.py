"""lmc_basins' decisions from synthetic per-seed numbers: each `decide_*` held, not held and undecided (seeds
disagree, not learned, no split), the check, and the permutation test."""

import numpy as np
import pytest

from lmlab.methods.lmc import experiment as lb

CFG = lb.Config()
MINI_CFG = lb.Config(minilm=True)


def regime(ari=1.0, within=0.01, between=0.1, floor=0.005, lo=0.02, hi=0.95, id_acc=0.99, r=0.9, q=0.6, p=0.002,
           n=6, rep_diag=0.01, rep_id=0.0, spread=True):
    """One arm of one seed as `_analyse` returns it: n children alternating between a low-diagnostic family (0) and
    a high one (1), clustered by family, and one replicate per family."""
    family = [c % 2 for c in range(n)]
    diag = [(hi if f else lo) + (0.001 * c if spread else 0.0) for c, f in enumerate(family)]
    if not spread:
        diag = [0.5] * n
    children = [{"name": f"s{c}", "p": 0.2 * f, "id_acc": id_acc, "diag_acc": d}
                for c, (f, d) in enumerate(zip(family, diag))]
    reps = [{"of": f"s{c}", "barrier": floor, "d_id_acc": rep_id, "d_diag_acc": rep_diag} for c in (0, 1)]
    return {"children": children, "replicates": reps, "labels": family, "family": family, "ari": ari,
            "within": within, "between": between, "floor": floor, "D_mean": between / 2, "D_median": within,
            "D_max": between, "r_axis_diag": r, "perm_p": p, "perm_q": q, "baseline_id": 0.5, "axis": []}


def seed(**kw) -> dict:
    return {"planted": regime(**kw), "emergent": regime(**kw), "minilm": regime(**kw), "hans": None}


# ------------------------------------------------------------------------------------------- c1 basins
def test_basins_held_when_every_seed_recovers_separated_families():
    v = lb.decide_basins([seed(), seed(ari=0.9, between=0.2)], CFG)
    assert v.held is True and v.per_seed == pytest.approx((10.0, 20.0)) and v.threshold == lb.SEPARATION


def test_basins_not_held_when_the_clusters_miss_the_families():
    v = lb.decide_basins([seed(ari=0.1), seed(ari=-0.05)], CFG)
    assert v.held is False and "not held on ARI" in v.reason


def test_basins_not_held_when_between_barriers_are_within_the_replicate_floor():
    # between/within is 20x, but the replicate floor is as large as the between-cluster barrier
    v = lb.decide_basins([seed(within=0.001, between=0.02, floor=0.02), seed(within=0.001, between=0.02, floor=0.01)],
                         CFG)
    assert v.held is False and v.per_seed == pytest.approx((1.0, 2.0)) and "separation" in v.reason


def test_basins_undecided_when_seeds_disagree():
    v = lb.decide_basins([seed(), seed(within=0.05)], CFG)  # ratio 10 on one seed, 2 on the other
    assert v.held is None and v.reason.startswith("seeds disagree") and "1 of 2 seeds" in v.reason


def test_basins_undecided_not_learned():
    v = lb.decide_basins([seed(), seed(id_acc=0.6)], CFG)  # needs 0.75 = halfway from 0.5 to 1
    assert v.held is None and v.reason.startswith("not learned") and "0.600 < 0.750" in v.reason


# ------------------------------------------------------------------------------------------- c2 strategy
def test_strategy_held_when_the_clusters_split_the_diagnostic_at_equal_id():
    v = lb.decide_strategy([seed(), seed(lo=0.1, hi=0.8)], CFG)
    assert v.held is True and v.per_seed == pytest.approx((0.2 - 0.0215, 0.2 - 0.1015), abs=1e-3)


def test_strategy_not_held_when_both_clusters_pass_the_diagnostic():
    v = lb.decide_strategy([seed(lo=0.9, hi=0.99), seed(lo=0.7, hi=0.9)], CFG)
    assert v.held is False and "shortcut cluster" in v.reason


def test_strategy_not_held_when_the_split_is_within_the_replicate_noise():
    # the general cluster clears 0.6 by 0.02-0.03 only, while replicates differ by 0.05 in diagnostic accuracy
    v = lb.decide_strategy([seed(hi=0.62, rep_diag=0.05), seed(hi=0.625, rep_diag=0.05)], CFG)
    assert v.held is False and "general cluster" in v.reason and v.extra["general cluster"]["threshold"] == 0.05


def test_strategy_undecided_when_seeds_disagree():
    v = lb.decide_strategy([seed(), seed(lo=0.4)], CFG)
    assert v.held is None and v.reason.startswith("seeds disagree")


def test_strategy_undecided_not_learned():
    v = lb.decide_strategy([seed(id_acc=0.5), seed(id_acc=0.5)], CFG)
    assert v.held is None and v.reason.startswith("not learned")


# ------------------------------------------------------------------------------------------- c3 emergent
def test_emergent_held_when_the_axis_beats_the_spec_margin_and_the_permutation_null():
    v = lb.decide_emergent([seed(r=0.9, q=0.6), seed(r=-0.8, q=0.7)], CFG)
    assert v.held is True and v.threshold == pytest.approx(0.7) and v.per_seed == pytest.approx((0.9, 0.8))


def test_emergent_not_held_when_the_correlation_is_within_chance():
    v = lb.decide_emergent([seed(r=0.6, q=0.72), seed(r=0.55, q=0.7)], CFG)  # above 0.5, below the null's 95 %
    assert v.held is False and v.threshold == pytest.approx(0.72) and "axis tracks diagnostic" in v.reason


def test_emergent_not_held_when_the_basins_are_below_the_replicate_floor():
    v = lb.decide_emergent([seed(between=1e-5, within=1e-6, floor=1e-5)] * 2, CFG)  # the audit's 8.5e-6 nats
    assert v.held is False and "basins above the floor" in v.reason


def test_emergent_undecided_when_seeds_disagree():
    v = lb.decide_emergent([seed(r=0.9), seed(r=0.1)], CFG)
    assert v.held is None and v.reason.startswith("seeds disagree")


def test_emergent_undecided_when_the_children_did_not_split():
    v = lb.decide_emergent([seed(), seed(spread=False)], CFG)
    assert v.held is None and v.reason.startswith("no split")


def test_emergent_undecided_when_too_few_models_for_the_permutation_test():
    v = lb.decide_emergent([seed(n=4), seed(n=4)], CFG)  # 4 models: the smallest p is 2/4! = 0.083
    assert v.held is None and v.reason.startswith("too few models")
    assert lb.decide_emergent([seed(n=5), seed(n=5)], CFG).held is True  # 2/5! = 0.017


def test_emergent_undecided_not_learned():
    v = lb.decide_emergent([seed(id_acc=0.52), seed()], CFG)
    assert v.held is None and v.reason.startswith("not learned")


# ------------------------------------------------------------------------------------------- c5 MiniLM
def test_minilm_held_not_held_and_undecided():
    assert lb.decide_minilm([seed(), seed()], MINI_CFG).held is True
    assert lb.decide_minilm([seed(r=0.1), seed(r=0.2)], MINI_CFG).held is False
    assert lb.decide_minilm([seed(r=0.9), seed(r=0.2)], MINI_CFG).reason.startswith("seeds disagree")
    off = lb.decide_minilm([seed()], CFG)
    assert off.held is None and off.reason.startswith("moved to small for the time budget: the MiniLM arm")
    missing = lb.decide_minilm([{**seed(), "minilm": {"missing": "no MiniLM here"}}], MINI_CFG)
    assert missing.held is None and "no MiniLM here" in missing.reason


# ------------------------------------------------------------------------------------------- c4 and the check
def test_decide_reports_c4_not_tested_and_the_hans_check_apart():
    hans = {"small": [0.1, 0.05, 0.12], "large": [0.3, 0.25, 0.4, 0.35]}
    out = lb.decide([{**seed(), "hans": hans}, seed()], CFG)
    assert out["c4_real_mnli"].kind == "not tested" and "no barrier data" in out["c4_real_mnli"].reason
    k = out["k1_published_hans"]
    assert k.kind == "check" and k.status == "passed" and k.extra["auc"] == pytest.approx(1.0)
    assert set(out) == {"c1_basins", "c2_strategy", "c3_emergent", "c4_real_mnli", "c5_minilm", "k1_published_hans"}


@pytest.mark.parametrize("hans, status", [
    ({"small": [0.3, 0.28, 0.32], "large": [0.3, 0.29, 0.31, 0.33]}, "failed"),  # no gap
    ({"small": [0.0, 0.35], "large": [0.3, 0.25, 0.2]}, "failed"),  # mean gap 0.075 but overlapping (AUC 0.5)
    ({"small": [], "large": [0.3]}, "failed"),
    (None, "not run"),
])
def test_hans_check_fails_or_does_not_run(hans, status):
    assert lb.check_published_hans([{**seed(), "hans": hans}]).status == status


# ------------------------------------------------------------------------------------------- helpers
def test_all_of_is_a_three_valued_and():
    held, short = lb.decide_basins([seed()], CFG), lb.decide_basins([seed(ari=0.0)], CFG)
    mixed = lb.decide_basins([seed(), seed(within=0.05)], CFG)
    assert lb.all_of({"a": held, "b": held}, "x").held is True
    assert lb.all_of({"a": held, "b": short}, "x").held is False
    assert lb.all_of({"a": mixed, "b": short}, "x").held is False
    v = lb.all_of({"a": held, "b": mixed}, "x")
    assert v.held is None and v.reason.startswith("seeds disagree")


def test_permutation_test_separates_a_real_correlation_from_chance():
    axis = np.linspace(-1, 1, 10)
    strong = lb.permutation_test(axis, axis + 0.01 * np.sin(np.arange(10)), 500, seed=0)
    assert strong["r_axis_diag"] > 0.99 and strong["perm_p"] < 0.01 and 0.4 < strong["perm_q"] < 0.8
    assert lb.permutation_test(axis, np.full(10, 0.5), 500)["perm_p"] == 1.0


def test_separation_uses_the_larger_of_within_and_the_floor():
    assert lb.separation({"within": 0.01, "between": 0.06, "floor": 0.02}) == pytest.approx(3.0)
    assert lb.separation({"within": 0.03, "between": 0.06, "floor": 0.02}) == pytest.approx(2.0)
    assert lb.separation({"within": 0.0, "between": float("nan"), "floor": 0.02}) == 0.0


def test_cluster_strategy_means():
    r = {"labels": [0, 1, 0], "children": [{"diag_acc": 0.0, "id_acc": 1.0}, {"diag_acc": 1.0, "id_acc": 0.9},
                                           {"diag_acc": 0.2, "id_acc": 0.8}]}
    (lo_d, lo_id), (hi_d, hi_id) = lb.cluster_strategy(r)
    assert (lo_d, lo_id, hi_d, hi_id) == pytest.approx((0.1, 0.9, 1.0, 0.9))
