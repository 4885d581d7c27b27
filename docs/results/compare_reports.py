"""Compare two report folders written by `lmlab run|reproduce` (one sub-folder per experiment, each with a
results.json): every metric, claim verdict, claim evidence and config value (a config key only the second run has is listed, not
counted: the first run's code never read it), ignoring what differs between two identical
runs (dates, run and CPU times, the environment block). Prints one line per experiment and every difference;
exits 1 when any metric or verdict differs.

    python3 docs/results/compare_reports.py BEFORE_DIR AFTER_DIR [NAME,NAME...]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

TIMING_WORDS = ("runtime", "cpu_time", "seconds", "_s_", "time_s", "time_frac", "elapsed", "wall")


def flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def is_timing(key: str) -> bool:
    k = key.lower()
    return any(w in k for w in TIMING_WORDS) or k.endswith("_s")


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(before: Path, after: Path, only: list[str] | None = None) -> int:
    bad = 0
    names = only or sorted(p.name for p in before.iterdir() if (p / "results.json").is_file())
    for name in names:
        a_file, b_file = before / name / "results.json", after / name / "results.json"
        if not b_file.is_file():
            print(f"{name}: missing in {after}")
            bad += 1
            continue
        a, b = json.loads(a_file.read_text()), json.loads(b_file.read_text())
        diffs = []
        am, bm = dict(flatten(a["metrics"])), dict(flatten(b["metrics"]))
        for k in sorted(set(am) | set(bm)):
            if is_timing(k):
                continue
            if k not in am or k not in bm or not same(am[k], bm[k]):
                diffs.append(f"  metric {k}: {am.get(k, '(absent)')!r} -> {bm.get(k, '(absent)')!r}")
        ac, bc = {c["id"]: c for c in a["claims"]}, {c["id"]: c for c in b["claims"]}
        for cid in sorted(set(ac) | set(bc)):
            x, y = ac.get(cid, {}), bc.get(cid, {})
            if x.get("held") != y.get("held"):
                diffs.append(f"  claim {cid}: {x.get('held')!r} -> {y.get('held')!r}")
            elif x.get("evidence") != y.get("evidence"):
                diffs.append(f"  claim {cid} evidence differs:\n    {x.get('evidence')}\n    {y.get('evidence')}")
        if a.get("error") != b.get("error"):
            diffs.append(f"  error: {a.get('error')!r} -> {b.get('error')!r}")
        ak, bk = a.get("config") or {}, b.get("config") or {}
        for k in sorted(set(ak) | set(bk)):
            if k not in bk or (k in ak and not same(ak[k], bk[k])):
                diffs.append(f"  config {k}: {ak.get(k, '(absent)')!r} -> {bk.get(k, '(absent)')!r}")
        added = sorted(set(bk) - set(ak))  # a key the old preset lacked: its code read a default, never this
        n_metrics = sum(1 for k in am if not is_timing(k))
        status = "identical" if not diffs else f"{len(diffs)} difference(s)"
        note = f" (config gains {', '.join(added)})" if added else ""
        print(f"{name}: {n_metrics} metrics, {len(ac)} claims: {status}{note}")
        for d in diffs:
            print(d)
        bad += bool(diffs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(compare(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",") if len(sys.argv) > 3 else None))
