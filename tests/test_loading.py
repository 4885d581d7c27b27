import pytest
import torch

from lmlab import checkpoint
from lmlab.loading import load_policy
from lmlab.model import GPT, GPTConfig
from lmlab.tokenizer import CharTokenizer
from lmlab.utils import LmlabError


def test_loads_an_lmlab_run_with_its_tokenizer_and_refuses_one_without(tmp_path):
    tok = CharTokenizer("abc ")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=1, n_heads=2, d_model=16, seq_len=32))
    run = tmp_path / "run"
    checkpoint.save(run, 3, model)
    with pytest.raises(LmlabError, match="--tokenizer"):
        load_policy(str(run), None, None, "cpu")
    tok.save(run / "tokenizer.json")
    loaded, codec, kind = load_policy(str(run), 3, None, "cpu")
    assert kind == "lmlab" and codec.encode("abc") == tok.encode("abc")
    ids = torch.tensor([tok.encode("abca")])
    assert torch.equal(loaded(ids), model(ids))  # the same weights
