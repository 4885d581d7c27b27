"""sumerian_pipeline's decisions from synthetic per-seed numbers: each claim held, not held and undecided (not
learned, seeds disagree, needs data, time budget); each check passed, failed and not run; the not-tested claims."""

import pytest

from lmlab.methods.sumerian.experiment import (
    AP_MARGIN,
    BLEU_MARGIN,
    BOOTSTRAP_Z,
    BT_BASE,
    BT_MARGIN,
    BT_SYSTEM,
    CHECKS,
    CLAIMS,
    METHODS,
    MT_LEARNED_BLEU,
    PRESETS,
    TAGGER_LEARNED,
    TAGGER_MARGIN,
    Config,
    decide,
    decide_back_translation,
    decide_expert_agreement,
    decide_expert_example,
    decide_mt_beats_baseline,
    decide_ner_taggers,
    decide_pos_taggers,
    decide_synthetic,
    decide_taggers,
)

CFG = Config()  # taggers hmm, crf, bilstm_crf; no translator (tiny)
MT_CFG = Config(decide_mt=True, back_translation=True)


def tagging(pos: dict, ner: dict) -> dict:
    """Scores of each model: pos {name: accuracy}, ner {name: entity F1}; absent baselines get the majority's."""
    def task(scores, key):
        full = {"majority": scores["majority"], "word_majority": scores["majority"],
                "word_shape_majority": scores["majority"], **scores}
        return {m: {"accuracy": v, "macro_f1": v, "cpu_s": 0.0, key: v} for m, v in full.items()}
    return {"n_train": 10, "n_augmented": 0, "n_test": 5, "pos": task(pos, "accuracy"), "ner": task(ner, "entity_f1")}


def seed(tag: float = 0.9, lookup: float = 0.8, majority: float = 0.45, weakest: float | None = None) -> dict:
    """Every tagger scores `tag` (the HMM `weakest` when given) against a strongest baseline `lookup`."""
    scores = {"majority": majority, "word_shape_majority": lookup, "hmm": tag if weakest is None else weakest,
              "crf": tag, "bilstm_crf": tag}
    return {"tagging": tagging(scores, {**scores, "majority": 0.0})}


@pytest.mark.parametrize("decide_task", [decide_pos_taggers, decide_ner_taggers])
def test_taggers_held_when_every_tagger_clears_the_strongest_baseline_on_every_seed(decide_task):
    v = decide_task([seed(0.9, 0.8), seed(0.88, 0.8)], CFG)
    assert v.held is True and v.per_seed == pytest.approx((0.1, 0.08)) and v.threshold == 0.05
    assert "word_shape_majority" in v.reason


@pytest.mark.parametrize("decide_task", [decide_pos_taggers, decide_ner_taggers])
def test_taggers_not_held_when_the_weakest_tagger_falls_short_on_every_seed(decide_task):
    v = decide_task([seed(0.95, 0.8, weakest=0.82), seed(0.95, 0.8, weakest=0.79)], CFG)
    assert v.held is False and v.per_seed == pytest.approx((0.02, -0.01))
    assert "hmm [0.02, -0.01]" in v.reason and "crf [0.15, 0.15]" in v.reason


@pytest.mark.parametrize("task, majority", [("pos", 0.45), ("ner", 0.0)])
def test_decide_taggers_holds_fails_and_stays_undecided_on_the_task_it_is_given(task, majority):
    assert decide_taggers([seed(0.9, 0.8)] * 2, CFG, task).held is True
    assert decide_taggers([seed(0.95, 0.8, weakest=0.82)] * 2, CFG, task).held is False  # 0.02 < the 0.05 margin
    mixed = decide_taggers([seed(0.9, 0.8), seed(0.95, 0.8, weakest=0.82)], CFG, task)
    assert mixed.held is None and mixed.reason.startswith("seeds disagree")
    near = decide_taggers([seed(0.9, 0.8, weakest=majority + TAGGER_LEARNED[task] / 2)] * 2, CFG, task)
    assert near.held is None and near.reason.startswith("not learned") and "hmm" in near.reason


def test_taggers_judged_against_the_best_baseline_of_each_seed():
    # on the second seed the plain lookup is the strongest: the gap is taken against it
    s2 = seed(0.9, 0.8)
    s2["tagging"]["pos"]["word_majority"]["accuracy"] = 0.87
    v = decide_pos_taggers([seed(0.9, 0.8), s2], CFG)
    assert v.per_seed == pytest.approx((0.1, 0.03)) and v.held is None
    assert v.reason.startswith("seeds disagree") and "word_majority 0.870" in v.reason


def test_taggers_undecided_not_learned_when_a_tagger_is_at_the_majority_class():
    v = decide_pos_taggers([seed(0.9, 0.8), seed(0.9, 0.8, weakest=0.45 + TAGGER_LEARNED["pos"] / 2)], CFG)
    assert v.held is None and v.reason.startswith("not learned") and "hmm" in v.reason and "1 of 2 seeds" in v.reason


def test_taggers_undecided_without_the_real_data():
    v = decide_ner_taggers([{"tagging": None, "mt": None}], CFG)
    assert v.held is None and v.reason.startswith("needs the real data")


def mt(transformer: float, lexicon: float = 12.0, copy: float = 0.2, half: float | None = None,
       mbt: float | None = None, sd: float = 0.3) -> dict:
    """One seed's MT numbers; with `half`/`mbt`, the two M-BT arms and a bootstrap sd of their difference."""
    scores = {"copy": {"bleu": copy, "chrf": 10.0}, "lexicon": {"bleu": lexicon, "chrf": 38.0},
              "transformer": {"bleu": transformer, "chrf": 50.0}}
    out = {"scores": scores, "back_translation": None}
    if half is not None:
        scores[BT_BASE], scores[BT_SYSTEM] = {"bleu": half, "chrf": 50.0}, {"bleu": mbt, "chrf": 50.0}
        out["back_translation"] = {"parallel": 5000, "mono": 5000, "bootstrap": {
            "delta": mbt - half, "sd": sd, "lo": mbt - half - 2 * sd, "hi": mbt - half + 2 * sd, "n": 1000}}
    return {"tagging": None, "mt": out}


def test_mt_held_not_held_and_seeds_disagree():
    held = decide_mt_beats_baseline([mt(40.0), mt(38.5)], MT_CFG)
    assert held.held is True and held.per_seed == pytest.approx((28.0, 26.5)) and held.threshold == BLEU_MARGIN
    short = decide_mt_beats_baseline([mt(12.5), mt(9.0)], MT_CFG)  # learned (far above copy), below the lexicon
    assert short.held is False and short.per_seed == pytest.approx((0.5, -3.0))
    split = decide_mt_beats_baseline([mt(20.0), mt(12.3)], MT_CFG)
    assert split.held is None and split.reason.startswith("seeds disagree")


def test_mt_undecided_not_learned_near_the_copy_baseline():
    v = decide_mt_beats_baseline([mt(30.0), mt(0.2 + MT_LEARNED_BLEU - 0.1)], MT_CFG)
    assert v.held is None and v.reason.startswith("not learned")
    assert v.extra["transformer"][1] - v.extra["copy"][1] < MT_LEARNED_BLEU


def test_mt_undecided_at_tiny_and_without_data():
    assert PRESETS["tiny"].decide_mt is False and PRESETS["small"].decide_mt and PRESETS["gpu"].decide_mt
    tiny = decide_mt_beats_baseline([{"tagging": None, "mt": None}] * 2, PRESETS["tiny"])
    assert tiny.held is None and tiny.reason.startswith("moved to small for the time budget")
    nodata = decide_mt_beats_baseline([{"tagging": None, "mt": None}], MT_CFG)
    assert nodata.held is None and nodata.reason.startswith("needs the real data")


def test_mbt_held_not_held_and_seeds_disagree():
    held = decide_back_translation([mt(40.0, half=35.0, mbt=37.0), mt(40.0, half=34.0, mbt=35.5)], MT_CFG)
    assert held.held is True and held.per_seed == pytest.approx((2.0, 1.5)) and held.kind == "claim"
    assert held.threshold == BT_MARGIN and held.noise == pytest.approx(BOOTSTRAP_Z * 0.3)
    worse = decide_back_translation([mt(40.0, half=35.0, mbt=30.0), mt(40.0, half=34.0, mbt=34.5)], MT_CFG)
    assert worse.held is False and worse.per_seed == pytest.approx((-5.0, 0.5))
    split = decide_back_translation([mt(40.0, half=35.0, mbt=37.0), mt(40.0, half=34.0, mbt=33.0)], MT_CFG)
    assert split.held is None and split.reason.startswith("seeds disagree")


def test_mbt_gain_within_the_bootstrap_noise_is_not_held():
    # a +1.5 gain clears the 1.0 margin but not a noise floor of 1.96 × 1.0
    v = decide_back_translation([mt(40.0, half=35.0, mbt=36.5, sd=1.0), mt(40.0, half=34.0, mbt=35.5)], MT_CFG)
    assert v.held is False and v.threshold == pytest.approx(BOOTSTRAP_Z * 1.0) and v.margin == BT_MARGIN


def test_mbt_undecided_not_learned_at_tiny_and_without_data():
    unlearned = decide_back_translation([mt(40.0, half=35.0, mbt=37.0), mt(40.0, half=0.2 + MT_LEARNED_BLEU,
                                                                           mbt=9.0)], MT_CFG)
    assert unlearned.held is None and unlearned.reason.startswith("not learned")
    tiny = decide_back_translation([{"tagging": None, "mt": None}] * 2, PRESETS["tiny"])
    assert tiny.held is None and tiny.reason.startswith("moved to small for the time budget")
    assert PRESETS["small"].back_translation and PRESETS["gpu"].back_translation
    nodata = decide_back_translation([{"tagging": None, "mt": None}], MT_CFG)
    assert nodata.held is None and nodata.reason.startswith("needs the real data")


def test_expert_agreement_is_not_tested_and_says_why():
    ex = decide_expert_agreement([mt(30.0)], MT_CFG)
    assert ex.kind == "not tested" and "one expert alignment" in ex.reason
    assert "attributions_agree_with_experts" in CLAIMS


def synth(gain: float, exact: float = 1.0, lower: tuple = ()) -> dict:
    agree = {m: {"trained": {"ap": 0.5 + (-0.01 if m in lower else gain)}, "untrained": {"ap": 0.5}}
             for m in METHODS}
    return {"synthetic": {"exact_match": exact, "agreement": agree, "ig_delta_mean": 0.1}}


def test_synthetic_check_passes_fails_and_is_not_run_when_not_learned():
    ok = decide_synthetic([synth(0.4), synth(0.35)], CFG)
    assert ok.kind == "check" and ok.status == "passed"
    small = decide_synthetic([synth(0.4), synth(AP_MARGIN / 2)], CFG)
    assert small.status == "failed" and "1 of 2 seeds pass" in small.reason
    one_lower = decide_synthetic([synth(0.4), synth(0.5, lower=("attention",))], CFG)
    assert one_lower.status == "failed" and "attention" in one_lower.reason
    unlearned = decide_synthetic([synth(0.4), synth(0.4, exact=0.2)], CFG)
    assert unlearned.status == "not run" and unlearned.reason.startswith("not learned")


def expert(ig: float, att: float, chance: float = 0.4, grouped: bool = True) -> dict:
    agreement = {"integrated_gradients": {"ap": ig, "hit@1": ig}, "attention": {"ap": att, "hit@1": att}}
    return {"tagging": None, "mt": {"scores": {}, "expert_example": {"agreement": agreement if grouped else None,
                                                                      "chance_ap": chance}}}


def test_expert_example_is_a_case_study_check():
    assert decide_expert_example([expert(0.7, 0.6), expert(0.8, 0.5)], MT_CFG).status == "passed"
    failed = decide_expert_example([expert(0.7, 0.6), expert(0.8, 0.3)], MT_CFG)
    assert failed.kind == "check" and failed.status == "failed" and "chance 0.400" in failed.reason
    assert decide_expert_example([expert(0.7, 0.6, grouped=False)], MT_CFG).status == "not run"
    tiny = decide_expert_example([{"tagging": None, "mt": None}], PRESETS["tiny"])
    assert tiny.status == "not run" and "small/gpu" in tiny.reason


def test_decide_returns_every_claim_and_check_and_presets_declare_seeds():
    per_seed = [{**seed(), **mt(30.0), **synth(0.4)} for _ in range(2)]
    per_seed = [{**p, "tagging": seed()["tagging"]} for p in per_seed]
    verdicts = decide(per_seed, PRESETS["tiny"])
    assert set(verdicts) == set(CLAIMS) | set(CHECKS)
    assert all((verdicts[c].kind == "check") == (c in CHECKS) for c in verdicts)
    assert PRESETS["tiny"].seeds >= 2 and PRESETS["small"].seeds >= 3 and PRESETS["gpu"].seeds >= 3
    assert TAGGER_MARGIN == {"pos": 0.05, "ner": 0.05}
