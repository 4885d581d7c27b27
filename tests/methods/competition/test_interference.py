"""Interference measurements against hand-computed values and independent computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlab.methods.competition import interference as itf
from lmlab.model import GPT, GPTConfig


def test_path_strength_and_allocation_by_hand():
    # 3 units, 2 tasks with 2-d input/output blocks
    W = torch.tensor([[3.0, 4.0, 0.0, 0.0],   # unit 0 reads task 0 (‖·‖ = 5)
                      [0.0, 0.0, 1.0, 0.0],   # unit 1 reads task 1 (1)
                      [1.0, 0.0, 0.0, 2.0]])  # unit 2 reads both (1, 2)
    A = torch.tensor([[1.0, 0.0, 2.0],
                      [0.0, 0.0, 0.0],
                      [0.0, 3.0, 2.0],
                      [0.0, 4.0, 0.0]])       # columns = units; rows 0-1 task 0, rows 2-3 task 1
    blocks = [slice(0, 2), slice(2, 4)]
    s = itf.path_strength(W, A, blocks, blocks)
    assert s.tolist() == [[5.0, 0.0], [0.0, 5.0], [2.0, 4.0]]
    al = itf.allocation(s)
    assert np.allclose(al["per_unit"].numpy(), [[1, 0], [0, 1], [1 / 3, 2 / 3]])
    assert al["shares"].tolist() == pytest.approx([4 / 3, 5 / 3])
    assert al["fractions"].tolist() == pytest.approx([4 / 9, 5 / 9])
    # a weak unit (total 0.06 < 2% of the strongest, 6) counts as unallocated
    s2 = torch.cat([s, torch.tensor([[0.05, 0.01]])])
    al2 = itf.allocation(s2, min_frac=0.02)
    assert al2["active"].tolist() == [True, True, True, False]
    assert al2["fractions"].tolist() == pytest.approx([(4 / 3) / 4, (5 / 3) / 4])


def test_interference_by_hand():
    grads = {"a": torch.tensor([1.0, 0.0, 0.0]), "b": torch.tensor([0.0, 2.0, 0.0]),
             "rare": torch.tensor([-1.0, 0.0, 1.0])}
    out = itf.interference(grads, {"a": 0.75, "b": 0.25}, ["a", "b"], "rare")
    # g_common = (0.75, 0.5, 0); g_rare = (-1, 0, 1)
    assert out["common_norm"] == pytest.approx(math.sqrt(0.75 ** 2 + 0.5 ** 2))
    assert out["rare_norm"] == pytest.approx(math.sqrt(2))
    assert out["cos_common_rare"] == pytest.approx(-0.75 / (out["common_norm"] * math.sqrt(2)))
    assert out["projection"] == pytest.approx(0.75 / math.sqrt(2))
    assert out["rare_loss_change"] == pytest.approx(0.75)  # a common step raises the rare loss
    assert out["norms"] == pytest.approx({"a": 1.0, "b": 2.0, "rare": math.sqrt(2)})
    assert out["cosines"][0, 2] == pytest.approx(-1 / math.sqrt(2))
    assert out["cosines"][0, 1] == pytest.approx(0.0)


def test_injection_signal_update_and_forget_vs_accumulation():
    # values[t] after t updates; injections at steps 2 and 6
    forget = [0, 0, 0, 1.0, 0.5, 0.1, 0.0, 1.0, 0.4]
    f = itf.injection_signal(forget, [2, 6])
    assert f["before"].tolist() == [0.0, 0.0] and f["after"].tolist() == [1.0, 1.0]
    assert f["decay"].tolist() == [1.0]
    assert f["decay_frac"] == pytest.approx(1.0) and f["retention"] == 0.0 and f["accumulation"] == 0.0
    acc = [0, 0, 0, 0.4, 0.4, 0.4, 0.4, 0.8, 0.8]
    a = itf.injection_signal(acc, [2, 6, 99])  # injections beyond the record are ignored
    assert a["decay_frac"] == pytest.approx(0.0) and a["accumulation"] == pytest.approx(0.4)
    assert a["retention"] == pytest.approx(0.4)


def _gpt(seed=0, layers=2):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=20, n_layers=layers, n_heads=2, d_model=16, seq_len=16, mlp="relu2",
                         mlp_hidden=12)).eval()


def _zero_unit(j):
    def zero(a):
        a = a.clone()
        a[..., j] = 0
        return a

    return zero


def test_neuron_hook_zeroing_a_unit_equals_zeroing_the_down_projection_column():
    model = _gpt()
    x = torch.randint(0, 20, (4, 8), generator=torch.Generator().manual_seed(1))
    loss = lambda m: float(m(x[:, :-1], x[:, 1:]))
    with torch.no_grad():
        for j in [0, 5, 11]:
            with itf.neuron_hook(model, 1, _zero_unit(j)):
                got = loss(model)
            w = model.blocks[1].mlp.down_proj.weight
            saved = w[:, j].clone()
            w[:, j] = 0
            want = loss(model)
            w[:, j] = saved
            assert got == pytest.approx(want, abs=1e-6)


def test_unit_attribution_is_the_first_order_ablation():
    """−Σ a_j ∂L/∂a_j equals the derivative of the loss along scaling unit j down (central difference)."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=20, n_layers=2, n_heads=2, d_model=16, seq_len=16, mlp="relu2", mlp_hidden=12,
                          init_std=0.3)).eval()  # large weights: effects well above float32 noise
    x = torch.randint(0, 20, (4, 8), generator=torch.Generator().manual_seed(2))
    fns = {"t": lambda m: m(x[:, :-1], x[:, 1:])}
    attr = itf.unit_attributions(model, fns, layer=0)["t"]
    eps = 1e-3

    def loss_scaled(j, factor):
        def scale(a):
            a = a.clone()
            a[..., j] *= factor
            return a

        with itf.neuron_hook(model, 0, scale), torch.no_grad():
            return float(fns["t"](model))

    assert float(attr.abs().max()) > 1e-2
    for j in range(12):
        fd = -(loss_scaled(j, 1 + eps) - loss_scaled(j, 1 - eps)) / (2 * eps)
        assert float(attr[j]) == pytest.approx(fd, rel=0.05, abs=2e-3)


def test_task_gradients_match_autograd():
    model = _gpt(2)
    x = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(3))
    fns = {"lm": lambda m: m(x[:, :-1], x[:, 1:]), "last": lambda m: m(x)[:, -1].logsumexp(-1).mean()}
    g = itf.task_gradients(model, fns)
    model.zero_grad()
    fns["last"](model).backward()
    want = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in model.parameters()])
    assert torch.allclose(g["last"], want, atol=1e-6)
    assert g["lm"].shape == want.shape


def test_layer_features_on_lmlab_gpt():
    model = _gpt(3)
    x = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(4))
    feats = itf.layer_features(model, x, position=-1)
    _, cache = model.run_with_cache(x, names=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"])
    assert sorted(feats) == [-1, 0, 1]
    assert np.allclose(feats[-1], cache["blocks.0.hook_resid_pre"][:, -1].numpy())
    assert np.allclose(feats[1], cache["blocks.1.hook_resid_post"][:, -1].numpy())
    pos = torch.tensor([0, 3, 6])
    f2 = itf.layer_features(model, x, position=pos, layers=[1])
    assert np.allclose(f2[1], cache["blocks.1.hook_resid_post"][torch.arange(3), pos].numpy())


def test_hooks_work_on_a_hugging_face_decoder():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).eval()
    x = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(1))
    fwd = lambda m, idx: m(input_ids=idx).logits
    feats = itf.layer_features(model, x, position=-1, forward=fwd)
    with torch.no_grad():
        hs = model(input_ids=x, output_hidden_states=True).hidden_states
    assert np.allclose(feats[-1], hs[0][:, -1].numpy(), atol=1e-6)
    assert np.allclose(feats[0], hs[1][:, -1].numpy(), atol=1e-5)  # hs[-1] is after the final norm
    loss = lambda m: float(F.cross_entropy(m(input_ids=x).logits[:, :-1].reshape(-1, 32), x[:, 1:].reshape(-1)))
    with torch.no_grad():
        with itf.neuron_hook(model, 1, _zero_unit(4)):
            got = loss(model)
        model.model.layers[1].mlp.down_proj.weight[:, 4] = 0
        want = loss(model)
    assert got == pytest.approx(want, abs=1e-6)


def test_probes_separate_linear_labels_and_not_random_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    test = np.arange(300) >= 200
    acc = itf.probe_layers({0: x, 1: rng.normal(size=(300, 6))}, y, test)
    assert acc[0] > 0.95
    assert 0.3 < acc[1] < 0.7


def test_task_history_records_each_metric_without_gradients():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    x = torch.tensor([[1.0, 2.0]])
    hist = itf.TaskHistory({"out": lambda m: m(x).sum(), "sq": lambda m: m(x).pow(2).sum()})
    hist.record(0, lin)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    now = hist.record(5, lin)
    assert hist.steps == [0, 5] and hist.values == {"out": [3.0, 6.0], "sq": [9.0, 36.0]}
    assert now == {"out": 6.0, "sq": 36.0} and lin.weight.grad is None
