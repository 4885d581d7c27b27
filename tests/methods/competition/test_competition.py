"""Task-competition testbeds: the regression mixture, its closed form, the toy nets, the LM stream."""

import math

import numpy as np
import pytest
import torch

from lmlab.methods.competition import tasks as tc
from lmlab.utils import LmlabError


def test_mixture_structure():
    mix = tc.RegressionMixture(n_tasks=6, block_dim=4, zipf=1.5, ranks=(1, 3))
    p = mix.frequencies
    assert np.allclose(p / p[0], (np.arange(6) + 1.0) ** -1.5)
    assert p.sum() == pytest.approx(1.0)
    assert mix.complexities.tolist() == pytest.approx([1, 3, 1, 3, 1, 3])
    for k in range(6):
        sv = torch.linalg.svdvals(mix.maps[k])
        assert sv.tolist() == pytest.approx(mix.singular_values[k].tolist(), abs=1e-5)
    spec = tc.RegressionMixture(n_tasks=2, block_dim=3, complexity="spectral", decays=(1.0,))
    assert spec.singular_values[0].tolist() == pytest.approx([1, 1 / 2, 1 / 3])


def test_optimal_errors_match_svd_truncation():
    """The greedy utility ordering (p_k σ²) equals the Eckart–Young truncation of T·P^½."""
    mix = tc.RegressionMixture(n_tasks=5, block_dim=4, complexity="spectral", decays=(0.3, 1.0, 2.0), zipf=1.0)
    for r in (1, 3, 6, 11):
        best = mix.optimal_map(r)
        err = [float((best[mix.block(k), mix.block(k)] - mix.maps[k]).pow(2).sum() / mix.maps[k].pow(2).sum())
               for k in range(5)]
        assert err == pytest.approx(mix.optimal_errors(r).tolist(), abs=1e-4)
        off = best.clone()
        for k in range(5):
            off[mix.block(k), mix.block(k)] = 0
        assert float(off.abs().max()) < 1e-4  # no cross-task leakage in the optimum
        assert int(torch.linalg.matrix_rank(best, atol=1e-4)) == r


def test_bottleneck_linear_net_learns_top_directions():
    """A width-r linear net trained by gradient descent on the mixture loss converges to the rank-r
    Eckart–Young solution: exactly the r most useful (frequency × σ²) directions."""
    mix = tc.RegressionMixture(n_tasks=4, block_dim=3, complexity="spectral", decays=(0.3, 1.0), zipf=2.0, seed=3)
    r = 4
    util = np.sort((mix.frequencies[:, None] * mix.singular_values ** 2).ravel())[::-1]
    assert util[r - 1] > 2 * util[r]  # a clear gap: the optimum is unique
    nets = tc.TwoLayerNets(2, r, mix.dim, mix.dim, "linear", init_std=0.05, seed=0)
    p = torch.as_tensor(mix.frequencies, dtype=torch.float32)
    for _ in range(1000):  # full-batch gradient descent on the exact mixture loss
        gw, ga = torch.autograd.grad((tc.task_losses(nets, mix) * p).sum(), [nets.W, nets.A])
        with torch.no_grad():
            nets.W -= 0.3 * gw
            nets.A -= 0.3 * ga
    target = mix.optimal_map(r)
    for m in range(2):
        got = nets.end_to_end()[m].detach()
        assert float((got - target).norm() / target.norm()) < 1e-2
    errs = tc.normalised_errors(nets, mix).detach().numpy()
    assert np.abs(errs - mix.optimal_errors(r)).max() < 1e-2


def test_sgd_toy_learns_frequent_tasks_first():
    mix = tc.RegressionMixture()  # 12 tasks, ranks 1,2,4,8; tasks 0..4 hold exactly 16 directions
    nets = tc.TwoLayerNets(1, 16, mix.dim, mix.dim, "linear", seed=1)
    tc.train_toy(nets, mix, 1500, 0.2, seed=2)
    err = tc.normalised_errors(nets, mix).detach().numpy()[0]
    assert err[:5].max() < 0.05 and err[5:].min() > 0.9
    assert np.abs(err - mix.optimal_errors(16)).max() < 0.05


def test_batch_losses_match_hand_computation():
    mix = tc.RegressionMixture(n_tasks=2, block_dim=2, ranks=(1, 2), seed=4)
    nets = tc.TwoLayerNets(1, 3, 4, 4, "relu", init_std=0.7, seed=5)
    x, task = mix.sample(6, 1, torch.Generator().manual_seed(0))
    assert ((x[0].view(6, 2, 2).abs().sum(2) > 0).long().argmax(1) == task[0]).all()
    W, A = nets.W[0].detach(), nets.A[0].detach()
    per = torch.zeros(2)
    cnt = torch.zeros(2)
    for i in range(6):
        k = int(task[0, i])
        xi = x[0, i]
        y = torch.zeros(4)
        y[mix.block(k)] = mix.maps[k] @ xi[mix.block(k)]
        per[k] += ((A @ torch.relu(W @ xi)) - y).pow(2).sum()
        cnt[k] += 1
    want = per / cnt.clamp_min(1)
    got = tc.task_losses(nets, mix, (x, task)).detach()[0]
    assert got.tolist() == pytest.approx(want.tolist(), rel=1e-5)
    assert float(tc.batch_loss(nets, mix, (x, task)).detach()) == pytest.approx(float(per.sum() / 6), rel=1e-5)


def test_population_loss_is_the_expected_batch_loss():
    mix = tc.RegressionMixture(n_tasks=3, block_dim=4, ranks=(1, 2, 4), seed=1)
    nets = tc.TwoLayerNets(2, 5, mix.dim, mix.dim, "linear", init_std=0.3, seed=2)
    pop = tc.task_losses(nets, mix).detach()
    mc = tc.task_losses(nets, mix, mix.sample(40000, 2, torch.Generator().manual_seed(3))).detach()
    assert torch.allclose(pop, mc, rtol=0.05)


def test_unit_ablation_matches_zeroing_each_unit():
    mix = tc.RegressionMixture(n_tasks=3, block_dim=2, ranks=(1, 2), seed=0)
    nets = tc.TwoLayerNets(2, 4, mix.dim, mix.dim, "relu", init_std=0.5, seed=1)
    batch = mix.sample(64, 2, torch.Generator().manual_seed(2))
    eff = tc.toy_unit_ablation(nets, mix, batch)
    base = tc.task_losses(nets, mix, batch).detach()
    for j in range(4):
        with torch.no_grad():
            saved = nets.A[:, :, j].clone()
            nets.A[:, :, j] = 0
            want = tc.task_losses(nets, mix, batch) - base
            nets.A[:, :, j] = saved
        assert torch.allclose(eff[:, j, :], want, atol=1e-5)


def test_toy_task_gradients_are_per_model_and_per_task():
    mix = tc.RegressionMixture(n_tasks=2, block_dim=2, ranks=(1, 2), seed=0)
    nets = tc.TwoLayerNets(2, 3, 4, 4, "linear", init_std=0.5, seed=1)
    G = tc.toy_task_gradients(nets, mix)
    assert G.shape == (2, 2, 3 * 4 * 2)
    # analytic gradient of ‖A W_k − T_k‖²: dW_k = 2 Aᵀ R_k (only input block k), dA = 2 R_k W_kᵀ
    W, A = nets.W[1].detach(), nets.A[1].detach()
    R = A @ W[:, 2:4] - mix.targets()[1]
    gw = torch.zeros_like(W)
    gw[:, 2:4] = 2 * A.T @ R
    ga = 2 * R @ W[:, 2:4].T
    assert torch.allclose(G[1, 1], torch.cat([gw.flatten(), ga.flatten()]), atol=1e-5)


@pytest.mark.parametrize("freq", [0.1, 0.25, 1 / 3, 1, 2.5, 4, 1000])
def test_injection_schedule_hits_the_stated_frequency(freq):
    sched = tc.InjectionSchedule(freq)
    for steps in (1, 7, 30, 100, 999):
        assert sum(sched.count(s) for s in range(steps)) == sched.total(steps) == math.floor(steps * freq + 1e-9)
    if freq < 1:
        period = round(1 / freq)
        assert sched.steps_with_injection(3 * period) == [period - 1, 2 * period - 1, 3 * period - 1]
    else:
        assert all(sched.count(s) in (math.floor(freq), math.ceil(freq)) for s in range(50))


def test_injection_stream_counts_tokens_and_holds_out_pairs():
    bg = tc.MarkovBackground(vocab=20, order=1, branching=2, seed=0)
    cmp_task = tc.make_comparison(6, 20, marker=20, eq=22, heldout_frac=0.3, seed=0)
    add_task = tc.make_modular_addition(5, 20, marker=21, eq=22, heldout_frac=0.3, seed=0)
    stream = tc.InjectionStream(bg, [cmp_task, add_task], [2.5, 0.5], batch_size=4, seq_len=24, seed=1)
    assert stream.vocab_size == 23
    seen = {20: set(), 21: set()}
    total = [0, 0]
    for step in range(40):
        seq, counts = stream.batch(step)
        assert seq.shape == (4, 25)
        for i, marker in enumerate((20, 21)):
            assert int((seq == marker).sum()) == counts[i] == stream.schedules[i].count(step)
            total[i] += counts[i]
            for r, c in torch.nonzero(seq == marker).tolist():
                a, b, eq, ans = seq[r, c + 1: c + 5].tolist()
                assert eq == 22
                seen[marker].add((a, b))
                task = cmp_task if marker == 20 else add_task
                j = [(x, y) for x, y in task.pairs.tolist()].index((a, b))
                assert ans == int(task.answers[j])
    assert total == [100, 20]
    for marker, task in ((20, cmp_task), (21, add_task)):
        held = {tuple(p) for p in task.pairs[task.heldout].tolist()}
        assert held and not (seen[marker] & held)


def test_task_answers_follow_the_rules():
    t = tc.make_comparison(5, 30, 30, 31, seed=2)
    rank = {}
    # the winner of every pair is consistent with one total order
    for (a, b), ans, lab in zip(t.pairs.tolist(), t.answers.tolist(), t.labels.tolist()):
        assert ans == (a if lab == 1 else b)
        rank.setdefault(ans, 0)
        rank[ans] += 1
    assert sorted(rank.values()) == [2, 4, 6, 8]  # wins of ranks 1..4 over ordered pairs (the lowest never wins)
    m = tc.make_modular_addition(7, 30, 30, 31, seed=2)
    val = {int(m.pairs[i, 0]): i // 7 for i in range(0, 49, 7)}
    for (a, b), ans, lab in zip(m.pairs.tolist(), m.answers.tolist(), m.labels.tolist()):
        assert lab == (val[a] + val[b]) % 7 and val[ans] == lab


def test_markov_background_follows_its_table():
    bg = tc.MarkovBackground(vocab=8, order=2, branching=2, seed=3)
    seq = bg.sample(16, 40, torch.Generator().manual_seed(0))
    for t in range(2, 40):
        ctx = seq[:, t - 2] * 8 + seq[:, t - 1]
        assert (bg.successors[ctx] == seq[:, t:t + 1]).any(1).all()
    assert 0 < bg.entropy_rate() <= math.log(2) + 1e-6
    assert torch.equal(seq, bg.sample(16, 40, torch.Generator().manual_seed(0)))


def test_bad_inputs_raise_lmlab_errors():
    with pytest.raises(LmlabError):
        tc.RegressionMixture(block_dim=4, ranks=(8,))
    with pytest.raises(LmlabError):
        tc.RegressionMixture(complexity="fractal")
    with pytest.raises(LmlabError):
        tc.InjectionSchedule(0)
    with pytest.raises(LmlabError):
        tc.TwoLayerNets(1, 2, 3, 3, activation="tanh")
    bg = tc.MarkovBackground(vocab=10, order=1, branching=2)
    task = tc.make_comparison(4, 10, 10, 11)
    with pytest.raises(LmlabError):
        tc.InjectionStream(bg, [task], [100], batch_size=2, seq_len=9)
