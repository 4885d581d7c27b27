"""lmcore_knowledge's decisions from synthetic per-seed numbers: each claim held, not held and undecided (not learned,
seeds disagree, time budget, needs data); the retrieval check passed, failed and not run."""

import pytest

from lmlab.methods.knowledge.experiment_lmcore import (
    CHECKS,
    CLAIMS,
    CLOSED_BOOK_LEARNED,
    GOLD_COPY,
    HELP_MARGIN,
    PRESETS,
    UPDATE_TOL,
    decide,
    decide_follows_updates,
    decide_knowledge_helps,
    decide_real_lama_knowledge,
    decide_real_lama_updates,
    decide_retrieval_bound,
)

CFG = PRESETS["small"]  # closed-book LM and LAMA on
TINY = PRESETS["tiny"]


def part(reader: float = 0.98, closed: float | None = 0.3, prior: float = 0.12, gold: float = 0.99,
         new: float | None = None, old: float = 0.0, steps: int = 1000) -> dict:
    """One seed's numbers of one part: the reader's BM25 accuracy `reader`, the closed-book LM's `closed`, the
    relation-prior guess `prior`, gold-copy `gold`; after the edit agreement `new` (default: `reader`) and `old`."""
    rows = [{"probes": "templates", "retriever": name, "recall": rec, "accuracy": acc, "acc_if_retrieved": acc,
             "acc_if_missed": 0.08}
            for name, rec, acc in (("none", 0.0, 0.08), ("random", 0.0, 0.08), ("entity", 0.5, 0.53),
                                   ("bm25", 1.0, reader), ("oracle", 1.0, gold))]
    upd = {"none": {"new": 0.08, "old": 0.08, "recall": 0.0},
           "bm25": {"new": reader if new is None else new, "old": old, "recall": 1.0}}
    if closed is not None:
        upd["closed_book"] = {"new": 0.05, "old": closed, "recall": 0.0}
    return {"steps": steps, "dev_gold_copy": [gold], "train_loss": 0.1, "closed_book_train_loss": 0.9,
            "params": 1, "n_probes": 600, "rows": rows, "closed_book": closed, "prior": prior, "chance": 0.079,
            "gold_copy": gold, "before": reader, "update": upd, "n_updated": 600}


def seed(**kw) -> dict:
    return {"synthetic": part(**kw), "lama": part(**kw)}


# ---------------------------------------------------------------- knowledge_helps and real_lama_knowledge
@pytest.mark.parametrize("decide_helps", [decide_knowledge_helps, decide_real_lama_knowledge])
def test_helps_held_when_the_reader_beats_the_closed_book_lm_by_the_margin_on_every_seed(decide_helps):
    v = decide_helps([seed(reader=0.98, closed=0.3), seed(reader=0.95, closed=0.35)], CFG)
    assert v.held is True and v.per_seed == pytest.approx((0.68, 0.60)) and v.threshold == HELP_MARGIN
    assert v.extra["closed_book"] == [0.3, 0.35]


@pytest.mark.parametrize("decide_helps", [decide_knowledge_helps, decide_real_lama_knowledge])
def test_helps_not_held_when_the_closed_book_lm_memorised_the_facts(decide_helps):
    v = decide_helps([seed(reader=0.98, closed=0.9), seed(reader=0.97, closed=0.8)], CFG)
    assert v.held is False and "every seed falls short" in v.reason


def test_helps_undecided_when_seeds_disagree():
    v = decide_knowledge_helps([seed(reader=0.98, closed=0.3), seed(reader=0.98, closed=0.7)], CFG)
    assert v.held is None and v.reason.startswith("seeds disagree")


@pytest.mark.parametrize("decide_helps", [decide_knowledge_helps, decide_real_lama_knowledge])
def test_helps_undecided_not_learned_when_the_reader_does_not_copy_a_given_gold_fact(decide_helps):
    v = decide_helps([seed(), seed(reader=0.6, gold=0.632)], CFG)
    assert v.held is None and v.reason.startswith("not learned") and "0.632" in v.reason
    assert "1 of 2 seeds" in v.reason and v.extra["gold_copy"][1] < GOLD_COPY


def test_helps_undecided_not_learned_when_the_closed_book_lm_stays_at_the_relation_prior():
    v = decide_knowledge_helps([seed(), seed(closed=0.12 + CLOSED_BOOK_LEARNED / 2)], CFG)
    assert v.held is None and v.reason.startswith("not learned") and "closed-book" in v.reason


def test_helps_moved_to_small_at_tiny_and_real_part_needs_data():
    assert TINY.closed_book is False and CFG.closed_book and PRESETS["gpu"].closed_book
    tiny = decide_knowledge_helps([seed(closed=None), seed(closed=None)], TINY)
    assert tiny.held is None and tiny.reason.startswith("moved to small for the time budget")
    lama_tiny = decide_real_lama_knowledge([{"synthetic": part(), "lama": None}] * 2, TINY)
    assert lama_tiny.held is None and lama_tiny.reason.startswith("moved to small for the time budget")
    nodata = decide_real_lama_knowledge([{"synthetic": part(), "lama": None}] * 2, CFG)
    assert nodata.held is None and nodata.reason.startswith("needs the real data")


# ---------------------------------------------------------------- follows_updates and real_lama_updates
@pytest.mark.parametrize("decide_updates", [decide_follows_updates, decide_real_lama_updates])
def test_updates_held_when_answers_follow_the_edit_on_every_seed(decide_updates):
    v = decide_updates([seed(reader=0.98, new=0.97, old=0.0), seed(reader=0.99, new=0.99, old=0.01)], CFG)
    assert v.held is True and v.per_seed == pytest.approx((-0.01, -0.01)) and v.threshold == -UPDATE_TOL
    assert "closed-book LM agrees with the new facts" in v.reason


@pytest.mark.parametrize("decide_updates", [decide_follows_updates, decide_real_lama_updates])
def test_updates_not_held_when_answers_keep_the_replaced_facts(decide_updates):
    v = decide_updates([seed(reader=0.98, new=0.6, old=0.3), seed(reader=0.98, new=0.5, old=0.2)], CFG)
    assert v.held is False and v.per_seed == pytest.approx((-0.38, -0.48))


def test_updates_undecided_when_seeds_disagree_and_when_not_learned():
    split = decide_follows_updates([seed(new=0.97), seed(new=0.7)], TINY)
    assert split.held is None and split.reason.startswith("seeds disagree")
    lama = decide_real_lama_updates([seed(reader=0.63, gold=0.632, new=0.235, old=0.068)] * 2, CFG)
    assert lama.held is None and lama.reason.startswith("not learned") and "lama_max_steps=9000" in lama.reason


def test_updates_decided_at_tiny_without_the_closed_book_lm():
    v = decide_follows_updates([seed(closed=None), seed(closed=None)], TINY)
    assert v.held is True and "closed-book" not in v.reason


# ---------------------------------------------------------------- the retrieval check
def test_retrieval_check_passes_fails_and_is_not_run_when_not_learned():
    ok = decide_retrieval_bound([seed(), seed()], TINY)
    assert ok.kind == "check" and ok.status == "passed"
    over = seed()
    over["synthetic"]["rows"][2]["accuracy"] = 0.9  # entity: recall 0.5, accuracy far above recall + guessing
    bad = decide_retrieval_bound([seed(), over], TINY)
    assert bad.status == "failed" and "1 of 2 seeds pass" in bad.reason
    unlearned = decide_retrieval_bound([seed(), seed(gold=0.5)], TINY)
    assert unlearned.status == "not run" and unlearned.reason.startswith("not run")


def test_decide_covers_every_claim_and_check():
    v = decide([seed(), seed()], CFG)
    assert set(v) == set(CLAIMS) | set(CHECKS)
    assert all(v[c].kind == "claim" for c in CLAIMS) and v["retrieval_bounds_accuracy"].kind == "check"
    assert all(p.seeds >= 2 for p in PRESETS.values()) and PRESETS["small"].seeds >= 3 and PRESETS["gpu"].seeds >= 3
