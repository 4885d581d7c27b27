import itertools

import pytest

from lmlab.methods.qttt.flops import FlopModel
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


def test_gqa_and_mlp_ratio_enter_c_tok_by_hand():
    # g = n_kv/n_heads shrinks the K and V projections: C_tok = (2 + 2g + 2r)·L·d²
    f = FlopModel(2, 32, 3.0, 0.5)
    assert f.c_tok == (2 + 1 + 6) * 2 * 32**2
    assert f.qttt_step(4, 10) == 2 * (2 * 2 * 32 * 4 * 10 + (2 + 6) * 2 * 4 * 32**2)  # no K/V in a span step
    with pytest.raises(LmlabError):
        FlopModel(2, 32, 3.0, 0.0)


def test_from_lmlab_model_with_grouped_kv_heads():
    m = GPT(GPTConfig(vocab_size=32, n_layers=2, n_heads=4, n_kv_heads=1, d_model=32, mlp="relu2"))
    f = FlopModel.from_model(m)
    # per layer: q 32·32 + k 32·8 + v 32·8 + o 32·32 + MLP 2·32·128 = 10752 weights; C_tok counts them once per token
    assert f.kv_ratio == 0.25 and f.c_tok == 2 * 10752


def _linear_weights_per_layer(model):
    """Weights of the matrices in one decoder layer (what C_tok / L counts), read off the modules."""
    base = getattr(model, "model", None) or getattr(model, "gpt_neox", None) or model.transformer
    layer = (getattr(base, "layers", None) or base.h)[0]
    return sum(p.numel() for p in layer.parameters() if p.dim() == 2)


def test_from_hf_pythia_naming_is_a_plain_mlp():
    transformers = pytest.importorskip("transformers")
    # Pythia-160m: d=768, 12 layers, intermediate 3072 (ungated GELU MLP, no GQA)
    c = transformers.GPTNeoXConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=64
    )
    f = FlopModel.from_model(c)
    assert (f.n_layers, f.d_model, f.mlp_ratio, f.kv_ratio) == (12, 768, 4.0, 1.0)
    assert f.c_tok == 12 * 12 * 768**2  # (4 + 2·4)·L·d² = 12·12·768² ≈ 84.9 MFLOP per token
    small = transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(
            hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=64
        )
    )
    fs = FlopModel.from_model(small)
    assert fs.mlp_ratio == 3.0 and fs.c_tok == 2 * _linear_weights_per_layer(small) == 2 * (4 + 6) * 32**2


def test_from_hf_llama_gqa_and_gpt2_naming():
    transformers = pytest.importorskip("transformers")
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    f = FlopModel.from_model(llama)
    # per layer: q 1024 + k 512 + v 512 + o 1024 + gate/up/down 3·32·64 = 9216 weights
    assert (f.mlp_ratio, f.kv_ratio) == (3.0, 0.5)
    assert f.c_tok == 2 * 9216 == 2 * _linear_weights_per_layer(llama)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_inner=None)
    )
    g = FlopModel.from_model(gpt2)
    assert (g.n_layers, g.d_model, g.mlp_ratio, g.kv_ratio) == (3, 32, 4.0, 1.0)
    assert g.c_tok == 3 * _linear_weights_per_layer(gpt2) == 3 * 12 * 32**2
