"""Verifiable multi-step reasoning tasks where one question has many valid worked solutions.

Two families share one interface (`ReasoningTask`):

* `DigitSumTask` — add L digits mod 10 **in any order**, writing every running sum:
  prompt ``S35271:``, a solution ``+3=3+7=0+5=5+2=7+1=8A8``. Difficulty = L.
* `WordProblemTask` — GSM-like templated word problems: a few independent chains of quantities
  ("b has 4 more than a.") and a question summing the chain ends. A solution computes each derived
  quantity once, in any order that respects the dependencies (``b=3+4=7;``), then the total
  (``c+e=14+4=18;#18``). Difficulty = number of derived quantities (steps).

Your own task — a JSONL file of prompts and answers with a verifier or reward function — is the same interface:
`lmlab.methods.posttrain.datatask.DataTask`.

Both verifiers are strict: the trace must be well-formed, use every required item exactly once, have
every intermediate result right, and end with the right answer. A final-answer-only reward would let a
random guess over a small answer space pass (pass@32 ≈ 1 for 10 answers), hiding everything.
Pre-training documents can carry corrupted intermediate results (`noise`) so the base model is imperfect
and diverse, as a real pre-trained model is.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from lmlab.utils import LmlabError


@dataclass(frozen=True)
class Problem:
    prompt: str  # text the model is conditioned on (a BOS is added by the caller)
    answer: int | tuple[str, ...]  # a built-in task's number; a data task's accepted answers
    difficulty: int
    data: tuple = field(default=(), compare=False)  # family-specific structure used by the verifier


class ReasoningTask(ABC):
    """Interface: sample problems, enumerate/sample worked solutions, verify completions."""

    name: str = ""
    alphabet: str = ""
    default_difficulty: int = 4

    @abstractmethod
    def sample(self, rng: random.Random, difficulty: int) -> Problem: ...

    @abstractmethod
    def verify(self, problem: Problem, completion: str) -> bool:
        """Strict check of a whole worked solution."""

    def score(self, problem: Problem, completion: str) -> tuple[float, bool]:
        """(RL reward, solved) of a completion; a verified completion scores 1.0, any other 0.0."""
        ok = self.verify(problem, completion)
        return float(ok), ok

    @abstractmethod
    def well_formed(self, completion: str) -> bool:
        """Trace syntax is right (used by the optional format reward)."""

    @abstractmethod
    def num_solutions(self, problem: Problem) -> int: ...

    @abstractmethod
    def solutions(self, problem: Problem, limit: int, rng: random.Random) -> list[str]:
        """Up to `limit` distinct valid solutions (all of them when there are few)."""

    @abstractmethod
    def sample_solution(self, problem: Problem, rng: random.Random, noise: float = 0.0) -> str:
        """One uniformly random valid solution, each intermediate result corrupted with probability `noise`."""

    @abstractmethod
    def max_completion_chars(self, difficulty: int) -> int: ...


def _distinct_orders(items: list, limit: int, rng: random.Random) -> list[tuple]:
    """Up to `limit` distinct orderings of `items` (all of them when few; a random sample otherwise)."""
    n_all = math.factorial(len(items))
    if n_all <= 4 * limit:
        orders = sorted(set(itertools.permutations(items)))
        rng.shuffle(orders)
        return orders[:limit]
    seen: set = set()
    for _ in range(50 * limit):
        p = list(items)
        rng.shuffle(p)
        t = tuple(p)
        if t not in seen:
            seen.add(t)
            if len(seen) == limit:
                break
    return sorted(seen, key=lambda _: rng.random())


def _interleavings(chains: list[list]):
    """Every order of the chains' items that keeps each chain's own order."""
    if not any(chains):
        yield ()
        return
    for i, c in enumerate(chains):
        if c:
            rest = chains[:i] + [c[1:]] + chains[i + 1:]
            for tail in _interleavings(rest):
                yield (c[0],) + tail


def _random_interleaving(chains: list[list], rng: random.Random) -> tuple:
    """A uniformly random interleaving: the next item comes from a chain with probability ∝ its remaining length."""
    chains = [list(c) for c in chains]
    order = []
    while any(chains):
        live = [c for c in chains if c]
        c = rng.choices(live, [len(c) for c in live])[0]
        order.append(c.pop(0))
    return tuple(order)


# ----------------------------------------------------------------------------------------------- digit sums
class DigitSumTask(ReasoningTask):
    name = "digitsum"
    alphabet = "S:+=A0123456789"
    default_difficulty = 5
    _TRACE = re.compile(r"^(?:\+\d=\d)+A\d$")

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        if difficulty < 2:
            raise LmlabError(f"digitsum difficulty (number of digits) must be >= 2, got {difficulty}")
        digits = tuple(rng.randrange(10) for _ in range(difficulty))
        return Problem("S" + "".join(map(str, digits)) + ":", sum(digits) % 10, difficulty, digits)

    def _trace(self, order, noise: float = 0.0, rng: random.Random | None = None) -> str:
        s, parts = 0, []
        for d in order:
            s = (s + d) % 10
            shown = s
            if noise and rng.random() < noise:
                shown = (s + rng.randrange(1, 10)) % 10
            parts.append(f"+{d}={shown}")
        return "".join(parts) + f"A{shown if order else 0}"

    def well_formed(self, completion: str) -> bool:
        return bool(self._TRACE.match(completion))

    def verify(self, problem: Problem, completion: str) -> bool:
        if not self._TRACE.match(completion):
            return False
        steps = re.findall(r"\+(\d)=(\d)", completion)
        if sorted(int(d) for d, _ in steps) != sorted(problem.data):
            return False
        s = 0
        for d, shown in steps:
            s = (s + int(d)) % 10
            if int(shown) != s:
                return False
        return int(completion[-1]) == s == problem.answer

    def num_solutions(self, problem: Problem) -> int:
        n = math.factorial(len(problem.data))
        for d in set(problem.data):
            n //= math.factorial(problem.data.count(d))
        return n

    def solutions(self, problem: Problem, limit: int, rng: random.Random) -> list[str]:
        return [self._trace(o) for o in _distinct_orders(list(problem.data), limit, rng)]

    def sample_solution(self, problem: Problem, rng: random.Random, noise: float = 0.0) -> str:
        order = list(problem.data)
        rng.shuffle(order)
        return self._trace(order, noise, rng)

    def max_completion_chars(self, difficulty: int) -> int:
        return 4 * difficulty + 2


# ----------------------------------------------------------------------------------------------- word problems
_OPS = {"more": "+", "less": "-", "times": "*"}


def _apply(a: int, op: str, k: int) -> int:
    return a + k if op == "+" else a - k if op == "-" else a * k


class WordProblemTask(ReasoningTask):
    """Chains of quantities named by letters; each derived quantity depends on the previous one in its chain.

    ``a has 3. b has 4 more than a. c has 2 times b. d has 5. e has 1 less than d. c and e total?``
    A solution: ``b=3+4=7;c=7*2=14;e=5-1=4;c+e=14+4=18;#18`` (the chains may be interleaved in any order).
    """

    name = "wordprob"
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 .?=+-*;#"
    default_difficulty = 4
    _STEP = re.compile(r"([a-z])=(\d+)([+\-*])(\d+)=(\d+)")
    _TRACE = re.compile(r"^(?:[a-z]=\d+[+\-*]\d+=\d+;)+[a-z](?:\+[a-z])*=(?:\d+\+)*\d+=\d+;#\d+$")
    _TOTAL = re.compile(r"([a-z](?:\+[a-z])*)=((?:\d+\+)*\d+)=(\d+);#(\d+)$")

    def __init__(self, max_value: int = 99, chains: tuple[int, int] = (2, 3)):
        self.max_value = max_value
        self.chains = chains

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        if difficulty < 2:
            raise LmlabError(f"wordprob difficulty (number of derived steps) must be >= 2, got {difficulty}")
        n_chains = min(difficulty, rng.randint(*self.chains))
        lengths = [1] * n_chains
        for _ in range(difficulty - n_chains):
            lengths[rng.randrange(n_chains)] += 1
        names = iter(rng.sample("abcdefghijklmnopqrstuvwxyz", difficulty + n_chains))
        facts, chains, values = [], [], {}
        for length in lengths:
            base = next(names)
            values[base] = rng.randint(2, 9)
            facts.append(f"{base} has {values[base]}.")
            chain, prev = [], base
            for _ in range(length):
                name = next(names)
                op, k = self._pick_op(rng, values[prev])
                values[name] = _apply(values[prev], op, k)
                word = {"+": "more than", "-": "less than", "*": "times"}[op]
                facts.append(f"{name} has {k} {word} {prev}.")
                chain.append((name, prev, op, k))
                prev = name
            chains.append(tuple(chain))
        ends = [c[-1][0] for c in chains]
        # Facts are listed chain by chain; the question names the chain ends.
        prompt = " ".join(facts) + " " + " and ".join(ends) + " total?"
        answer = sum(values[e] for e in ends)
        return Problem(prompt, answer, difficulty, (tuple(chains), tuple(sorted(values.items()))))

    def _pick_op(self, rng: random.Random, v: int) -> tuple[str, int]:
        """An operation keeping every value in 1..max_value."""
        choices = []
        if v + 1 <= self.max_value:
            choices.append(("+", list(range(1, min(9, self.max_value - v) + 1))))
        if v > 1:
            choices.append(("-", list(range(1, min(9, v - 1) + 1))))
        muls = [k for k in (2, 3) if v * k <= self.max_value]
        if muls:
            choices.append(("*", muls))
        op, ks = rng.choice(choices)
        return op, rng.choice(ks)

    @staticmethod
    def _unpack(problem: Problem):
        chains, values = problem.data
        return chains, dict(values)

    def _step_text(self, step, values: dict, noise: float = 0.0, rng: random.Random | None = None) -> str:
        name, prev, op, k = step
        res = values[name]
        if noise and rng.random() < noise:
            res = max(0, res + rng.choice([-2, -1, 1, 2]))
        return f"{name}={values[prev]}{op}{k}={res};"

    def _total_text(self, problem: Problem, values: dict) -> str:
        ends = [c[-1][0] for c in self._unpack(problem)[0]]
        return "+".join(ends) + "=" + "+".join(str(values[e]) for e in ends) + f"={problem.answer};#{problem.answer}"

    def _trace(self, problem: Problem, order, noise: float = 0.0, rng: random.Random | None = None) -> str:
        chains, values = self._unpack(problem)
        steps = {s[0]: s for c in chains for s in c}
        return "".join(self._step_text(steps[n], values, noise, rng) for n in order) + self._total_text(problem, values)

    def well_formed(self, completion: str) -> bool:
        return bool(self._TRACE.match(completion))

    def verify(self, problem: Problem, completion: str) -> bool:
        if not self._TRACE.match(completion):
            return False
        chains, values = self._unpack(problem)
        steps = {s[0]: s for c in chains for s in c}
        known = {c[0][1]: values[c[0][1]] for c in chains}  # base quantities are given in the prompt
        body, total = completion.rsplit(";", 2)[0], completion
        done = []
        for name, a, op, k, res in self._STEP.findall(body):
            if name not in steps or name in known:
                return False
            _, prev, want_op, want_k = steps[name]
            if prev not in known or int(a) != known[prev] or op != want_op or int(k) != want_k:
                return False
            if int(res) != _apply(known[prev], op, want_k):
                return False
            known[name] = int(res)
            done.append(name)
        if sorted(done) != sorted(steps):
            return False
        m = self._TOTAL.search(total)
        if m is None:
            return False
        ends = [c[-1][0] for c in chains]
        names, vals, res, final = m.group(1).split("+"), m.group(2).split("+"), int(m.group(3)), int(m.group(4))
        if names != ends or [int(v) for v in vals] != [known[e] for e in ends]:
            return False
        return res == final == problem.answer

    def num_solutions(self, problem: Problem) -> int:
        lengths = [len(c) for c in self._unpack(problem)[0]]
        n = math.factorial(sum(lengths))
        for length in lengths:
            n //= math.factorial(length)
        return n

    def solutions(self, problem: Problem, limit: int, rng: random.Random) -> list[str]:
        # Valid orders are the interleavings of the chains: enumerate them when few, else draw them uniformly
        # (shuffling all step names and filtering kept almost none once chains are long).
        chains = [[s[0] for s in c] for c in self._unpack(problem)[0]]
        if self.num_solutions(problem) <= 4 * limit:
            orders = list(_interleavings(chains))
            rng.shuffle(orders)
            orders = orders[:limit]
        else:
            seen: dict = {}
            for _ in range(50 * limit):
                seen.setdefault(_random_interleaving(chains, rng))
                if len(seen) == limit:
                    break
            orders = list(seen)
        return [self._trace(problem, o) for o in orders]

    def sample_solution(self, problem: Problem, rng: random.Random, noise: float = 0.0) -> str:
        chains = [[s[0] for s in c] for c in self._unpack(problem)[0]]
        return self._trace(problem, _random_interleaving(chains, rng), noise, rng)

    def max_completion_chars(self, difficulty: int) -> int:
        return 14 * difficulty + 8 * 3 + 16


TASKS: dict[str, type[ReasoningTask]] = {"digitsum": DigitSumTask, "wordprob": WordProblemTask}


def get_task(name: str, **options) -> ReasoningTask:
    """A task by name; options go to its constructor (e.g. wordprob's max_value)."""
    if name not in TASKS:
        raise LmlabError(f"unknown reasoning task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name](**options)


def make_split(task: ReasoningTask, n: int, difficulty: int | list[int], seed: int,
               exclude: set[str] | frozenset = frozenset()) -> list[Problem]:
    """`n` distinct problems (prompts not in `exclude`), difficulties drawn from the given list."""
    rng = random.Random(seed)
    diffs = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    out, seen, misses = [], set(exclude), 0
    while misses < 2000:  # give up after 2000 duplicates in a row: the problem space is nearly exhausted
        p = task.sample(rng, rng.choice(diffs))
        if p.prompt in seen:
            misses += 1
            continue
        seen.add(p.prompt)
        out.append(p)
        misses = 0
        if len(out) == n:
            return out
    raise LmlabError(f"could only draw {len(out)} distinct {task.name} problems of difficulty {difficulty}: "
                     "lower n or raise the difficulty")


def pretraining_document(task: ReasoningTask, rng: random.Random, difficulties: list[int], noise: float) -> str:
    """One task document (prompt + a random worked solution with corrupted steps at rate `noise`)."""
    p = task.sample(rng, rng.choice(difficulties))
    return p.prompt + task.sample_solution(p, rng, noise)
