"""Model families with planted memorization, for the information-measure analyses.

- `circles`: concentric circles plus one spurious feature whose sign equals the label for a fraction
  α of training points (heuristic memorization) and/or a fraction β of labels redrawn (example-level).
- `gaussian_classes`: 64-d points around 10 class means with a fraction β of training labels redrawn (example-level
  memorization where a wide MLP can fit every redrawn label).
- `sentiment_text`: token sequences labelled by the majority of positive vs negative lexicon words, with a
  shortcut token at position 1 that agrees with the label for a fraction α (and β shuffled labels).
"""

from __future__ import annotations

import numpy as np
import torch

from lmlab.utils import check_fraction


def shuffle_labels(y: np.ndarray, beta: float, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Redraw a fraction β of labels uniformly over the classes (flip rate β·(1−1/C))."""
    y = y.copy()
    idx = rng.random(len(y)) < beta
    y[idx] = rng.integers(0, n_classes, idx.sum())
    return y


# ============================================================================ circles
def circles(n: int, alpha: float = 0.0, beta: float = 0.0, seed: int = 0, noise: float = 0.05,
            factor: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(X (n, 3) float, y (n,) long): 2-D circles + a spurious feature (±1 matching the label w.p. α)."""
    from sklearn.datasets import make_circles  # heavy: sklearn imported only for the circles family

    check_fraction(alpha=alpha, beta=beta)
    rng = np.random.default_rng(seed)
    xy, y = make_circles(n, noise=noise, factor=factor, random_state=seed)
    sign = np.where(rng.random(n) < alpha, 2 * y - 1, rng.choice([-1, 1], n))
    spur = sign + 0.1 * rng.standard_normal(n)
    y = shuffle_labels(y, beta, 2, rng)
    return torch.tensor(np.c_[xy, spur], dtype=torch.float32), torch.tensor(y, dtype=torch.long)


# ============================================================================ Gaussian classes
def gaussian_classes(n: int, beta: float = 0.0, seed: int = 0, task_seed: int = 0, dim: int = 64,
                     n_classes: int = 10, noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X (n, dim) float, y (n,) long with a fraction β redrawn, the clean labels (n,) long).

    The class means (standard normal, one per class) are fixed by `task_seed`, so a training and a validation set
    of one task share them; each point is its class mean plus N(0, noise²) per coordinate. The clean task is easy
    (the means lie far apart in `dim` dimensions), and in 64-d the points lie far apart too, so a wide MLP can
    fit the redrawn labels of any fraction β (the example-level memorization of shuffled MNIST, spec 06 §4).
    Inputs and clean labels do not depend on β: the same seed gives the same points for every β.
    """
    check_fraction(beta=beta)
    means = np.random.default_rng(task_seed).standard_normal((n_classes, dim))
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, n_classes, n)
    x = means[clean] + noise * rng.standard_normal((n, dim))
    y = shuffle_labels(clean, beta, n_classes, rng)
    return (torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long),
            torch.tensor(clean, dtype=torch.long))


# ============================================================================ text with a shortcut
TEXT_SPECIALS = ("<cls>", "<sc_neg>", "<sc_pos>")


def sentiment_text(n: int, alpha: float = 0.0, beta: float = 0.0, seed: int = 0, length: int = 12,
                   n_lex: int = 8, n_neutral: int = 16) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids (n, length), labels, vocab size). Token 0 is <cls>, position 1 the shortcut token, then
    an odd number of lexicon words (label = positive majority) among neutral filler words."""
    check_fraction(alpha=alpha, beta=beta)
    rng = np.random.default_rng(seed)
    pos0 = len(TEXT_SPECIALS)
    neg0, neu0 = pos0 + n_lex, pos0 + 2 * n_lex
    vocab = neu0 + n_neutral
    ids = rng.integers(neu0, vocab, (n, length))
    ids[:, 0] = 0
    n_sent = rng.choice([1, 3, 5], n)
    y = np.zeros(n, dtype=np.int64)
    for r in range(n):
        k = n_sent[r]
        n_pos = rng.integers(0, k + 1)
        y[r] = int(n_pos > k - n_pos)
        slots = rng.choice(np.arange(2, length), k, replace=False)
        words = np.r_[rng.integers(pos0, neg0, n_pos), rng.integers(neg0, neu0, k - n_pos)]
        ids[r, slots] = words
    agree = rng.random(n) < alpha
    ids[:, 1] = np.where(agree, 1 + y, 1 + rng.integers(0, 2, n))
    y = shuffle_labels(y, beta, 2, rng)
    return torch.tensor(ids), torch.tensor(y), vocab
