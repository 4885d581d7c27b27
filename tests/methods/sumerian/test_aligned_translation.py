"""The synthetic aligned-translation task: its alignments are exactly the word correspondences."""

import pytest

from lmlab.methods.sumerian.tasks import AlignedTranslationTask


@pytest.mark.parametrize("reorder, order5", [("reverse", [4, 3, 2, 1, 0]), ("swap_pairs", [1, 0, 3, 2, 4]),
                                             ("monotone", [0, 1, 2, 3, 4])])
def test_alignment_points_each_target_word_at_its_source_word(reorder, order5):
    task = AlignedTranslationTask(n_words=10, reorder=reorder, seed=3)
    assert task.order(5) == order5 and sorted(task.order(6)) == list(range(6))
    for ex in task.sample(50, seed=1):
        assert task.min_len <= len(ex.source) <= task.max_len and len(ex.target) == len(ex.source)
        assert sorted(s for _, s in ex.alignment) == list(range(len(ex.source)))
        assert all(ex.target[t] == task.lexicon[ex.source[s]] for t, s in ex.alignment)
        assert task.verify(ex.source, ex.target) and not task.verify(ex.source, ex.target[::-1] + ["t0"])


def test_lexicon_is_a_seeded_bijection_and_sampling_is_deterministic():
    a, b = AlignedTranslationTask(seed=0), AlignedTranslationTask(seed=1)
    assert sorted(a.lexicon.values()) == sorted(a.tgt_vocab) and a.lexicon != b.lexicon
    assert a.sample(5, seed=2) == AlignedTranslationTask(seed=0).sample(5, seed=2) != a.sample(5, seed=3)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="reorder must be one of"):
        AlignedTranslationTask(reorder="shuffle")
    with pytest.raises(ValueError, match="min_len <= max_len"):
        AlignedTranslationTask(min_len=5, max_len=3)
