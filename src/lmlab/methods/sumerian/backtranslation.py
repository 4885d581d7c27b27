"""Monolingual back-translation (M-BT) as a controlled comparison, and the numbers that explain a BLEU score.

The paper's monolingual Ur III corpus is absent from the shared data, so M-BT is tested on a pseudo-monolingual
split: part of a parallel training corpus keeps only its Sumerian side. Both arms train on the same parallel
remainder; the M-BT arm adds the forward translations of the pseudo-monolingual lines. No pseudo-monolingual line
is a held-out (dev or test) source: checked by hash.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from lmlab.methods.sumerian.translate import overlaps_held_out


def line_key(line: str) -> str:
    """sha256 of a line with its whitespace normalised: the identity used to prove two line sets disjoint."""
    return hashlib.sha256(" ".join(line.split()).encode()).hexdigest()


def pseudo_monolingual_split(
    pairs: list[tuple[str, str]], mono_frac: float, seed: int, held_out: list[str]
) -> tuple[list[tuple[str, str]], list[str], dict]:
    """Split `pairs` at random (by `seed`) into a parallel part and the Sumerian side of a `mono_frac` share.

    Returns (parallel pairs in corpus order, pseudo-monolingual Sumerian lines in corpus order, counts). A
    pseudo-monolingual line equal (by hash) to a `held_out` source is dropped and used in neither arm. Lines that
    merely contain or sit inside a held-out source are kept and counted: the parallel training data, which both
    arms use, are not filtered that way either (Ur III lines are formulaic; the filter would drop two thirds).
    """
    if not 0.0 < mono_frac < 1.0:
        raise ValueError(f"mono_frac must lie in (0, 1), got {mono_frac}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    mono_idx = set(order[: round(mono_frac * len(pairs))].tolist())
    parallel = [p for i, p in enumerate(pairs) if i not in mono_idx]
    candidates = [pairs[i][0] for i in sorted(mono_idx)]
    held_keys = {line_key(s) for s in held_out}
    equal = [line_key(s) in held_keys for s in candidates]
    mono = [s for s, e in zip(candidates, equal) if not e]
    counts = {"parallel": len(parallel), "mono": len(mono), "mono_dropped_equal_to_held_out": sum(equal),
              "mono_overlapping_held_out_by_words": sum(overlaps_held_out(mono, held_out))}
    return parallel, mono, counts


# ---------------------------------------------------------------- BLEU with its test-set sampling noise
def bleu_stats(hyps: list[str], refs: list[str]) -> np.ndarray:
    """sacrebleu's sufficient statistics per sentence: (n, 10) = hyp len, ref len, 4 matches, 4 totals."""
    from sacrebleu.metrics import BLEU  # heavy: imported only when scoring

    return np.asarray(BLEU()._extract_corpus_statistics(hyps, [refs]), dtype=np.int64)


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU (sacrebleu's defaults) from summed statistics; equals `sacrebleu.corpus_bleu` on the lines."""
    from sacrebleu.metrics import BLEU

    s = [int(x) for x in stats]
    return BLEU.compute_bleu(s[2:6], s[6:10], s[0], s[1]).score


def paired_bootstrap(hyps_a: list[str], hyps_b: list[str], refs: list[str], n: int = 1000, seed: int = 0) -> dict:
    """BLEU(b) − BLEU(a) on the test set and its sampling noise: `n` resamples of the test sentences (the same
    resample for both systems, Koehn 2004). Returns the difference, the bootstrap sd and the 95 % percentile
    interval."""
    sa, sb = bleu_stats(hyps_a, refs), bleu_stats(hyps_b, refs)
    delta = bleu_from_stats(sb.sum(0)) - bleu_from_stats(sa.sum(0))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        idx = rng.integers(0, len(refs), len(refs))
        draws.append(bleu_from_stats(sb[idx].sum(0)) - bleu_from_stats(sa[idx].sum(0)))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"delta": delta, "sd": float(np.std(draws, ddof=1)), "lo": float(lo), "hi": float(hi), "n": n}


# ---------------------------------------------------------------- why a BLEU score is what it is
_NUMERAL = re.compile(r"\d")


def numeral_masked(line: str) -> tuple[str, ...]:
    """The words of a line, each word that holds a digit (Ur III numerals such as `3(disz)`, `1/2(iku)`) as `#`."""
    return tuple("#" if _NUMERAL.search(w) else w for w in line.split())


def near_duplicates(test_sources: list[str], train_sources: list[str]) -> list[bool]:
    """For each test source: does a training source equal it once numerals are masked (the same formula with
    other counts)?"""
    seen = {numeral_masked(s) for s in train_sources}
    return [numeral_masked(s) in seen for s in test_sources]


def bleu_breakdown(hyps: dict[str, list[str]], refs: list[str], test_sources: list[str],
                   train_sources: list[str]) -> dict:
    """Named, measured differences behind a corpus BLEU: each decoding's BLEU and brevity penalty, its BLEU under
    other sacrebleu tokenisations, and its BLEU on the test lines with and without a numeral-masked near-duplicate
    among the training sources."""
    import sacrebleu  # heavy: imported only when scoring

    dup = near_duplicates(test_sources, train_sources)
    keep_dup = [i for i, d in enumerate(dup) if d]
    keep_new = [i for i, d in enumerate(dup) if not d]
    out = {"near_duplicate_share": len(keep_dup) / max(1, len(dup)), "near_duplicates": len(keep_dup),
           "test_lines": len(dup), "systems": {}}
    for name, h in hyps.items():
        full = sacrebleu.corpus_bleu(h, [refs])
        row = {"bleu": full.score, "brevity_penalty": full.bp, "hyp_len": full.sys_len, "ref_len": full.ref_len,
               "bleu_lowercase": sacrebleu.corpus_bleu(h, [refs], lowercase=True).score,
               "bleu_tokenize_none": sacrebleu.corpus_bleu(h, [refs], tokenize="none").score,
               "bleu_tokenize_intl": sacrebleu.corpus_bleu(h, [refs], tokenize="intl").score}
        for label, idx in (("near_duplicate", keep_dup), ("no_near_duplicate", keep_new)):
            row[f"bleu_{label}"] = (sacrebleu.corpus_bleu([h[i] for i in idx], [[refs[i] for i in idx]]).score
                                    if idx else None)
        out["systems"][name] = row
    return out
