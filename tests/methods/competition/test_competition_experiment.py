"""The task_competition experiment end to end on a miniature configuration (toy + LM code paths)."""

import json

import pytest

from lmlab.experiment import get, run_experiment

MINI = {"seeds": 2, "widths": [4, 16], "sweep_steps": 300, "inj_widths": [8, 64], "inj_steps": 399,
        "inj_periods": [100, 20], "relu": True, "relu_widths": [8], "lm": True, "lm_sizes": [[1, 16], [1, 32]],
        "lm_freqs": [1, 0.5], "lm_steps": 12, "lm_eval_every": 6, "lm_batch": 4, "lm_seq": 16, "lm_vocab": 16,
        "cmp_items": 5, "mod_p": 5, "lm_probe_freqs": [1]}


def test_presets_and_claims_are_declared():
    exp = get("task_competition")
    assert set(exp.claims) == {"c1_tasks_learned_grow", "c2_allocation", "c3_retention_threshold",
                               "c4_common_gradient", "c5_frequency_substitutes", "c6_lm_rare_tasks"}
    assert exp.presets["tiny"].lm is False and exp.presets["small"].lm is True


def test_miniature_run_writes_a_complete_report(tmp_path):
    rep = run_experiment("task_competition", "tiny", tmp_path, overrides=MINI, quiet=True, raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    claims = {c["id"]: c for c in res["claims"]}
    for c in claims.values():
        assert c["evidence"] != "not evaluated in this run"
        assert c["held"] in (True, False, None)
    # 4 units can hold tasks 0-1 (ranks 1, 2) and one direction of task 2; 300 SGD steps learn the first two
    err4 = res["metrics"]["toy_errors"]["4"]
    assert max(err4[:2]) < 0.1 and min(err4[3:]) > 0.9
    assert abs(sum(res["metrics"]["toy_alloc"]["4"]) - 1.0) < 1e-6  # every one of the 4 units is allocated
    lm = res["metrics"]["lm"]
    assert len(lm) == 4 and {r["freq"] for r in lm} == {1, 0.5}
    for r in lm:
        probes = r["tasks"]["comparison"]["probe"]
        assert sorted(probes) == (["-1", "0"] if r["freq"] == 1 else [])
        assert all(0.0 <= v <= 1.0 for v in probes.values())
    for name in ("error_heatmap", "allocation", "retention", "gradient_norms", "lm_frequency_size_grid",
                 "lm_signal_interference"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_interrupt_in_the_lm_ladder_decides_claim_6_on_finished_frequencies(tmp_path, monkeypatch):
    import lmlab.methods.competition.experiment as tc

    real, calls = tc.lm_run, []

    def lm_run(cfg, setup, layers, d, freq, *args):
        calls.append(freq)
        if len(calls) == 4:  # the second size of the second frequency: as a time limit's SIGINT would
            raise KeyboardInterrupt
        return real(cfg, setup, layers, d, freq, *args)

    monkeypatch.setattr(tc, "lm_run", lm_run)
    mini = {**MINI, "lm_freqs": [1, 0.5, 0.25], "relu": False, "relu_widths": []}
    with pytest.raises(KeyboardInterrupt):
        run_experiment("task_competition", "tiny", tmp_path, overrides=mini, quiet=True)
    res = json.loads((tmp_path / "results.json").read_text())
    assert "interrupted" in res["error"]
    assert [r["freq"] for r in res["metrics"]["lm"]] == [1, 1]  # the half-finished frequency is dropped
    c6 = {c["id"]: c for c in res["claims"]}["c6_lm_rare_tasks"]
    assert c6["held"] in (True, False) and "only frequencies [1] of [1, 0.5, 0.25] finished" in c6["evidence"]


def test_toy_in_a_forked_process_reports_the_same_numbers(tmp_path):
    """The toy runs beside the LM ladder in a child process when the LM is on; its claims must not change."""
    mini = {**MINI, "relu": False, "relu_widths": [], "lm_freqs": [1], "lm_sizes": [[1, 16]]}
    out = {}
    for overlap in (False, True):
        run_experiment("task_competition", "tiny", tmp_path / str(overlap),
                       overrides={**mini, "toy_in_process": overlap}, quiet=True, raise_errors=True)
        out[overlap] = json.loads((tmp_path / str(overlap) / "results.json").read_text())
    for key in ("toy_errors", "toy_alloc", "injection", "lm"):
        assert out[True]["metrics"][key] == out[False]["metrics"][key], key
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
    cheap = {"seeds": 2, "widths": [4, 16], "sweep_steps": 200, "inj_widths": [8, 64], "inj_steps": 199,
             "relu_widths": [8, 16], "lm_sizes": gpu.lm_sizes[:2], "lm_steps": 20, "lm_eval_every": 10,
             "lm_batch": 4, "lm_seq": 32, "lm_freqs": [10, 0.1], "cmp_items": 8, "mod_p": 11}
    rep = run_experiment("task_competition", "gpu", tmp_path, device="cpu", overrides=cheap, quiet=True,
                         raise_errors=True)
    assert rep.error is None and forked
    res = json.loads((tmp_path / "results.json").read_text())
    for c in res["claims"]:
        assert "not evaluated" not in c["evidence"] and "failed" not in c["evidence"], c
    assert "not part of the tiny preset" not in {c["id"]: c for c in res["claims"]}["c6_lm_rare_tasks"]["evidence"]
    m = res["metrics"]
    assert sorted(m["relu_errors"], key=int) == ["8", "16"] and "relu_top3_share" in m
    assert {(r["layers"], r["d_model"], r["freq"]) for r in m["lm"]} == \
        {(*s, f) for s in gpu.lm_sizes[:2] for f in (10, 0.1)}
    for r in m["lm"]:
        for t in r["tasks"].values():
            layers = sorted({-1, r["layers"] // 2 - 1, r["layers"] - 1}) if r["freq"] in gpu.lm_probe_freqs else []
            assert sorted(t["probe"], key=int) == [str(x) for x in layers]
            if r["freq"] < 1:  # injections at steps 9 and 19: the jump and decay are measured
                assert t["jump"] is not None and (t["decay_frac"] is not None or t["jump"] <= 0)
        assert len(r["grads"]["steps"]) == 2 and 0 <= r["alloc_injected"] <= 1
    for name in ("error_heatmap", "allocation", "retention", "gradient_norms", "lm_frequency_size_grid",
                 "lm_signal_interference"):
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
