"""`lmlab interference` on a tiny lmlab checkpoint and a tiny HF Llama: the losses, gradient cosines,
common-vs-rare interference and unit allocation it reports are the analysis API's on the same batches."""

import copy
import json

import numpy as np
import pytest
import torch
import transformers as tf

from lmlab.methods.competition import interference as I
from lmlab.cli import main
from lmlab.methods.competition.cli import task_batch
from lmlab.loading import load_policy

TEXTS = {
    "copy": ["abab abab", "cdcd cdcd", "abcd abcd", "dcba dcba"],
    "count": ["a b c d", "b c d a", "c d a b", "d a b c"],
    "rare": ["dd cc bb aa", "aa bb cc dd"],
}


@pytest.fixture
def task_args(tmp_path):
    args = []
    for name, lines in TEXTS.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
        args += ["--task", f"{name}={tmp_path / name}.txt"]
    return args


def test_interference_cli_on_an_lmlab_checkpoint_reports_the_api_numbers(tmp_path, task_args, capsys):
    from lmlab import checkpoint
    from lmlab.model import GPT, GPTConfig
    from lmlab.tokenizer import CharTokenizer

    tok = CharTokenizer("abcd ")
    run = tmp_path / "run"
    torch.manual_seed(0)
    checkpoint.save(
        run, 1, GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=16, seq_len=64))
    )
    tok.save(run / "tokenizer.json")
    out = tmp_path / "out"
    args = [
        "interference",
        str(run),
        *task_args,
        "--rare",
        "rare",
        "--freq",
        "copy=0.75",
        "--freq",
        "count=0.25",
    ]
    assert main([*args, "--layer", "1", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())

    model, codec, _ = load_policy(str(run), None, None, torch.device("cpu"))
    batches = {t: task_batch(codec, str(tmp_path / f"{t}.txt"), 64, 128, "cpu") for t in TEXTS}
    fns = {t: (lambda m, b=b: m(b[0], b[1])) for t, b in batches.items()}
    direct = I.interference(
        I.task_gradients(model, fns), {"copy": 0.75, "count": 0.25}, ["copy", "count"], "rare"
    )
    np.testing.assert_allclose(res["cosines"], direct["cosines"], atol=1e-6)
    assert res["cos_common_rare"] == pytest.approx(direct["cos_common_rare"], abs=1e-6)
    assert res["rare_loss_change"] == pytest.approx(direct["rare_loss_change"], rel=1e-5)
    assert res["loss"]["copy"] == pytest.approx(float(fns["copy"](model)), abs=1e-6)
    assert res["examples"] == {"copy": 4, "count": 4, "rare": 2}
    _, eff = I.effect_matrix(I.unit_attributions(model, fns, 1))
    frac = I.allocation(eff)["fractions"]
    assert list(res["allocation"]["fractions"].values()) == pytest.approx(frac.tolist())
    assert sum(res["allocation"]["fractions"].values()) == pytest.approx(res["allocation"]["active"] / 64)
    assert (out / "cosines.png").stat().st_size > 1000 and "Unit allocation, layer 1" in (
        out / "report.md"
    ).read_text()
    assert main([*args, "--layer", "2", "--out", str(out)]) == 2
    bad = [a.replace("count.txt", "missing.txt") for a in args]
    assert main([*bad, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--layer 2: the model has layers 0..1" in err and "missing.txt not found" in err


def test_interference_cli_on_a_local_hf_llama(tmp_path, task_args, word_tokenizer):
    tok = copy.deepcopy(word_tokenizer)
    tok.eos_token = "[SEP]"
    cfg = tf.LlamaConfig(
        vocab_size=len(tok.get_vocab()),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    out = tmp_path / "out"
    assert (
        main(
            [
                "interference",
                str(tmp_path / "llama"),
                *task_args,
                "--rare",
                "rare",
                "--layer",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "hf" and res["freqs"] == {"copy": 0.5, "count": 0.5}
    assert np.allclose(np.diag(res["cosines"]), 1) and all(v > 0 for v in res["grad_norm"].values())
    assert res["allocation"]["units"] == 32


def test_interference_cli_errors_name_the_problem(tmp_path, task_args, capsys):
    run = "unused"
    cases = [
        (["--task", f"a={tmp_path}/copy.txt", "--rare", "a"], "two or more --task"),
        ([*task_args, "--rare", "other"], "--rare 'other' is not one of the tasks"),
        ([*task_args, "--rare", "rare", "--freq", "rare=0.5"], "frequencies are for the common tasks"),
        ([*task_args, "--rare", "rare", "--freq", "copy=lots"], "--freq values must be numbers"),
        ([*task_args, "--task", "copy=x.txt", "--rare", "rare"], "'copy' is given twice"),
        (["--task", "copy", "--task", "b=c", "--rare", "b"], "expected NAME=VALUE"),
    ]
    for extra, message in cases:
        assert main(["interference", run, *extra, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err, message
