"""Linear mode connectivity (Juneja et al., ICLR 2023): loss along the straight line between two
fine-tunes, barrier heights, pairwise barrier matrices and spectral clustering into basins.

θ(α) = (1−α)θ₁ + αθ₂ over every floating parameter including the classifier head. Floating buffers
that differ between the two models (BatchNorm running statistics) are interpolated the same way, so
every α — the endpoints included — uses one convention: α=0 is exactly model 1 and α=1 exactly model 2,
the path is continuous and symmetric, and the endpoints equal each model's own evaluation. Integer
buffers and buffers equal in both models (`position_ids`, masks) are copied from model 1. The default
barrier is the paper's `mod_BH`: the largest bump above the chord joining any two grid points of the
10-point curve.
"""

from __future__ import annotations

import functools
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
from torch.func import functional_call, vmap

from lmlab.methods.lmc import BARRIER_KINDS
from lmlab.progress import Progress, track
from lmlab.utils import LmlabError, atomic_write_json

StateDict = dict[str, torch.Tensor]


# ============================================================================ interpolation
def buffer_keys(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_buffers()}


def fixed_keys(model: torch.nn.Module, sd1: StateDict, sd2: StateDict) -> set[str]:
    """Buffers copied from model 1 along the path: integer buffers and buffers equal in both models.

    Floating buffers that differ (BatchNorm running mean/var) are interpolated like parameters, so the
    α=1 end is model 2 with its own statistics and interior points use the matching blend (copying
    model 1's statistics would make α=1 a jump that reads as a barrier). Equal buffers are copied, not
    lerped, so that constant masks holding ±inf stay exact.
    """
    out = set()
    for k in buffer_keys(model):
        if k not in sd1 or k not in sd2:
            continue
        a, b = sd1[k], sd2[k]
        if not a.is_floating_point() or (a.shape == b.shape and torch.equal(a, b.to(a.device, a.dtype))):
            out.add(k)
    return out


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


def merge_classes(logits: torch.Tensor, groups: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """A model's class logits -> the logits of a coarser task's labels: label j's logit is the max over the classes
    in groups[j] (`three_to_two` is the NLI case, one entailment class against the rest)."""
    return torch.stack([logits[..., list(g)].max(-1).values for g in groups], -1)


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


def _scored(logits: torch.Tensor, y: torch.Tensor, points: int = 1) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(summed cross-entropy, correct predictions) per point, and the number of scored labels.

    logits: (points·)(B, C) for classifiers or (points·)(B, T, V) for language models, whose labels (B, T) are
    next-token ids with -100 on positions that do not count (padding, prompts)."""
    flat = logits.reshape(points, -1, logits.shape[-1])  # (P, N, C)
    labels = y.reshape(-1)
    counted = labels != -100
    if points == 1:  # one fused sum, as the loop evaluation always did (bit-identical classifier results)
        ce = F.cross_entropy(flat[0], labels, ignore_index=-100, reduction="sum").reshape(1)
    else:
        ce = F.cross_entropy(flat.flatten(0, 1), labels.repeat(points), ignore_index=-100, reduction="none")
        ce = ce.view(points, -1).sum(1)
    correct = ((flat.argmax(-1) == labels) & counted).sum(1)
    return ce, correct, int(counted.sum())


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Sequence, logit_map: Callable | None = None) -> dict[str, float]:
    """Mean cross-entropy and accuracy over prepared (inputs, labels) batches: per example for classifiers,
    per counted token (labels != -100) for language models. The model is evaluated in eval mode and handed
    back in the mode it came in."""
    was_training = model.training
    model.eval()
    loss = correct = n = 0.0
    try:
        for x, y in batches:
            logits = _forward(model, x).float()
            if logit_map is not None:
                logits = logit_map(logits)
            ce, right, counted = _scored(logits, y)
            loss, correct, n = loss + float(ce[0]), correct + float(right[0]), n + counted
    finally:
        model.train(was_training)
    if n == 0:
        raise LmlabError("no scored labels in the evaluation batches (every label is -100)")
    return {"loss": loss / n, "acc": correct / n}


@torch.no_grad()
def _evaluate_points(model, sd1: StateDict, sd2: StateDict, alphas: Sequence[float], batches: Sequence,
                     logit_map: Callable | None, skip: set[str]) -> list[dict[str, float]]:
    """Evaluate several α-points in one vectorised pass (torch.func.vmap over stacked weights)."""
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
        ce, right, counted = _scored(logits, y, n_pts)
        loss += ce.cpu()
        correct += right.cpu().float()
        n += counted
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

    Endpoints are evaluated with the models' own weights and buffers (so they reproduce each model's
    loss exactly) or taken from `endpoints`; interior points interpolate parameters and the floating
    buffers that differ (see `fixed_keys`), which is the same convention as the endpoints: α=0 and α=1
    of the interpolation *are* the two models. Interior points are evaluated together with vmap when
    `vectorize` (falls back to one point at a time for models that vmap cannot trace). vectorize=None:
    vmap on accelerators (one pass instead of n_points−2), a plain loop on CPU where it is not faster.

    The template's own weights, buffers and train/eval mode are put back afterwards (also on an error): the
    caller's model is unchanged.
    """
    if n_points < 2:
        raise LmlabError(f"n_points must be >= 2, got {n_points}")
    own, was_training = {k: v.detach().clone() for k, v in model.state_dict().items()}, model.training
    try:
        return _path_curve(model, sd1, sd2, batches, n_points, logit_map, endpoints, vectorize)
    finally:
        model.load_state_dict(own)
        model.train(was_training)


def _path_curve(model, sd1, sd2, batches, n_points, logit_map, endpoints, vectorize) -> dict[str, np.ndarray]:
    """path_curve's body: loads interpolated weights into `model` (path_curve restores them)."""
    sd1, sd2 = _unaliased(model, sd1), _unaliased(model, sd2)
    skip = fixed_keys(model, sd1, sd2)
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
def _finite_curve(curve: Sequence[float]) -> np.ndarray:
    """The curve as float64; a NaN/inf point raises (max(0, nan) would otherwise read as 'connected')."""
    c = np.asarray(curve, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(c))
    if bad.size:
        alphas = np.linspace(0, 1, len(c))[bad] if len(c) > 1 else np.zeros(1)
        shown = ", ".join(f"{a:.3g}" for a in alphas[:10]) + (", ..." if bad.size > 10 else "")
        raise LmlabError(
            f"the path curve is NaN/inf at {bad.size} of {len(c)} points (α = {shown}): the interpolated "
            "model diverged (overflow, often fp16/bf16 evaluation) or a logit_map produced non-finite "
            "logits; evaluate in float32 and check the models' own losses")
    return c


def _barrier_endpoint(c: np.ndarray) -> float:
    t = np.linspace(0, 1, len(c))
    return float(max(0.0, np.max(c - ((1 - t) * c[0] + t * c[-1]))))


def barrier_endpoint(curve: Sequence[float]) -> float:
    """Largest height of the curve above the straight chord between its endpoints (floored at 0).
    Raises LmlabError naming the α points where the curve is NaN/inf."""
    return _barrier_endpoint(_finite_curve(curve))


def barrier_max_subsegment(curve: Sequence[float]) -> float:
    """The paper's mod_BH: the endpoint barrier maximised over every contiguous sub-segment.
    Raises LmlabError naming the α points where the curve is NaN/inf."""
    c = _finite_curve(curve)
    n = len(c)
    return max((_barrier_endpoint(c[i : j + 1]) for i in range(n) for j in range(i + 2, n)), default=0.0)


BARRIERS = dict(zip(BARRIER_KINDS, (barrier_max_subsegment, barrier_endpoint)))


_FP_SAMPLE = 1024  # elements hashed per tensor (strided); a float64 sum covers the rest


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.cpu().contiguous().numpy().tobytes()


def _digest_tensor(h, t: torch.Tensor, full: bool = False) -> None:
    """dtype, shape, a strided sample of the values and (floats) the float64 sum into hash `h`."""
    t = t.detach()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    flat = t.reshape(-1)
    if not full and flat.numel() > _FP_SAMPLE:
        flat = flat[:: -(-flat.numel() // _FP_SAMPLE)]
        if t.is_floating_point():
            h.update(f"{float(t.sum(dtype=torch.float64)):.10e}".encode())
    h.update(_tensor_bytes(flat))


def model_fingerprint(sd: StateDict) -> str:
    """Cheap content hash of a state dict: every tensor's dtype, shape, a strided sample of ≤ 1,024 values
    and its float64 sum (one read of the weights; a fine-tune differs from its sibling in all of them)."""
    h = hashlib.sha1()
    for k in sorted(sd):
        h.update(k.encode())
        _digest_tensor(h, sd[k])
    return h.hexdigest()[:16]


def batches_fingerprint(batches: Sequence) -> str:
    """Hash of prepared (inputs, labels) batches: every batch's shapes and the full input/label bytes."""
    h = hashlib.sha1()
    for x, y in batches:
        for k, v in (sorted(x.items()) if isinstance(x, dict) else [("", x)]):
            h.update(k.encode())
            _digest_tensor(h, v, full=True)
        _digest_tensor(h, y, full=True)
    return h.hexdigest()[:16]


def callable_name(fn: Callable | None) -> str:
    """Qualified name of a logit map (module.qualname; partials with their bound arguments)."""
    if fn is None:
        return "none"
    if isinstance(fn, functools.partial):
        return f"partial({callable_name(fn.func)}, {fn.args!r}, {sorted(fn.keywords.items())!r})"
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}.{qual}"


def _key(fingerprints: tuple[str, str], n_points: int, tag: str, context: str) -> str:
    """Cache key of one path: both models' weight fingerprints (in path order), the grid, the user tag
    and the evaluation context (batches fingerprint + logit map)."""
    return hashlib.sha1(json.dumps([*fingerprints, n_points, tag, context]).encode()).hexdigest()[:16]


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
    flush_every: int = 10,
    progress: str | None = None,
) -> dict:
    """Symmetric M×M barrier matrix over named models of one architecture (`model` is the template; a copy of it
    is loaded with each model, the caller's is not changed).

    Models are state dicts, `.pt` state-dict files or HF checkpoint folders (loaded lazily, a few at a
    time, with the template's class).

    Each model's endpoint evaluation is done once and shared by its M−1 paths; evaluation batches are
    moved to the device once; the interior α-points of a path are evaluated in one vmapped pass.
    cache: a JSON file of finished curves so an interrupted or extended study only evaluates new pairs.
    A curve's key covers what it depends on: both models' weights (`model_fingerprint`, so a new
    fine-tune under an old name is re-evaluated), the evaluation batches (shapes and a hash of inputs and
    labels), the logit_map (qualified name), n_points and cache_tag (use the tag for anything else that
    changes the evaluation, e.g. a logit_map edited under the same name). The file is rewritten every
    `flush_every` finished pairs and once more on the way out (also on an exception or Ctrl-C), so
    finished pairs survive an interruption. workers > 1 evaluates pairs in threads, each with its own
    model copy (torch releases the GIL in its kernels). progress: the label of a progress bar over the endpoint
    evaluations and the paths (`lmlab.progress.Progress`; None: none).
    Returns {"names", "D", "curves": {(a, b): curve}, "endpoints": {name: {"loss", "acc"}}}.
    """
    if barrier not in BARRIERS:
        raise LmlabError(f"unknown barrier {barrier!r}; choose from {', '.join(BARRIERS)}")
    if metric not in ("loss", "acc"):
        raise LmlabError(f"metric must be 'loss' or 'acc', got {metric!r}")
    names = list(state_dicts)
    model = deepcopy(model)  # the template is loaded with each model in turn: the caller's stays as it was
    state_dicts = _Models(model, dict(state_dicts), keep=4 + 2 * workers)
    dev = next(model.parameters()).device
    batches = prepare_batches(batches, dev)
    context = f"{batches_fingerprint(batches)}|{callable_name(logit_map)}"
    store: dict = {}
    cache = Path(cache) if cache else None
    if cache and cache.exists():
        store = json.loads(cache.read_text())
    ends, fps = {}, {}
    for n in track(names, f"{progress}: endpoints", unit="model", enabled=progress is not None):
        sd = state_dicts[n]
        fps[n] = model_fingerprint(sd)
        model.load_state_dict(sd)
        ends[n] = evaluate(model, batches, logit_map)

    def key(a, b):
        return _key((fps[a], fps[b]), n_points, cache_tag, context)

    todo = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if key(a, b) not in store]
    bar = Progress(len(todo), f"{progress}: paths", unit="path", enabled=progress is not None)
    lock, write_lock, stop = threading.Lock(), threading.Lock(), threading.Event()
    unsaved = [0]

    def flush():
        with write_lock:
            with lock:
                if not unsaved[0]:
                    return
                snapshot, unsaved[0] = dict(store), 0
            atomic_write_json(cache, snapshot)

    def run(pairs, m):
        for a, b in pairs:
            if stop.is_set():  # another worker failed or the study was interrupted
                return
            c = path_curve(m, state_dicts[a], state_dicts[b], batches, n_points, logit_map, (ends[a], ends[b]),
                           vectorize)
            with lock:
                store[key(a, b)] = {k: v.tolist() for k, v in c.items()}
                unsaved[0] += 1
                bar.update()
                due = cache is not None and unsaved[0] >= max(1, flush_every)
            if due:
                flush()

    try:
        if workers > 1 and len(todo) > 1:
            chunks = [todo[w::workers] for w in range(workers)]
            with ThreadPoolExecutor(workers) as ex:
                try:
                    list(ex.map(run, chunks, [deepcopy(model) for _ in chunks]))
                except BaseException:
                    stop.set()  # the other workers finish their current pair, then the cache is flushed
                    raise
        else:
            run(todo, model)
    finally:
        bar.close()
        if cache:
            flush()
    fn = BARRIERS[barrier]
    D = np.zeros((len(names), len(names)))
    curves = {}
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b = names[j]
            c = store[key(a, b)]
            curves[(a, b)] = c
            vals = np.asarray(c[metric], dtype=np.float64)
            try:
                D[i, j] = D[j, i] = fn(vals if metric == "loss" else -vals)  # an accuracy dip is a barrier
            except LmlabError as e:
                bad = [n for n in (a, b) if not np.isfinite(ends[n]["loss"])]
                who = f"; the endpoint model(s) {bad} already have a non-finite loss" if bad else ""
                raise LmlabError(f"path {a} -> {b}: {e}{who}") from None
    return {"names": names, "D": D, "curves": curves, "endpoints": ends}


# ============================================================================ basins
def affinity(D: np.ndarray, delta: float = 1.0) -> np.ndarray:
    return np.exp(-np.asarray(D, dtype=np.float64) ** 2 / (2 * delta**2))


def cluster_basins(D: np.ndarray, k: int = 2, delta: float = 1.0, seed: int = 42) -> np.ndarray:
    """Spectral clustering of the barrier matrix with affinity exp(−D²/2δ²)."""
    from sklearn.cluster import SpectralClustering  # heavy: sklearn imported only when clustering

    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1] or D.shape[0] < k:
        raise LmlabError(f"need a square barrier matrix with at least k={k} models, got shape {D.shape}")
    sc = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed)
    return sc.fit_predict(affinity(D, delta))


def spectral_axis(D: np.ndarray, delta: float = 1.0, seed: int = 42) -> np.ndarray:
    """1-D position of each model between the two basins: x = ‖e−c₁‖ − ‖e−c₂‖ in the 2-component
    spectral embedding (k-means centres c₁, c₂). The sign of the axis is arbitrary."""
    # heavy: sklearn imported only for the spectral axis
    from sklearn.cluster import KMeans
    from sklearn.manifold import spectral_embedding

    e = spectral_embedding(affinity(D, delta), n_components=2, drop_first=False, random_state=seed)
    c = KMeans(2, n_init=10, random_state=seed).fit(e).cluster_centers_
    return np.linalg.norm(e - c[0], axis=1) - np.linalg.norm(e - c[1], axis=1)


def axis_correlation(D: np.ndarray, diagnostic: Sequence[float], delta: float = 1.0, seed: int = 42) -> float:
    """Pearson r between the spectral axis and a diagnostic metric (|r| is what matters)."""
    from scipy.stats import pearsonr  # heavy: scipy imported only for this statistic

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


HEATMAP_TICK_PT, HEATMAP_MAX_TICKS = 8, 40


def plot_barrier_heatmap(D: np.ndarray, names: Sequence[str], order: Sequence[float] | None = None,
                         labels: Sequence[int] | None = None, title: str = "Loss barrier (mod_BH)"):
    """Heatmap of D with models ordered by cluster, then by `order` (e.g. diagnostic accuracy)."""
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    n = len(names)
    key = [((labels[i] if labels is not None else 0), (order[i] if order is not None else i)) for i in range(n)]
    idx = sorted(range(n), key=lambda i: key[i])
    every = -(-n // HEATMAP_MAX_TICKS)  # past that many models, label every k-th so labels stay readable
    side = 0.22 * min(n, HEATMAP_MAX_TICKS)  # room for 8-pt labels
    fig, ax = plt.subplots(figsize=(4.5 + side, 4 + side))
    im = ax.imshow(np.asarray(D)[np.ix_(idx, idx)], cmap="viridis")
    ticks = [f"{names[i]}" + (f" [{labels[i]}]" if labels is not None else "") for i in idx]
    ax.set_xticks(range(0, n, every), ticks[::every], rotation=90, fontsize=HEATMAP_TICK_PT)
    ax.set_yticks(range(0, n, every), ticks[::every], fontsize=HEATMAP_TICK_PT)
    ax.set_xlabel("model [cluster]")
    ax.set_ylabel("model [cluster]")
    fig.colorbar(im, ax=ax, label="barrier (nats)", fraction=0.046, pad=0.04)  # as tall as the square map
    ax.set_title(title)
    fig.tight_layout()
    return fig
