"""scaling_smoke's decision from synthetic per-seed numbers: held, not held, and undecided (not learned, seeds
disagree)."""

import math

import pytest

from lmlab.methods.scaling.experiment import MARGIN, Config, decide_wider_lower_loss

CFG = Config(widths=[16, 64], vocab=24)


def seed(narrow: float, wide: float, replicate: float | None = None) -> dict:
    return {"floor": 0.8, "uniform": math.log(24), "replicate_narrow": narrow if replicate is None else replicate,
            "runs": [{"width": 16, "params": 1, "final": narrow, "curve": []},
                     {"width": 64, "params": 4, "final": wide, "curve": []}]}


def test_held_when_every_seed_clears_margin_and_noise():
    v = decide_wider_lower_loss([seed(2.0, 1.5, 2.01), seed(2.1, 1.4, 2.08)], CFG)
    assert v.held is True and v.threshold == MARGIN and v.per_seed == pytest.approx((0.5, 0.7))


def test_not_held_when_the_gap_is_within_the_replicate_noise():
    v = decide_wider_lower_loss([seed(2.0, 1.9, 1.7), seed(2.0, 1.88, 2.3)], CFG)  # noise 0.3 > gaps 0.1, 0.12
    assert v.held is False and v.noise == pytest.approx(0.3) and "every seed falls short" in v.reason


def test_undecided_when_seeds_disagree():
    v = decide_wider_lower_loss([seed(2.0, 1.5), seed(2.0, 2.1)], CFG)
    assert v.held is None and v.reason.startswith("seeds disagree")


def test_undecided_not_learned_when_the_wide_model_is_at_the_uniform_guess():
    v = decide_wider_lower_loss([seed(3.2, math.log(24) - 0.01), seed(2.0, 1.5)], CFG)
    assert v.held is None and v.reason.startswith("not learned") and "1 of 2 seeds" in v.reason
