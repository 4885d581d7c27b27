"""calm_kv's decide_* functions on hand-made per-seed numbers: every claim returns held, not held and undecided.
The numbers go through JSON first, as `lmlab decide` reads them back from results.json."""

import json

import pytest

from lmlab.methods.calm import decide as d
from lmlab.methods.calm.experiment import CLAIMS, PRESETS
from lmlab.utils import LmlabError

CFG = PRESETS["small"]
FORMATS = ("direct", "scratchpad")


def _arm(heldout=0.8, dc=0.9, num=0.8, exact=None, n=200):
    return {"heldout": heldout, "dc": dc, "num_math": num, "num_math_exact": num if exact is None else exact, "n": n}


def _seed(subs=1.0, aug_kv=0.0, num=0.85, anc_kv=0.02, rows=None, **arms):
    """A seed where every arm learned D_C; `arms` override the D_C-alone direct row's arms (name -> dict)."""
    base = {"aug": {"kv_subs": {f: subs for f in FORMATS}, "kv_math": {f: aug_kv for f in FORMATS},
                    "num_math": {f: 0.0 for f in FORMATS}},
            "anchor": {"kv_subs": {f: 0.0 for f in FORMATS}, "kv_math": {f: anc_kv for f in FORMATS},
                       "num_math": {f: num for f in FORMATS}, "num_math_exact": {f: num for f in FORMATS}}}
    good = {"calm": _arm(0.8, 0.9, 0.85), "random_augment": _arm(0.05, 0.6, 0.8),
            "anchor_finetune": _arm(0.05, 0.95, 0.2)}
    if rows is None:
        rows = {r: dict(good) for r in ("direct/dc_only", "direct/rehearsal", "scratchpad/dc_only",
                                        "scratchpad/rehearsal")}
        rows["direct/rehearsal"] = {**good, "anchor_finetune": _arm(0.05, 0.95, 0.5)}
    rows["direct/dc_only"] = {**rows.get("direct/dc_only", good), **arms}
    return json.loads(json.dumps({"base": base, "rows": rows, "time_s": {"base": 1.0}}))


def _two(**kw):
    return [_seed(**kw), _seed(**kw)]


def test_every_claim_is_decided_and_holds_on_good_numbers():
    v = d.decide(_two(), CFG)
    assert set(v) == set(CLAIMS)
    assert {k: x.held for k, x in v.items()} == {k: True for k in CLAIMS}, {k: x.reason for k, x in v.items()}


def test_base_claims_held_not_held_and_undecided():
    assert d.decide_augment(_two()).held is True
    assert d.decide_augment(_two(subs=0.5)).held is False
    assert d.decide_augment(_two(aug_kv=0.3)).held is False
    v = d.decide_augment([_seed(), _seed(subs=0.5)])
    assert v.held is None and v.reason.startswith("seeds disagree")
    assert d.decide_anchor(_two()).held is True
    assert d.decide_anchor(_two(num=0.4)).held is False
    assert d.decide_anchor([_seed(), _seed(num=0.4)]).held is None
    no_direct = _two()
    for n in no_direct:
        for m in n["base"].values():
            for view in m.values():
                view.pop("direct")
    assert d.decide_anchor(no_direct).held is None and "not measured" in d.decide_anchor(no_direct).reason


def test_composed_solves_heldout_held_not_held_undecided():
    assert d.decide_solves(_two()).held is True
    # fits D_C but does not carry to held-out keys
    assert d.decide_solves(_two(calm=_arm(0.2, 0.9, 0.8))).held is False
    v = d.decide_solves(_two(calm=_arm(0.05, 0.1, 0.8)))  # never fitted D_C: not learned, not "not held"
    assert v.held is None and v.reason.startswith("not learned") and "0.1" in v.reason
    v = d.decide_solves(_two(subs=0.3))
    assert v.held is None and v.reason.startswith("not learned: a base model")
    v = d.decide_solves([_seed(), _seed(calm=_arm(0.2, 0.9, 0.8))])
    assert v.held is None and v.reason.startswith("seeds disagree")
    # the scratchpad claim reads its own row, and is undecided when that format did not run
    tiny = [_seed(rows={}), _seed(rows={})]
    v = d.decide_solves(tiny, fmt="scratchpad")
    assert v.held is None and "scratchpad format was not measured" in v.reason


def test_noise_raises_the_threshold_on_few_eval_prompts():
    # 0.48 above the base clears the 0.3 margin on 200 prompts; on 4 the sampling noise (≈ 0.52) exceeds it
    assert d.decide_solves(_two(calm=_arm(0.5, 0.9, 0.8))).held is True
    v = d.decide_solves(_two(calm=_arm(0.5, 0.9, 0.8, n=4)))
    assert v.noise > 0.48 and v.held is False
    assert d.diff_noise([(0.5, 0.5)], [100]) == pytest.approx(2 * (0.5 / 100) ** 0.5)


def test_gain_needs_augment_held_not_held_undecided():
    assert d.decide_gain(_two()).held is True
    assert d.decide_gain(_two(random_augment=_arm(0.75, 0.9, 0.8))).held is False
    rows = {"direct/dc_only": {"calm": _arm()}}
    v = d.decide_gain([_seed(rows=dict(rows)), _seed(rows=dict(rows))])
    assert v.held is None and "random_augment baseline was not trained" in v.reason
    v = d.decide_gain([_seed(), _seed(random_augment=_arm(0.75, 0.9, 0.8))])
    assert v.held is None and v.reason.startswith("seeds disagree")


def test_keeps_anchor_skill_held_not_held_undecided():
    assert d.decide_keep(_two()).held is True
    # the audit's numbers: CALM on D_C alone loses the anchor's NUM-MATH (0.09 vs 0.82)
    assert d.decide_keep(_two(calm=_arm(0.8, 0.9, 0.09))).held is False
    # answer-only accuracy may look fine while the completions are wrong: the claim reads exact completions
    assert d.decide_keep(_two(calm=_arm(0.8, 0.9, 0.85, exact=0.6))).held is False
    # a composition that learned nothing keeps the anchor vacuously: undecided
    v = d.decide_keep(_two(calm=_arm(0.02, 0.05, 0.85)))
    assert v.held is None and v.reason.startswith("not learned")
    v = d.decide_keep(_two(num=0.3))
    assert v.held is None and v.reason.startswith("not learned: a base model")
    assert "with the rehearsal share CALM keeps" in d.decide_keep(_two()).reason


def test_beats_anchor_finetune_held_not_held_undecided():
    assert d.decide_beats_finetune(_two()).held is True
    # a fine-tune that generalises as well as CALM on D_C alone
    assert d.decide_beats_finetune(_two(anchor_finetune=_arm(0.75, 0.95, 0.2))).held is False
    # tiny: no rehearsal row and no fine-tune
    rows = {"direct/dc_only": {"calm": _arm()}}
    v = d.decide_beats_finetune([_seed(rows=dict(rows)), _seed(rows=dict(rows))])
    assert v.held is None and v.reason.startswith("moved to small")
    # the fine-tune did not fit D_C: not learned
    v = d.decide_beats_finetune(_two(anchor_finetune=_arm(0.05, 0.1, 0.2)))
    assert v.held is None and v.reason.startswith("not learned") and "anchor_finetune did not fit" in v.reason


def test_finetune_forgets_calm_keeps_held_not_held_undecided():
    assert d.decide_forgetting(_two()).held is True
    # the audit's numbers, like for like: with the same rehearsal the fine-tuned anchor keeps 0.96 vs CALM's 0.93
    seeds = _two()
    for n in seeds:
        n["rows"]["direct/rehearsal"]["calm"]["num_math"] = 0.93
        n["rows"]["direct/rehearsal"]["anchor_finetune"]["num_math"] = 0.96
    v = d.decide_forgetting(seeds)
    assert v.held is False and "rehearsal" in v.reason
    # on D_C alone CALM forgets as much as the fine-tune (0.09 vs 0.18)
    assert d.decide_forgetting(_two(calm=_arm(0.8, 0.9, 0.09), anchor_finetune=_arm(0.05, 0.95, 0.18))).held \
        is False
    seeds = [_seed(), _seed()]
    for n in seeds:
        del n["rows"]["direct/rehearsal"]
    v = d.decide_forgetting(seeds)
    assert v.held is None and v.reason.startswith("moved to small") and "not measured" in v.reason


def test_bad_config_names_the_key():
    from lmlab.config import override

    for key, value in (("formats", "cot"), ("baselines", "lora"), ("anchor_mix", 1.5),
                       ("anchor_mix_labels", "teacher"), ("ops", "/"), ("rehearsal", "scratchpad")):
        with pytest.raises(LmlabError, match=key):
            override(PRESETS["tiny"], {key: value})
