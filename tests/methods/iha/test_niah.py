"""RULER-style multi-key NIAH generator and the string_match_all metric."""

import re

import pytest

from lmlab.methods.iha.niah import (COMPACT_TEMPLATES, NeedleHaystack, random_uuid, string_match_all,
                              word_vocabulary)


def test_string_match_all_reference_values():
    assert string_match_all(["The number is 1234567."], [["1234567"]]) == 100.0
    assert string_match_all(["ABC and x"], [["abc", "y"]]) == 50.0  # case-insensitive, fraction per sample
    assert string_match_all(["a", "b"], [["a"], ["c"]]) == 50.0
    with pytest.raises(ValueError):
        string_match_all(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        string_match_all(["a"], [[]])


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_samples_fit_the_budget_and_hold_the_answer_once(variant):
    gen = NeedleHaystack(variant=variant, seed=3)
    for max_len in (900, 2000):
        s = gen.sample(max_len)
        assert len(s.input) + gen.tokens_to_generate <= max_len
        assert len(s.answers) == 1 and s.input.count(s.answers[0]) == 1
        needle = f"One of the special magic {gen.type_needle_v} for {s.queries[0]} is: {s.answers[0]}."
        assert needle in s.input
        assert s.input.endswith(f"for {s.queries[0]} mentioned in the provided text is")
        assert s.input.startswith(f"A special magic {gen.type_needle_v[:-1]} is hidden")
        if variant == 1:
            assert s.n_needles == 4 and s.input.count("One of the special magic") == 4
            assert "The grass is green." in s.input
        else:  # needles only: every context line is a needle with a distinct key
            lines = s.input.split("\n")[1:-1]
            assert len(lines) == s.n_needles >= (2 if max_len < 1000 else 5)
            keys = [re.match(r"One of the special magic \w+ for (.+) is: ", ln).group(1) for ln in lines]
            assert len(set(keys)) == len(keys)


def test_haystack_is_as_large_as_the_budget_allows():
    gen = NeedleHaystack(variant=2, seed=0, templates=COMPACT_TEMPLATES, tokens_to_generate=0)
    s = gen.sample(500)
    shortest_line = min(len(line) for line in s.input.split("\n")[:-1]) + 1
    assert 500 - shortest_line < len(s.input) <= 500


def test_value_and_key_formats():
    words = word_vocabulary(200, seed=1)
    assert len(set(words)) == 200 and all(re.fullmatch(r"[a-z]+-[a-z]+", w) for w in words)
    assert word_vocabulary(200, seed=1) == words
    s = NeedleHaystack(variant=2, seed=0).sample(1500)
    assert re.fullmatch(r"\d{7}", s.answers[0])
    s3 = NeedleHaystack(variant=3, seed=0).sample(1500)
    uuid_re = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert re.fullmatch(uuid_re, s3.answers[0]) and re.fullmatch(uuid_re, s3.queries[0])
    import random
    assert re.fullmatch(uuid_re, random_uuid(random.Random(0)))


def test_multi_query_multi_value_uses_plural_wording_and_all_answers():
    gen = NeedleHaystack(variant=1, seed=0, num_needle_k=4, num_needle_v=2, num_needle_q=2)
    s = gen.sample(3000)
    assert len(s.answers) == 4 and len(s.queries) == 2
    assert s.input.startswith("Some special magic numbers are hidden")
    assert s.input.endswith("mentioned in the provided text are")
    assert all(a in s.input for a in s.answers)
    assert len(s.depths) == 4 and all(0 <= d <= 1 for d in s.depths)


def test_seeded_generation_is_reproducible_and_length_fn_is_respected():
    a = NeedleHaystack(variant=2, seed=5).sample(1200)
    b = NeedleHaystack(variant=2, seed=5).sample(1200)
    assert a == b
    words = lambda t: len(t.split())  # noqa: E731
    c = NeedleHaystack(variant=2, seed=5, tokens_to_generate=10).sample(400, length_fn=words)
    assert words(c.input) + 10 <= 400 and len(c.input) > 1200


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="variant"):
        NeedleHaystack(variant=4)
    with pytest.raises(ValueError, match="raise max_length"):
        NeedleHaystack(variant=1).sample(150)
    with pytest.raises(ValueError, match="num_needle"):
        NeedleHaystack(variant=1, num_needle_k=1, num_needle_q=2)
    with pytest.raises(ValueError, match="vocab"):
        NeedleHaystack(variant=2, vocab_size=3, templates=COMPACT_TEMPLATES).sample(2000)
