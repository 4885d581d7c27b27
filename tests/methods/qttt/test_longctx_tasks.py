import random
import re

import numpy as np
import pytest

from lmlab.methods.qttt.tasks import (
    ANOMALIES,
    BOS,
    PAUSE,
    KVRetrieval,
    collate,
    find_anomaly,
    kv_text_prompt,
    score_transaction_answer,
    transaction_log,
    transaction_prompt,
)
from lmlab.utils import LmlabError


@pytest.mark.parametrize("n_lines", [1, 5, 40, 300])
def test_kv_instance_structure(n_lines):
    task = KVRetrieval(n_keys=64, n_values=16, n_families=4, repeat_frac=0.3)
    inst = task.sample(n_lines, np.random.default_rng(n_lines), n_pause=3)
    c = inst.context
    assert c[0] == BOS and len(c) == 1 + 3 * n_lines
    lines = [c[i : i + 3] for i in range(1, len(c), 3)]
    needle_key = inst.query[0]
    assert inst.query[1:] == [PAUSE] * 3
    assert [ln[0] for ln in lines].count(needle_key) == 1  # the needle's key appears once
    k, v, _ = (c[p] for p in inst.needle_positions)
    assert k == needle_key and v == inst.answer and task.is_value(v)
    mapping = {}
    for ln in lines:  # one value per key inside a context, checks = the key's family
        assert mapping.setdefault(ln[0], ln[1]) == ln[1]
        assert ln[2] == task.check0 + task.family(ln[0] - task.key0)
    seen = set()
    expected_targets = []
    for i, ln in enumerate(lines):
        if ln[0] in seen:
            expected_targets.append(1 + 3 * i + 1)
        seen.add(ln[0])
    assert inst.retrieval_targets == expected_targets
    fam = task.family(needle_key - task.key0)
    assert all(task.family(c[p] - task.key0) == fam for p in inst.near_positions)
    assert inst.needle_positions[0] not in inst.near_positions


def test_training_row_weights():
    task = KVRetrieval(n_keys=32, n_values=8, n_families=2)
    inst = task.sample(12, np.random.default_rng(0), n_pause=2)
    ids, tgt, w = task.training_row(inst, other_weight=0.1)
    assert tgt[:-1] == ids[1:]
    n = len(inst.context)
    assert w[len(ids) - 2] == 1.0 and tgt[len(ids) - 2] == inst.answer  # the answer
    assert all(w[j] == 0.0 for j in range(n - 1, len(ids) - 2))  # query key and pauses are not predicted
    for j in inst.retrieval_targets:
        assert w[j - 1] == 1.0
    ids_t, _, w_t = collate(
        [task.training_row(inst), task.training_row(task.sample(3, np.random.default_rng(1)))]
    )
    assert ids_t.shape == w_t.shape and float(w_t[1, 3 * 3 + 4 :].sum()) == 0.0


def test_kv_validation():
    with pytest.raises(LmlabError):
        KVRetrieval(n_keys=1)
    with pytest.raises(LmlabError):
        KVRetrieval(repeat_frac=1.0)
    with pytest.raises(LmlabError):
        KVRetrieval().sample(0, np.random.default_rng(0))


def _count_anomalies(lines):
    """Replay that keeps going after an anomaly (adopting the logged balance) and counts them."""
    bal = {k: int(v) for k, v in (x.split("=") for x in lines[0].split()[1:])}
    seen, n = set(), 0
    for line in lines[1:]:
        txid, kind, acct, amount, old, new = re.match(
            r"^(TX_\d+) (\w+) acct=(\w+) amount=(\d+) balance (-?\d+)->(-?\d+)$", line
        ).groups()
        amount, old, new = int(amount), int(old), int(new)
        delta = amount if kind == "DEPOSIT" else -amount
        n += (txid in seen) or old != bal[acct] or new != old + delta or new < 0
        seen.add(txid)
        bal[acct] = new
    return n


@pytest.mark.parametrize("bug", ANOMALIES)
def test_transaction_log_has_exactly_one_detectable_anomaly(bug):
    for seed in range(40):
        log = transaction_log(random.Random(seed).randrange(3, 80), random.Random(seed), bug_type=bug)
        assert find_anomaly(log.lines) == (bug, log.tx_id)
        assert _count_anomalies(log.lines) == 1
        assert score_transaction_answer(log.answer, log) and not score_transaction_answer(
            "CALC_ERROR TX_9999", log
        )
        assert log.text in transaction_prompt(log)


def test_clean_log_and_bad_input():
    lines = [
        "INITIAL A=100 B=50",
        "TX_0001 DEPOSIT acct=A amount=10 balance 100->110",
        "TX_0002 WITHDRAW acct=B amount=50 balance 50->0",
    ]
    assert find_anomaly(lines) is None
    with pytest.raises(LmlabError):
        find_anomaly(["TX_0001 DEPOSIT acct=A amount=10 balance 100->110"])
    with pytest.raises(LmlabError):
        transaction_log(2, random.Random(0))
    with pytest.raises(LmlabError):
        transaction_log(10, random.Random(0), bug_type="TYPO")


def test_kv_text_prompt():
    p = kv_text_prompt(60, random.Random(3), near_frac=0.5)
    body = p.prompt.split("[QUESTION]")[0]
    assert body.count(f"key {p.needle_key} =") == 1
    assert f"key {p.needle_key} = {p.answer}" in body
    prefix = p.needle_key.split("-")[0]
    assert sum(1 for ln in body.splitlines() if ln.startswith(f"key {prefix}-")) == p.n_near + 1
    assert p.prompt.endswith(f"key {p.needle_key} =")


def test_spread_positions_cover_long_contexts_and_keep_lines_adjacent():
    task = KVRetrieval(n_keys=32, n_values=8, n_families=2)
    rng = np.random.default_rng(0)
    inst = task.sample(6, rng, n_pause=2)
    ids, _, _ = task.training_row(inst)
    n = len(ids)
    lasts = []
    for _ in range(300):
        pos = task.spread_positions(6, n, 200, rng)
        assert pos.shape == (n,) and pos[0] == 0 and pos[-1] < 200
        assert np.all(np.diff(pos) >= 1)
        for i in range(6):  # key, value, check of a line stay adjacent (the previous-token circuit sees 1, 2)
            a = 1 + 3 * i
            assert pos[a + 1] - pos[a] == 1 and pos[a + 2] - pos[a] == 2
        assert np.all(np.diff(pos[1 + 18 :]) == 1)  # query, pauses and answer stay adjacent
        lasts.append(pos[-1])
    # query-to-BOS distances reach the long-context range, and unspread rows (the eval layout) occur too
    assert max(lasts) >= 180 and min(lasts) <= n + 20
    assert np.array_equal(task.spread_positions(6, n, n, rng), np.arange(n))  # no room: contiguous


@pytest.mark.parametrize("n_lines", [1, 8, 60])
def test_prefix_kv_instances(n_lines):
    from lmlab.methods.qttt.tasks import TARGET_TYPES, PrefixKV

    task = PrefixKV(n_prefixes=4, n_suffixes=64, n_values=8, near_frac=0.5, repeat_frac=0.3)
    inst = task.sample(n_lines, np.random.default_rng(n_lines), n_pause=2)
    c = inst.context
    assert c[0] == BOS and len(c) == task.context_tokens(n_lines) and inst.query[2:] == [PAUSE] * 2
    lines = [tuple(c[i: i + 4]) for i in range(1, len(c), 4)]
    keys = [ln[:2] for ln in lines]
    assert keys.count(tuple(inst.query[:2])) == 1 and c[inst.needle_positions[2]] == inst.answer
    mapping = {}
    for p, s, v, chk in lines:  # one value per key; the check needs both key tokens
        assert mapping.setdefault((p, s), v) == v
        assert chk - task.check0 == ((p - task.prefix0) + (s - task.suffix0)) % task.n_checks
    fresh = [k for i, k in enumerate(keys) if k not in keys[:i]]
    assert inst.n_distinct == len(fresh) - 1 and len({k[1] for k in fresh}) == len(fresh)  # distinct suffixes
    assert all(c[j] == inst.query[0] for j in inst.near_positions)  # near duplicates share the needle's prefix
    assert set(inst.types[1:]) <= set(TARGET_TYPES)
    for j in inst.retrieval_targets:
        assert inst.types[j] == "retrieved_value"


def test_prefix_kv_distinct_distractors_grow_with_length_and_weights_follow_types():
    from lmlab.methods.qttt.tasks import PrefixKV

    task = PrefixKV(n_prefixes=4, n_suffixes=256, n_values=8)
    rng = np.random.default_rng(0)
    near = [np.mean([len(task.sample(n, rng).near_positions) for _ in range(20)]) for n in (16, 64, 192)]
    assert near[0] < near[1] < near[2]
    inst = task.sample(10, rng)
    ids, tgt, w = task.training_row(inst, {"check": 1.0, "retrieved_value": 1.0}, answer_weight=2.0)
    assert tgt[:-1] == ids[1:] and w[len(ids) - 2] == 2.0 and tgt[len(ids) - 2] == inst.answer
    for j in range(1, len(inst.context)):
        assert w[j - 1] == (1.0 if inst.types[j] in ("check", "retrieved_value") else 0.0)
    with pytest.raises(LmlabError, match="n_lines"):
        task.sample(257, rng)
    with pytest.raises(LmlabError, match="unknown target types"):
        task.target_weights(inst, {"keys": 1.0})
