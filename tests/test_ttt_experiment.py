import json

from lmlab.experiments import registry, run_experiment


def test_experiment_registered_with_presets():
    exp = registry()["long_context_ttt"]
    assert set(exp.presets) >= {"tiny", "small", "gpu"}
    assert set(exp.claims) == {"c1_dilution", "c2_thinking", "c3_qttt"}


def test_tiny_mechanism_run_decides_from_numbers(tmp_path):
    rep = run_experiment(
        "long_context_ttt",
        "tiny",
        tmp_path,
        quiet=True,
        raise_errors=True,
        overrides={
            "lengths": [16, 512],
            "n_eval": 24,
            "head_steps": 150,
            "lemma_instances": 10,
            "ttt_steps": 12,
        },
    )
    res = json.loads((tmp_path / "results.json").read_text())
    checks = res["metrics"]["lemma_checks"]
    assert checks["lemma22_max_excess"] <= 0 and checks["prop31_max_abs_err"] < 1e-6
    head = res["metrics"]["head"]
    assert head["512"]["mass"] < head["16"]["mass"]  # dilution of the trained head
    assert rep.claims["c2_thinking"].held is None
    assert "mechanism level" in rep.claims["c1_dilution"].evidence
    assert (tmp_path / "head_dilution.png").exists()


def test_lm_path_smoke(tmp_path):
    """The full language-model pipeline on a model too small and short-trained to retrieve: it must run every
    arm and leave the claims undecided with the reason."""
    rep = run_experiment(
        "long_context_ttt",
        "small",
        tmp_path,
        quiet=True,
        raise_errors=True,
        device="cpu",
        overrides={
            "train_steps": 4,
            "d_model": 16,
            "n_keys": 16,
            "n_values": 4,
            "n_families": 2,
            "train_lines": [2, 4],
            "think_max": 2,
            "lengths": [3, 6],
            "n_eval": 4,
            "n_val": 2,
            "ttt_steps": 2,
            "ttt_span": 3,
            "ttt_lrs": [1e-3],
            "eval_batch": 4,
            "batch_size": 2,
        },
    )
    res = json.loads((tmp_path / "results.json").read_text())
    arms = res["metrics"]["results"]["6"]
    assert {"ic", "think", "uniform", "targeted", "lora"} <= set(arms)
    assert (
        all(c.held is None for c in rep.claims.values()) or res["metrics"]["results"]["3"]["ic"]["acc"] >= 0.5
    )
