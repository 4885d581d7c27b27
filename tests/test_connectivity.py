import copy

import numpy as np
import pytest
import torch
import transformers as tf
from sklearn.metrics import adjusted_rand_score

from lmlab.analysis import connectivity as C
from lmlab.tasks.memorization import MLP
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
    again = C.barrier_matrix(MLP(3, 8), models, [(x, y)], n_points=5, cache=cache, workers=2)
    np.testing.assert_allclose(again["D"], D, atol=1e-6)
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
    assert fig.axes[0].get_xlabel()


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
