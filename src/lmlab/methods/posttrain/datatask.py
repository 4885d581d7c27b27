"""Your own post-training task: a JSONL file of prompts and answers, checked by a named verifier or your function.

Each line is ``{"prompt": ..., "answer": ...}`` or ``{"prompt": ..., "answers": [...]}``, optionally with
``"solution"`` (the gold text SFT trains on: a string or a list of strings; default: the answers) and any other
fields, which reach a reward function as its `example`. The reward (`--reward`):

    exact        the completion (stripped) equals an answer
    normalised   equal after lower-casing, dropping punctuation and the articles a/an/the, and collapsing spaces
    numeric[:T]  the last number in the completion is within T (default 1e-6) of a numeric answer
    regex        an answer, read as a regular expression, matches the whole (stripped) completion
    choice       the first standalone letter of the completion among the file's answer letters (A.. the
                 highest one), optionally in parentheses, is the answer letter
    MOD:FUNC     your `FUNC(prompt, completion, example) -> float` from module MOD (a dotted module on sys.path or
                 in the current folder, or a .py file); a reward >= 1 counts as solved for pass@k

`DataTask` is a `ReasoningTask` like the built-in `digitsum` and `wordprob`, so every pipeline runs on it unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import math
import numbers
import os
import random
import re
import string
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.inputs import read_jsonl
from lmlab.methods.posttrain.tasks import Problem, ReasoningTask

log = logging.getLogger(__name__)

VERIFIERS = ("exact", "normalised", "numeric", "regex", "choice")
NUMERIC_TOL = 1e-6
DEFAULT_MAX_CHARS = 64  # completion budget when the file has no gold text to measure

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """SQuAD-style answer normalisation: lower case, no punctuation or articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(_THOUSANDS.sub("", text))
    return float(found[-1]) if found else None


def choice_letter(text: str, letters: str) -> str | None:
    m = re.search(rf"(?<![A-Za-z])\(?([{letters}])\)?(?![A-Za-z])", text)
    return m.group(1) if m else None


def verifier_name(spec: str) -> str:
    """The verifier a `--reward` value names, or "function" for MODULE:FUNCTION (nothing is imported)."""
    name, _, arg = spec.partition(":")
    return name if name == "numeric" or (name in VERIFIERS and not arg) else "function"


def parse_reward(spec: str) -> tuple[str, float | None, Callable | None]:
    """(verifier name, numeric tolerance, user function) of a `--reward` value; a function is imported here."""
    name, _, arg = spec.partition(":")
    if verifier_name(spec) == "numeric":
        try:
            tol = float(arg) if arg else NUMERIC_TOL
        except ValueError:
            tol = -1.0
        if not (tol >= 0 and math.isfinite(tol)):
            raise LmlabError(f"--reward {spec}: the tolerance must be a number >= 0, e.g. numeric:0.01")
        return name, tol, None
    if verifier_name(spec) != "function":
        return name, None, None
    if ":" not in spec:
        raise LmlabError(f"--reward {spec}: unknown verifier; choose from {', '.join(VERIFIERS)}, numeric:TOL "
                         "or a function MODULE:FUNCTION")
    return "function", None, load_function(spec)


def load_function(spec: str) -> Callable:
    """`module:function` (a dotted module, found on sys.path or in the current folder, or a .py file) checked to
    accept (prompt, completion, example)."""
    module, _, name = spec.rpartition(":")
    if not module or not name:
        raise LmlabError(f"--reward {spec}: write MODULE:FUNCTION, e.g. my_rewards:score")
    if module.endswith(".py") or "/" in module or os.sep in module:
        path = Path(module)
        if not path.is_file():
            raise LmlabError(f"--reward {spec}: file {path} not found")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(loader)
        _run_import(spec, lambda: loader.loader.exec_module(mod))
    else:
        mod = _run_import(spec, lambda: importlib.import_module(module), module)
    fn = getattr(mod, name, None)
    if fn is None:
        raise LmlabError(f"--reward {spec}: module {module} has no {name!r}: define {name}(prompt, completion, "
                         "example) there")
    if not callable(fn):
        raise LmlabError(f"--reward {spec}: {name} in {module} is a {type(fn).__name__}, not a function")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return fn
    try:
        sig.bind("", "", {})
    except TypeError:
        raise LmlabError(f"--reward {spec}: {name}{sig} cannot be called as {name}(prompt, completion, example)") \
            from None
    return fn


def _run_import(spec: str, do: Callable, module: str | None = None):
    # the `lmlab` console script does not put the current folder on sys.path, as `python -m` would
    added = module is not None and "" not in sys.path and os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        return do()
    except ModuleNotFoundError as e:
        if module is not None and e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise LmlabError(f"--reward {spec}: no module named {e.name!r}: put {module.replace('.', '/')}.py in the "
                             "current folder or on PYTHONPATH, or give a file path (path/to/file.py:function)") \
                from None
        raise LmlabError(f"--reward {spec}: importing it failed: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing
        raise LmlabError(f"--reward {spec}: importing it raised {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())


# ---------------------------------------------------------------------------------------------- examples
def _texts(row: dict, key: str, where: str) -> tuple[str, ...]:
    value = row[key]
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(x, bool) or not isinstance(x, (str, int, float)) for x in items):
        raise LmlabError(f"{where}: {key!r} must be a string or number, or a non-empty list of them, got {value!r}")
    return tuple(str(x) for x in items)


def make_problem(row, where: str, verifier: str) -> Problem:
    """One line of a data file as a Problem: answers in `answer`, (gold texts, the row) in `data`."""
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
        raise LmlabError(f"{where}: expected a JSON object with a non-empty string 'prompt' and 'answer' or "
                         "'answers'")
    if "answer" in row and "answers" in row:
        raise LmlabError(f"{where}: give 'answer' or 'answers', not both")
    key = "answer" if "answer" in row else "answers" if "answers" in row else None
    if key is None and verifier != "function":
        raise LmlabError(f"{where}: no 'answer' or 'answers': the {verifier} verifier compares the completion with "
                         "them (a --reward MODULE:FUNCTION may do without)")
    answers = _texts(row, key, where) if key else ()
    if verifier == "choice":
        if any(not re.fullmatch(r"[A-Za-z]", a) for a in answers):
            raise LmlabError(f"{where}: the choice verifier needs answer letters (A, B, ...), got {answers!r}")
        answers = tuple(a.upper() for a in answers)
    elif verifier == "numeric" and any(last_number(a) is None for a in answers):
        raise LmlabError(f"{where}: the numeric verifier needs numeric answers, got {answers!r}")
    elif verifier == "regex":
        for a in answers:
            try:
                re.compile(a)
            except re.error as e:
                raise LmlabError(f"{where}: answer {a!r} is not a valid regular expression ({e})") from None
    if "solution" in row:
        gold = _texts(row, "solution", where)
    else:
        gold = () if verifier == "regex" else answers  # a pattern is no text to imitate
    return Problem(row["prompt"], answers, 0, (tuple(dict.fromkeys(g for g in gold if g)), row))


def read_problems(path: str | Path, verifier: str, what: str = "--data") -> list[Problem]:
    rows = read_jsonl(path, f"{what} file")
    if not rows:
        raise LmlabError(f"{what} file {path} holds no examples: one JSON object a line")
    return [make_problem(row, f"{what} {path} line {n}", verifier) for n, row in enumerate(rows, 1)]


class DataTask(ReasoningTask):
    """Problems read from a file (`read_problems`), scored by a named verifier or a user function (`--reward`)."""

    name = "data"
    default_difficulty = 0

    def __init__(self, problems: Sequence[Problem], reward: str = "exact"):
        if not problems:
            raise LmlabError("a data task needs at least one example")
        self.reward_spec = reward
        self.verifier, self.tol, self.fn = parse_reward(reward)
        self.problems = list(problems)
        answers = {a for p in self.problems for a in p.answer}
        self.letters = ("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:ord(max(answers)) - 64] if self.verifier == "choice"
                        else "")
        chars = {c for p in self.problems for t in (p.prompt, *p.data[0]) for c in t}
        if self.verifier != "regex":
            chars |= {c for a in answers for c in a}
        self.alphabet = "".join(sorted(chars))

    @staticmethod
    def gold(problem: Problem) -> tuple[str, ...]:
        return problem.data[0]

    def sample(self, rng: random.Random, difficulty: int) -> Problem:
        return rng.choice(self.problems)

    def reward(self, problem: Problem, completion: str) -> float:
        try:
            r = self.fn(problem.prompt, completion, dict(problem.data[1]))
        except Exception as e:  # the user's code: name it, not a traceback through lmlab
            raise LmlabError(f"reward function {self.reward_spec} raised {type(e).__name__}: {e} (on prompt "
                             f"{problem.prompt[:60]!r})") from e
        if not isinstance(r, numbers.Real) or not math.isfinite(r):
            raise LmlabError(f"reward function {self.reward_spec} returned {r!r} on prompt {problem.prompt[:60]!r}: "
                             "return a finite float")
        return float(r)

    def score(self, problem: Problem, completion: str) -> tuple[float, bool]:
        if self.fn is not None:
            r = self.reward(problem, completion)
            return r, r >= 1.0
        ok = self.verify(problem, completion)
        return float(ok), ok

    def verify(self, problem: Problem, completion: str) -> bool:
        if self.fn is not None:
            return self.reward(problem, completion) >= 1.0
        text, answers = completion.strip(), problem.answer
        if self.verifier == "exact":
            return text in answers
        if self.verifier == "normalised":
            return normalise(text) in {normalise(a) for a in answers}
        if self.verifier == "numeric":
            x = last_number(text)
            return x is not None and any(abs(x - last_number(a)) <= self.tol for a in answers)
        if self.verifier == "regex":
            return any(re.fullmatch(a, text) for a in answers)
        return choice_letter(text, self.letters) in answers

    def well_formed(self, completion: str) -> bool:
        if self.verifier == "numeric":
            return last_number(completion) is not None
        if self.verifier == "choice":
            return choice_letter(completion, self.letters) is not None
        return bool(completion.strip())

    def num_solutions(self, problem: Problem) -> int:
        return len(self.gold(problem))

    def solutions(self, problem: Problem, limit: int, rng: random.Random) -> list[str]:
        gold = list(self.gold(problem))
        return gold if len(gold) <= limit else rng.sample(gold, limit)

    def sample_solution(self, problem: Problem, rng: random.Random, noise: float = 0.0) -> str:
        if not self.gold(problem):
            raise LmlabError(f"no gold text for prompt {problem.prompt[:60]!r}: add a 'solution'")
        return rng.choice(self.gold(problem))

    def max_completion_chars(self, difficulty: int) -> int:
        return max((len(g) for p in self.problems for g in self.gold(p)), default=DEFAULT_MAX_CHARS)


def split_problems(problems: Sequence[Problem], test_frac: float, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(train, test): a `test_frac` share of the distinct prompts, drawn with `seed`, held out (a prompt that
    occurs twice stays on one side)."""
    if not 0 < test_frac < 1:
        raise LmlabError(f"--test-frac must be between 0 and 1 (exclusive), got {test_frac}")
    prompts = list(dict.fromkeys(p.prompt for p in problems))
    random.Random(seed).shuffle(prompts)
    n_test = max(1, round(test_frac * len(prompts)))
    if n_test >= len(prompts):
        raise LmlabError(f"--data holds {len(prompts)} distinct prompt(s): too few to hold out --test-frac "
                         f"{test_frac} and train on the rest; add examples or pass --test FILE")
    held = set(prompts[:n_test])
    return [p for p in problems if p.prompt not in held], [p for p in problems if p.prompt in held]


def load_task(data: str | Path, reward: str = "exact", test: str | Path | None = None, test_frac: float = 0.1,
              seed: int = 0) -> tuple[DataTask, list[Problem], list[Problem]]:
    """(task, train, test) from a data file and either a test file or a held-out fraction of the data."""
    verifier = verifier_name(reward)
    problems = read_problems(data, verifier)
    if test is None:
        train, held = split_problems(problems, test_frac, seed)
    else:
        train, held = problems, read_problems(test, verifier, "--test")
        shared = {p.prompt for p in train} & {p.prompt for p in held}
        if shared:
            log.warning("%d prompt(s) of --test %s are also in --data %s: their pass@k measures recall",
                        len(shared), test, data)
    return DataTask(train + held, reward), train, held


def require_gold(problems: Sequence[Problem], what: str = "--data") -> None:
    """SFT needs a gold text for every training prompt."""
    bare = [p for p in problems if not p.data[0]]
    if bare:
        raise LmlabError(f"{what}: {len(bare)} training example(s) have no gold text for SFT (e.g. prompt "
                         f"{bare[0].prompt[:60]!r}): add a 'solution' (or an 'answer' under a non-regex --reward)")
