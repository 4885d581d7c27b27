"""info_memorization's decisions from synthetic per-seed numbers: every `decide_*` held, not held and undecided
(not learned, seeds disagree, time budget)."""

import pytest

from lmlab.experiment import get
from lmlab.methods.info import experiment as im
from lmlab.methods.info.experiment import (
    LEARNED_SHARE,
    REL_MARGIN,
    TAU_MARGIN,
    decide,
    decide_direction,
    decide_example,
    decide_heuristic,
    decide_ranking,
    decide_text,
)


def model(level, H, mi_off, train_acc=1.0, mem_acc=None, val_acc=1.0):
    return {"level": level, "train_acc": train_acc, "mem_acc": mem_acc, "val_acc": val_acc, "H": H, "H_local": 4.0,
            "MI": mi_off + 0.1, "MI_off": mi_off, "act_min": -2.0, "act_max": 5.0, "range_share": 0.3}


def sweep(first, last, replicate=None, chance=0.5, tau=(1.0, 1.0), middle=()):
    """A sweep from its first and last model (level, H, MI_off, **accuracies); the replicate repeats the first
    unless given."""
    models = [model(*first[:3], **(first[3] if len(first) > 3 else {})), *middle,
              model(*last[:3], **(last[3] if len(last) > 3 else {}))]
    rep = model(*(replicate or first[:3]))
    return {"chance": chance, "models": models, "replicate": rep, "tau": {"entropy": tau[0], "mi": tau[1]}}


def seed(heur=None, ex=None, text=None):
    out = {"heuristic": heur or sweep((0.0, 2.2, 1.2), (1.0, 1.7, 3.5)),
           "example": ex or sweep((0.0, 2.7, 0.8), (0.75, 3.1, 0.4, {"mem_acc": 1.0}), chance=0.1)}
    if text is not None:
        out["text"] = text
    return out


# ------------------------------------------------------------------------------------------- c1 (heuristic)
def test_heuristic_held_when_entropy_falls_and_mi_rises_on_every_seed():
    v = decide_heuristic([seed(), seed(sweep((0.0, 2.0, 1.0), (1.0, 1.5, 2.0)))])
    assert v.held is True
    assert v.extra["entropy"]["per_seed"] == pytest.approx([0.5 / 2.2, 0.25])
    assert v.extra["MI"]["per_seed"] == pytest.approx([2.3 / 1.2, 1.0])
    assert "entropy held" in v.reason and "MI held" in v.reason and "per-neuron bins" in v.reason


def test_heuristic_not_held_when_entropy_barely_moves():
    s = seed(sweep((0.0, 2.2, 1.2), (1.0, 2.15, 3.5)))  # entropy -2.3 %: below the 5 % margin
    v = decide_heuristic([s, s])
    assert v.held is False and v.threshold == REL_MARGIN and "entropy not held" in v.reason


def test_heuristic_not_held_when_the_change_is_within_the_replicate_noise():
    # entropy falls 10 %, but two trainings of α=0 differ by 20 %: the noise is the threshold
    s = seed(sweep((0.0, 2.0, 1.0), (1.0, 1.8, 2.0), replicate=(0.0, 2.4, 1.0)))
    v = decide_heuristic([s, s])
    assert v.held is False and v.noise == pytest.approx(0.2) and v.threshold == pytest.approx(0.2)


def test_heuristic_undecided_when_seeds_disagree():
    v = decide_heuristic([seed(), seed(sweep((0.0, 2.2, 1.2), (1.0, 2.6, 3.5)))])
    assert v.held is None and v.reason.startswith("seeds disagree")


def test_heuristic_undecided_not_learned():
    s = seed(sweep((0.0, 2.2, 1.2, {"train_acc": 0.6}), (1.0, 1.7, 3.5)))  # bar: 0.5 + 0.5 * 0.5 = 0.75
    v = decide_heuristic([seed(), s])
    assert v.held is None and v.reason.startswith("not learned") and "train_acc 0.600" in v.reason
    assert im.learned_bar(0.5) == pytest.approx(0.5 + LEARNED_SHARE * 0.5)


def test_a_failing_part_decides_over_an_undecided_one():
    # entropy: seeds disagree; MI: falls on every seed -> the conjunction does not hold
    a = seed(sweep((0.0, 2.2, 1.2), (1.0, 1.7, 0.5)))
    b = seed(sweep((0.0, 2.2, 1.2), (1.0, 2.4, 0.5)))
    v = decide_heuristic([a, b])
    assert v.held is False and v.extra["entropy"]["status"] == "undecided" and v.extra["MI"]["status"] == "not held"


# ------------------------------------------------------------------------------------------- c2 (example)
def test_example_held_when_entropy_rises_and_mi_falls():
    v = decide_example([seed(), seed()])
    assert v.held is True and "β=0 to β=0.75" in v.reason


def test_example_not_held_on_the_committed_pattern():
    # the first version's numbers: entropy 2.727 -> 1.420, off-diagonal MI 0.755 -> 0.769
    s = seed(ex=sweep((0.0, 2.727, 0.755), (0.75, 1.420, 0.769, {"mem_acc": 0.8}), chance=0.1))
    v = decide_example([s, s])
    assert v.held is False and "entropy not held" in v.reason and "MI not held" in v.reason


def test_example_undecided_not_memorised():
    # β=0.75 fits only 30 % of its relabelled points (bar 0.1 + 0.5 * 0.9 = 0.55), though it moves the right way
    s = seed(ex=sweep((0.0, 2.7, 0.8), (0.75, 3.1, 0.4, {"mem_acc": 0.3, "train_acc": 0.47}), chance=0.1))
    v = decide_example([seed(), s])
    assert v.held is None and v.reason.startswith("not learned") and "mem_acc 0.300" in v.reason


def test_example_undecided_when_seeds_disagree():
    s = seed(ex=sweep((0.0, 2.7, 0.8), (0.75, 2.6, 0.4, {"mem_acc": 1.0}), chance=0.1))
    v = decide_example([seed(), s])
    assert v.held is None and v.reason.startswith("seeds disagree")


# ------------------------------------------------------------------------------------------- c4 (text)
def test_text_undecided_for_the_time_budget_without_the_text_family():
    v = decide_text([seed(), seed()])
    assert v.held is None and v.reason.startswith("time budget")


def test_text_held_and_not_held():
    good = sweep((0.0, 2.0, 0.5), (1.0, 1.5, 0.9))
    assert decide_text([seed(text=good)] * 3).held is True
    flat = sweep((0.0, 2.0, 0.5), (1.0, 2.0, 0.9))
    assert decide_text([seed(text=flat)] * 3).held is False
    unlearned = sweep((0.0, 2.0, 0.5, {"train_acc": 0.52}), (1.0, 1.5, 0.9))
    assert decide_text([seed(text=unlearned)] * 3).reason.startswith("not learned")


# ------------------------------------------------------------------------------------------- c3, c5 (ranking)
@pytest.mark.parametrize("measure_name", ["entropy", "mi"])
def test_ranking_held_not_held_and_undecided(measure_name):
    def with_tau(t):
        tau = (t, 0.0) if measure_name == "entropy" else (0.0, t)
        return seed(sweep((0.0, 2.2, 1.2), (1.0, 1.7, 3.5), tau=tau))

    held = decide_ranking([with_tau(0.91), with_tau(1.0)], measure_name)
    assert held.held is True and held.threshold == TAU_MARGIN and "example sweep's τ" in held.reason
    assert decide_ranking([with_tau(2 / 3), with_tau(0.33)], measure_name).held is False  # 2/3 < 0.67
    assert decide_ranking([with_tau(0.91), with_tau(0.33)], measure_name).reason.startswith("seeds disagree")
    nan = decide_ranking([with_tau(None), with_tau(1.0)], measure_name)  # results.json stores NaN as null
    assert nan.held is None and "NaN" in nan.reason


def test_ranking_undecided_when_a_middle_model_did_not_learn():
    mid = [model(0.5, 2.0, 1.0, train_acc=0.7)]
    s = seed(sweep((0.0, 2.2, 1.2), (1.0, 1.7, 3.5), tau=(1.0, 1.0), middle=mid))
    v = decide_ranking([s, s], "entropy")
    assert v.held is None and v.reason.startswith("not learned") and "0.5: train_acc 0.700" in v.reason


def test_decide_covers_every_declared_claim():
    cfg = get("info_memorization").presets["tiny"]
    verdicts = decide([seed(), seed()], cfg)
    assert set(verdicts) == set(get("info_memorization").claims)
    assert verdicts["c4_text"].held is None
    assert all(v.held is None for v in decide([], cfg).values())  # no seed measured: nothing decided


def test_decide_direction_reads_the_family_and_the_direction_it_is_given():
    rising = sweep((0.0, 2.0, 1.0), (1.0, 2.5, 0.5))  # entropy +25 %, MI −50 %
    falling = sweep((0.0, 2.0, 1.0), (1.0, 1.5, 2.0))  # entropy −25 %, MI +100 %
    assert decide_direction([{"fam": rising}] * 2, "fam", entropy_up=True).held is True
    assert decide_direction([{"fam": rising}] * 2, "fam", entropy_up=False).held is False
    assert decide_direction([{"fam": falling}] * 2, "fam", entropy_up=False).held is True
    mixed = decide_direction([{"fam": rising}, {"fam": falling}], "fam", entropy_up=True)
    assert mixed.held is None and mixed.reason.startswith("seeds disagree")
    unlearned = decide_direction([{"fam": rising}, {"fam": sweep((0.0, 2.0, 1.0, {"train_acc": 0.6}),
                                                                 (1.0, 2.5, 0.5))}], "fam", entropy_up=True)
    assert unlearned.held is None and unlearned.reason.startswith("not learned")
    forgot = sweep((0.0, 2.0, 1.0), (1.0, 2.5, 0.5, {"mem_acc": 0.3}))  # fits its labels, not the relabelled points
    assert decide_direction([{"fam": forgot}] * 2, "fam", entropy_up=True).held is True
    v = decide_direction([{"fam": forgot}] * 2, "fam", entropy_up=True, memorised_last=True)
    assert v.held is None and "mem_acc 0.300" in v.reason
    assert decide_direction([], "fam", entropy_up=True).held is None
