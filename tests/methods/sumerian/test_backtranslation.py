"""The M-BT split, the paired bootstrap and the BLEU breakdown, against sacrebleu and naive references."""

import numpy as np
import pytest
import sacrebleu

from lmlab.methods.sumerian.backtranslation import (
    bleu_breakdown,
    bleu_from_stats,
    bleu_stats,
    line_key,
    near_duplicates,
    paired_bootstrap,
    pseudo_monolingual_split,
)

REFS = ["the cat sat on the mat", "a dog ran in the park today", "1 sheep for the temple of Nanna",
        "barley rations of the female weavers", "under seal of UrAnan the foreman"] * 8
HYPS = ["the cat sat on a mat", "a dog ran in the park", "1 sheep for the temple", "barley of the weavers",
        "under seal of UrAnan the foreman"] * 8


def test_bleu_from_stats_equals_sacrebleu_on_any_subset():
    stats = bleu_stats(HYPS, REFS)
    assert bleu_from_stats(stats.sum(0)) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    idx = [0, 3, 3, 7, 12, 12, 12, 20]
    sub = sacrebleu.corpus_bleu([HYPS[i] for i in idx], [[REFS[i] for i in idx]]).score
    assert bleu_from_stats(stats[idx].sum(0)) == pytest.approx(sub)


def test_paired_bootstrap_difference_and_its_spread():
    worse = [" ".join(h.split()[:-1]) for h in HYPS]
    b = paired_bootstrap(worse, HYPS, REFS, n=200, seed=0)
    exact = sacrebleu.corpus_bleu(HYPS, [REFS]).score - sacrebleu.corpus_bleu(worse, [REFS]).score
    assert b["delta"] == pytest.approx(exact) and b["sd"] > 0 and b["lo"] <= b["delta"] <= b["hi"]
    same = paired_bootstrap(HYPS, HYPS, REFS, n=50)
    assert same["delta"] == 0 and same["sd"] == 0  # the same resample for both systems: no noise
    assert paired_bootstrap(worse, HYPS, REFS, n=200, seed=0) == b  # seeded


def test_pseudo_monolingual_split_is_disjoint_seeded_and_drops_held_out_lines_by_hash():
    pairs = [(f"line {i} udu", f"line {i} sheep") for i in range(100)]
    held = ["line 7 udu", "line  8   udu", "zzz"]
    par, mono, c = pseudo_monolingual_split(pairs, 0.4, seed=3, held_out=held)
    assert {s for s, _ in par}.isdisjoint(mono) and len(par) == 60
    assert len(mono) + c["mono_dropped_equal_to_held_out"] == 40
    assert not {line_key(s) for s in mono} & {line_key(s) for s in held}
    assert [p for p in pairs if p in par] == par  # corpus order
    assert pseudo_monolingual_split(pairs, 0.4, 3, held) == (par, mono, c)
    assert pseudo_monolingual_split(pairs, 0.4, 4, held)[1] != mono
    with pytest.raises(ValueError, match="mono_frac"):
        pseudo_monolingual_split(pairs, 1.0, 0, held)


def test_near_duplicates_mask_numerals_only():
    train = ["3(disz) udu niga", "ki ur-{d}nanna-ta"]
    test = ["5(disz) udu niga", "3(disz) masz2", "ki ur-{d}nanna-ta", "ki lugal-ta"]
    assert near_duplicates(test, train) == [True, False, True, False]


def test_bleu_breakdown_splits_the_test_set_by_near_duplicates():
    src = [f"{i}(disz) udu" if i % 2 else f"word{i}" for i in range(len(REFS))]
    train = ["9(disz) udu"]
    bd = bleu_breakdown({"a": HYPS}, REFS, src, train)
    dup = np.array(near_duplicates(src, train))
    assert bd["near_duplicates"] == dup.sum() and bd["near_duplicate_share"] == pytest.approx(dup.mean())
    row = bd["systems"]["a"]
    idx = np.flatnonzero(dup)
    assert row["bleu_near_duplicate"] == pytest.approx(
        sacrebleu.corpus_bleu([HYPS[i] for i in idx], [[REFS[i] for i in idx]]).score)
    assert row["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score) and 0 < row["brevity_penalty"] <= 1
