"""The info_memorization experiment end to end on a miniature configuration: per-seed numbers recorded, verdicts
the `decide_*` functions' on those numbers, the report complete."""

import json

import pytest
from scipy.special import digamma

from lmlab.experiment import get, redecide, run_experiment
from lmlab.methods.info import experiment as im

# the small preset (it runs the text family) shrunk to a few seconds on one thread: one seed, the two extremes
MINI = {"seeds": 1, "n_train": 300, "n_val": 200, "alphas": [0.0, 1.0], "betas": [0.0, 0.75], "heur_width": 16,
        "heur_epochs": 60, "ex_width": 64, "ex_epochs": 60, "ex_n_train": 100, "mi_neurons": 6, "text": True,
        "text_n": 400, "text_epochs": 3}


def test_presets_and_claims_are_declared():
    exp = get("info_memorization")
    assert set(exp.claims) == {"c1_heuristic", "c2_example", "c3_ranking", "c4_text", "c5_ranking_mi"}
    assert exp.decide is im.decide and exp.summarize is im.summarize
    tiny, small, gpu = (exp.presets[p] for p in ("tiny", "small", "gpu"))
    assert tiny.text is False and small.text is True and gpu.text is True
    assert tiny.seeds >= 2 and small.seeds >= 3 and gpu.seeds >= 3
    # the paper's binning decides; the example sweep is the paper's 3 x 256 MLP on 64-d, 10-class inputs
    assert tiny.n_bins == 100 and (tiny.ex_dim, tiny.ex_classes, tiny.ex_depth, tiny.ex_width) == (64, 10, 3, 256)
    # one weight decay for every sweep (the paper's MLP L2)
    assert not hasattr(tiny, "ex_weight_decay") and tiny.weight_decay == 2e-3


def test_miniature_run_records_per_seed_numbers_and_decides_from_them(tmp_path):
    rep = run_experiment("info_memorization", "small", tmp_path, overrides=MINI, quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["seed"] for r in res["runs"]] == [0]
    numbers = res["runs"][0]["numbers"]
    assert set(numbers) == {"heuristic", "example", "text"}
    # the off-diagonal mean is what it says: all-pairs mean = (diagonal ψ(S)−ψ(k) + (N−1)·off-diagonal) / N
    diag = digamma(MINI["n_val"]) - digamma(3)
    for family, layers in (("heuristic", 2), ("example", 3)):
        n_neurons = layers * MINI["mi_neurons"]
        for m in numbers[family]["models"] + [numbers[family]["replicate"]]:
            assert m["MI"] == pytest.approx((diag + (n_neurons - 1) * m["MI_off"]) / n_neurons, rel=1e-9)
            assert 0.0 <= m["val_acc"] <= 1.0 and 0.0 < m["range_share"] <= 1.0
        assert [m["level"] for m in numbers[family]["models"]] == MINI["alphas" if family == "heuristic" else "betas"]
    assert numbers["example"]["models"][0]["mem_acc"] is None and 0 <= numbers["example"]["models"][1]["mem_acc"] <= 1
    # the recorded verdicts are the decide_* functions' on the recorded numbers
    cfg = im.PRESETS["small"]
    expected = {cid: v.status for cid, v in im.decide([numbers], cfg).items()}
    claims = {c["id"]: c for c in res["claims"]}
    assert {cid: c["status"] for cid, c in claims.items()} == expected
    for c in claims.values():
        assert c["evidence"] and "not evaluated" not in c["evidence"] and "failed" not in c["evidence"], c
    assert "off-diagonal" in claims["c1_heuristic"]["evidence"] and "all-pairs" in claims["c1_heuristic"]["evidence"]
    assert "per-neuron bins" in claims["c2_example"]["evidence"]
    assert set(claims["c1_heuristic"]["extra"]) >= {"entropy", "MI"}
    for name in ("heuristic_entropy", "heuristic_mi", "example_entropy", "example_mi", "text_entropy", "text_mi"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    text = (tmp_path / "report.md").read_text()
    assert "mean MI (off-diagonal)" in text and "per-neuron bins, reported" in text and "(replicate)" in text
    # redecide reads the same numbers back to the same verdicts
    again = {c.id: c.status for c in redecide(tmp_path).claims.values()}
    assert again == expected


def test_sweep_tau_orients_each_sweep_by_its_memorization_type():
    def models(acc, h, mi):
        return [{"val_acc": a, "H": x, "MI": y} for a, x, y in zip(acc, h, mi)]

    # heuristic: accuracy falls as entropy falls and MI rises -> both rankings agree (τ = 1)
    heur = models([1.0, 0.9, 0.5], [2.2, 2.0, 1.7], [1.0, 1.2, 3.0])
    assert im.sweep_tau(heur, "heuristic") == {"entropy": pytest.approx(1.0), "mi": pytest.approx(1.0)}
    # example: accuracy falls as entropy rises and MI falls -> the example direction agrees
    ex = models([1.0, 0.8, 0.6], [1.4, 2.0, 2.7], [0.9, 0.7, 0.5])
    assert im.sweep_tau(ex, "example") == {"entropy": pytest.approx(1.0), "mi": pytest.approx(1.0)}
    assert im.sweep_tau(ex, "heuristic")["entropy"] == pytest.approx(-1.0)


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(tmp_path):
    """The gpu preset with its four α and β levels, three seeds and the text family, shrunk in data, epochs and
    the number of neurons in the MI estimate only."""
    shrunk = {"n_train": 200, "n_val": 100, "heur_epochs": 20, "ex_epochs": 20, "ex_n_train": 100,
              "mi_neurons": 6, "text_n": 400, "text_epochs": 2}
    rep = run_experiment("info_memorization", "gpu", tmp_path, device="cpu", overrides=shrunk, quiet=True,
                         raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    gpu = get("info_memorization").presets["gpu"]
    assert len(res["runs"]) == gpu.seeds
    for run in res["runs"]:
        n = run["numbers"]
        assert [m["level"] for m in n["heuristic"]["models"]] == gpu.alphas
        assert [m["level"] for m in n["example"]["models"]] == gpu.betas
        assert [m["level"] for m in n["text"]["models"]] == [gpu.alphas[0], gpu.alphas[-1]]
    evidence = {c["id"]: c["evidence"] for c in res["claims"]}
    assert all("failed" not in e and "not evaluated" not in e and not e.startswith("time budget")
               for e in evidence.values()), evidence
    assert "over 4 α-models" in evidence["c3_ranking"] or evidence["c3_ranking"].startswith("not learned")
    for name in ("heuristic_entropy", "example_mi", "text_entropy", "text_mi"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
