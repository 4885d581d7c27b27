"""The sumerian_pipeline gpu preset runs end to end on CPU with shrunk costs (translator, M-BT, expert
example), on the decision engine: per-seed numbers recorded, every claim and check given a verdict."""

import json

import pytest

from lmlab.experiment import run_experiment
from lmlab.methods.sumerian.experiment import BT_BASE, BT_SYSTEM, CHECKS, CLAIMS


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(shared_data, tmp_path):
    if not (shared_data / "sumerian").is_dir():
        pytest.skip("real data sumerian/ is absent")
    # the preset's 0 for tag_train/tag_test/mt_train/mt_test means "all": cut them to a few lines instead
    shrunk = {"seeds": 2, "tag_train": 100, "tag_test": 50, "crf_iters": 5, "bilstm_epochs": 1, "mt_train": 300,
              "mt_test": 20, "mt_steps": 3, "beam": 2, "bootstrap": 50, "synth_steps": 3, "synth_eval": 1,
              "ig_steps": 4}
    rep = run_experiment("sumerian_pipeline", "gpu", out_dir=tmp_path, device="cpu", data=str(shared_data),
                         overrides=shrunk, quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["back_translation"] and res["config"]["decide_mt"]
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    claims = {c["id"]: c for c in res["claims"]}
    checks = {c["id"]: c for c in res["checks"]}
    assert set(claims) == set(CLAIMS) and set(checks) == set(CHECKS)
    assert all("failed" not in c["evidence"] and "finished without deciding" not in c["evidence"]
               for c in [*claims.values(), *checks.values()])
    assert claims["attributions_agree_with_experts"]["status"] == "not tested"
    assert claims["back_translation_raises_bleu"]["evidence"].startswith("not learned")
    # three translator steps learn nothing: the MT claim says so rather than "not held"
    assert claims["mt_beats_baseline"]["status"] == "undecided"
    assert claims["mt_beats_baseline"]["evidence"].startswith("not learned")
    numbers = res["runs"][0]["numbers"]
    for name in ("majority", "word_majority", "word_shape_majority", "hmm", "crf", "bilstm_crf"):
        assert name in numbers["tagging"]["pos"] and "entity_f1" in numbers["tagging"]["ner"][name]
    assert {"copy", "lexicon", "transformer", "transformer (greedy)", BT_BASE, BT_SYSTEM} == set(numbers["mt"]["scores"])
    bt = numbers["mt"]["back_translation"]
    assert bt["parallel"] + bt["mono"] + bt["mono_dropped_equal_to_held_out"] == 300
    assert set(numbers["mt"]["bleu_breakdown"]["systems"]) == {"beam 2", "greedy"}
    assert numbers["mt"]["expert_example"]["matrices"].keys() == {"integrated_gradients", "attention"}
    m = res["metrics"]
    assert {"mt.transformer.bleu", "mt.mbt_bleu_change", "mt.test_near_duplicate_share", "synthetic.mean_ap_gain"} <= set(m)
    for fig in ("tagging", "mt_loss", "real_example_attributions", "synthetic_attributions"):
        assert (tmp_path / f"{fig}.png").exists()
