import itertools
import math

import numpy as np
import torch

from lmlab.methods.qttt import attention_stats as ast
from lmlab.model import GPT, GPTConfig


def test_dilution_bound_holds_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(200):
        T = int(rng.integers(8, 3000))
        m = int(rng.integers(1, T))
        delta = float(rng.uniform(0, 4))
        z = ast.dilution_instance(T, m, delta, rng)
        alpha = float(torch.softmax(z, 0)[0])
        assert alpha <= ast.dilution_bound(m, delta) + 1e-12
    # m = T/4 near distractors: the needle's mass falls as T grows although its logit is the maximum
    means = [
        np.mean([float(torch.softmax(ast.dilution_instance(T, T // 4, 1.0, rng), 0)[0]) for _ in range(20)])
        for T in (64, 256, 1024, 4096)
    ]
    assert all(a > b for a, b in itertools.pairwise(means))


def test_logarithmic_margin_guarantees_mass():
    rng = np.random.default_rng(1)
    for _ in range(100):
        T, eps = int(rng.integers(2, 5000)), float(rng.uniform(0.001, 0.9))
        z = torch.full((T,), -ast.margin_for_mass(T, eps), dtype=torch.float64)
        z[0] = 0.0
        assert float(torch.softmax(z, 0)[0]) >= 1 - eps - 1e-12  # equality at the exact margin


def test_retrieval_gradient_closed_form():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        K = torch.randn(50, 16, generator=g, dtype=torch.float64)
        q = torch.randn(16, generator=g, dtype=torch.float64)
        auto, closed = ast.retrieval_loss_grad(q, K, 7)
        assert torch.allclose(auto, closed, atol=1e-6)


def test_margin_step_and_diffuse_attention_gains_more():
    g = torch.Generator().manual_seed(1)
    K = torch.randn(100, 16, generator=g, dtype=torch.float64)
    q = torch.randn(16, generator=g, dtype=torch.float64)
    dm, pred = ast.margin_step(q, K, 3, 1e-3)
    assert abs(dm - pred) <= 0.05 * pred
    traj = ast.margin_ascent(q, K, 3, 0.3, 20)
    assert all(b > a for a, b in itertools.pairwise(traj))
    rng = np.random.default_rng(2)
    gains = {}
    for T in (64, 1024):
        out = []
        for _ in range(5):
            Kn, qn = ast.near_duplicate_keys(T, 32, T // 4, rng)
            Kn, qn = Kn.double() * 4, qn.double() * 4
            a0 = float(torch.softmax(Kn @ qn / math.sqrt(32), 0)[0])
            out.append(math.log(ast.margin_ascent(qn, Kn, 0, 0.5, 20)[-1]) - math.log(a0))
        gains[T] = np.mean(out)
    assert gains[1024] > gains[64]


def test_margin_from_mass_equals_margin_from_logits():
    z = torch.randn(30, dtype=torch.float64)
    a = torch.softmax(z, 0)[4]
    gamma = z[4] - torch.logsumexp(torch.cat([z[:4], z[5:]]), 0)  # γ = z_j − logsumexp_{l≠j} z_l
    assert abs(float(ast.margin_from_mass(a)) - float(gamma)) < 1e-9


def test_needle_mass_matches_manual_attention():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=30, n_layers=2, n_heads=2, d_model=16, seq_len=64)).eval()
    ids = torch.randint(0, 30, (2, 12))
    names = [f"blocks.{i}.attn.{h}" for i in range(2) for h in ("hook_rot_q", "hook_rot_k")]
    _, acts = m.run_with_cache(ids, names=names)
    _, pats = ast.attention_patterns(m, lambda: m(ids))
    slots = [[2, 5], [0]]
    mass = ast.needle_mass(pats, slots)
    for layer in range(2):
        q, k = acts[f"blocks.{layer}.attn.hook_rot_q"], acts[f"blocks.{layer}.attn.hook_rot_k"]  # post-RoPE
        scores = q[:, :, -1:] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # last row sees every key
        att = torch.softmax(scores, -1)[:, :, 0]  # (B, H, T)
        for b, s in enumerate(slots):
            assert torch.allclose(mass[layer, b], att[b][:, s].sum(-1), atol=1e-5)


def test_check_lemmas_summary():
    r = ast.check_lemmas(n_instances=10, seed=3)
    assert r["lemma22_max_excess"] <= 0 and r["lemma23_min_mass_minus_target"] >= 0
    assert r["prop31_max_abs_err"] < 1e-6 and r["lemma32_max_rel_err"] < 0.05
