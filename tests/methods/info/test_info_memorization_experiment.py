"""The info_memorization experiment end to end on a miniature configuration, and its verdict helpers."""

import json

import pytest
from scipy.special import digamma

from lmlab.experiment import get, run_experiment
from lmlab.methods.info import experiment as im

# the small preset (it runs the text family) shrunk to ~15 s on one thread: one seed, the two extremes
MINI = {"seeds": [0], "n_train": 300, "n_val": 200, "alphas": [0.0, 1.0], "betas": [0.0, 0.75], "heur_width": 16,
        "heur_epochs": 60, "ex_width": 64, "ex_epochs": 150, "ex_n_train": 100, "mi_neurons": 6, "text": True,
        "text_n": 400, "text_epochs": 3}


def test_presets_and_claims_are_declared():
    exp = get("info_memorization")
    assert set(exp.claims) == {"c1_heuristic", "c2_example", "c3_ranking", "c4_text"}
    assert exp.presets["tiny"].text is False and exp.presets["small"].text is True


def test_miniature_run_writes_a_complete_report(tmp_path):
    rep = run_experiment("info_memorization", "small", tmp_path, overrides=MINI, quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    claims = {c["id"]: c for c in res["claims"]}
    assert set(claims) == set(get("info_memorization").claims)
    for c in claims.values():
        assert c["held"] in (True, False), c  # every claim is decided, the text arm included
    m = res["metrics"]
    # the off-diagonal mean is what it says: all-pairs mean = (diagonal ψ(S)−ψ(k) + (N−1)·off-diagonal) / N
    n_neurons, diag = 2 * MINI["mi_neurons"], digamma(MINI["n_val"]) - digamma(3)
    for key in ("heuristic.α=0.0", "heuristic.α=1.0", "example.β=0.0", "example.β=0.75"):
        r = m[key]
        assert r["MI"] == pytest.approx((diag + (n_neurons - 1) * r["MI_offdiag"]) / n_neurons, rel=1e-9)
        assert 0.0 <= r["acc"] <= 1.0
    # the verdicts are the helpers' verdicts on the reported numbers
    heur = {k: {0.0: m["heuristic.α=0.0"][v], 1.0: m["heuristic.α=1.0"][v]}
            for k, v in (("H", "H"), ("MI", "MI"), ("MI_off", "MI_offdiag"))}
    assert claims["c1_heuristic"]["held"] == im._direction(heur, 0.0, 1.0, entropy_up=False)[0]
    assert "off-diagonal" in claims["c1_heuristic"]["evidence"] and "all-pairs" in claims["c1_heuristic"]["evidence"]
    for name in ("heuristic_entropy", "heuristic_mi", "example_entropy", "example_mi", "text_entropy", "text_mi"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert "mean MI (off-diagonal)" in (tmp_path / "report.md").read_text()


def _res(h, mi_off, mi_all=None):
    """A two-level sweep result (levels 0 and 1) for `_direction`."""
    mi_all = mi_all or mi_off
    return {"H": {0: h[0], 1: h[1]}, "MI_off": {0: mi_off[0], 1: mi_off[1]}, "MI": {0: mi_all[0], 1: mi_all[1]}}


@pytest.mark.parametrize("res, entropy_up, held", [
    # heuristic direction (c1, c4): entropy down and MI up by >= 5 % each
    (_res((2.2, 1.7), (0.9, 2.9)), False, True),
    (_res((2.2, 2.15), (0.9, 2.9)), False, False),  # entropy only -2.3 %
    (_res((2.2, 1.7), (0.9, 0.8)), False, False),  # MI falls
    # example direction (c2): entropy up and MI down
    (_res((1.4, 2.7), (0.9, 0.5)), True, True),
    (_res((2.7, 1.4), (0.9, 0.93)), True, False),  # the committed tiny pattern: both reversed
    # the verdict uses the off-diagonal mean: +10 % there is held even though the all-pairs mean,
    # diluted by the constant diagonal, moves only +3.3 %
    (_res((2.2, 1.7), (0.40, 0.44), (0.60, 0.62)), False, True),
    (_res((2.2, 1.7), (0.40, 0.41), (0.60, 0.70)), False, False),  # and not the all-pairs mean
])
def test_direction_verdicts(res, entropy_up, held):
    ok, ev = im._direction(res, 0, 1, entropy_up)
    assert ok is held
    assert "off-diagonal" in ev and "margin 5%" in ev


@pytest.mark.parametrize("tau_h, held", [
    ({"entropy": 0.91, "mi": 0.18}, True),
    ({"entropy": 0.67, "mi": 0.0}, True),  # the threshold itself
    ({"entropy": 0.33, "mi": 1.0}, False),  # only the entropy ranking counts
    ({"entropy": float("nan"), "mi": 1.0}, False),  # constant summaries: τ undefined
])
def test_ranking_verdicts(tau_h, held):
    ok, ev = im._ranking(tau_h, {"entropy": -1.0, "mi": 0.0}, 4)
    assert ok is held and "threshold 0.67" in ev


def test_tau_orients_each_sweep_by_its_memorization_type():
    # heuristic: accuracy falls as entropy falls -> entropy ranking agrees (τ = 1)
    heur = {"acc": {0: 1.0, 1: 0.9, 2: 0.5}, "H": {0: 2.2, 1: 2.0, 2: 1.7}, "MI": {0: 1.0, 1: 1.2, 2: 3.0}}
    assert im._tau(heur, "heuristic") == {"entropy": pytest.approx(1.0), "mi": pytest.approx(1.0)}
    # example: accuracy falls as entropy rises -> the example direction agrees
    ex = {"acc": {0: 1.0, 1: 0.8, 2: 0.6}, "H": {0: 1.4, 1: 2.0, 2: 2.7}, "MI": {0: 0.9, 1: 0.7, 2: 0.5}}
    assert im._tau(ex, "example") == {"entropy": pytest.approx(1.0), "mi": pytest.approx(1.0)}
    assert im._tau(ex, "heuristic")["entropy"] == pytest.approx(-1.0)


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(tmp_path):
    """The gpu preset with its four α and β levels and the text family, shrunk in data, epochs, seeds and the
    number of neurons in the MI estimate only."""
    shrunk = {"seeds": [0], "n_train": 200, "n_val": 100, "heur_epochs": 20, "ex_epochs": 20, "ex_n_train": 100,
              "mi_neurons": 6, "text_n": 400, "text_epochs": 2}
    rep = run_experiment("info_memorization", "gpu", tmp_path, device="cpu", overrides=shrunk, quiet=True,
                         raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    evidence = {c["id"]: c["evidence"] for c in res["claims"]}
    assert all("failed" not in e and "not evaluated" not in e and not e.startswith("undecided")
               for e in evidence.values()), evidence
    assert evidence["c4_text"].startswith("text α:") and "over 4 α-models" in evidence["c3_ranking"]
    gpu = get("info_memorization").presets["gpu"]
    keys = [f"heuristic.α={a}" for a in gpu.alphas] + [f"example.β={b}" for b in gpu.betas]
    keys += [f"text.α={gpu.alphas[0]}", f"text.α={gpu.alphas[-1]}"]
    assert set(keys) <= set(res["metrics"])
    for name in ("heuristic_entropy", "example_mi", "text_entropy", "text_mi"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
