import json
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from lmlab.report import NOT_EVALUATED, Report, verdict, write_report_card


def make_report(tmp_path, name="exp_a", error=None):
    r = Report(
        name, "tiny", 3, tmp_path / name, paper="Some paper, 2024", config={"steps": 5, "widths": [1, 2]}
    )
    r.add_claim("c1", "A beats B | sometimes")
    r.add_claim("c2", "C is undecidable here")
    r.add_claim("c3", "D fails")
    r.decide("c1", True, "A=0.91 vs B=0.80, margin 0.05")
    r.decide("c2", None, "undecided: needs real data")
    r.decide("c3", False, "D=0.1 < 0.5")
    r.metric("acc", 0.91)
    r.table([[1, 0.123456], ["x", 2.0]], ["a", "b"], title="T")
    r.error = error
    r.runtime_s = 1.5
    return r


def test_report_files_and_schema(tmp_path):
    r = make_report(tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    r.figure(fig, "curve", "Loss curve")
    out = r.write()
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text())
    for key in ("experiment", "preset", "seed", "environment", "metrics", "claims", "config", "runtime_s"):
        assert key in data
    assert data["claims"] == [
        {
            "id": "c1",
            "statement": "A beats B | sometimes",
            "held": True,
            "evidence": "A=0.91 vs B=0.80, margin 0.05",
            "kind": "claim",
            "status": "held",
        },
        {
            "id": "c2",
            "statement": "C is undecidable here",
            "held": None,
            "evidence": "undecided: needs real data",
            "kind": "claim",
            "status": "undecided",
        },
        {"id": "c3", "statement": "D fails", "held": False, "evidence": "D=0.1 < 0.5", "kind": "claim",
         "status": "not held"},
    ]
    assert data["schema_version"] == 2 and data["checks"] == [] and data["runs"] == []  # additive to schema 1
    assert data["metrics"] == {"acc": 0.91} and data["figures"] == ["curve.png"]
    md = (out / "report.md").read_text()
    assert "| c1 | A beats B \\| sometimes | **held** |" in md  # pipes escaped inside table cells
    assert "**undecided**" in md and "**not held**" in md
    assert "![Loss curve](curve.png)" in md and "| 1 | 0.1235 |" in md
    assert "lmlab run exp_a --preset tiny --seed 3" in md


def test_decide_validates(tmp_path):
    r = make_report(tmp_path)
    with pytest.raises(KeyError):
        r.decide("nope", True, "x")
    with pytest.raises(ValueError):
        r.decide("c1", True, "  ")
    assert Report("e", "tiny", 0, tmp_path / "e").claims == {}
    r.add_claim("c4", "new")
    assert r.claims["c4"].evidence == NOT_EVALUATED and r.claims["c4"].held is None


def test_unlabelled_figure_warns(tmp_path):
    r = make_report(tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with pytest.warns(UserWarning, match="lack an x or y label"), pytest.warns(UserWarning, match="no title"):
        r.figure(fig, "bad", "no labels")
    fig, ax = plt.subplots()
    im = ax.imshow([[0, 1], [1, 0]])
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    fig.colorbar(im)
    with pytest.warns(UserWarning, match=r"'heat': panels \[0\] have no title"):
        r.figure(fig, "heat", "a heat map without a title")
    ax.set_title("attention")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r.figure(fig, "heat", "labelled heat map with a colorbar")


def test_report_card(tmp_path):
    ok = make_report(tmp_path, "exp_a")
    bad = make_report(tmp_path, "exp_b", error="RuntimeError: boom\n\ntraceback...")
    path = write_report_card(tmp_path, [ok, bad], "tiny")
    md = path.read_text()
    assert "[exp_a](exp_a/report.md)" in md and "[exp_b](exp_b/report.md)" in md
    assert ("Totals: 2 held, 2 not held, 2 undecided, 0 not tested (4 paper claims decided) across 2 experiments; "
            "checks: 0 passed, 0 failed.") in md
    assert "**Experiments that failed:** exp_b" in md and "**failed**: RuntimeError: boom" in md
    card = json.loads((tmp_path / "report_card.json").read_text())
    assert card["counts"] == {"held": 2, "not held": 2, "undecided": 2, "not tested": 0} and card["failed"] == ["exp_b"]
    assert [verdict(v) for v in (True, False, None)] == ["held", "not held", "undecided"]
    empty = write_report_card(tmp_path / "none", [], "tiny").read_text()
    assert "No experiments are registered yet." in empty


def test_reproduce_line_lists_the_overrides(tmp_path):
    r = make_report(tmp_path)
    assert "Reproduce with `lmlab run exp_a --preset tiny --seed 3`." in r.to_markdown()
    r.overrides = {"minilm_models": 3, "minilm_n_train": 800, "lr": 0.001, "fast": False,
                   "taggers": "hmm,crf", "note": "two words", "widths": [1, 2]}
    md = r.to_markdown()
    assert (
        "Reproduce with `lmlab run exp_a --preset tiny --seed 3 minilm_models=3 minilm_n_train=800 lr=0.001 "
        "fast=false taggers=hmm,crf 'note=two words' 'widths=[1, 2]'`." in md
    )
    assert json.loads(json.dumps(r.to_json()))["overrides"]["minilm_n_train"] == 800


def test_each_run_keeps_its_own_start_date_in_results_and_card(tmp_path, monkeypatch):
    import lmlab.report as report_mod

    class Clock:  # datetime.now answers 10:00, then 10:05, then 11:00 (the card)
        times = iter(["2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00", "2026-01-01T11:00:00+00:00"])

        @classmethod
        def now(cls, tz=None):
            stamp = next(cls.times)
            return type("T", (), {"isoformat": lambda self, timespec=None: stamp})()

    monkeypatch.setattr(report_mod._dt, "datetime", Clock)
    a, b = make_report(tmp_path, "exp_a"), make_report(tmp_path, "exp_b")
    a.write()
    write_report_card(tmp_path, [a, b], "tiny")
    card = json.loads((tmp_path / "report_card.json").read_text())
    assert [e["date"] for e in card["experiments"]] == ["2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00"]
    assert json.loads((tmp_path / "exp_a" / "results.json").read_text())["date"] == "2026-01-01T10:00:00+00:00"
