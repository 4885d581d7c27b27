"""Linear mode connectivity (Juneja et al., ICLR 2023): loss along the straight line between two
fine-tunes, barrier heights, pairwise barrier matrices and spectral clustering into basins.

θ(α) = (1−α)θ₁ + αθ₂ over every floating parameter including the classifier head; buffers (e.g.
`position_ids`) and integer tensors are copied from model 1. The default barrier is the paper's
`mod_BH`: the largest bump above the chord joining any two grid points of the 10-point curve.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.utils import LmlabError, atomic_write_json

StateDict = dict[str, torch.Tensor]


# ============================================================================ interpolation
def buffer_keys(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_buffers()}


def interpolate_state_dicts(sd1: StateDict, sd2: StateDict, alpha: float, skip: Iterable[str] = ()) -> StateDict:
    """(1−α)·sd1 + α·sd2 for floating tensors; `skip` keys and non-float tensors come from sd1."""
    if sd1.keys() != sd2.keys():
        diff = sorted(set(sd1) ^ set(sd2))[:5]
        raise LmlabError(f"the two models have different parameters (e.g. {diff}): interpolate fine-tunes "
                         "of one architecture")
    skip = set(skip)
    out = {}
    for k, a in sd1.items():
        b = sd2[k]
        if a.shape != b.shape:
            raise LmlabError(f"{k}: shapes {tuple(a.shape)} vs {tuple(b.shape)} differ; models must share an architecture")
        out[k] = a if (k in skip or not a.is_floating_point()) else torch.lerp(a, b.to(a.dtype), float(alpha))
    return out


def three_to_two(logits: torch.Tensor, entail: int = 0) -> torch.Tensor:
    """3-way NLI logits -> (entailment, non-entailment) with the non-entailment logit = max of the others."""
    others = [i for i in range(logits.shape[-1]) if i != entail]
    return torch.stack([logits[..., entail], logits[..., others].max(-1).values], -1)


# ============================================================================ evaluation
def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def _forward(model, inputs):
    return _logits(model(**inputs) if isinstance(inputs, dict) else model(inputs))


def prepare_batches(batches: Iterable, device) -> list:
    """Materialise (inputs, labels) batches on the device once, so every path point reuses them."""
    def move(x):
        if isinstance(x, dict):
            return {k: v.to(device) for k, v in x.items()}
        return x.to(device)

    out = [(move(x), y.to(device)) for x, y in batches]
    if not out:
        raise LmlabError("no evaluation batches: pass (inputs, labels) pairs")
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Sequence, logit_map: Callable | None = None) -> dict[str, float]:
    """Mean cross-entropy and accuracy over prepared (inputs, labels) batches."""
    model.eval()
    loss = correct = n = 0.0
    for x, y in batches:
        logits = _forward(model, x).float()
        if logit_map is not None:
            logits = logit_map(logits)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(-1) == y).sum())
        n += len(y)
    return {"loss": loss / n, "acc": correct / n}


@torch.no_grad()
def _evaluate_points(model, sd1: StateDict, sd2: StateDict, alphas: Sequence[float], batches: Sequence,
                     logit_map: Callable | None, skip: set[str]) -> list[dict[str, float]]:
    """Evaluate several α-points in one vectorised pass (torch.func.vmap over stacked weights)."""
    from torch.func import functional_call, vmap

    keys = [k for k, v in sd1.items() if k not in skip and v.is_floating_point()]
    fixed = {k: v for k, v in sd1.items() if k not in keys}
    w = torch.tensor(list(alphas), device=sd1[keys[0]].device)
    stacked = {k: torch.lerp(sd1[k].unsqueeze(0), sd2[k].to(sd1[k].dtype).unsqueeze(0),
                             w.to(sd1[k].dtype).view(-1, *[1] * sd1[k].dim())) for k in keys}

    def logits_at(params, x):
        p = {**params, **fixed}
        out = functional_call(model, p, args=(), kwargs=x) if isinstance(x, dict) else functional_call(model, p, (x,))
        return _logits(out)

    model.eval()
    n_pts = len(alphas)
    loss, correct, n = torch.zeros(n_pts), torch.zeros(n_pts), 0
    for x, y in batches:
        logits = vmap(logits_at, in_dims=(0, None))(stacked, x).float()  # (P, B, C)
        if logit_map is not None:
            logits = logit_map(logits)
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(n_pts), reduction="none").view(n_pts, -1)
        loss += ce.sum(1).cpu()
        correct += (logits.argmax(-1) == y).sum(1).cpu().float()
        n += len(y)
    return [{"loss": float(lo) / n, "acc": float(c) / n} for lo, c in zip(loss, correct)]


def _unaliased(model: torch.nn.Module, sd: StateDict) -> StateDict:
    """A state dict that does not share storage with `model` (loading into the template would
    otherwise overwrite it)."""
    ptrs = {t.data_ptr() for t in model.state_dict().values()}
    if any(v.data_ptr() in ptrs for v in sd.values()):
        return {k: v.detach().clone() for k, v in sd.items()}
    return sd


def path_curve(
    model: torch.nn.Module,
    sd1: StateDict,
    sd2: StateDict,
    batches: Sequence,
    n_points: int = 10,
    logit_map: Callable | None = None,
    endpoints: tuple[dict, dict] | None = None,
    vectorize: bool | None = None,
) -> dict[str, np.ndarray]:
    """Loss and accuracy at `n_points` evenly spaced α in [0, 1] (model is used as the template).

    Endpoints are evaluated with the models' own weights (so they reproduce each model's loss exactly)
    or taken from `endpoints`; interior points are evaluated together with vmap when `vectorize` (falls
    back to one point at a time for models that vmap cannot trace). vectorize=None: vmap on
    accelerators (one pass instead of n_points−2), a plain loop on CPU where it is not faster.
    """
    if n_points < 2:
        raise LmlabError(f"n_points must be >= 2, got {n_points}")
    skip = buffer_keys(model)
    sd1, sd2 = _unaliased(model, sd1), _unaliased(model, sd2)
    alphas = np.linspace(0, 1, n_points)
    if endpoints is None:
        endpoints = []
        for sd in (sd1, sd2):
            model.load_state_dict(sd)
            endpoints.append(evaluate(model, batches, logit_map))
    interior = list(alphas[1:-1])
    if vectorize is None:
        vectorize = next(model.parameters()).device.type != "cpu"
    rows = None
    if vectorize and interior:
        try:
            rows = _evaluate_points(model, sd1, sd2, interior, batches, logit_map, skip)
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            rows = None
    if rows is None:
        rows = []
        for a in interior:
            model.load_state_dict(interpolate_state_dicts(sd1, sd2, a, skip))
            rows.append(evaluate(model, batches, logit_map))
    rows = [endpoints[0], *rows, endpoints[1]]
    return {"alpha": alphas, "loss": np.array([r["loss"] for r in rows]), "acc": np.array([r["acc"] for r in rows])}


# ============================================================================ barriers
def barrier_endpoint(curve: Sequence[float]) -> float:
    """Largest height of the curve above the straight chord between its endpoints (floored at 0)."""
    c = np.asarray(curve, dtype=np.float64)
    t = np.linspace(0, 1, len(c))
    return float(max(0.0, np.max(c - ((1 - t) * c[0] + t * c[-1]))))


def barrier_max_subsegment(curve: Sequence[float]) -> float:
    """The paper's mod_BH: the endpoint barrier maximised over every contiguous sub-segment."""
    c = np.asarray(curve, dtype=np.float64)
    n = len(c)
    return max((barrier_endpoint(c[i : j + 1]) for i in range(n) for j in range(i + 2, n)), default=0.0)


BARRIERS = {"mod_bh": barrier_max_subsegment, "endpoint": barrier_endpoint}


def _key(names: tuple[str, str], n_points: int, tag: str) -> str:
    return hashlib.sha1(json.dumps([*names, n_points, tag]).encode()).hexdigest()[:16]


class _Models:
    """Named models given as state dicts or as paths (a `.pt` state-dict file or a HF checkpoint folder),
    loaded on demand with a small LRU cache so that 100 BERT-size models need not fit in memory."""

    def __init__(self, template: torch.nn.Module, sources: dict, keep: int = 4):
        self.template, self.sources, self.keep = template, sources, keep
        self.cache: OrderedDict[str, StateDict] = OrderedDict()
        self.lock = threading.Lock()
        self.device = next(template.parameters()).device

    def _load(self, src) -> StateDict:
        p = Path(src)
        if p.is_dir():
            loaded = type(self.template).from_pretrained(str(p), local_files_only=True)
            return {k: v.to(self.device) for k, v in loaded.state_dict().items()}
        if p.is_file():
            return torch.load(p, map_location=self.device)
        raise LmlabError(f"model {src} not found: pass state dicts, .pt files or HF checkpoint folders")

    def __getitem__(self, name: str) -> StateDict:
        src = self.sources[name]
        if isinstance(src, dict):
            return _unaliased(self.template, src)
        with self.lock:
            if name in self.cache:
                self.cache.move_to_end(name)
                return self.cache[name]
            sd = self._load(src)
            self.cache[name] = sd
            while len(self.cache) > self.keep:
                self.cache.popitem(last=False)
            return sd


def barrier_matrix(
    model: torch.nn.Module,
    state_dicts: dict[str, StateDict | str | Path],
    batches: Iterable,
    n_points: int = 10,
    barrier: str = "mod_bh",
    metric: str = "loss",
    logit_map: Callable | None = None,
    cache: str | Path | None = None,
    cache_tag: str = "",
    workers: int = 1,
    vectorize: bool | None = None,
) -> dict:
    """Symmetric M×M barrier matrix over named models of one architecture (`model` is the template).

    Models are state dicts, `.pt` state-dict files or HF checkpoint folders (loaded lazily, a few at a
    time, with the template's class).

    Each model's endpoint evaluation is done once and shared by its M−1 paths; evaluation batches are
    moved to the device once; the interior α-points of a path are evaluated in one vmapped pass. cache: a JSON file of finished curves keyed by (names, n_points,
    cache_tag) so an interrupted or extended study only evaluates new pairs. workers > 1 evaluates
    pairs in threads, each with its own model copy (torch releases the GIL in its kernels).
    Returns {"names", "D", "curves": {(a, b): curve}, "endpoints": {name: {"loss", "acc"}}}.
    """
    if barrier not in BARRIERS:
        raise LmlabError(f"unknown barrier {barrier!r}; choose from {', '.join(BARRIERS)}")
    if metric not in ("loss", "acc"):
        raise LmlabError(f"metric must be 'loss' or 'acc', got {metric!r}")
    names = list(state_dicts)
    state_dicts = _Models(model, dict(state_dicts), keep=4 + 2 * workers)
    dev = next(model.parameters()).device
    batches = prepare_batches(batches, dev)
    store: dict = {}
    cache = Path(cache) if cache else None
    if cache and cache.exists():
        store = json.loads(cache.read_text())
    ends = {}
    for n in names:
        model.load_state_dict(state_dicts[n])
        ends[n] = evaluate(model, batches, logit_map)
    todo = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if _key((a, b), n_points, cache_tag) not in store]

    def run(pairs, m):
        for a, b in pairs:
            c = path_curve(m, state_dicts[a], state_dicts[b], batches, n_points, logit_map, (ends[a], ends[b]),
                           vectorize)
            store[_key((a, b), n_points, cache_tag)] = {k: v.tolist() for k, v in c.items()}

    if workers > 1 and len(todo) > 1:
        chunks = [todo[w::workers] for w in range(workers)]
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(run, chunks, [deepcopy(model) for _ in chunks]))
    else:
        run(todo, model)
    if cache and todo:
        atomic_write_json(cache, store)
    fn = BARRIERS[barrier]
    D = np.zeros((len(names), len(names)))
    curves = {}
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b = names[j]
            c = store[_key((a, b), n_points, cache_tag)]
            curves[(a, b)] = c
            vals = np.asarray(c[metric])
            D[i, j] = D[j, i] = fn(vals if metric == "loss" else -vals)  # an accuracy dip is a barrier
    return {"names": names, "D": D, "curves": curves, "endpoints": ends}


# ============================================================================ basins
def affinity(D: np.ndarray, delta: float = 1.0) -> np.ndarray:
    return np.exp(-np.asarray(D, dtype=np.float64) ** 2 / (2 * delta**2))


def cluster_basins(D: np.ndarray, k: int = 2, delta: float = 1.0, seed: int = 42) -> np.ndarray:
    """Spectral clustering of the barrier matrix with affinity exp(−D²/2δ²)."""
    from sklearn.cluster import SpectralClustering

    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1] or D.shape[0] < k:
        raise LmlabError(f"need a square barrier matrix with at least k={k} models, got shape {D.shape}")
    sc = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed)
    return sc.fit_predict(affinity(D, delta))


def spectral_axis(D: np.ndarray, delta: float = 1.0, seed: int = 42) -> np.ndarray:
    """1-D position of each model between the two basins: x = ‖e−c₁‖ − ‖e−c₂‖ in the 2-component
    spectral embedding (k-means centres c₁, c₂). The sign of the axis is arbitrary."""
    from sklearn.cluster import KMeans
    from sklearn.manifold import spectral_embedding

    e = spectral_embedding(affinity(D, delta), n_components=2, drop_first=False, random_state=seed)
    c = KMeans(2, n_init=10, random_state=seed).fit(e).cluster_centers_
    return np.linalg.norm(e - c[0], axis=1) - np.linalg.norm(e - c[1], axis=1)


def axis_correlation(D: np.ndarray, diagnostic: Sequence[float], delta: float = 1.0, seed: int = 42) -> float:
    """Pearson r between the spectral axis and a diagnostic metric (|r| is what matters)."""
    from scipy.stats import pearsonr

    x = spectral_axis(D, delta, seed)
    d = np.asarray(diagnostic, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(d) == 0:
        return 0.0
    return float(pearsonr(x, d).statistic)


def within_between(D: np.ndarray, labels: Sequence[int]) -> tuple[float, float]:
    """Mean barrier within clusters and between clusters (off-diagonal pairs)."""
    lab = np.asarray(labels)
    same = lab[:, None] == lab[None, :]
    off = ~np.eye(len(lab), dtype=bool)
    w, b = D[same & off], D[~same]
    return (float(w.mean()) if w.size else 0.0, float(b.mean()) if b.size else float("nan"))


def plot_barrier_heatmap(D: np.ndarray, names: Sequence[str], order: Sequence[float] | None = None,
                         labels: Sequence[int] | None = None, title: str = "Loss barrier (mod_BH)"):
    """Heatmap of D with models ordered by cluster, then by `order` (e.g. diagnostic accuracy)."""
    import matplotlib.pyplot as plt

    n = len(names)
    key = [((labels[i] if labels is not None else 0), (order[i] if order is not None else i)) for i in range(n)]
    idx = sorted(range(n), key=lambda i: key[i])
    fig, ax = plt.subplots(figsize=(4 + 0.15 * n, 3.5 + 0.15 * n))
    im = ax.imshow(np.asarray(D)[np.ix_(idx, idx)], cmap="viridis")
    ticks = [f"{names[i]}" + (f" [{labels[i]}]" if labels is not None else "") for i in idx]
    ax.set_xticks(range(n), ticks, rotation=90, fontsize=6)
    ax.set_yticks(range(n), ticks, fontsize=6)
    ax.set_xlabel("model [cluster]")
    ax.set_ylabel("model [cluster]")
    fig.colorbar(im, ax=ax, label="barrier (nats)")
    ax.set_title(title)
    fig.tight_layout()
    return fig
