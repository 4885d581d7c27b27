import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from lmlab.evaluate import (
    exact_match,
    exact_match_rate,
    majority_vote,
    majority_vote_accuracy,
    mean_pass_at_k,
    mean_pass_at_k_curve,
    pass_at_k,
    pass_at_k_curve,
    perplexity,
    sample_and_verify,
    stream_windows,
    token_nll,
    verifier_accuracy,
)
from lmlab.model import GPT, GPTConfig
from lmlab.utils import LmlabError


def brute_force_pass_at_k(n, c, k):
    """Fraction of all k-subsets of the n samples that contain at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_stable_for_large_n():
    n, c, k = 2000, 7, 900
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4, rel=1e-12)


@pytest.mark.parametrize("n,c", [(10, 0), (10, 1), (10, 4), (16, 16), (50, 3)])
def test_pass_at_k_curve_monotone_with_known_ends(n, c):
    curve = pass_at_k_curve(n, c)
    assert len(curve) == n
    assert np.all(np.diff(curve) >= -1e-15)
    assert curve[0] == pytest.approx(c / n)
    assert curve[-1] == (1.0 if c > 0 else 0.0)


def test_mean_pass_at_k_forms():
    counts = [0, 3, 8]
    assert mean_pass_at_k(counts, 1, n=8) == pytest.approx(np.mean([0, 3 / 8, 1]))
    both = mean_pass_at_k([(8, 0), (8, 3), (8, 8)], [1, 4])
    assert both[1] == pytest.approx(np.mean([0, 3 / 8, 1]))
    assert both[4] == pytest.approx(np.mean([0, pass_at_k(8, 3, 4), 1]))
    curve = mean_pass_at_k_curve(counts, 8)
    assert curve[3] == pytest.approx(both[4])
    with pytest.raises(LmlabError):
        pass_at_k(4, 5, 1)
    with pytest.raises(LmlabError):
        pass_at_k(4, 2, 5)


def test_majority_vote_and_exact_match():
    assert majority_vote(["7", "3", "3", "7", None, None, None]) == "7"  # tie -> first seen; None ignored
    assert majority_vote(["a", "b", "b"]) == "b"
    assert majority_vote([None, ""]) is None
    assert majority_vote([" X", "x", "y"], normalize=str.strip) == " X"
    assert majority_vote_accuracy(
        [["4", "4", "5"], ["1", "2", "2"], [None]], ["4", "1", "0"]
    ) == pytest.approx(1 / 3)
    assert exact_match("  The  Answer ", "the answer")
    assert not exact_match("The answer", "the answer", normalize=False)
    assert exact_match_rate(["1", "2", "3"], ["1", "2", "4"]) == pytest.approx(2 / 3)


def test_verifier_accuracy():
    r = verifier_accuracy(["12", "7", "x"], lambda p, c: c == str(p * 3), problems=[4, 2, 1])
    assert r["accuracy"] == pytest.approx(1 / 3) and r["correct"] == [True, False, False]
    assert verifier_accuracy(["a", "bb"], lambda c: len(c) == 2)["n_correct"] == 1


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, n_layers=2, n_heads=2, d_model=32, init_std=0.1)).eval()


def test_stream_windows_score_every_token_once():
    for n, L, s in [(10, 4, 4), (10, 4, 2), (10, 4, 1), (5, 8, 8), (2, 3, 3), (97, 16, 5)]:
        seen = []
        for b, e, first in stream_windows(n, L, s):
            assert 0 < e - b <= L
            seen += list(range(first, e + 1))
            assert b + 1 <= first  # scored targets are predicted inside the window
        assert seen == list(range(1, n))


def test_perplexity_equals_direct_loss_and_is_batch_invariant(model):
    g = torch.Generator().manual_seed(1)
    stream = torch.randint(0, 40, (203,), generator=g)
    ref = token_nll(model, stream, seq_len=16, batch_size=1)
    assert ref["n_tokens"] == 202
    for bs in (3, 64):
        r = token_nll(model, stream, seq_len=16, batch_size=bs)
        assert r["nll"] == pytest.approx(ref["nll"], rel=1e-9) and r["n_tokens"] == 202
    # direct: non-overlapping windows are independent sequences of 16 inputs
    total = 0.0
    for b in range(0, 202, 16):
        x, y = stream[b : min(b + 16, 202)], stream[b + 1 : min(b + 17, 203)]
        with torch.no_grad():
            total += float(model(x[None], y[None], loss_reduction="none").double().sum())
    assert ref["nll"] == pytest.approx(total, rel=1e-6)
    assert ref["bits_per_token"] == pytest.approx(ref["mean_nll"] / math.log(2))
    assert ref["perplexity"] == pytest.approx(math.exp(ref["mean_nll"]))
    # overlapping windows: same tokens scored, with more context; bos scores the first token too
    strided = token_nll(model, stream, seq_len=16, stride=4, batch_size=5)
    assert strided["n_tokens"] == 202
    assert token_nll(model, stream, seq_len=16, stride=4, batch_size=2)["nll"] == pytest.approx(
        strided["nll"], rel=1e-9
    )
    assert token_nll(model, stream, seq_len=16, bos_id=1)["n_tokens"] == 203


def test_perplexity_of_a_uniform_model_is_the_vocab_size():
    m = GPT(GPTConfig(vocab_size=37, n_layers=1, n_heads=2, d_model=16, tie_embeddings=False))
    torch.nn.init.zeros_(m.lm_head.weight)
    r = perplexity(m, list(range(30)) * 3, seq_len=8, n_bytes=90)
    assert r["perplexity"] == pytest.approx(37, rel=1e-9)
    assert r["bits_per_token"] == pytest.approx(math.log2(37))
    assert r["bits_per_byte"] == pytest.approx(math.log2(37) * 89 / 90)


def test_sample_and_verify_is_batch_size_invariant(model):
    prompts = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]]

    def verify(i, completion):  # "correct" when the first sampled token is even
        return len(completion) > 0 and completion[0] % 2 == 0

    kw = dict(n=6, max_new_tokens=3, temperature=1.0, seed=3, stop_tokens={0}, ks=[1, 3, 6])
    ref = sample_and_verify(model, prompts, verify, batch_size=64, **kw)
    for bs in (1, 5):
        r = sample_and_verify(model, prompts, verify, batch_size=bs, **kw)
        assert r["completions"] == ref["completions"] and r["counts"] == ref["counts"]
    assert ref["pass"][1] == pytest.approx(sum(ref["counts"]) / (6 * 4))
    assert ref["pass"][6] == pytest.approx(np.mean([c > 0 for c in ref["counts"]]))
    assert 0 < sum(ref["counts"]) < 24  # the verifier really discriminates
    assert np.all(np.diff(ref["curve"]) >= 0)
    assert (
        sample_and_verify(model, prompts, verify, batch_size=7, **{**kw, "seed": 4})["completions"]
        != ref["completions"]
    )


def test_sample_and_verify_rejects_k_outside_1_to_n(model):
    """Audit L-2: k=0 silently returned pass@n (curve[-1]) and k>n raised a raw IndexError."""
    kw = {"n": 4, "max_new_tokens": 2, "seed": 0}
    for ks in ([0, 1], [1, 5], [-1]):
        with pytest.raises(LmlabError, match="1 <= k <= n"):
            sample_and_verify(model, [[1, 2]], lambda i, c: True, ks=ks, **kw)
    r = sample_and_verify(model, [[1, 2]], lambda i, c: True, ks=[np.int64(1), 4], **kw)
    assert r["pass"] == {1: 1.0, 4: 1.0}


def test_mean_pass_at_k_takes_numpy_inputs():
    counts = [0, 3, 8]
    ref = mean_pass_at_k(counts, 1, n=8)
    assert mean_pass_at_k(np.array(counts), 1, n=8) == pytest.approx(ref)
    assert mean_pass_at_k(counts, np.int64(1), n=8) == pytest.approx(ref)
    assert mean_pass_at_k(np.array(counts), np.array([1, 4]), n=np.int64(8)) == pytest.approx(
        mean_pass_at_k(counts, [1, 4], n=8))
    pairs = np.array([[8, 0], [8, 3], [8, 8]])
    assert mean_pass_at_k(pairs, 1) == pytest.approx(ref)
    with pytest.raises(LmlabError):
        mean_pass_at_k(np.array([], dtype=int), 1, n=8)
    with pytest.raises(LmlabError):
        mean_pass_at_k(counts, 0, n=8)
