"""iha_synthetic's decide_* functions on hand-made per-seed numbers: every claim returns held, not held and
undecided, every check passes and fails. The numbers go through JSON first, as `lmlab decide` reads them back."""

import json

import pytest

from lmlab.methods.iha import decide as d
from lmlab.methods.iha.experiment import PRESETS
from lmlab.utils import to_jsonable

SMALL, GPU, TINY = PRESETS["small"], PRESETS["gpu"], PRESETS["tiny"]


def _json(x):
    return json.loads(json.dumps(to_jsonable(x)))


def _models(values, key):
    return {m: {key: v, "nmse": v if key == "nmse" else 0.5, "params": 1, "cpu_s": 0.1}
            for m, v in zip(d.POLY_MODELS, values)}


def _model(acc, stopped=True, exact=10.0):
    return {"test_acc": acc, "exact": exact, "val_acc": acc, "best_step": 100, "steps": 300, "stopped": stopped,
            "curve": [[100, acc]], "params": 1, "cpu_s": 1.0}


def _relations(mha=90.0, iha=95.0, constant=60.0, stopped=True, se=0.1):
    return {"cells": [{"lr": lr, "order": o, "m_range": [4, 6], "constant": constant, "mha": _model(mha, stopped),
                       "iha": _model(iha, stopped), "diff_se": se} for lr in (1e-3, 1e-4) for o in (2, 3)]}


def _niah(mha=80.0, hybrid=90.0, se=1.0):
    return {"mha": {"score": mha, "per_prompt": [mha], "curve": [[250, mha, 0.1]], "params": 1, "train_s": 1.0},
            "hybrid": {"score": hybrid, "per_prompt": [hybrid], "curve": [[250, hybrid, 0.1]], "params": 1,
                       "train_s": 1.0}, "steps": 250, "diff_se": se, "flop_ratio": 0.6}


def _seed(poly=(0.3, 1e-4, 1e-5), cpm=(0.02, 1.0, 1.0), rel=None, niah=None, gap=1e-7, flops=0.6):
    return _json({"poly": _models(poly, "nmse"), "cpm3": _models(cpm, "row_acc"), "inclusion_gap": gap,
                  "flop_ratio": flops, "relations": rel, "niah": niah})


@pytest.mark.parametrize("poly, held", [((0.3, 1e-4, 1e-5), True), ((0.3, 0.05, 1e-5), False),
                                        ((0.05, 1e-4, 1e-5), False), ((0.3, 1e-4, 0.05), None)])
def test_c1(poly, held):
    v = d.decide_c1([_seed(poly=poly), _seed(poly=poly)])
    assert v.held is held, v.reason
    if held is None:
        assert v.reason.startswith("not learned") and "MHA(H=4)" in v.reason


def test_c1_seeds_disagree():
    v = d.decide_c1([_seed(), _seed(poly=(0.3, 0.05, 1e-5))])
    assert v.held is None and "seeds disagree" in v.reason


@pytest.mark.parametrize("cpm, held", [((0.02, 1.0, 1.0), True), ((0.02, 0.5, 1.0), False),
                                       ((0.5, 1.0, 1.0), False), ((0.02, 1.0, 0.9), None)])
def test_c2(cpm, held):
    v = d.decide_c2([_seed(cpm=cpm), _seed(cpm=cpm)])
    assert v.held is held, v.reason
    if held is None:
        assert v.reason.startswith("not learned")


def test_c3_held_not_held_and_noise():
    assert d.decide_c3([_seed(rel=_relations())] * 3, SMALL).held is True
    v = d.decide_c3([_seed(rel=_relations(iha=90.5))] * 3, SMALL)
    assert v.held is False, v.reason
    # a 5-point gain inside the test split's noise (twice a 3-point standard error) does not count
    v = d.decide_c3([_seed(rel=_relations(se=3.0))] * 3, SMALL)
    assert v.held is False and v.threshold == pytest.approx(6.0)


def test_c3_undecided_when_mha_did_not_learn_or_did_not_converge():
    # 72.8 % against a 59 % constant guess removes a third of its errors: not learned, never not held
    v = d.decide_c3([_seed(rel=_relations(mha=72.8, iha=70.0, constant=59.0))] * 3, SMALL)
    assert v.held is None and v.reason.startswith("not learned") and "72.8" in v.reason and "79.5" in v.reason
    v = d.decide_c3([_seed(rel=_relations(stopped=False))] * 3, SMALL)
    assert v.held is None and v.reason.startswith("not converged") and "cap" in v.reason
    seeds = [_seed(rel=_relations()), _seed(rel=_relations(iha=90.5)), _seed(rel=_relations())]
    v = d.decide_c3(seeds, SMALL)
    assert v.held is None and "seeds disagree" in v.reason


def test_c3_and_c4_off_in_presets_that_do_not_run_them():
    v = d.decide_c3([_seed()] * 2, TINY)
    assert v.held is None and "moved to small" in v.reason
    v = d.decide_c4([_seed()] * 2, SMALL)
    assert v.held is None and "moved to gpu" in v.reason


def test_c4():
    assert d.decide_c4([_seed(niah=_niah())] * 3, GPU).held is True
    v = d.decide_c4([_seed(niah=_niah(hybrid=82.0))] * 3, GPU)
    assert v.held is False and "MHA [80" in v.reason
    v = d.decide_c4([_seed(niah=_niah(mha=20.0, hybrid=40.0))] * 3, GPU)
    assert v.held is None and v.reason.startswith("not learned")
    v = d.decide_c4([_seed(niah=_niah()), _seed(niah=_niah(hybrid=80.0)), _seed(niah=_niah())], GPU)
    assert v.held is None and "seeds disagree" in v.reason


def test_checks():
    assert d.check_inclusion([_seed()] * 2).held is True
    assert d.check_inclusion([_seed(), _seed(gap=0.3)]).held is False
    assert d.check_flops([_seed()], TINY).held is True
    assert d.check_flops([_seed(flops=1.2)], TINY).held is False
    verdicts = d.decide([_seed()] * 2, TINY)
    assert {k: v.kind for k, v in verdicts.items()} == {"c1_polynomial": "claim", "c2_cpm3": "claim",
                                                       "c3_relations": "claim", "c4_niah": "claim",
                                                       "k1_inclusion": "check", "k2_flop_matched": "check"}
