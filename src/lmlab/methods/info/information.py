"""Information measures of neuron activations as memorization signals (Bansal, Pruthi & Belinkov, 2022).

Activations of S unlabeled in-distribution examples -> per-neuron binned entropy (global bins, nats) and
pairwise KSG mutual information (k=3, Chebyshev joint space). Heuristic memorization (a shortcut) shows low
entropy and high MI; example-level memorization (label noise) the reverse, so model selection takes an
explicit `memorization` direction.

Activation sources (`collect_activations`): lmlab GPT / `lmlab.hf.HFModel` hook names
(`blocks.{i}.hook_resid_post`, `blocks.{i}.mlp.hook_post`), integer layers of a HF encoder/classifier
(`output_hidden_states`, 0 = first block), or submodule names of any nn.Module (forward hook on its output,
e.g. the hidden Linear layers of an MLP = pre-ReLU activations).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma
from scipy.stats import kendalltau

from lmlab.hf import load_model, load_tokenizer
from lmlab.hooks import hook_points, hooks
from lmlab.lengths import check_length
from lmlab.methods.info import MEMORIZATION  # noqa: F401  (re-exported)
from lmlab.progress import track
from lmlab.utils import LmlabError

REDUCTIONS = ("cls", "mean", "flatten")


# ============================================================================ activations
@dataclass
class Activations:
    """(S, N) activation matrix with the column range of every layer."""

    values: np.ndarray
    layers: dict[str, slice]

    def layer(self, name: str) -> np.ndarray:
        """The (S, n) columns of layer `name`."""
        return self.values[:, self.layers[name]]

    def first_neurons(self, per_layer: int) -> np.ndarray:
        """The first `per_layer` neurons of every layer (the paper's MI selection: 64 per layer)."""
        return np.concatenate(
            [self.values[:, s.start : min(s.start + per_layer, s.stop)] for s in self.layers.values()], axis=1
        )


def _reduce(act: torch.Tensor, reduce: str, mask: torch.Tensor | None) -> torch.Tensor:
    if act.dim() == 2:
        return act
    if reduce == "cls":
        return act[:, 0]
    if reduce == "mean":
        if mask is None:
            return act.mean(1)
        m = mask.to(act.dtype).unsqueeze(-1)
        return (act * m).sum(1) / m.sum(1).clamp(min=1)
    return act.reshape(act.shape[0], -1)


def _split_batch(batch):
    """-> (positional args, keyword args, attention mask) for one forward call."""
    if isinstance(batch, dict):
        return (), dict(batch), batch.get("attention_mask")
    if isinstance(batch, (tuple, list)):  # (inputs, labels, ...): only the inputs go in
        return _split_batch(batch[0])
    return (batch,), {}, None


def _move(x, dev):
    if isinstance(x, torch.Tensor):
        return x.to(dev)
    if isinstance(x, dict):
        return {k: _move(v, dev) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_move(v, dev) for v in x)
    return x


@torch.no_grad()
def collect_activations(
    model: torch.nn.Module,
    batches: Iterable,
    layers: Sequence[str | int],
    reduce: str = "cls",
    max_examples: int = 2500,
) -> Activations:
    """Activations of `layers` for up to `max_examples` examples, reduced to one vector per example.

    batches: tensors of token ids, dicts of HF inputs (`attention_mask` is used by reduce="mean") or
    tuples whose first item is one of those. reduce: "cls" (position 0), "mean" (masked mean over
    positions) or "flatten"; 2-D activations (MLPs) are kept as they are.
    """
    if reduce not in REDUCTIONS:
        raise LmlabError(f"unknown reduction {reduce!r}; choose from {', '.join(REDUCTIONS)}")
    if not layers:
        raise LmlabError("no layers chosen: pass hook names, HF hidden-state indices or module names")
    points, modules = hook_points(model), dict(model.named_modules())
    int_layers = [x for x in layers if isinstance(x, int)]
    named = [x for x in layers if not isinstance(x, int)]
    for n in named:
        if n not in points and n not in modules:
            raise LmlabError(f"{n!r} is neither a hook point nor a submodule of {type(model).__name__}; "
                             f"e.g. {list(points)[:3] or list(modules)[1:4]}")
    dev = next(model.parameters()).device
    store: dict[str, list[torch.Tensor]] = {str(x): [] for x in layers}
    mask_box: list = [None]

    def save(act, name):
        store[name].append(_reduce(act[0] if isinstance(act, tuple) else act, reduce, mask_box[0]).float().cpu())

    handles = [modules[n].register_forward_hook(lambda m, i, o, _n=n: save(o, _n))
               for n in named if n not in points]
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with hooks(model, [(n, save) for n in named if n in points]):
            for batch in batches:
                args, kwargs, mask_box[0] = _move(_split_batch(batch), dev)
                if int_layers:
                    kwargs["output_hidden_states"] = True
                out = model(*args, **kwargs)
                if int_layers:
                    hs = out.hidden_states[1:]
                    for i in int_layers:
                        if not -len(hs) <= i < len(hs):
                            raise LmlabError(f"layer {i} out of range: the model has {len(hs)} layers")
                        save(hs[i], str(i))
                seen += len(next(iter(store.values()))[-1])
                if seen >= max_examples:
                    break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise LmlabError("no examples: the batches iterable was empty")
    cols, slices, start = [], {}, 0
    for name, chunks in store.items():
        a = torch.cat(chunks)[:max_examples].numpy().astype(np.float64)
        cols.append(a)
        slices[name] = slice(start, start + a.shape[1])
        start += a.shape[1]
    return Activations(np.concatenate(cols, axis=1), slices)


def hf_activations(
    model_or_path,
    texts: Sequence[str],
    tokenizer=None,
    layers: Sequence[int] | None = None,
    reduce: str = "cls",
    max_examples: int = 2500,
    batch_size: int = 32,
    max_length: int = 128,
    kind: str = "encoder",
    progress: str | None = None,
) -> Activations:
    """Activations of a local HF model (folder or loaded model) on unlabeled texts; every layer's
    [CLS]/position-0 vector by default (the paper's transformer setting). An encoder-decoder model (T5) is read
    through its encoder. progress: the label of a progress bar over the batches (None: none)."""
    if isinstance(model_or_path, (str, bytes)) or hasattr(model_or_path, "is_dir"):
        tokenizer = tokenizer or load_tokenizer(model_or_path)
        model = load_model(model_or_path, kind=kind)
    else:
        model = model_or_path
        if tokenizer is None:
            raise LmlabError("pass the tokenizer with a loaded model (or give the model folder instead)")
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()
    if layers is None:
        layers = list(range(model.config.num_hidden_layers))
    texts = list(texts)[:max_examples]
    dev = next(model.parameters()).device

    def batches():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(texts[s : s + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            check_length(model, enc["input_ids"].shape[1], "a text (at most --max-length tokens)")
            yield {k: v.to(dev) for k, v in enc.items()}

    n_batches = -(-len(texts) // batch_size)
    return collect_activations(model, track(batches(), progress or "", total=n_batches, unit="batch",
                                            enabled=progress is not None), layers, reduce, max_examples)


def lmlab_activations(model, texts: Sequence[str], tokenizer, layers: Sequence[int] | None = None,
                      reduce: str = "mean", max_examples: int = 2500, batch_size: int = 32, max_length: int = 128,
                      progress: str | None = None) -> Activations:
    """Activations of an lmlab GPT (an lmlab run, as `lmlab.loading.load_policy` loads it) read through its
    `blocks.{i}.hook_resid_post` hook points; each text is encoded as in training (BOS first). Texts of one token
    length share a batch, so no padding enters a "mean" and no position shifts."""
    if reduce == "cls":
        raise LmlabError("--reduce cls reads position 0, which is <bos> in every text of an lmlab run (one constant "
                         "vector, zero entropy): use --reduce mean")
    n_layers = len(model.blocks)
    layers = list(range(n_layers)) if layers is None else list(layers)
    bad = [i for i in layers if not -n_layers <= i < n_layers]
    if bad:
        raise LmlabError(f"layer(s) {bad} out of range: the model has {n_layers} layers")
    keep = min(max_length, model.cfg.seq_len)
    seqs = sorted((tokenizer.encode(t, bos=True)[:keep] for t in list(texts)[:max_examples]), key=len)
    groups = [list(g) for _, g in itertools.groupby(seqs, key=len)]
    chunks = [torch.tensor(g[s:s + batch_size]) for g in groups for s in range(0, len(g), batch_size)]
    acts = collect_activations(model, track(chunks, progress or "", total=len(chunks), unit="batch",
                                            enabled=progress is not None),
                               [f"blocks.{i % n_layers}.hook_resid_post" for i in layers], reduce, max_examples)
    acts.layers = {str(i): sl for i, sl in zip(layers, acts.layers.values())}
    return acts


# ============================================================================ entropy
def _check_finite(a: np.ndarray, what: str) -> None:
    """Raise a clear error naming the non-finite columns (NaN would otherwise give silent zeros)."""
    bad = ~np.isfinite(a)
    if bad.any():
        cols = np.flatnonzero(bad.any(0))
        shown = ", ".join(map(str, cols[:10])) + (", ..." if cols.size > 10 else "")
        kinds = "/".join(k for k, m in (("NaN", np.isnan(a).any()), ("inf", np.isinf(a).any())) if m)
        raise LmlabError(
            f"{what}: activations contain {kinds} in {cols.size} of {a.shape[1]} neuron columns [{shown}] "
            f"({int(bad.sum())} values): the model diverged or fp16/bf16 overflowed; collect activations "
            "in float32 from a model with a finite loss")


def neuron_entropy(acts: np.ndarray, n_bins: int = 100, global_bins: bool = True) -> np.ndarray:
    """Per-column Shannon entropy (nats) of activations binned into `n_bins` equal-width bins.

    global_bins=True (the paper's default) uses one set of edges for all neurons pooled together, so a
    neuron with a small spread falls into few bins and gets a low entropy.
    """
    a = np.asarray(acts, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise LmlabError(f"activations must be (examples, neurons) with examples > 0, got shape {a.shape}")
    _check_finite(a, "neuron_entropy")
    if global_bins:
        lo, hi = np.full(a.shape[1], a.min()), np.full(a.shape[1], a.max())
    else:
        lo, hi = a.min(0), a.max(0)
    width = np.where(hi > lo, hi - lo, 1.0)
    # bin index like np.histogram: [lo, hi] split in n_bins, the right edge belongs to the last bin
    idx = np.clip(((a - lo) / width * n_bins).astype(np.int64), 0, n_bins - 1)
    counts = np.zeros((a.shape[1], n_bins))
    np.add.at(counts, (np.broadcast_to(np.arange(a.shape[1]), a.shape), idx), 1)
    p = counts / a.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(1)


# ============================================================================ mutual information
def _prepare(acts: np.ndarray, jitter: float, seed: int) -> np.ndarray:
    """Standardise columns and add tiny noise to break ties (ReLU zeros), as scikit-learn does."""
    a = np.asarray(acts, dtype=np.float64).copy()
    std = a.std(0, ddof=1)
    a /= np.where(std > 0, std, 1.0)
    rng = np.random.default_rng(seed)
    a += jitter * np.maximum(1.0, np.abs(a).mean(0)) * rng.standard_normal(a.shape)
    return a


def _count_within(s: np.ndarray, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """#{j != i : |s_j - x_i| <= r_i} for sorted s, by binary search; x ± r can round across the
    boundary point by one ulp, so the edges are re-checked with exact distances."""
    n = len(s)
    hi = np.searchsorted(s, x + r, "right")
    hi -= s[np.maximum(hi - 1, 0)] - x > r
    hi += (hi < n) & (s[np.minimum(hi, n - 1)] - x <= r)
    lo = np.searchsorted(s, x - r, "left")
    lo += x - s[np.minimum(lo, n - 1)] > r
    lo -= (lo > 0) & (x - s[np.maximum(lo - 1, 0)] <= r)
    return hi - lo - 1


def _count_within_torch(s: torch.Tensor, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Batched (P, S) version of `_count_within`."""
    n = s.shape[1]
    at = lambda idx: s.gather(1, idx.clamp(0, n - 1))
    hi = torch.searchsorted(s, x + r, right=True)
    hi = hi - (at(hi - 1) - x > r).long()
    hi = hi + ((hi < n) & (at(hi) - x <= r)).long()
    lo = torch.searchsorted(s, x - r)
    lo = lo + (x - at(lo) > r).long()
    lo = lo - ((lo > 0) & (x - at(lo - 1) <= r)).long()
    return hi - lo - 1


def _ksg_pair(x: np.ndarray, y: np.ndarray, sx: np.ndarray, sy: np.ndarray, k: int) -> float:
    n = len(x)
    xy = np.stack([x, y], 1)
    eps = cKDTree(xy).query(xy, k=k + 1, p=np.inf)[0][:, -1]
    eps = np.nextafter(eps, 0)  # "strictly inside" the k-th neighbour radius
    nx, ny = _count_within(sx, x, eps), _count_within(sy, y, eps)
    return float(digamma(n) + digamma(k) - digamma(nx + 1).mean() - digamma(ny + 1).mean())


def _ksg_pairs_torch(a: torch.Tensor, pairs: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """KSG for many pairs at once with dense (P, S, S) Chebyshev distances (GPU path)."""
    out = []
    n = a.shape[0]
    s_sorted = a.T.sort(dim=1).values  # (N, S)
    for c in range(0, len(pairs), chunk):
        p = torch.as_tensor(pairs[c : c + chunk], device=a.device)
        x, y = a[:, p[:, 0]].T.contiguous(), a[:, p[:, 1]].T.contiguous()  # (P, S)
        d = torch.maximum((x[:, :, None] - x[:, None, :]).abs(), (y[:, :, None] - y[:, None, :]).abs())
        eps = torch.nextafter(d.kthvalue(k + 1, dim=-1).values, torch.zeros((), device=a.device, dtype=a.dtype))
        sx, sy = s_sorted[p[:, 0]], s_sorted[p[:, 1]]
        nx, ny = _count_within_torch(sx, x, eps), _count_within_torch(sy, y, eps)
        mi = (torch.special.digamma(torch.tensor(float(n), dtype=a.dtype)) + torch.special.digamma(
            torch.tensor(float(k), dtype=a.dtype))).to(a.device) - torch.special.digamma(
            nx.to(a.dtype) + 1).mean(1) - torch.special.digamma(ny.to(a.dtype) + 1).mean(1)
        out.append(mi.cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def pairwise_mi_ksg(
    acts: np.ndarray,
    k: int = 3,
    jitter: float = 1e-10,
    max_pairs: int | None = None,
    clip_negative: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    chunk: int = 16,
) -> np.ndarray:
    """(N, N) symmetric matrix of KSG-1 mutual information (nats) between activation columns.

    I = ψ(S) + ψ(k) − ⟨ψ(n_x+1)⟩ − ⟨ψ(n_y+1)⟩ with max-norm k-NN radii, columns standardised and
    jittered (tie-breaking) as in scikit-learn. The diagonal is computed too (the paper's Algorithm 1).
    CPU: one cKDTree query per pair plus sorted-marginal counts (384 neurons x 2,500 examples = 74k
    pairs, a few minutes); device="cuda": batched dense distances. max_pairs: estimate from a random
    subset of the N(N+1)/2 pairs (others are NaN; `summarize` ignores NaN) for quick runs.
    """
    raw = np.asarray(acts, dtype=np.float64)
    if raw.ndim != 2:
        raise LmlabError(f"activations must be (examples, neurons), got shape {raw.shape}")
    _check_finite(raw, "pairwise_mi_ksg")
    a = _prepare(raw, jitter, seed)
    n_ex, n = a.shape
    if n_ex <= k:
        raise LmlabError(f"KSG with k={k} needs more than {k} examples, got {n_ex}")
    iu = np.stack(np.triu_indices(n), 1)
    if max_pairs is not None and max_pairs < len(iu):
        iu = iu[np.sort(np.random.default_rng(seed).choice(len(iu), max_pairs, replace=False))]
    if device is not None and torch.device(device).type != "cpu":
        vals = _ksg_pairs_torch(torch.as_tensor(a, device=device), iu, k, chunk)
    else:
        s_sorted = np.sort(a, axis=0)
        vals = np.array([_ksg_pair(a[:, i], a[:, j], s_sorted[:, i], s_sorted[:, j], k) for i, j in iu])
    if clip_negative:
        vals = np.maximum(vals, 0.0)
    mi = np.full((n, n), np.nan)
    mi[iu[:, 0], iu[:, 1]] = vals
    mi[iu[:, 1], iu[:, 0]] = vals
    return mi


# ============================================================================ summaries and plots
def summarize(entropy: np.ndarray, mi: np.ndarray | None = None) -> dict[str, float]:
    """Mean and median per-neuron entropy, and the mean MI (all pairs and off-diagonal) when `mi` is given."""
    out = {"mean_entropy": float(np.mean(entropy)), "median_entropy": float(np.median(entropy))}
    if mi is not None:
        off = mi[~np.eye(len(mi), dtype=bool)]
        out["mean_mi"] = float(np.nanmean(mi))
        out["mean_mi_offdiag"] = float(np.nanmean(off))
    return out


def mi_density(mi_values: np.ndarray, grid: np.ndarray, n_components: int = 3, seed: int = 0) -> np.ndarray:
    """Gaussian-mixture density of MI values on `grid` (the paper's MI plot)."""
    from sklearn.mixture import GaussianMixture  # heavy: imported only for the MI density

    v = np.asarray(mi_values, dtype=np.float64)
    v = v[np.isfinite(v)].reshape(-1, 1)
    gm = GaussianMixture(min(n_components, len(np.unique(v))), random_state=seed).fit(v)
    return np.exp(gm.score_samples(grid.reshape(-1, 1)))


def plot_entropy_boxes(entropies: dict[str, np.ndarray], title: str = "Per-neuron entropy"):
    """A box plot of each model's per-neuron entropies (one box per model)."""
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(entropies)), 3.5))
    ax.boxplot(list(entropies.values()), notch=True, showfliers=False)
    ax.set_xticks(range(1, len(entropies) + 1), list(entropies), rotation=30, ha="right")
    ax.set_xlabel("model")
    ax.set_ylabel("entropy (nats, global bins)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_mi_density(mis: dict[str, np.ndarray], title: str = "Pairwise MI density"):
    """GMM densities of every model's MI values, normalised by the largest MI over all models."""
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    top = max(np.nanmax(m) for m in mis.values())
    grid = np.linspace(0, 1, 200)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, m in mis.items():
        ax.plot(grid, mi_density(m.ravel() / top, grid), label=name)
    ax.set_xlabel("MI / max MI")
    ax.set_ylabel("density (GMM fit)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ============================================================================ model selection
def rank_models(summaries: dict[str, dict[str, float]], measure: str, memorization: str) -> list[str]:
    """Candidate names, best (least memorizing) first.

    memorization="heuristic": shortcuts lower entropy and raise MI, so high entropy / low MI is better.
    memorization="example": label-noise fitting raises entropy and lowers MI, so the reverse.
    """
    if memorization not in MEMORIZATION:
        raise LmlabError(f"memorization must be one of {MEMORIZATION}, got {memorization!r}")
    key = {"entropy": "mean_entropy", "mi": "mean_mi"}.get(measure)
    if key is None:
        raise LmlabError(f"measure must be 'entropy' or 'mi', got {measure!r}")
    higher_better = (measure == "entropy") == (memorization == "heuristic")
    return sorted(summaries, key=lambda n: summaries[n][key], reverse=higher_better)


def kendall_tau(ranking: Sequence[str], extrinsic: dict[str, float], higher_is_better: bool = True) -> float:
    """Kendall τ between a best-first ranking and a labelled metric (1 = the same order)."""
    missing = [n for n in ranking if n not in extrinsic]
    if missing:
        raise LmlabError(f"no labelled metric for {missing}: give a value for every ranked model")
    pos = -np.arange(len(ranking), dtype=float)  # best first -> highest score
    metric = np.array([extrinsic[n] for n in ranking]) * (1 if higher_is_better else -1)
    return float(kendalltau(pos, metric).statistic)


def select_models(
    activations: dict[str, np.ndarray | Activations],
    memorization: str,
    extrinsic: dict[str, float] | None = None,
    n_bins: int = 100,
    k: int = 3,
    max_pairs: int | None = None,
    seed: int = 0,
    mi_neurons_per_layer: int | None = 64,
    keep_arrays: bool = False,
    progress: str | None = None,
) -> dict:
    """Rank candidates from their activations on the same unlabeled set; τ against `extrinsic`.

    As in the paper (spec 06 §3), mean entropy uses every neuron and mean MI the first
    `mi_neurons_per_layer` neurons of each layer (64: 384×384 pairs for a 6-layer DistilBERT instead of
    4,608×4,608). Give `Activations` (e.g. from `hf_activations`) so the layers are known; a plain
    (S, N) array counts as one layer, so its first `mi_neurons_per_layer` columns are used.
    mi_neurons_per_layer=None: MI over every column. keep_arrays: also return each model's per-neuron
    entropies and MI matrix (`entropy`, `mi`), e.g. for the paper's plots. progress: the label of a progress bar
    over the models (None: none).
    """
    if mi_neurons_per_layer is not None and mi_neurons_per_layer < 2:
        raise LmlabError(f"mi_neurons_per_layer must be >= 2 (or None for all), got {mi_neurons_per_layer}")
    summaries, entropies, mis = {}, {}, {}
    for name, a in track(activations.items(), progress or "", total=len(activations), unit="model",
                         enabled=progress is not None):
        if not isinstance(a, Activations):
            a = np.asarray(a, dtype=np.float64)
            if a.ndim != 2:
                raise LmlabError(f"{name}: activations must be (examples, neurons), got shape {a.shape}")
            a = Activations(a, {"all": slice(0, a.shape[1])})
        mi_cols = a.values if mi_neurons_per_layer is None else a.first_neurons(mi_neurons_per_layer)
        entropies[name] = neuron_entropy(a.values, n_bins)
        mis[name] = pairwise_mi_ksg(mi_cols, k, max_pairs=max_pairs, seed=seed)
        summaries[name] = summarize(entropies[name], mis[name])
    out = {"summaries": summaries} | ({"entropy": entropies, "mi": mis} if keep_arrays else {})
    for measure in ("entropy", "mi"):
        r = rank_models(summaries, measure, memorization)
        out[f"ranking_{measure}"] = r
        if extrinsic is not None:
            out[f"tau_{measure}"] = kendall_tau(r, extrinsic)
    return out
