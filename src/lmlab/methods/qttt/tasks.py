"""Long-context retrieval tasks where the needle stays fixed and only the distractors grow (qTTT, spec 04).

- `KVRetrieval`: token-level key→value retrieval for small lmlab models. Context lines are
  `key value check` with check = key's family (key mod n_families); some lines repeat an earlier key
  with its value, so the context itself holds retrieval events that next-token loss on spans exercises.
  The needle line's key appears once; the question is that key (optionally followed by pause/"thinking"
  tokens) and the answer is its value. Keys of the needle's family are the near-duplicate distractors.
- `PrefixKV`: key→value retrieval with two-token keys (prefix, suffix) for the fair test of qTTT: a share of the
  distractor keys reuse the needle's prefix (near duplicates, within O(1) logit of the needle under a matching
  circuit), every fresh key is distinct, so the number of distinct (near-duplicate) distractors grows with the
  length, and repeated lines make retrieval events inside the context. Each context target has a type (fresh key,
  repeat key, fresh value, retrieved value), so the LM's training loss and qTTT's span loss can name the targets
  they cover.
- `kv_text_prompt`: the same task as text (`key AB-1234 = 5821` lines) for tokenizer-based models, with
  near-duplicate keys that share the needle's prefix.
- `TransactionLog`: synthetic banking logs with exactly one injected anomaly (CALC_ERROR, NEGATIVE_BAL,
  LOST_UPDATE, DUPLICATE_TXN), answer `{bug_type, TX_ID}`, in the spirit of the paper's sandbox; a replay
  checker (`find_anomaly`) is the verifier.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from lmlab.utils import LmlabError

PAD, BOS, PAUSE = 0, 1, 2


# ---------------------------------------------------------------- token-level key-value retrieval
@dataclass
class KVInstance:
    context: list[int]  # BOS + lines
    query: list[int]  # needle key (+ pause tokens)
    answer: int  # the needle's value token
    needle_positions: list[int]  # context indices of the needle line (key, value, check)
    retrieval_targets: list[int]  # context indices of values predictable only by retrieval (repeated keys)
    near_positions: list[int]  # context indices of lines (key tokens) whose key shares the needle's family
    n_lines: int


@dataclass
class KVRetrieval:
    """Vocabulary: PAD, BOS, PAUSE, then keys, values, checks (one per family)."""

    n_keys: int = 128
    n_values: int = 32
    n_families: int = 4
    repeat_frac: float = 0.5

    def __post_init__(self):
        if self.n_keys < 2 or self.n_values < 2 or not 1 <= self.n_families <= self.n_keys:
            raise LmlabError(
                f"KVRetrieval needs n_keys >= 2, n_values >= 2, 1 <= n_families <= n_keys: {self}"
            )
        if not 0 <= self.repeat_frac < 1:
            raise LmlabError(f"repeat_frac must be in [0, 1), got {self.repeat_frac}")

    @property
    def key0(self) -> int:
        """First key token id (ids below are specials)."""
        return 3

    @property
    def value0(self) -> int:
        """First value token id."""
        return 3 + self.n_keys

    @property
    def check0(self) -> int:
        """First family (checksum) token id."""
        return 3 + self.n_keys + self.n_values

    @property
    def vocab_size(self) -> int:
        """Specials, keys, values and families."""
        return 3 + self.n_keys + self.n_values + self.n_families

    def family(self, key: int) -> int:
        """The family a key belongs to."""
        return key % self.n_families

    def is_value(self, tok: int) -> bool:
        """Whether `tok` is a value token."""
        return self.value0 <= tok < self.check0

    def sample(self, n_lines: int, rng: np.random.Generator, n_pause: int = 0) -> KVInstance:
        """One context of `n_lines` lines; fresh keys are distinct, so at most n_keys − 1 of them fit beside the
        needle (longer contexts repeat more: the repeat fraction rises just enough)."""
        if n_lines < 1:
            raise LmlabError(f"n_lines must be >= 1, got {n_lines}")
        rep = max(self.repeat_frac, 1.0 - (self.n_keys - 1) / n_lines)
        keys = rng.permutation(self.n_keys)
        needle_line = int(rng.integers(n_lines))
        needle_key = int(keys[0])
        fresh_iter = iter(keys[1:].tolist())
        seen: list[tuple[int, int]] = []  # (key, value) of fresh non-needle lines so far
        ctx, needle_pos, targets, near = [BOS], [], [], []
        answer = -1
        for i in range(n_lines):
            if i == needle_line:
                key, val = needle_key, int(rng.integers(self.n_values))
                answer = self.value0 + val
                needle_pos = [len(ctx), len(ctx) + 1, len(ctx) + 2]
            elif seen and rng.random() < rep:
                key, val = seen[int(rng.integers(len(seen)))]
                targets.append(len(ctx) + 1)
            else:
                nxt = next(fresh_iter, None)
                if nxt is None:  # every key used: repeat instead
                    key, val = seen[int(rng.integers(len(seen)))]
                    targets.append(len(ctx) + 1)
                else:
                    key, val = int(nxt), int(rng.integers(self.n_values))
                    seen.append((key, val))
            if i != needle_line and self.family(key) == self.family(needle_key):
                near.append(len(ctx))
            ctx += [self.key0 + key, self.value0 + val, self.check0 + self.family(key)]
        query = [self.key0 + needle_key] + [PAUSE] * n_pause
        return KVInstance(ctx, query, answer, needle_pos, targets, near, n_lines)

    def training_row(
        self, inst: KVInstance, other_weight: float = 0.1
    ) -> tuple[list[int], list[int], list[float]]:
        """(ids, next-token targets, weights) for context + query + answer: weight 1 on checks, retrievable
        values and the answer; `other_weight` on the unpredictable tokens (fresh keys and values), which
        keeps the model a calibrated language model of the whole context. Pause tokens get no loss."""
        ids = inst.context + inst.query + [inst.answer]
        targets = ids[1:] + [PAD]
        weights = [other_weight] * len(ids)
        retrievable = set(inst.retrieval_targets)
        for j in range(1, len(inst.context)):
            if ids[j] >= self.check0 or j in retrievable:
                weights[j - 1] = 1.0
        for j in range(len(inst.context), len(ids) - 1):
            weights[j - 1] = 0.0  # the query key and pauses are given, not predicted
        weights[len(ids) - 2] = 1.0  # the answer
        weights[len(ids) - 1] = 0.0
        return ids, targets, weights

    def spread_positions(
        self, n_lines: int, length: int, max_position: int, rng: np.random.Generator
    ) -> np.ndarray:
        """RoPE positions for a training row of `length` tokens (BOS, `n_lines` lines of 3 tokens, then the
        query, pauses and answer) with random offsets between lines (spec 04 §13: "random position offsets"
        so that long evaluation contexts are not out of distribution for RoPE).

        A total gap G ~ U[0, max_position − length] is cut at random line boundaries: positions increase,
        tokens inside a line (and the query with its answer) stay adjacent, and the last one is
        < max_position. RoPE scores depend only on relative positions, so one offset for the whole row
        would change nothing; spreading the lines is what shows the model query-to-needle distances up to
        max_position. With G = 0 the positions are 0..length−1, the evaluation layout."""
        n_head = 1 + 3 * n_lines
        if length < n_head:
            raise LmlabError(f"a row of {length} tokens cannot hold BOS and {n_lines} lines")
        extra = max(0, int(max_position) - length)
        g = int(rng.integers(0, extra + 1))
        cuts = np.sort(rng.integers(0, g + 1, size=n_lines + 1))  # cumulative gap before line 1..n, query
        seg = np.zeros(length, dtype=np.int64)  # segment of each token: 0 = BOS, i = line i, n+1 = query
        seg[1:n_head] = 1 + np.arange(3 * n_lines) // 3
        seg[n_head:] = n_lines + 1
        return np.arange(length, dtype=np.int64) + np.concatenate([[0], cuts])[seg]

    def retrieval_weights(self, inst: KVInstance) -> np.ndarray:
        """Per context index: 1 at tokens predictable by retrieval (for the targeted span sampler and the
        retrieval-only span loss)."""
        w = np.zeros(len(inst.context), dtype=np.float32)
        w[inst.retrieval_targets] = 1.0
        return w


def collate(rows: list[tuple[list[int], list[int], list[float]]]):
    """Right-pad (ids, targets, weights) rows into tensors; padding has weight 0."""
    n = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), n), PAD, dtype=torch.long)
    tgt = torch.full((len(rows), n), PAD, dtype=torch.long)
    w = torch.zeros(len(rows), n)
    for i, (a, b, c) in enumerate(rows):
        ids[i, : len(a)] = torch.tensor(a)
        tgt[i, : len(b)] = torch.tensor(b)
        w[i, : len(c)] = torch.tensor(c)
    return ids, tgt, w


# ---------------------------------------------------------------- two-token keys with near duplicates
TARGET_TYPES = ("check", "fresh_key", "repeat_key", "fresh_value", "retrieved_value")


@dataclass
class PrefixKVInstance:
    context: list[int]  # BOS + lines `prefix suffix value check`
    query: list[int]  # the needle's prefix and suffix (+ pause tokens)
    answer: int  # the needle's value token
    needle_positions: list[int]  # context indices of the needle line (prefix, suffix, value, check)
    retrieval_targets: list[int]  # context indices of values of repeated lines (predictable by retrieval only)
    near_positions: list[int]  # context indices of the prefix token of fresh lines sharing the needle's prefix
    types: list[str]  # per context index j >= 1: the type of target j (TARGET_TYPES); "" at BOS
    n_lines: int
    n_distinct: int  # distinct distractor keys in the context


@dataclass
class PrefixKV:
    """Vocabulary: PAD, BOS, PAUSE, then `n_prefixes` prefix tokens, `n_suffixes` suffix tokens, `n_values` values
    and `n_checks` check tokens. A line is `prefix suffix value check` with check = (prefix + suffix) mod n_checks:
    predicting it at the value token trains the heads that gather both key tokens there, the half of the matching
    circuit that a value read later needs (in CPU trials a 2-layer LM did not learn two-token retrieval within
    1500 steps without it).

    A context of n lines holds the needle line once; every other line repeats an earlier fresh line (key and value)
    with probability `repeat_frac`, else it is a fresh line whose key is new to the context; a fresh key shares the
    needle's prefix with probability `near_frac` (while unused suffixes of that prefix remain), else it takes
    another prefix. The question is the needle's key; the answer its value."""

    n_prefixes: int = 8
    n_suffixes: int = 64
    n_values: int = 32
    near_frac: float = 0.5
    repeat_frac: float = 0.25
    n_checks: int = 8
    distinct_suffixes: bool = True  # every key of a context has its own suffix (see the class docstring)

    def __post_init__(self):
        if min(self.n_prefixes, self.n_suffixes, self.n_values, self.n_checks) < 2:
            raise LmlabError(f"PrefixKV needs n_prefixes, n_suffixes, n_values and n_checks >= 2, got {self}")
        for name in ("near_frac", "repeat_frac"):
            if not 0 <= getattr(self, name) < 1:
                raise LmlabError(f"PrefixKV {name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def prefix0(self) -> int:
        """First prefix token id (ids below are specials)."""
        return 3

    @property
    def suffix0(self) -> int:
        """First suffix token id."""
        return 3 + self.n_prefixes

    @property
    def value0(self) -> int:
        """First value token id."""
        return 3 + self.n_prefixes + self.n_suffixes

    @property
    def check0(self) -> int:
        """First check token id."""
        return self.value0 + self.n_values

    @property
    def vocab_size(self) -> int:
        """Specials, prefixes, suffixes, values and checks."""
        return self.check0 + self.n_checks

    def is_value(self, tok: int) -> bool:
        """Whether `tok` is a value token."""
        return self.value0 <= tok < self.check0

    def context_tokens(self, n_lines: int) -> int:
        """Tokens of a context of `n_lines` lines (BOS and 4 a line)."""
        return 1 + 4 * n_lines

    def max_lines(self) -> int:
        """The longest context whose fresh keys can all be distinct at any draw: one per suffix (distinct suffixes)
        or one per key of the key space."""
        return self.n_suffixes if self.distinct_suffixes else self.n_prefixes * self.n_suffixes

    def sample(self, n_lines: int, rng: np.random.Generator, n_pause: int = 0) -> PrefixKVInstance:
        """One context of `n_lines` lines (see the class docstring)."""
        if not 1 <= n_lines <= self.max_lines():
            raise LmlabError(f"n_lines must be in [1, {self.max_lines()}] (n_prefixes × n_suffixes keys), got "
                             f"{n_lines}: raise n_suffixes or shorten the lengths")
        p_star, s_star = int(rng.integers(self.n_prefixes)), int(rng.integers(self.n_suffixes))
        used = {(p_star, s_star)}
        free = [s for s in rng.permutation(self.n_suffixes).tolist() if s != s_star]  # suffixes no key holds yet
        near_free = free if self.distinct_suffixes else list(free)
        needle_line = int(rng.integers(n_lines))
        fresh: list[tuple[int, int, int]] = []  # (prefix, suffix, value) of fresh non-needle lines
        ctx, types, needle_pos, targets, near = [BOS], [""], [], [], []
        answer = -1
        for i in range(n_lines):
            if i == needle_line:
                p, s, v = p_star, s_star, int(rng.integers(self.n_values))
                answer = self.value0 + v
                needle_pos = [len(ctx) + j for j in range(4)]
                kind = "fresh"
            elif fresh and rng.random() < self.repeat_frac:
                p, s, v = fresh[int(rng.integers(len(fresh)))]
                kind = "repeat"
            else:
                p = None
                if near_free and rng.random() < self.near_frac:
                    p, s = p_star, near_free.pop()
                    near.append(len(ctx))
                elif self.distinct_suffixes and free:
                    p, s = int((p_star + 1 + rng.integers(self.n_prefixes - 1)) % self.n_prefixes), free.pop()
                elif not self.distinct_suffixes:
                    for _ in range(1000):
                        p, s = int(rng.integers(self.n_prefixes)), int(rng.integers(self.n_suffixes))
                        if (p, s) not in used and p != p_star:
                            break
                    else:  # the other prefixes are full: a near duplicate, or a repeat when none is left
                        p = None
                if p is None and near_free:
                    p, s = p_star, near_free.pop()
                    near.append(len(ctx))
                if p is None:
                    p, s, v = fresh[int(rng.integers(len(fresh)))]
                    kind = "repeat"
                else:
                    v = int(rng.integers(self.n_values))
                    fresh.append((p, s, v))
                    kind = "fresh"
                used.add((p, s))
            if kind == "repeat":
                targets.append(len(ctx) + 2)
            ctx += [self.prefix0 + p, self.suffix0 + s, self.value0 + v, self.check0 + (p + s) % self.n_checks]
            types += [f"{kind}_key", f"{kind}_key", "fresh_value" if kind == "fresh" else "retrieved_value", "check"]
        query = [self.prefix0 + p_star, self.suffix0 + s_star] + [PAUSE] * n_pause
        return PrefixKVInstance(ctx, query, answer, needle_pos, targets, near, types, n_lines, len(fresh))

    def target_weights(self, inst: PrefixKVInstance, weights: dict[str, float]) -> np.ndarray:
        """Per context index j: the weight of predicting token j (`weights[type]`; 0 at BOS)."""
        unknown = set(weights) - set(TARGET_TYPES)
        if unknown:
            raise LmlabError(f"unknown target types {sorted(unknown)}; choose from {', '.join(TARGET_TYPES)}")
        return np.array([0.0] + [float(weights.get(t, 0.0)) for t in inst.types[1:]], dtype=np.float32)

    def training_row(self, inst: PrefixKVInstance, weights: dict[str, float], answer_weight: float = 1.0
                     ) -> tuple[list[int], list[int], list[float]]:
        """(ids, next-token targets, weights) for context + query + answer: `weights[type]` on each context target,
        `answer_weight` on the answer; the query key and pauses are given, not predicted (weight 0)."""
        ids = inst.context + inst.query + [inst.answer]
        targets = ids[1:] + [PAD]
        ctx_w = self.target_weights(inst, weights)
        # target i predicts ids[i + 1]: the context's targets, the query's (given), the answer, then nothing
        w = [float(x) for x in ctx_w[1:]] + [0.0] * len(inst.query) + [float(answer_weight), 0.0]
        return ids, targets, w

    def retrieval_weights(self, inst: PrefixKVInstance) -> np.ndarray:
        """Per context index: 1 at values of repeated lines (the retrieval events inside the context)."""
        w = np.zeros(len(inst.context), dtype=np.float32)
        w[inst.retrieval_targets] = 1.0
        return w


# ---------------------------------------------------------------- text key-value retrieval
@dataclass
class KVTextPrompt:
    prompt: str
    answer: str
    needle_key: str
    n_near: int  # distractors sharing the needle's prefix


def kv_text_prompt(
    n_lines: int, rng: random.Random, near_frac: float = 0.5, prefix_len: int = 2, digits: int = 4
) -> KVTextPrompt:
    """Lines `key XY-1234 = 5821`; a `near_frac` share of the distractor keys reuse the needle's prefix."""
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"

    def prefix():
        return "".join(rng.choice(letters) for _ in range(prefix_len))

    def num(n):
        return str(rng.randrange(10 ** (n - 1), 10**n))

    needle_prefix = prefix()
    keys: set[str] = set()
    needle = f"{needle_prefix}-{num(digits)}"
    keys.add(needle)
    lines, n_near = [], 0
    while len(lines) < n_lines - 1:
        p = needle_prefix if rng.random() < near_frac else prefix()
        k = f"{p}-{num(digits)}"
        if k in keys:
            continue
        keys.add(k)
        n_near += p == needle_prefix
        lines.append(f"key {k} = {num(digits)}")
    answer = num(digits)
    lines.insert(rng.randrange(len(lines) + 1), f"key {needle} = {answer}")
    prompt = (
        "[CONTEXT]\n" + "\n".join(lines) + f"\n[QUESTION]\nWhat is the value of key {needle}?\nkey {needle} ="
    )
    return KVTextPrompt(prompt, answer, needle, n_near)


# ---------------------------------------------------------------- transaction logs
ANOMALIES = ("CALC_ERROR", "NEGATIVE_BAL", "LOST_UPDATE", "DUPLICATE_TXN")


@dataclass
class TransactionLog:
    lines: list[str]
    bug_type: str
    tx_id: str
    accounts: dict[str, int] = field(default_factory=dict)  # initial balances

    @property
    def text(self) -> str:
        """The log as text, one operation a line."""
        return "\n".join(self.lines)

    @property
    def answer(self) -> str:
        """The expected JSON answer: the bug type and the faulty transaction's id."""
        return f'{{"bug_type": "{self.bug_type}", "TX_ID": "{self.tx_id}"}}'


def transaction_log(
    n_ops: int, rng: random.Random, n_accounts: int = 5, bug_type: str | None = None
) -> TransactionLog:
    """`n_ops` operations (`TX_0007 WITHDRAW acct=C amount=40 balance 120->80`) with one injected anomaly:

    CALC_ERROR: new ≠ old ± amount; NEGATIVE_BAL: a withdrawal leaves a negative balance; LOST_UPDATE: the
    operation starts from a stale balance (old ≠ the account's current balance); DUPLICATE_TXN: a TX_ID
    repeats (the operation is applied twice).
    """
    if n_ops < 3:
        raise LmlabError(f"a transaction log needs at least 3 operations, got {n_ops}")
    bug = bug_type or rng.choice(ANOMALIES)
    if bug not in ANOMALIES:
        raise LmlabError(f"unknown anomaly {bug!r}; choose from {', '.join(ANOMALIES)}")
    names = [chr(ord("A") + i) for i in range(n_accounts)]
    bal = {a: rng.randrange(100, 1000) for a in names}
    init = dict(bal)
    lines = ["INITIAL " + " ".join(f"{a}={b}" for a, b in bal.items())]
    at = rng.randrange(1, n_ops)  # the anomaly is never the first operation
    bug_id = ""
    prev: tuple[str, str, int] | None = None  # (tx id, account, amount) of the previous op
    tx = 0
    for i in range(n_ops):
        if i == at and bug == "DUPLICATE_TXN" and prev is not None:
            txid, acct, amount = prev
            kind = "DEPOSIT" if amount > 0 else "WITHDRAW"
            old, new = bal[acct], bal[acct] + amount
            bal[acct] = new
            lines.append(f"{txid} {kind} acct={acct} amount={abs(amount)} balance {old}->{new}")
            bug_id = txid
            continue
        tx += 1
        txid = f"TX_{tx:04d}"
        acct = rng.choice(names)
        if i == at and bug == "NEGATIVE_BAL":
            amount = -(bal[acct] + rng.randrange(1, 50))
        elif rng.random() < 0.5 or bal[acct] < 20:
            amount = rng.randrange(5, 200) + max(0, -bal[acct])  # a negative balance is lifted at once
        else:
            amount = -rng.randrange(5, min(bal[acct], 200) + 1)
        old = bal[acct]
        new = old + amount
        if i == at and bug == "LOST_UPDATE":
            old = old + rng.choice([-1, 1]) * rng.randrange(5, 60)  # starts from a stale balance
            new = old + amount
        elif i == at and bug == "CALC_ERROR":
            new = new + rng.choice([-1, 1]) * rng.randrange(1, 30)
        if i == at:
            bug_id = txid
        bal[acct] = new
        kind = "DEPOSIT" if amount > 0 else "WITHDRAW"
        lines.append(f"{txid} {kind} acct={acct} amount={abs(amount)} balance {old}->{new}")
        prev = (txid, acct, amount)
    if not bug_id:  # DUPLICATE_TXN drawn where no previous op existed cannot happen (at >= 1)
        raise RuntimeError("anomaly was not injected")
    return TransactionLog(lines, bug, bug_id, init)


def find_anomaly(lines: list[str]) -> tuple[str, str] | None:
    """Replay a log and return the first (bug_type, TX_ID) found, or None for a clean log (the verifier)."""
    if not lines or not lines[0].startswith("INITIAL"):
        raise LmlabError("a transaction log starts with an INITIAL line")
    bal = {k: int(v) for k, v in (x.split("=") for x in lines[0].split()[1:])}
    seen = set()
    pat = re.compile(r"^(TX_\d+) (DEPOSIT|WITHDRAW) acct=(\w+) amount=(\d+) balance (-?\d+)->(-?\d+)$")
    for line in lines[1:]:
        m = pat.match(line)
        if m is None:
            raise LmlabError(f"unparseable log line: {line!r}")
        txid, kind, acct, amount, old, new = m.groups()
        amount, old, new = int(amount), int(old), int(new)
        if txid in seen:
            return "DUPLICATE_TXN", txid
        seen.add(txid)
        if old != bal[acct]:
            return "LOST_UPDATE", txid
        delta = amount if kind == "DEPOSIT" else -amount
        if new != old + delta:
            return "CALC_ERROR", txid
        if new < 0:
            return "NEGATIVE_BAL", txid
        bal[acct] = new
    return None


def transaction_prompt(log: TransactionLog) -> str:
    """The context-and-question prompt asking for the one wrong operation of `log`."""
    return (
        "[CONTEXT]\n" + log.text + "\n[QUESTION]\nExactly one operation above is wrong. Answer as "
        '{"bug_type": one of ' + ", ".join(ANOMALIES) + ', "TX_ID": ...}.\n'
    )


def score_transaction_answer(prediction: str, log: TransactionLog) -> bool:
    """Both the anomaly type and the TX_ID appear in the prediction."""
    return log.bug_type in prediction and log.tx_id in prediction
