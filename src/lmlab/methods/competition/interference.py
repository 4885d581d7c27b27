"""Task competition measurements: neuron allocation, per-task gradients and interference, the
injection signal, and linear probes of task variables per layer.

Model-agnostic: functions take `loss_fns` ({task: fn(model) -> scalar loss}) and work on any
torch module; layer access works on an lmlab GPT (hook points `blocks.{i}.mlp.hook_post`,
`blocks.{i}.hook_resid_post`) and on Hugging Face decoders (`lmlab.hf.decoder_layers` + hooks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lmlab.hf import decoder_layers
from lmlab.hooks import hooks
from lmlab.utils import LmlabError

LossFns = Mapping[str, Callable[[nn.Module], torch.Tensor]]


# ============================================================== per-task metrics over training
class TaskHistory:
    """Per-task metrics over training: `record(step, model)` evaluates every `metric_fns[task](model)`
    (a loss, an accuracy, a log-prob...) without gradients and appends it to `values[task]`."""

    def __init__(self, metric_fns: LossFns):
        self.metric_fns = dict(metric_fns)
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {k: [] for k in self.metric_fns}

    def record(self, step: int, model: nn.Module) -> dict[str, float]:
        """Evaluate every task metric on `model` at `step`, store and return them."""
        with torch.no_grad():
            now = {k: float(fn(model)) for k, fn in self.metric_fns.items()}
        self.steps.append(step)
        for k, v in now.items():
            self.values[k].append(v)
        return now


# ============================================================== neuron allocation
def path_strength(W: torch.Tensor, A: torch.Tensor, in_blocks: Sequence[slice],
                  out_blocks: Sequence[slice]) -> torch.Tensor:
    """(N, K) strength of unit j on task k: ‖W[j, in_k]‖·‖A[out_k, j]‖ for f(x) = A·σ(W x).

    The per-unit measure for linear nets (which have no privileged basis) and a weight-based one for
    ReLU/GELU toys."""
    w = torch.stack([W[:, b].norm(dim=1) for b in in_blocks], 1)
    a = torch.stack([A[b, :].norm(dim=0) for b in out_blocks], 1)
    return (w * a).detach()


def allocation(strength: torch.Tensor, min_frac: float = 0.0) -> dict:
    """Soft allocation of units to tasks from a non-negative (N, K) strength/effect matrix.

    Each unit splits one unit of allocation over tasks in proportion to its strengths; units whose
    total is below `min_frac` × the largest unit total count as unallocated. Returns `per_unit`
    (N, K), `shares` (K,) in units, `fractions` (K,) = shares / N, and `active` (N,) bool."""
    s = strength.clamp_min(0).double()
    tot = s.sum(1)
    active = tot > (min_frac * tot.max() if tot.numel() else 0)
    active &= tot > 0
    per_unit = torch.where(active[:, None], s / tot.clamp_min(1e-300)[:, None], torch.zeros_like(s))
    shares = per_unit.sum(0)
    return {"per_unit": per_unit, "shares": shares, "fractions": shares / max(1, s.shape[0]), "active": active}


# ============================================================== layer access (lmlab GPT or HF)
def _is_lmlab_gpt(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "cfg") and hasattr(model.cfg, "d_model")


def _hf_down_proj(layer: nn.Module) -> nn.Module:
    mlp = getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None)
    for name in ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "w2"):
        if mlp is not None and hasattr(mlp, name):
            return getattr(mlp, name)
    raise LmlabError(f"cannot find the MLP down projection of {type(layer).__name__}: supported are "
                     "Llama/Qwen/Mistral/OLMo (mlp.down_proj), GPT-2 (mlp.c_proj), OPT-style (fc2)")


def n_layers(model: nn.Module) -> int:
    """Number of decoder layers of an lmlab GPT or an HF model."""
    return len(decoder_layers(model))


@contextlib.contextmanager
def neuron_hook(model: nn.Module, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Run `fn(acts) -> acts | None` on the MLP hidden activations ("neurons") of one layer.

    lmlab GPT: hook point `blocks.{layer}.mlp.hook_post`; HF: the input of the MLP down projection."""
    if _is_lmlab_gpt(model):
        with hooks(model, [(f"blocks.{layer}.mlp.hook_post", lambda x, _n: fn(x))]):
            yield
        return
    def pre(_mod, args):
        out = fn(args[0])
        return None if out is None else (out, *args[1:])

    handle = _hf_down_proj(decoder_layers(model)[layer]).register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def residual_hook(model: nn.Module, layer: int, fn: Callable[[torch.Tensor], None]):
    """Call `fn(resid)` with the residual stream after block `layer` (-1: the embeddings, i.e. the
    input of block 0). Read-only."""
    if _is_lmlab_gpt(model):
        name = "blocks.0.hook_resid_pre" if layer < 0 else f"blocks.{layer}.hook_resid_post"
        with hooks(model, [(name, lambda x, _n: fn(x))]):
            yield
        return
    layers = decoder_layers(model)
    if layer < 0:
        handle = layers[0].register_forward_pre_hook(
            lambda _m, args, kwargs: fn(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    else:
        handle = layers[layer].register_forward_hook(
            lambda _m, _a, out: fn(out[0] if isinstance(out, (tuple, list)) else out))
    try:
        yield
    finally:
        handle.remove()


def default_forward(model: nn.Module, idx: torch.Tensor):
    """`model(idx)`: the forward pass probes and hooks run by default."""
    return model(idx)


def layer_features(model: nn.Module, idx: torch.Tensor, position: int | torch.Tensor = -1,
                   layers: Sequence[int] | None = None, forward: Callable = default_forward) -> dict[int, np.ndarray]:
    """{layer: (n, d) residual vectors at `position`} for layers -1 (embeddings), 0..L-1."""
    layers = list(range(-1, n_layers(model))) if layers is None else list(layers)
    store: dict[int, torch.Tensor] = {}
    rows = torch.arange(idx.shape[0], device=idx.device)
    pos = position if torch.is_tensor(position) else torch.full_like(rows, position % idx.shape[1])

    with contextlib.ExitStack() as stack:
        for li in layers:
            stack.enter_context(residual_hook(model, li, lambda x, _li=li: store.__setitem__(
                _li, x[rows, pos].detach().float().cpu())))
        with torch.no_grad():
            forward(model, idx)
    return {li: store[li].numpy() for li in layers}


# ============================================================== unit attribution
def unit_attributions(model: nn.Module, loss_fns: LossFns, layer: int) -> dict[str, torch.Tensor]:
    """{task: (n_units,) first-order ablation effect −Σ a_j·∂L/∂a_j} (one backward per task)."""
    out = {}
    for task, fn in loss_fns.items():
        saved = []

        def keep(a, saved=saved):
            a.retain_grad()
            saved.append(a)

        with neuron_hook(model, layer, keep):
            loss = fn(model)
        model.zero_grad(set_to_none=True)
        loss.backward()
        a = saved[0]
        out[task] = (-(a * a.grad).reshape(-1, a.shape[-1]).sum(0)).detach().float().cpu()
        model.zero_grad(set_to_none=True)
    return out


def effect_matrix(effects: Mapping[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
    """Stack {task: (N,)} effects into (N, K); negative effects (ablation helps) count as 0."""
    names = list(effects)
    return names, torch.stack([effects[n].float().clamp_min(0) for n in names], 1)


# ============================================================== gradients & interference
def task_gradients(model: nn.Module, loss_fns: LossFns, params: Sequence[torch.Tensor] | None = None
                   ) -> dict[str, torch.Tensor]:
    """{task: flattened fp32 gradient of its loss} over `params` (default: all trainable)."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    out = {}
    for task, fn in loss_fns.items():
        grads = torch.autograd.grad(fn(model), params, allow_unused=True)
        out[task] = torch.cat([(g if g is not None else torch.zeros_like(p)).detach().float().flatten()
                               for g, p in zip(grads, params)])
    return out


def interference(grads: Mapping[str, torch.Tensor], freqs: Mapping[str, float], common: Sequence[str],
                 rare: str) -> dict:
    """Interference between the frequency-weighted common-task gradient and a rare task's gradient.

    g_common = Σ_{k∈common} p_k g_k (the expected gradient of a common batch). Returns per-task norms,
    the pairwise cosine matrix (task order of `grads`), ‖g_common‖, cos(g_common, g_rare), the
    projection |g_common·ĝ_rare| (how strongly a common step moves the rare task per unit LR), and
    rare_loss_change = −g_common·g_rare (first-order change of the rare loss per unit LR of a common
    step; > 0 means common steps undo the rare task)."""
    names = list(grads)
    for n in [*common, rare]:
        if n not in grads:
            raise LmlabError(f"no gradient for task {n!r}; have {names}")
    G = torch.stack([grads[n].double() for n in names])
    norms = G.norm(dim=1)
    unit = G / norms.clamp_min(1e-300)[:, None]
    cos = unit @ unit.T
    g_common = sum(float(freqs[n]) * grads[n].double() for n in common)
    g_rare = grads[rare].double()
    gc, gr = float(g_common.norm()), float(g_rare.norm())
    dot = float(g_common @ g_rare)
    return {
        "tasks": names, "norms": {n: float(v) for n, v in zip(names, norms)}, "cosines": cos.cpu().numpy(),
        "common_norm": gc, "rare_norm": gr,
        "cos_common_rare": dot / (gc * gr) if gc > 0 and gr > 0 else 0.0,
        "projection": abs(dot) / gr if gr > 0 else 0.0, "rare_loss_change": -dot,
    }


# ============================================================== injection signal
def injection_signal(values: Sequence[float], injection_steps: Sequence[int]) -> dict:
    """Before/after each injection from a signal series `values[t]` = signal after t updates
    (t = 0..steps); an injection at step s is the (s+1)-th update, so before = values[s],
    after = values[s+1].

    Returns arrays `before`, `after`, `jump` = after − before, `decay` = after_i − before_{i+1} (how
    much of the signal is lost before the next injection), `decay_frac` = mean decay / mean jump
    (≈1: update-and-forget, ≈0: accumulation), `accumulation` = before_last − before_first, and
    `retention` = before_last (the signal after a full interval without the task)."""
    v = np.asarray(values, dtype=float)
    s = np.asarray([i for i in injection_steps if i + 1 < len(v)], dtype=int)
    if len(s) == 0:
        raise LmlabError("no injection falls inside the recorded signal: record values for steps 0..S")
    before, after = v[s], v[s + 1]
    jump = after - before
    decay = after[:-1] - before[1:]
    mean_jump = float(jump.mean())
    return {"before": before, "after": after, "jump": jump, "decay": decay,
            "mean_jump": mean_jump, "mean_decay": float(decay.mean()) if len(decay) else 0.0,
            "decay_frac": float(decay.mean() / mean_jump) if len(decay) and mean_jump > 0 else float("nan"),
            "accumulation": float(before[-1] - before[0]), "retention": float(before[-1])}


# ============================================================== linear probes
def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   C: float = 1.0, max_iter: int = 1000) -> float:
    """Test accuracy of a standardised multinomial logistic-regression probe (sklearn)."""
    # heavy: sklearn is imported only when a probe is fitted
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        return float(np.mean(y_test == y_train[0]))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))


def probe_layers(features: Mapping[int, np.ndarray], labels: np.ndarray, test_mask: np.ndarray,
                 C: float = 1.0) -> dict[int, float]:
    """{layer: probe accuracy on the rows in `test_mask`, trained on the others}."""
    labels, test_mask = np.asarray(labels), np.asarray(test_mask, dtype=bool)
    return {li: probe_accuracy(f[~test_mask], labels[~test_mask], f[test_mask], labels[test_mask], C)
            for li, f in features.items()}
