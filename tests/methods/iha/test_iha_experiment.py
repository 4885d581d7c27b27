"""The iha_synthetic experiment runs end to end (all four sections) with miniature settings."""

import json

import torch

from lmlab.experiment import run_experiment


def test_iha_synthetic_runs_every_section(tmp_path):
    tiny = dict(theory_seeds=1, theory_steps=5, rel_d_model=16, rel_steps=2, rel_batch=8, rel_eval=16,
                rel_pseudo=[2], niah_seq_len=64, niah_d_model=16, niah_steps=2, niah_batch=2,
                niah_eval_lengths=[160], niah_eval_n=2)
    rep = run_experiment("iha_synthetic", "gpu", out_dir=tmp_path, device="cpu", overrides=tiny, quiet=True,
                         raise_errors=True)
    torch.set_num_threads(1)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    evidence = {c["id"]: c["evidence"] for c in res["claims"]}
    assert all("failed" not in e and "not evaluated" not in e for e in evidence.values()), evidence
    assert "IHA(H=2,P=2)" in evidence["c1_polynomial"] and "IHA − MHA" in evidence["c3_relations"]
    assert {"poly_nmse[IHA H=2 P=2]", "cpm_row_acc[MHA H=2]", "niah[IHA hybrid][160]"} <= set(res["metrics"])
    # one figure per claim, each threshold line named in a legend
    assert {p.name for p in tmp_path.glob("*.png")} == {"polynomial_filters.png", "cpm3_workspace.png", "relations.png",
                                                       "niah.png"}
