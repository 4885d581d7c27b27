"""The lmc_basins experiment end to end on a miniature configuration, and its verdict helpers."""

import json

import numpy as np
import pytest

from lmlab.experiment import get, run_experiment
from lmlab.methods.lmc import experiment as lb

MINI = {"parent_steps": 40, "n_train": 300, "epochs": 2, "n_children": 4, "n_eval": 128, "n_points": 4}


def _feather_csv(root):
    """A miniature McCoy table: the published small cluster at 0.1, the other runs at 0.3."""
    (root / "lmc").mkdir(parents=True)
    rows = ["Run,MNLI dev acc.,Lexical (nonent)"]
    rows += [f"Run {i},0.84,{0.1 if i in lb.SMALL_CLUSTER else 0.3 + 0.001 * (i % 7)}" for i in range(30)]
    (root / "lmc" / "feather_berts_hans_accuracy_by_run.csv").write_text("\ufeff" + "\n".join(rows) + "\n")
    return root


def test_presets_and_claims_are_declared():
    exp = get("lmc_basins")
    assert set(exp.claims) == {"c1_basins", "c2_strategy", "c3_emergent", "c4_real_mnli", "c5_minilm"}
    assert exp.presets["tiny"].minilm is False and exp.presets["small"].minilm is True


def test_miniature_run_writes_a_complete_report(tmp_path):
    data = _feather_csv(tmp_path / "data")
    rep = run_experiment("lmc_basins", "tiny", tmp_path / "out", data=str(data), overrides=MINI, quiet=True,
                         raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    claims = {c["id"]: c for c in res["claims"]}
    for cid in ("c1_basins", "c2_strategy", "c3_emergent"):
        assert claims[cid]["held"] in (True, False), claims[cid]
    assert claims["c4_real_mnli"]["held"] is True and "30 runs" in claims["c4_real_mnli"]["evidence"]
    assert claims["c5_minilm"]["held"] is None and "not run in the tiny preset" in claims["c5_minilm"]["evidence"]
    m = res["metrics"]
    for tag in ("planted", "emergent"):
        r = m[tag]
        assert len(r["labels"]) == MINI["n_children"] and set(r["labels"]) <= {0, 1}
        assert r["within"] >= 0 and r["D_mean"] >= 0
    # the verdicts are the helpers' verdicts on the reported numbers
    p = m["planted"]
    assert claims["c1_basins"]["held"] == lb.decide_basins(m["planted_ari"], p["within"], p["between"], 1.0)[0]
    assert m["real_mnli"]["n_runs"] == 30 and m["real_mnli"]["auc"] == pytest.approx(1.0)
    for name in ("planted_barriers", "emergent_barriers"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize("ari, within, between, held", [
    (1.0, 0.01, 0.05, True),
    (1.0, 0.0033, 0.0053, False),  # the committed tiny numbers: right clusters, separation only 1.6x
    (0.5, 0.01, 0.05, False),  # separated but the wrong families
    (1.0, 0.0, float("nan"), False),  # a single cluster: no between-cluster pairs
])
def test_basins_verdicts(ari, within, between, held):
    ok, ev = lb.decide_basins(ari, within, between, 1.0)
    assert ok is held and "ARI" in ev


@pytest.mark.parametrize("strat, held", [
    ({0: (0.007, 0.999), 1: (1.0, 1.0)}, True),
    ({0: (0.9, 0.56), 1: (0.99, 0.58)}, False),  # both clusters pass the diagnostic
    ({0: (0.05, 0.90), 1: (0.95, 1.0)}, False),  # strategies split, but ID accuracy differs by 10 points
    ({0: (0.5, 0.9)}, False),  # one cluster only
])
def test_strategy_verdicts(strat, held):
    ok, ev = lb.decide_strategy(strat)
    assert ok is held and ev


@pytest.mark.parametrize("diag, r, held, text", [
    ([0.4, 0.5, 0.6, 0.7], -0.8, True, "|r(spectral axis"),
    ([0.402, 0.5, 0.6, 0.705], -0.19, False, "|r(spectral axis"),  # the committed tiny case
    ([0.50, 0.51, 0.52, 0.53], 0.99, False, "did not split"),  # a correlation over no real spread
])
def test_emergent_verdicts(diag, r, held, text):
    ok, ev = lb.decide_emergent(diag, r, 1.9, 0.01)
    assert ok is held and text in ev


@pytest.mark.parametrize("small, large, held", [
    ([0.1, 0.05, 0.12], [0.3, 0.25, 0.4, 0.35], True),
    ([0.3, 0.28, 0.32], [0.3, 0.29, 0.31, 0.33], False),  # no gap
    ([0.0, 0.35], [0.3, 0.25, 0.2], False),  # mean gap 0.075 but overlapping (AUC 0.5)
    ([], [0.3], False),
])
def test_real_data_verdicts(small, large, held):
    ok, ev, stats = lb.decide_real(small, large)
    assert ok is held and ev and (stats == {} if not small else stats["auc"] >= 0)


@pytest.mark.parametrize("sep, r, held", [(4.0, 0.6, True), (2.0, 0.9, False), (5.0, 0.2, False)])
def test_minilm_verdicts(sep, r, held):
    out = {"separation": sep, "r_axis_diag": r, "D_mean": 0.01}
    ok, ev = lb.decide_minilm(out, np.array([0.2, 0.8]), 6, 0.05)
    assert ok is held and "MiniLM" in ev


def test_cluster_strategy_means():
    info = [{"diag_acc": 0.0, "id_acc": 1.0}, {"diag_acc": 1.0, "id_acc": 0.9}, {"diag_acc": 0.2, "id_acc": 0.8}]
    assert lb._cluster_strategy([0, 1, 0], info) == {0: (pytest.approx(0.1), pytest.approx(0.9)), 1: (1.0, 0.9)}


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(tmp_path):
    """The gpu preset with the real-data and MiniLM arms on, shrunk in steps, epochs, data, eval size, path
    grid and the number of children and MiniLM seeds only."""
    import os
    from pathlib import Path

    root = Path(os.environ.get("LMLAB_DATA", tmp_path / "none"))
    if not (root / "lmc" / "feather_berts_hans_accuracy_by_run.csv").is_file():
        root = _feather_csv(tmp_path / "data")
    shrunk = {"parent_steps": 20, "n_train": 128, "epochs": 1, "n_children": 4, "n_eval": 64, "n_points": 3,
              "minilm_models": 3, "minilm_n_train": 32, "minilm_epochs": 1, "minilm_eval": 32}
    rep = run_experiment("lmc_basins", "gpu", tmp_path / "out", device="cpu", data=str(root), overrides=shrunk,
                         quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    evidence = {c["id"]: c["evidence"] for c in res["claims"]}
    assert all("failed" not in e and "not evaluated" not in e and not e.startswith("undecided")
               for e in evidence.values()), evidence
    assert "3 MiniLM fine-tunes (p_swap=0.05)" in evidence["c5_minilm"] and "runs:" in evidence["c4_real_mnli"]
    m = res["metrics"]
    assert len(m["minilm"]["labels"]) == 3 and m["real_mnli"]["n_runs"] >= 30
    for name in ("planted_barriers", "emergent_barriers", "minilm_barriers"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000
