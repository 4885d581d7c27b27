"""The committed tiny report card is what the code gives: rerun `lmlab reproduce --preset tiny` and compare every
paper claim's and check's status with docs/results/tiny/report_card.json (slow: the whole tiny run, about 5
minutes with --jobs 2). The fast tests of the same code are each experiment's own tests."""

import json
import os
from pathlib import Path

import pytest

from lmlab import cli

CARD = Path(__file__).resolve().parents[1] / "docs" / "results" / "tiny" / "report_card.json"


def statuses(card: dict) -> dict[tuple[str, str], str]:
    out = {}
    for e in card["experiments"]:
        for c in e["claims"] + (e.get("checks") or []):
            out[(e["experiment"], c["id"])] = c.get("status") or {True: "held", False: "not held",
                                                                  None: "undecided"}[c["held"]]
    return out


@pytest.mark.slow
def test_reproduce_tiny_gives_the_committed_card(tmp_path, shared_data):
    assert os.environ.get("LMLAB_DATA")  # the committed card was made with the real data
    assert cli.main(["reproduce", "--preset", "tiny", "--jobs", "2", "--out", str(tmp_path)]) == 0
    now = statuses(json.loads((tmp_path / "report_card.json").read_text()))
    committed = statuses(json.loads(CARD.read_text()))
    differ = {k: (committed.get(k), now.get(k)) for k in set(now) | set(committed) if now.get(k) != committed.get(k)}
    assert not differ, f"verdicts that differ from {CARD} (committed, now): {differ}"
