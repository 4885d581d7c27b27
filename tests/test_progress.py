"""Issue 24, item 6: one progress and logging layer. `-q` silences progress and info logs, `-v` shows debug lines,
a bar (or, off a terminal, logged lines) with rate and ETA, `metrics.jsonl` beside a command's outputs with one JSON
object per step (a torn last line tolerated on reading and on resume), and transformers' "Loading weights" bar
silenced unless -v."""

import json

import pytest
import torch
from conftest import save_char_run

from lmlab import progress
from lmlab.cli import main
from lmlab.inputs import read_jsonl
from lmlab.methods.posttrain.general import GeneralSuite
from lmlab.methods.posttrain.tasks import DigitSumTask
from lmlab.progress import MetricsLog, Progress
from lmlab.tokenizer import CharTokenizer

CHARS = sorted(set(DigitSumTask.alphabet + GeneralSuite.alphabet))
SFT = ["--task", "digitsum", "--difficulty", "3", "--n-train", "8", "--n-test", "2", "--eval-samples", "2",
       "--batch-size", "4", "--device", "cpu", "--steps", "3"]


@pytest.fixture(autouse=True)
def default_logging():
    """The commands here set lmlab's log level (-q, -v); the tests after these get the default back."""
    yield
    progress.setup(progress.NORMAL)


def tiny_run(path):
    return save_char_run(path, CHARS)


def tiny_hf(path):
    """A tiny random Llama with a char-level HF tokenizer, saved like any local HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.hf import hf_tokenizer

    tok = hf_tokenizer(CharTokenizer(CHARS))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ---------------------------------------------------------------- -q / -v through a command
def test_quiet_silences_progress_and_info_logs_and_keeps_the_results(tmp_path, capsys):
    run = tiny_run(tmp_path / "run")
    assert main(["sft", str(run), "--out", str(tmp_path / "normal"), *SFT]) == 0
    out, err = capsys.readouterr()
    assert "sft: 3/3 steps" in err and "evaluating pass@k" in err and "loading" in err  # off a terminal: log lines
    assert "after:" in out and "saved to" in out and "sft:" not in out  # results on stdout, progress on stderr
    assert main(["sft", str(run), "--out", str(tmp_path / "quiet"), *SFT, "-q"]) == 0  # -q after the subcommand
    out, err = capsys.readouterr()
    assert err == "" and "after:" in out and "saved to" in out


def test_verbose_shows_each_step_at_debug_level(tmp_path, capsys):
    run = tiny_run(tmp_path / "run")
    assert main(["-v", "sft", str(run), "--out", str(tmp_path / "o"), *SFT]) == 0
    err = capsys.readouterr().err
    assert [ln.split("=")[0] for ln in err.splitlines() if ln.startswith("debug: [sft")] == \
        [f"debug: [sft {i}] sft_loss" for i in range(3)]


def test_v_and_q_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["-v", "list", "-q"])
    assert "not allowed with argument -v/--verbose" in capsys.readouterr().err


# ---------------------------------------------------------------- metrics.jsonl beside the outputs
def test_sft_writes_one_metrics_line_per_step_and_tensorboard_curves(tmp_path):
    run = tiny_run(tmp_path / "run")
    out = tmp_path / "o"
    assert main(["-q", "sft", str(run), "--out", str(out), *SFT]) == 0
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in rows] == [("sft", 0), ("sft", 1), ("sft", 2)]
    assert all(isinstance(r["sft_loss"], float) for r in rows)
    assert rows == [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]  # the same steps
    assert any((out / "tb").glob("events.out.tfevents.*"))


def test_compose_writes_its_losses_beside_its_out_and_a_resume_keeps_them(tmp_path, monkeypatch):
    import signal

    import lmlab.train

    run = tiny_run(tmp_path / "run")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n"
                             for a in range(4) for b in range(4)))

    def compose(out, *extra):
        return main(["-q", "compose", str(run), str(run), "--data", str(pairs), "--steps",
                     "4", "--batch", "2", "--device", "cpu", "--out", str(out), *extra])

    def lines(out):
        return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]

    assert compose(tmp_path / "whole") == 0
    whole = lines(tmp_path / "whole")
    assert [r["step"] for r in whole] == [0, 1, 2, 3] and all(isinstance(r["loss"], float) for r in whole)
    real, calls = lmlab.train.lr_at, []

    def ctrl_c_in_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(lmlab.train, "lr_at", ctrl_c_in_step_3)
        assert compose(tmp_path / "cut") == 130
    assert [r["step"] for r in lines(tmp_path / "cut")] == [0, 1, 2]
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a crash while appending
    assert compose(tmp_path / "cut", "--resume") == 0
    assert lines(tmp_path / "cut") == whole  # exact resume: each step once, the torn line dropped


def test_a_torn_last_metrics_line_is_tolerated_on_reading_and_on_resume(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as m:
        for step in range(3):
            m.log({"step": step, "loss": 1.0 / (step + 1)})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # a crash while appending
    assert [r["step"] for r in read_jsonl(path, drop_torn_last=True)] == [0, 1, 2]
    assert "torn last line 4" in caplog.text
    with MetricsLog(path, keep=2) as m:  # a resume from step 2: the rows of steps 0 and 1 stay
        m.log({"step": 2, "loss": 0.25})
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [0, 1, 2]
    MetricsLog(path)  # a fresh run starts the file afresh
    assert not path.exists()


# ---------------------------------------------------------------- progress bars and lines
def test_a_bar_is_drawn_when_asked_and_never_with_q(capsys, monkeypatch):
    monkeypatch.setenv("LMLAB_PROGRESS", "1")  # stderr is no terminal here
    progress.setup(progress.NORMAL)
    with Progress(3, "demo") as bar:
        for _ in range(3):
            bar.update(1, loss=0.5)
    err = capsys.readouterr().err
    assert "demo" in err and "3/3" in err and "step/s" in err and "loss=0.5" in err
    progress.setup(progress.QUIET)
    with Progress(3, "demo") as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_off_a_terminal_progress_is_logged_with_rate_and_eta(capsys, monkeypatch):
    monkeypatch.setenv("LMLAB_PROGRESS", "0")
    progress.setup(progress.NORMAL)
    with Progress(4, "demo", every_s=0) as bar:
        for _ in range(4):
            bar.update(1, loss=0.25)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and lines[0].startswith("demo: 1/4 steps (25%), ") and "ETA" in lines[0]
    assert "loss=0.25" in lines[0] and lines[-1].startswith("demo: 4/4 steps, ") and " in 0:00" in lines[-1]


# ---------------------------------------------------------------- transformers' noise
def test_transformers_loading_bar_is_silenced_unless_v(tmp_path, capfd):
    model = tiny_hf(tmp_path / "hf")
    data = tmp_path / "a.txt"
    data.write_text("1+2=3\n4+5=9\n")
    argv = ["interference", str(model), "--task", f"a={data}", "--task", f"b={data}", "--rare", "b",
            "--max-lines", "2", "--seq-len", "8", "--device", "cpu"]
    capfd.readouterr()
    assert main([*argv, "--out", str(tmp_path / "quiet")]) == 0
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "loading" in err
    assert main(["-v", *argv, "--out", str(tmp_path / "loud")]) == 0
    assert "Loading weights" in capfd.readouterr().err  # the test would see the bar
