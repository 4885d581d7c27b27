"""Linear connectivity reveals generalization strategies (Juneja et al., ICLR 2023) at tiny scale.

Fine-tunes of one masked-token "pre-trained" parent on a HANS-like NLI task: the pairwise barrier
matrix (mod_BH on ID loss, 10-point paths), spectral clustering (k=2, affinity exp(−D²/2δ²)) and the
spectral axis against the diagnostic (all subject/object swaps: high overlap, non-entailed).
Planted regime: half the children see no swaps (p=0, overlap shortcut), half see p=0.2.
Emergent regime: every child sees the same small p. Real data: McCoy's per-run HANS accuracies of
the 100 MNLI BERTs joined with the published small cluster. MiniLM arm (small/gpu): seeds of the packaged
all-MiniLM-L6-v2 fine-tuned on the text form of the NLI task.

Children keep the parent's classifier head (new_head=False) by default: in trial runs at this scale,
random per-seed heads gave within-family barriers as large as between-family ones.
"""

from __future__ import annotations

import copy
import csv
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from sklearn.metrics import adjusted_rand_score

from lmlab.classifier import accuracy, train_classifier
from lmlab.experiment import RunContext, experiment, presets
from lmlab.hf import load_model, load_tokenizer, minilm_path
from lmlab.methods.lmc.connectivity import (
    axis_correlation,
    barrier_matrix,
    cluster_basins,
    plot_barrier_heatmap,
    within_between,
)
from lmlab.methods.lmc.tasks import HansLikeNLI, finetune_child, pretrain_parent
from lmlab.utils import LmlabError


@dataclass
class Config:
    """One run: a masked-token parent pretrained on the HANS-like NLI task, `n_children` fine-tunes of it in
    the planted regime (alternating p_swap from `planted_p`) and `n_children` in the emergent regime (all at
    `emergent_p`), each set's pairwise barrier matrix clustered; the real-data check on McCoy's feather BERTs;
    with `minilm`, seeds of the packaged MiniLM fine-tuned on the task's text form, analysed the same way."""

    # parent and children
    parent_steps: int = 300
    n_train: int = 2000  # training examples per child
    epochs: int = 6
    lr: float = 2e-3
    new_head: bool = False  # children keep the parent's head (see the module docstring)
    n_children: int = 8  # per regime
    planted_p: list[float] = field(default_factory=lambda: [0.0, 0.2])  # the two families' swap rates
    emergent_p: float = 0.01  # the one swap rate of every emergent-regime child
    # barriers and clustering
    n_eval: int = 512  # examples in each of the ID and diagnostic eval sets
    n_points: int = 10  # points on each interpolation path
    delta: float = 1.0  # spectral-clustering affinity exp(−D²/2δ²)
    # MiniLM arm (the minilm_* keys are read only when minilm is on)
    minilm: bool = False
    minilm_models: int = 6  # fine-tuned seeds
    minilm_n_train: int = 1500
    minilm_epochs: int = 1
    minilm_lr: float = 5e-5
    minilm_p: float = 0.05
    minilm_eval: int = 256


PRESETS = presets(
    Config,
    tiny={},
    small={"n_children": 16, "minilm": True},
    gpu={"n_children": 16, "minilm": True, "minilm_models": 8, "minilm_n_train": 4000, "minilm_epochs": 2,
         "minilm_eval": 512},
)

ARI_OK, SEPARATION = 0.8, 3.0  # spec §8.2: ARI >= 0.8, between-cluster barrier >= 3x within
DIAG_LOW, DIAG_HIGH, ID_GAP = 0.2, 0.6, 0.02
R_OK = 0.5
SMALL_CLUSTER = (15, 25, 26, 42, 44, 46, 56, 61, 63, 70, 73, 89)  # Juneja et al. repository README
LO_MARGIN, AUC_OK = 0.05, 0.8


def _children(task, parent, ps, cfg: Config, seed0):
    xi, yi, _ = task.sample(cfg.n_eval, split="id", seed=seed0 + 1)
    xd, yd, _ = task.sample(cfg.n_eval, split="diagnostic", seed=seed0 + 2)
    sds, info = {}, []
    for c, p in enumerate(ps):
        x, y, _ = task.sample(cfg.n_train, p_swap=p, seed=seed0 + 100 + c)
        child = finetune_child(parent, x, y, seed=seed0 + c, epochs=cfg.epochs, lr=cfg.lr,
                               new_head=cfg.new_head)
        name = f"s{c}_p{p:g}"
        sds[name] = {k: v.detach().clone() for k, v in child.state_dict().items()}
        info.append({"name": name, "p": p, "id_acc": accuracy(child, xi, yi), "diag_acc": accuracy(child, xd, yd)})
    # a copy as the template: barrier_matrix loads every model into it, and the parent is reused
    res = barrier_matrix(copy.deepcopy(parent), sds, [(xi, yi)], n_points=cfg.n_points)
    return res, info


def _analyse(ctx, tag, res, info, delta):
    D = res["D"]
    labels = cluster_basins(D, delta=delta, seed=42)
    diag = np.array([r["diag_acc"] for r in info])
    r = axis_correlation(D, diag, delta=delta)
    within, between = within_between(D, labels)
    ctx.report.table([[i["name"], i["p"], i["id_acc"], i["diag_acc"], int(lab)] for i, lab in zip(info, labels)],
                     ["model", "p_swap", "ID acc", "diagnostic acc", "cluster"], title=f"{tag}: fine-tunes")
    ctx.report.figure(plot_barrier_heatmap(D, res["names"], order=diag, labels=labels,
                                           title=f"{tag}: mod_BH barrier (ID loss)"), f"{tag}_barriers",
                      f"{tag}: pairwise max-subsegment barriers, models ordered by cluster then diagnostic accuracy.")
    out = {"labels": labels.tolist(), "r_axis_diag": r, "within": within, "between": between,
           "separation": between / max(within, 1e-12), "D_mean": float(D[np.triu_indices(len(D), 1)].mean())}
    ctx.report.metric(tag, out)
    return out, labels, diag


def _cluster_strategy(labels, info):
    """Mean diagnostic and ID accuracy of each cluster."""
    rows = {}
    for c in sorted(set(labels)):
        members = [i for i, lab in zip(info, labels) if lab == c]
        rows[c] = (float(np.mean([m["diag_acc"] for m in members])), float(np.mean([m["id_acc"] for m in members])))
    return rows


def decide_basins(ari: float, within: float, between: float, delta: float) -> tuple[bool, str]:
    """c1: clusters recover the families (ARI) and are separated (between >= SEPARATION × within)."""
    sep = between / max(within, 1e-12)
    ok = bool(ari >= ARI_OK and sep >= SEPARATION)
    return ok, (f"ARI(clusters, families) = {ari:.2f} (need >= {ARI_OK}); mean barrier within {within:.4f} vs "
                f"between {between:.4f} nats = {sep:.2f}x (need >= {SEPARATION}x); δ = {delta}")


def decide_strategy(strat: dict) -> tuple[bool, str]:
    """c2: one cluster fails the diagnostic, the other passes it, at equal ID accuracy.
    strat: {cluster: (mean diagnostic acc, mean ID acc)} from `_cluster_strategy`."""
    if len(strat) != 2:
        return False, f"the barrier matrix split into {len(strat)} cluster(s), not 2: no strategy contrast"
    (lo_d, lo_id), (hi_d, hi_id) = sorted(strat.values())
    ok = bool(lo_d < DIAG_LOW and hi_d > DIAG_HIGH and abs(lo_id - hi_id) <= ID_GAP)
    return ok, (f"cluster diagnostic acc {lo_d:.3f} vs {hi_d:.3f} (need < {DIAG_LOW} and > {DIAG_HIGH}); ID acc "
                f"{lo_id:.3f} vs {hi_id:.3f} (need within {ID_GAP})")


def decide_emergent(diag, r_axis: float, separation: float, p: float) -> tuple[bool, str]:
    """c3: with one p for all seeds, the spectral axis tracks diagnostic accuracy (|r| >= R_OK);
    not held when the seeds did not split at all (diagnostic range < 0.05)."""
    diag = np.asarray(diag, dtype=np.float64)
    if np.ptp(diag) < 0.05:
        return False, (f"p={p}: seeds did not split (diagnostic acc {diag.min():.3f}-{diag.max():.3f}), so no "
                       "strategy to cluster")
    ok = bool(abs(r_axis) >= R_OK)
    return ok, (f"p={p}, {len(diag)} seeds: |r(spectral axis, diagnostic acc)| = {abs(r_axis):.2f} (need >= "
                f"{R_OK}); diagnostic acc {diag.min():.3f}-{diag.max():.3f}; between/within barrier "
                f"{separation:.2f}x")


def decide_real(small, large) -> tuple[bool, str, dict]:
    """c4: the published small cluster has lower lexical-overlap non-entailed HANS accuracy than the rest
    (mean gap > LO_MARGIN and AUC(rest > small) >= AUC_OK)."""
    small, large = list(map(float, small)), list(map(float, large))
    if not small or not large:
        return False, f"need runs in both groups, got {len(small)} small-cluster and {len(large)} other runs", {}
    auc = float(mannwhitneyu(large, small).statistic / (len(small) * len(large)))
    ms, ml = float(np.mean(small)), float(np.mean(large))
    ok = bool(ms + LO_MARGIN < ml and auc >= AUC_OK)
    ev = (f"{len(small) + len(large)} runs: HANS lexical-overlap non-entailed accuracy small cluster "
          f"(n={len(small)}) {ms:.3f} vs rest (n={len(large)}) {ml:.3f}; AUC(rest > small) = {auc:.3f}; "
          f"margin {LO_MARGIN} and AUC >= {AUC_OK}")
    return ok, ev, {"small_mean_lo_nonent": ms, "large_mean_lo_nonent": ml, "auc": auc}


def decide_minilm(out: dict, diag, n_models: int, p: float) -> tuple[bool, str]:
    """c5: MiniLM seeds form separated basins whose axis tracks diagnostic accuracy."""
    diag = np.asarray(diag, dtype=np.float64)
    ok = bool(out["separation"] >= SEPARATION and abs(out["r_axis_diag"]) >= R_OK)
    return ok, (f"{n_models} MiniLM fine-tunes (p_swap={p}): mean barrier {out['D_mean']:.4f}, between/within "
                f"{out['separation']:.2f} (need >= {SEPARATION}), |r(axis, diagnostic)| "
                f"{abs(out['r_axis_diag']):.2f} (need >= {R_OK}); diagnostic acc range "
                f"{diag.min():.3f}-{diag.max():.3f}")


def _real_data(ctx) -> None:
    rep = ctx.report
    root = ctx.data("lmc")
    path = root / "feather_berts_hans_accuracy_by_run.csv" if root else None
    if path is None or not path.exists():
        rep.decide("c4_real_mnli", None, ctx.no_data_reason("lmc"))
        return
    with open(path, newline="", encoding="utf-8-sig") as f:
        table = list(csv.reader(f))
    header, rows = table[0], [r for r in table[1:] if r and r[0].startswith("Run ")]
    col = header.index("Lexical (nonent)")
    lo = {int(r[0].split()[1]): float(r[col]) for r in rows}
    small = [v for k, v in lo.items() if k in SMALL_CLUSTER]
    large = [v for k, v in lo.items() if k not in SMALL_CLUSTER]
    ok, ev, stats = decide_real(small, large)
    rep.metric("real_mnli", {"n_runs": len(lo), **stats})
    rep.decide("c4_real_mnli", ok, ev)


def _minilm(ctx, task) -> None:
    cfg, rep = ctx.cfg, ctx.report
    try:
        path = minilm_path()
    except LmlabError as e:
        rep.decide("c5_minilm", None, f"undecided: {e}")
        return
    tok = load_tokenizer(path)
    dev = ctx.device

    def encode(texts):
        enc = tok([t[0] for t in texts], [t[1] for t in texts], padding="max_length", max_length=24,
                  truncation=True, return_tensors="pt")
        return {k: v.to(dev) for k, v in enc.items()}

    _, _, ti = task.sample(cfg.minilm_eval, split="id", seed=7001)
    _, yi, _ = task.sample(cfg.minilm_eval, split="id", seed=7001)
    _, yd, td = task.sample(cfg.minilm_eval, split="diagnostic", seed=7002)
    xi, xd = encode(ti), encode(td)
    yi, yd = yi.to(dev), yd.to(dev)
    sds, info, template = {}, [], None
    for s in range(cfg.minilm_models):
        _, y, texts = task.sample(cfg.minilm_n_train, p_swap=cfg.minilm_p, seed=8000 + s)
        torch.manual_seed(s)  # head init
        model = load_model(path, kind="classifier", num_labels=2).float().to(dev)  # fp32 from a half copy too
        train_classifier(model, encode(texts), y.to(dev), cfg.minilm_epochs, lr=cfg.minilm_lr,
                         batch_size=32, seed=s)
        name = f"minilm_s{s}"
        sds[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        info.append({"name": name, "p": cfg.minilm_p, "id_acc": accuracy(model, xi, yi),
                     "diag_acc": accuracy(model, xd, yd)})
        ctx.log(f"{name}: ID acc {info[-1]['id_acc']:.3f}, diagnostic acc {info[-1]['diag_acc']:.3f}")
        template = model
    batches = [({k: v[i : i + 64] for k, v in xi.items()}, yi[i : i + 64]) for i in range(0, len(yi), 64)]
    res = barrier_matrix(template, sds, batches, n_points=cfg.n_points)
    out, _, diag = _analyse(ctx, "minilm", res, info, cfg.delta)
    rep.decide("c5_minilm", *decide_minilm(out, diag, len(sds), cfg.minilm_p))


@experiment(
    name="lmc_basins",
    paper="Linear Connectivity Reveals Generalization Strategies (Juneja et al., ICLR 2023)",
    claims={
        "c1_basins": "Planted regime: fine-tunes of one parent form two spectral clusters of the barrier matrix "
                     "that recover the training families (ARI >= 0.8), separated by barriers (between-cluster "
                     "mean >= 3x within).",
        "c2_strategy": "Planted regime: cluster membership matches the generalization strategy: one cluster "
                       "fails the diagnostic swaps (< 20 %), the other passes (> 60 %), at equal ID accuracy "
                       "(within 2 points).",
        "c3_emergent": "Emergent regime (same p for all seeds): the spectral axis correlates with diagnostic "
                       "accuracy (|Pearson r| >= 0.5).",
        "c4_real_mnli": "Real data: the published small MNLI cluster has lower HANS lexical-overlap "
                        "non-entailed accuracy than the other feather BERTs.",
        "c5_minilm": "Seeds of the pretrained MiniLM fine-tuned on the synthetic NLI task form basins whose "
                     "spectral axis tracks diagnostic accuracy (small/gpu presets).",
    },
    presets=PRESETS,
    needs_data=("lmc",),
)
def run(ctx: RunContext) -> None:
    cfg, rep = ctx.cfg, ctx.report
    task = HansLikeNLI()
    parent = pretrain_parent(task, steps=cfg.parent_steps, seed=ctx.seed)
    n = cfg.n_children
    planted = [cfg.planted_p[c % 2] for c in range(n)]
    res, info = _children(task, parent, planted, cfg, ctx.seed)
    out, labels, _ = _analyse(ctx, "planted", res, info, cfg.delta)
    family = [int(p > 0) for p in planted]
    ari = adjusted_rand_score(family, labels)
    rep.metric("planted_ari", ari)
    rep.decide("c1_basins", *decide_basins(ari, out["within"], out["between"], cfg.delta))
    rep.decide("c2_strategy", *decide_strategy(_cluster_strategy(labels, info)))

    res_e, info_e = _children(task, parent, [cfg.emergent_p] * n, cfg, ctx.seed + 500)
    out_e, _, diag_e = _analyse(ctx, "emergent", res_e, info_e, cfg.delta)
    rep.decide("c3_emergent", *decide_emergent(diag_e, out_e["r_axis_diag"], out_e["separation"], cfg.emergent_p))
    _real_data(ctx)
    if cfg.minilm:
        _minilm(ctx, task)
    else:
        rep.decide("c5_minilm", None, f"undecided: the MiniLM arm is not run in the {ctx.preset} preset "
                                      "(runs in small and gpu)")
