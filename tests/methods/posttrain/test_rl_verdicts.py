"""rl_checkpoints' decide_* functions on hand-made per-seed numbers: every claim returns held, not held and undecided,
every check passes, fails or is not run. The numbers go through JSON first, as `lmlab decide` reads them back."""

import json

from lmlab.methods.posttrain import decide as d
from lmlab.methods.posttrain.experiment import PRESETS, choose_mixed_lr, plateau
from lmlab.utils import to_jsonable

CFG = PRESETS["small"]
NQ, N = 200, 32  # test questions, samples per question


def _counts(pass1, passk):
    """Per-question correct counts (of N) over NQ questions with these pass@1 / pass@N; the solved questions are
    always the first ones, so two results with the same pass@N solve the same questions."""
    solved, total = round(passk * NQ), round(pass1 * N * NQ)
    assert solved <= total <= solved * N or solved == total == 0
    counts = [1] * solved + [0] * (NQ - solved)
    rest, i = total - solved, 0
    while rest > 0:
        add = min(N - 1, rest)
        counts[i] += add
        rest, i = rest - add, i + 1
    return counts


def _arm(pass1, passk, nll=2.0, copy=2.5, **extra):
    c = _counts(pass1, passk)
    return {"pass1": sum(c) / (N * NQ), "passk": sum(x > 0 for x in c) / NQ, "counts": c, "general_nll": nll,
            "copy_nll": copy, **extra}


def _row(step, ready, **arms):
    return {"step": step, "ready": {"passk": ready}, "arms": arms}


def _paper_rows(rl_gain=0.15, sft_rl_k=0.6, rl_nll=2.0, sft_nll=2.2, pa_k=0.85, pa_nll=2.005):
    """The paper's pattern: no reward at step 100 (RL = base), a low-readiness step 200 where RL gains, and a step
    300 where RL expands, SFT→RL sharpens, SFT costs general loss and parallel averaging is best on pass@k."""
    flat = {"rl_steps": 20, "rl_plateau": True, "rl_frac_zero_std": 1.0, "rl_end_reward": 0.0}
    return [
        _row(100, 0.0, base=_arm(0, 0), rl=_arm(0, 0, **flat), sft=_arm(0.01, 0.1, sft_nll)),
        _row(200, 0.1, base=_arm(0.02, 0.2), rl=_arm(0.02 + rl_gain, 0.5, rl_nll, rl_steps=40, rl_plateau=True),
             sft=_arm(0.1, 0.5, sft_nll, 2.7), sft_gold=_arm(0.1, 0.5, sft_nll), sft_rl=_arm(0.2, 0.5, sft_nll),
             parallel_avg=_arm(0.1, 0.6, pa_nll, rl_steps=30, rl_plateau=True)),
        _row(300, 0.6, base=_arm(0.05, 0.5), rl=_arm(0.3, 0.75, rl_nll), sft=_arm(0.3, 0.6, sft_nll, 2.7),
             sft_gold=_arm(0.3, 0.6, sft_nll), sft_rl=_arm(0.5, sft_rl_k, sft_nll, 2.7),
             parallel_avg=_arm(0.3, pa_k, pa_nll)),
    ]


def _data(t=(0.05, 0.35), b=(0.05, 0.15), big=(0.1, 0.25)):
    def one(before, after):
        return {"before": _arm(before, min(1.0, 4 * before)), "after": _arm(after, min(1.0, 3 * after)),
                "params": 1}
    return {"base mix": one(*b), "targeted mix": one(*t), "base mix, 2x model": one(*big)}


def _seed(rows=None, grid=(3e-5, 3e-4), data="default"):
    return json.loads(json.dumps(to_jsonable({
        "n": N, "n_test": NQ, "checkpoints": rows or _paper_rows(), "dynamics": {},
        "mixed_lr": {"grid": list(grid), "chosen": grid[0]},
        "data_arm": _data() if data == "default" else data})))


def test_c1_held_not_held_and_undecided():
    assert d.decide_c1([_seed(), _seed()], CFG).held is True
    v = d.decide_c1([_seed(_paper_rows(rl_gain=0.0))] * 2, CFG)
    assert v.held is False and "every seed falls short" in v.reason
    v = d.decide_c1([_seed(), _seed(_paper_rows(rl_gain=0.0))], CFG)
    assert v.held is None and "seeds disagree" in v.reason
    rows = _paper_rows()
    rows[1]["ready"]["passk"] = 0.5  # the grid jumps past the lowest non-zero bin
    v = d.decide_c1([_seed(rows)], CFG)
    assert v.held is None and "(0, 0.25]" in v.reason and "200: 0.5" in v.reason


def test_c2_held_not_held_and_undecided():
    assert d.decide_c2([_seed(), _seed()], CFG).held is True
    v = d.decide_c2([_seed(_paper_rows(sft_rl_k=0.9))] * 2, CFG)  # SFT→RL expands pass@k as well
    assert v.held is False and "SFT→RL does not raise pass@k_max" in v.reason
    v = d.decide_c2([_seed(), _seed(_paper_rows(sft_rl_k=0.9))], CFG)
    assert v.held is None
    rows = _paper_rows()
    for r in rows:
        r["arms"]["sft"] = _arm(0.5, 1.0)  # SFT saturates pass@k everywhere
    v = d.decide_c2([_seed(rows)], CFG)
    assert v.held is None and "k_max cannot show" in v.reason


def test_c2_no_rise_is_undecided_when_underpowered():
    states = d.no_rise([0.0], [0.02], 0.03, "x")  # bound 0.04 >= 0.03, estimate − 2 SE < 0.03
    assert states.held is None and "underpowered" in states.reason
    assert d.no_rise([0.0], [0.01], 0.03, "x").held is True
    assert d.no_rise([0.2], [0.01], 0.03, "x").held is False


def test_c3_held_not_held_and_undecided():
    assert d.decide_c3([_seed(), _seed()], CFG).held is True
    v = d.decide_c3([_seed(_paper_rows(rl_nll=2.1))] * 2, CFG)  # RL costs general loss
    assert v.held is False and "RL unchanged" in v.reason
    v = d.decide_c3([_seed(_paper_rows(sft_nll=2.0))] * 2, CFG)  # SFT costs nothing
    assert v.held is False
    rows = _paper_rows()
    for r in rows:
        for a in r["arms"].values():
            a["copy_nll"] = 2.9  # copy never learned: that measure carries no signal
    v = d.decide_c3([_seed(rows)], CFG)
    assert v.held is None and "not learned" in v.reason


def test_c4_held_not_held_and_undecided():
    assert d.decide_c4([_seed(), _seed()], CFG).held is True
    v = d.decide_c4([_seed(_paper_rows(pa_k=0.5))] * 2, CFG)  # below RL's pass@k
    assert v.held is False and "best pass@k_max" in v.reason
    v = d.decide_c4([_seed(_paper_rows(pa_nll=2.1))] * 2, CFG)  # costs general loss beyond RL
    assert v.held is False and "preserves general capability" in v.reason
    v = d.decide_c4([_seed(grid=(1e-3,))], CFG)
    assert v.held is None and "not swept" in v.reason
    rows = _paper_rows(pa_k=1.0)
    rows[1]["arms"]["parallel_avg"] = _arm(0.3, 1.0)  # saturated at every checkpoint with RL signal
    v = d.decide_c4([_seed(rows)], CFG)
    assert v.held is None and "saturated" in v.reason


def test_c5_held_not_held_and_undecided():
    assert d.decide_c5([_seed(), _seed()], CFG).held is True
    # the targeted mix gains no more than the base mix (audit: +0.481 vs +0.492): not held, whatever the 2x model
    v = d.decide_c5([_seed(data=_data(t=(0.05, 0.35), b=(0.05, 0.36), big=(0.1, 0.2)))] * 2, CFG)
    assert v.held is False and "targeted beats the base mix" in v.reason.split("—")[0]
    v = d.decide_c5([_seed(data=_data(big=(0.1, 0.6)))] * 2, CFG)  # the 2x model gains more
    assert v.held is False
    # the 2x model is worse than the 1x at its base checkpoint (audit: 0.124 vs 0.132): no stronger baseline
    v = d.decide_c5([_seed(data=_data(big=(0.04, 0.1)))], CFG)
    assert v.held is None and "not at least as good" in v.reason
    assert d.decide_c5([_seed(data=None)], CFG).held is None
    # the targeted mix's base never solves a test question in one seed: learned before compared
    v = d.decide_c5([_seed(), _seed(data=_data(t=(0.0, 0.0)))], CFG)
    assert v.held is None and v.reason.startswith("not learned") and "targeted mix" in v.reason


def test_checks_pass_fail_and_not_run():
    assert d.decide_k1([_seed()], CFG).held is True
    rows = _paper_rows()
    rows[0]["arms"]["rl"]["counts"] = _counts(0.01, 0.05)
    assert d.decide_k1([_seed(rows)], CFG).held is False
    rows = _paper_rows()
    rows[0]["arms"]["rl"]["rl_frac_zero_std"] = 0.9
    assert d.decide_k1([_seed(rows)], CFG).held is None
    assert d.decide_k2([_seed()], CFG).held is True
    rows = _paper_rows()
    rows[1]["arms"]["rl"]["rl_plateau"] = False
    v = d.decide_k2([_seed(rows)], CFG)
    assert v.held is False and "seed #0 step 200 rl" in v.reason


def test_plateau_stops_on_a_flat_reward_only():
    flat = plateau(3, 0.02)
    assert not flat([{"reward": 0.0}] * 5)  # fewer than two windows
    assert flat([{"reward": 0.0}] * 6)
    assert not flat([{"reward": r / 10} for r in range(6)])  # still rising
    assert flat([{"reward": r} for r in (0.1, 0.5, 0.9, 0.9, 0.92, 0.9)][-6:]) is False  # rose 0.41 over the window
    assert flat([{"reward": r} for r in (0.9, 0.91, 0.9, 0.91, 0.9, 0.92)])


def test_mixed_lr_choice_keeps_general_capability_first():
    val = {1e-4: {"passk": 0.5, "general_nll": 2.0}, 1e-3: {"passk": 0.7, "general_nll": 2.01},
           3e-3: {"passk": 0.9, "general_nll": 2.3}}
    assert choose_mixed_lr(val, base_nll=2.0) == 1e-3  # 3e-3 is best on pass@k but costs 0.3 nats
    assert choose_mixed_lr({1e-3: {"passk": 0.7, "general_nll": 2.3}, 3e-3: {"passk": 0.9, "general_nll": 2.5}},
                           base_nll=2.0) == 1e-3  # none keeps it: the one that costs least


def test_plateau_waits_for_the_minimum_steps():
    flat = plateau(3, 0.02, min_steps=10)
    assert not flat([{"reward": 0.0}] * 9) and flat([{"reward": 0.0}] * 10)
