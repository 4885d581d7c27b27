"""Issue 23 ("Nothing lost, nothing overwritten") through the command line: unusable output folders, a full disk or a
permission error while checkpoints and snapshots are written, non-finite or overflowing settings, damaged or foreign
files lmlab wrote, a NaN update in every post-training loop, and a second writer of a post-training folder all end
in one `error:` line with exit 2, and nothing is lost. (The lock itself: test_runlock.py; the SFT, compose,
sumerian and qTTT guards: their method tests; bad input files: test_bad_inputs.py.)"""

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError

from lmlab import checkpoint as ck
from lmlab.cli import main
from lmlab.runlock import LOCK_FILE

CFG = {"model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "seq_len": 32},
       "data": {"buffer_docs": 16},
       "train": {"batch_size": 4, "max_steps": 4, "warmup": 1, "lr": 1e-2, "save_every": 1, "eval_every": 0,
                 "log_every": 1, "device": "cpu", "threads": 1, "progress": False, "tensorboard": False,
                 "schedule": "constant"}}


@pytest.fixture
def cfg(tmp_path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(CFG))
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]  # progress logs may come before the error
    assert [ln for ln in lines if ln.startswith("error")] == lines[-1:] and lines[-1].startswith("error: ") \
        and "Traceback" not in err, err
    return lines[-1]


def pretrain(cfg, out, *extra):
    return main(["pretrain", "--config", str(cfg), "--out", str(out), *extra])


def weights(run):
    model, _ = ck.load(run)
    return model.state_dict()


# ------------------------------------------------------------------ output folders
COMMANDS = {"pretrain": lambda cfg, out: ["pretrain", "--config", str(cfg), "--out", str(out)],
            "run": lambda cfg, out: ["run", "scaling_smoke", "--preset", "tiny", "--out", str(out)]}


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_that_is_a_file_lies_under_a_file_or_is_unwritable_is_one_line(tmp_path, cfg, capsys, monkeypatch,
                                                                             command):
    argv = COMMANDS[command]
    (tmp_path / "f").write_text("keep me")
    assert main(argv(cfg, tmp_path / "f")) == 2
    assert "is a file, not a folder" in error_line(capsys)
    assert main(argv(cfg, tmp_path / "f" / "sub")) == 2
    assert "cannot create the run folder" in error_line(capsys) and (tmp_path / "f").read_text() == "keep me"

    real_mkdir, real_open = Path.mkdir, os.open

    def mkdir(self, *a, **k):  # tests run as root: a read-only parent is simulated
        if self.parent.name == "ro":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    def os_open(path, *a, **k):
        if Path(path).parent.name == "ro":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(argv(cfg, tmp_path / "ro" / "new")) == 2
    assert "cannot create the run folder" in error_line(capsys) and not (tmp_path / "ro").exists()
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", os_open)
    assert main(argv(cfg, tmp_path / "ro")) == 2
    err = error_line(capsys)
    assert "cannot write the lock" in err and "(Permission denied)" in err
    assert not any((tmp_path / "ro").iterdir())


# ------------------------------------------------------------------ full disk, permissions
FAILURES = {"disk full": (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
                          "no space left on the device"),
            "permission": (PermissionError(errno.EACCES, "Permission denied"), "permission denied")}


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failed_checkpoint_write_names_it_and_a_resume_matches_an_undisturbed_run(tmp_path, cfg, capsys,
                                                                                   monkeypatch, failure):
    exc, message = FAILURES[failure]
    assert pretrain(cfg, tmp_path / "alone") == 0
    real, calls = ck.save_model, []

    def save_model(*a, **k):  # the checkpoint of step 2 (after the seed and step 1) hits the failure
        calls.append(1)
        if len(calls) == 3:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(ck, "save_model", save_model)
    capsys.readouterr()
    assert pretrain(cfg, tmp_path / "run") == 2
    err = error_line(capsys)
    assert f"cannot write {tmp_path / 'run' / 'step_000002'}: {message}" in err
    assert ck.list_steps(tmp_path / "run") == [0, 1]
    assert not list((tmp_path / "run").glob(".tmp-*")) and not (tmp_path / "run" / LOCK_FILE).exists()
    monkeypatch.setattr(ck, "save_model", real)  # space freed
    assert pretrain(cfg, tmp_path / "run", "--resume") == 0
    a, b = weights(tmp_path / "alone"), weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_unwritable_metrics_log_is_one_line_naming_it(tmp_path, cfg, capsys, monkeypatch):
    import builtins

    real = builtins.open

    def full(path, mode="r", *a, **k):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full)
    assert pretrain(cfg, tmp_path / "run") == 2
    assert f"cannot write {tmp_path / 'run' / 'metrics.jsonl'}: no space left" in error_line(capsys)


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("override, message", [("train.lr=nan", "train.lr must be a finite number > 0"),
                                               ("train.lr=1e38", "train.lr must be a finite number > 0"),
                                               ("train.lr=.inf", "train.lr must be a finite number > 0"),
                                               ("train.weight_decay=.nan", "train.weight_decay must be a finite"),
                                               ("train.grad_clip=.nan", "train.grad_clip must be >= 0")])
def test_non_finite_or_overflowing_settings_are_refused_before_anything_is_written(tmp_path, cfg, capsys, override,
                                                                                  message):
    assert pretrain(cfg, tmp_path / "run", override) == 2
    assert message in error_line(capsys) and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ files lmlab wrote, damaged
def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, cfg, capsys, caplog):
    assert pretrain(cfg, tmp_path / "run") == 0
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a crash while appending
    assert pretrain(cfg, tmp_path / "run", "--resume", "train.max_steps=6") == 0
    assert "dropping its torn last line" in caplog.text
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r][-1] == 6


def _tiny_run(tmp_path):
    from lmlab.methods.posttrain.general import GeneralSuite
    from lmlab.methods.posttrain.tasks import DigitSumTask
    from lmlab.model import GPT, GPTConfig
    from lmlab.tokenizer import CharTokenizer

    tok = CharTokenizer(sorted(set(DigitSumTask.alphabet + GeneralSuite.alphabet)))
    torch.manual_seed(0)
    run = tmp_path / "base"
    ck.save(run, 1, GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=1, n_heads=2, d_model=16, seq_len=64)))
    tok.save(run / "tokenizer.json")
    return run


SMALL = ["--task", "digitsum", "--difficulty", "3", "--n-train", "8", "--n-test", "3", "--eval-samples", "2",
         "--device", "cpu"]
POST = {"sft": ["sft", "--batch-size", "4", "--steps", "2"],
        "rl": ["rl", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4", "--steps", "2"],
        "post-train": ["post-train", "--pipeline", "sft_rl", "--sft-steps", "1", "--rl-steps", "1",
                       "--sft-batch-size", "4", "--prompts-per-step", "2", "--group-size", "2",
                       "--max-new-tokens", "4"]}


def post(cmd, model, out, *extra):
    name, *flags = POST[cmd]
    return main([name, str(model), "--out", str(out), *SMALL, *flags, *extra])


def test_meta_json_that_is_not_utf8_is_a_named_damaged_checkpoint(tmp_path, cfg, capsys):
    assert pretrain(cfg, tmp_path / "run") == 0
    (tmp_path / "run" / "step_000004" / ck.META_FILE).write_bytes(b'{"step": 4, "\xff\xfe"}')
    assert pretrain(cfg, tmp_path / "run", "--resume", "train.max_steps=6") == 2
    assert "checkpoint metadata" in error_line(capsys)
    base = _tiny_run(tmp_path)
    (base / "step_000001" / ck.META_FILE).write_bytes(b"\xff\xfe\x00garbage")
    for cmd in POST:
        assert post(cmd, base, tmp_path / f"o-{cmd}") == 2
        assert f"checkpoint metadata {base / 'step_000001' / ck.META_FILE} is unreadable" in error_line(capsys)


@pytest.mark.parametrize("content", [b"", b"\x00garbage", b"PK\x03\x04cut short"])
def test_a_damaged_resume_snapshot_is_one_line_on_resume(tmp_path, capsys, content):
    base = _tiny_run(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    (out / "resume.pt").write_bytes(content)
    for cmd in ("sft", "rl"):
        assert post(cmd, base, out, "--resume") == 2
        assert f"--resume: {out / 'resume.pt'} is damaged" in error_line(capsys)


def test_a_full_disk_while_sft_saves_a_snapshot_names_it(tmp_path, capsys, monkeypatch):
    base = _tiny_run(tmp_path)
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith("resume.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    assert post("sft", base, tmp_path / "o", "--save-every", "1") == 2
    assert f"cannot write {tmp_path / 'o' / 'resume.pt'}: no space left on the device" in error_line(capsys)
    assert not list(tmp_path.glob("o/.resume.pt.*"))  # no half-written snapshot left


def test_a_second_post_training_into_a_live_runs_folder_is_refused_before_touching_it(tmp_path, capsys):
    base = _tiny_run(tmp_path)
    out = tmp_path / "o"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "started": 0,
                                                 "command": "lmlab sft"}))
        for cmd in POST:
            assert post(cmd, base, out) == 2
            assert f"in use by lmlab sft (pid {live.pid}" in error_line(capsys)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("cmd, lr", [("sft", "1e38"), ("rl", "1e39"), ("sft", "inf")])
def test_overflowing_post_training_learning_rates_are_refused_before_anything_is_written(tmp_path, capsys, cmd, lr):
    base = _tiny_run(tmp_path)
    assert post(cmd, base, tmp_path / "o", "--lr", lr) == 2
    assert "must be a finite number > 0 and at most" in error_line(capsys) and not (tmp_path / "o").exists()


@pytest.mark.parametrize("pipeline", ["rl", "sft_rl", "combined", "interleaved", "parallel_avg"])
def test_a_nan_update_stops_every_post_training_loop_with_the_last_good_weights_saved(tmp_path, capsys, monkeypatch,
                                                                                      pipeline):
    """The GRPO, SFT→RL and mixed loops (the SFT one: tests/methods/posttrain): the third update's gradient is NaN."""
    base = _tiny_run(tmp_path)
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def poisoned(params, *a, **k):
        params = list(params)
        calls.append(1)
        if len(calls) == 3:
            next(p for p in params if p.grad is not None).grad.fill_(float("nan"))
        return real(params, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    assert main(["post-train", str(base), "--out", str(tmp_path / "o"), *SMALL, "--pipeline", pipeline,
                 "--sft-steps", "1" if pipeline == "sft_rl" else "4", "--rl-steps", "4", "--sft-batch-size", "4",
                 "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4", "--temperature", "1.5"]) == 2
    assert "post-training diverged after" in error_line(capsys)
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert "gradient norm is nan" in m["diverged"] and m["after"] is None
    model, _ = ck.load(tmp_path / "o")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_a_foreign_optimizer_state_on_pretrain_resume_names_the_parameter(tmp_path, cfg, capsys):
    assert pretrain(cfg, tmp_path / "run") == 0
    assert pretrain(cfg, tmp_path / "narrow", "model.d_model=16") == 0
    d = tmp_path / "run" / "step_000004"
    (d / ck.OPTIM_FILE).write_bytes((tmp_path / "narrow" / "step_000004" / ck.OPTIM_FILE).read_bytes())
    meta = json.loads((d / ck.META_FILE).read_text())
    meta["files"][ck.OPTIM_FILE] = ck.sha256_file(d / ck.OPTIM_FILE)  # a copied file whose hash matches
    (d / ck.META_FILE).write_text(json.dumps(meta))
    assert pretrain(cfg, tmp_path / "run", "--resume", "train.max_steps=6") == 2
    assert f"optimizer state {d / ck.OPTIM_FILE} holds exp_avg of " in error_line(capsys)


def test_sft_at_lr_1e6_stops_instead_of_saving_a_nan_model(tmp_path, capsys):
    """The reported case, unpatched: `lmlab sft RUN --lr 1e6` exited 0 with an all-NaN model."""
    base = _tiny_run(tmp_path)
    assert post("sft", base, tmp_path / "o", "--lr", "1e6", "--steps", "30") == 2
    assert "post-training diverged after" in error_line(capsys)
    model, _ = ck.load(tmp_path / "o")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
