import numpy as np
import pytest
import torch

from lmlab.classifier import MLP, accuracy, train_classifier
from lmlab.methods.info.tasks import circles, sentiment_text
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
