"""The decision rule (lmlab.verdict): held, not held and undecided from synthetic per-seed numbers, and the
interval against scipy's own t-interval."""

import math

import pytest
from scipy import stats

from lmlab.verdict import SMALL_N, Verdict, all_of, by_threshold, check, not_tested, rounded, t_interval, undecided


@pytest.mark.parametrize("values, held", [
    ([0.5, 0.4, 0.3], True),      # every seed clears the margin
    ([0.05, 0.0, -0.2], False),   # every seed falls short
    ([0.5, 0.05, 0.4], None),     # seeds disagree
    ([0.1], False),               # the threshold itself is short: "clears" means strictly above
])
def test_small_n_needs_every_seed_to_agree(values, held):
    v = by_threshold(values, margin=0.1)
    assert v.held is held and v.n == len(values) and v.threshold == 0.1
    assert v.effect == pytest.approx(sum(values) / len(values))
    if held is None:
        assert v.reason.startswith("seeds disagree") and "of 3 seeds clear it" in v.reason


def test_replicate_noise_raises_the_threshold():
    assert by_threshold([0.3, 0.35], margin=0.1).held is True
    v = by_threshold([0.3, 0.35], margin=0.1, noise=0.4)  # the effect is within replicate noise
    assert v.held is False and v.threshold == 0.4 and "replicate noise 0.4" in v.reason
    assert by_threshold([0.3, 0.35], margin=0.5, noise=0.01).threshold == 0.5


def test_many_seeds_decide_by_the_95_percent_interval():
    above = [0.30, 0.28, 0.33, 0.31, 0.29, 0.32]
    v = by_threshold(above, margin=0.1)
    assert len(above) > SMALL_N and v.held is True and v.interval[0] > 0.1
    below = [0.01, 0.03, -0.02, 0.02, 0.0, 0.01]
    assert by_threshold(below, margin=0.1).held is False
    straddle = [0.3, -0.1, 0.25, 0.0, 0.2, -0.05]  # mean 0.1 with a wide interval
    v = by_threshold(straddle, margin=0.1)
    assert v.held is None and "contains the threshold" in v.reason
    # one seed below the margin does not block a decision the interval supports
    assert by_threshold([0.30, 0.28, 0.33, 0.31, 0.29, 0.32, 0.27, 0.09], margin=0.1).held is True


def test_t_interval_matches_scipy():
    values = [1.0, 2.5, 0.3, 1.7, 2.2]
    lo, hi = t_interval(values)
    ref = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 5, scale=stats.sem(values))
    assert (lo, hi) == pytest.approx(ref)


def test_nan_and_empty_are_undecided_with_a_reason():
    assert by_threshold([], margin=0.1).held is None
    v = by_threshold([0.5, math.nan], margin=0.1)
    assert v.held is None and "NaN" in v.reason


def test_kinds_and_statuses():
    assert undecided("not learned: accuracy 0.1 vs constant 0.1", acc=0.1).status == "undecided"
    assert not_tested("only a check stands for it").status == "not tested"
    assert check(True, "sums to 1").status == "passed" and check(False, "x").status == "failed"
    with pytest.raises(ValueError, match="reason"):
        Verdict(True, "  ")
    with pytest.raises(ValueError, match="kind"):
        Verdict(True, "x", kind="opinion")
    d = by_threshold([0.5, 0.4], margin=0.1).to_json()
    assert d["status"] == "held" and d["per_seed"] == [0.5, 0.4] and d["interval"] is None


def test_part_not_measured_names_the_budget_or_the_missing_data():
    from lmlab.verdict import part_not_measured

    measured = [{"mt": {"bleu": 30.0}}, {"mt": {"bleu": 31.0}}]
    assert part_not_measured(measured, "mt", data="sumerian/") is None
    off = part_not_measured(measured, "mt", data="sumerian/", enabled=False, budget="three translators per seed")
    assert off.held is None and off.kind == "claim"
    assert off.reason == "moved to small for the time budget: three translators per seed; run --preset small"
    absent = part_not_measured([{"mt": {"bleu": 30.0}}, {"mt": None}], "mt", data="sumerian/")
    assert absent.held is None and absent.reason.startswith("needs the real data: sumerian/ was not found")
    assert part_not_measured([{}], "mt", data="x", enabled=False, budget="b", preset="gpu").reason.endswith(
        "run --preset gpu")


def test_all_of_is_kleenes_three_valued_and():
    held, short = by_threshold([0.3, 0.4], 0.1), by_threshold([0.0, 0.05], 0.1)
    mixed = by_threshold([0.3, 0.0], 0.1)
    assert all_of({"a": held, "b": held}, "x").held is True
    assert all_of({"a": held, "b": short}, "x").held is False
    assert all_of({"a": mixed, "b": short}, "x").held is False  # one failing part decides
    v = all_of({"a": held, "b": mixed}, "x")
    assert v.held is None and v.reason.startswith("seeds disagree")
    assert v.per_seed == held.per_seed and v.extra["b"]["held"] is None  # the first part's numbers, each part's verdict
    # the claim's cause is its first undecided part's, not always "seeds disagree"
    assert all_of({"a": held, "b": undecided("not learned: b's model is at chance")}, "x").reason.startswith(
        "not learned: x: ")
    assert all_of({"a": undecided("no checkpoint in the bin"), "b": mixed}, "x").reason.startswith("undecided on a: ")


def test_rounded_rounds_each_number_and_keeps_the_unmeasured():
    assert rounded([0.12345, 1, None, -2.5e-4], 3) == [0.123, 1.0, None, -0.0]
    assert rounded((x / 3 for x in range(3)), 2) == [0.0, 0.33, 0.67]
