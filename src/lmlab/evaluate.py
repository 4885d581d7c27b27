"""Evaluation: unbiased pass@k, majority vote, exact match, perplexity / bits per token, verifier accuracy.

Everything here gives the same numbers whatever the evaluation batch size: losses are summed per token
in float64 over fixed windows that do not depend on the batch, and sampled evaluations draw each
(problem, sample) from its own seed (`lmlab.generate` `seeds=`), so batch composition cannot change them.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.generate import _device, _eval_mode, forward_logits, generate
from lmlab.utils import LmlabError


# ============================================================================ pass@k
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise LmlabError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_curve(n: int, c: int) -> np.ndarray:
    """pass@k for k = 1..n (index k-1); non-decreasing in k."""
    return np.array([pass_at_k(n, c, k) for k in range(1, n + 1)])


def mean_pass_at_k(
    counts: Sequence[int] | Sequence[tuple[int, int]], k: int | Iterable[int], n: int | None = None
):
    """Average pass@k over problems. counts: correct counts with a common `n`, or (n_i, c_i) pairs.

    Returns a float for one k, or {k: value} for several.
    """
    if not len(counts):  # len(): numpy arrays have no truth value
        raise LmlabError("mean_pass_at_k needs at least one problem")
    pairs = (
        [(int(x[0]), int(x[1])) for x in counts]
        if isinstance(counts[0], (tuple, list, np.ndarray))
        else [(None if n is None else int(n), int(c)) for c in counts]
    )
    if any(ni is None for ni, _ in pairs):
        raise LmlabError("give n (samples per problem) or (n, c) pairs")
    single = isinstance(k, numbers.Integral)
    ks = [int(k)] if single else [_check_k(kk) for kk in k]
    out = {kk: float(np.mean([pass_at_k(ni, ci, kk) for ni, ci in pairs])) for kk in ks}
    return out[ks[0]] if single else out


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise LmlabError(f"k must be an integer, got {k!r}")
    return int(k)


def mean_pass_at_k_curve(counts: Sequence[int], n: int) -> np.ndarray:
    """Average pass@k curve (k = 1..n) over problems with n samples each."""
    if not len(counts):
        raise LmlabError("mean_pass_at_k_curve needs at least one problem")
    return np.mean([pass_at_k_curve(n, int(c)) for c in counts], axis=0)


# ============================================================================ answers
def normalize_answer(s: str) -> str:
    """Strip, collapse internal whitespace, casefold."""
    return re.sub(r"\s+", " ", str(s).strip()).casefold()


def exact_match(prediction: Any, reference: Any, normalize: bool = True) -> bool:
    if normalize:
        return normalize_answer(prediction) == normalize_answer(reference)
    return prediction == reference


def exact_match_rate(predictions: Sequence, references: Sequence, normalize: bool = True) -> float:
    if len(predictions) != len(references):
        raise LmlabError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise LmlabError("exact_match_rate needs at least one prediction")
    return sum(exact_match(p, r, normalize) for p, r in zip(predictions, references)) / len(predictions)


def majority_vote(
    answers: Sequence[Hashable],
    normalize: Callable[[Any], Hashable] | None = None,
    ignore: Iterable = (None, ""),
):
    """The most frequent answer (ties: the one seen first). `ignore`d answers (unparsable) do not vote;
    returns None when nothing votes. With `normalize`, answers are compared by their normalized form
    and the first original spelling is returned."""
    ignore = set(ignore)
    first, counts = {}, Counter()
    for a in answers:
        if a in ignore:
            continue
        key = normalize(a) if normalize else a
        counts[key] += 1
        first.setdefault(key, a)
    if not counts:
        return None
    best = max(counts.values())
    for key, a in first.items():  # dict order = first appearance
        if counts[key] == best:
            return a


def majority_vote_accuracy(
    answers_per_problem: Sequence[Sequence],
    references: Sequence,
    normalize: Callable[[Any], Hashable] | None = normalize_answer,
) -> float:
    """Fraction of problems whose majority answer equals the reference (maj@n)."""
    if len(answers_per_problem) != len(references):
        raise LmlabError(f"{len(answers_per_problem)} answer groups for {len(references)} references")
    hits = 0
    for answers, ref in zip(answers_per_problem, references):
        vote = majority_vote(answers, normalize)
        hits += vote is not None and (normalize(vote) == normalize(ref) if normalize else vote == ref)
    return hits / len(references)


# ============================================================================ verifiers
def verifier_accuracy(
    completions: Sequence, verify: Callable[..., bool], problems: Sequence | None = None
) -> dict:
    """Accuracy of `verify(problem, completion)` (or `verify(completion)` without problems)."""
    if problems is not None and len(problems) != len(completions):
        raise LmlabError(f"{len(completions)} completions for {len(problems)} problems")
    if not completions:
        raise LmlabError("verifier_accuracy needs at least one completion")
    ok = (
        [bool(verify(p, c)) for p, c in zip(problems, completions)]
        if problems is not None
        else [bool(verify(c)) for c in completions]
    )
    return {"accuracy": sum(ok) / len(ok), "n_correct": sum(ok), "n": len(ok), "correct": ok}


def sample_and_verify(
    model,
    prompts: Sequence[Sequence[int]],
    verify: Callable[[int, list[int]], bool],
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens=None,
    pad_id: int = 0,
    seed: int = 0,
    batch_size: int = 64,
    ks: Iterable[int] | None = None,
) -> dict:
    """Sample n completions per prompt and score them with `verify(problem_index, completion_ids)`.

    Each (problem i, sample j) has its own seed, so the result does not depend on `batch_size`.
    Returns per-problem correct counts, pass@k for `ks` (default 1 and n), the pass@k curve, and
    the completions.
    """
    if n < 1:
        raise LmlabError(f"n (samples per problem) must be >= 1, got {n}")
    ks = sorted({_check_k(k) for k in (ks or (1, n))})
    if any(not 1 <= k <= n for k in ks):
        raise LmlabError(f"pass@k needs 1 <= k <= n = {n} samples per problem; got ks={ks}")
    jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
    completions: list[list[int]] = []
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s : s + batch_size]
        g = generate(
            model,
            [list(prompts[i]) for i, _ in chunk],
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_tokens=stop_tokens,
            pad_id=pad_id,
            seeds=[_job_seed(seed, i, j) for i, j in chunk],
        )
        completions += g.tokens
    counts = [sum(bool(verify(i, completions[i * n + j])) for j in range(n)) for i in range(len(prompts))]
    curve = mean_pass_at_k_curve(counts, n)
    return {
        "n": n,
        "counts": counts,
        "pass": {k: float(curve[k - 1]) for k in ks},
        "curve": curve.tolist(),
        "completions": [completions[i * n : (i + 1) * n] for i in range(len(prompts))],
    }


def _job_seed(seed: int, problem: int, sample: int) -> int:
    return (seed * 1_000_003 + problem) * 65_537 + sample


# ============================================================================ perplexity
@torch.no_grad()
def token_nll(
    model,
    tokens: Sequence[int] | torch.Tensor,
    seq_len: int,
    batch_size: int = 16,
    stride: int | None = None,
    bos_id: int | None = None,
) -> dict:
    """Summed next-token NLL of a held-out token stream, scored in windows of `seq_len` input tokens.

    Window k reads tokens [k·stride, k·stride + seq_len) and scores the next tokens it predicts that no
    earlier window scored; stride (default seq_len) < seq_len gives later tokens more context.
    bos_id: prepended to the stream so that its first token is scored too.
    The windows depend only on the stream (never on `batch_size`), equal-width windows are batched
    without padding and losses are summed in float64, so results are batch-size invariant.
    Returns nll (nats, summed), n_tokens, mean_nll, perplexity, bits_per_token.
    """
    ids = torch.as_tensor(tokens, dtype=torch.long).flatten().cpu()
    if bos_id is not None:
        ids = torch.cat([torch.tensor([bos_id]), ids])
    stride = stride or seq_len
    if seq_len < 1 or not 1 <= stride <= seq_len:
        raise LmlabError(
            f"need seq_len >= 1 and 1 <= stride <= seq_len; got seq_len={seq_len}, stride={stride}"
        )
    if len(ids) < 2:
        raise LmlabError(f"the token stream has {len(ids)} tokens: too short to score (pass bos_id?)")
    windows = stream_windows(len(ids), seq_len, stride)
    dev = _device(model)
    total, count = 0.0, 0
    by_width: dict[int, list] = {}
    for w in windows:
        by_width.setdefault(w[1] - w[0], []).append(w)
    with _eval_mode(model):
        for width, group in sorted(by_width.items()):
            for s in range(0, len(group), batch_size):
                chunk = group[s : s + batch_size]
                x = torch.stack([ids[b:e] for b, e, _ in chunk])
                tgt = torch.stack([ids[b + 1 : e + 1] for b, e, _ in chunk])
                for r, (b, _, first) in enumerate(chunk):
                    tgt[r, : first - (b + 1)] = -100  # already scored by an earlier window
                logits = forward_logits(model, x.to(dev)).double()
                total += float(
                    F.cross_entropy(logits.transpose(1, 2), tgt.to(dev), ignore_index=-100, reduction="sum")
                )
                count += int((tgt != -100).sum())
    mean = total / count
    return {
        "nll": total,
        "n_tokens": count,
        "mean_nll": mean,
        "perplexity": math.exp(mean),
        "bits_per_token": mean / math.log(2),
    }


def stream_windows(n: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored target) per window over a stream of n tokens: the window reads
    tokens [begin, end) and predicts [begin+1, end]; targets 1..n-1 are each scored exactly once."""
    out, next_target, begin = [], 1, 0
    while next_target < n:
        end = min(begin + seq_len, n - 1)
        out.append((begin, end, next_target))
        next_target = end + 1
        begin += stride
    return out


def perplexity(
    model,
    tokens,
    seq_len: int,
    batch_size: int = 16,
    stride: int | None = None,
    bos_id: int | None = None,
    n_bytes: int | None = None,
) -> dict:
    """`token_nll` plus bits per byte when the stream's text length in bytes (`n_bytes`) is given."""
    r = token_nll(model, tokens, seq_len, batch_size, stride, bos_id)
    if n_bytes:
        r["bits_per_byte"] = r["nll"] / math.log(2) / n_bytes
    return r
