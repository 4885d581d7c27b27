import json

import pytest
import torch
from conftest import save_char_run

from lmlab.cli import main
from lmlab.methods.posttrain.general import GeneralSuite
from lmlab.methods.posttrain.tasks import DigitSumTask

CHARS = sorted(set(DigitSumTask.alphabet + GeneralSuite.alphabet))


def save_tiny_hf_llama(path, **config):
    """A tiny random Llama and a char-level HF tokenizer, saved like any local HF model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.hf import hf_tokenizer
    from lmlab.tokenizer import CharTokenizer

    tok = hf_tokenizer(CharTokenizer(CHARS))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **config)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)


SMALL = ["--task", "digitsum", "--difficulty", "3", "--n-train", "8", "--n-test", "3", "--eval-samples", "2"]


@pytest.mark.parametrize("pipeline", ["parallel_avg", "sft_rl"])
def test_post_train_on_a_local_hf_model(tmp_path, pipeline):
    from transformers import AutoModelForCausalLM

    src, out = tmp_path / "hf", tmp_path / "out"
    save_tiny_hf_llama(src)
    before = AutoModelForCausalLM.from_pretrained(src).state_dict()
    rc = main(["post-train", str(src), "--pipeline", pipeline, "--out", str(out), *SMALL,
               "--rl-steps", "2", "--sft-steps", "2", "--prompts-per-step", "2", "--group-size", "2",
               "--sft-batch-size", "4", "--max-new-tokens", "8", "--device", "cpu"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pipeline"] == pipeline and "pass@1" in metrics["after"] and "general_nll" in metrics["after"]
    assert metrics["rollout"]["rollout_tok_s"] > 0
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the SFT side always moves the weights
    lines = (out / "history.jsonl").read_text().splitlines()
    assert len(lines) == (4 if pipeline == "sft_rl" else 2)  # sft_rl: 2 SFT + 2 RL steps


def test_sft_and_rl_commands_on_an_lmlab_checkpoint(tmp_path):
    from lmlab import checkpoint

    run = save_char_run(tmp_path / "run", CHARS, step=7, seed=None)
    assert main(["sft", str(run), "--step", "7", "--out", str(tmp_path / "sft"), *SMALL, "--steps", "2",
                 "--batch-size", "4", "--gold"]) == 0
    _, meta = checkpoint.load(tmp_path / "sft")
    assert meta["extra"]["posttrain"] == "sft_gold"
    assert main(["rl", str(tmp_path / "sft"), "--out", str(tmp_path / "rl"), *SMALL, "--steps", "2",
                 "--group-size", "2", "--prompts-per-step", "2", "--kl-coef", "0.01"]) == 0
    m = json.loads((tmp_path / "rl" / "metrics.json").read_text())
    assert m["config"]["rl"]["kl_coef"] == 0.01 and "pass@2" in m["after"]


def _tiny_run(tmp_path):
    return save_char_run(tmp_path / "run", CHARS)


def _ctrl_c_after(steps: int):
    """run_pipeline with a Ctrl-C while the `steps`-th step logs (that step itself is complete)."""
    import signal

    from lmlab.methods.posttrain import pipelines as posttrain

    real, seen = posttrain.run_pipeline, []

    def run_pipeline(*a, callback=None, **kw):
        def cb(phase, step, log):
            seen.append(step)
            if len(seen) == steps:
                signal.raise_signal(signal.SIGINT)
            callback(phase, step, log)

        return real(*a, callback=cb, **kw)

    return run_pipeline


def test_ctrl_c_saves_the_model_after_the_current_step(tmp_path, monkeypatch, capsys):
    import signal

    from lmlab import checkpoint
    from lmlab.methods.posttrain import pipelines as posttrain

    run = _tiny_run(tmp_path)
    sft = [*SMALL, "--batch-size", "4", "--device", "cpu"]
    assert main(["sft", str(run), "--out", str(tmp_path / "two"), *sft, "--steps", "2"]) == 0
    monkeypatch.setattr(posttrain, "run_pipeline", _ctrl_c_after(2))
    before = signal.getsignal(signal.SIGINT)  # whatever the caller had (SIG_IGN under some job runners)
    assert main(["sft", str(run), "--out", str(tmp_path / "cut"), *sft, "--steps", "50"]) == 130
    assert "interrupted after 2 post-training step(s)" in capsys.readouterr().err
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m["interrupted"] and m["steps_done"] == 2 and m["after"] is None and "pass@1" in m["before"]
    assert len((tmp_path / "cut" / "history.jsonl").read_text().splitlines()) == 2
    cut, meta = checkpoint.load(tmp_path / "cut")
    two, _ = checkpoint.load(tmp_path / "two")
    assert meta["step"] == 2  # the same weights as a 2-step run (constant SFT learning rate, same batches)
    assert all(torch.equal(a, b) for a, b in zip(cut.state_dict().values(), two.state_dict().values()))
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is restored


RL = ["--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "8", "--temperature", "1.5"]


@pytest.mark.parametrize("pipeline, extra, cut", [
    ("sft_gold", [], 2),
    ("rl", ["--kl-coef", "0.05", "--ppo-epochs", "2"], 1),
    ("sft_rl", ["--kl-coef", "0.05"], 2),  # in the SFT phase (3 steps)
    ("sft_rl", ["--kl-coef", "0.05"], 4),  # in the RL phase: the KL reference is the post-SFT model
    ("parallel_avg", [], 2),
    ("combined", [], 1),
    ("interleaved", ["--interleave-block", "1"], 2),
])
def test_interrupted_and_resumed_post_training_equals_an_uninterrupted_run(tmp_path, monkeypatch, pipeline, extra,
                                                                          cut):

    from lmlab import checkpoint
    from lmlab.methods.posttrain import pipelines as posttrain

    run = _tiny_run(tmp_path)
    # an untrained model never solves digitsum, so every group would have zero reward variance and RL would not
    # move the weights: reward even-length completions instead, so that RL (and its KL term) really trains
    monkeypatch.setattr(DigitSumTask, "verify", lambda self, problem, text: len(text) % 2 == 0)
    args = ["post-train", str(run), "--pipeline", pipeline, *SMALL, "--sft-steps", "3", "--rl-steps", "3",
            "--sft-batch-size", "4", *RL, *extra, "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as mp:
        mp.setattr(posttrain, "run_pipeline", _ctrl_c_after(cut))
        assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert (tmp_path / "cut" / "resume.pt").exists()
    assert main([*args, "--out", str(tmp_path / "cut")]) == 2  # not silently overwritten: --resume or a new folder
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert not (tmp_path / "cut" / "resume.pt").exists()
    a, _ = checkpoint.load(tmp_path / "whole")
    b, _ = checkpoint.load(tmp_path / "cut")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k

    def history(d):
        rows = [json.loads(x) for x in (tmp_path / d / "history.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # timings differ

    assert history("whole") == history("cut") and len(history("cut")) == (6 if pipeline == "sft_rl" else 3)
    whole, cut_m = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "cut"))
    assert whole["after"] == cut_m["after"] and whole["before"] == cut_m["before"]
    if pipeline != "sft_gold":
        assert any(r["reward"] > 0 for r in history("whole") if "reward" in r)  # RL had a signal


def test_resumed_hf_model_with_dropout_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """Dropout draws from the global RNG: the snapshot carries it, so the resumed steps drop the same units."""

    from transformers import AutoModelForCausalLM

    from lmlab.methods.posttrain import pipelines as posttrain

    src = tmp_path / "hf"
    save_tiny_hf_llama(src, attention_dropout=0.3)
    args = ["sft", str(src), *SMALL, "--steps", "3", "--batch-size", "4", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as mp:
        mp.setattr(posttrain, "run_pipeline", _ctrl_c_after(2))
        assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    a, b = (AutoModelForCausalLM.from_pretrained(tmp_path / d).state_dict() for d in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings_and_a_missing_snapshot(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    args = ["sft", str(run), *SMALL, "--batch-size", "4", "--device", "cpu"]
    assert main([*args, "--steps", "2", "--out", str(tmp_path / "o"), "--resume"]) == 2
    assert "resume.pt not found" in capsys.readouterr().err
    assert main([*args, "--steps", "2", "--out", str(tmp_path / "o"), "--save-every", "1"]) == 0
    assert not (tmp_path / "o" / "resume.pt").exists()  # removed once the run completed


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["rl", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
    src = tmp_path / "hf"
    save_tiny_hf_llama(src)
    assert main(["rl", str(src), "--out", str(tmp_path / "o"), "--task", "chess"]) == 2
    assert "unknown reasoning task" in capsys.readouterr().err
    assert main(["rl", str(src), "--out", str(tmp_path / "o2"), "--group-size", "1"]) == 2


@pytest.mark.parametrize("extra, flag", [(["--prompts-per-step", "0"], "--prompts-per-step"),
                                         (["--interleave-block", "0"], "--interleave-block"),
                                         (["--sft-batch-size", "0"], "--sft-batch-size"),
                                         (["--temperature", "0"], "--temperature"),
                                         (["--max-new-tokens", "0"], "--max-new-tokens"),
                                         (["--difficulty", "0"], "--difficulty"),
                                         (["--pipeline", "parallel_avg", "--ppo-epochs", "2"], "--ppo-epochs")])
def test_bad_post_train_flags_are_one_line_errors_naming_the_flag(tmp_path, capsys, extra, flag):
    """Audit L-3/L-4: these gave raw tracebacks, silently became defaults, or were silently ignored."""
    args = ["post-train", str(tmp_path / "missing-model"), "--out", str(tmp_path / "o")]
    if "--pipeline" not in extra:
        args += ["--pipeline", "interleaved"]
    assert main(args + extra) == 2  # checked before the model is even loaded
    assert flag in capsys.readouterr().err


def test_out_pointing_to_a_file_is_a_user_error(tmp_path, capsys):
    (tmp_path / "o").write_text("x")
    assert main(["rl", str(tmp_path / "missing-model"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file" in err


def test_cli_defaults_are_the_config_dataclasses_defaults():
    """Each default is written once, in GRPOConfig / SFTConfig / PostTrainConfig; the parser reads it from there."""
    from dataclasses import fields

    from lmlab.cli import build_parser, resolve_defaults
    from lmlab.methods.posttrain.cli import POST_FLAGS, RL_FLAGS, SFT_FLAGS
    from lmlab.methods.posttrain.pipelines import PostTrainConfig
    from lmlab.rl import GRPOConfig
    from lmlab.sft import SFTConfig

    args = build_parser().parse_args(["post-train", "m", "--out", "o", "--pipeline", "rl"])
    resolve_defaults(args)
    for flags, cls in ((RL_FLAGS, GRPOConfig), (SFT_FLAGS, SFTConfig), (POST_FLAGS, PostTrainConfig)):
        defaults = {f.name: getattr(cls(), f.name) for f in fields(cls)}
        for dest, field in flags.items():
            assert getattr(args, dest) == defaults[field], (dest, field)


def test_a_nan_gradient_stops_sft_with_the_last_good_weights_saved_and_a_nonzero_exit(tmp_path, monkeypatch, capsys):
    import lmlab.sft as sft_mod
    from lmlab import checkpoint

    run = _tiny_run(tmp_path)
    sft = [*SMALL, "--batch-size", "4", "--device", "cpu"]
    assert main(["sft", str(run), "--out", str(tmp_path / "two"), *sft, "--steps", "2"]) == 0
    real, calls = sft_mod.sft_backward, []

    def poisoned(model, *a, **k):  # the third step's gradient is NaN
        loss = real(model, *a, **k)
        calls.append(1)
        if len(calls) == 3:
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))
        return loss

    monkeypatch.setattr(sft_mod, "sft_backward", poisoned)
    capsys.readouterr()
    assert main(["-q", "sft", str(run), "--out", str(tmp_path / "nan"), *sft, "--steps", "50"]) == 2
    err = capsys.readouterr().err  # -q: the error line alone, no progress
    assert err.startswith("error: post-training diverged after 2 good step(s)") and err.count("\n") == 1
    m = json.loads((tmp_path / "nan" / "metrics.json").read_text())
    assert "gradient norm is nan" in m["diverged"] and m["steps_done"] == 2 and m["after"] is None
    nan_model, _ = checkpoint.load(tmp_path / "nan")
    two, _ = checkpoint.load(tmp_path / "two")
    assert all(torch.equal(a, b) for a, b in zip(nan_model.state_dict().values(), two.state_dict().values()))


@pytest.mark.parametrize("flags, message", [
    (["sft", "--lr", "nan"], "sft.lr (--sft-lr) must be a finite number > 0"),
    (["rl", "--lr", "inf"], "rl.lr (--rl-lr) must be a finite number > 0"),
    (["post-train", "--pipeline", "combined", "--combined-weights", "nan", "nan"], "combined_weights"),
])
def test_non_finite_hyperparameters_are_refused_before_training(tmp_path, capsys, flags, message):
    run = _tiny_run(tmp_path)
    cmd, *rest = flags
    assert main([cmd, str(run), "--out", str(tmp_path / "o"), *SMALL, "--device", "cpu", *rest]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()
