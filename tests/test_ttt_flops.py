import itertools

import pytest

from lmlab.flops_ttt import FlopModel
from lmlab.model import GPT, GPTConfig
from lmlab.utils import LmlabError


def test_matched_thinking_tokens_reproduce_the_paper_rule():
    f = FlopModel(n_layers=32, d_model=4096, mlp_ratio=4)
    m = f.matched_thinking_tokens(32, 128, 1e5)
    assert abs(m - 7686) < 2  # solving App. C exactly (spec §12 Q7)
    assert abs(m / (2 * 32 * 128) - 1) < 0.10
    ratios = [f.matched_thinking_tokens(32, 128, T) / 8192 for T in (1e4, 1e5, 1e6, 1e7)]
    assert all(a < b for a, b in itertools.pairwise(ratios)) and ratios[-1] > 0.99
    # the root really matches the FLOPs, and the inverse gives the steps back
    assert abs(f.thinking(m, 1e5) / f.qttt(32, 128, 1e5) - 1) < 1e-9
    assert abs(f.matched_qttt_steps(m, 128, 1e5) - 32) < 1e-6


def test_formulas_by_hand():
    f = FlopModel(2, 10, 3)
    assert f.c_quad == 40 and f.c_tok == (4 + 6) * 2 * 100
    assert f.prefill(5) == 40 * 25 + 2000 * 5
    assert f.thinking(3, 5) == 40 * (15 + 3) + 2000 * 3
    assert f.qttt_step(4, 5) == 2 * (40 * 20 + 8 * 2 * 4 * 100)


def test_from_lmlab_model_and_validation():
    m = GPT(GPTConfig(vocab_size=32, n_layers=3, n_heads=2, d_model=32, mlp="relu2"))
    f = FlopModel.from_model(m)
    assert (f.n_layers, f.d_model, f.mlp_ratio) == (3, 32, 4.0)
    m2 = GPT(GPTConfig(vocab_size=32, n_layers=1, n_heads=2, d_model=48, mlp="swiglu"))
    assert abs(FlopModel.from_model(m2).mlp_ratio - 1.5 * m2.cfg.hidden / 48) < 1e-12
    with pytest.raises(LmlabError):
        FlopModel(0, 8)
