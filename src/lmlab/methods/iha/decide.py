"""How iha_synthetic decides, from the per-seed numbers of `measure` (pure functions; `lmlab.verdict.RULE`).

c1 and c2 are claims, not checks, although they train the paper's constructions: whether Adam finds the IHA
construction at equal heads is an empirical matter (it can fail), and c2's MHA side rests on the known
constructions, not on a lower bound. Only c1's "MHA(H=2) cannot" is guaranteed (the rank argument of Sec. 4.2); it
is one part of the claim. Both are proxies of the paper's parameter-count separations and say so in their text.
The MHA(H=4) control must fit each task (learned before compared). c3 compares models trained to convergence with
early stopping, once MHA has learned more than a constant guess; c4 compares at the trained length, once the MHA
LM retrieves there. The inclusion MHA ⊆ IHA and the FLOP-matching of the hybrid are arithmetic: checks.
"""

from __future__ import annotations

import math

from lmlab.verdict import Verdict, all_of, by_threshold, check, part_not_measured, rounded, undecided

# ---- margins, each with its source (committed before any run of this version)
NMSE_FIT, NMSE_FAIL = 1e-2, 0.1  # spec §13.1 I5: fitted below 1e-2, cannot fit above 0.1
ACC_OK, ACC_FAIL = 0.99, 0.1  # spec §13.1 I6: workspace built above 0.99 row accuracy, not built below 0.1
REL_GAIN = 1.0  # spec §13.2 G-IHA-1: IHA − MHA of at least 1 point of test token accuracy
LEARNED_SHARE = 0.5  # c3 learned: MHA removes at least half of the constant guess's token errors. Committed with this
#                      version; the audit of the previous one found 72.7–72.9 % against a constant guess of ≈ 59 %
#                      (a third of its errors) with 0.1–4.6 % exact matrices, which is not composing relations
NIAH_LEARNED = 50.0  # c4 learned: the MHA LM retrieves at least half of the queried values (string_match_all) at
#                      the trained length, the training target of `niah_target`
NIAH_MARGIN = 5.0  # c4: hybrid − MHA of at least 5 string_match_all points (the previous version's committed margin)
INCLUSION_TOL = 1e-5  # spec §7, I1: IHA with MHA's weights and identity mixing equals MHA to 1e-5
FLOP_MATCHED = 1.0  # k2: the hybrid's attention FLOPs at most the all-MHA stack's (3/5 under the paper's convention)

POLY_MODELS = ("MHA H=2", "IHA H=2 P=2", "MHA H=4 (control)")


def decide_c1(per_seed: list[dict]) -> Verdict:
    """c1: the MHA(H=4) control fits in every seed (else not learned); IHA(H=2,P=2) fits (nmse < NMSE_FIT) and
    MHA(H=2) cannot (nmse > NMSE_FAIL), every seed. Effects in decades: log10 of the ratio to the threshold."""
    mha2, iha, mha4 = ([n["poly"][m]["nmse"] for n in per_seed] for m in POLY_MODELS)
    shown = (f"test nmse per seed: IHA(H=2,P=2) {rounded(iha, 6)}, MHA(H=2) {rounded(mha2, 4)}, "
             f"MHA(H=4) {rounded(mha4, 6)}")
    if any(e >= NMSE_FIT for e in mha4):
        return undecided(f"not learned: the control MHA(H=4) did not fit the filter bank (nmse < {NMSE_FIT}) in every "
                         f"seed, so the optimiser, not the heads, may limit; {shown}", mha4=mha4)
    return all_of({
        "IHA(H=2,P=2) fits": by_threshold([math.log10(NMSE_FIT / e) for e in iha], 0.0, fmt=".3g",
                                          what=f"decades of IHA(H=2,P=2) test nmse below {NMSE_FIT}"),
        "MHA(H=2) cannot": by_threshold([math.log10(e / NMSE_FAIL) for e in mha2], 0.0, fmt=".3g",
                                        what=f"decades of MHA(H=2) test nmse above {NMSE_FAIL}"),
    }, f"IHA with 2 heads fits the k=4 filter bank, MHA with 2 heads cannot ({shown})")


def decide_c2(per_seed: list[dict]) -> Verdict:
    """c2: the MHA(H=4) control builds the workspace in every seed (else not learned); IHA(H=P=2) row accuracy
    above ACC_OK and MHA(H=2) below ACC_FAIL, every seed."""
    mha2, iha, mha4 = ([n["cpm3"][m]["row_acc"] for n in per_seed] for m in POLY_MODELS)
    shown = (f"row accuracy per seed: IHA(H=P=2) {rounded(iha, 4)}, MHA(H=2) {rounded(mha2, 4)}, "
             f"MHA(H=4) {rounded(mha4, 4)}")
    if any(a <= ACC_OK for a in mha4):
        return undecided(f"not learned: the control MHA(H=4) did not build the workspace (row accuracy > {ACC_OK}) "
                         f"in every seed; {shown}", mha4=mha4)
    return all_of({
        "IHA(H=P=2) builds it": by_threshold([a - ACC_OK for a in iha], 0.0, fmt=".4f",
                                             what=f"IHA(H=P=2) row accuracy minus {ACC_OK}"),
        "MHA(H=2) cannot": by_threshold([ACC_FAIL - a for a in mha2], 0.0, fmt=".4f",
                                        what=f"{ACC_FAIL} minus MHA(H=2) row accuracy"),
    }, f"IHA with H=P=2 builds the CPM-3 workspace, MHA with 2 heads does not ({shown})")


def _cell_name(c: dict) -> str:
    return f"{'R∘R' if c['order'] == 2 else 'R∘R∘R'} lr {c['lr']:g}"


def decide_c3(per_seed: list[dict], cfg) -> Verdict:
    """c3: in every (task, learning rate) cell IHA beats MHA by REL_GAIN test token-accuracy points beyond the test
    split's noise (twice the largest standard error of the paired per-example difference), every seed — once MHA
    learned (removes LEARNED_SHARE of the constant guess's errors) and both models converged (early stopping fired
    before the step cap) in every cell and seed."""
    off = part_not_measured(per_seed, "relations", enabled=cfg.relations, data="the relation-composition numbers",
                            preset="small", budget="two learning rates × two tasks × MHA and IHA(P=8), each trained until early "
                            "stopping, cost about 6 CPU-minutes a seed even on small's 4..6 matrices with a 450-step cap "
                            "(docs/results/checks/iha_sizing.md)")
    if off is not None:
        return off
    short, unconverged = [], []
    for i, n in enumerate(per_seed):
        for c in n["relations"]["cells"]:
            need = c["constant"] + LEARNED_SHARE * (100.0 - c["constant"])
            if c["mha"]["test_acc"] < need:
                short.append(f"seed #{i} {_cell_name(c)}: MHA {c['mha']['test_acc']:.1f} % (exact matrices "
                             f"{c['mha']['exact']:.1f} %) vs constant guess {c['constant']:.1f} %, needs {need:.1f} %")
            for m in ("mha", "iha"):
                if not c[m]["stopped"]:
                    unconverged.append(f"seed #{i} {_cell_name(c)} {m.upper()}: still improving at the "
                                       f"{c[m]['steps']}-step cap (best validation {c[m]['val_acc']:.1f} % at step "
                                       f"{c[m]['best_step']})")
    if short or unconverged:
        head = "not learned" if short else "not converged"
        parts = ([f"MHA did not remove {LEARNED_SHARE:.0%} of the constant guess's errors in {len(short)} cell(s): "
                  + "; ".join(short)] if short else []) + (
                 [f"{len(unconverged)} run(s) hit the step cap before early stopping: " + "; ".join(unconverged)]
                 if unconverged else [])
        return undecided(f"{head}: " + " — ".join(parts), short=short, unconverged=unconverged)
    cells = per_seed[0]["relations"]["cells"]
    noise = 2 * max(c["diff_se"] for n in per_seed for c in n["relations"]["cells"])
    parts = {}
    for j, c in enumerate(cells):
        diffs = [n["relations"]["cells"][j]["iha"]["test_acc"] - n["relations"]["cells"][j]["mha"]["test_acc"]
                 for n in per_seed]
        parts[_cell_name(c)] = by_threshold(diffs, REL_GAIN, noise=noise, fmt=".3g",
                                            what="IHA − MHA test token accuracy (points)")
    return all_of(parts, f"IHA(P={cfg.rel_pseudo}) beats MHA on both tasks at both learning rates (noise = twice the "
                         "largest standard error of the paired per-example difference)")


def decide_c4(per_seed: list[dict], cfg) -> Verdict:
    """c4: the hybrid's string_match_all at the trained length exceeds MHA's by NIAH_MARGIN beyond the prompts'
    sampling noise, every seed — once the MHA LM retrieves (>= NIAH_LEARNED) there in every seed."""
    off = part_not_measured(per_seed, "niah", enabled=cfg.niah, data="the needle-retrieval numbers", preset="gpu",
                            budget="two 5-layer character LMs trained at 1024 tokens for up to 3000 steps of batch 32 "
                            "cost about 19 s (MHA) and 51 s (hybrid) a step on one CPU thread, days in all "
                            "(docs/results/checks/iha_sizing.md)")
    if off is not None:
        return off
    mha = [n["niah"]["mha"]["score"] for n in per_seed]
    hyb = [n["niah"]["hybrid"]["score"] for n in per_seed]
    steps = [n["niah"]["steps"] for n in per_seed]
    shown = (f"string_match_all at the trained length {cfg.niah_seq_len} per seed: MHA {rounded(mha, 1)}, hybrid "
             f"{rounded(hyb, 1)} after {steps} steps")
    if any(s < NIAH_LEARNED for s in mha):
        return undecided(f"not learned: the MHA LM does not retrieve (>= {NIAH_LEARNED}) at its trained length in "
                         f"every seed within the {cfg.niah_max_steps}-step cap; {shown}", mha=mha, hybrid=hyb)
    noise = 2 * max(n["niah"]["diff_se"] for n in per_seed)
    v = by_threshold([h - m for h, m in zip(hyb, mha)], NIAH_MARGIN, noise=noise, fmt=".3g",
                     what="hybrid − MHA string_match_all points (noise = twice the largest standard error of the "
                          "paired per-prompt difference)")
    return Verdict(v.held, f"{v.reason}; {shown}", **{k: getattr(v, k) for k in (
        "effect", "per_seed", "spread", "interval", "margin", "noise", "threshold", "n")})


def check_inclusion(per_seed: list[dict]) -> Verdict:
    gaps = [n["inclusion_gap"] for n in per_seed]
    return check(max(gaps) < INCLUSION_TOL, f"max |IHA − MHA| with MHA's weights and identity mixing per seed "
                 f"{[f'{g:.1e}' for g in gaps]} vs tolerance {INCLUSION_TOL:g}", gaps=gaps)


def check_flops(per_seed: list[dict], cfg) -> Verdict:
    ratio = per_seed[0]["flop_ratio"]
    return check(ratio <= FLOP_MATCHED, f"attention FLOPs of the hybrid (4 window-IHA layers with P={cfg.niah_pseudo} and "
                 f"W = N/(2P²) to 1 global MHA) over the all-MHA stack at N={cfg.niah_seq_len}: {ratio:.3f} (at most "
                 f"{FLOP_MATCHED:g}; 0.6 under the paper's convention)", ratio=ratio)


def decide(per_seed: list[dict], cfg) -> dict[str, Verdict]:
    return {"c1_polynomial": decide_c1(per_seed), "c2_cpm3": decide_c2(per_seed),
            "c3_relations": decide_c3(per_seed, cfg), "c4_niah": decide_c4(per_seed, cfg),
            "k1_inclusion": check_inclusion(per_seed), "k2_flop_matched": check_flops(per_seed, cfg)}
