"""coseco_commonsense's decisions from synthetic per-seed numbers: held, not held, and undecided (not learned, seeds
disagree, time budget, needs data) for each claim, and the checks."""

import pytest

from lmlab.methods.knowledge.experiment_coseco import (
    CHECKS,
    CLAIMS,
    BOOTSTRAP_Z,
    GEN_LEARNED_VALIDITY,
    NOVELTY_MARGIN,
    OBQA_CHANCE,
    OBQA_LEARNED,
    QA_MARGIN,
    RELEVANCE_MARGIN,
    CoSeCoConfig,
    decide,
    decide_novel_entities,
    decide_pairs,
    decide_qa_gain,
    decide_qa_reads_knowledge,
    decide_real_obqa_gain,
    decide_real_relevant_knowledge,
    decide_relevant_knowledge,
)

CFG = CoSeCoConfig()
REAL = CoSeCoConfig(real=True)
OBQA = CoSeCoConfig(real=True, obqa=True, bootstrap=200)


def paths(gen: float, rnd: float = 0.05, bm25: float = 0.3, validity: float = 0.9) -> dict:
    def m(rel, val=1.0):
        return {"relevance": rel, "gold_hit": rel, "validity": val, "diversity": 0.8, "novelty": 0.0}

    return {"generated": m(gen, validity), "random": m(rnd), "bm25": m(bm25)}


def seed(gen: float = 0.8, bm25: float = 0.3, validity: float = 0.9, novelty: float = 0.2, qa_gen: float = 0.6,
         qa_bm25: float = 0.4, oracle: float = 0.8, real: dict | None = None) -> dict:
    qa = {"none": 0.2, "random": 0.22, "bm25": qa_bm25, "generated": qa_gen, "oracle": oracle}
    return {"synthetic": {
        "paths_by_group": {"kg_objects": paths(gen, bm25=bm25, validity=validity), "novel_objects": paths(0.1)},
        "novelty": {"generated": novelty, "random": 0.0, "bm25": 0.0},
        "novel_correctness": {"novel_entities": 10, "novel_real_entities": 0, "novel_real_share": 0.0,
                              "novel_triples": 12, "novel_triples_true": 0, "novel_triple_true_share": 0.0},
        "novel_object_fact_rate": 0.0, "novel_object_place_rate": 0.4, "qa": qa, "qa_novel_objects": qa,
        "n_qa_test": 180, "n_qa_train": 30, "pairs": 800, "pairs_short_of_mentions": 0},
        "real": real}


# ---------------------------------------------------------------- relevant_knowledge
def test_relevance_held_when_generated_beats_the_stronger_baseline_on_every_seed():
    v = decide_relevant_knowledge([seed(0.8, bm25=0.3), seed(0.9, bm25=0.4)], CFG)
    assert v.held is True and v.threshold == RELEVANCE_MARGIN and v.per_seed == pytest.approx((0.5, 0.5))


def test_relevance_not_held_when_bm25_retrieval_is_as_relevant():
    v = decide_relevant_knowledge([seed(0.9, bm25=1.0), seed(0.7, bm25=1.0)], CFG)
    assert v.held is False and v.per_seed == pytest.approx((-0.1, -0.3)) and "bm25 [1.0, 1.0]" in v.reason


def test_relevance_undecided_when_seeds_disagree():
    v = decide_relevant_knowledge([seed(0.9, bm25=0.3), seed(0.5, bm25=0.4)], CFG)
    assert v.held is None and v.reason.startswith("seeds disagree")


def test_relevance_undecided_not_learned_when_generated_triples_are_not_in_the_kg():
    v = decide_relevant_knowledge([seed(0.9, validity=GEN_LEARNED_VALIDITY - 0.1), seed(0.9)], CFG)
    assert v.held is None and v.reason.startswith("not learned") and "relevance per seed" in v.reason


# ---------------------------------------------------------------- novel_entities
def test_novelty_held_above_the_margin_with_correctness_reported():
    v = decide_novel_entities([seed(novelty=0.2), seed(novelty=0.15)], CFG)
    assert v.held is True and v.threshold == NOVELTY_MARGIN
    assert "true in the world [0.0, 0.0]" in v.reason and v.extra["novel_real_share"] == [0.0, 0.0]


def test_novelty_not_held_when_no_seed_generates_new_entities():
    v = decide_novel_entities([seed(novelty=0.0), seed(novelty=0.05)], CFG)
    assert v.held is False


def test_novelty_undecided_when_seeds_disagree_or_not_learned():
    assert decide_novel_entities([seed(novelty=0.3), seed(novelty=0.05)], CFG).reason.startswith("seeds disagree")
    v = decide_novel_entities([seed(novelty=0.9, validity=0.1), seed(novelty=0.9, validity=0.1)], CFG)
    assert v.held is None and v.reason.startswith("not learned") and "novelty per seed [0.9, 0.9]" in v.reason


# ---------------------------------------------------------------- qa_gain
def test_qa_gain_held_over_the_strongest_baseline():
    v = decide_qa_gain([seed(qa_gen=0.6, qa_bm25=0.4), seed(qa_gen=0.7, qa_bm25=0.5)], CFG)
    assert v.held is True and v.threshold == QA_MARGIN and v.per_seed == pytest.approx((0.2, 0.2))


def test_qa_gain_not_held_when_bm25_knowledge_helps_as_much():
    v = decide_qa_gain([seed(qa_gen=0.6, qa_bm25=0.6), seed(qa_gen=0.5, qa_bm25=0.7)], CFG)
    assert v.held is False and v.per_seed == pytest.approx((0.0, -0.2))


def test_qa_gain_undecided_seeds_disagree_or_scorer_blind_or_generator_not_learned():
    v = decide_qa_gain([seed(qa_gen=0.7, qa_bm25=0.5), seed(qa_gen=0.5, qa_bm25=0.7)], CFG)
    assert v.held is None and v.reason.startswith("seeds disagree")
    v = decide_qa_gain([seed(oracle=0.22), seed()], CFG)  # gold paths do not help the scorer
    assert v.held is None and v.reason.startswith("not learned: the QA scorer")
    v = decide_qa_gain([seed(validity=0.2), seed()], CFG)
    assert v.held is None and v.reason.startswith("not learned")


# ---------------------------------------------------------------- real data
def test_real_relevance_moved_to_small_needs_data_and_decides_with_the_data():
    assert decide_real_relevant_knowledge([seed()], CFG).reason.startswith("moved to small for the time budget")
    assert decide_real_relevant_knowledge([seed(), seed()], REAL).reason.startswith("needs the real data")
    held = [seed(real={"paths": paths(0.6, bm25=0.2)}), seed(real={"paths": paths(0.7, bm25=0.3)})]
    assert decide_real_relevant_knowledge(held, REAL).held is True
    failed = [seed(real={"paths": paths(0.2, bm25=0.3)}), seed(real={"paths": paths(0.25, bm25=0.3)})]
    assert decide_real_relevant_knowledge(failed, REAL).held is False
    mixed = [seed(real={"paths": paths(0.6, bm25=0.2)}), seed(real={"paths": paths(0.2, bm25=0.3)})]
    assert decide_real_relevant_knowledge(mixed, REAL).reason.startswith("seeds disagree")


def obqa(none: float, rnd: float, bm25: float, gen: float, n: int = 500) -> dict:
    """A seed whose cross-encoder gets the first round(acc·n) of n test questions right with each source (so the
    paired differences are as consistent as they can be)."""
    def right(acc):
        k = round(acc * n)
        return [1] * k + [0] * (n - k)
    acc = {"none": none, "random": rnd, "bm25": bm25, "generated": gen}
    return seed(real={"paths": paths(0.6), "items": 500, "walks": 100, "obqa": {
        "n_train": 1500, "n_test": n, "accuracy": acc, "correct": {s: right(a) for s, a in acc.items()}}})


def test_real_obqa_held_over_the_strongest_baseline_on_every_seed():
    v = decide_real_obqa_gain([obqa(0.40, 0.38, 0.42, 0.52), obqa(0.41, 0.40, 0.39, 0.50)], OBQA)
    assert v.held is True and v.per_seed == pytest.approx((0.10, 0.09)) and v.kind == "claim"
    assert "bm25 0.420" in v.reason and "none 0.410" in v.reason  # the strongest baseline of each seed
    assert v.noise is not None and v.threshold == pytest.approx(max(QA_MARGIN, v.noise))


def test_real_obqa_not_held_when_bm25_reads_as_well_and_seeds_disagree_otherwise():
    v = decide_real_obqa_gain([obqa(0.40, 0.38, 0.45, 0.46), obqa(0.41, 0.40, 0.44, 0.43)], OBQA)
    assert v.held is False and v.per_seed == pytest.approx((0.01, -0.01))
    split = decide_real_obqa_gain([obqa(0.40, 0.38, 0.42, 0.52), obqa(0.41, 0.40, 0.44, 0.43)], OBQA)
    assert split.held is None and split.reason.startswith("seeds disagree")


def test_real_obqa_gain_inside_the_bootstrap_noise_is_not_held():
    # +0.06 over 50 questions clears the 0.05 margin, not 1.96 × the bootstrap sd of a 50-question difference
    v = decide_real_obqa_gain([obqa(0.40, 0.30, 0.30, 0.46, n=50), obqa(0.40, 0.30, 0.30, 0.46, n=50)], OBQA)
    assert v.held is False and v.threshold > QA_MARGIN and v.noise == pytest.approx(v.threshold)
    assert v.noise / BOOTSTRAP_Z > 0.02


def test_real_obqa_undecided_not_learned_time_budget_and_no_data():
    near_chance = OBQA_CHANCE + OBQA_LEARNED / 2
    v = decide_real_obqa_gain([obqa(0.40, 0.38, 0.42, 0.52), obqa(near_chance, 0.3, 0.3, 0.5)], OBQA)
    assert v.held is None and v.reason.startswith("not learned")
    assert decide_real_obqa_gain([seed()], CFG).reason.startswith("moved to small for the time budget")
    assert decide_real_obqa_gain([seed()], REAL).reason.startswith("moved to small for the time budget")
    assert decide_real_obqa_gain([seed(), seed()], OBQA).reason.startswith("needs the real data")
    few = seed(real={"paths": None, "items": 3, "walks": 100, "obqa": None})
    assert decide_real_obqa_gain([few, obqa(0.4, 0.4, 0.4, 0.5)], OBQA).reason.startswith("needs the real data")


# ---------------------------------------------------------------- checks and the whole decision
def test_checks_pass_and_fail():
    assert decide_pairs([seed(), seed()], CFG).held is True
    bad = seed()
    bad["synthetic"]["pairs_short_of_mentions"] = 3
    assert decide_pairs([seed(), bad], CFG).held is False
    assert decide_qa_reads_knowledge([seed(), seed()], CFG).held is True
    assert decide_qa_reads_knowledge([seed(oracle=0.2), seed()], CFG).held is False


def test_decide_covers_every_claim_and_check():
    out = decide([seed(), seed()], CFG)
    assert set(out) == set(CLAIMS) | set(CHECKS)
    assert {k for k, v in out.items() if v.kind == "check"} == set(CHECKS)


def test_real_relevance_undecided_when_too_few_pairs_were_found():
    few = {"paths": None, "items": 3, "walks": 100}
    enough = {"paths": paths(0.6, bm25=0.2), "items": 500, "walks": 100}
    v = decide_real_relevant_knowledge([seed(real=few), seed(real=enough)], REAL)
    assert v.held is None and v.reason.startswith("needs the real data: too few path-first pairs")


def test_no_triple_generated_reads_as_not_learned():
    v = decide_relevant_knowledge([seed(validity=None), seed()], CFG)  # results.json keeps NaN as null
    assert v.held is None and v.reason.startswith("not learned")
    assert decide_novel_entities([seed(validity=None, novelty=None), seed()], CFG).reason.startswith("not learned")
