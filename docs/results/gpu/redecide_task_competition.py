"""Re-apply task_competition's current verdict logic for claims 3, 4 and 6 to a stored results.json.

The GPU run cannot be repeated without a GPU, but every number these claims read is in its results.json
(per-seed injection signals and gradients of the toy; per-cell gradient histories of the LM ladder). Claims
1, 2 and 5 read per-seed toy sweeps that the JSON keeps only as means; their logic has not changed.

    python docs/results/gpu/redecide_task_competition.py docs/results/gpu/task_competition/results.json OUT.md
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import lmlab.experiments.task_competition as tcx
from lmlab.report import Report


def main(src: str, out: str) -> None:
    stored = json.loads(Path(src).read_text())
    cfg, metrics = stored["config"], stored["metrics"]
    rep = Report("task_competition", stored["preset"], stored["seed"], Path(out).parent)
    for cid, text in tcx.CLAIMS.items():
        rep.add_claim(cid, text)
    inj = {int(p): {int(n): {k: np.asarray(v, float) for k, v in r.items()} for n, r in res.items()}
           for p, res in metrics["injection"].items()}
    thr = tcx.decide_c3(rep, inj, cfg)
    tcx.decide_c4(rep, inj, thr, cfg)
    lm = metrics.get("lm") or []
    if lm:
        setup = SimpleNamespace(tasks=[SimpleNamespace(name=n) for n in lm[0]["tasks"]])
        tcx.decide_c6(rep, lm, cfg, setup)
    lines = [f"# task_competition ({stored['preset']}, {stored['date']}): claims 3, 4, 6 re-decided", "",
             f"Source: `{src}` (run on {stored['environment'].get('gpu') or stored['device']}); verdict logic of "
             "the current code. Claims 1, 2 and 5 are as in the report.", ""]
    for cid in ("c3_retention_threshold", "c4_common_gradient", "c6_lm_rare_tasks"):
        c = rep.claims[cid]
        if c.held is None and not c.evidence:
            continue
        verdict = {True: "held", False: "**not held**", None: "undecided"}[c.held]
        lines += [f"- **{cid}**: {verdict} — {c.evidence}", ""]
    Path(out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:3])
