"""The lmc_basins experiment end to end on a miniature configuration: per-seed numbers recorded, verdicts from the
pure decide_* functions (their own tests: test_lmc_decide.py)."""

import json

import pytest

from lmlab.experiment import get, run_experiment
from lmlab.methods.lmc import experiment as lb

MINI = {"parent_steps": 40, "n_train": 300, "epochs": 2, "n_children": 4, "n_eval": 128, "n_points": 4,
        "permutations": 200}


def _feather_csv(root):
    """A miniature McCoy table: the published small cluster at 0.1, the other runs at 0.3."""
    (root / "lmc").mkdir(parents=True)
    rows = ["Run,MNLI dev acc.,Lexical (nonent)"]
    rows += [f"Run {i},0.84,{0.1 if i in lb.SMALL_CLUSTER else 0.3 + 0.001 * (i % 7)}" for i in range(30)]
    (root / "lmc" / "feather_berts_hans_accuracy_by_run.csv").write_text("\ufeff" + "\n".join(rows) + "\n")
    return root


def test_presets_claims_and_checks_are_declared():
    exp = get("lmc_basins")
    assert set(exp.claims) == {"c1_basins", "c2_strategy", "c3_emergent", "c4_real_mnli", "c5_minilm"}
    assert set(exp.checks) == {"k1_published_hans"} and exp.decide is lb.decide
    assert exp.presets["tiny"].minilm is False and exp.presets["small"].minilm is True
    assert exp.presets["tiny"].seeds >= 2 and exp.presets["small"].seeds >= 3 and exp.presets["gpu"].seeds >= 3


def test_miniature_run_records_per_seed_numbers_and_decides_from_them(tmp_path):
    data = _feather_csv(tmp_path / "data")
    rep = run_experiment("lmc_basins", "tiny", tmp_path / "out", data=str(data), overrides=MINI, quiet=True,
                         raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["seeds"] == [0, 1] and [r["seed"] for r in res["runs"]] == [0, 1]
    claims = {c["id"]: c for c in res["claims"]}
    checks = {c["id"]: c for c in res["checks"]}
    for cid in ("c1_basins", "c2_strategy", "c3_emergent"):
        assert claims[cid]["status"] in ("held", "not held", "undecided") and claims[cid]["evidence"], claims[cid]
    assert claims["c4_real_mnli"]["status"] == "not tested" and "no barrier data" in claims["c4_real_mnli"]["evidence"]
    assert claims["c5_minilm"]["status"] == "undecided" and "MiniLM arm" in claims["c5_minilm"]["evidence"]
    assert checks["k1_published_hans"]["status"] == "passed" and "30 runs" in checks["k1_published_hans"]["evidence"]
    numbers = [r["numbers"] for r in res["runs"]]
    for n in numbers:
        for tag in ("planted", "emergent"):
            r = n[tag]
            assert len(r["labels"]) == MINI["n_children"] and set(r["labels"]) <= {0, 1}
            assert r["within"] >= 0 and r["D_mean"] >= 0 and len(r["replicates"]) == 2 and r["floor"] >= 0
            assert 0 < r["perm_p"] <= 1 and len(r["D"]) == MINI["n_children"]
        assert -1 <= n["planted"]["ari"] <= 1 and len(n["hans"]["small"]) == 3  # runs 15, 25, 26 of 0-29
    # the verdicts are the pure decide_* functions' verdicts on the recorded numbers
    cfg = lb.Config(**{**vars(lb.PRESETS["tiny"]), **MINI})
    redo = lb.decide(numbers, cfg)
    for cid, v in redo.items():
        got = claims.get(cid) or checks[cid]
        assert got["status"] == v.status and got["evidence"] == v.reason
    for name in ("planted_barriers", "emergent_barriers"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(tmp_path):
    """The gpu preset with the real-data and MiniLM arms on, shrunk in steps, epochs, data, eval size, path
    grid, the number of children and MiniLM seeds, and seeds (2) only."""
    import os
    from pathlib import Path

    root = Path(os.environ.get("LMLAB_DATA", tmp_path / "none"))
    if not (root / "lmc" / "feather_berts_hans_accuracy_by_run.csv").is_file():
        root = _feather_csv(tmp_path / "data")
    shrunk = {"seeds": 2, "parent_steps": 20, "n_train": 128, "epochs": 1, "n_children": 4, "n_eval": 64,
              "n_points": 3, "permutations": 100, "minilm_models": 3, "minilm_n_train": 32, "minilm_epochs": 1,
              "minilm_eval": 32}
    rep = run_experiment("lmc_basins", "gpu", tmp_path / "out", device="cpu", data=str(root), overrides=shrunk,
                         quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    evidence = {c["id"]: c["evidence"] for c in res["claims"] + res["checks"]}
    assert all("failed" not in e and "not evaluated" not in e for e in evidence.values()), evidence
    assert "MiniLM" in evidence["c5_minilm"] and "arm is off" not in evidence["c5_minilm"]
    assert "runs:" in evidence["k1_published_hans"]
    for n in (r["numbers"] for r in res["runs"]):
        m = n["minilm"]
        assert len(m["labels"]) == 3 and len(m["replicates"]) == 1 and m["floor"] >= 0
        assert len(n["hans"]["small"]) + len(n["hans"]["large"]) >= 30
    for name in ("planted_barriers", "emergent_barriers", "minilm_barriers"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000
