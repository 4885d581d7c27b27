"""Score-dilution diagnostics (qTTT paper §2–3; spec 04): attention mass on needle tokens per layer and
head, the retrieval margin γ, and numeric checks of Lemma 2.2, Lemma 2.3, Proposition 3.1 and Lemma 3.2.

Notation: logits z_j = q·k_j/√d, α = softmax(z), needle index j*. Margin γ = z_{j*} − log Σ_{j≠j*} e^{z_j},
so α_{j*} = sigmoid(γ) and γ = log α* − log(1 − α*) can be read from an attention pattern.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lmlab.hooks import hooks


# ---------------------------------------------------------------- patterns from a model
def attention_patterns(
    model: torch.nn.Module,
    run: Callable[[], object],
    layers: Sequence[int] | None = None,
    last_rows: int | None = None,
) -> tuple[object, dict[int, torch.Tensor]]:
    """Run `run()` with `blocks.{i}.attn.hook_pattern` hooked; return (its output, {layer: (B, H, Tq, Tk)}).

    last_rows keeps only the last query rows (saves memory at long context)."""
    n_layers = len(model.blocks)
    layers = range(n_layers) if layers is None else layers
    store: dict[int, torch.Tensor] = {}

    def save(i):
        def fn(x, name):
            store[i] = (x[:, :, -last_rows:] if last_rows else x).detach().float()

        return fn

    with hooks(model, [(f"blocks.{i}.attn.hook_pattern", save(i)) for i in layers]):
        out = run()
    return out, store


def needle_mass(
    patterns: dict[int, torch.Tensor], needle_slots: Sequence[Sequence[int]], row: int = -1
) -> torch.Tensor:
    """Attention mass on each sample's needle key slots at query row `row`: (L, B, H)."""
    out = []
    for layer in sorted(patterns):
        p = patterns[layer][:, :, row]  # (B, H, Tk)
        mass = torch.stack([p[b][:, list(s)].sum(-1) for b, s in enumerate(needle_slots)])
        out.append(mass)
    return torch.stack(out)


def margin_from_mass(alpha: torch.Tensor | float, eps: float = 1e-12):
    """γ = log α* − log(1 − α*) (exact when the needle is one key; for a set of needle keys, the margin of
    the merged needle)."""
    a = torch.as_tensor(alpha, dtype=torch.float64).clamp(eps, 1 - eps)
    return torch.log(a) - torch.log1p(-a)


# ---------------------------------------------------------------- the lemmas
def dilution_bound(m: int, delta: float) -> float:
    """Lemma 2.2: with m distractors whose logits are ≥ z* − Δ, α* ≤ 1 / (1 + m·e^{−Δ})."""
    return 1.0 / (1.0 + m * math.exp(-delta))


def margin_for_mass(T: int, eps: float) -> float:
    """Lemma 2.3: a gap of log((T−1)(1−ε)/ε) to every distractor guarantees α* ≥ 1 − ε."""
    return math.log((T - 1) * (1 - eps) / eps)


def dilution_instance(T: int, m: int, delta: float, rng: np.random.Generator, far_gap: float = 8.0):
    """Logits (T,) with the needle at index 0 the unique maximum, m near distractors in [z*−Δ, z*) and
    T−1−m far ones below z* − Δ − far_gap·U(0,1)."""
    z = np.empty(T)
    z[0] = 0.0
    z[1 : m + 1] = -delta * rng.uniform(1e-6, 1.0, size=m)
    z[m + 1 :] = -delta - far_gap * rng.uniform(1e-6, 1.0, size=T - 1 - m)
    return torch.tensor(z)


def retrieval_loss_grad(q: torch.Tensor, K: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposition 3.1: autograd ∇_q(−log α_j) and the closed form (μ − k_j)/√d with μ = Σ α_l k_l."""
    d = q.shape[-1]
    q = q.detach().clone().requires_grad_(True)
    z = K @ q / math.sqrt(d)
    loss = -torch.log_softmax(z, dim=-1)[j]
    (g,) = torch.autograd.grad(loss, q)
    alpha = torch.softmax(z.detach(), dim=-1)
    closed = (alpha @ K - K[j]) / math.sqrt(d)
    return g, closed


def margin_step(q: torch.Tensor, K: torch.Tensor, j: int, eta: float) -> tuple[float, float]:
    """Lemma 3.2: one step q ← q − η∇ℓ; returns (ΔM, η‖∇‖²) with M = log α_j."""
    d = q.shape[-1]
    g, _ = retrieval_loss_grad(q, K, j)

    def m(qq):
        return float(torch.log_softmax(K @ qq / math.sqrt(d), dim=-1)[j])

    return m(q - eta * g) - m(q), eta * float(g.pow(2).sum())


def margin_ascent(q: torch.Tensor, K: torch.Tensor, j: int, eta: float, steps: int) -> list[float]:
    """α_j after each of `steps` gradient steps on −log α_j (Lemma 3.2 iterated)."""
    d = q.shape[-1]
    out = []
    for _ in range(steps):
        g, _ = retrieval_loss_grad(q, K, j)
        q = q - eta * g
        out.append(float(torch.softmax(K @ q / math.sqrt(d), dim=-1)[j]))
    return out


def near_duplicate_keys(T: int, d: int, near: int, rng: np.random.Generator, shared: float = 0.8):
    """Keys (T, d) and a query for key 0: `near` distractors share a component of weight `shared` with the
    needle (near-duplicates, Lemma 2.2's regime); the rest are independent. Unit-norm rows."""
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    base = torch.randn(d, generator=g)
    K = torch.randn(T, d, generator=g)
    K[0] = math.sqrt(shared) * base + math.sqrt(1 - shared) * K[0]
    K[1 : near + 1] = math.sqrt(shared) * base + math.sqrt(1 - shared) * K[1 : near + 1]
    K = K / K.norm(dim=-1, keepdim=True)
    return K, K[0].clone()


def check_lemmas(n_instances: int = 50, seed: int = 0) -> dict[str, float]:
    """The numeric checks of spec 04 §12 (Q1–Q4) on random instances; every value is a measured quantity.

    lemma22_max_excess: max over instances of α* − bound (≤ 0 when Lemma 2.2 holds);
    lemma22_alpha_by_T: mean α* for m = T/4 at T = 64, 256, 1024 (falls with T);
    lemma23_min_mass_minus_target: min over instances of α* − (1 − ε) at the Lemma 2.3 margin (≥ 0);
    prop31_max_abs_err: max |autograd − closed form| of ∇_q(−log α*);
    lemma32_max_rel_err: max |ΔM − η‖∇‖²| / (η‖∇‖²) for η = 1e-3;
    lemma32_margin_gain_short / _long: mean gain of M = log α* after 20 steps at T = 64 vs T = 1024 with
    near-duplicate keys (Lemma 3.2: larger when attention is more diffuse);
    lemma32_monotone_frac: fraction of those runs where α* rose at every step.
    """
    rng = np.random.default_rng(seed)
    excess, by_t = [], {64: [], 256: [], 1024: []}
    for _ in range(n_instances):
        for T, alphas in by_t.items():
            m, delta = T // 4, float(rng.uniform(0, 3))
            z = dilution_instance(T, m, delta, rng)
            a = float(torch.softmax(z, 0)[0])
            excess.append(a - dilution_bound(m, delta))
            alphas.append(a)
    mass_gap = []
    for _ in range(n_instances):
        T, eps = int(rng.integers(8, 4096)), float(rng.uniform(0.01, 0.5))
        gap = margin_for_mass(T, eps)
        z = torch.tensor(-gap - rng.uniform(0, 2, size=T))  # every distractor at least `gap` below
        z[0] = 0.0
        mass_gap.append(float(torch.softmax(z, 0)[0]) - (1 - eps))
    grad_err, step_err = [], []
    for _ in range(n_instances):
        T, d = int(rng.integers(4, 200)), int(rng.integers(4, 64))
        K = torch.randn(T, d, dtype=torch.float64)
        q = torch.randn(d, dtype=torch.float64)
        g, closed = retrieval_loss_grad(q, K, 0)
        grad_err.append(float((g - closed).abs().max()))
        dm, pred = margin_step(q, K, 0, 1e-3)
        step_err.append(abs(dm - pred) / max(pred, 1e-30))
    gains, monotone = {}, []
    for T in (64, 1024):
        g_t = []
        for _ in range(max(4, n_instances // 5)):
            K, q = near_duplicate_keys(T, 32, T // 4, rng)
            K, q = K.double() * 4, q.double() * 4
            a0 = float(torch.softmax(K @ q / math.sqrt(32), 0)[0])
            traj = [a0] + margin_ascent(q, K, 0, 0.5, 20)
            monotone.append(all(b > a for a, b in itertools.pairwise(traj)))
            g_t.append(math.log(traj[-1]) - math.log(a0))
        gains[T] = float(np.mean(g_t))
    return {
        "lemma22_max_excess": max(excess),
        "lemma22_alpha_by_T": {T: float(np.mean(v)) for T, v in by_t.items()},
        "lemma23_min_mass_minus_target": min(mass_gap),
        "prop31_max_abs_err": max(grad_err),
        "lemma32_max_rel_err": max(step_err),
        "lemma32_margin_gain_short": gains[64],
        "lemma32_margin_gain_long": gains[1024],
        "lemma32_monotone_frac": float(np.mean(monotone)),
    }
