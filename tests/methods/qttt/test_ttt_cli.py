import pytest
import torch

from lmlab import checkpoint
from lmlab.cli import main
from lmlab.model import GPT, GPTConfig
from lmlab.tokenizer import CharTokenizer

CONTEXT = "key AB-12 = 731\nkey AB-77 = 250\nkey QX-12 = 904\n" * 4


def saved_run(tmp_path, **model_cfg):
    """A random lmlab GPT (with `model_cfg`) and its char tokenizer saved as tmp_path/run, and CONTEXT as ctx.txt."""
    tok = CharTokenizer.from_text(CONTEXT + "What is the value of key AB-12?", specials=["<bos>", "<eos>", "<pad>"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **model_cfg))
    run = tmp_path / "run"
    checkpoint.save(run, 0, model)
    tok.save(run / "tokenizer.json")
    (tmp_path / "ctx.txt").write_text(CONTEXT)
    return run


def test_ttt_cli_on_lmlab_checkpoint(tmp_path, capsys):
    run = saved_run(tmp_path, n_layers=2, n_heads=2, d_model=32, seq_len=512)
    code = main(
        [
            "ttt",
            str(run),
            "--context",
            str(tmp_path / "ctx.txt"),
            "--question",
            "What is the value of key AB-12?",
            "--steps",
            "3",
            "--span",
            "16",
            "--lr",
            "1e-3",
            "--max-new-tokens",
            "4",
            "--compare",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "without qTTT" in out and "with qTTT" in out and "span loss" in out


def test_ttt_cli_reports_bad_input(tmp_path, capsys):
    code = main(
        ["ttt", str(tmp_path), "--context", str(tmp_path / "missing.txt"), "--question", "q"]
    )
    assert code == 2
    assert "context file" in capsys.readouterr().err


def test_ttt_old_model_flag_still_works_with_a_deprecation_note(tmp_path, capsys, caplog):
    """`--model MODEL` (the spelling before the model became the first argument): the same run, and one warning."""
    (tmp_path / "ctx.txt").write_text(CONTEXT)
    with caplog.at_level("WARNING", logger="lmlab.methods.qttt.cli"):
        code = main(["ttt", "--model", str(tmp_path / "missing"), "--context", str(tmp_path / "ctx.txt"),
                     "--question", "q", "--device", "cpu"])
    assert code == 2 and str(tmp_path / "missing") in capsys.readouterr().err  # it reached the model
    assert [r.message for r in caplog.records if "deprecated" in r.message] == [
        "--model is deprecated: pass MODEL as the first argument (lmlab ttt MODEL --context ...)"]
    assert main(["ttt", "a", "--model", "b", "--context", "c", "--question", "q"]) == 2
    assert "model given twice" in capsys.readouterr().err
    assert main(["ttt", "--context", "c", "--question", "q"]) == 2
    assert "ttt needs a model: lmlab ttt MODEL" in capsys.readouterr().err


def test_ttt_cli_on_hf_model(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(CONTEXT.split()) | {"What", "is", "the", "value", "of", "key", "AB-12?"})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
    )
    m.save_pretrained(tmp_path / "hf")
    fast.save_pretrained(tmp_path / "hf")
    (tmp_path / "ctx.txt").write_text(CONTEXT)
    code = main(
        [
            "ttt",
            str(tmp_path / "hf"),
            "--context",
            str(tmp_path / "ctx.txt"),
            "--question",
            "What is the value of key AB-12?",
            "--steps",
            "2",
            "--span",
            "8",
            "--max-new-tokens",
            "3",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and "with qTTT" in capsys.readouterr().out


def test_ttt_cli_warns_past_the_trained_length(tmp_path, caplog):
    """A context longer than the model's trained length (seq_len here; max_position_embeddings for Hugging Face
    models) is answered, with a warning that names both lengths."""
    run = saved_run(tmp_path, n_layers=1, n_heads=2, d_model=16, seq_len=64)
    args = ["ttt", str(run), "--context", str(tmp_path / "ctx.txt"), "--question", "key AB-12?", "--steps", "1",
            "--span", "8", "--lr", "1e-3", "--max-new-tokens", "2", "--device", "cpu"]
    with caplog.at_level("WARNING", logger="lmlab.methods.qttt.cli"):
        assert main(args) == 0
    msgs = [r.message for r in caplog.records if r.name == "lmlab.methods.qttt.cli"]
    assert any("past the 64 the model was trained on" in m for m in msgs), msgs
    caplog.clear()
    (tmp_path / "ctx.txt").write_text(CONTEXT[:20])
    with caplog.at_level("WARNING", logger="lmlab.methods.qttt.cli"):
        assert main(args) == 0
    assert not [r for r in caplog.records if r.name == "lmlab.methods.qttt.cli" and "trained on" in r.message]
