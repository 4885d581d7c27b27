"""Linear connectivity reveals generalization strategies (Juneja et al., ICLR 2023) at tiny scale.

Fine-tunes of one masked-token "pre-trained" parent on a HANS-like NLI task: the pairwise barrier matrix (mod_BH on
ID loss, 10-point paths), spectral clustering (k=2, affinity exp(−D²/2δ²), δ = 1 as in the authors' code) and the
spectral axis against the diagnostic (all subject/object swaps: high overlap, non-entailed). Planted regime: half
the children see no swaps (p=0, overlap shortcut), half see p=0.2. Emergent regime: every child sees the same
small p. MiniLM arm (small/gpu): fine-tunes of the packaged all-MiniLM-L6-v2 on the text form of the task.

On the decision engine: `measure(ctx, seed)` trains one seed's parent, children and replicates and returns numbers
only; the pure `decide_*` functions turn the per-seed numbers into verdicts by `lmlab.verdict.RULE`.

The replicate noise floor: for some children a replicate is fine-tuned on the same training examples from the
same init (the parent with its head), with another data-order seed. On one CPU thread the same order too would
reproduce the child bit for bit (barrier 0), so the order is the one thing left to vary; the barrier between a
child and its replicate is what SGD noise alone puts between two fine-tunes, and basins count only above it.

Children keep the parent's classifier head (new_head=False) by default: in trial runs at this scale, random
per-seed heads gave within-family barriers as large as between-family ones. They train at lr 1e-2 for 15 epochs
(before: 2e-3 for 6): at the old setting the children stayed so close to the parent that every barrier was
1e-5–7e-3 nats and the clustering followed noise of that size (the audit behind the move to the engine; the
seed-block check of this version: docs/results/checks/seed_blocks_lmc_basins.txt).

The published-data arm is a *check*, not a claim: joining the authors' small-cluster list with McCoy's HANS table
re-reads the paper's own result and cannot fail here; the paper claim it stood for is reported "not tested".
"""

from __future__ import annotations

import copy
import csv
import math
import statistics
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from sklearn.metrics import adjusted_rand_score

from lmlab.classifier import accuracy, train_classifier
from lmlab.experiment import RunContext, experiment, presets
from lmlab.hf import load_model, load_tokenizer, minilm_path
from lmlab.methods.lmc.connectivity import (
    barrier_matrix,
    cluster_basins,
    plot_barrier_heatmap,
    spectral_axis,
    within_between,
)
from lmlab.methods.lmc.tasks import HansLikeNLI, finetune_child, pretrain_parent
from lmlab.utils import LmlabError
from lmlab.verdict import Verdict, all_of, by_threshold, check, not_tested, part_not_measured, undecided


@dataclass
class Config:
    """One seed: a masked-token parent pretrained on the HANS-like NLI task, `n_children` fine-tunes of it in the
    planted regime (alternating p_swap from `planted_p`) and `n_children` in the emergent regime (all at
    `emergent_p`), each regime with `replicates` order-only replicates (the noise floor), each set's pairwise
    barrier matrix clustered; with `minilm`, fine-tunes of the packaged MiniLM on the task's text form, analysed
    the same way. `seeds` seeds of all of it (the decision engine's)."""

    seeds: int = 2
    # parent and children
    parent_steps: int = 300
    n_train: int = 2000  # training examples per child
    epochs: int = 15
    lr: float = 1e-2
    new_head: bool = False  # children keep the parent's head (see the module docstring)
    n_children: int = 8  # per regime
    replicates: int = 2  # per regime: order-only replicates of children 0, 1, ... (one per planted family at 2)
    planted_p: list[float] = field(default_factory=lambda: [0.0, 0.2])  # the two families' swap rates
    emergent_p: float = 0.01  # the one swap rate of every emergent-regime child
    # barriers, clustering and the permutation test
    n_eval: int = 512  # examples in each of the ID and diagnostic eval sets
    n_points: int = 10  # points on each interpolation path
    delta: float = 1.0  # spectral-clustering affinity exp(−D²/2δ²)
    permutations: int = 2000  # permutations of diagnostic accuracy over the models (c3, c5)
    # MiniLM arm (the minilm_* keys are read only when minilm is on)
    minilm: bool = False
    minilm_models: int = 6  # fine-tunes per seed (plus one order-only replicate)
    minilm_n_train: int = 1500
    minilm_epochs: int = 1
    minilm_lr: float = 5e-5
    minilm_p: float = 0.05
    minilm_eval: int = 256


PRESETS = presets(
    Config,
    tiny={},
    small={"seeds": 3, "n_children": 16, "minilm": True, "minilm_models": 8},
    gpu={"seeds": 3, "n_children": 16, "minilm": True, "minilm_models": 8, "minilm_n_train": 4000,
         "minilm_epochs": 2, "minilm_eval": 512},
)

# ---- margins, each with its source (committed before any run of this version)
ARI_OK = 0.8  # spec §8.2: the spectral clusters recover the training families with adjusted Rand index >= 0.8
SEPARATION = 3.0  # spec §8.2: mean between-cluster barrier >= 3x the within-cluster mean; here 3x the larger of
#                   the within-cluster mean and the measured replicate noise floor (the barrier between a child and
#                   its order-only replicate), so that a separation of noise-sized barriers does not count
DIAG_LOW, DIAG_HIGH = 0.2, 0.6  # spec §8.2: the shortcut cluster under 20 % on the diagnostic, the other over 60 %
ID_GAP = 0.02  # spec §8.2: at equal ID accuracy (within 2 points)
R_OK = 0.5  # spec §8.2: |Pearson r(spectral axis, diagnostic accuracy)| >= 0.5; the permutation test's 95th
#             percentile of |r| (what shuffled diagnostic accuracies reach 1 time in 20) raises it when larger
PERM_LEVEL = 0.95  # the conventional 5 % level of the permutation test: the chance |r| is its 95th percentile
SPLIT = 0.05  # the old decide_emergent's range: same-p children whose diagnostic accuracies span less than 5 points
#               did not split into strategies, so there is nothing for the axis to track
LEARNED = 0.5  # a child has learned the task when it closes at least half the gap from the constant-prediction
#               baseline to perfect ID accuracy (the feather BERTs of spec §5 close 76 % of it: 84 % MNLI dev
#               accuracy against 33 % for a constant 3-way guess)
SMALL_CLUSTER = (15, 25, 26, 42, 44, 46, 56, 61, 63, 70, 73, 89)  # Juneja et al. repository README (spec §5)
LO_MARGIN, AUC_OK = 0.05, 0.8  # the check: spec §5 reports 0.096 vs 0.301 (AUC 0.976); a gap of 5 points, AUC 0.8

PAPER_C4 = ("not tested: the shared data hold only the published HANS table (McCoy's per-run accuracies), no barrier "
            "data to compute the MNLI clusters from; the check `k1_published_hans` re-reads the paper's own cluster "
            "list against that table instead")


# ============================================================================ measuring (one seed)
def _sd(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _regime(task, parent, ps, cfg: Config, seed0: int) -> dict:
    """Fine-tune one child per swap rate in `ps` and `cfg.replicates` order-only replicates of the first children,
    take the barrier matrix over all of them (ID loss), cluster the children and measure what the claims read."""
    xi, yi, _ = task.sample(cfg.n_eval, split="id", seed=seed0 + 1)
    xd, yd, _ = task.sample(cfg.n_eval, split="diagnostic", seed=seed0 + 2)
    sds, children, reps = {}, [], []
    for c, p in enumerate(ps):
        x, y, _ = task.sample(cfg.n_train, p_swap=p, seed=seed0 + 100 + c)
        child = finetune_child(parent, x, y, seed=seed0 + c, epochs=cfg.epochs, lr=cfg.lr, new_head=cfg.new_head)
        name = f"s{c}_p{p:g}"
        sds[name] = _sd(child)
        children.append({"name": name, "p": p, "id_acc": accuracy(child, xi, yi), "diag_acc": accuracy(child, xd, yd)})
        if c < cfg.replicates:  # same examples, same init (and head seed), another data order
            twin = copy.deepcopy(parent)
            if cfg.new_head:
                torch.manual_seed(seed0 + c)  # the child's head init
                twin.head.reset_parameters()
            train_classifier(twin, x, y, cfg.epochs, lr=cfg.lr, batch_size=64, seed=seed0 + 900 + c)
            sds[f"rep_{name}"] = _sd(twin)
            reps.append({"of": name, "id_acc": accuracy(twin, xi, yi), "diag_acc": accuracy(twin, xd, yd)})
    # a copy as the template: barrier_matrix loads every model into it, and the parent is reused
    res = barrier_matrix(copy.deepcopy(parent), sds, [(xi, yi)], n_points=cfg.n_points)
    out = _analyse(res, children, reps, cfg, seed0)
    out["baseline_id"] = float(max(yi.float().mean(), 1 - yi.float().mean()))
    return out


def _analyse(res: dict, children: list[dict], reps: list[dict], cfg: Config, seed0: int) -> dict:
    """Cluster the children's barrier matrix; the replicate barriers, within/between means, the spectral axis and
    its permutation test against diagnostic accuracy."""
    names = res["names"]
    idx = [names.index(c["name"]) for c in children]
    D = res["D"][np.ix_(idx, idx)]
    for r in reps:
        i, j = names.index(r["of"]), names.index(f"rep_{r['of']}")
        r["barrier"] = float(res["D"][i, j])
        child = next(c for c in children if c["name"] == r["of"])
        r["d_id_acc"], r["d_diag_acc"] = abs(r["id_acc"] - child["id_acc"]), abs(r["diag_acc"] - child["diag_acc"])
    labels = cluster_basins(D, delta=cfg.delta, seed=42)
    within, between = within_between(D, labels)
    off = D[np.triu_indices(len(D), 1)]
    diag = np.array([c["diag_acc"] for c in children])
    axis = spectral_axis(D, cfg.delta, seed=42)
    perm = permutation_test(axis, diag, cfg.permutations, seed=seed0)
    return {"children": children, "replicates": reps, "labels": [int(v) for v in labels], "D": D.tolist(),
            "within": within, "between": between, "D_mean": float(off.mean()), "D_median": float(np.median(off)),
            "D_max": float(off.max()), "floor": float(np.mean([r["barrier"] for r in reps])) if reps else None,
            "axis": axis.tolist(), **perm}


def permutation_test(axis, diag, n_perm: int, seed: int = 0) -> dict:
    """|Pearson r| between the spectral axis and diagnostic accuracy, against its distribution when the diagnostic
    accuracies are shuffled over the models: the observed |r|, the permutation p-value (one-sided in |r|, with
    the +1 correction) and the null's PERM_LEVEL quantile (the chance |r|)."""
    x, d = np.asarray(axis, dtype=np.float64), np.asarray(diag, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(d) == 0:
        return {"r_axis_diag": 0.0, "perm_p": 1.0, "perm_q": 1.0}
    rng = np.random.default_rng(seed)
    r = float(np.corrcoef(x, d)[0, 1])
    null = np.array([abs(np.corrcoef(x, rng.permutation(d))[0, 1]) for _ in range(n_perm)])
    return {"r_axis_diag": r, "perm_p": float((1 + np.sum(null >= abs(r) - 1e-12)) / (n_perm + 1)),
            "perm_q": float(np.quantile(null, PERM_LEVEL))}


def read_hans(ctx: RunContext) -> dict | None:
    """McCoy's per-run HANS lexical-overlap non-entailed accuracies, split by the authors' small-cluster list; None
    without the data."""
    root = ctx.data("lmc")
    path = root / "feather_berts_hans_accuracy_by_run.csv" if root else None
    if path is None or not path.exists():
        return None
    with open(path, newline="", encoding="utf-8-sig") as f:
        table = list(csv.reader(f))
    header, rows = table[0], [r for r in table[1:] if r and r[0].startswith("Run ")]
    col = header.index("Lexical (nonent)")
    lo = {int(r[0].split()[1]): float(r[col]) for r in rows}
    return {"small": [v for k, v in sorted(lo.items()) if k in SMALL_CLUSTER],
            "large": [v for k, v in sorted(lo.items()) if k not in SMALL_CLUSTER]}


def _minilm(ctx: RunContext, task: HansLikeNLI, seed: int) -> dict:
    """`minilm_models` fine-tunes of the packaged MiniLM (head init and data order from the seed) and one
    order-only replicate of the first, analysed like the toy children."""
    cfg, dev = ctx.cfg, ctx.device
    try:
        path = minilm_path()
    except LmlabError as e:
        return {"missing": str(e)}
    tok = load_tokenizer(path)

    def encode(texts):
        enc = tok([t[0] for t in texts], [t[1] for t in texts], padding="max_length", max_length=24,
                  truncation=True, return_tensors="pt")
        return {k: v.to(dev) for k, v in enc.items()}

    _, yi, ti = task.sample(cfg.minilm_eval, split="id", seed=7001)
    _, yd, td = task.sample(cfg.minilm_eval, split="diagnostic", seed=7002)
    xi, xd = encode(ti), encode(td)
    yi, yd = yi.to(dev), yd.to(dev)
    sds, children, reps, template = {}, [], [], None
    base = 1_000_000 + 1000 * seed
    for s in range(cfg.minilm_models + 1):
        twin = s == cfg.minilm_models  # the replicate of model 0: its data and head init, another order
        _, y, texts = task.sample(cfg.minilm_n_train, p_swap=cfg.minilm_p, seed=base + (0 if twin else s))
        torch.manual_seed(base + (0 if twin else s))  # head init
        model = load_model(path, kind="classifier", num_labels=2).float().to(dev)  # fp32 from a half copy too
        train_classifier(model, encode(texts), y.to(dev), cfg.minilm_epochs, lr=cfg.minilm_lr, batch_size=32,
                         seed=base + 500 + s)
        row = {"id_acc": accuracy(model, xi, yi), "diag_acc": accuracy(model, xd, yd)}
        if twin:
            sds["rep_minilm_0"] = _sd(model)
            reps.append({"of": "minilm_0", **row})
        else:
            sds[f"minilm_{s}"] = _sd(model)
            children.append({"name": f"minilm_{s}", "p": cfg.minilm_p, **row})
        ctx.log(f"seed {seed} MiniLM {'replicate' if twin else s}: ID acc {row['id_acc']:.3f}, diagnostic acc "
                f"{row['diag_acc']:.3f}")
        template = model
    batches = [({k: v[i : i + 64] for k, v in xi.items()}, yi[i : i + 64]) for i in range(0, len(yi), 64)]
    res = barrier_matrix(template, sds, batches, n_points=cfg.n_points)
    out = _analyse(res, children, reps, cfg, base)
    out["baseline_id"] = float(max(yi.float().mean(), 1 - yi.float().mean()))
    return out


def measure(ctx: RunContext, seed: int) -> dict:
    """One seed: the parent, the planted and emergent regimes (children, replicates, barrier matrices, clusters,
    permutation tests), the MiniLM arm when on, and the published HANS table when the data are there."""
    cfg = ctx.cfg
    task = HansLikeNLI()
    parent = pretrain_parent(task, steps=cfg.parent_steps, seed=seed)
    n = cfg.n_children
    base = 100_000 * (seed + 1)  # data and order seeds of this seed's children: apart from every other seed's
    planted = _regime(task, parent, [cfg.planted_p[c % 2] for c in range(n)], cfg, base)
    planted["family"] = [int(p > min(cfg.planted_p)) for p in (c["p"] for c in planted["children"])]
    planted["ari"] = float(adjusted_rand_score(planted["family"], planted["labels"]))
    ctx.log(f"seed {seed} planted: ARI {planted['ari']:.2f}, barrier within {planted['within']:.4f} / between "
            f"{planted['between']:.4f} nats, replicate floor {planted['floor']:.4f}")
    emergent = _regime(task, parent, [cfg.emergent_p] * n, cfg, base + 50_000)
    ctx.log(f"seed {seed} emergent: r(axis, diagnostic) {emergent['r_axis_diag']:.2f} (permutation p "
            f"{emergent['perm_p']:.3f}), barrier within {emergent['within']:.4f} / between {emergent['between']:.4f}"
            f", replicate floor {emergent['floor']:.4f}")
    return {"planted": planted, "emergent": emergent, "minilm": _minilm(ctx, task, seed) if cfg.minilm else None,
            "hans": read_hans(ctx)}


# ============================================================================ deciding (pure)
def learned_gate(regimes: list[dict], what: str) -> Verdict | None:
    """undecided ("not learned") when some child of some seed closes less than LEARNED of the gap from the
    constant baseline to perfect ID accuracy; None when every child learned."""
    short = []
    for s, r in enumerate(regimes):
        need = r["baseline_id"] + LEARNED * (1 - r["baseline_id"])
        short += [(s, c["name"], c["id_acc"], need) for c in r["children"] if c["id_acc"] < need]
    if not short:
        return None
    shown = "; ".join(f"seed #{s} {name} {acc:.3f} < {need:.3f}" for s, name, acc, need in short[:6])
    return undecided(f"not learned: {len(short)} {what} child(ren) below the ID accuracy that closes {LEARNED:.0%} of "
                     f"the gap from the constant baseline ({regimes[0]['baseline_id']:.3f}) to 1: {shown}",
                     not_learned=len(short))


def separation(r: dict) -> float:
    """Between-cluster mean barrier over the larger of the within-cluster mean and the replicate noise floor."""
    denom = max(r["within"], r["floor"] if r["floor"] is not None else 0.0, 1e-12)
    return float(r["between"] / denom) if np.isfinite(r["between"]) else 0.0


def _floor_text(regimes: list[dict]) -> str:
    return ("replicate floor per seed " + ", ".join(f"{r['floor']:.2g}" for r in regimes) + " nats; within "
            + ", ".join(f"{r['within']:.2g}" for r in regimes) + "; between "
            + ", ".join(f"{r['between']:.2g}" for r in regimes))


def decide_basins(per_seed: list[dict], cfg: Config) -> Verdict:
    """c1 (planted): the spectral clusters recover the families (ARI) and are separated: between-cluster barrier
    >= SEPARATION x the larger of the within-cluster barrier and the replicate floor, on every seed."""
    regimes = [n["planted"] for n in per_seed]
    gate = learned_gate(regimes, "planted")
    if gate:
        return gate
    sep = by_threshold([separation(r) for r in regimes], SEPARATION,
                       what=f"between/max(within, replicate floor) barrier ratio ({_floor_text(regimes)})", fmt=".3g")
    ari = by_threshold([r["ari"] for r in regimes], ARI_OK, what="ARI(clusters, families)", fmt=".2f")
    return all_of({"separation": sep, "ARI": ari}, "planted basins")


def cluster_strategy(r: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """((diagnostic, ID) accuracy of the lower-diagnostic cluster, the same of the other), cluster means."""
    rows = []
    for c in sorted(set(r["labels"])):
        members = [ch for ch, lab in zip(r["children"], r["labels"]) if lab == c]
        rows.append((float(np.mean([m["diag_acc"] for m in members])), float(np.mean([m["id_acc"] for m in members]))))
    if len(rows) == 1:
        rows.append((float("nan"), float("nan")))
    lo, hi = sorted(rows, key=lambda t: (np.isnan(t[0]), t[0]))[:2]
    return lo, hi


def replicate_noise(regimes: list[dict], key: str) -> float:
    """Mean over seeds and replicates of |child − replicate| for `key` (d_id_acc or d_diag_acc)."""
    vals = [rep[key] for r in regimes for rep in r["replicates"]]
    return float(statistics.fmean(vals)) if vals else 0.0


def decide_strategy(per_seed: list[dict], cfg: Config) -> Verdict:
    """c2 (planted): one cluster under DIAG_LOW on the diagnostic, the other over DIAG_HIGH, their ID accuracies
    within ID_GAP — each by more than the replicate noise of the accuracy, on every seed."""
    regimes = [n["planted"] for n in per_seed]
    gate = learned_gate(regimes, "planted")
    if gate:
        return gate
    strat = [cluster_strategy(r) for r in regimes]
    dn, idn = replicate_noise(regimes, "d_diag_acc"), replicate_noise(regimes, "d_id_acc")
    low = by_threshold([DIAG_LOW - lo[0] for lo, _ in strat], 0.0, noise=dn, fmt=".3f",
                       what=f"{DIAG_LOW} − diagnostic acc of the lower cluster (acc per seed "
                            f"{[round(lo[0], 3) for lo, _ in strat]})")
    high = by_threshold([hi[0] - DIAG_HIGH for _, hi in strat], 0.0, noise=dn, fmt=".3f",
                        what=f"diagnostic acc of the higher cluster − {DIAG_HIGH} (acc per seed "
                             f"{[round(hi[0], 3) for _, hi in strat]})")
    gap = by_threshold([ID_GAP - abs(lo[1] - hi[1]) for lo, hi in strat], 0.0, noise=idn, fmt=".3f",
                       what=f"{ID_GAP} − |ID acc gap between the clusters| (gap per seed "
                            f"{[round(abs(lo[1] - hi[1]), 3) for lo, hi in strat]})")
    return all_of({"shortcut cluster": low, "general cluster": high, "equal ID": gap}, "planted strategies")


def _axis_tracks(regimes: list[dict], what: str, p: float) -> Verdict:
    """c3/c5: same-p fine-tunes form basins above the replicate floor (separation) whose spectral axis tracks
    diagnostic accuracy (|r| above R_OK and the permutation null's chance level), on every seed."""
    gate = learned_gate(regimes, what)
    if gate:
        return gate
    n_models = min(len(r["children"]) for r in regimes)
    if 2 / math.factorial(n_models) > 1 - PERM_LEVEL:
        return undecided(f"too few models: with {n_models} {what} fine-tunes the permutation test's smallest p-value "
                         f"is 2/{n_models}! = {2 / math.factorial(n_models):.3f} > {1 - PERM_LEVEL:.2f}, so no |r| "
                         "can clear its chance level", n_models=n_models)
    ranges = [float(np.ptp([c["diag_acc"] for c in r["children"]])) for r in regimes]
    if any(x < SPLIT for x in ranges):
        return undecided(f"no split: the {what} children (p={p}) span less than {SPLIT} in diagnostic accuracy on "
                         f"some seed (range per seed {[round(x, 3) for x in ranges]}), so there is no strategy for "
                         "the axis to track", diag_range=ranges)
    chance = max(r["perm_q"] for r in regimes)
    r_abs = [abs(r["r_axis_diag"]) for r in regimes]
    corr = by_threshold(r_abs, R_OK, noise=chance, fmt=".3f",
                        what=f"|r(spectral axis, diagnostic acc)| (permutation p per seed "
                             f"{[round(r['perm_p'], 4) for r in regimes]}; noise = the largest per-seed "
                             f"{PERM_LEVEL:.0%} quantile of the permutation null)")
    sep = by_threshold([separation(r) for r in regimes], SEPARATION, fmt=".3g",
                       what=f"between/max(within, replicate floor) barrier ratio ({_floor_text(regimes)})")
    return all_of({"axis tracks diagnostic": corr, "basins above the floor": sep}, f"{what} (p={p})")


def decide_emergent(per_seed: list[dict], cfg: Config) -> Verdict:
    """c3: emergent regime (one p for every child)."""
    return _axis_tracks([n["emergent"] for n in per_seed], "emergent", cfg.emergent_p)


def decide_minilm(per_seed: list[dict], cfg: Config) -> Verdict:
    """c5: MiniLM fine-tunes (small/gpu)."""
    off = part_not_measured(per_seed, "minilm", enabled=cfg.minilm, data="the MiniLM arm's numbers",
                            budget="the MiniLM arm (minilm_models fine-tunes of MiniLM, a replicate and their barrier "
                            "matrix per seed) is off in this run, as at tiny")
    if off is not None:
        return off
    missing = [n["minilm"]["missing"] for n in per_seed if "missing" in n["minilm"]]
    if missing:
        return undecided(f"needs the packaged MiniLM: {missing[0]}")
    return _axis_tracks([n["minilm"] for n in per_seed], "MiniLM", cfg.minilm_p)


def check_published_hans(per_seed: list[dict]) -> Verdict:
    """The check: the published small MNLI cluster has lower HANS lexical-overlap non-entailed accuracy than the
    other feather BERTs (mean gap > LO_MARGIN and AUC(rest > small) >= AUC_OK). The table is the same for
    every seed; the first seed's copy is read."""
    hans = per_seed[0].get("hans") if per_seed else None
    if not hans:
        return check(None, "not run: needs the real data `lmc/feather_berts_hans_accuracy_by_run.csv` "
                           "(--data DIR or $LMLAB_DATA)")
    small, large = list(map(float, hans["small"])), list(map(float, hans["large"]))
    if not small or not large:
        return check(False, f"need runs in both groups, got {len(small)} small-cluster and {len(large)} other runs")
    auc = float(mannwhitneyu(large, small).statistic / (len(small) * len(large)))
    ms, ml = float(np.mean(small)), float(np.mean(large))
    return check(ms + LO_MARGIN < ml and auc >= AUC_OK,
                 f"{len(small) + len(large)} runs: HANS lexical-overlap non-entailed accuracy small cluster "
                 f"(n={len(small)}) {ms:.3f} vs rest (n={len(large)}) {ml:.3f}; AUC(rest > small) = {auc:.3f}; "
                 f"margin {LO_MARGIN} and AUC >= {AUC_OK}", small_mean=ms, large_mean=ml, auc=auc,
                 n_runs=len(small) + len(large))


def decide(per_seed: list[dict], cfg: Config) -> dict[str, Verdict]:
    return {"c1_basins": decide_basins(per_seed, cfg), "c2_strategy": decide_strategy(per_seed, cfg),
            "c3_emergent": decide_emergent(per_seed, cfg), "c4_real_mnli": not_tested(PAPER_C4),
            "c5_minilm": decide_minilm(per_seed, cfg), "k1_published_hans": check_published_hans(per_seed)}


# ============================================================================ summarizing
def summarize(ctx: RunContext, per_seed: list[dict], verdicts: dict) -> None:
    """Per-seed barrier summaries, the first seed's fine-tunes, and the first seed's heatmaps."""
    rep, seeds = ctx.report, ctx.report.seeds
    arms = [a for a in ("planted", "emergent", "minilm") if per_seed and per_seed[0].get(a)
            and "missing" not in per_seed[0][a]]
    rows = []
    for s, n in zip(seeds, per_seed):
        for a in arms:
            r = n[a]
            rows.append([s, a, r["floor"], r["within"], r["between"], separation(r), r["D_median"], r["D_max"],
                         r.get("ari", "n/a"), r["r_axis_diag"], r["perm_p"],
                         min(c["id_acc"] for c in r["children"])])
    rep.table(rows, ["seed", "arm", "replicate floor", "within", "between", "between/max(within, floor)",
                     "median barrier", "max barrier", "ARI", "r(axis, diag)", "perm. p", "min ID acc"],
              title="Barriers (mod_BH on ID loss, nats) per seed and arm")
    for a in arms:
        rep.metric(a, {k: [n[a][k] for n in per_seed] for k in ("floor", "within", "between", "D_mean", "r_axis_diag",
                                                                 "perm_p")})
        first = per_seed[0][a]
        rep.table([[c["name"], c["p"], c["id_acc"], c["diag_acc"], lab]
                   for c, lab in zip(first["children"], first["labels"])],
                  ["model", "p_swap", "ID acc", "diagnostic acc", "cluster"], title=f"{a}: fine-tunes of seed {seeds[0]}")
        names = [c["name"] for c in first["children"]]
        diag = [c["diag_acc"] for c in first["children"]]
        rep.figure(plot_barrier_heatmap(np.array(first["D"]), names, order=diag, labels=first["labels"],
                                        title=f"{a}, seed {seeds[0]}: mod_BH barrier (ID loss)"), f"{a}_barriers",
                   f"{a}, seed {seeds[0]}: pairwise max-subsegment barriers, models ordered by cluster then diagnostic "
                   f"accuracy; replicate floor {first['floor']:.3g} nats.")


experiment(
    name="lmc_basins",
    paper="Linear Connectivity Reveals Generalization Strategies (Juneja et al., ICLR 2023)",
    claims={
        "c1_basins": "Planted regime: fine-tunes of one parent form two spectral clusters of the barrier matrix "
                     "that recover the training families (ARI >= 0.8), separated by barriers (between-cluster "
                     "mean >= 3x the larger of the within-cluster mean and the replicate noise floor).",
        "c2_strategy": "Planted regime: cluster membership matches the generalization strategy: one cluster "
                       "fails the diagnostic swaps (< 20 %), the other passes (> 60 %), at equal ID accuracy "
                       "(within 2 points).",
        "c3_emergent": "Emergent regime (same p for all seeds): the fine-tunes form basins above the replicate "
                       "noise floor whose spectral axis correlates with diagnostic accuracy (|Pearson r| >= 0.5 "
                       "and above the permutation test's 95th percentile).",
        "c4_real_mnli": "Real data: the 100 MNLI feather BERTs split into linearly disconnected clusters of the "
                        "barrier matrix, and the small cluster has lower HANS lexical-overlap non-entailed "
                        "accuracy than the rest.",
        "c5_minilm": "Seeds of the pretrained MiniLM fine-tuned on the synthetic NLI task form basins above the "
                     "replicate noise floor whose spectral axis tracks diagnostic accuracy (small/gpu presets).",
    },
    checks={
        "k1_published_hans": "Published data re-read: joining the authors' small-cluster list with McCoy's HANS "
                             "table, the small cluster has lower lexical-overlap non-entailed accuracy than the "
                             "other feather BERTs (the paper's own result; it cannot fail here).",
    },
    presets=PRESETS,
    needs_data=("lmc",),
    decide=decide,
    summarize=summarize,
)(measure)

