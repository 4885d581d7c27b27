"""The toy measurements of task_competition (toy.py): evaluation, injection bookkeeping and the first-order
interference of the common steps with the rare task."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from lmlab.methods.competition import tasks as tc
from lmlab.methods.competition import toy
from lmlab.methods.competition.experiment import Config

SMALL_TOY = Config(n_tasks=3, block_dim=2, ranks=[1, 2], nets=2, eval_per_task=64, inj_steps=200, cycles=3,
                   toy_batch=16)


def test_a_net_that_outputs_nothing_scores_exactly_one_on_any_batch():
    mix = toy.mixture(SMALL_TOY, 0)
    nets = tc.TwoLayerNets(2, 4, mix.dim, mix.dim, "relu", init_std=0.0)
    batch = toy.balanced_batch(mix, 5, 2, seed=1)  # five examples per task: their norms are far from the mean
    assert toy.errors(nets, mix, batch).detach().numpy() == pytest.approx(np.ones((2, 3)))
    x, task = batch
    assert (task == torch.arange(3).repeat_interleave(5)).all()
    for k in range(3):  # each example lives on its task's block only
        on = x[:, task[0] == k].view(2, 5, 3, 2).abs().sum(3)
        off = [j for j in range(3) if j != k]
        assert (on[:, :, k] > 0).all() and (on[:, :, off] == 0).all()


def test_injection_records_one_before_and_after_per_injection_and_the_last_cycles():
    out = toy.injection(SMALL_TOY, 0, "linear", 20, [4], lambda msg: None)
    cell = out["cells"][0]
    n_inj = len(out["inj_steps"])
    assert out["inj_steps"] == list(range(19, 200, 20)) and n_inj == 10
    assert np.shape(cell["before"]) == np.shape(cell["after"]) == (2, n_inj)
    assert np.shape(cell["U"]) == np.shape(cell["R"]) == np.shape(cell["G"]) == (2, 3)
    gain = np.asarray(cell["after"]) - np.asarray(cell["before"])
    assert np.asarray(cell["G"]) == pytest.approx(gain[:, -3:])
    assert np.asarray(cell["jump"]) == pytest.approx(gain.mean(1))
    # the last interval runs to the end: its realised loss is the last after-signal minus the final signal
    assert np.asarray(cell["R"])[:, -1] == pytest.approx(np.asarray(cell["after"])[:, -1] - np.asarray(cell["final"]),
                                                        abs=1e-6)


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_the_first_order_undoing_matches_the_realised_one_at_a_small_step(activation):
    """U = Σ g_rare(θ_t)·(θ_{t+1} − θ_t) over an interval's common steps is the first-order part of the rise of the
    rare error R over the same steps: at a small learning rate the two agree."""
    cfg = replace(SMALL_TOY, toy_lr=0.02, init_std=0.3, inj_steps=400, cycles=4)
    cell = toy.injection(cfg, 1, activation, 20, [3], lambda msg: None)["cells"][0]
    u, r = np.sum(cell["U"]), np.sum(cell["R"])
    assert abs(r) > 1e-4  # the common steps do move the rare error here
    assert u == pytest.approx(r, rel=0.1)


def test_sweep_numbers_are_per_width_and_per_net():
    cfg = replace(SMALL_TOY, sweep_steps=64)
    out = toy.sweep(cfg, 0, "relu", [2, 8], lambda msg: None)
    assert out["widths"] == [2, 8] and np.shape(out["errors"]) == np.shape(out["alloc"]) == (2, 2, 3)
    assert np.shape(out["loss_at"]) == (2, len(out["checkpoints"]), 2)
    assert np.asarray(out["alloc"]).sum(2).max() <= 1 + 1e-9
