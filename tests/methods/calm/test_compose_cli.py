"""`lmlab compose` on Hugging Face folders: a pair of one family, and an HF anchor with an lmlab augment (the same
character vocabulary); differing tokenizers are refused in one line."""

import json

import torch

from lmlab import checkpoint
from lmlab.cli import main
from lmlab.model import GPT, GPTConfig
from lmlab.tokenizer import CharTokenizer

CHARS = sorted(set("0123456789+=abcdefghij: "))


def save_hf(path, chars=CHARS, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.hf import hf_tokenizer

    tok = hf_tokenizer(CharTokenizer(chars))
    torch.manual_seed(len(chars) + layers)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_lmlab(path):
    tok = CharTokenizer(CHARS)
    torch.manual_seed(1)
    checkpoint.save(path, 0, GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=32, seq_len=64)))
    tok.save(path / "tokenizer.json")
    return path


def data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n"
                            for a in range(5) for b in range(5)))
    return path


def test_compose_hf_anchor_with_hf_or_lmlab_augment(tmp_path, capsys):
    anchor = save_hf(tmp_path / "anchor")
    for augment in (save_hf(tmp_path / "hf_aug", layers=3), save_lmlab(tmp_path / "lm_aug")):
        out = tmp_path / f"bridge_{augment.name}.pt"
        assert main(["compose", "--anchor", str(anchor), "--augment", str(augment), "--data", str(data(tmp_path)),
                     "--steps", "3", "--batch", "4", "--device", "cpu", "--out", str(out)]) == 0, capsys.readouterr()
        assert out.is_file()


def test_compose_refuses_tokenizers_that_differ(tmp_path, capsys):
    anchor, augment = save_hf(tmp_path / "a"), save_hf(tmp_path / "b", chars=sorted(set("0123456789+=xyz ")))
    pairs = data(tmp_path)
    capsys.readouterr()  # transformers' saving progress
    assert main(["compose", "--anchor", str(anchor), "--augment", str(augment), "--data", str(pairs),
                 "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "o.pt")]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "tokenizers differ" in errors[0]
