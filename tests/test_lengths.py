"""Lengths are checked (issue 24): past a model's position limit (GPT-2's learned n_positions) a command refuses in
one line naming the limit, where GPT-2 failed with a raw IndexError; past the length a model was trained on (an
lmlab run's training rows, an HF config's max_position_embeddings) it warns once and runs on."""

import logging

import pytest
import torch
import transformers as tf
from conftest import save_char_run

from lmlab.cli import main
from lmlab.errors import PositionLimitError
from lmlab.generate import generate
from lmlab.hf import hf_tokenizer, load_model
from lmlab.lengths import check_length, position_limit, trained_length
from lmlab.loading import load_policy
from lmlab.model import GPT, GPTConfig
from lmlab.tokenizer import CharTokenizer

tf.logging.set_verbosity_error()
CHARS = "abcd ?"
LONG = "abcd " * 8  # 40 characters: 41 tokens with <bos>


def save_hf(path, family: str, positions: int = 16):
    tok = hf_tokenizer(CharTokenizer(CHARS))
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=positions, **ids)
    else:
        cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=positions, **ids)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_run(path, seq_len: int = 16, train_seq_len: int | None = None):
    return save_char_run(path, CHARS, seq_len=seq_len,
                         config={"train": {"seq_len": train_seq_len}} if train_seq_len else None)


def interference(model, tmp_path, out: str):
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text(f"{LONG}\n{LONG}\n")
    return main(["interference", str(model), "--task", f"a={tmp_path}/a.txt", "--task", f"b={tmp_path}/b.txt",
                 "--rare", "b", "--seq-len", "64", "--device", "cpu", "--out", str(tmp_path / out)])


def test_position_limits_and_trained_lengths(tmp_path):
    gpt2 = load_model(save_hf(tmp_path / "gpt2", "gpt2"), wrap=True)
    llama = load_model(save_hf(tmp_path / "llama", "llama"))
    assert (position_limit(gpt2), trained_length(gpt2)) == (16, 16)  # learned positions: a hard limit
    assert (position_limit(llama), trained_length(llama)) == (None, 16)  # RoPE: runs on past it
    run = save_run(tmp_path / "run", seq_len=32, train_seq_len=8)
    model, _, _ = load_policy(str(run), None, None, "cpu")
    assert (position_limit(model), trained_length(model)) == (None, 8)  # the rows it was trained on
    assert trained_length(GPT(GPTConfig(vocab_size=8, n_layers=1, n_heads=2, d_model=16, seq_len=24))) == 24
    check_length(gpt2, 16)
    with pytest.raises(PositionLimitError, match="past the 16 positions GPT2LMHeadModel can take"):
        check_length(gpt2, 17)
    with pytest.raises(PositionLimitError):  # the generation engine checks prompt + new tokens before decoding
        generate(gpt2, [[1] * 10], 7)
    assert len(generate(gpt2, [[1] * 10], 6, temperature=0).tokens[0]) == 6


def test_past_the_position_limit_commands_refuse_in_one_line(tmp_path, capsys):
    gpt2 = save_hf(tmp_path / "gpt2", "gpt2")
    (tmp_path / "context.txt").write_text(LONG)
    capsys.readouterr()
    ttt = ["ttt", str(gpt2), "--context", str(tmp_path / "context.txt"), "--question", "a?", "--steps",
           "1", "--span", "4", "--device", "cpu"]
    for run in (lambda: interference(gpt2, tmp_path, "i"), lambda: main(ttt)):
        rc, err = run(), capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert rc == 2 and len(errors) == 1 and "Traceback" not in err and "IndexError" not in err, err
        assert "is 41 tokens, past the 16 positions GPT2LMHeadModel can take" in errors[0]


@pytest.mark.parametrize("kind", ["lmlab", "llama"])
def test_past_the_trained_length_commands_warn_once_and_run(tmp_path, caplog, kind):
    model = save_run(tmp_path / "run") if kind == "lmlab" else save_hf(tmp_path / "llama", "llama")
    with caplog.at_level(logging.WARNING, logger="lmlab.lengths"):
        assert interference(model, tmp_path, "i") == 0  # many forwards, one warning
    warned = [r.getMessage() for r in caplog.records if r.name == "lmlab.lengths"]
    assert len(warned) == 1 and "is 41 tokens, past the 16 the model was trained on" in warned[0]
