import copy

import numpy as np
import pytest
import torch

from lmlab.model import GPT, GPTConfig
from lmlab.methods.qttt.ttt import (
    QTTT,
    QTTTConfig,
    SpanInfo,
    _GPTBackend,
    sweep_spans,
    targeted_spans,
    uniform_spans,
)
from lmlab.utils import LmlabError


def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = {"vocab_size": 40, "n_layers": 2, "n_heads": 4, "d_model": 32, "n_kv_heads": 2, "seq_len": 128}
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def ctx(n, seed):
    return torch.randint(0, 40, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def span_forward_logits(model, context, start, span_len):
    """Logits of context[start:start+span_len] over the frozen prefill cache (what a qTTT step sees)."""
    backend = _GPTBackend(model)
    cache = backend.prefill([list(context)])
    toks = backend.ids[:, start : start + span_len]
    positions = torch.arange(start, start + span_len, device=backend.device)[None]
    with torch.no_grad():
        return model(toks, cache=cache, positions=positions)[0]


def test_span_forward_equals_full_forward():
    m = tiny_gpt()
    c = ctx(50, 1)
    full = m(torch.tensor([c]))[0]
    for start, k in [(0, 5), (17, 12), (40, 10)]:
        span = span_forward_logits(m, c, start, k)
        assert (span - full[start : start + k]).abs().max() < 1e-5


def test_batched_span_loss_with_left_padding_equals_single_forward():
    m = tiny_gpt()
    cs = [ctx(50, 1), ctx(33, 2)]
    b = _GPTBackend(m)
    cache = b.prefill(cs)
    starts, k = np.array([20, 7]), 9
    with torch.no_grad():
        got = b.span_loss(cache, starts, k, torch.ones(2, k))
    for i, c in enumerate(cs):
        ids = torch.tensor([c])
        ref = m(ids[:, :-1], ids[:, 1:], loss_reduction="none")[0, starts[i] : starts[i] + k].mean()
        assert abs(float(got[i]) - float(ref.detach())) < 1e-5


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_only_query_projection_changes_and_reset_restores():
    m = tiny_gpt()
    c = ctx(60, 3)
    before = _snapshot(m)
    q_before = m(torch.tensor([c + [5, 6]]))
    b = _GPTBackend(m)
    fork = b.fork(b.prefill([c]), 2)  # the unadapted prefill, read by the reference below
    q = QTTT(m, QTTTConfig(steps=6, span_len=10, lr=3e-2))
    with q.adapt([c]) as st:
        kv_before = {layer: (kb.clone(), vb.clone()) for layer, (kb, vb) in st.cache._kv.items()}
        deltas = st.deltas.delta_weights()
        assert all(float(d.abs().max()) > 0 for d in deltas)
        # every model tensor is bitwise unchanged: the adaptation lives only in the query deltas
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
        # hooks sit on the query projections only
        for blk in m.blocks:
            assert len(blk.attn.q_proj._forward_hooks) == 1
            assert not blk.attn.k_proj._forward_hooks and not blk.attn.v_proj._forward_hooks
        adapted = st.forward([[5, 6]])
        st.generate([[5, 6]], max_new_tokens=3)
        # the prefill cache is unchanged by answering (it is copied)
        for layer, (kb, vb) in st.cache._kv.items():
            assert torch.equal(kb, kv_before[layer][0]) and torch.equal(vb, kv_before[layer][1])
        # the adapted answer equals a copy whose W_Q was replaced by W_Q + ΔW, reading the original
        # (deliberately stale) prefill cache
        ref = copy.deepcopy(m)
        for blk, d in zip(ref.blocks, deltas):
            blk.attn.q_proj._forward_hooks.clear()
            blk.attn.q_proj.weight.data += d[0]
        with torch.no_grad():
            ref_logits = ref(torch.tensor([[5, 6]]), cache=fork)
        assert (ref_logits - adapted).abs().max() < 1e-5
        assert (adapted - q_before[:, -2:]).abs().max() > 1e-4
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(not blk.attn.q_proj._forward_hooks for blk in m.blocks)
    assert torch.equal(m(torch.tensor([c + [5, 6]])), q_before)


@pytest.mark.parametrize("params", ["q_full", "q_lora"])
def test_batched_adaptation_equals_loop(params):
    m = tiny_gpt()
    cs = [ctx(45, 4), ctx(30, 5), ctx(38, 6)]
    q = QTTT(m, QTTTConfig(steps=5, span_len=8, lr=1e-2, params=params, lora_rank=2))
    singles = []
    for c in cs:
        with q.adapt([c]) as st:
            singles.append((st.losses, [d[0] for d in st.deltas.delta_weights()], st.forward([[1, 2, 3]])[0]))
    with q.adapt(cs) as st:
        losses = np.array(st.losses)
        deltas = st.deltas.delta_weights()
        logits = st.forward([[1, 2, 3]] * 3)
    for i, (l1, d1, lg1) in enumerate(singles):
        assert np.allclose(losses[:, i], np.array(l1)[:, 0], atol=1e-5)
        for a, b in zip(deltas, d1):
            assert (a[i] - b).abs().max() < 1e-5
        assert (logits[i] - lg1).abs().max() < 1e-4


def test_matches_torch_adamw_on_wq():
    """The delta parameterisation equals AdamW (wd on the full W_Q, clipping) on W_Q itself."""
    m = tiny_gpt()
    c = ctx(40, 7)
    cfg = QTTTConfig(steps=4, span_len=8, lr=2e-2, weight_decay=0.1, grad_clip=0.05, sampler="sweep")
    with QTTT(m, cfg).adapt([c]) as st:
        got = [d[0].clone() for d in st.deltas.delta_weights()]
        starts = st.spans[0]
    ref = copy.deepcopy(m)
    for p in ref.parameters():
        p.requires_grad_(False)
    wqs = [blk.attn.q_proj.weight for blk in ref.blocks]
    w0 = [w.clone() for w in wqs]
    for w in wqs:
        w.requires_grad_(True)
    opt = torch.optim.AdamW(wqs, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    b = _GPTBackend(ref)
    cache = b.prefill([c])
    for t in starts:
        loss = b.span_loss(cache, np.array([t]), 8, torch.ones(1, 8)).sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wqs, cfg.grad_clip)
        opt.step()
    for w, w_init, d in zip(wqs, w0, got):
        assert (w.detach() - w_init - d).abs().max() < 1e-6


@pytest.mark.parametrize("params", ["q_full", "q_lora"])
def test_optimizer_gets_grads_laid_out_like_params(monkeypatch, params):
    """Fused CUDA AdamW refuses grads whose strides differ from their params (einsum returns permuted
    grads); a GPU run of long_context_ttt failed on exactly that. Checked here on CPU."""
    from lmlab.methods.qttt import ttt

    seen = []

    class CheckingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    seen.append(p.grad.stride() == p.stride())
            return super().step(closure)

    monkeypatch.setattr(ttt.torch.optim, "AdamW", CheckingAdamW)
    q = QTTT(tiny_gpt(), QTTTConfig(steps=2, span_len=8, params=params, lora_rank=2))
    with q.adapt([ctx(40, 1), ctx(40, 2)]):
        pass
    assert seen and all(seen)


def test_repeated_span_loss_decreases():
    m = tiny_gpt(init_std=0.2)  # large enough weights that queries matter
    c = ctx(40, 8)
    with QTTT(m, QTTTConfig(steps=15, span_len=10, lr=1e-2, sampler="tail")).adapt([c]) as st:
        losses = [l[0] for l in st.losses]
    assert losses[-1] < losses[0] - 0.5


def test_samplers_stay_in_bounds_and_targeted_hits_weights():
    rng = np.random.default_rng(0)
    info = SpanInfo(100, 16)
    for fn in (uniform_spans, sweep_spans):
        s = fn(rng, 50, info)
        assert s.min() >= 0 and s.max() + 16 <= 99
    w = np.zeros(100)
    w[[30, 70]] = 1
    s = targeted_spans(rng, 200, SpanInfo(100, 16, w))
    assert all(t + 1 <= 30 <= t + 16 or t + 1 <= 70 <= t + 16 for t in s)  # a weighted token is a span target
    strata = np.sort(sweep_spans(rng, 4, SpanInfo(100, 16)))
    assert np.all(np.diff(strata) > 0)


def test_bad_inputs_raise_lmlab_error():
    with pytest.raises(LmlabError):
        QTTTConfig(params="k_full")
    with pytest.raises(LmlabError):
        QTTTConfig(lr=0)
    with pytest.raises(LmlabError):
        QTTTConfig(sampler="nope")
    m = tiny_gpt()
    bad = QTTT(m, QTTTConfig(steps=2, span_len=4, sampler=lambda rng, n, info: np.full(n, info.length)))
    with pytest.raises(LmlabError), bad.adapt([ctx(20, 1)]):
        pass
    with pytest.raises(LmlabError), QTTT(m, QTTTConfig(steps=1)).adapt([[3]]):
        pass
    assert all(not blk.attn.q_proj._forward_hooks for blk in m.blocks)


def test_a_nan_step_is_not_applied_and_stops_adaptation_with_a_named_error(monkeypatch):
    """Issue 23: the test-time update of W_Q is guarded like every training loop — the failing step's update is
    not applied, TrainingDiverged names the step, the base weights are untouched and the hooks removed."""
    from lmlab.methods.qttt import ttt as ttt_mod
    from lmlab.train import TrainingDiverged

    m = tiny_gpt()
    before = copy.deepcopy(m.state_dict())
    real, calls = _GPTBackend.span_loss, []

    def poisoned(self, *a, **k):  # the third step's loss is NaN
        loss = real(self, *a, **k)
        calls.append(1)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(_GPTBackend, "span_loss", poisoned)
    q = QTTT(m, QTTTConfig(steps=8, span_len=8, lr=1e-3))
    seen = {}
    real_check = ttt_mod.check_finite

    def spy(opt, norms, loss):  # the deltas as they stand when the failing step is checked
        seen["deltas"] = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
        return real_check(opt, norms, loss)

    monkeypatch.setattr(ttt_mod, "check_finite", spy)
    with pytest.raises(TrainingDiverged, match="qTTT step 3 of 8: the loss is nan: the update was not applied"), \
            q.adapt([ctx(40, 1)]):
        pass
    assert all(torch.isfinite(d).all() and d.abs().sum() > 0 for d in seen["deltas"])  # two good steps applied
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not any(mod._forward_hooks for mod in m.modules())


@pytest.mark.parametrize("field, value", [("lr", float("nan")), ("lr", 1e38), ("lr", float("inf")),
                                          ("weight_decay", float("nan")), ("grad_clip", float("nan"))])
def test_non_finite_or_overflowing_settings_are_refused(field, value):
    with pytest.raises(LmlabError, match=f"qTTT {'learning rate' if field == 'lr' else field}"):
        QTTTConfig(**{field: value})
