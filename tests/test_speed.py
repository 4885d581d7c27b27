"""The fast training path (lmlab.speed; the fast options of make_step, fit and pretrain): each fast path gives the
plain path's loss to a stated tolerance, and the default CPU path computes exactly what it computed before them."""

import functools
import json

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import load_config
from lmlab.model import GPT, IGNORE_INDEX, GPTConfig
from lmlab.speed import _layout, chunked_lm_loss, mfu, palm_flops, pick_sdpa_backend, sdpa_context
from lmlab.train import fit, lr_at, make_optimizer, make_step, pretrain, set_lr
from lmlab.utils import LmlabError

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
TOL = {"rtol": 1e-5, "atol": 1e-6}  # fp32 on CPU: the fast paths sum the same terms in another order


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small(**kw):
    return GPTConfig(**{"vocab_size": 50, "n_layers": 2, "n_heads": 2, "d_model": 16, "seq_len": 32, **kw})


def batches(n=6, b=4, t=16, vocab=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (b, t), generator=g) for _ in range(n)]


def lm(m, x):
    return m(x, x.roll(-1, 1))


def run_fit(chunk=0, steps=6, cfg=None, **kw):
    torch.manual_seed(0)
    model = GPT(cfg or small())
    model.loss_chunk = chunk
    losses = fit(model, lm, iter(batches(steps)), steps, lr=3e-3, warmup=2, **kw)
    return losses, model


# ---------------------------------------------------------------- chunked cross-entropy
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_loss_equals_cross_entropy_values_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 11, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(64, 16, generator=g, dtype=torch.float64, requires_grad=True)  # vocab 50 padded to 64
    t = torch.randint(0, 50, (3, 11), generator=g)
    t[0, :4] = IGNORE_INDEX
    ref = F.cross_entropy((h @ w.T)[..., :50].reshape(-1, 50), t.reshape(-1), ignore_index=IGNORE_INDEX)
    got = chunked_lm_loss(h, w, t, 50, chunk)
    ref_grads = torch.autograd.grad(ref * 1.7, (h, w))
    got_grads = torch.autograd.grad(got * 1.7, (h, w))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)  # fp64: the same quantity
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert got_grads[1][50:].abs().max() == 0  # padded rows of the head get no gradient


def test_chunked_loss_with_every_target_ignored_is_zero_like_the_plain_loss():
    torch.manual_seed(0)
    model = GPT(small())
    x = torch.randint(0, 50, (2, 8))
    y = torch.full_like(x, IGNORE_INDEX)
    plain = model(x, y)
    model.loss_chunk = 5
    chunked = model(x, y)
    chunked.backward()
    assert float(plain) == float(chunked.detach()) == 0.0
    assert all(float(p.grad.abs().max()) == 0 for p in model.parameters())


@pytest.mark.parametrize("tied", [True, False])
def test_model_chunked_loss_matches_plain_loss_and_gradients(tied):
    torch.manual_seed(0)
    model = GPT(small(tie_embeddings=tied))
    x = torch.randint(0, 50, (3, 16))
    y = x.roll(-1, 1)
    y[:, :2] = IGNORE_INDEX

    def loss_and_grads(chunk):
        model.zero_grad(set_to_none=True)
        model.loss_chunk = chunk
        loss = model(x, y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (l0, g0), (l1, g1) = loss_and_grads(0), loss_and_grads(5)
    torch.testing.assert_close(l1, l0, **TOL)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], **TOL, msg=n)
    assert model(x, y, loss_reduction="none").shape == (3, 16)  # per-token losses: the plain head


# ---------------------------------------------------------------- fast paths of fit / make_step
def test_fit_chunked_and_fused_paths_give_the_plain_loss():
    plain, m0 = run_fit()
    chunked, m1 = run_fit(chunk=7)
    torch.manual_seed(0)
    m2 = GPT(small())
    fused = fit(m2, lm, iter(batches()), 6, lr=3e-3, warmup=2, optimizer=make_optimizer(m2, 3e-3, fused=True))
    for other in (chunked, fused):
        assert other == pytest.approx(plain, rel=1e-5)
    for a, b, c in zip(m0.parameters(), m1.parameters(), m2.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-6)


def test_fit_compiled_paths_give_the_plain_loss(monkeypatch):
    """torch.compile as traced by dynamo and AOT autograd (the aot_eager backend: no C++ build, so this stays fast;
    the inductor build is the slow test below), with and without the chunked loss."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    plain, _ = run_fit()
    assert run_fit(compile=True)[0] == pytest.approx(plain, rel=1e-5)
    assert run_fit(chunk=7, compile=True)[0] == pytest.approx(plain, rel=1e-5)


@pytest.mark.slow
def test_fit_inductor_compiled_paths_give_the_plain_loss():
    torch._dynamo.reset()
    plain, _ = run_fit()
    assert run_fit(compile=True)[0] == pytest.approx(plain, rel=1e-5)
    assert run_fit(chunk=7, compile=True)[0] == pytest.approx(plain, rel=1e-5)


def test_make_step_accumulation_equals_one_batch():
    torch.manual_seed(0)
    a = GPT(small())
    b = GPT(small())
    b.load_state_dict(a.state_dict())
    x = batches(1, b=8)[0]
    step_a = make_step(a, make_optimizer(a, 1e-2, 0.1), lm, grad_clip=0.5)
    step_b = make_step(b, make_optimizer(b, 1e-2, 0.1), lm, grad_clip=0.5)
    la = step_a([x[:4], x[4:]], 1e-2)
    lb = step_b([x], 1e-2)
    torch.testing.assert_close(la, lb.detach(), **TOL)
    for p, q in zip(a.parameters(), b.parameters()):  # Adam divides tiny gradients by their own size
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def test_sdpa_backend_choice_keeps_the_loss():
    assert pick_sdpa_backend(2, 2, 16, 8, torch.device("cpu")) == "default"
    plain, _ = run_fit(steps=3)
    assert run_fit(steps=3, sdpa="math")[0] == pytest.approx(plain, rel=1e-5)
    q = torch.randn(1, 2, 5, 8)
    with sdpa_context("math", strict=True):
        got = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, q, q, is_causal=True), **TOL)


def test_cuda_graph_is_ignored_on_cpu():
    plain, _ = run_fit(steps=3)
    assert run_fit(steps=3, cuda_graph=True)[0] == plain


def test_batch_layout_tells_apart_what_a_graph_cannot_replay():
    x = torch.zeros(2, 3)
    same = _layout(((x, x + 1), {"k": 4}))
    assert same[0] == _layout(((x * 2, x), {"k": 4}))[0] and len(same[1]) == 2
    assert same[0] != _layout(((x, torch.zeros(2, 4)), {"k": 4}))[0]  # shape
    assert same[0] != _layout(((x, x.long()), {"k": 4}))[0]  # dtype
    assert same[0] != _layout(((x, x), {"k": 5}))[0]  # a plain value
    assert same[0] != _layout([x, x + 1])[0]  # structure


# ---------------------------------------------------------------- MFU count
@pytest.mark.parametrize("tied,params", [(True, 9296), (False, 10320)])
def test_palm_flops_against_a_hand_count(tied, params):
    # vocab 50 -> 64 padded rows x d 16 = 1024 (embedding; the untied head another 1024); per layer: two norms 2 x 16,
    # q/k/v/o 4 x 16 x 16 = 1024, SwiGLU (hidden 64) 3 x 16 x 64 = 3072 -> 4128; 2 layers 8256; final norm 16
    model = GPT(small(tie_embeddings=tied))
    assert 1024 + 8256 + 16 + (0 if tied else 1024) == params
    flops, text = palm_flops(model, 32)
    assert flops == 6 * params + 12 * 2 * 16 * 32
    assert f"6 × {params:,} params + 12 × 2 layers × 16 d × 32 T" in text
    assert mfu(1000.0, flops, None) is None
    assert mfu(1e6, 1e6, 2e12) == pytest.approx(0.5)


# ---------------------------------------------------------------- the default CPU path is unchanged
def plain_fit(model, data, steps, lr, warmup):
    """`fit`'s loop as it was before the fast options (CPU: autocast is a no-op), line for line."""
    opt = make_optimizer(model, lr, 0.0)
    model.train()
    losses, it = [], iter(data)
    for step in range(steps):
        set_lr(opt, lr_at(step, steps, lr, warmup))
        batch = next(it)
        loss = lm(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.detach())
    model.eval()
    return torch.stack(losses).float().tolist()


def test_fit_default_path_is_bit_identical_to_the_old_loop():
    new, m_new = run_fit()
    torch.manual_seed(0)
    m_old = GPT(small())
    assert new == plain_fit(m_old, batches(), 6, 3e-3, 2)
    for a, b in zip(m_new.state_dict().values(), m_old.state_dict().values()):
        assert torch.equal(a, b)


# The first 8 losses of test_train.py's MICRO pretraining run, recorded from the code before the fast options
# (2026-12-07, torch 2.13.0+cpu, 1 thread); after them the same run on that machine gave the same floats bit for bit
# and the same final weights. Compared to 1e-6 here: another CPU or BLAS may round differently.
PRETRAIN_LOSSES = [4.096613883972168, 3.9716708660125732, 3.71457576751709, 3.621699571609497, 3.454453945159912,
                   3.3084218502044678, 3.260561943054199, 3.21205472946167]
MICRO = {
    "model.n_layers": 1, "model.n_heads": 2, "model.d_model": 32, "model.seq_len": 32,
    "data.sources": [{"kind": "synthetic", "generator": "grammar", "weight": 3},
                     {"kind": "synthetic", "generator": "arithmetic", "weight": 1}],
    "data.buffer_docs": 16, "train.batch_size": 4, "train.max_steps": 8, "train.warmup": 2, "train.lr": 1e-2,
    "train.save_every": 3, "train.eval_every": 4, "train.eval_batches": 1, "train.log_every": 1,
    "train.device": "cpu", "train.threads": 1, "train.progress": False, "train.tensorboard": False,
}


def pretrain_losses(run, **over):
    pretrain(load_config(None, {**MICRO, **over}), run)
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_pretrain_default_losses_are_those_recorded_before_the_fast_path(tmp_path):
    assert pretrain_losses(tmp_path / "run") == pytest.approx(PRETRAIN_LOSSES, rel=1e-6)


def test_pretrain_chunked_loss_gives_the_default_losses(tmp_path):
    losses = pretrain_losses(tmp_path / "run", **{"train.loss_chunk": 24, "train.sdpa_backend": "math"})
    assert losses == pytest.approx(PRETRAIN_LOSSES, rel=1e-4)


@pytest.mark.parametrize("key,value", [("train.sdpa_backend", "fast"), ("train.compile_mode", "turbo"),
                                       ("train.loss_chunk", -1)])
def test_fast_options_are_validated(key, value):
    with pytest.raises(LmlabError, match=key):
        load_config(None, {**MICRO, key: value})


# ---------------------------------------------------------------- CUDA (run by the lease script on a GPU)
@needs_cuda
def test_cuda_graph_step_gives_the_eager_loss():
    dev = torch.device("cuda")
    cfg = small(vocab_size=48, d_model=128, n_heads=2)

    def go(**kw):
        torch.manual_seed(0)
        model = GPT(cfg).to(dev)
        data = [b.to(dev) for b in batches(12, b=8, vocab=48)]
        data[9] = data[9][:, :12]  # another shape: that step runs eagerly beside the graph
        return fit(model, lm, iter(data), 12, lr=3e-3, warmup=2, **kw), model

    eager, m0 = go()
    graphed, m1 = go(cuda_graph=True)
    assert graphed == pytest.approx(eager, rel=2e-3)  # bf16 autocast; the same kernels, a capturable AdamW
    for a, b in zip(m0.parameters(), m1.parameters()):
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-3)


@needs_cuda
def test_chunked_loss_on_cuda_under_autocast():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = GPT(small(vocab_size=1000, d_model=64)).to(dev)
    x = torch.randint(0, 1000, (4, 32), device=dev)
    out = {}
    for chunk in (0, 48):
        model.zero_grad(set_to_none=True)
        model.loss_chunk = chunk
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, x.roll(-1, 1))
        loss.backward()
        out[chunk] = loss.float(), model.embed.weight.grad.clone()
    torch.testing.assert_close(out[48][0], out[0][0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out[48][1], out[0][1], rtol=5e-2, atol=1e-3)
    assert pick_sdpa_backend(4, 2, 32, 32, dev) in ("cudnn", "flash", "default")
