"""Tagging scores: token accuracy, per-tag precision/recall/F1, and seqeval-style entity F1
(exact span match)."""

from __future__ import annotations

from collections import Counter


def entity_spans(tags: list[str], outside: str = "O") -> list[tuple[str, int, int]]:
    """(type, start, end_exclusive) spans. Accepts BIO (`B-PN`, `I-PN`) and plain IO tags (`PN`), where a
    run of the same plain tag is one entity (the Sumerian NER corpus uses plain tags)."""
    spans, cur = [], None  # cur = [type, start]
    for i, tag in enumerate(list(tags) + [outside]):
        prefix, typ = tag.split("-", 1) if tag[:2] in ("B-", "I-", "E-", "S-") else ("", tag)
        if tag == outside:
            typ = None
        starts_new = typ is not None and (cur is None or typ != cur[0] or prefix in ("B", "S"))
        if cur is not None and (typ is None or starts_new):
            spans.append((cur[0], cur[1], i))
            cur = None
        if starts_new:
            cur = [typ, i]
        if cur is not None and prefix in ("E", "S"):
            spans.append((cur[0], cur[1], i + 1))
            cur = None
    return spans


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def entity_f1(gold: list[list[str]], pred: list[list[str]], outside: str = "O") -> dict:
    """Micro precision/recall/F1 over exactly matching (type, start, end) spans, and per type."""
    tp, n_pred, n_gold = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(entity_spans(g, outside)), set(entity_spans(p, outside))
        for typ, *_ in gs:
            n_gold[typ] += 1
        for typ, *_ in ps:
            n_pred[typ] += 1
        for typ, *_ in gs & ps:
            tp[typ] += 1
    prec, rec, f1 = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    per_type = {
        t: dict(zip(("precision", "recall", "f1"), _prf(tp[t], n_pred[t], n_gold[t])), support=n_gold[t])
        for t in sorted(set(n_gold) | set(n_pred))
    }
    return {"precision": prec, "recall": rec, "f1": f1, "per_type": per_type}


def tagging_scores(gold: list[list[str]], pred: list[list[str]], entities: bool = False) -> dict:
    """Token accuracy, per-tag P/R/F1, macro-F1 over gold tags; with `entities`, also entity-level F1."""
    g_flat, p_flat = [], []
    for g, p in zip(gold, pred, strict=True):
        if len(g) != len(p):
            raise ValueError(f"prediction has {len(p)} tags for a sentence of {len(g)} tokens")
        g_flat += g
        p_flat += p
    correct = sum(a == b for a, b in zip(g_flat, p_flat))
    gold_c, pred_c = Counter(g_flat), Counter(p_flat)
    hit = Counter(a for a, b in zip(g_flat, p_flat) if a == b)
    per_tag = {
        t: dict(zip(("precision", "recall", "f1"), _prf(hit[t], pred_c[t], gold_c[t])), support=gold_c[t])
        for t in sorted(gold_c)
    }
    out = {
        "accuracy": correct / max(1, len(g_flat)),
        "tokens": len(g_flat),
        "per_tag": per_tag,
        "macro_f1": sum(v["f1"] for v in per_tag.values()) / max(1, len(per_tag)),
    }
    if entities:
        out["entity"] = entity_f1(gold, pred)
    return out
