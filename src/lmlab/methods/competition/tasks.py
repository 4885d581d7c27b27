"""Task-competition testbeds (spec 02: why larger models learn rare and complex tasks).

(a) Toy: `RegressionMixture` — K regression tasks on orthogonal input/output blocks, Zipf task
    frequencies, complexity as rank or spectral decay of each task map; `TwoLayerNets` — M width-N
    networks f(x) = A·σ(W x) trained in parallel; `train_toy` — SGD on the frequency-weighted loss
    (exact population loss for linear nets, per-task sampled batches otherwise).
(b) LM version: `MarkovBackground` token stream plus `InjectedTask`s (comparison, modular addition)
    defined over randomly chosen token ids, injected at `InjectionSchedule` frequencies by
    `InjectionStream`, with held-out pairs to separate rule learning from memorisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from lmlab.utils import LmlabError


# ============================================================== (a) multi-task regression
def zipf_frequencies(n: int, exponent: float) -> np.ndarray:
    """p_k ∝ (k+1)^-exponent, normalised."""
    p = (np.arange(n) + 1.0) ** -float(exponent)
    return p / p.sum()


def _cycle(values, n: int) -> list:
    values = list(values)
    if not values:
        raise LmlabError("empty complexity list: give at least one rank or decay value")
    return [values[i % len(values)] for i in range(n)]


@dataclass
class RegressionMixture:
    """K tasks; task k reads input block k and writes output block k (both `block_dim` wide):
    y = M_k x with x ~ N(0, I). Complexity = rank r_k (r_k unit singular values) or spectral decay
    s_k (singular values (i+1)^-s_k: slower decay = more directions that matter)."""

    n_tasks: int = 12
    block_dim: int = 8
    zipf: float = 1.2
    complexity: str = "rank"  # "rank" | "spectral"
    ranks: tuple = (1, 2, 4, 8)  # cycled over tasks
    decays: tuple = (2.0, 1.0, 0.5, 0.25)  # cycled over tasks
    freqs: tuple | None = None  # explicit task frequencies (override zipf; may contain 0 for injected tasks)
    seed: int = 0
    maps: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        if self.complexity not in ("rank", "spectral"):
            raise LmlabError(f"complexity must be 'rank' or 'spectral', got {self.complexity!r}")
        if self.n_tasks < 1 or self.block_dim < 1:
            raise LmlabError("n_tasks and block_dim must be positive")
        if self.freqs is not None and (len(self.freqs) != self.n_tasks or min(self.freqs) < 0 or sum(self.freqs) <= 0):
            raise LmlabError(f"freqs must hold {self.n_tasks} non-negative numbers with a positive sum")
        if self.complexity == "rank" and any(not 1 <= r <= self.block_dim for r in _cycle(self.ranks, self.n_tasks)):
            raise LmlabError(f"ranks must lie in 1..block_dim={self.block_dim}, got {self.ranks}")
        g = torch.Generator().manual_seed(self.seed)
        s = torch.as_tensor(self.singular_values, dtype=torch.float32)
        maps = []
        for k in range(self.n_tasks):
            u, _ = torch.linalg.qr(torch.randn(self.block_dim, self.block_dim, generator=g))
            v, _ = torch.linalg.qr(torch.randn(self.block_dim, self.block_dim, generator=g))
            maps.append(u @ torch.diag(s[k]) @ v.T)
        self.maps = torch.stack(maps)  # (K, d, d)

    # ---- structure
    @property
    def dim(self) -> int:
        """Input dimension: one block of features per task."""
        return self.n_tasks * self.block_dim

    @property
    def frequencies(self) -> np.ndarray:
        """Each task's sampling frequency: the normalised `freqs`, else Zipf frequencies."""
        if self.freqs is not None:
            f = np.asarray(self.freqs, dtype=float)
            return f / f.sum()
        return zipf_frequencies(self.n_tasks, self.zipf)

    @property
    def singular_values(self) -> np.ndarray:
        """(K, d) singular values of each task map, descending."""
        d = self.block_dim
        if self.complexity == "rank":
            return np.array([[1.0] * r + [0.0] * (d - r) for r in _cycle(self.ranks, self.n_tasks)])
        return np.array([(np.arange(d) + 1.0) ** -float(s) for s in _cycle(self.decays, self.n_tasks)])

    @property
    def complexities(self) -> np.ndarray:
        """Effective number of directions per task: participation ratio (Σσ²)²/Σσ⁴ (= rank for rank mode)."""
        s2 = self.singular_values ** 2
        return s2.sum(1) ** 2 / (s2 ** 2).sum(1)

    def block(self, k: int) -> slice:
        """The input columns of task `k`."""
        return slice(k * self.block_dim, (k + 1) * self.block_dim)

    def targets(self) -> torch.Tensor:
        """(K, dim_out, d): the full-output map of task k (M_k in output block k, zero elsewhere)."""
        if getattr(self, "_targets", None) is None:
            self._targets = torch.zeros(self.n_tasks, self.dim, self.block_dim)
            for k in range(self.n_tasks):
                self._targets[k, self.block(k)] = self.maps[k]
        return self._targets

    def full_map(self) -> torch.Tensor:
        """The block-diagonal task map T (dim × dim)."""
        if getattr(self, "_full", None) is None:
            self._full = torch.block_diag(*self.maps)
        return self._full

    # ---- closed form (Eckart–Young)
    def optimal_map(self, rank: int) -> torch.Tensor:
        """Best rank-r end-to-end map under the mixture loss Σ_k p_k‖(F − T)_k‖_F²: the rank-r SVD
        truncation of T·P^½ (P = diag of frequencies per input block), mapped back by P^-½."""
        p = torch.as_tensor(self.frequencies, dtype=torch.float64).repeat_interleave(self.block_dim)
        tw = self.full_map().double() * p.sqrt()[None, :]
        u, s, vh = torch.linalg.svd(tw)
        r = max(0, min(rank, int((s > 0).sum())))
        best = (u[:, :r] * s[:r]) @ vh[:r]
        return (best / p.clamp_min(1e-300).sqrt()[None, :]).float()

    def optimal_errors(self, rank: int) -> np.ndarray:
        """Per-task normalised error of the Eckart–Young solution of rank r: the rank-r budget goes to
        the directions with the largest utility p_k·σ²; a task's error is its unkept share of Σσ²."""
        s2 = self.singular_values ** 2
        util = self.frequencies[:, None] * s2
        order = np.argsort(-util, axis=None, kind="stable")
        kept = np.zeros(util.size, dtype=bool)
        kept[order[:rank]] = True
        kept = kept.reshape(util.shape) & (util > 0)
        return (s2 * ~kept).sum(1) / s2.sum(1)

    # ---- data
    def sample(self, batch_size: int, n_models: int = 1, generator: torch.Generator | None = None,
               probs=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """A mixed batch per model: task ids (M, B) drawn from `probs` (default: the mixture
        frequencies) and inputs x (M, B, K·d), N(0, I) on the task's block and zero elsewhere."""
        p = torch.as_tensor(self.frequencies if probs is None else probs, dtype=torch.float64)
        task = torch.multinomial(p.expand(n_models, -1), batch_size, replacement=True, generator=generator)
        xb = torch.randn(n_models, batch_size, 1, self.block_dim, generator=generator)
        x = torch.zeros(n_models, batch_size, self.n_tasks, self.block_dim)
        x.scatter_(2, task[:, :, None, None].expand(-1, -1, 1, self.block_dim), xb)
        return x.view(n_models, batch_size, self.dim).to(device), task.to(device)


class TwoLayerNets(nn.Module):
    """M independent width-N networks f(x) = A·σ(W x) trained in parallel by batched matmuls.

    W: (M, N, D_in), A: (M, D_out, N); σ = identity ("linear"), "relu" or "gelu"."""

    ACTIVATIONS: ClassVar[dict] = {"linear": lambda h: h, "relu": torch.relu, "gelu": nn.functional.gelu}

    def __init__(self, n_models: int, width: int, d_in: int, d_out: int, activation: str = "linear",
                 init_std: float = 1e-2, seed: int = 0):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise LmlabError(f"activation must be one of {sorted(self.ACTIVATIONS)}, got {activation!r}")
        g = torch.Generator().manual_seed(seed)
        self.activation = activation
        self.W = nn.Parameter(torch.randn(n_models, width, d_in, generator=g) * init_std)
        self.A = nn.Parameter(torch.randn(n_models, d_out, width, generator=g) * init_std)

    @property
    def n_models(self) -> int:
        """Number of networks trained side by side."""
        return self.W.shape[0]

    @property
    def width(self) -> int:
        """Hidden width of each network."""
        return self.W.shape[1]

    def act(self, h):
        """The hidden activation applied to `h`."""
        return self.ACTIVATIONS[self.activation](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, B, D_in) -> (M, B, D_out)."""
        return self.act(x @ self.W.transpose(1, 2)) @ self.A.transpose(1, 2)

    def end_to_end(self) -> torch.Tensor:
        """The product A @ W of each linear network (raises for a nonlinear one)."""
        if self.activation != "linear":
            raise LmlabError("end_to_end() is defined for linear networks only")
        return self.A @ self.W


def _batch_errors(nets: TwoLayerNets, mix: RegressionMixture, batch) -> torch.Tensor:
    """(M, B) squared error of each example of a mixed batch (off-block outputs must be zero)."""
    x, _ = batch
    return (nets(x) - x @ mix.full_map().T.to(x)).pow(2).sum(-1)


def task_losses(nets: TwoLayerNets, mix: RegressionMixture, batch=None) -> torch.Tensor:
    """(M, K) mean squared error per task (summed over outputs; off-block outputs must be zero).

    batch=None: the exact population loss ‖A W_k − T_k‖_F² (linear nets, x ~ N(0, I));
    batch=(x, task) from `mix.sample`: the mean over each task's examples (0 where a task is absent)."""
    k, d = mix.n_tasks, mix.block_dim
    if batch is None:
        e = nets.end_to_end().view(nets.n_models, mix.dim, k, d).permute(0, 2, 1, 3)  # (M, K, out, d)
        return (e - mix.targets().to(e)).pow(2).sum((2, 3))
    err = _batch_errors(nets, mix, batch)
    task = batch[1]
    sums = err.new_zeros(task.shape[0], k).scatter_add(1, task, err)
    counts = err.new_zeros(task.shape[0], k).scatter_add(1, task, torch.ones_like(err))
    return sums / counts.clamp_min(1)


def batch_loss(nets: TwoLayerNets, mix: RegressionMixture, batch) -> torch.Tensor:
    """Σ over models of the mean squared error of a mixed batch (the SGD training loss)."""
    return _batch_errors(nets, mix, batch).mean(1).sum()


def normalised_errors(nets: TwoLayerNets, mix: RegressionMixture, batch=None) -> torch.Tensor:
    """(M, K) task loss / ‖M_k‖_F² (1 = nothing learned, 0 = perfect)."""
    norms = mix.maps.pow(2).sum((1, 2)).to(nets.W)
    return task_losses(nets, mix, batch) / norms


def train_toy(nets: TwoLayerNets, mix: RegressionMixture, steps: int, lr: float, batch_size: int = 64,
              probs: Callable[[int], np.ndarray | None] | None = None, seed: int = 0,
              callback: Callable[[int, TwoLayerNets], None] | None = None) -> None:
    """Plain SGD on mixed batches of `batch_size` fresh examples per model. `probs(step)` gives the
    task distribution of that step's batch (None: the mixture frequencies; a one-hot vector: an
    injection batch of a single task). `callback(step, nets)` runs after each update."""
    g = torch.Generator().manual_seed(seed)
    dev = nets.W.device
    params = [nets.W, nets.A]
    for step in range(steps):
        batch = mix.sample(batch_size, nets.n_models, g, None if probs is None else probs(step), dev)
        loss = batch_loss(nets, mix, batch)  # summed over models: independent gradients
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():  # plain SGD by hand (torch.optim's first step costs seconds of imports)
            for p, gr in zip(params, grads):
                p.sub_(lr * gr)
        if callback is not None:
            callback(step, nets)


def toy_task_gradients(nets: TwoLayerNets, mix: RegressionMixture, batch=None) -> torch.Tensor:
    """(M, K, P): the gradient of each task's loss for each model (flattened W then A)."""
    losses = task_losses(nets, mix, batch)
    grads = []
    for k in range(mix.n_tasks):
        gw, ga = torch.autograd.grad(losses[:, k].sum(), [nets.W, nets.A], retain_graph=k < mix.n_tasks - 1)
        grads.append(torch.cat([gw.flatten(1), ga.flatten(1)], 1))
    return torch.stack(grads, 1).detach()


def toy_unit_ablation(nets: TwoLayerNets, mix: RegressionMixture, batch) -> torch.Tensor:
    """(M, N, K) exact increase of each task's loss when hidden unit j is zeroed, on a mixed batch.

    Zeroing unit j removes A[:, j]·h_j from the output: Δerr = −2 h_j A_j·r + h_j²‖A_j‖² (r = residual)."""
    x, task = batch
    with torch.no_grad():
        h = nets.act(x @ nets.W.transpose(1, 2))  # (M, B, N)
        r = h @ nets.A.transpose(1, 2) - x @ mix.full_map().T.to(x)  # (M, B, D_out)
        delta = -2 * h * (r @ nets.A) + h.pow(2) * nets.A.pow(2).sum(1)[:, None, :]  # (M, B, N)
        m, _, n = delta.shape
        idx = task[:, :, None].expand(-1, -1, n)
        sums = delta.new_zeros(m, mix.n_tasks, n).scatter_add(1, idx, delta)
        counts = delta.new_zeros(m, mix.n_tasks, 1).scatter_add(1, task[:, :, None], torch.ones_like(delta[..., :1]))
    return (sums / counts.clamp_min(1)).transpose(1, 2)


# ============================================================== (b) LM version
class InjectionSchedule:
    """`freq` instances per batch (may be < 1): step s gets ⌊(s+1)f⌋ − ⌊s f⌋ instances, so any
    window of S steps starting at 0 holds exactly ⌊S f⌋ (f = 0.1: one instance at steps 9, 19, ...)."""

    def __init__(self, freq: float):
        if not freq > 0:
            raise LmlabError(f"injection frequency must be > 0 instances per batch, got {freq}")
        self.freq = float(freq)
        self._f = Fraction(freq).limit_denominator(1_000_000)

    def count(self, step: int) -> int:
        """Instances injected at `step` (spread evenly at the schedule's rate)."""
        return math.floor((step + 1) * self._f) - math.floor(step * self._f)

    def total(self, steps: int) -> int:
        """Instances injected in the first `steps` steps."""
        return math.floor(steps * self._f)

    def steps_with_injection(self, steps: int) -> list[int]:
        """The steps, among the first `steps`, that inject at least one instance."""
        return [s for s in range(steps) if self.count(s) > 0]


@dataclass
class MarkovBackground:
    """Order-`order` Markov chain over `vocab` tokens; each context has `branching` successors with
    Dirichlet(1) probabilities (a table whose memorisation grows with model capacity)."""

    vocab: int = 64
    order: int = 2
    branching: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.vocab < 2 or self.order < 1 or not 1 <= self.branching <= self.vocab:
            raise LmlabError(f"bad Markov background (vocab={self.vocab}, order={self.order}, "
                             f"branching={self.branching}): need vocab ≥ 2, order ≥ 1, 1 ≤ branching ≤ vocab")
        g = torch.Generator().manual_seed(self.seed)
        n_ctx = self.vocab ** self.order
        self.successors = torch.stack([torch.randperm(self.vocab, generator=g)[: self.branching]
                                       for _ in range(n_ctx)])
        # Dirichlet(1) = normalised Exp(1) draws (torch's Dirichlet takes no generator)
        gam = -torch.log(torch.rand(n_ctx, self.branching, generator=g).clamp_min(1e-12))
        self.probs = gam / gam.sum(1, keepdim=True)

    def _context(self, seq: torch.Tensor, t: int) -> torch.Tensor:
        c = torch.zeros(seq.shape[0], dtype=torch.long)
        for i in range(self.order):
            c = c * self.vocab + seq[:, t - self.order + i]
        return c

    def sample(self, batch: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch, length) token sequences from the Markov chain."""
        seq = torch.empty(batch, length, dtype=torch.long)
        seq[:, : self.order] = torch.randint(self.vocab, (batch, min(self.order, length)), generator=generator)
        if length <= self.order:
            return seq
        cum = self.probs.cumsum(1)
        u = torch.rand(batch, length, generator=generator)
        ctx = self._context(seq, self.order)
        mod = self.vocab ** self.order
        for t in range(self.order, length):
            j = (u[:, t: t + 1] > cum[ctx]).sum(1).clamp_max(self.branching - 1)
            seq[:, t] = self.successors[ctx, j]
            ctx = (ctx * self.vocab + seq[:, t]) % mod
        return seq

    def entropy_rate(self) -> float:
        """Mean next-token entropy (nats) over contexts weighted by their frequency in a long sample:
        the irreducible background loss."""
        seq = self.sample(256, 64 + self.order, torch.Generator().manual_seed(self.seed + 1))
        ents = -(self.probs * self.probs.log()).sum(1)
        ctxs = torch.cat([self._context(seq, t) for t in range(self.order, seq.shape[1])])
        return float(ents[ctxs].mean())


@dataclass
class InjectedTask:
    """A novel task over random token ids: instances are [marker, a, b, eq, answer]."""

    name: str
    marker: int
    eq: int
    pairs: torch.Tensor  # (n, 2) operand token ids
    answers: torch.Tensor  # (n,) answer token ids
    heldout: torch.Tensor  # (n,) bool: never injected during training
    labels: torch.Tensor  # (n,) the task variable to probe (comparison: a wins; modadd: (a+b) mod p)
    n_classes: int

    LENGTH = 5

    def instances(self, idx: torch.Tensor) -> torch.Tensor:
        """The token rows `marker a b eq answer` of the instances `idx`."""
        a, b = self.pairs[idx].T
        n = len(idx)
        return torch.stack([torch.full((n,), self.marker), a, b, torch.full((n,), self.eq), self.answers[idx]], 1)

    @property
    def train_idx(self) -> torch.Tensor:
        """Indices of the instances that may be injected in training."""
        return torch.nonzero(~self.heldout).squeeze(1)

    @property
    def heldout_idx(self) -> torch.Tensor:
        """Indices of the held-out instances."""
        return torch.nonzero(self.heldout).squeeze(1)


def _split(n: int, heldout_frac: float, g: torch.Generator) -> torch.Tensor:
    held = torch.zeros(n, dtype=torch.bool)
    held[torch.randperm(n, generator=g)[: round(heldout_frac * n)]] = True
    return held


def make_comparison(n_items: int, vocab: int, marker: int, eq: int, heldout_frac: float = 0.2,
                    seed: int = 0) -> InjectedTask:
    """`n_items` random token ids with a hidden random order; the answer is the larger of a ≠ b."""
    if not 2 <= n_items <= vocab:
        raise LmlabError(f"comparison needs 2 ≤ n_items ≤ vocab={vocab}, got {n_items}")
    g = torch.Generator().manual_seed(seed)
    toks = torch.randperm(vocab, generator=g)[:n_items]  # toks[i] has rank i
    ia, ib = torch.meshgrid(torch.arange(n_items), torch.arange(n_items), indexing="ij")
    keep = ia != ib
    ia, ib = ia[keep], ib[keep]
    win = ia > ib
    ans = torch.where(win, toks[ia], toks[ib])
    return InjectedTask("comparison", marker, eq, torch.stack([toks[ia], toks[ib]], 1), ans,
                        _split(len(ia), heldout_frac, g), win.long(), 2)


def make_modular_addition(p: int, vocab: int, marker: int, eq: int, heldout_frac: float = 0.2,
                          seed: int = 0) -> InjectedTask:
    """p random token ids stand for 0..p-1; the answer is the token of (a + b) mod p."""
    if not 2 <= p <= vocab:
        raise LmlabError(f"modular addition needs 2 ≤ p ≤ vocab={vocab}, got {p}")
    g = torch.Generator().manual_seed(seed + 1)
    toks = torch.randperm(vocab, generator=g)[:p]
    ia, ib = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    ia, ib = ia.flatten(), ib.flatten()
    s = (ia + ib) % p
    return InjectedTask("modadd", marker, eq, torch.stack([toks[ia], toks[ib]], 1), toks[s],
                        _split(len(ia), heldout_frac, g), s, p)


class InjectionStream:
    """Background batches with task instances written into random non-overlapping slots.

    `batch(step)` returns tokens (B, T+1) (inputs = [:, :-1], targets = [:, 1:]) and the number of
    instances of each task it holds (exactly `schedule.count(step)`)."""

    def __init__(self, background: MarkovBackground, tasks: list[InjectedTask], freqs: list[float],
                 batch_size: int, seq_len: int, seed: int = 0, prefetch: int = 32):
        if len(tasks) != len(freqs):
            raise LmlabError("give one injection frequency per task")
        self.background, self.tasks = background, tasks
        self.schedules = [InjectionSchedule(f) for f in freqs]
        self.batch_size, self.seq_len = batch_size, seq_len
        self.slots_per_seq = (seq_len + 1) // InjectedTask.LENGTH
        need = sum(math.ceil(f) for f in freqs)
        if need > batch_size * self.slots_per_seq:
            raise LmlabError(f"{need} instances per batch do not fit in {batch_size}×{self.slots_per_seq} slots: "
                             "raise batch_size/seq_len or lower the injection frequencies")
        self.g = torch.Generator().manual_seed(seed)
        self.prefetch, self._buffer = prefetch, []

    @property
    def vocab_size(self) -> int:
        """Vocabulary covering the background and every task's tokens."""
        return max(self.background.vocab, *(max(t.marker, t.eq) + 1 for t in self.tasks))

    def _background(self) -> torch.Tensor:
        """Background sequences are drawn `prefetch` batches at a time (the sampler is step-sequential)."""
        if not self._buffer:
            block = self.background.sample(self.batch_size * self.prefetch, self.seq_len + 1, self.g)
            self._buffer = list(block.split(self.batch_size))[::-1]
        return self._buffer.pop()

    def batch(self, step: int) -> tuple[torch.Tensor, list[int]]:
        """The background batch of `step` with its scheduled instances written in, and their counts."""
        seq = self._background().clone()
        counts = [s.count(step) for s in self.schedules]
        total = sum(counts)
        if total:
            slots = torch.randperm(self.batch_size * self.slots_per_seq, generator=self.g)[:total]
            rows, cols = slots // self.slots_per_seq, (slots % self.slots_per_seq) * InjectedTask.LENGTH
            inst = []
            for task, c in zip(self.tasks, counts):
                tr = task.train_idx
                inst.append(task.instances(tr[torch.randint(len(tr), (c,), generator=self.g)]))
            seq[rows[:, None], cols[:, None] + torch.arange(InjectedTask.LENGTH)] = torch.cat(inst)
        return seq, counts

    def eval_batch(self, task: InjectedTask, idx: torch.Tensor, prefix: int = 8, seed: int = 0) -> torch.Tensor:
        """Prompts [background prefix, marker, a, b, eq] (n, prefix+4); the answer follows the last token."""
        bg = self.background.sample(len(idx), prefix, torch.Generator().manual_seed(seed))
        return torch.cat([bg, task.instances(idx)[:, :4]], 1)
