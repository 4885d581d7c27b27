import copy
import json

import numpy as np
import pytest
import torch
import transformers as tf
from sklearn.metrics import adjusted_rand_score

from lmlab.methods.lmc import connectivity as C
from lmlab.classifier import MLP
from lmlab.utils import LmlabError

tf.logging.set_verbosity_error()


def _naive_mod_bh(c):
    """Reference: chord barrier of every contiguous sub-segment, written out point by point."""
    best = 0.0
    for i in range(len(c)):
        for j in range(i + 2, len(c)):
            for t in range(i + 1, j):
                chord = c[i] + (c[j] - c[i]) * (t - i) / (j - i)
                best = max(best, c[t] - chord)
    return best


def test_barriers_on_hand_made_curves():
    t = np.linspace(0, 1, 10)
    convex = (t - 0.4) ** 2
    assert C.barrier_endpoint(convex) == 0.0 and C.barrier_max_subsegment(convex) == pytest.approx(0.0, abs=1e-12)
    bump = 0.5 * np.exp(-((t - 0.5) ** 2) / 0.01)
    assert C.barrier_endpoint(bump) == pytest.approx(bump.max() - bump[0], rel=1e-9)
    # monotone-endpoint curve (decreasing overall) with an interior bump: the chord is above it, the
    # sub-segment barrier is not fooled
    mono = np.array([2.0, 1.5, 1.2, 1.1, 1.15, 1.05, 1.0, 0.95, 0.9, 0.85])
    assert C.barrier_endpoint(mono) == 0.0
    # the largest sub-segment bump: chord from index 3 (1.1) to 9 (0.85), evaluated at index 4
    assert C.barrier_max_subsegment(mono) == pytest.approx(1.15 - (1.1 - 0.25 / 6), abs=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.random(10)
        assert C.barrier_max_subsegment(c) == pytest.approx(C.barrier_max_subsegment(c[::-1]), abs=1e-12)
        assert C.barrier_max_subsegment(c) == pytest.approx(_naive_mod_bh(c), abs=1e-12)
        assert C.barrier_max_subsegment(c) >= C.barrier_endpoint(c)


def test_interpolation_endpoints_buffers_and_logit_map():
    torch.manual_seed(0)
    m1, m2 = MLP(3, 8), MLP(3, 8)
    m1.register_buffer("steps", torch.tensor(3))
    m2.register_buffer("steps", torch.tensor(7))
    m1.register_buffer("scale", torch.tensor(1.0))
    m2.register_buffer("scale", torch.tensor(5.0))
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    mid = C.interpolate_state_dicts(sd1, sd2, 0.5, skip=C.buffer_keys(m1))
    assert mid["steps"] == 3 and mid["scale"] == 1.0
    assert torch.allclose(mid["out.weight"], (sd1["out.weight"] + sd2["out.weight"]) / 2)
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    batches = C.prepare_batches([(x, y)], "cpu")
    template = copy.deepcopy(m1)
    curve = C.path_curve(template, sd1, sd2, batches, n_points=10)
    assert template.steps == 3
    assert len(curve["loss"]) == 10
    assert curve["loss"][0] == C.evaluate(m1, batches)["loss"]  # exact, not approximate
    assert curve["loss"][-1] == C.evaluate(m2, batches)["loss"]
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert torch.equal(C.three_to_two(logits, entail=0), torch.tensor([[1.0, 3.0]]))
    with pytest.raises(LmlabError, match="different parameters"):
        C.interpolate_state_dicts(sd1, {"x": torch.zeros(1)}, 0.5)


def test_barrier_matrix_matches_direct_curves_and_caches(tmp_path):
    torch.manual_seed(0)
    models = {f"m{i}": MLP(3, 8).state_dict() for i in range(3)}
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    cache = tmp_path / "curves.json"
    res = C.barrier_matrix(MLP(3, 8), models, [(x[:20], y[:20]), (x[20:], y[20:])], n_points=5, cache=cache)
    D = res["D"]
    assert D.shape == (3, 3) and np.allclose(D, D.T) and np.all(np.diag(D) == 0)
    direct = C.path_curve(MLP(3, 8), models["m0"], models["m2"], C.prepare_batches([(x, y)], "cpu"), 5)
    assert D[0, 2] == pytest.approx(C.barrier_max_subsegment(direct["loss"]), abs=1e-6)
    assert cache.exists()
    # the same models and batches come from the cache (path_curve is not called again)
    again = C.barrier_matrix(MLP(3, 8), models, [(x[:20], y[:20]), (x[20:], y[20:])], n_points=5, cache=cache,
                             workers=2)
    np.testing.assert_allclose(again["D"], D, atol=1e-6)
    assert len(json.loads(cache.read_text())) == 3
    threaded = C.barrier_matrix(MLP(3, 8), models, [(x, y)], n_points=5, workers=2)
    np.testing.assert_allclose(threaded["D"], D, atol=1e-6)
    for name, sd in models.items():  # lazily loaded from files
        torch.save(sd, tmp_path / f"{name}.pt")
    lazy = C.barrier_matrix(MLP(3, 8), {n: tmp_path / f"{n}.pt" for n in models}, [(x, y)], n_points=5)
    np.testing.assert_allclose(lazy["D"], D, atol=1e-6)


def test_clustering_recovers_planted_blocks_and_axis():
    rng = np.random.default_rng(0)
    truth = np.array([0] * 6 + [1] * 4)
    D = np.where(truth[:, None] == truth[None, :], 0.05, 2.0) + 0.05 * rng.random((10, 10))
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0)
    labels = C.cluster_basins(D)
    assert adjusted_rand_score(truth, labels) == 1.0
    diag = np.where(truth == 1, 0.1, 0.8) + 0.01 * rng.random(10)
    assert abs(C.axis_correlation(D, diag)) > 0.9
    w, b = C.within_between(D, truth)
    assert b > 10 * w
    fig = C.plot_barrier_heatmap(D, [str(i) for i in range(10)], order=diag, labels=labels)
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_title()
    ticks = fig.axes[0].get_xticklabels() + fig.axes[0].get_yticklabels()
    assert len(ticks) == 20 and min(t.get_fontsize() for t in ticks) >= 8  # every model named, readable (was 6 pt)
    many = C.plot_barrier_heatmap(np.zeros((100, 100)), [f"m{i}" for i in range(100)])
    assert len(many.axes[0].get_xticklabels()) == 34  # 100 models: every 3rd named, still at 8 pt


def test_connectivity_on_tiny_hf_classifiers(tmp_path):
    cfg = tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    a, b = tf.BertForSequenceClassification(cfg), tf.BertForSequenceClassification(cfg)
    ids = torch.randint(1, 50, (16, 8))
    batches = [({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 2, (16,)))]
    loop = C.path_curve(copy.deepcopy(a), a.state_dict(), b.state_dict(), batches, 5, C.three_to_two, vectorize=False)
    vmapped = C.path_curve(copy.deepcopy(a), a.state_dict(), b.state_dict(), batches, 5, C.three_to_two,
                           vectorize=True)
    np.testing.assert_allclose(vmapped["loss"], loop["loss"], atol=1e-5)
    assert len(set(np.round(loop["loss"], 6))) > 2  # the path really moves
    res = C.barrier_matrix(tf.BertForSequenceClassification(cfg).eval(), {"a": a.state_dict(), "b": b.state_dict()},
                           batches, n_points=4, logit_map=C.three_to_two)
    assert res["D"].shape == (2, 2) and res["D"][0, 1] >= 0
    ends = res["endpoints"]
    prepared = C.prepare_batches(batches, "cpu")
    assert ends["a"]["loss"] == pytest.approx(C.evaluate(a.eval(), prepared, C.three_to_two)["loss"], abs=1e-6)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    from_dirs = C.barrier_matrix(tf.BertForSequenceClassification(cfg).eval(), {"a": tmp_path / "a", "b": tmp_path / "b"},
                                 batches, n_points=4, logit_map=C.three_to_two)
    np.testing.assert_allclose(from_dirs["D"], res["D"], atol=1e-6)


def _count_curves(monkeypatch):
    calls = []
    real = C.path_curve

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(C, "path_curve", counted)
    return calls


def test_cache_key_covers_batches_logit_map_and_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    models = {f"m{i}": MLP(3, 8).state_dict() for i in range(3)}
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    x2, y2 = 5 * torch.randn(40, 3), torch.randint(0, 2, (40,))
    cache = tmp_path / "curves.json"
    calls = _count_curves(monkeypatch)
    C.barrier_matrix(MLP(3, 8), models, [(x, y)], n_points=5, cache=cache)
    assert len(calls) == 3
    C.barrier_matrix(MLP(3, 8), models, [(x, y)], n_points=5, cache=cache)
    assert len(calls) == 3  # a true cache hit
    # other evaluation data under the same names: re-evaluated, and equal to a fresh run
    cached = C.barrier_matrix(MLP(3, 8), models, [(x2, y2)], n_points=5, cache=cache)
    fresh = C.barrier_matrix(MLP(3, 8), models, [(x2, y2)], n_points=5)
    np.testing.assert_allclose(cached["D"], fresh["D"], atol=1e-9)
    assert cached["curves"][("m0", "m1")]["loss"][0] == pytest.approx(cached["endpoints"]["m0"]["loss"], abs=1e-9)
    # the same inputs with other labels are other data too
    n0 = len(calls)
    C.barrier_matrix(MLP(3, 8), models, [(x, 1 - y)], n_points=5, cache=cache)
    assert len(calls) == n0 + 3
    # a logit map changes the curves
    n0 = len(calls)
    C.barrier_matrix(MLP(3, 8), models, [(x, y)], n_points=5, cache=cache, logit_map=lambda t: 2 * t)
    assert len(calls) == n0 + 3
    # new fine-tunes under the old names: re-evaluated
    torch.manual_seed(1)
    models2 = {f"m{i}": MLP(3, 8).state_dict() for i in range(3)}
    n0 = len(calls)
    again = C.barrier_matrix(MLP(3, 8), models2, [(x, y)], n_points=5, cache=cache)
    assert len(calls) == n0 + 3
    np.testing.assert_allclose(again["D"], C.barrier_matrix(MLP(3, 8), models2, [(x, y)], n_points=5)["D"],
                               atol=1e-9)
    # one model changed: only its two paths are new
    models3 = dict(models2, m2={k: v + 0.01 for k, v in models2["m2"].items()})
    n0 = len(calls)
    C.barrier_matrix(MLP(3, 8), models3, [(x, y)], n_points=5, cache=cache)
    assert len(calls) == n0 + 2


def test_fingerprints():
    torch.manual_seed(0)
    sd = MLP(3, 300).state_dict()  # tensors larger than the hashed sample
    assert C.model_fingerprint(sd) == C.model_fingerprint({k: v.clone() for k, v in sd.items()})
    w = sd["fc1.weight"].clone()
    w.view(-1)[1] += 1e-3  # an element the strided sample skips: the sum still sees it
    assert C.model_fingerprint(dict(sd, **{"fc1.weight": w})) != C.model_fingerprint(sd)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    assert C.batches_fingerprint([(x, y)]) != C.batches_fingerprint([(x[:4], y[:4]), (x[4:], y[4:])])
    assert C.batches_fingerprint([({"a": x}, y)]) != C.batches_fingerprint([({"b": x}, y)])
    assert C.callable_name(C.three_to_two) == "lmlab.methods.lmc.connectivity.three_to_two"
    import functools
    assert C.callable_name(functools.partial(C.three_to_two, entail=1)) != C.callable_name(
        functools.partial(C.three_to_two, entail=2))


def test_interrupted_study_keeps_finished_pairs(tmp_path, monkeypatch):
    torch.manual_seed(0)
    models = {f"m{i}": MLP(3, 8).state_dict() for i in range(4)}  # 6 pairs
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    cache = tmp_path / "curves.json"
    real, seen = C.path_curve, []

    def interrupted(*args, **kwargs):
        if len(seen) == 4:
            raise KeyboardInterrupt
        seen.append(json.loads(cache.read_text()) if cache.exists() else {})
        return real(*args, **kwargs)

    monkeypatch.setattr(C, "path_curve", interrupted)
    with pytest.raises(KeyboardInterrupt):
        C.barrier_matrix(MLP(3, 8), models, [(x, y)], n_points=5, cache=cache, flush_every=2)
    assert [len(s) for s in seen] == [0, 0, 2, 2]  # flushed every 2 pairs while running ...
    assert len(json.loads(cache.read_text())) == 4  # ... and the rest on the way out
    monkeypatch.undo()
    calls = _count_curves(monkeypatch)
    res = C.barrier_matrix(MLP(3, 8), models, [(x, y)], n_points=5, cache=cache)
    assert len(calls) == 2  # only the unfinished pairs
    fresh = C.barrier_matrix(MLP(3, 8), models, [(x, y)], n_points=5)
    np.testing.assert_allclose(res["D"], fresh["D"], atol=1e-9)


def test_nan_curves_raise_with_alpha_points():
    with pytest.raises(LmlabError, match=r"α = 0.5\b.*diverged"):
        C.barrier_endpoint([1.0, 1.1, float("nan"), 1.0, 0.9])
    with pytest.raises(LmlabError, match=r"2 of 5 points \(α = 0.25, 1\)"):
        C.barrier_max_subsegment([1.0, float("inf"), 1.2, 1.0, float("nan")])
    torch.manual_seed(0)
    models = {"a": MLP(3, 8).state_dict(), "b": MLP(3, 8).state_dict()}
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    with pytest.raises(LmlabError, match="path a -> b: .*NaN/inf"):
        C.barrier_matrix(MLP(3, 8), models, [(x, y)], n_points=5,
                         logit_map=lambda t: torch.where(t > -1e9, t * float("nan"), t))


class _BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.out = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.fc(x))))


def test_float_buffers_are_interpolated_so_alpha_one_is_not_a_jump():
    """Same weights, different BatchNorm statistics: the path must move smoothly from model 1 to model 2
    (before, interior points used model 1's statistics and α=1 model 2's: a step at the end)."""
    torch.manual_seed(0)
    m1 = _BNNet().eval()
    m2 = copy.deepcopy(m1)
    m2.bn.running_mean += 2.0
    m2.bn.running_var *= 4.0
    m2.bn.num_batches_tracked += 5
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    batches = C.prepare_batches([(x, y)], "cpu")
    curve = C.path_curve(copy.deepcopy(m1), m1.state_dict(), m2.state_dict(), batches, n_points=5)
    for a, loss in zip(curve["alpha"], curve["loss"]):
        ref = copy.deepcopy(m1)
        ref.bn.running_mean.copy_(torch.lerp(m1.bn.running_mean, m2.bn.running_mean, float(a)))
        ref.bn.running_var.copy_(torch.lerp(m1.bn.running_var, m2.bn.running_var, float(a)))
        assert loss == pytest.approx(C.evaluate(ref, batches)["loss"], abs=1e-6)
    assert curve["loss"][-1] == C.evaluate(m2, batches)["loss"]
    back = C.path_curve(copy.deepcopy(m1), m2.state_dict(), m1.state_dict(), batches, n_points=5)
    np.testing.assert_allclose(back["loss"][::-1], curve["loss"], atol=1e-6)  # a symmetric path
    keys = C.fixed_keys(m1, m1.state_dict(), m2.state_dict())
    assert keys == {"bn.num_batches_tracked"}
    mask = torch.full((2, 2), float("-inf"))  # an equal float buffer (e.g. a mask) is copied, not lerped
    assert "m" in C.fixed_keys(_WithMask(mask), {"m": mask}, {"m": mask.clone()})


class _WithMask(torch.nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("m", mask)


def test_language_model_paths_score_counted_tokens():
    """Next-token labels with -100 on ignored positions: the endpoint loss is the GPT's own mean token loss,
    accuracy counts only scored tokens, and the vmapped path equals the loop."""
    from lmlab.model import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=11, n_layers=2, n_heads=2, d_model=16, seq_len=16)
    torch.manual_seed(0)
    a, b = GPT(cfg).eval(), GPT(cfg).eval()
    ids = torch.randint(0, 11, (6, 10))
    tgt = ids.roll(-1, 1)
    tgt[:, -1] = -100
    tgt[:3, 6:] = -100  # padding of three shorter rows
    batches = C.prepare_batches([(ids[:4], tgt[:4]), (ids[4:], tgt[4:])], "cpu")
    ev = C.evaluate(a, batches)
    with torch.no_grad():
        assert ev["loss"] == pytest.approx(float(a(ids, tgt)), abs=1e-5)
        pred = a(ids).argmax(-1)
    counted = tgt != -100
    assert ev["acc"] == pytest.approx(float(((pred == tgt) & counted).sum() / counted.sum()))
    loop = C.path_curve(copy.deepcopy(a), a.state_dict(), b.state_dict(), batches, 5, vectorize=False)
    vmapped = C.path_curve(copy.deepcopy(a), a.state_dict(), b.state_dict(), batches, 5, vectorize=True)
    np.testing.assert_allclose(vmapped["loss"], loop["loss"], atol=1e-5)
    assert loop["loss"][0] == pytest.approx(ev["loss"], abs=1e-6)
    assert loop["loss"][-1] == pytest.approx(C.evaluate(b, batches)["loss"], abs=1e-6)
    with pytest.raises(LmlabError, match="no scored labels"):
        C.evaluate(a, C.prepare_batches([(ids, torch.full_like(tgt, -100))], "cpu"))


@pytest.mark.parametrize("vectorize", [False, True])
def test_path_curve_leaves_the_callers_model_as_it_was(vectorize):
    """The template is used to evaluate interpolated weights; afterwards it holds its own weights and buffers again
    and is in the mode it came in (also when the endpoints are given and only interior points are loaded)."""
    torch.manual_seed(0)
    m1, m2, template = MLP(3, 8), MLP(3, 8), MLP(3, 8)
    template.register_buffer("scale", torch.tensor(2.0))
    m1.register_buffer("scale", torch.tensor(1.0))
    m2.register_buffer("scale", torch.tensor(5.0))
    before = {k: v.clone() for k, v in template.state_dict().items()}
    batches = C.prepare_batches([(torch.randn(16, 3), torch.randint(0, 2, (16,)))], "cpu")
    template.train()
    for ends in (None, (C.evaluate(m1, batches), C.evaluate(m2, batches))):
        curve = C.path_curve(template, m1.state_dict(), m2.state_dict(), batches, 5, endpoints=ends,
                             vectorize=vectorize)
        after = template.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
        assert template.training and len(curve["loss"]) == 5
    assert not any(torch.equal(before[k], m1.state_dict()[k]) for k in ("out.weight", "scale"))  # it did change


def test_barrier_matrix_leaves_its_template_as_it_was():
    torch.manual_seed(0)
    models = {f"m{i}": MLP(3, 8).state_dict() for i in range(3)}
    template = MLP(3, 8)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    C.barrier_matrix(template, models, [(torch.randn(16, 3), torch.randint(0, 2, (16,)))], n_points=3)
    assert all(torch.equal(template.state_dict()[k], before[k]) for k in before)
