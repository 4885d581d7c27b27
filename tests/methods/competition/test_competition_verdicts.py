"""Table-driven checks of task_competition's claim verdicts on hand-made measurements: each criterion
passes on data that shows the claimed effect and fails on data that contradicts it."""

from types import SimpleNamespace

import numpy as np
import pytest

import lmlab.methods.competition.experiment as tcx
from lmlab.report import Report

CFG = tcx.Config(lost=0.1, retained=0.8, seeds=3, lm_learned_acc=0.8, lm_steps=10, lm_freqs=[10, 1])


def _rep(tmp_path):
    rep = Report("task_competition", "test", 0, tmp_path)
    for cid, text in tcx.CLAIMS.items():
        rep.add_claim(cid, text)
    return rep


def _cell(final, peak=None, decay=0.0, jump=0.03, g=1e-3):
    final = np.asarray(final, float)
    return {"final": final, "peak": final if peak is None else np.asarray(peak, float),
            "decay_frac": np.full(len(final), decay), "jump": np.full(len(final), jump),
            "g_batch": np.full(len(final), g), "g_expected": np.full(len(final), g)}


def _injection(slow_small, fast_small):
    """Widths 8/16 lose the task every 100 steps, 64/128 keep it; `*_small` describe width 16's runs."""
    lost = dict(final=[0, 0, 0], decay=0.5, jump=1e-4, g=0.1)
    kept = dict(final=[1, 1, 1], decay=0.02, jump=0.035, g=1e-3)
    return {100: {8: _cell(**lost), 16: _cell(**slow_small), 64: _cell(**kept), 128: _cell(**kept)},
            20: {8: _cell(**lost), 16: _cell(**fast_small), 64: _cell(**kept), 128: _cell(**kept)}}


def test_c3_needs_a_visible_rise_and_decay_below_the_threshold(tmp_path):
    no_rise = dict(final=[0, 0, 0], peak=[0.001] * 3, decay=0.9, jump=3e-4, g=0.1)
    saw = dict(final=[0.3, 0.0, 0.0], peak=[0.5, 0.2, 0.01], decay=0.95, jump=0.02, g=0.1)
    rep = _rep(tmp_path)
    assert tcx.decide_c3(rep, _injection(no_rise, saw), CFG) == 64
    assert rep.claims["c3_retention_threshold"].held is True
    assert "N=16 every 20 steps (2/3 seeds)" in rep.claims["c3_retention_threshold"].evidence
    # a noisy decay ratio of invisible jumps is not rise-and-decay
    rep = _rep(tmp_path)
    tcx.decide_c3(rep, _injection(no_rise, no_rise), CFG)
    assert rep.claims["c3_retention_threshold"].held is False
    # wide models that forget between injections contradict accumulation
    inj = _injection(no_rise, saw)
    inj[20][128]["decay_frac"][:] = 0.9
    rep = _rep(tmp_path)
    tcx.decide_c3(rep, inj, CFG)
    assert rep.claims["c3_retention_threshold"].held is False


def test_c4_fails_when_one_narrow_width_has_a_small_gradient(tmp_path):
    # the committed toy pattern: N=16 sits at a saddle with a smaller gradient than the wide widths
    rep = _rep(tmp_path)
    inj = _injection(dict(final=[0, 0, 0], g=7e-4), dict(final=[0, 0, 0], g=7e-4))
    tcx.decide_c4(rep, inj, 64, CFG)
    claim = rep.claims["c4_common_gradient"]
    assert claim.held is False and "0.7×" in claim.evidence
    rep = _rep(tmp_path)
    inj = _injection(dict(final=[0, 0, 0], g=0.05), dict(final=[0, 0, 0], g=0.05))
    tcx.decide_c4(rep, inj, 64, CFG)
    assert rep.claims["c4_common_gradient"].held is True
    rep = _rep(tmp_path)
    tcx.decide_c4(rep, inj, None, CFG)
    assert rep.claims["c4_common_gradient"].held is None


def _lm_cell(layers, d, freq, accs, proj, cos, bg=1.0, params=None):
    grads = {"steps": [1, 2, 3, 4], "bg_norm": [bg] * 4}
    tasks = {}
    for name, acc in accs.items():
        grads[name] = {"projection": [proj] * 4, "cos": [cos] * 4}
        tasks[name] = {"acc_train": acc, "acc_heldout": acc}
    return {"layers": layers, "d_model": d, "freq": freq, "params": params or layers * d * d * 12,
            "grads": grads, "tasks": tasks}


@pytest.mark.parametrize("case, held", [("learned lower, less interference", True),
                                        ("same frequency everywhere", False),
                                        ("interference does not fall", False)])
def test_c6_frequency_and_interference(tmp_path, case, held):
    setup = SimpleNamespace(tasks=[SimpleNamespace(name="cmp")])
    small_acc = {10: 0.2, 1: 0.1} if case != "same frequency everywhere" else {10: 0.9, 1: 0.1}
    big_proj = 0.01 if case != "interference does not fall" else 0.05
    lm = [_lm_cell(1, 32, f, {"cmp": small_acc[f]}, proj=0.05, cos=0.01) for f in (10, 1)]
    lm += [_lm_cell(2, 128, f, {"cmp": {10: 0.95, 1: 0.3}[f]}, proj=big_proj, cos=0.002) for f in (10, 1)]
    rep = _rep(tmp_path)
    tcx.decide_c6(rep, lm, CFG, setup)
    claim = rep.claims["c6_lm_rare_tasks"]
    assert claim.held is held
    if held:  # every learned cell sits at the top frequency: the evidence must say so
        assert "highest frequency tested" in claim.evidence


def test_lm_interference_reads_the_second_half_and_scales_alignment_by_sqrt_params():
    cell = _lm_cell(1, 8, 1, {"t": 1.0}, proj=0.0, cos=0.0, params=10_000)
    cell["grads"]["t"] = {"projection": [9.0, 9.0, 0.2, -0.4], "cos": [0.5, 0.5, 0.01, -0.03]}
    cell["grads"]["bg_norm"] = [5.0, 5.0, 1.0, 3.0]
    out = tcx.lm_interference([cell], ["t"])
    assert out["projection"] == pytest.approx(0.3)
    assert out["alignment"] == pytest.approx(0.02 * 100)
    assert out["bg_norm"] == pytest.approx(2.0)
