"""Polynomial filters, CPM-3 and relation composition checked against naive definitions."""

import itertools

import pytest
import torch

from lmlab.methods.iha.tasks import CPM3Task, cpm3_counts, cyclic_workspace
from lmlab.methods.iha.tasks import PolynomialFilterTask, filter_bank, nmse
from lmlab.methods.iha.tasks import PAD, RelationCompositionTask, compose


def test_filter_bank_matches_matrix_powers():
    task = PolynomialFilterTask(n_nodes=6, n_features=3, k=4, seed=2)
    assert torch.linalg.matrix_norm(task.a, ord=2) == pytest.approx(1.0, abs=1e-5)
    x = torch.randn(5, 6, 3)
    got = filter_bank(task.a, x, 4)
    for i in range(4):
        want = torch.linalg.matrix_power(task.a, i) @ x
        assert torch.allclose(got[..., 3 * i:3 * (i + 1)], want, atol=1e-5)


def test_polynomial_targets_are_standardised_blocks():
    task = PolynomialFilterTask(seed=0)
    x, y = task.sample(20000, torch.Generator().manual_seed(1))
    blocks = y.view(20000, 8, 4, 2)
    assert torch.allclose(blocks.std(dim=(0, 1, 3)), torch.ones(4), atol=0.05)
    scaled = filter_bank(task.a, x, 4).view(20000, 8, 4, 2) / task.block_std[:, None]
    assert torch.allclose(blocks, scaled)
    assert nmse(y, y) == 0 and nmse(torch.zeros_like(y), y) == pytest.approx(1.0, abs=0.02)


def test_cpm3_counts_match_brute_force():
    torch.manual_seed(0)
    x = torch.randint(0, 10, (4, 5))
    m, g = 3, 7
    got = cpm3_counts(x, m, g)
    for b, i in itertools.product(range(4), range(5)):
        want = sum((x[b, i] + g * x[b, j1] + x[b, j2]) % m == 0 for j1 in range(5) for j2 in range(5))
        assert got[b, i] == want


def test_cyclic_workspace_is_the_papers_worked_example():
    ws = cyclic_workspace(torch.tensor([[1, 2, 3, 4]]))[0]
    assert ws.tolist() == [[1, 2, 3, 4], [2, 3, 4, 1], [3, 4, 1, 2], [4, 1, 2, 3]]
    task = CPM3Task()
    x = task.sample(64, torch.Generator().manual_seed(0))
    assert task.workspace_row_accuracy(task.standardise(cyclic_workspace(x)), x) == 1.0
    noisy = task.standardise(cyclic_workspace(x)) + 0.3 / task.std  # off by 0.3 symbols: still rounds right
    assert task.workspace_row_accuracy(noisy, x) == 1.0
    assert task.workspace_row_accuracy(task.standardise(cyclic_workspace(x)) + 1 / task.std, x) < 0.5
    with pytest.raises(ValueError, match="G > 2M"):
        CPM3Task(modulus=3, g=6)


def test_relation_composition_matches_brute_force():
    torch.manual_seed(0)
    r = torch.rand(6, 6) < 0.3
    rr = compose(r, 2)
    rrr = compose(r, 3)
    for i, j in itertools.product(range(6), range(6)):
        assert bool(rr[i, j]) == any(r[i, k] and r[k, j] for k in range(6))
        assert bool(rrr[i, j]) == any(r[i, k] and r[k, l] and r[l, j] for k in range(6) for l in range(6))


@pytest.mark.parametrize("order", [2, 3])
def test_relation_batches_are_right_padded_and_roughly_balanced(order):
    task = RelationCompositionTask(order)
    bt = task.sample(2000, torch.Generator().manual_seed(order))
    lo, hi = task.m_range
    assert bt.sizes.min() >= lo and bt.sizes.max() <= hi
    assert torch.equal(bt.valid.sum(1), bt.sizes ** 2)
    assert (bt.tokens[~bt.valid] == PAD).all() and (bt.labels[~bt.valid] == 0).all()
    i = int(bt.sizes.argmin())
    m = int(bt.sizes[i])
    r = bt.tokens[i, : m * m].view(m, m).bool()
    assert torch.equal(bt.labels[i, : m * m], compose(r, order).flatten().float())
    assert 0.35 < float(bt.labels[bt.valid].mean()) < 0.65  # the paper chose p to balance labels
    with pytest.raises(ValueError):
        RelationCompositionTask(4)
