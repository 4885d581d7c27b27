"""Score dilution and query-only test-time training (qTTT) vs thinking tokens (spec 04), on the decision engine.

`measure(ctx, seed)` returns one seed's numbers: the mechanism part (`mechanism.py`: the lemma checks, a hand-built
retrieval head and the oracle-loss W_Q update — checks, not claims) and the language-model part (`lm.py`: a toy LM
trained on every target of a long-context retrieval task over the whole evaluated length range, then in-context,
thinking at qTTT's FLOPs, qTTT with its span loss on the LM's own training targets, and the retrieval-weighted
ablation at each length). The pure `decide_c1/c2/c3` and `decide_k*` turn the per-seed numbers into verdicts by
`lmlab.verdict.RULE`; `summarize` writes the tables and the figure.

Claims are decided only on an LM that retrieves (≥ `LEARNED_ACC` at the shortest length on every seed), else they
are undecided (not learned) with the numbers. Self-consistency is not run: the answer is one token, so a majority
vote over samples of one softmax converges to greedy decoding (spec §13 step 3e); the T_think-equivalent budget is
in `flop_budget`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from lmlab.experiment import RunContext, experiment, presets
from lmlab.methods.qttt import lm, mechanism
from lmlab.methods.qttt.tasks import TARGET_TYPES
from lmlab.utils import LmlabError, tiny_threads
from lmlab.verdict import Verdict, by_threshold, check, rounded, undecided

PAPER = ("Bansal et al., Let's (not) just put things in Context: Test-Time Training for Long-Context LLMs (qTTT), "
         "2025")
CLAIMS = {
    "c1_dilution": "Accuracy and the retrieval head's attention mass on the needle fall as the context grows, at "
                   "positions and line counts the LM was trained on (score dilution).",
    "c2_thinking": "Thinking tokens at the FLOPs of the qTTT budget do not recover the long-context accuracy lost "
                   "(they recover less than half of the short-to-long drop).",
    "c3_qttt": "qTTT (next-token loss on random spans over the frozen cache, W_Q only) raises accuracy at long context, "
               "by more than at short context, and raises the needle's attention mass.",
}
CHECKS = {
    "k1_theory": "Lemmas 2.2/2.3, Prop. 3.1 and Lemma 3.2 hold numerically on random instances (spec §12 Q1–Q4).",
    "k2_head_dilution": "A hand-built retrieval head trained on near-duplicate keys loses accuracy and needle mass as "
                        "lines grow (the dilution mechanism, no language model).",
    "k3_oracle_update": "Updating that head's W_Q on the oracle retrieval loss helps more at long than at short context "
                        "(Prop. 3.1's objective; not qTTT).",
    "k4_span_targets": "qTTT's span loss covers only targets the LM was trained on, with the same weights.",
}

# ---- margins, each with its source (written before any run of this version)
C1_MARGIN = 0.05  # accuracy drop short → long that counts as dilution: the old decide's "gap > 0.05" for a drop
MASS_FALL = 0.2  # the retrieval head's needle mass at the longest length ≤ 0.8× the shortest's (the old c1 rule)
C3_MARGIN = 0.05  # spec 04 §13 step 5: qTTT's gain at the longest length ≥ +5 points for the confirming pattern
C3_MORE = 0.0  # "more than at short context": long gain − short gain above 0 (and above its sampling noise)
Z95 = 1.96  # the measured sampling noise of an accuracy effect: 1.96 × its standard error over the eval contexts


@dataclass
class Config:
    """One seed: the mechanism checks (`mechanism`) and a toy LM on `task` ("prefix": two-token keys with
    near-duplicate prefixes; "kv": one-token keys), trained in circuit phases of `phase_steps` (up to
    `circuit_max_steps`) then calibration phases of `calib_steps` on every target (up to `max_steps` in all), and
    evaluated at each of `lengths` (lines) on `n_eval` contexts."""

    seeds: int = 2
    mechanism: bool = True
    # mechanism part: the lemma checks, one hand-built head, the oracle-loss W_Q update
    lemma_instances: int = 40
    head_dim: int = 32
    head_families: int = 8
    family_share: float = 0.7
    head_train_lines: int = 16
    head_steps: int = 300
    head_lr: float = 0.05
    head_lengths: list[int] = field(default_factory=lambda: [16, 64, 256, 1024])
    head_n_eval: int = 64
    oracle_steps: int = 32
    oracle_lr: float = 0.05
    oracle_events: int = 16
    # the task
    task: str = "kv"
    n_prefixes: int = 4
    n_suffixes: int = 32  # keys of the "kv" task
    n_values: int = 16
    n_checks: int = 4
    near_frac: float = 0.5
    repeat_frac: float = 0.5
    circuit_repeat_frac: float = 0.8  # the repeated-line share of the circuit phases' rows (denser retrieval events)
    # the toy LM and its training
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    lr: float = 3e-3
    batch_size: int = 16
    circuit_batch: int = 32  # the circuit phases' batch (more retrieval events per step)
    circuit_max_lines: int = 0  # the circuit phases' longest rows (0: the longest evaluated length)
    phase_steps: int = 1000
    circuit_max_steps: int = 3000
    calib_steps: int = 400
    max_steps: int = 2200
    calib_max_steps: int = 0  # the calibration phases' own budget (0: only max_steps bounds them)
    calib_lr_frac: float = 1.0  # calibration phases' learning rate as a share of lr (below 1: keep the formed circuit)
    all_weight: float = 1.0  # calibration phases: the weight of unpredictable targets (1 = every token alike)
    answer_weight: float = 1.0
    pause_frac: float = 0.3
    think_max: int = 96
    n_check: int = 32  # contexts of the training-time retrieval / pause probe
    # evaluation and qTTT
    lengths: list[int] = field(default_factory=lambda: [4, 12, 24])
    n_eval: int = 64
    n_val: int = 24
    ttt_steps: int = 8
    ttt_span: int = 8
    ttt_lrs: list[float] = field(default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2])
    eval_batch: int = 64
    span_targets: str = "trained"  # "trained": the LM's last-phase target weights; "all": every token (ablation)
    stop_if_not_learned: bool = True


PRESETS = presets(
    Config,
    tiny={},
    # sized from CPU runs (docs/results/checks/qttt_small_trials.md): with tiny's width the two-token task forms its
    # circuit on <= 32-line rows after a seed-dependent plateau of 3000-34500 steps of 500-step phases (1000-step
    # phases had not by 6000), hence a 40000-step budget; calibration at the full lr undid half of a partly formed
    # circuit; 4-32 lines did not dilute (0.969-0.992 at 32), so the lengths reach 128 lines (a suffix per line);
    # pauses are trained up to 112, the FLOP-matched count at 128 lines (98 at 4)
    small={"seeds": 3, "task": "prefix", "n_suffixes": 128, "n_checks": 8, "repeat_frac": 0.25, "circuit_batch": 64,
           "circuit_max_lines": 32, "phase_steps": 500, "circuit_max_steps": 40000, "calib_steps": 2000,
           "calib_max_steps": 4000, "calib_lr_frac": 0.3, "max_steps": 44000, "think_max": 112,
           "lengths": [4, 32, 128], "n_eval": 128, "n_val": 48},
    gpu={"seeds": 3, "mechanism": True, "task": "prefix", "n_prefixes": 8, "n_suffixes": 1024, "n_values": 64,
         "n_checks": 16, "repeat_frac": 0.25, "d_model": 256, "n_layers": 4, "n_heads": 4, "lr": 1e-3,
         "batch_size": 64, "circuit_batch": 64, "phase_steps": 2000, "circuit_max_steps": 8000, "calib_steps": 1000, "max_steps": 12000,
         "think_max": 600, "lengths": [32, 128, 512, 1024], "n_eval": 256, "n_val": 64, "ttt_steps": 16,
         "ttt_span": 16, "ttt_lrs": [1e-6, 1e-5, 1e-4, 1e-3], "eval_batch": 32},
)


# ============================================================================ measuring (one seed)
def measure(ctx: RunContext, seed: int) -> dict:
    """One seed's numbers: the mechanism checks (when `mechanism`) and the LM part."""
    cfg = ctx.cfg
    if cfg.span_targets not in ("trained", "all"):
        raise LmlabError(f"span_targets must be 'trained' or 'all', got {cfg.span_targets!r}")
    if ctx.device.type == "cpu":
        tiny_threads()  # tiny matrices: intra-op threads cost far more than they give (the runner restores them)
    out = {}
    if cfg.mechanism:
        out["mechanism"] = mechanism.measure(cfg, seed)
    out["lm"] = lm.measure(cfg, seed, ctx.device, ctx.log)
    return out


# ============================================================================ deciding (pure)
def _se(x: list[float]) -> float:
    return statistics.stdev(x) / math.sqrt(len(x)) if len(x) > 1 else float("inf")


def _paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of b − a over the same contexts."""
    d = [y - x for x, y in zip(a, b)]
    return float(np.mean(d)), _se(d)


def _unpaired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of mean(a) − mean(b) over different contexts."""
    return float(np.mean(a) - np.mean(b)), math.sqrt(_se(a) ** 2 + _se(b) ** 2)


def _lm_gate(per_seed: list[dict]) -> Verdict | None:
    """Undecided (not learned) unless the LM retrieves ≥ LEARNED_ACC at the shortest length on every seed."""
    parts = [n["lm"] for n in per_seed]
    acc = [p["learned_acc"] for p in parts]
    if any(a < lm.LEARNED_ACC for a in acc) or any("rows" not in p for p in parts):
        by_len = [p.get("ic_by_length") or {str(r["lines"]): r["arms"]["ic"]["acc"] for r in p.get("rows", [])}
                  for p in parts]
        steps = [p["train"]["steps"] for p in parts]
        ran = sum("rows" in p for p in parts)
        arms = ("its thinking and qTTT numbers are not compared" if ran == len(parts) else
                "the thinking and qTTT arms were not run" + (" on every seed" if ran else ""))
        return undecided(f"not learned: in-context accuracy at the shortest length per seed {rounded(acc)} is below "
                         f"{lm.LEARNED_ACC} on {sum(a < lm.LEARNED_ACC for a in acc)} of {len(acc)} seeds after "
                         f"{steps} training steps (in-context accuracy by length per seed {by_len}); there is no "
                         f"retrieval to dilute or recover, and {arms}", learned_acc=acc)
    return None


def _rows(n: dict) -> tuple[dict, dict]:
    rows = n["lm"]["rows"]
    return rows[0], rows[-1]


def _drops(per_seed: list[dict]) -> tuple[list[float], list[float]]:
    """Per seed: the in-context accuracy drop shortest → longest length and its standard error."""
    out = [_unpaired(s["arms"]["ic"]["correct"], l["arms"]["ic"]["correct"]) for s, l in map(_rows, per_seed)]
    return [d for d, _ in out], [se for _, se in out]


def _combine(main: Verdict, other: Verdict, why: str, **numbers) -> Verdict:
    """Held when both hold, not held when either fails, else undecided; the main verdict's numbers."""
    held = True if main.held and other.held else False if False in (main.held, other.held) else None
    return Verdict(held, f"{main.reason}. {why}: {other.reason}", effect=main.effect, per_seed=main.per_seed,
                   spread=main.spread, interval=main.interval, margin=main.margin, noise=main.noise,
                   threshold=main.threshold, n=main.n, extra=numbers)


def decide_c1(per_seed: list[dict], cfg: Config) -> Verdict:
    gate = _lm_gate(per_seed)
    if gate is not None:
        return gate
    drop, se = _drops(per_seed)
    s0, l0 = _rows(per_seed[0])
    what = f"in-context accuracy drop from {s0['lines']} to {l0['lines']} lines (trained line counts and positions)"
    v_acc = by_threshold(drop, C1_MARGIN, noise=Z95 * max(se), what=what, fmt=".3f")
    mass = [(s["arms"]["ic"]["mass"], l["arms"]["ic"]["mass"]) for s, l in map(_rows, per_seed)]
    fall = [1 - ml / max(ms, 1e-12) for ms, ml in mass]
    v_mass = by_threshold(fall, MASS_FALL, what="relative fall of the retrieval head's needle mass", fmt=".3f")
    return _combine(v_acc, v_mass, f"needle mass per seed {[f'{a:.3f} → {b:.3f}' for a, b in mass]}",
                    drop=drop, mass=mass)


def decide_c2(per_seed: list[dict], cfg: Config) -> Verdict:
    gate = _lm_gate(per_seed)
    if gate is not None:
        return gate
    short_think = [(s["arms"]["think"]["acc"], s["arms"]["ic"]["acc"]) for s, _ in map(_rows, per_seed)]
    pauses = [(s["m_think"], l["m_think"]) for s, l in map(_rows, per_seed)]
    if any(t < ic - lm.PAUSE_TOL for t, ic in short_think):
        return undecided(f"thinking not learned: at the shortest length accuracy with the matched pause tokens vs "
                         f"without, per seed {[f'{t:.3f} vs {ic:.3f}' for t, ic in short_think]} — pauses cost more "
                         f"than {lm.PAUSE_TOL} on some seed (pause counts short/long {pauses}; trained up to "
                         f"{cfg.think_max}), so the thinking baseline is not one the LM can use", think=short_think)
    if max(m for pair in pauses for m in pair) > cfg.think_max:
        return undecided(f"the FLOP-matched pause counts (short, long) per seed {pauses} exceed the {cfg.think_max} "
                         "the LM was trained with: the thinking arm runs pause counts it never saw (raise think_max)",
                         pauses=pauses)
    drop, _ = _drops(per_seed)
    if any(d <= C1_MARGIN for d in drop):
        return undecided(f"no long-context drop to recover: in-context accuracy drop per seed {rounded(drop)} is "
                         f"within {C1_MARGIN} on some seed", drop=drop)
    rec = [_paired(l["arms"]["ic"]["correct"], l["arms"]["think"]["correct"]) for _, l in map(_rows, per_seed)]
    shortfall = [0.5 * d - r for d, (r, _) in zip(drop, rec)]
    v = by_threshold(shortfall, 0.0, noise=Z95 * max(se for _, se in rec), what="half the short→long drop minus the "
                     "accuracy thinking recovers at the longest length", fmt=".3f")
    return Verdict(v.held, f"{v.reason}; recovery per seed {rounded([r for r, _ in rec])}, drop {rounded(drop)}, "
                   f"pause tokens (short, long) {pauses}; at short context thinking vs in-context "
                   f"{[f'{t:.3f} vs {ic:.3f}' for t, ic in short_think]}", effect=v.effect, per_seed=v.per_seed,
                   spread=v.spread, interval=v.interval, margin=v.margin, noise=v.noise, threshold=v.threshold,
                   n=v.n, extra={"recovery": [r for r, _ in rec], "drop": drop})


def decide_c3(per_seed: list[dict], cfg: Config) -> Verdict:
    gate = _lm_gate(per_seed)
    if gate is not None:
        return gate
    drop, _ = _drops(per_seed)
    parts = [n["lm"] for n in per_seed]
    ablation = []
    for p in parts:
        s, l = p["rows"][0], p["rows"][-1]
        ablation.append(_paired(l["arms"]["ic"]["correct"], l["arms"]["qttt_retrieval"]["correct"])[0])
    detail = (f"lr per seed {[p['lr']['qttt'] for p in parts]} (grid {cfg.ttt_lrs}, W_Q element std per seed "
              f"{[rounded(p['wq_std']) for p in parts]}); the retrieval-weighted ablation changes long-context "
              f"accuracy by {rounded(ablation)} per seed (lr {[p['lr']['qttt_retrieval'] for p in parts]})")
    if any(d <= C1_MARGIN for d in drop):
        return undecided(f"no long-context drop to recover: in-context accuracy drop per seed {rounded(drop)} is "
                         f"within {C1_MARGIN} on some seed; {detail}", drop=drop)
    g_l, g_s, mass = [], [], []
    for p in parts:
        s, l = p["rows"][0], p["rows"][-1]
        g_l.append(_paired(l["arms"]["ic"]["correct"], l["arms"]["qttt"]["correct"]))
        g_s.append(_paired(s["arms"]["ic"]["correct"], s["arms"]["qttt"]["correct"]))
        mass.append(l["arms"]["qttt"]["mass"] - l["arms"]["ic"]["mass"])
    s0, l0 = _rows(per_seed[0])
    v_gain = by_threshold([g for g, _ in g_l], C3_MARGIN, noise=Z95 * max(se for _, se in g_l),
                          what=f"qTTT's accuracy gain at {l0['lines']} lines", fmt=".3f")
    more = [gl - gs for (gl, _), (gs, _) in zip(g_l, g_s)]
    v_more = by_threshold(more, C3_MORE, noise=Z95 * max(math.hypot(a, b) for (_, a), (_, b) in zip(g_l, g_s)),
                          what=f"its gain at {l0['lines']} minus at {s0['lines']} lines", fmt=".3f")
    v = _combine(v_gain, v_more, "and longer than shorter", gain_long=[g for g, _ in g_l],
                 gain_short=[g for g, _ in g_s], mass_gain=mass, ablation=ablation)
    held = v.held
    if held and not all(m > 0 for m in mass):
        held = None
    if held is None and v_gain.held is not False and v_more.held is not False and all(m < 0 for m in mass):
        held = False
    why = "" if held == v.held else f" — needle mass gain per seed {rounded(mass)} changes the verdict"
    return Verdict(held, f"{v.reason}; needle mass gain at the longest length per seed {rounded(mass)}{why}; {detail}",
                   effect=v.effect, per_seed=v.per_seed, spread=v.spread, interval=v.interval, margin=v.margin,
                   noise=v.noise, threshold=v.threshold, n=v.n, extra=v.extra)


def untrained_span_types(n_lm: dict) -> list[str]:
    """Target types qTTT's span loss weighs that the LM's last training phase did not (weight 0 there)."""
    span, train = n_lm.get("span_target_weights") or {}, n_lm.get("train_target_weights") or {}
    return [t for t in TARGET_TYPES if span.get(t, 0) > 0 and train.get(t, 0) == 0]


def decide_k4(per_seed: list[dict], cfg: Config) -> Verdict:
    """On the seeds that ran qTTT (an LM that did not learn skips it): its span weights against the training's."""
    parts = [n["lm"] for n in per_seed if "span_target_weights" in n["lm"]]
    if not parts:
        return check(None, "not run: the LM did not learn to retrieve, so qTTT was not run")
    bad = [untrained_span_types(p) for p in parts]
    diff = [sorted(t for t in TARGET_TYPES if p["span_target_weights"].get(t, 0) != p["train_target_weights"].get(t, 0))
            for p in parts]
    if any(bad):
        return check(False, f"qTTT's span loss includes targets the LM was not trained on: types {bad} per seed "
                     f"(span weights {parts[0]['span_target_weights']}, training weights "
                     f"{parts[0]['train_target_weights']})", untrained=bad)
    ran = "" if len(parts) == len(per_seed) else f" (on the {len(parts)} of {len(per_seed)} seeds that ran qTTT)"
    return check(not any(diff), "qTTT's span loss weighs each target type as the LM's last training phase did "
                 f"({parts[0]['span_target_weights']}){ran}" if not any(diff) else
                 f"qTTT's span loss weighs types {diff} per seed otherwise than training did", differ=diff)


def decide(per_seed: list[dict], cfg: Config) -> dict[str, Verdict]:
    out = {"c1_dilution": decide_c1(per_seed, cfg), "c2_thinking": decide_c2(per_seed, cfg),
           "c3_qttt": decide_c3(per_seed, cfg), "k4_span_targets": decide_k4(per_seed, cfg)}
    if all("mechanism" in n for n in per_seed):
        out |= {"k1_theory": mechanism.decide_theory(per_seed), "k2_head_dilution": mechanism.decide_head(per_seed),
                "k3_oracle_update": mechanism.decide_oracle(per_seed)}
    else:
        reason = "not run: mechanism is off in this run"
        out |= {k: check(None, reason) for k in ("k1_theory", "k2_head_dilution", "k3_oracle_update")}
    return out


# ============================================================================ the report
def summarize(ctx: RunContext, per_seed: list[dict], verdicts: dict) -> None:
    rep, cfg = ctx.report, ctx.cfg
    parts = [n["lm"] for n in per_seed]
    rep.table([[n_seed, ph["phase"], ph["steps"], round(ph["loss"], 4), round(ph["probe_acc"], 3),
                round(ph.get("probe_think_acc", float("nan")), 3)]
               for n_seed, p in zip(ctx.report.seeds, parts) for ph in p["train"]["phases"]],
              ["seed", "phase", "steps", "loss (last 20)", "acc at shortest", f"with {cfg.think_max} pauses"],
              "Training phases: circuit (checks, retrieved values, answer) then calibration (every target)")
    if any("rows" not in p for p in parts):
        rep.text("The LM did not retrieve on some seed: the arms were not run (see c1).")
        _mechanism_tables(rep, per_seed)
        return
    rows = []
    for i, n in enumerate(parts[0]["lengths"]):
        for a in lm.ARMS:
            rows.append([n, parts[0]["rows"][i]["T"], round(_mean([p["rows"][i]["distinct_distractors"] for p in parts]), 1),
                         a, round(_mean([p["rows"][i]["arms"][a]["acc"] for p in parts]), 3),
                         round(_mean([p["rows"][i]["arms"][a]["mass"] for p in parts]), 4),
                         parts[0]["rows"][i]["m_think"] if a == "think" else ""])
    rep.table(rows, ["lines", "tokens", "distinct distractors", "arm", "accuracy",
                     "needle mass (retrieval head; the needle line and the token after it)", "pause tokens"],
              f"Long-context retrieval, mean over {len(parts)} seeds (per-seed numbers in results.json)")
    srows = []
    for i, n in enumerate(parts[0]["lengths"]):
        for t in TARGET_TYPES:
            vals = {k: [p["rows"][i]["span_loss"][k].get(t) for p in parts] for k in ("before", "qttt", "qttt_retrieval")}
            if any(v is None for v in vals["before"]):
                continue
            srows.append([n, t, round(_mean(vals["before"]), 3), round(_mean(vals["qttt"]), 3),
                          round(_mean(vals["qttt_retrieval"]), 3), parts[0]["span_target_weights"].get(t, 0.0)])
    rep.table(srows, ["lines", "target type", "loss before", "after qTTT", "after retrieval-weighted qTTT",
                      "qTTT span weight"], "Next-token loss per target type over the evaluated contexts, before and "
              "after adaptation (mean over seeds)")
    bad = untrained_span_types(parts[0])
    rep.text("qTTT's span loss " + (f"INCLUDES targets the LM was not trained on: {bad}." if bad else
             f"covers the targets the LM was trained on in its last phase, with the same weights "
             f"({parts[0]['span_target_weights']})."))
    std = [min(p["wq_std"]) for p in parts]
    rep.table([[g["arm"], g["lr"], round(lm.lr_over_std(g["lr"], cfg.ttt_steps, std[0]), 4), round(g["base_acc"], 3),
                round(g["val_acc"], 3), round(g["val_logp"], 3)] for g in parts[0]["lr_grid"]],
              ["arm", "lr", "N·lr / W_Q std", "val acc (no qTTT)", "val acc", "val log p(answer)"],
              f"qTTT learning-rate grid on {cfg.n_val} held-out contexts at the longest length (seed "
              f"{ctx.report.seeds[0]}); chosen per seed: {[p['lr'] for p in parts]}")
    rep.metric("flop_budget", parts[0]["flop_budget"])
    _mechanism_tables(rep, per_seed)
    _plot(rep, parts)


def _mean(xs) -> float:
    return float(np.mean(xs))


def _mechanism_tables(rep, per_seed):
    if not all("mechanism" in n for n in per_seed):
        return
    rows = []
    for i, r in enumerate(per_seed[0]["mechanism"]["head"]):
        rows.append([r["lines"]] + [round(float(np.mean([n["mechanism"]["head"][i][k] for n in per_seed])), 3)
                                    for k in ("acc", "mass", "acc_oracle", "mass_oracle")])
    rep.table(rows, ["lines", "accuracy", "needle mass", "accuracy after the oracle-loss W_Q update (not qTTT)",
                     "needle mass after it"], "Hand-built retrieval head with near-duplicate keys (no language model; "
              "checks, not claims)")


def _plot(rep, parts):
    import matplotlib  # heavy: imported only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = parts[0]["lengths"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for a in lm.ARMS:
        for ax, key in zip(axes, ("acc", "mass")):
            ax.plot(lengths, [np.mean([p["rows"][i]["arms"][a][key] for p in parts]) for i in range(len(lengths))],
                    marker="o", label=a)
    for ax, yl in zip(axes, ("accuracy", "needle mass (retrieval head)")):
        ax.set_title(f"{yl} by length", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (lines)")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    rep.figure(fig, "accuracy_mass", "Toy LM: accuracy and retrieval-head needle mass vs context length (mean over "
               "seeds)")


experiment(name="long_context_ttt", paper=PAPER, claims=CLAIMS, checks=CHECKS, presets=PRESETS, decide=decide,
           summarize=summarize)(measure)
