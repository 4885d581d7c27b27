"""task_competition's decide_* functions on hand-made per-seed numbers: every claim returns held, not held and
undecided, every check passes, fails or is not run. The numbers go through JSON first, as `lmlab decide` reads
them back from results.json (string keys, NaN as null)."""

import json

import pytest

from lmlab.methods.competition import decide as d
from lmlab.methods.competition.experiment import PRESETS
from lmlab.utils import to_jsonable

CFG = PRESETS["tiny"]
SMALL = PRESETS["small"]
FREQS = [0.4, 0.2, 0.15, 0.1, 0.08, 0.07]  # six tasks, most frequent first
RANKS = [1, 2, 4, 1, 2, 4]


def _json(x):
    return json.loads(json.dumps(to_jsonable(x)))


def _sweep(counts, widths=(4, 16, 64), nets=2, shares=None, dev=0.0):
    """Width i learns the first counts[i] tasks (error 0), the rest stay at 1; the top-3 share is shares[i]."""
    shares = shares or [1.0, 0.6, 0.3]
    errors, alloc, optimal = [], [], []
    for c, sh in zip(counts, shares):
        row = [0.0] * c + [1.0] * (len(FREQS) - c)
        errors.append([row] * nets)
        alloc.append([[sh / 3] * 3 + [(1 - sh) / 3] * 3] * nets)
        optimal.append([min(1.0, max(0.0, e - dev)) for e in row])
    return {"widths": list(widths), "errors": errors, "alloc": alloc, "optimal": optimal, "freqs": FREQS,
            "complexities": RANKS, "checkpoints": [1, 2], "loss_at": [[[1.0] * nets] * 2] * len(widths)}


def _cell(width, final, peak=None, decay=0.9, u=0.9, r=0.9, g=0.01, nets=3, cycles=2):
    return {"width": width, "final": [final] * nets, "peak": [final if peak is None else peak] * nets,
            "decay_frac": [decay] * nets, "jump": [g] * nets, "before": [[0.0]] * nets, "after": [[g]] * nets,
            "G": [[g] * cycles] * nets, "U": [[u * g] * cycles] * nets, "R": [[r * g] * cycles] * nets,
            "g_common": [0.1] * nets}


def _run(period, cells):
    return {"period": period, "widths": [c["width"] for c in cells], "inj_steps": [period - 1], "cells": cells}


def _inj(slow, fast):
    """slow/fast: {width: final signal} at every 100 and every 20 steps; losing widths rise and decay, keeping
    widths accumulate with little first-order undoing."""
    def cells(finals):
        return [_cell(w, f, peak=max(f, 0.2), decay=0.9 if f < 0.5 else 0.1, u=0.9 if f < 0.5 else 0.1,
                      r=0.9 if f < 0.5 else 0.2) for w, f in finals.items()]
    return [_run(100, cells(slow)), _run(20, cells(fast))]


GOOD_INJ = _inj({16: 0.0, 32: 0.02, 64: 0.95}, {16: 0.01, 32: 0.9, 64: 0.99})


def _seed(counts=(1, 3, 6), shares=None, inj=None, linear=None, lm=None, dev=0.0):
    return _json({"sweep": {"relu": _sweep(counts, shares=shares), "linear": _sweep(counts, shares=shares, dev=dev)},
                  "inj": {"relu": inj or GOOD_INJ, **({"linear": linear} if linear else {})}, "lm": lm})


def test_c1_held_not_held_and_undecided():
    assert d.decide_c1([_seed(), _seed()], CFG).held is True
    # the count drops from one width to the next
    assert d.decide_c1([_seed((1, 4, 3)), _seed((1, 4, 3))], CFG).held is False
    # the widest learns no more than the narrowest
    assert d.decide_c1([_seed((2, 2, 2)), _seed((2, 2, 2))], CFG).held is False
    # an unlearned frequent task beside a learned rarer one of the same rank: the order is wrong
    bad = _seed()
    bad["sweep"]["relu"]["errors"][2] = [[1.0, 0, 0, 0, 0, 0]] * 2
    assert d.decide_c1([bad, bad], CFG).held is False
    v = d.decide_c1([_seed((0, 0, 0)), _seed((0, 0, 0))], CFG)
    assert v.held is None and v.reason.startswith("not learned")
    v = d.decide_c1([_seed(), _seed((2, 2, 2))], CFG)
    assert v.held is None and "seeds disagree" in v.reason


def test_c2_held_not_held_and_undecided():
    assert d.decide_c2([_seed(), _seed()], CFG).held is True
    flat = _seed(shares=[0.6, 0.6, 0.55])
    assert d.decide_c2([flat, flat], CFG).held is False
    bump = _seed(shares=[1.0, 0.3, 0.5])  # falls overall but rises by 0.2 between two widths
    assert d.decide_c2([bump, bump], CFG).held is False
    # the narrowest nets learned nothing: the comparison starts at the first width that learned the top task
    late = _seed((0, 3, 6), shares=[0.1, 0.6, 0.3])
    v = d.decide_c2([late, late], CFG)
    assert v.held is True and v.per_seed == pytest.approx((0.3, 0.3)) and "from N=16" in v.reason
    v = d.decide_c2([_seed((0, 0, 6)), _seed((0, 0, 6))], CFG)
    assert v.held is None and v.reason.startswith("not learned")


def test_c3_held_not_held_and_undecided():
    v = d.decide_c3([_seed(), _seed()], CFG)
    assert v.held is True and "rise-and-decay" in v.reason
    # the narrowest keeps the task too: no threshold inside the sweep
    kept = _seed(inj=_inj({16: 0.9, 32: 0.95, 64: 0.95}, {16: 0.9, 32: 0.95, 64: 0.99}))
    assert d.decide_c3([kept, kept], CFG).held is False
    # losing widths never rise visibly: they never learn, rather than learn and forget
    flat = _inj({16: 0.0, 32: 0.0, 64: 0.95}, {16: 0.0, 32: 0.9, 64: 0.99})
    for r in flat:
        for c in r["cells"]:
            if c["final"][0] < 0.5:
                c["peak"] = [0.001] * 3
    assert d.decide_c3([_seed(inj=flat), _seed(inj=flat)], CFG).held is False
    # retention falls with width
    down = _seed(inj=_inj({16: 0.0, 32: 0.95, 48: 0.3, 64: 0.95}, {16: 0.0, 32: 0.95, 48: 0.9, 64: 0.99}))
    assert d.decide_c3([down, down], CFG).held is False
    none = _seed(inj=_inj({16: 0.0, 64: 0.5}, {16: 0.0, 64: 0.6}))
    v = d.decide_c3([none, none], CFG)
    assert v.held is None and v.reason.startswith("not learned")


def test_c4_held_not_held_and_undecided():
    v = d.decide_c4([_seed(), _seed()], CFG)
    assert v.held is True and v.per_seed == pytest.approx((0.8, 0.8))  # 0.9 undone vs 0.1 at the keeping widths
    # the keeping widths undo as much of each gain as the losing ones: no reduced interference
    same = _inj({16: 0.0, 32: 0.02, 64: 0.95}, {16: 0.01, 32: 0.9, 64: 0.99})
    for r in same:
        for c in r["cells"]:
            c["U"] = [[0.8 * g for g in row] for row in c["G"]]
    assert d.decide_c4([_seed(inj=same), _seed(inj=same)], CFG).held is False
    # losing widths whose injections barely move the signal: nothing to overwrite
    still = _inj({16: 0.0, 32: 0.02, 64: 0.95}, {16: 0.01, 32: 0.9, 64: 0.99})
    for r in still:
        for c in r["cells"]:
            if c["final"][0] < 0.1:
                c["G"] = [[1e-5, 1e-5]] * 3
    v = d.decide_c4([_seed(inj=still), _seed(inj=still)], CFG)
    assert v.held is None and v.reason.startswith("not learned (no rise to undo)") and "gain 1.0e-05" in v.reason
    none = _seed(inj=_inj({16: 0.0, 64: 0.5}, {16: 0.0, 64: 0.6}))
    assert d.decide_c4([none, none], CFG).reason.startswith("not learned")


def test_c5_held_not_held_and_undecided():
    assert d.decide_c5([_seed(), _seed()], CFG).held is True
    no_flip = _seed(inj=_inj({16: 0.0, 32: 0.02, 64: 0.95}, {16: 0.0, 32: 0.3, 64: 0.99}))
    assert d.decide_c5([no_flip, no_flip], CFG).held is False
    backwards = _seed(inj=_inj({16: 0.0, 32: 0.02, 64: 0.95}, {16: 0.0, 32: 0.9, 64: 0.5}))
    assert d.decide_c5([backwards, backwards], CFG).held is False
    none = _seed(inj=_inj({16: 0.0, 64: 0.5}, {16: 0.0, 64: 0.6}))
    assert d.decide_c5([none, none], CFG).reason.startswith("not learned")


def _lm_cell(d_model, freq, accs, proj):
    layers = 1 if d_model < 64 else 2
    grads = {"steps": [1, 2, 3, 4], "bg_norm": [1.0] * 4}
    tasks = {}
    for name, acc in accs.items():
        grads[name] = {"projection": [proj] * 4, "cos": [0.01] * 4}
        tasks[name] = {"acc_train": acc, "acc_heldout": acc}
    return {"layers": layers, "d_model": d_model, "freq": freq, "params": layers * d_model ** 2 * 12,
            "grads": grads, "tasks": tasks}


def _ladder(small_acc, big_acc, big_proj=0.01):
    freqs = sorted(small_acc)
    return ([_lm_cell(32, f, {"cmp": small_acc[f]}, 0.05) for f in freqs]
            + [_lm_cell(128, f, {"cmp": big_acc[f]}, big_proj) for f in freqs])


def test_c6_held_not_held_and_undecided():
    moving = _ladder({10: 0.9, 2: 0.2, 1: 0.1}, {10: 0.95, 2: 0.9, 1: 0.3})
    assert d.decide_c6([_seed(lm=moving), _seed(lm=moving)], SMALL).held is True
    # the frontier moves, but the larger model's background gradient interferes as much
    same = _ladder({10: 0.9, 2: 0.2, 1: 0.1}, {10: 0.95, 2: 0.9, 1: 0.3}, big_proj=0.05)
    assert d.decide_c6([_seed(lm=same), _seed(lm=same)], SMALL).held is False
    # both sizes learn down to the same frequency: the frontier does not move
    stuck = _ladder({10: 0.9, 2: 0.85, 1: 0.1}, {10: 0.95, 2: 0.9, 1: 0.3})
    assert d.decide_c6([_seed(lm=stuck), _seed(lm=stuck)], SMALL).held is False
    # only the top frequency is ever learned: not learned, with the accuracies
    top = _ladder({10: 0.2, 2: 0.1, 1: 0.1}, {10: 0.95, 2: 0.3, 1: 0.1})
    v = d.decide_c6([_seed(lm=top), _seed(lm=top)], SMALL)
    assert v.held is None and v.reason.startswith("not learned") and "cmp L2d128@10 0.95" in v.reason
    v = d.decide_c6([_seed(), _seed()], CFG)
    assert v.held is None and v.reason.startswith("moved to small")


def test_linear_checks_pass_fail_and_are_not_run():
    assert d.check_eckart_young([_seed(), _seed()], CFG).status == "passed"
    assert d.check_eckart_young([_seed(dev=0.3), _seed(dev=0.3)], CFG).status == "failed"
    assert d.check_linear_allocation([_seed(), _seed()], CFG).status == "passed"
    flat = _seed(shares=[0.6, 0.6, 0.55])
    assert d.check_linear_allocation([flat, flat], CFG).status == "failed"
    assert d.check_linear_retention([_seed(), _seed()], CFG).status == "not run"
    ok = _seed(linear=GOOD_INJ)
    assert d.check_linear_retention([ok, ok], CFG).status == "passed"
    bad = _seed(linear=_inj({16: 0.9, 32: 0.95, 64: 0.95}, {16: 0.9, 32: 0.95, 64: 0.99}))
    assert d.check_linear_retention([bad, bad], CFG).status == "failed"
    verdicts = d.decide([_seed(linear=GOOD_INJ)] * 2, CFG)
    assert {k for k, v in verdicts.items() if v.kind == "check"} == {"k1_linear_eckart_young", "k2_linear_allocation",
                                                                    "k3_linear_retention"}


def test_lm_interference_reads_the_second_half_and_scales_alignment_by_sqrt_params():
    cell = _lm_cell(8, 1, {"t": 1.0}, 0.0)
    cell["params"] = 10_000
    cell["grads"]["t"] = {"projection": [9.0, 9.0, 0.2, -0.4], "cos": [0.5, 0.5, 0.01, -0.03]}
    cell["grads"]["bg_norm"] = [5.0, 5.0, 1.0, 3.0]
    out = d.lm_interference([cell], ["t"])
    assert out["projection"] == pytest.approx(0.3)
    assert out["alignment"] == pytest.approx(0.02 * 100)
    assert out["bg_norm"] == pytest.approx(2.0)
