"""The task_competition experiment end to end on a miniature configuration (toy + LM code paths)."""

import json

import numpy as np
import pytest

from lmlab.experiment import get, redecide, run_experiment

MINI = {"seeds": 2, "nets": 2, "widths": [4, 16], "linear_widths": [4, 16], "sweep_steps": 300, "inj_widths": [8, 64],
        "linear_inj_widths": [8], "inj_steps": 399, "inj_periods": [100, 20], "cycles": 2, "lm": True,
        "lm_sizes": [[1, 16], [1, 32]], "lm_freqs": [1, 0.5], "lm_steps": 12, "lm_eval_every": 6, "lm_batch": 4,
        "lm_seq": 16, "lm_vocab": 16, "cmp_items": 5, "mod_p": 5, "lm_probe_freqs": [1]}
CLAIMS = {"c1_tasks_learned_grow", "c2_allocation", "c3_retention_threshold", "c4_interference",
          "c5_frequency_substitutes", "c6_lm_rare_tasks"}
CHECKS = {"k1_linear_eckart_young", "k2_linear_allocation", "k3_linear_retention"}


def test_presets_claims_checks_and_seeds_are_declared():
    exp = get("task_competition")
    assert set(exp.claims) == CLAIMS and set(exp.checks) == CHECKS and exp.decide is not None
    assert exp.presets["tiny"].lm is False and exp.presets["small"].lm is True
    assert exp.presets["tiny"].seeds >= 2 and exp.presets["small"].seeds >= 3 and exp.presets["gpu"].seeds >= 3
    for p in ("small", "gpu"):  # c6: injection frequencies between 10 and 1 per batch
        assert max(exp.presets[p].lm_freqs) == 10 and min(exp.presets[p].lm_freqs) == 1


def test_miniature_run_stores_every_seed_and_decides_from_the_stored_numbers(tmp_path):
    rep = run_experiment("task_competition", "tiny", tmp_path, overrides=MINI, quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    statuses = {c["id"]: c["status"] for c in res["claims"]}
    assert set(statuses) == CLAIMS and set(statuses.values()) <= {"held", "not held", "undecided"}
    assert {c["id"] for c in res["checks"]} == CHECKS
    for c in res["claims"] + res["checks"]:
        assert c["evidence"] != "not evaluated in this run"
    numbers = res["runs"][0]["numbers"]
    # 4 ReLU units learn the most frequent task and not the rarest; every linear unit is allocated
    err4 = np.mean(numbers["sweep"]["relu"]["errors"][0], 0)
    assert err4[0] < 0.1 and min(err4[6:]) > 0.9
    assert np.sum(numbers["sweep"]["linear"]["alloc"][0], 1) == pytest.approx([1.0, 1.0], abs=1e-6)
    for run in numbers["inj"]["relu"]:  # the last `cycles` intervals, per net
        for cell in run["cells"]:
            assert np.shape(cell["U"]) == np.shape(cell["R"]) == np.shape(cell["G"]) == (2, 2)
    lm = numbers["lm"]
    assert len(lm) == 4 and {r["freq"] for r in lm} == {1, 0.5}
    for r in lm:
        probes = r["tasks"]["comparison"]["probe"]
        assert sorted(probes) == (["-1", "0"] if r["freq"] == 1 else [])
    for name in ("error_heatmap_relu", "error_heatmap_linear", "retention", "lm_frequency_size_grid"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    again = redecide(tmp_path)  # `lmlab decide`: the verdicts again from results.json alone
    assert {cid: c.status for cid, c in again.claims.items()} == statuses


def test_an_interrupted_run_keeps_its_finished_seed_and_resumes_at_the_next(tmp_path, monkeypatch):
    import lmlab.methods.competition.experiment as tc

    real, calls = tc.lm_run, []

    def lm_run(cfg, setup, layers, d, freq, seed, *args):
        calls.append(seed)
        if seed == 1 and len(calls) == 5:  # the second seed's first cell: as a time limit's SIGINT would
            raise KeyboardInterrupt
        return real(cfg, setup, layers, d, freq, seed, *args)

    monkeypatch.setattr(tc, "lm_run", lm_run)
    mini = {**MINI, "linear_inj_widths": []}
    with pytest.raises(KeyboardInterrupt):
        run_experiment("task_competition", "tiny", tmp_path, overrides=mini, quiet=True)
    res = json.loads((tmp_path / "results.json").read_text())
    assert "interrupted" in res["error"] and [r["seed"] for r in res["runs"]] == [0]
    first = res["runs"][0]["numbers"]
    run_experiment("task_competition", "tiny", tmp_path, overrides=mini, quiet=True, raise_errors=True, resume=True)
    res = json.loads((tmp_path / "results.json").read_text())
    assert [r["seed"] for r in res["runs"]] == [0, 1] and res["runs"][0]["numbers"] == first
    assert calls.count(0) == 4  # seed 0 was not measured again


def test_toy_in_a_forked_process_reports_the_same_numbers(tmp_path):
    """The toy runs beside the LM ladder in a child process when the LM is on; its claims must not change."""
    mini = {**MINI, "seeds": 1, "linear_inj_widths": [], "lm_freqs": [1], "lm_sizes": [[1, 16]]}
    out = {}
    for overlap in (False, True):
        run_experiment("task_competition", "tiny", tmp_path / str(overlap),
                       overrides={**mini, "toy_in_process": overlap}, quiet=True, raise_errors=True)
        out[overlap] = json.loads((tmp_path / str(overlap) / "results.json").read_text())
    assert out[True]["runs"] == out[False]["runs"]
    assert out[True]["claims"] == out[False]["claims"]


def test_a_failing_toy_process_raises_with_its_traceback(monkeypatch):
    import lmlab.methods.competition.experiment as tc

    def broken(cfg, seed, log):
        raise ValueError("bad toy width")

    monkeypatch.setattr(tc, "toy_part", broken)
    with pytest.raises(RuntimeError, match="bad toy width"):
        tc._ToyProcess(tc.Config(), 0, print).result()


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_with_every_section(tmp_path, monkeypatch):
    """The gpu preset's code paths (LM ladder, fractional frequency, probes, ReLU toy, the toy in a forked
    process) with costs cut: fewer seeds, widths, steps, frequencies, task pairs and a smaller batch."""
    import lmlab.methods.competition.experiment as tcx

    forked = []

    class Spy(tcx._ToyProcess):
        def result(self):
            forked.append(self.proc.pid)
            return super().result()

    monkeypatch.setattr(tcx, "_ToyProcess", Spy)
    gpu = get("task_competition").presets["gpu"]
    cheap = {"seeds": 1, "nets": 2, "widths": [4, 16], "linear_widths": [4, 16], "sweep_steps": 200,
             "inj_widths": [8, 64], "linear_inj_widths": [8], "inj_steps": 199, "cycles": 1,
             "lm_sizes": gpu.lm_sizes[:2], "lm_steps": 20, "lm_eval_every": 10, "lm_batch": 4, "lm_seq": 32,
             "lm_freqs": [10, 0.1], "cmp_items": 8, "mod_p": 11}
    rep = run_experiment("task_competition", "gpu", tmp_path, device="cpu", overrides=cheap, quiet=True,
                         raise_errors=True)
    assert rep.error is None and forked
    res = json.loads((tmp_path / "results.json").read_text())
    for c in res["claims"]:
        assert "not evaluated" not in c["evidence"] and "run failed" not in c["evidence"], c
    assert "moved to small" not in {c["id"]: c for c in res["claims"]}["c6_lm_rare_tasks"]["evidence"]
    numbers = res["runs"][0]["numbers"]
    assert set(numbers["inj"]) == {"relu", "linear"}
    assert {(r["layers"], r["d_model"], r["freq"]) for r in numbers["lm"]} == \
        {(*s, f) for s in gpu.lm_sizes[:2] for f in (10, 0.1)}
    for r in numbers["lm"]:
        for t in r["tasks"].values():
            layers = sorted({-1, r["layers"] // 2 - 1, r["layers"] - 1}) if r["freq"] in gpu.lm_probe_freqs else []
            assert sorted(t["probe"], key=int) == [str(x) for x in layers]
            if r["freq"] < 1:  # injections at steps 9 and 19: the jump and decay are measured
                assert t["jump"] is not None and (t["decay_frac"] is not None or t["jump"] <= 0)
        assert len(r["grads"]["steps"]) == 2 and 0 <= r["alloc_injected"] <= 1
    for name in ("error_heatmap_relu", "retention", "lm_frequency_size_grid"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_the_toy_process_outlives_a_ctrl_c_and_a_dead_one_raises(monkeypatch):
    """A time limit's SIGINT reaches the whole process group: the toy must still deliver its (pipe-sized)
    result, and a child killed without sending one must raise, not hang the run."""
    import os
    import signal
    import time

    import numpy as np

    import lmlab.methods.competition.experiment as tc

    monkeypatch.setattr(tc, "toy_part", lambda cfg, seed, log: time.sleep(0.5) or {"x": np.zeros(100_000)})
    toy = tc._ToyProcess(tc.Config(), 0, print)
    time.sleep(0.2)
    os.kill(toy.proc.pid, signal.SIGINT)
    assert toy.result()["x"].shape == (100_000,)
    monkeypatch.setattr(tc, "toy_part", lambda cfg, seed, log: time.sleep(30))
    toy = tc._ToyProcess(tc.Config(), 0, print)
    os.kill(toy.proc.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="died without a result"):
        toy.result()
