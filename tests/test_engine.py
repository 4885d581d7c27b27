"""The decision engine's runner: seed blocks, per-seed numbers in results.json, checks apart from claims, a stopped
run resumed at its next seed equal to an uninterrupted one, `lmlab decide` from stored numbers, and reproduce
with several processes."""

import dataclasses
import json
import random

import pytest
from conftest import EXAMPLE_METHODS

import lmlab.experiment as ex
from lmlab import cli
from lmlab.report import write_report_card
from lmlab.utils import LmlabError
from lmlab.verdict import by_threshold, check, not_tested


@dataclasses.dataclass
class Cfg:
    seeds: int = 3
    margin: float = 0.1


STOP_AT: list[int] = []  # seeds at which measure() is stopped as by Ctrl-C


def measure(ctx, seed):
    measured.append(seed)
    if seed in STOP_AT:
        raise KeyboardInterrupt
    return {"effect": 0.2 + random.random() / 100, "sums_to_one": 1.0}  # the runner seeded `random` with `seed`


def decide(per_seed, cfg):
    return {"c_effect": by_threshold([n["effect"] for n in per_seed], cfg.margin),
            "c_untested": not_tested("only the check below stands for it"),
            "k_sanity": check(all(n["sums_to_one"] == 1.0 for n in per_seed), "probabilities sum to 1")}


measured: list[int] = []


@pytest.fixture
def engine(monkeypatch):
    measured.clear()
    monkeypatch.setattr(ex, "_REGISTRY", dict(ex.registry()))
    ex.experiment("toy_engine", "A toy paper", {"c_effect": "the effect exceeds 0.1", "c_untested": "B beats C"},
                  {p: Cfg() for p in ex.PRESETS}, checks={"k_sanity": "probabilities sum to 1"},
                  decide=decide)(measure)
    return ex.get("toy_engine")


def test_seed_blocks_are_disjoint_and_every_seed_is_stored(engine, tmp_path):
    rep = ex.run_experiment("toy_engine", out_dir=tmp_path / "a", seed=0, quiet=True)
    assert rep.seeds == [0, 1, 2] and measured == [0, 1, 2]
    ex.run_experiment("toy_engine", out_dir=tmp_path / "b", seed=1, seeds=2, quiet=True)
    assert measured[3:] == [2, 3]  # block 1 of 2 seeds
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    assert data["schema_version"] == 2 and data["seeds"] == [0, 1, 2] and data["rule"]
    assert [r["seed"] for r in data["runs"]] == [0, 1, 2] and "effect" in data["runs"][0]["numbers"]
    claims = {c["id"]: c for c in data["claims"]}
    assert claims["c_effect"]["status"] == "held" and claims["c_effect"]["n"] == 3
    assert claims["c_effect"]["per_seed"] == [r["numbers"]["effect"] for r in data["runs"]]
    assert claims["c_untested"]["status"] == "not tested"
    assert [c["id"] for c in data["checks"]] == ["k_sanity"] and data["checks"][0]["status"] == "passed"
    assert data["provenance"]["versions"]["torch"] and "git_commit" in data["provenance"]
    md = (tmp_path / "a" / "report.md").read_text()
    assert "seeds 0, 1, 2 (--seed 0 --seeds 3)" in md and "How a claim is decided" in md and "## Checks" in md


def test_report_card_counts_claims_and_checks_apart(engine, tmp_path):
    rep = ex.run_experiment("toy_engine", out_dir=tmp_path / "toy_engine", quiet=True)
    md = write_report_card(tmp_path, [rep], "tiny").read_text()
    assert "| 3 |" in md  # the seeds column
    assert "1 held, 0 not held, 0 undecided, 1 not tested (1 paper claims decided)" in md
    assert "checks: 1 passed, 0 failed" in md and "## Checks (not counted as claims)" in md


def stopped_run(out, at: int) -> dict:
    """The results.json of a toy_engine run into `out` stopped (as by Ctrl-C) when it reached seed `at`."""
    STOP_AT.append(at)
    try:
        with pytest.raises(KeyboardInterrupt):
            ex.run_experiment("toy_engine", out_dir=out, quiet=True)
    finally:
        STOP_AT.clear()
    return json.loads((out / "results.json").read_text())


def test_a_stopped_run_resumes_at_its_next_seed_and_equals_an_uninterrupted_one(engine, tmp_path, monkeypatch):
    ex.run_experiment("toy_engine", out_dir=tmp_path / "whole", quiet=True)
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    measured.clear()
    part = stopped_run(tmp_path / "cut", at=2)
    assert [r["seed"] for r in part["runs"]] == [0, 1]  # what was measured is on disk
    with pytest.raises(LmlabError, match="config differ"):  # another run's folder is refused
        ex.run_experiment("toy_engine", out_dir=tmp_path / "cut", quiet=True, resume=True, overrides={"margin": 0.2})
    measured.clear()
    rep = ex.run_experiment("toy_engine", out_dir=tmp_path / "cut", quiet=True, resume=True)
    assert measured == [2] and rep.error is None  # only the unfinished seed is measured
    done = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert done["runs"] == whole["runs"]
    assert [c["status"] for c in done["claims"]] == [c["status"] for c in whole["claims"]]


def test_resume_refuses_seeds_measured_by_another_commit(engine, tmp_path, monkeypatch):
    part = stopped_run(tmp_path / "cut", at=1)
    path = tmp_path / "cut" / "results.json"
    part["provenance"]["git_commit"] = "0" * 40  # as if measured by another version of the code
    path.write_text(json.dumps(part))
    here = ex.provenance([])["git_commit"]
    if here is None:
        pytest.skip("not a git checkout: no commit to compare")
    with pytest.raises(LmlabError, match="measured at commit 0{40}"):
        ex.run_experiment("toy_engine", out_dir=tmp_path / "cut", quiet=True, resume=True)


def test_decide_recomputes_verdicts_from_stored_numbers_without_measuring(engine, tmp_path, monkeypatch, capsys):
    ex.run_experiment("toy_engine", out_dir=tmp_path / "r", quiet=True)
    measured.clear()
    monkeypatch.setattr(engine, "decide", lambda per_seed, cfg: {**decide(per_seed, cfg), "c_effect": by_threshold(
        [n["effect"] for n in per_seed], margin=0.5)})  # a stricter margin: the same numbers no longer clear it
    assert cli.main(["decide", str(tmp_path / "r")]) == 0
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert measured == [] and {c["id"]: c["status"] for c in data["claims"]}["c_effect"] == "not held"
    assert "c_effect: not held" in capsys.readouterr().out


def test_engine_flags_on_experiments_not_on_it_and_bad_folders_are_user_errors(engine, tmp_path, capsys):
    # every built-in experiment is on the engine now: a plugin's one-run experiment (no decide) stands in
    ex.experiment("toy_one_run", "A toy paper", {"c": "x"}, {p: Cfg() for p in ex.PRESETS})(lambda ctx: None)
    with pytest.raises(LmlabError, match="not on the decision engine"):
        ex.run_experiment("toy_one_run", out_dir=tmp_path / "x", seeds=2, quiet=True)
    assert cli.main(["decide", str(tmp_path / "nowhere")]) == 2
    assert "results.json not found" in capsys.readouterr().err
    with pytest.raises(LmlabError, match="--seeds must be >= 1"):
        ex.run_experiment("toy_engine", out_dir=tmp_path / "y", seeds=0, quiet=True)
    with pytest.raises(ValueError, match="lack `seeds: int`"):
        ex.experiment("no_seeds", "p", {}, {p: Cfg(seeds=0) for p in ex.PRESETS}, decide=decide)(measure)


def test_reproduce_runs_experiments_in_parallel_processes(extra_methods, tmp_path, monkeypatch):
    extra_methods(EXAMPLE_METHODS)
    monkeypatch.setenv("LMLAB_METHODS", str(EXAMPLE_METHODS))  # the worker processes find the example method too
    out = tmp_path / "card"
    assert cli.main(["reproduce", "--only", "nope_periodic", "--jobs", "2", "--out", str(out)]) == 0
    card = json.loads((out / "report_card.json").read_text())
    assert [e["experiment"] for e in card["experiments"]] == ["nope_periodic"]
    assert (out / "nope_periodic.log").is_file() and card["failed"] == []


def test_a_report_read_back_keeps_every_status_and_number(engine, tmp_path):
    """reproduce --jobs builds the card from each run's results.json: "not tested" and the verdict numbers must
    survive the round trip."""
    from lmlab.report import Report

    ex.run_experiment("toy_engine", out_dir=tmp_path / "r", quiet=True)
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    back = Report.from_json(data, tmp_path / "r")
    assert {c.id: c.status for c in back.claims.values()} == {"c_effect": "held", "c_untested": "not tested"}
    assert back.to_json()["claims"] == data["claims"] and back.to_json()["checks"] == data["checks"]


def test_seeds_run_in_other_processes_merge_into_the_block_equal_to_one_run(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "provenance", lambda data: {"git_commit": "abc", "git_dirty": False, "data": {}})
    ex.run_experiment("toy_engine", out_dir=tmp_path / "whole", quiet=True)
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    ex.run_experiment("toy_engine", out_dir=tmp_path / "s2", seed=2, seeds=1, quiet=True)  # seed 2 alone
    ex.run_experiment("toy_engine", out_dir=tmp_path / "s1", seed=1, seeds=1, quiet=True)  # seed 1 alone
    measured.clear()
    assert cli.main(["run", "toy_engine", "--out", str(tmp_path / "merged"), "--seeds-from", str(tmp_path / "s2"),
                     "--seeds-from", str(tmp_path / "s1")]) == 0
    assert measured == [0]  # seeds 1 and 2 come from the other folders
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged["runs"] == whole["runs"] and merged["seeds"] == [0, 1, 2]
    assert [c["status"] for c in merged["claims"]] == [c["status"] for c in whole["claims"]]
    assert merged["provenance"]["seeds_from"] == {str(tmp_path / "s2"): [2], str(tmp_path / "s1"): [1]}
    s2 = json.loads((tmp_path / "s2" / "results.json").read_text())
    threads = s2["environment"]["cpu_threads"]  # the other process's threads, not the merging one's
    assert merged["provenance"]["seeds_from_time_s"][str(tmp_path / "s2")] == [s2["runtime_s"], s2["cpu_time_s"],
                                                                             threads]
    md = (tmp_path / "merged" / "report.md").read_text()
    assert "merged with `--seeds-from`" in md and f"seed 2 ({s2['runtime_s']:.0f} s, CPU " in md
    assert "in this process (the merged seeds' own times are on the next line)" in md
    assert f"CPU {s2['cpu_time_s']:.0f} s, {threads} thread" in md


def test_seeds_from_refuses_other_settings_code_or_seeds_outside_the_block(engine, tmp_path, monkeypatch):
    prov = {"git_commit": "abc", "git_dirty": False, "data": {}}
    monkeypatch.setattr(ex, "provenance", lambda data: dict(prov))
    ex.run_experiment("toy_engine", out_dir=tmp_path / "s3", seed=3, seeds=1, quiet=True)
    with pytest.raises(LmlabError, match=r"seeds \[3\] outside this run's block \[0, 1, 2\]"):
        ex.run_experiment("toy_engine", out_dir=tmp_path / "m", quiet=True, seeds_from=[tmp_path / "s3"])
    ex.run_experiment("toy_engine", out_dir=tmp_path / "s1", seed=1, seeds=1, quiet=True, overrides={"margin": 0.2})
    with pytest.raises(LmlabError, match="config differ"):
        ex.run_experiment("toy_engine", out_dir=tmp_path / "m", quiet=True, seeds_from=[tmp_path / "s1"])
    ex.run_experiment("toy_engine", out_dir=tmp_path / "s2", seed=2, seeds=1, quiet=True)
    prov["git_commit"] = "def"  # this checkout moved on: it may not measure seeds 0 and 1 beside abc's seed 2
    with pytest.raises(LmlabError, match="would measure seeds \\[0, 1\\] at commit def"):
        ex.run_experiment("toy_engine", out_dir=tmp_path / "m", quiet=True, seeds_from=[tmp_path / "s2"])
    prov["git_commit"] = "abc"
    ex.run_experiment("toy_engine", out_dir=tmp_path / "s0", seed=0, seeds=1, quiet=True)
    ex.run_experiment("toy_engine", out_dir=tmp_path / "s1b", seed=1, seeds=1, quiet=True)
    prov["git_commit"] = "def"  # ... but it may decide over seeds that one commit measured elsewhere
    measured.clear()
    rep = ex.run_experiment("toy_engine", out_dir=tmp_path / "m", quiet=True,
                            seeds_from=[tmp_path / "s0", tmp_path / "s1b", tmp_path / "s2"])
    assert measured == [] and rep.provenance["measured_at"] == "abc" and rep.provenance["git_commit"] == "def"
    ex.run_experiment("toy_engine", out_dir=tmp_path / "s0d", seed=0, seeds=1, quiet=True)  # measured by def
    with pytest.raises(LmlabError, match="different commits"):
        ex.run_experiment("toy_engine", out_dir=tmp_path / "m2", quiet=True,
                          seeds_from=[tmp_path / "s0d", tmp_path / "s1b", tmp_path / "s2"])
    prov.update(git_dirty=True)
    ex.run_experiment("toy_engine", out_dir=tmp_path / "dirty", seed=2, seeds=1, quiet=True)
    with pytest.raises(LmlabError, match="uncommitted changes"):
        ex.run_experiment("toy_engine", out_dir=tmp_path / "m3", quiet=True, seeds_from=[tmp_path / "dirty"])
    with pytest.raises(LmlabError, match="not found"):
        ex.run_experiment("toy_engine", out_dir=tmp_path / "m4", quiet=True, seeds_from=[tmp_path / "none"])
