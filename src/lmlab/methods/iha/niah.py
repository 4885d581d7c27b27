"""RULER-style multi-key needle-in-a-haystack (MK-NIAH) prompts and the `string_match_all` metric.

Follows NVIDIA/RULER's `niah` generator (scripts/data/synthetic/niah.py, synthetic.yaml):

| variant | haystack                                   | keys  | values  | needles with other keys |
|---------|--------------------------------------------|-------|---------|-------------------------|
| 1       | filler sentences (RULER: essays) + needles | words | numbers | 3 distractors           |
| 2       | needles only (every line a needle)         | words | numbers | fill the whole context  |
| 3       | needles only                               | uuids | uuids   | fill the whole context  |

Keys and values come from seeded, generated vocabularies (no word lists are downloaded): words are
`adjective-noun` pairs of pronounceable pseudo-words, numbers have 7 digits, uuids are uuid4 strings.

    from lmlab.methods.iha.niah import NeedleHaystack, string_match_all
    gen = NeedleHaystack(variant=2, seed=0)
    s = gen.sample(max_length=2048, length_fn=lambda t: len(tok.encode(t)))
    s.input      # prompt ending with the answer prefix; the model continues it
    s.answers    # reference values, e.g. ["4821937"]
    string_match_all([model_output], [s.answers])   # 0..100

The haystack size is binary-searched (as in RULER) so that `length_fn(input) + tokens_to_generate`
fits `max_length`; `length_fn` defaults to characters. `Templates` holds RULER's wording;
`COMPACT_TEMPLATES` is a short form for tiny character-level models.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence

# RULER's noise haystack (niah_single_1) and its insertion depths (40 values in [0, 100] %).
NOISE_HAYSTACK = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = [100.0 * i / 39 for i in range(40)]
_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class Templates:
    """Prompt wording. `{type_needle_v}` is "numbers" or "uuids" (made singular for one answer)."""

    needle: str = "One of the special magic {type_needle_v} for {key} is: {value}."
    prompt: str = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to "
                   "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
                   "What are all the special magic {type_needle_v} for {query} mentioned in the provided "
                   "text?")
    answer_prefix: str = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
    separator: str = "\n"  # between needle lines of a needles-only haystack


COMPACT_TEMPLATES = Templates(needle="{key}={value}.", prompt="{context}\n{query}?", answer_prefix="=",
                              separator="\n")


@dataclass
class NiahSample:
    input: str  # the prompt followed by the answer prefix
    answers: list[str]  # the values the model must produce (string_match_all references)
    queries: list[str]  # the queried keys
    variant: int
    n_needles: int  # needle sentences in the haystack (queried + distractors)
    depths: list[float] = field(default_factory=list)  # relative positions (0..1) of the queried needles


# ------------------------------------------------------------------ vocabularies
def pseudo_word(rng: random.Random, syllables: int) -> str:
    """A pronounceable made-up word of `syllables` consonant-vowel syllables."""
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))


def word_vocabulary(n: int, seed: int = 0, n_adjectives: int = 64) -> list[str]:
    """`n` distinct `adjective-noun` keys built from two generated pseudo-word lists."""
    rng = random.Random(f"niah-words-{seed}")
    n_nouns = max(1, -(-n // n_adjectives)) + 8
    adjectives = _distinct(lambda: pseudo_word(rng, rng.choice((2, 3))), n_adjectives)
    nouns = _distinct(lambda: pseudo_word(rng, rng.choice((2, 3))), n_nouns)
    pairs = [f"{a}-{b}" for a in adjectives for b in nouns]
    rng.shuffle(pairs)
    return pairs[:n]


def _distinct(make: Callable[[], str], n: int) -> list[str]:
    out: dict[str, None] = {}
    while len(out) < n:
        out[make()] = None
    return list(out)


def random_number(rng: random.Random) -> str:
    """A random seven-digit number, as text."""
    return str(rng.randint(1_000_000, 9_999_999))


def random_uuid(rng: random.Random) -> str:
    """A random UUID4, as text."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# ------------------------------------------------------------------ generator
class NeedleHaystack:
    """Multi-key NIAH sample generator (MK-1/2/3); see the module docstring.

    variant: 1, 2 or 3. num_needle_k: needles with distinct keys when the haystack is not made of
    needles (MK-1, RULER uses 4); num_needle_v: values per queried key (multi-value); num_needle_q:
    queried keys (multi-query). haystack: filler text for MK-1 (split into sentences; default
    RULER's noise sentences). vocab_size: size of the generated key vocabulary (words).
    tokens_to_generate: room reserved for the answer (RULER: 128).
    """

    def __init__(self, variant: int = 1, seed: int = 0, num_needle_k: int = 4, num_needle_v: int = 1,
                 num_needle_q: int = 1, haystack: str | None = None, vocab_size: int = 4096,
                 templates: Templates = Templates(), tokens_to_generate: int = 128):
        if variant not in (1, 2, 3):
            raise ValueError(f"MK-NIAH variant must be 1, 2 or 3, got {variant!r}")
        if min(num_needle_k, num_needle_v, num_needle_q) < 1 or num_needle_q > num_needle_k:
            raise ValueError("need num_needle_k >= num_needle_q >= 1 and num_needle_v >= 1, got "
                             f"k={num_needle_k} v={num_needle_v} q={num_needle_q}")
        self.variant, self.templates, self.tokens_to_generate = variant, templates, tokens_to_generate
        self.num_needle_k, self.num_needle_v, self.num_needle_q = num_needle_k, num_needle_v, num_needle_q
        self.rng = random.Random(seed)
        self.keys = word_vocabulary(vocab_size, seed) if variant in (1, 2) else None
        text = haystack if haystack is not None else NOISE_HAYSTACK
        self.filler = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
        if variant == 1 and not self.filler:
            raise ValueError("MK-1 needs a non-empty haystack text")
        self.type_needle_v = "numbers" if variant in (1, 2) else "uuids"

    # -- pieces
    def _key(self) -> str:
        return self.rng.choice(self.keys) if self.keys is not None else random_uuid(self.rng)

    def _value(self) -> str:
        return random_number(self.rng) if self.variant in (1, 2) else random_uuid(self.rng)

    def _distinct_keys(self, n: int) -> list[str]:
        if self.keys is not None and n > len(self.keys):
            raise ValueError(f"haystack needs {n} distinct keys but the vocabulary has {len(self.keys)}: "
                             "raise vocab_size")
        return _distinct(self._key, n)

    def _wording(self, n_answers: int) -> tuple[Templates, str]:
        t, kind = self.templates, self.type_needle_v
        if n_answers == 1:  # RULER switches the plural wording for a single answer
            kind = kind[:-1]
            prompt = t.prompt.replace("Some", "A").replace("are all", "is").replace(" are ", " is ")
            t = Templates(needle=t.needle, separator=t.separator, prompt=prompt,
                          answer_prefix=re.sub(r" are$", " is", t.answer_prefix))
        return t, kind

    def _build(self, n_haystack: int, draw) -> NiahSample:
        """Prompt with `n_haystack` filler/distractor units; `draw` is fixed during the length search."""
        keys, values, queried, fractions, distractors = draw
        t, kind = self._wording(len(queried) * self.num_needle_v)
        fmt = lambda k, v: t.needle.format(type_needle_v=self.type_needle_v, key=k, value=v)  # noqa: E731
        needles = [fmt(keys[i], v) for i in range(len(keys)) for v in values[i]]
        if self.variant == 1:
            units = [self.filler[j % len(self.filler)] for j in range(n_haystack)]
        else:
            units = [fmt(k, v) for k, v in distractors[:n_haystack]]
        # needle i goes before unit floor(fraction * (n + 1)); ties keep needle order
        items = [((j, 1, 0), u) for j, u in enumerate(units)]
        items += [((min(n_haystack, int(f * (n_haystack + 1))), 0, i), needles[i])
                  for i, f in enumerate(fractions)]
        items.sort(key=lambda x: x[0])
        order = {key[2]: pos for pos, (key, _) in enumerate(items) if key[1] == 0}
        context = (" " if self.variant == 1 else t.separator).join(text for _, text in items)
        query = ", ".join(keys[i] for i in queried)
        prompt = t.prompt.format(type_needle_v=kind, context=context, query=query)
        prefix = t.answer_prefix.format(type_needle_v=kind, query=query)
        v = self.num_needle_v
        answers = [val for i in queried for val in values[i]]
        depths = [order[i * v + j] / max(1, len(items) - 1) for i in queried for j in range(v)]
        n_needles = len(needles) + (0 if self.variant == 1 else len(units))
        queries = [keys[i] for i in queried]
        return NiahSample(prompt + prefix, answers, queries, self.variant, n_needles, depths)

    def sample(self, max_length: int, length_fn: Callable[[str], int] = len) -> NiahSample:
        """One prompt whose `length_fn(input) + tokens_to_generate` is at most `max_length`."""
        budget = max_length - self.tokens_to_generate
        n_keys = self.num_needle_k if self.variant == 1 else self.num_needle_q
        keys = self._distinct_keys(n_keys)
        if self.variant == 1:
            fractions = [self.rng.choice(DEPTHS) / 100 for _ in range(n_keys * self.num_needle_v)]
        else:
            fractions = [self.rng.random() for _ in range(n_keys * self.num_needle_v)]
        values = [[self._value() for _ in range(self.num_needle_v)] for _ in range(n_keys)]
        queried = sorted(self.rng.sample(range(n_keys), self.num_needle_q))
        distractors: list[tuple[str, str]] = []
        used = set(keys)
        draw = (keys, values, queried, fractions, distractors)

        def fits(n: int) -> bool:
            while self.variant != 1 and len(distractors) < n:  # distractor needles, drawn lazily
                k = self._key()
                if k not in used:
                    used.add(k)
                    distractors.append((k, self._value()))
                elif self.keys is not None and len(used) >= len(self.keys):
                    raise ValueError(f"the key vocabulary ({len(self.keys)} words) is too small for this "
                                     "context length: raise vocab_size")
            return length_fn(self._build(n, draw).input) <= budget

        if not fits(0):
            raise ValueError(f"max_length={max_length} cannot hold even the needles and the question "
                             f"plus tokens_to_generate={self.tokens_to_generate}: raise max_length")
        hi = 1
        while fits(hi):  # grow, then binary-search the largest haystack that fits (as RULER does)
            hi *= 2
        lo = hi // 2
        while lo < hi - 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return self._build(lo, draw)

    def samples(self, n: int, max_length: int, length_fn: Callable[[str], int] = len) -> list[NiahSample]:
        """`n` samples, each at most `max_length` long as measured by `length_fn`."""
        return [self.sample(max_length, length_fn) for _ in range(n)]


# ------------------------------------------------------------------ metric
def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER's metric: per sample, the fraction of references found as case-insensitive substrings of
    the prediction; averaged over samples and scaled to 0..100."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    if not predictions:
        raise ValueError("string_match_all needs at least one prediction")
    total = 0.0
    for pred, refs in zip(predictions, references):
        if not refs:
            raise ValueError("every sample needs at least one reference answer")
        p = pred.lower()
        total += sum(r.lower() in p for r in refs) / len(refs)
    return 100.0 * total / len(predictions)
