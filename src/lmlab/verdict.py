"""How a claim is decided: one rule, applied to numbers measured once per seed, stated in every report.

An experiment measures each seed (`measure(ctx, seed) -> numbers`); each claim's `decide_*` turns the per-seed
numbers into a `Verdict` — usually through `by_threshold`, which applies `RULE`. A *check* (a sanity check that
cannot fail by construction, or a re-read of published data) is a separate kind: it passes or fails, and the
paper claim it stood in for is reported as "not tested", never dropped.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from scipy import stats

RULE = ("Each claim's effect is measured once per seed and compared with a threshold: the larger of the committed "
        "margin and the measured replicate noise of the quantity. With n ≤ 4 seeds the claim holds when every seed "
        "clears the threshold, does not hold when every seed falls short, and is undecided (seeds disagree) "
        "otherwise; with more seeds it holds when the 95 % t-interval of the mean lies above the threshold, does "
        "not hold when it lies below, and is undecided when it contains it. Models that did not learn the task "
        "leave a claim undecided (not learned), never not held.")

# how undecided reasons begin (`undecided`, `part_not_measured`, `by_threshold`): a claim made of parts takes the
# cause of its first undecided part
UNDECIDED_CAUSES = ("not learned", "needs the real data", "needs data", "moved to", "time budget", "not measured",
                    "seeds disagree")
SMALL_N = 4  # up to this many seeds, every seed must agree; beyond it, the interval decides


@dataclass(frozen=True)
class Verdict:
    """A claim's (or a check's) outcome with the numbers behind it.

    held: True / False / None (undecided; `reason` says why). kind: "claim", "check" or "not tested".
    per_seed: the effect of each seed; effect: their mean; spread: their sample sd; interval: the 95 % t-interval
    of the mean (n > SMALL_N); threshold = max(margin, noise).
    """

    held: bool | None
    reason: str
    kind: str = "claim"
    effect: float | None = None
    per_seed: tuple[float, ...] = ()
    spread: float | None = None
    interval: tuple[float, float] | None = None
    margin: float | None = None
    noise: float | None = None
    threshold: float | None = None
    n: int = 0
    extra: dict = field(default_factory=dict)  # further numbers the reason cites

    def __post_init__(self):
        if self.kind not in ("claim", "check", "not tested"):
            raise ValueError(f"Verdict kind must be claim, check or not tested, got {self.kind!r}")
        if not str(self.reason).strip():
            raise ValueError("a verdict needs its reason, with the numbers")

    @property
    def status(self) -> str:
        if self.kind == "not tested":
            return "not tested"
        if self.kind == "check":
            return {True: "passed", False: "failed", None: "not run"}[self.held]
        return {True: "held", False: "not held", None: "undecided"}[self.held]

    def to_json(self) -> dict:
        d = asdict(self)
        d["per_seed"] = list(self.per_seed)
        d["interval"] = list(self.interval) if self.interval is not None else None
        d["status"] = self.status
        return d


def undecided(reason: str, **numbers) -> Verdict:
    """An undecided claim: `reason` starts with the cause (not learned, seeds disagree, needs data, time budget)
    and gives its numbers."""
    return Verdict(None, reason, extra=numbers)


def part_not_measured(per_seed: Sequence[dict], key: str, *, data: str, enabled: bool = True, budget: str = "",
                      preset: str = "small") -> Verdict | None:
    """The undecided verdict for a claim whose part of the measurement this run lacks, or None when every seed
    measured it: the preset switched the part off (`enabled` false; `budget` says what it costs, with its
    numbers), or a seed recorded no numbers under `key` because the real data (`data`, the folder or files
    looked for) are absent."""
    from lmlab.utils import DATA_HINT  # the one hint every data error gives

    if not enabled:
        return undecided(f"moved to {preset} for the time budget: {budget}; run --preset {preset}")
    if any(n.get(key) is None for n in per_seed):
        return undecided(f"needs the real data: {data} was not found; {DATA_HINT}")
    return None


def not_tested(reason: str) -> Verdict:
    """A paper claim that this experiment does not put on trial (e.g. only a check stands for it)."""
    return Verdict(None, reason, kind="not tested")


def check(passed: bool | None, reason: str, **numbers) -> Verdict:
    """A sanity check or a re-read of published data: reported, never counted as a claim."""
    return Verdict(None if passed is None else bool(passed), reason, kind="check", extra=numbers)


def rounded(values: Sequence, nd: int = 3) -> list:
    """Per-seed numbers for a verdict's text, each rounded to `nd` places (None, a number not measured, stays)."""
    return [None if x is None else round(float(x), nd) for x in values]


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The two-sided t-interval of the mean of `values` (n ≥ 2)."""
    n = len(values)
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def by_threshold(per_seed: Sequence[float], margin: float, *, noise: float | None = None, what: str = "effect",
                 fmt: str = ".4g") -> Verdict:
    """Apply `RULE` to one effect measured per seed, where a larger effect supports the claim.

    margin: the committed margin (with its source, next to the claim); noise: the measured replicate noise of
    the quantity (e.g. the gap between two replicates of one arm), or None when not measured.
    """
    values = tuple(float(v) for v in per_seed)
    n = len(values)
    if n == 0:
        return undecided("no seed was measured")
    if any(math.isnan(v) for v in values):
        return undecided(f"{what} is NaN for some seed: {_fmt(values, fmt)}")
    threshold = max(margin, noise) if noise is not None else margin
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if n > 1 else None
    src = f"margin {margin:{fmt}}" + (f", replicate noise {noise:{fmt}}" if noise is not None else "")
    head = f"{what} per seed {_fmt(values, fmt)} (mean {mean:{fmt}}" + (
        f", sd {spread:{fmt}})" if spread is not None else ")") + f" vs threshold {threshold:{fmt}} ({src})"
    common = dict(effect=mean, per_seed=values, spread=spread, margin=margin, noise=noise, threshold=threshold, n=n)
    if n <= SMALL_N:
        above = [v > threshold for v in values]
        if all(above):
            return Verdict(True, f"{head}: every seed clears it", **common)
        if not any(above):
            return Verdict(False, f"{head}: every seed falls short", **common)
        return Verdict(None, f"seeds disagree: {head}: {sum(above)} of {n} seeds clear it", **common)
    lo, hi = t_interval(values)
    common["interval"] = (lo, hi)
    where = f"{head}; 95 % interval [{lo:{fmt}}, {hi:{fmt}}]"
    if lo > threshold:
        return Verdict(True, f"{where} lies above it", **common)
    if hi <= threshold:
        return Verdict(False, f"{where} lies below it", **common)
    return Verdict(None, f"seeds disagree: {where} contains the threshold", **common)


def _fmt(values: Sequence[float], fmt: str) -> str:
    return "[" + ", ".join(f"{v:{fmt}}" for v in values) + "]"


def all_of(parts: dict[str, Verdict], head: str) -> Verdict:
    """A claim that needs every part: held when every part holds, not held when some part does not, undecided
    otherwise (Kleene's three-valued and). The first part's numbers are the claim's effect."""
    held = [v.held for v in parts.values()]
    ok = True if all(h is True for h in held) else False if any(h is False for h in held) else None
    reason = "; ".join(f"{name}: {v.reason}" for name, v in parts.items())
    if ok is False:
        reason = f"{head}: not held on {', '.join(n for n, v in parts.items() if v.held is False)} — {reason}"
    elif ok is None:  # the cause of the first undecided part (not learned, needs data, ...) is the claim's cause
        name, first = next((n, v.reason) for n, v in parts.items() if v.held is None)
        known = any(first.startswith(c) for c in UNDECIDED_CAUSES)
        cause = first.split(":")[0] if known else f"undecided on {name}"
        reason = f"{cause}: {head}: {reason}"
    else:
        reason = f"{head}: {reason}"
    extra = {n: {"held": v.held, "per_seed": list(v.per_seed), "threshold": v.threshold} for n, v in parts.items()}
    return dataclasses.replace(next(iter(parts.values())), held=ok, reason=reason, extra=extra)
