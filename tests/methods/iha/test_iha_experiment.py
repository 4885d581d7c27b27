"""iha_synthetic on the decision engine: `measure` runs every part on a shrunken config, and the runner decides and
writes the report from it."""

import json

import torch

from lmlab.experiment import RunContext, get, resolve_config, run_experiment
from lmlab.utils import LmlabError

SHRUNK = dict(seeds=1, theory_steps=5, rel_d_model=16, rel_heads=2, rel_pseudo=2, rel_m2=[2, 3], rel_m3=[2, 3],
              rel_batch=4, rel_eval_every=2, rel_patience=1, rel_max_steps=4, rel_val=4, rel_test=4, niah_seq_len=64,
              niah_d_model=16, niah_batch=2, niah_eval_every=2, niah_max_steps=2, niah_val_n=1, niah_eval_n=2)


def test_measure_runs_every_part_on_a_shrunken_config(tmp_path):
    exp = get("iha_synthetic")
    cfg = resolve_config(exp, "gpu", SHRUNK)
    ctx = RunContext(exp, "gpu", cfg, 0, torch.device("cpu"), tmp_path, quiet=True)
    threads = torch.get_num_threads()
    n = exp.fn(ctx, 0)
    assert torch.get_num_threads() == threads  # measure restores the thread count it lowered
    assert set(n["poly"]) == set(n["cpm3"]) == {"MHA H=2", "IHA H=2 P=2", "MHA H=4 (control)"}
    assert n["inclusion_gap"] < 1e-5 and 0 < n["flop_ratio"] <= 1
    cells = n["relations"]["cells"]
    assert [(c["lr"], c["order"]) for c in cells] == [(1e-3, 2), (1e-3, 3), (1e-4, 2), (1e-4, 3)]
    assert all(0 <= c[m]["test_acc"] <= 100 and c[m]["steps"] <= 4 for c in cells for m in ("mha", "iha"))
    assert n["niah"]["steps"] == 2 and len(n["niah"]["hybrid"]["per_prompt"]) == 2


def test_run_decides_and_reports(tmp_path):
    rep = run_experiment("iha_synthetic", "gpu", out_dir=tmp_path, device="cpu", overrides=SHRUNK, quiet=True,
                         raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    status = {c["id"]: c for c in res["claims"]}
    assert set(status) >= {"c1_polynomial", "c2_cpm3", "c3_relations", "c4_niah"}
    assert all("not evaluated" not in c["evidence"] for c in status.values())
    assert {p.name for p in tmp_path.glob("*.png")} == {"polynomial_filters.png", "cpm3_workspace.png",
                                                       "relations.png"}


def test_bad_config_names_the_key():
    exp = get("iha_synthetic")
    for key, value in (("rel_m2", [5, 3]), ("rel_pseudo", 1), ("rel_lrs", []), ("niah_seq_len", 4)):
        try:
            resolve_config(exp, "tiny", {key: value})
        except LmlabError as e:
            assert key in str(e)
        else:
            raise AssertionError(f"{key}={value} was accepted")
