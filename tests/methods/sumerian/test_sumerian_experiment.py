"""The sumerian_pipeline gpu preset runs end to end on CPU with shrunk costs (self-training, decided MT claim)."""

import json

import pytest

from lmlab.experiment import run_experiment


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(shared_data, tmp_path):
    if not (shared_data / "sumerian").is_dir():
        pytest.skip("real data sumerian/ is absent")
    # the preset's 0 for tag_train/tag_test/mt_train/mt_test means "all": cut them to a few lines instead
    shrunk = {"tag_train": 100, "tag_test": 50, "crf_iters": 5, "bilstm_epochs": 1, "mt_train": 300, "mt_test": 20,
              "mt_steps": 3, "beam": 2, "self_training_lines": 30, "synth_steps": 3, "synth_eval": 1, "ig_steps": 4}
    rep = run_experiment("sumerian_pipeline", "gpu", out_dir=tmp_path, device="cpu", data=str(shared_data),
                         overrides=shrunk, quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["self_training"] and res["config"]["decide_mt"]
    evidence = {c["id"]: c["evidence"] for c in res["claims"]}
    assert all(not e.startswith("undecided") and "failed" not in e for e in evidence.values()), evidence
    m = res["metrics"]
    for name in ("hmm", "crf", "bilstm_crf"):
        assert f"pos.{name}.accuracy" in m and f"ner.{name}.entity_f1" in m
    assert {"mt.transformer.bleu", "mt.transformer (greedy).bleu", "mt.transformer + 1 round self-training.bleu",
            "mt.self_training_bleu_change", "synthetic.mean_ap_gain"} <= set(m)
    assert m["mt.self_training.lines"] == 30
    for fig in ("tagging", "mt_loss", "real_example_attributions", "synthetic_attributions"):
        assert (tmp_path / f"{fig}.png").exists()
