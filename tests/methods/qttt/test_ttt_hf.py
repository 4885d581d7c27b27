import numpy as np
import pytest
import torch

from lmlab import hf
from lmlab.methods.qttt.flops import FlopModel
from lmlab.methods.qttt.ttt import QTTT, QTTTConfig, QueryDeltas, _frozen_layer, _HFBackend

transformers = pytest.importorskip("transformers")


TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def _tiny(kind, tmp_path):
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY))
    else:  # Qwen2: biases on q/k/v
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY))
    model.save_pretrained(tmp_path / kind)
    return hf.load_model(tmp_path / kind).eval()


@pytest.fixture(params=["llama", "qwen2"])
def model(request, tmp_path):
    torch.manual_seed(0)
    return _tiny(request.param, tmp_path)


def ids(n, seed=0):
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_frozen_span_forward_equals_full_forward(model):
    from transformers import DynamicCache

    c = ids(48)
    with torch.no_grad():
        full = model(torch.tensor([c])).logits[0]
    b = _HFBackend(model)
    kv = b.prefill([c])
    for t, k in [(0, 6), (20, 10), (37, 10)]:
        cache = DynamicCache()
        cache.layers = [_frozen_layer(kk, vv, t) for kk, vv in kv]
        with torch.no_grad():
            span = b._call(torch.tensor([c[t : t + k]]), cache).logits[0]
        assert (span - full[t : t + k]).abs().max() < 1e-5


def test_qttt_end_to_end_on_hf(model):
    c = ids(60, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        base = model(torch.tensor([c + [3, 4]])).logits[0, -1]
    q = QTTT(model, QTTTConfig(steps=4, span_len=12, lr=1e-2))
    with q.adapt([c]) as st:
        kv_before = [(k.clone(), v.clone()) for k, v in st.cache]
        assert len(st.losses) == 4 and all(np.isfinite(l[0]) for l in st.losses)
        out = st.generate([[3, 4]], max_new_tokens=5, temperature=0)
        assert len(out.tokens[0]) == 5
        assert (out.first_logits[0] - base).abs().max() > 1e-5  # the adapted queries change the answer logits
        assert all(torch.equal(a, k) and torch.equal(b, v) for (a, b), (k, v) in zip(kv_before, st.cache))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # reset: no hooks, identical outputs
    with q.adapt([c], steps=0) as st:
        again = st.forward([[3, 4]])[0, -1]
    assert (again - base).abs().max() < 1e-5


@pytest.mark.parametrize("params", ["q_full", "q_lora"])
def test_batched_hf_adaptation_equals_one_context_at_a_time(model, params):
    """Contexts of different lengths adapted in one left-padded batch give each context what it gets alone: the
    same span losses and ΔW_Q at every step, the same answer logits and the same greedy answer."""
    cs = [ids(45, 4), ids(30, 5), ids(38, 6)]
    questions = [[1, 2, 3], [7], [4, 5]]
    q = QTTT(model, QTTTConfig(steps=5, span_len=8, lr=1e-2, params=params, lora_rank=2))
    singles = []
    for c, qu in zip(cs, questions):
        with q.adapt([c]) as st:
            singles.append((st.losses, [d[0] for d in st.deltas.delta_weights()], st.forward([qu])[0, -1],
                            st.generate([qu], max_new_tokens=6).tokens[0]))
    with q.adapt(cs) as st:
        losses = np.array(st.losses)
        deltas = st.deltas.delta_weights()
        logits = st.forward(questions)[:, -1]
        answers = st.generate(questions, max_new_tokens=6).tokens
    for i, (l1, d1, lg1, a1) in enumerate(singles):
        assert np.allclose(losses[:, i], np.array(l1)[:, 0], atol=1e-5)
        for a, b in zip(deltas, d1):
            assert (a[i] - b).abs().max() < 1e-5
        assert (logits[i] - lg1).abs().max() < 1e-4
        assert answers[i] == a1


def test_batched_hf_span_loss_equals_unpadded_full_forward(model):
    """The 4D-masked span forward of a padded batch equals each context's own full causal forward."""
    cs = [ids(40, 8), ids(25, 9)]
    b = _HFBackend(model)
    kv = b.prefill(cs)
    starts, k = np.array([30, 10]), 8
    got = b.span_loss(kv, starts, k, torch.ones(2, k))
    for i, c in enumerate(cs):
        with torch.no_grad():
            logits = model(torch.tensor([c])).logits[0].float()
        t = int(starts[i])
        ref = torch.nn.functional.cross_entropy(logits[t : t + k], torch.tensor(c[t + 1 : t + k + 1]))
        assert abs(float(got[i].detach()) - float(ref)) < 1e-5


def test_flop_model_from_hf(model):
    f = FlopModel.from_model(model)
    assert (f.n_layers, f.d_model) == (2, 32) and abs(f.mlp_ratio - 1.5 * 64 / 32) < 1e-12


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_query_deltas_on_fused_projections_change_the_queries_only(family):
    """GPT-2's c_attn is [q | k | v], GPT-NeoX's query_key_value is [q | k | v] per head: a ΔW_Q applied by the
    hooks equals the same ΔW written into the query rows of the fused weight."""
    cfg = (transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64) if family == "gpt2"
           else transformers.GPTNeoXConfig(**{k: v for k, v in TINY.items() if k != "num_key_value_heads"}))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    deltas = QueryDeltas(model, 1, QTTTConfig(), "cpu", [0])
    x, h = torch.tensor([ids(10)]), torch.randn(1, 5, 32)
    fused = deltas.entries[0][0]
    with torch.no_grad():
        for ts in deltas.tensors:
            ts[0].normal_(std=0.1)
        adapted, hooked = model(x).logits, fused(h)
        deltas.remove()
        change = (hooked - fused(h)).view(1, 5, 3, 32) if family == "gpt2" else \
            (hooked - fused(h)).view(1, 5, 4, 3, 8).transpose(2, 3)  # (.., q|k|v, head, d)
        assert change[:, :, 0].abs().min() > 0 and change[:, :, 1:].abs().max() == 0
        for (mod, rows, _), ts in zip(deltas.entries, deltas.tensors):
            if family == "gpt2":  # Conv1D: weight (in, out)
                mod.weight[:, rows] += ts[0][0].t()
            else:
                mod.weight[rows] += ts[0][0]
        assert (model(x).logits - adapted).abs().max() < 1e-5


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_batched_hf_adaptation_on_fused_projections_equals_one_at_a_time(family):
    """GPT-2 (learned absolute positions) and GPT-NeoX (partial rotary): padded contexts get their own positions."""
    cfg = (transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                   bos_token_id=0, eos_token_id=0) if family == "gpt2"
           else transformers.GPTNeoXConfig(**{k: v for k, v in TINY.items() if k != "num_key_value_heads"}))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    cs, questions = [ids(45, 4), ids(30, 5)], [[1, 2, 3], [7]]
    q = QTTT(model, QTTTConfig(steps=3, span_len=8, lr=1e-2))
    singles = []
    for c, qu in zip(cs, questions):
        with q.adapt([c]) as st:
            singles.append((np.array(st.losses)[:, 0], st.forward([qu])[0, -1]))
    with q.adapt(cs) as st:
        losses, logits = np.array(st.losses), st.forward(questions)[:, -1]
    for i, (l1, lg1) in enumerate(singles):
        assert np.allclose(losses[:, i], l1, atol=1e-5) and (logits[i] - lg1).abs().max() < 1e-4
