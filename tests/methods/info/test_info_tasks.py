import numpy as np
import pytest
import torch

from lmlab.classifier import MLP, accuracy, train_classifier
from lmlab.methods.info.tasks import circles, gaussian_classes, sentiment_text
from lmlab.utils import LmlabError


def test_circles_spurious_feature_and_shuffled_labels():
    x, y = circles(2000, alpha=1.0, seed=0)
    assert x.shape == (2000, 3)
    assert (torch.sign(x[:, 2]) == 2 * y - 1).float().mean() > 0.99
    x0, y0 = circles(2000, alpha=0.0, seed=0)
    agree = (torch.sign(x0[:, 2]) == 2 * y0 - 1).float().mean()
    assert abs(agree - 0.5) < 0.05
    _, clean = circles(4000, seed=3)
    _, noisy = circles(4000, beta=0.5, seed=3)
    assert abs((clean != noisy).float().mean() - 0.25) < 0.03  # flip rate β·(1−1/C)
    with pytest.raises(LmlabError, match="fraction"):
        circles(10, alpha=1.5)


def test_gaussian_classes_share_inputs_across_beta_and_redraw_labels():
    x, y, clean = gaussian_classes(4000, beta=0.5, seed=3, task_seed=7)
    x0, y0, clean0 = gaussian_classes(4000, beta=0.0, seed=3, task_seed=7)
    assert x.shape == (4000, 64) and int(y.max()) < 10
    assert torch.equal(x, x0) and torch.equal(clean, clean0) and torch.equal(y0, clean0)  # only labels differ
    assert abs((y != clean).float().mean() - 0.45) < 0.03  # flip rate β·(1−1/C)
    xv, _, _ = gaussian_classes(10, seed=4, task_seed=7)
    xo, _, _ = gaussian_classes(10, seed=4, task_seed=8)
    assert not torch.equal(xv, xo)  # the task seed fixes the class means
    with pytest.raises(LmlabError, match="fraction"):
        gaussian_classes(10, beta=-0.1)


def test_wide_mlp_memorises_shuffled_gaussian_labels_and_learns_clean_ones():
    """The example sweep's premise at tiny size: the 3 x 256 MLP with the paper's L2 fits redrawn labels."""
    torch.manual_seed(0)
    x, y, clean = gaussian_classes(300, beta=0.75, seed=0)
    model = MLP(64, 256, 3, n_classes=10)
    train_classifier(model, x, y, epochs=150, lr=1e-3, batch_size=100, weight_decay=2e-3)
    changed = y != clean
    assert accuracy(model, x[changed], y[changed]) > 0.9
    xv, yv, _ = gaussian_classes(500, seed=1000)
    torch.manual_seed(0)
    clean_model = MLP(64, 256, 3, n_classes=10)
    train_classifier(clean_model, x, clean, epochs=150, lr=1e-3, batch_size=100, weight_decay=2e-3)
    assert accuracy(clean_model, xv, yv) > 0.95


def test_sentiment_text_labels_and_shortcut():
    ids, y, vocab = sentiment_text(500, alpha=1.0, seed=0)
    assert ids.shape == (500, 12) and int(ids.max()) < vocab
    assert torch.equal(ids[:, 1], 1 + y)  # the shortcut token agrees with the label everywhere
    pos = ((ids >= 3) & (ids < 11)).sum(1)
    neg = ((ids >= 11) & (ids < 19)).sum(1)
    assert torch.equal(y, (pos > neg).long())


def test_mlp_learns_circles():
    torch.manual_seed(0)
    (x, y), (xv, yv) = circles(500, seed=0), circles(300, seed=1)
    model = MLP(3, 32, 2)
    train_classifier(model, x, y, epochs=150, lr=1e-2)
    assert accuracy(model, xv, yv) > 0.9
    assert np.isfinite(train_classifier(model, x, y, epochs=1, batch_size=100)).all()
