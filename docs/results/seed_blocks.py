"""Are the verdicts stable across seed blocks? Runs `lmlab run NAME --preset P --seed S` for S in 0, 1, 2 (`--jobs`
processes at a time, 2 by default), prints each claim's status per block, flags any claim held in one block and not held in
another, and counts decided paper claims against the committed card (docs/results/<preset>/report_card.json).
Exits 1 when a verdict flips.

    python3 docs/results/seed_blocks.py lmc_basins info_memorization --preset tiny --out /tmp/blocks
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BLOCKS = (0, 1, 2)
CARDS = Path(__file__).resolve().parent


def run(name: str, preset: str, block: int, out: Path) -> dict:
    folder = out / name / f"seed{block}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"seed{block}.log", "w") as log:
        subprocess.run([sys.executable, "-m", "lmlab.cli", "run", name, "--preset", preset, "--seed", str(block),
                        "--out", str(folder)], stdout=log, stderr=subprocess.STDOUT, check=False)
    return json.loads((folder / "results.json").read_text())


def status(claim: dict) -> str:
    return claim.get("status") or {True: "held", False: "not held", None: "undecided"}[claim["held"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (1 on a machine shared with other work)")
    args = ap.parse_args()
    out = Path(args.out)
    jobs = [(n, b) for n in args.names for b in BLOCKS]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = dict(zip(jobs, pool.map(lambda j: run(j[0], args.preset, j[1], out), jobs)))
    card_path = CARDS / args.preset / "report_card.json"
    card = {e["experiment"]: e for e in json.loads(card_path.read_text())["experiments"]} if card_path.is_file() else {}
    flips = 0
    for name in args.names:
        per_block = {b: {c["id"]: status(c) for c in results[(name, b)]["claims"]} for b in BLOCKS}
        seeds = {b: results[(name, b)].get("seeds") or [b] for b in BLOCKS}
        print(f"\n{name} (preset {args.preset}; seeds per block: {', '.join(f'{b}: {seeds[b]}' for b in BLOCKS)})")
        committed = {c["id"]: status(c) for c in card.get(name, {}).get("claims", [])}
        for cid in per_block[0]:
            row = [per_block[b].get(cid, "?") for b in BLOCKS]
            flip = "held" in row and "not held" in row
            flips += flip
            print(f"  {cid}: " + " | ".join(row) + f"   (committed card: {committed.get(cid, '-')})"
                  + ("   <-- FLIPS" if flip else ""))
        decided = [sum(v in ("held", "not held") for v in per_block[b].values()) for b in BLOCKS]
        was = sum(v in ("held", "not held") for v in committed.values())
        print(f"  decided paper claims per block: {decided}; committed card: {was}")
    print(f"\n{flips} claim(s) held under one seed block and not held under another")
    return 1 if flips else 0


if __name__ == "__main__":
    sys.exit(main())
