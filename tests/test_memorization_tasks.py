import numpy as np
import pytest
import torch

from lmlab.tasks import memorization as M
from lmlab.utils import LmlabError


def test_circles_spurious_feature_and_shuffled_labels():
    x, y = M.circles(2000, alpha=1.0, seed=0)
    assert x.shape == (2000, 3)
    assert (torch.sign(x[:, 2]) == 2 * y - 1).float().mean() > 0.99
    x0, y0 = M.circles(2000, alpha=0.0, seed=0)
    agree = (torch.sign(x0[:, 2]) == 2 * y0 - 1).float().mean()
    assert abs(agree - 0.5) < 0.05
    _, clean = M.circles(4000, seed=3)
    _, noisy = M.circles(4000, beta=0.5, seed=3)
    assert abs((clean != noisy).float().mean() - 0.25) < 0.03  # flip rate β·(1−1/C)
    with pytest.raises(LmlabError, match="fraction"):
        M.circles(10, alpha=1.5)


def test_sentiment_text_labels_and_shortcut():
    ids, y, vocab = M.sentiment_text(500, alpha=1.0, seed=0)
    assert ids.shape == (500, 12) and int(ids.max()) < vocab
    assert torch.equal(ids[:, 1], 1 + y)  # the shortcut token agrees with the label everywhere
    pos = ((ids >= 3) & (ids < 11)).sum(1)
    neg = ((ids >= 11) & (ids < 19)).sum(1)
    assert torch.equal(y, (pos > neg).long())


def test_hans_like_nli_splits():
    task = M.HansLikeNLI()
    ids, y, texts = task.sample(200, split="diagnostic", seed=0)
    assert ids.shape == (200, task.SEQ_LEN) and bool((y == 1).all())
    for prem, hyp in texts[:20]:  # complete lexical overlap, swapped order
        assert set(hyp.split()) <= set(prem.split()) and hyp != " ".join(prem.split()[:1] + prem.split()[2:])
    _, y_id, t_id = task.sample(400, split="id", seed=1)
    for (prem, hyp), lab in zip(t_id, y_id.tolist()):
        p = prem.split()
        assert (hyp == " ".join([p[0]] + p[2:])) == (lab == 0)
    _, _, t_tr = task.sample(2000, p_swap=0.2, split="train", seed=2)
    swaps = sum(h.split()[1] == p.split()[5] for p, h in t_tr)
    assert abs(swaps / 2000 - 0.2) < 0.03


def test_parent_and_children_share_weights_and_learn():
    task = M.HansLikeNLI()
    parent = M.pretrain_parent(task, steps=150, seed=0)
    x, y, _ = task.sample(2000, p_swap=0.2, seed=1)
    a = M.finetune_child(parent, x, y, seed=1, epochs=6)
    b = M.finetune_child(parent, x, y, seed=1, epochs=6)
    c = M.finetune_child(parent, x, y, seed=2, epochs=2, new_head=False)
    for k in a.state_dict():
        assert torch.equal(a.state_dict()[k], b.state_dict()[k])  # a seed fixes the fine-tune
    assert not torch.equal(a.head.weight, c.head.weight)
    assert torch.equal(parent.fc1.weight, M.pretrain_parent(task, steps=150, seed=0).fc1.weight)
    xi, yi, _ = task.sample(300, split="id", seed=5)
    assert M.accuracy(a, xi, yi) > 0.85


def test_mlp_learns_circles():
    torch.manual_seed(0)
    (x, y), (xv, yv) = M.circles(500, seed=0), M.circles(300, seed=1)
    model = M.MLP(3, 32, 2)
    M.train_classifier(model, x, y, epochs=150, lr=1e-2)
    assert M.accuracy(model, xv, yv) > 0.9
    assert np.isfinite(M.train_classifier(model, x, y, epochs=1, batch_size=100)).all()
