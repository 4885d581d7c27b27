"""IHA inside the GPT: training through lmlab.train.fit, state_dict round-trip, hybrid schedule, FLOPs."""

import io

import pytest
import torch

from lmlab.model import AttnContext
from lmlab.methods.iha.attention import hybrid_config, hybrid_layer_attention, hybrid_window, virtual_mask
from lmlab.model import attention_flops_per_token, flop_ratio_vs_mha, stack_attention_flops
from lmlab.model import GPT, GPTConfig
from lmlab.train import fit


def tiny(**kw):
    base = dict(vocab_size=16, n_layers=2, n_heads=2, d_model=16, seq_len=32, attention="iha",
                attention_options={"n_pseudo": 2})
    base.update(kw)
    return GPTConfig(**base)


def test_gpt_with_iha_trains_through_fit_and_round_trips_its_state_dict():
    torch.manual_seed(0)
    model = GPT(tiny())
    seq = torch.arange(24) % 5 + 1  # a periodic sequence: learnable only by looking back

    def batches():
        while True:
            off = torch.randint(0, 5, (8, 1))
            yield (seq[None, :] + off) % 5 + 1

    loss_fn = lambda m, b: m(b[:, :-1], b[:, 1:])  # noqa: E731
    losses = fit(model, loss_fn, batches(), steps=80, lr=1e-2)
    assert losses[-1] < 0.3 * losses[0]

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    clone = GPT(tiny())
    clone.load_state_dict(torch.load(buf))
    x = torch.randint(0, 16, (2, 12))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), clone.eval()(x))


def test_mixing_parameters_are_trained():
    torch.manual_seed(0)
    model = GPT(tiny())
    before = model.blocks[0].attn.alpha_k.detach().clone()
    x = torch.randint(1, 16, (4, 10))
    fit(model, lambda m, b: m(b[:, :-1], b[:, 1:]), iter([x] * 5), steps=5, lr=1e-2)
    assert (model.blocks[0].attn.alpha_k - before).abs().max() > 1e-4


def test_hybrid_iha_model_checkpoints_with_optimizer_state(tmp_path):
    ckpt = pytest.importorskip("lmlab.checkpoint")
    torch.manual_seed(0)
    model = GPT(hybrid_config(tiny(n_layers=5, seq_len=64), n_pseudo=2))
    x = torch.randint(1, 16, (4, 12))
    opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-2)
    fit(model, lambda m, b: m(b[:, :-1], b[:, 1:]), iter([x] * 3), steps=3, lr=1e-2, optimizer=opt)
    ckpt.save(tmp_path / "run", 3, model, opt)
    loaded, meta = ckpt.load(tmp_path / "run")
    assert meta["step"] == 3 and meta["model_config"]["layer_attention"] == ["iha"] * 4 + ["mha"]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.eval()(x))
    fresh = GPT(loaded.cfg)
    opt2 = torch.optim.AdamW(fresh.optimizer_groups(0.1), lr=1e-2)
    ckpt.load_into(fresh, opt2, tmp_path / "run")
    assert torch.equal(fresh.blocks[0].attn.alpha_v, model.blocks[0].attn.alpha_v)
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


# ------------------------------------------------------------------ hybrid schedule and FLOPs
def test_hybrid_schedule_layout_and_window():
    assert hybrid_layer_attention(10) == ["iha"] * 4 + ["mha"] + ["iha"] * 4 + ["mha"]
    assert hybrid_window(8192, 2) == 1024 and hybrid_window(8192, 4) == 256
    cfg = hybrid_config(tiny(n_layers=5, seq_len=256), n_pseudo=2)
    assert cfg.attention_options["window"] == 32
    model = GPT(cfg)
    kinds = [type(b.attn).__name__ for b in model.blocks]
    assert kinds == ["InterleavedHeadAttention"] * 4 + ["MultiHeadAttention"]
    with pytest.raises(ValueError, match="too short"):
        hybrid_config(tiny(n_layers=5, seq_len=16), n_pseudo=4)


@pytest.mark.parametrize("p,n", [(2, 256), (4, 1024), (3, 4096)])
def test_hybrid_is_flop_matched_under_the_papers_convention(p, n):
    cfg = hybrid_config(tiny(n_layers=5, seq_len=n), n_pseudo=p)
    w = n // (2 * p * p)
    assert flop_ratio_vs_mha(cfg) == pytest.approx((4 * (p * p * w / n) + 1) / 5)
    if n % (2 * p * p) == 0:
        assert flop_ratio_vs_mha(cfg) == pytest.approx(3 / 5)
    # with causal kernels the saving disappears: the window is dense, the global layer half-empty
    assert 0.9 < flop_ratio_vs_mha(cfg, causal=True) <= 1.0


def test_global_iha_costs_p_squared_mha():
    g = GPTConfig(vocab_size=16, n_layers=3, n_heads=4, d_model=32, attention="iha",
                  attention_options={"n_pseudo": 3})
    assert flop_ratio_vs_mha(g, 128) == pytest.approx(9.0)
    assert stack_attention_flops(g, 128) == 3 * 12 * 4 * 8 * 3 * 128 * 3


@pytest.mark.parametrize("p,window", [(1, None), (3, None), (3, 4), (2, 1), (2, 30)])
def test_causal_flop_count_equals_unmasked_pairs(p, window):
    n, h, d = 12, 2, 4
    pairs = virtual_mask(AttnContext(), n, p, True, window, torch.device("cpu")).sum().item()
    assert attention_flops_per_token(n, h, d, p, window, causal=True) == pytest.approx(12 * h * d * pairs / n)


def test_estimate_flops_counts_mixing_and_virtual_scores():
    mha = GPT(tiny(attention="mha", attention_options={}))
    iha = GPT(tiny())
    a = iha.blocks[0].attn
    extra_mix = 6 * a.extra_parameters() * a.head_dim * 2  # two layers, mixing used head_dim times/token
    extra_scores = 2 * 12 * 2 * 8 * 64 * (4 - 1)  # P² − 1 times MHA's scores at N = 64
    assert iha.estimate_flops(64) - mha.estimate_flops(64) == pytest.approx(extra_mix + extra_scores)
