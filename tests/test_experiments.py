import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import lmlab.experiment as ex
from lmlab import cli
from lmlab.experiment import Experiment, experiment, resolve_config, run_experiment
from lmlab.methods.scaling import experiment as scaling
from lmlab.utils import LmlabError

FAST_SMOKE = scaling.Config(vocab=12, branching=2, seq_len=16, layers=1, heads=2, lr=3e-3, eval_every=10,
                            eval_seqs=16, widths=[8, 32], seeds=1, steps=20, batch=8)


@dataclasses.dataclass
class Empty:
    """A config with no fields."""


@pytest.fixture
def registry(monkeypatch):
    """The real registry (discovered), with a failing experiment added for this test only and a
    fast scaling_smoke tiny preset."""
    reg = ex.registry()

    def boom(ctx):
        ctx.report.decide("c_ok", True, "decided before the failure")
        raise RuntimeError("simulated failure")

    monkeypatch.setitem(
        ex._REGISTRY,
        "boom",
        Experiment(
            "boom",
            "A failing paper",
            {"c_ok": "decided", "c_lost": "never reached"},
            {"tiny": Empty(), "small": Empty(), "gpu": Empty()},
            boom,
        ),
    )
    monkeypatch.setitem(reg["scaling_smoke"].presets, "tiny", FAST_SMOKE)
    return ex.registry()


def test_registry_and_config(registry):
    assert {"scaling_smoke", "boom"} <= set(registry)
    smoke = registry["scaling_smoke"]
    assert set(smoke.presets) >= {"tiny", "small", "gpu"} and "c1_wider_lower_loss" in smoke.claims
    cfg = resolve_config(smoke, "tiny", {"steps": "7", "lr": 0.01})
    assert cfg.steps == 7 and cfg.lr == 0.01
    cfg.widths.append(999)  # a resolved config is the caller's own: the registered preset is unchanged
    assert 999 not in smoke.presets["tiny"].widths
    calm = registry["calm_kv"]
    # `baselines=` on the command line clears the list
    assert resolve_config(calm, "small", {"baselines": ""}).baselines == ""
    with pytest.raises(LmlabError, match="unknown config key 'stepz': did you mean steps"):
        resolve_config(smoke, "tiny", {"stepz": 3})
    with pytest.raises(LmlabError, match="no preset"):
        resolve_config(smoke, "huge")
    with pytest.raises(LmlabError, match="unknown experiment"):
        ex.get("no_such_experiment")
    with pytest.raises(ValueError, match="lacks presets"):
        experiment("x", "p", {}, {"tiny": Empty()})
    with pytest.raises(ValueError, match="not dataclasses"):
        experiment("x", "p", {}, {"tiny": {}, "small": {}, "gpu": {}})


def test_failing_experiment_is_recorded(registry, tmp_path):
    rep = run_experiment("boom", "tiny", tmp_path / "boom", quiet=True)
    assert "simulated failure" in rep.error
    data = json.loads((tmp_path / "boom" / "results.json").read_text())
    claims = {c["id"]: c for c in data["claims"]}
    assert claims["c_ok"]["held"] is True
    assert claims["c_lost"]["held"] is None and "run failed" in claims["c_lost"]["evidence"]
    assert "simulated failure" in (tmp_path / "boom" / "report.md").read_text()
    with pytest.raises(RuntimeError):
        run_experiment("boom", "tiny", tmp_path / "boom2", quiet=True, raise_errors=True)


def test_interrupted_experiment_keeps_its_report(monkeypatch, tmp_path):
    def stopped(ctx):
        ctx.report.decide("c_ok", True, "decided before Ctrl-C")
        raise KeyboardInterrupt

    exp = Experiment("stopped", "p", {"c_ok": "decided", "c_lost": "never reached"},
                     {"tiny": Empty(), "small": Empty(), "gpu": Empty()}, stopped)
    monkeypatch.setitem(ex._REGISTRY, "stopped", exp)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("stopped", "tiny", tmp_path / "s", quiet=True)
    data = json.loads((tmp_path / "s" / "results.json").read_text())
    claims = {c["id"]: c for c in data["claims"]}
    assert "interrupted" in data["error"] and claims["c_ok"]["held"] is True
    assert claims["c_lost"]["held"] is None and "interrupted" in claims["c_lost"]["evidence"]


def test_interruptible_block_lets_the_experiment_report_then_stops_the_run(monkeypatch, tmp_path):
    def partial(ctx):
        with ctx.interruptible():
            raise KeyboardInterrupt
        ctx.report.decide("c_ok", True, "decided from what finished before the interrupt")

    exp = Experiment("partial", "p", {"c_ok": "decided", "c_lost": "never reached"},
                     {"tiny": Empty(), "small": Empty(), "gpu": Empty()}, partial)
    monkeypatch.setitem(ex._REGISTRY, "partial", exp)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("partial", "tiny", tmp_path / "p", quiet=True)
    data = json.loads((tmp_path / "p" / "results.json").read_text())
    claims = {c["id"]: c for c in data["claims"]}
    assert "interrupted" in data["error"] and claims["c_ok"]["held"] is True
    assert "interrupted" in claims["c_lost"]["evidence"]


@pytest.mark.slow
def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "lmlab", "list"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0 and "scaling_smoke" in out.stdout


def test_reproduce_writes_reports_and_keeps_going(registry, tmp_path, capsys):
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the report must give the threads the run used, not the caller's setting
    try:
        rc = cli.main(["reproduce", "--preset", "tiny", "--only", "boom,scaling_smoke", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc != 0  # boom failed ...
    smoke = out / "scaling_smoke"  # ... and scaling_smoke still ran after it
    for f in ("report.md", "results.json", "heldout_loss.png"):
        assert (smoke / f).is_file()
    data = json.loads((smoke / "results.json").read_text())
    assert data["experiment"] == "scaling_smoke" and data["preset"] == "tiny" and data["error"] is None
    assert data["cpu_time_s"] > 0 and data["runtime_s"] > 0
    assert data["environment"]["cpu_threads"] == 1  # tiny presets run single-threaded, and say so
    assert "CPU (1 thread)" in (smoke / "report.md").read_text()
    assert data["claims"][0]["id"] == "c1_wider_lower_loss" and data["claims"][0]["held"] in (True, False)
    assert data["metrics"]["entropy_floor"] > 0
    card = (out / "REPORT.md").read_text()
    assert "[scaling_smoke](scaling_smoke/report.md)" in card and "**Experiments that failed:** boom" in card
    assert "c_lost" in card
    assert "1 experiment(s) failed: boom" in capsys.readouterr().err


def test_run_and_list_commands(registry, tmp_path, capsys):
    assert cli.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "scaling_smoke" in listed and "c1_wider_lower_loss" in listed
    assert cli.main(["run", "boom", "--out", str(tmp_path / "b")]) == 1
    assert cli.main(["run", "scaling_smoke", "--preset", "nope"]) == 2  # user error: one line, exit 2
    assert "no preset" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_lists_experiments():
    r = subprocess.run(
        [sys.executable, "-m", "lmlab.cli", "list"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "scaling_smoke" in r.stdout


@pytest.mark.slow
def test_scaling_smoke_tiny_preset(tmp_path):
    rep = run_experiment("scaling_smoke", "tiny", tmp_path, quiet=True)
    assert rep.error is None and rep.cpu_time_s > 0
    assert rep.claims["c1_wider_lower_loss"].held is not None


def test_cpu_seconds_counts_the_children_the_run_waited_for():
    import multiprocessing as mp
    import time

    from lmlab.experiment import cpu_seconds

    def burn():
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass

    c0, own0 = cpu_seconds(), time.process_time()
    child = mp.get_context("fork").Process(target=burn)
    child.start()
    child.join()
    assert time.process_time() - own0 < 0.2  # the parent itself mostly waited
    assert cpu_seconds() - c0 >= 0.25  # the child's 0.3 s are counted


def test_reproduce_only_checks_every_name_before_running(registry, tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(ex, "run_experiment", lambda name, *a, **k: ran.append(name))
    out = tmp_path / "out"
    assert cli.main(["reproduce", "--only", "boom,scaling_smok", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment(s) 'scaling_smok'" in err and "scaling_smoke" in err  # lists the known ones
    assert cli.main(["reproduce", "--only", " , ", "--out", str(out)]) == 2
    assert "names no experiment" in capsys.readouterr().err
    assert cli.main(["reproduce", "--only", "boom", "--preset", "huge", "--out", str(out)]) == 2
    assert ran == [] and not out.exists()  # nothing ran, nothing written


def test_reproduce_only_strips_names_and_keeps_the_card_when_a_run_dies(registry, tmp_path, capsys, monkeypatch):
    real = ex.run_experiment

    def run(name, *a, **k):
        if name == "scaling_smoke":  # a failure outside the experiment's own error handling
            raise KeyboardInterrupt
        return real(name, *a, **k)

    monkeypatch.setattr(ex, "run_experiment", run)
    out = tmp_path / "out"
    assert cli.main(["reproduce", "--only", " boom , scaling_smoke", "--out", str(out)]) == 130
    card = (out / "REPORT.md").read_text()  # written with the experiment that finished
    assert "[boom](boom/report.md)" in card and "scaling_smoke" not in card
    assert "1 of 2 experiments finished" in capsys.readouterr().out


def test_overrides_are_parsed_by_type_with_clear_errors(registry):
    exp = registry["sumerian_pipeline"]
    cfg = resolve_config(exp, "tiny", {"mt_steps": "20", "mt_lr": "1e-3", "back_translation": "yes",
                                       "decide_mt": "0", "taggers": "hmm", "beam": 3, "mt_batch": " 8 "})
    assert cfg.mt_steps == 20 and cfg.mt_lr == 1e-3 and cfg.back_translation is True
    assert cfg.decide_mt is False and cfg.taggers == "hmm" and cfg.beam == 3 and cfg.mt_batch == 8
    bad = [
        ("mt_steps", "abc", "must be int"),
        ("mt_steps", "1.5e3", "must be int"),
        ("mt_steps", "1.9", "must be int"),
        ("mt_steps", 1.9, "must be int"),
        ("mt_steps", True, "must be int"),
        ("mt_lr", "fast", "must be float"),
        ("back_translation", "nope", "must be bool"),
        ("decide_mt", "maybe", "must be bool"),
        ("decide_mt", 2, "must be bool"),
    ]
    for key, value, expected in bad:
        with pytest.raises(LmlabError) as e:
            resolve_config(exp, "tiny", {key: value})
        msg = str(e.value)
        assert f"'{key}'" in msg and expected in msg and "sumerian_pipeline preset tiny" in msg, msg
    for key in ("tag_train", "mt_lr", "decide_mt"):
        with pytest.raises(LmlabError, match=f"'{key}' was given an empty value"):
            resolve_config(exp, "tiny", {key: ""})
    # a field typed `X | None` ("all arms", "automatic") takes None / null in every preset
    rl = registry["rl_checkpoints"]
    assert resolve_config(rl, "tiny", {"early_arms": None}).early_arms is None
    assert resolve_config(rl, "tiny", {"early_arms": "null"}).early_arms is None
    with pytest.raises(LmlabError, match="'n_test' must be int, got None"):
        resolve_config(rl, "tiny", {"n_test": None})
    smoke = registry["scaling_smoke"]
    assert resolve_config(smoke, "tiny", {"widths": "[8, 16]"}).widths == [8, 16]
    with pytest.raises(LmlabError, match="'widths' must be a list"):
        resolve_config(smoke, "tiny", {"widths": "8,16"})


def test_run_command_reports_override_errors_without_a_traceback(registry, tmp_path, capsys):
    for arg, expected in (("mt_steps=abc", "must be int"), ("tag_train=", "empty value"),
                          ("decide_mt=maybe", "must be bool")):
        assert cli.main(["run", "sumerian_pipeline", "--out", str(tmp_path / "x"), arg]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_report_reproduce_line_includes_the_overrides(registry, tmp_path):
    rep = run_experiment("boom", "tiny", tmp_path / "b", quiet=True)
    assert "Reproduce with `lmlab run boom --preset tiny --seed 0`." in (tmp_path / "b" / "report.md").read_text()
    args = ["run", "scaling_smoke", "--seed", "2", "--out", str(tmp_path / "s"), "steps=3", "widths=[8, 16]"]
    assert cli.main(args) == 0
    md = (tmp_path / "s" / "report.md").read_text()
    line = "Reproduce with `lmlab run scaling_smoke --preset tiny --seed 2 --seeds 1 steps=3 'widths=[8, 16]'`."
    assert line in md, md[:600]
    data = json.loads((tmp_path / "s" / "results.json").read_text())
    assert data["overrides"] == {"steps": 3, "widths": [8, 16]} and data["config"]["steps"] == 3
    assert rep.overrides == {}


def test_scaling_smoke_gpu_preset_on_cpu(tmp_path, capsys):
    """The gpu preset's structure (vocab 48, four widths, several seeds, seq 128) at a CPU-sized cost."""
    gpu = ex.get("scaling_smoke").presets["gpu"]
    tiny = {"steps": 6, "eval_every": 3, "eval_seqs": 8, "batch": 4, "seeds": 2, "seq_len": 32}
    rep = run_experiment("scaling_smoke", "gpu", tmp_path, device="cpu", overrides=tiny, raise_errors=True)
    assert rep.error is None
    assert "gpu preset is sized for about 5 minutes" in capsys.readouterr().err  # said once, before the run
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["seeds"] == [0, 1]
    assert all([r["width"] for r in run["numbers"]["runs"]] == gpu.widths for run in res["runs"])
    assert all(f"held_out_loss_d{w}" in res["metrics"] for w in gpu.widths)
    assert res["config"]["vocab"] == gpu.vocab and res["claims"][0]["status"] in ("held", "not held", "undecided")
    assert (tmp_path / "heldout_loss.png").stat().st_size > 1000


def test_fit_progress_logs_the_loss_at_most_every_interval_and_at_the_last_step(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from lmlab.experiment import RunContext, registry
    from lmlab.train import fit

    ctx = RunContext(registry()["scaling_smoke"], "tiny", FAST_SMOKE, 0, torch.device("cpu"), Path(tmp_path))
    clock = iter([0.0, 10.0, 31.0, 40.0, 45.0, 70.0])  # creation, then one reading per step
    monkeypatch.setattr(ex.time, "time", lambda: next(clock))
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(8, 3)
    losses = fit(model, lambda m, b: m(b).pow(2).mean(), iter([x] * 5), 5, lr=0.1,
                 callback=ctx.fit_progress("probe", 5))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "probe" in ln]
    # steps end at 10, 31, 40, 45, 70 s: a line at 31 s (≥ 30 s since 0), none at 40 or 45, and the last step
    assert lines == [
        f"[scaling_smoke] probe step 2/5: loss {losses[1]:.4f} (31s)",
        f"[scaling_smoke] probe step 5/5: loss {losses[4]:.4f} (70s)",
    ]
