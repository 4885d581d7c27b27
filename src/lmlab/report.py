"""Experiment reports: report.md + results.json + PNG figures, and the reproduce report card.

Claims (and checks) are declared up front (statement only). An experiment on the decision engine gets each
one's `Verdict` from the per-seed numbers (`verdict(id, v)`, see `lmlab.verdict`); an experiment not yet on it
decides from its own run with `decide(id, held, evidence)`. `held=None` means undecided, and the evidence must
then say why. results.json (schema 2) stores every seed's measurements, so `lmlab decide DIR` can recompute the
verdicts without training again.
"""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch
import yaml

from lmlab.utils import atomic_write_json, atomic_write_png, atomic_write_text, git_state, hash_tree, to_jsonable
from lmlab.verdict import RULE, Verdict

NOT_EVALUATED = "not evaluated in this run"
SCHEMA_VERSION = 2  # 2: seeds, per-seed runs, verdict numbers, checks, provenance (all additive to 1)


@dataclass
class Claim:
    id: str
    statement: str
    held: bool | None = None
    evidence: str = NOT_EVALUATED
    verdict: Verdict | None = None  # the engine's verdict, with its numbers
    kind: str = "claim"  # "claim" or "check" (as declared)
    stored: dict | None = None  # the claim as read back from a results.json (verdict numbers included)

    @property
    def status(self) -> str:
        if self.verdict is not None:
            return self.verdict.status
        if self.stored and self.stored.get("status"):
            return self.stored["status"]
        if self.kind == "check":
            return {True: "passed", False: "failed", None: "not run"}[self.held]
        return verdict(self.held)

    def to_json(self) -> dict:
        d = {**(self.stored or {}), "id": self.id, "statement": self.statement, "held": self.held,
             "evidence": self.evidence, "kind": (self.stored or {}).get("kind", self.kind), "status": self.status}
        if self.verdict is not None:
            d.update({k: v for k, v in self.verdict.to_json().items() if k not in ("held", "reason", "status")})
            d["kind"] = self.verdict.kind
        return d


def verdict(held: bool | None) -> str:
    return {True: "held", False: "not held", None: "undecided"}[held]


def provenance(data_dirs: list[Path] = ()) -> dict[str, Any]:
    """What a run's numbers came from: the lmlab commit (and whether the checkout had uncommitted changes), the
    versions of the numeric libraries, and a hash of each real-data folder it read."""
    import transformers  # heavy: for its version only

    commit, dirty = git_state()
    return {"git_commit": commit, "git_dirty": dirty,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "numpy": numpy.__version__},
            "data": {str(d): hash_tree(d) for d in data_dirs}}


def environment(cpu_threads: int | None = None) -> dict[str, Any]:
    """Versions and hardware; `cpu_threads`: the intra-op threads a run used (default: the current setting)."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_threads": cpu_threads or torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


@dataclass
class Report:
    experiment: str
    preset: str
    seed: int
    out_dir: Path
    paper: str = ""
    config: dict = field(default_factory=dict)
    claims: dict[str, Claim] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    runtime_s: float | None = None  # wall clock
    cpu_time_s: float | None = None  # CPU time of the run and its waited-for workers (steadier than wall time)
    error: str | None = None
    device: str = ""
    cpu_threads: int | None = None  # intra-op threads the run used (set by the runner; tiny presets use 1)
    overrides: dict = field(default_factory=dict)  # preset keys set on the command line (`key=value`)
    checks: dict[str, Claim] = field(default_factory=dict)  # sanity checks: reported, never counted as claims
    seeds: list[int] = field(default_factory=list)  # the seed block the engine ran (empty: a one-run experiment)
    runs: list[dict] = field(default_factory=list)  # [{"seed": s, "numbers": {...}}] per finished seed
    provenance: dict = field(default_factory=dict)
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    # ^ when the run started (the report is made then); results.json and the report card give this one

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # ---- filled in by experiments
    def add_claim(self, cid: str, statement: str) -> None:
        self.claims[cid] = Claim(cid, statement)

    def add_check(self, cid: str, statement: str) -> None:
        self.checks[cid] = Claim(cid, statement, kind="check")

    def decide(self, cid: str, held: bool | None, evidence: str) -> None:
        """Record a claim's verdict from this run's numbers; `held=None` needs the reason in `evidence`."""
        if cid not in self.claims:
            raise KeyError(f"unknown claim {cid!r}; declared: {sorted(self.claims)}")
        if not str(evidence).strip():
            raise ValueError(f"claim {cid!r}: evidence must state the numbers and margin (or why undecided)")
        c = self.claims[cid]
        c.held = None if held is None else bool(held)
        c.evidence = evidence

    def verdict(self, cid: str, v: Verdict) -> None:
        """Record the engine's verdict of a declared claim or check."""
        c = self.claims.get(cid) or self.checks.get(cid)
        if c is None:
            raise KeyError(f"unknown claim or check {cid!r}; declared: {sorted(self.claims) + sorted(self.checks)}")
        if (v.kind == "check") != (c.kind == "check"):
            raise ValueError(f"{cid!r} is declared as a {c.kind} but decided as a {v.kind}")
        c.held, c.evidence, c.verdict = v.held, v.reason, v

    def metric(self, key: str, value: Any) -> None:
        self.metrics[key] = to_jsonable(value)

    def text(self, markdown: str) -> None:
        self.sections.append(markdown.strip() + "\n")

    def table(self, rows: list[list[Any]], headers: list[str], title: str | None = None) -> None:
        def fmt(v):
            if isinstance(v, float):
                return f"{v:.4g}"
            return str(v)

        lines = []
        if title:
            lines.append(f"**{title}**\n")
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        for r in rows:
            lines.append("| " + " | ".join(fmt(v) for v in r) + " |")
        self.sections.append("\n".join(lines) + "\n")

    def figure(self, fig, name: str, caption: str) -> Path:
        """Save a matplotlib figure as NAME.png (atomically) and reference it in the report."""
        unlabeled = [
            i
            for i, ax in enumerate(fig.axes)
            if ax.get_visible()
            and ax.axison
            and ax.get_label() != "<colorbar>"
            and not (ax.get_xlabel() and ax.get_ylabel())
        ]
        if unlabeled:
            warnings.warn(
                f"figure {name!r}: axes {unlabeled} lack an x or y label; figures must be readable "
                "without the text (ax.set_xlabel / ax.set_ylabel)",
                stacklevel=2,
            )
        untitled = [i for i, ax in enumerate(fig.axes) if ax.get_visible() and ax.axison
                    and ax.get_label() != "<colorbar>" and not ax.get_title()]
        if untitled:
            warnings.warn(f"figure {name!r}: panels {untitled} have no title (ax.set_title)", stacklevel=2)
        fname = name if name.endswith(".png") else f"{name}.png"
        path = atomic_write_png(self.out_dir / fname, fig)
        self.figures.append((fname, caption))
        return path

    # ---- output
    def to_json(self) -> dict:
        return to_jsonable(
            {
                "experiment": self.experiment,
                "paper": self.paper,
                "preset": self.preset,
                "seed": self.seed,
                "date": self.date,
                "runtime_s": self.runtime_s,
                "cpu_time_s": self.cpu_time_s,
                "device": self.device,
                "environment": environment(self.cpu_threads),
                "config": self.config,
                "overrides": self.overrides,
                "metrics": self.metrics,
                "error": self.error,
                "claims": [c.to_json() for c in self.claims.values()],
                "figures": [f for f, _ in self.figures],
                "schema_version": SCHEMA_VERSION,
                "seeds": self.seeds,
                "rule": RULE if self.seeds else None,
                "checks": [c.to_json() for c in self.checks.values()],
                "runs": self.runs,
                "sections": self.sections,
                "figure_captions": [c for _, c in self.figures],
                "provenance": self.provenance,
            }
        )

    @classmethod
    def from_json(cls, data: dict, out_dir: Path) -> Report:
        """A report read back from its results.json (verdicts as stored; `lmlab decide` recomputes them)."""
        rep = cls(data["experiment"], data["preset"], data["seed"], out_dir, paper=data.get("paper", ""),
                  config=data.get("config") or {}, metrics=data.get("metrics") or {},
                  sections=list(data.get("sections") or []), runtime_s=data.get("runtime_s"),
                  cpu_time_s=data.get("cpu_time_s"), error=data.get("error"), device=data.get("device", ""),
                  cpu_threads=(data.get("environment") or {}).get("cpu_threads"),
                  overrides=data.get("overrides") or {}, seeds=list(data.get("seeds") or []),
                  runs=list(data.get("runs") or []), provenance=data.get("provenance") or {},
                  date=data.get("date") or "")
        for c in data.get("claims", []):
            rep.claims[c["id"]] = Claim(c["id"], c["statement"], c.get("held"), c.get("evidence", NOT_EVALUATED),
                                        stored=c)
        for c in data.get("checks") or []:
            rep.checks[c["id"]] = Claim(c["id"], c["statement"], c.get("held"), c.get("evidence", NOT_EVALUATED),
                                        kind="check", stored=c)
        rep.figures = list(zip(data.get("figures") or [], data.get("figure_captions") or []))
        return rep

    def reproduce_command(self) -> str:
        """The `lmlab run` command line that repeats this run, overrides included."""
        cmd = f"lmlab run {self.experiment} --preset {self.preset} --seed {self.seed}"
        if self.seeds:
            cmd += f" --seeds {len(self.seeds)}"
        return " ".join([cmd] + override_args(self.overrides))

    def to_markdown(self) -> str:
        env = environment(self.cpu_threads)
        n = env["cpu_threads"]
        hw = env.get("gpu") or f"CPU ({n} thread{'' if n == 1 else 's'})"
        lines = [f"# {self.experiment} — preset `{self.preset}`", ""]
        if self.paper:
            lines += [f"Paper: {self.paper}", ""]
        rt = f"{self.runtime_s:.1f} s" if self.runtime_s is not None else "n/a"
        if self.cpu_time_s is not None:
            rt += f" (CPU time {self.cpu_time_s:.1f} s)"
        seeds = (f"seeds {', '.join(map(str, self.seeds))} (--seed {self.seed} --seeds {len(self.seeds)})"
                 if self.seeds else f"seed {self.seed}")
        commit = self.provenance.get("git_commit")
        code = f", lmlab {commit[:10]}{' (uncommitted changes)' if self.provenance.get('git_dirty') else ''}" \
            if commit else ""
        merged = self.provenance.get("seeds_from") or {}
        if merged:  # the merging process's own time and threads say nothing about how the merged seeds ran
            hw = f"this process on {hw}"
            rt = f"{rt} in this process (the merged seeds' own times are on the next line)"
        lines += [
            f"Run: {seeds}, {hw}, torch {env['torch']}{code}, runtime {rt}. "
            f"Reproduce with `{self.reproduce_command()}`.",
            "",
        ]
        if merged:
            times = self.provenance.get("seeds_from_time_s") or {}
            parts = []
            for folder, seeds_there in merged.items():
                wall, cpu, threads = ([*(times.get(folder) or []), None, None, None])[:3]
                took = f"{wall:.0f} s, CPU {cpu:.0f} s" if wall is not None and cpu is not None else "time not recorded"
                took += f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
                label = "seeds" if len(seeds_there) != 1 else "seed"
                parts.append(f"{label} {', '.join(map(str, seeds_there))} ({took})")
            at = self.provenance.get("measured_at")
            by = f" (lmlab {at[:10]})" if at else ""
            lines += [f"Seeds measured by other processes and merged with `--seeds-from`{by}: {'; '.join(parts)}.", ""]
        if self.error:
            lines += ["**The run failed:**", "", "```", self.error.strip(), "```", ""]
        lines += ["## Claims", ""]
        if self.seeds:
            lines += [f"How a claim is decided: {RULE}", ""]
        lines += ["| id | claim | verdict at this scale | evidence |", "|---|---|---|---|"]
        for c in self.claims.values():
            lines.append(f"| {c.id} | {_cell(c.statement)} | **{c.status}** | {_cell(c.evidence)} |")
        lines.append("")
        if self.checks:
            lines += ["## Checks", "", "Sanity checks and re-reads of published data: reported here, never counted "
                      "as claims.", "", "| id | check | outcome | evidence |", "|---|---|---|---|"]
            for c in self.checks.values():
                lines.append(f"| {c.id} | {_cell(c.statement)} | **{c.status}** | {_cell(c.evidence)} |")
            lines.append("")
        if self.sections:
            lines += ["## Results", ""] + self.sections
        for fname, cap in self.figures:
            lines += [f"![{cap}]({fname})", "", f"*{cap}*", ""]
        if self.config:
            lines += [
                "## Configuration",
                "",
                "```yaml",
                yaml.safe_dump(to_jsonable(self.config), sort_keys=False).strip(),
                "```",
                "",
            ]
        return "\n".join(lines)

    def write(self) -> Path:
        atomic_write_json(self.out_dir / "results.json", self.to_json())
        atomic_write_text(self.out_dir / "report.md", self.to_markdown())
        return self.out_dir


def override_args(overrides: dict) -> list[str]:
    """`key=value` command-line words (shell-quoted where needed) that `lmlab run` parses back to the same
    values: booleans as true/false, lists and dicts as YAML flow, text as is."""
    words = []
    for k, v in overrides.items():
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, (list, dict)):
            text = yaml.safe_dump(to_jsonable(v), default_flow_style=True, width=10**6).strip()
        elif v is None:
            text = "null"
        else:
            text = str(v)
        words.append(shlex.quote(f"{k}={text}"))
    return words


def _cell(text: str, limit: int | None = None) -> str:
    """Text safe inside a markdown table cell."""
    t = str(text).replace("|", "\\|").replace("\n", " ")
    return t if limit is None or len(t) <= limit else t[: limit - 3] + "..."


def write_report_card(out_dir: Path, reports: list[Report], preset: str) -> Path:
    """REPORT.md: one row per experiment (status, seeds, runtime, verdict counts) and one row per paper claim and
    per check of every experiment, with links to each report; report_card.json holds the same machine-readably.
    Paper claims and checks are counted apart: a check never counts as a claim."""
    out_dir = Path(out_dir)
    counts = {"held": 0, "not held": 0, "undecided": 0, "not tested": 0}
    check_counts = {"passed": 0, "failed": 0, "not run": 0}
    env = environment()
    lines = [
        f"# lmlab report card — preset `{preset}`",
        "",
        f"Date: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}; "
        f"hardware: {env.get('gpu') or 'CPU'}; torch {env['torch']}. "
        f"Reproduce with `lmlab reproduce --preset {preset}`.",
        "",
        f"How a claim is decided (experiments run over several seeds): {RULE}",
        "",
        "## Experiments",
        "",
        "| experiment | paper | status | seeds | runtime | claims held / not held / undecided / not tested | "
        "checks passed / failed |",
        "|---|---|---|---|---|---|---|",
    ]
    failed, claim_rows, check_rows = [], [], []
    for r in reports:
        rel = r.out_dir.relative_to(out_dir) if r.out_dir.is_relative_to(out_dir) else r.out_dir
        link = f"[{r.experiment}]({rel}/report.md)"
        per = dict.fromkeys(counts, 0)
        per_check = dict.fromkeys(check_counts, 0)
        if r.error:
            failed.append(r.experiment)
        for c in r.claims.values():
            v = c.status
            counts[v] += 1
            per[v] += 1
            claim_rows.append(f"| {link} | {c.id}: {_cell(c.statement)} | **{v}** | {_cell(c.evidence, 300)} |")
        for c in r.checks.values():
            v = c.status
            check_counts[v] += 1
            per_check[v] += 1
            check_rows.append(f"| {link} | {c.id}: {_cell(c.statement)} | **{v}** | {_cell(c.evidence, 300)} |")
        status = f"**failed**: {_cell((r.error or '').splitlines()[0], 120)}" if r.error else "ok"
        rt = f"{r.runtime_s:.1f} s" if r.runtime_s is not None else "n/a"
        if r.cpu_time_s is not None:
            rt += f" (CPU {r.cpu_time_s:.1f} s)"
        seeds = len(r.seeds) if r.seeds else 1
        lines.append(
            f"| {link} | {_cell(r.paper)} | {status} | {seeds} | {rt} | "
            f"{per['held']} / {per['not held']} / {per['undecided']} / {per['not tested']} | "
            f"{per_check['passed']} / {per_check['failed']} |"
        )
    lines += ["", "## Paper claims", "", "| experiment | claim | verdict | evidence |", "|---|---|---|---|"]
    lines += claim_rows
    if check_rows:
        lines += ["", "## Checks (not counted as claims)", "", "| experiment | check | outcome | evidence |",
                  "|---|---|---|---|"] + check_rows
    decided = counts["held"] + counts["not held"]
    lines += [
        "",
        f"Totals: {counts['held']} held, {counts['not held']} not held, {counts['undecided']} undecided, "
        f"{counts['not tested']} not tested ({decided} paper claims decided) across {len(reports)} experiments; "
        f"checks: {check_counts['passed']} passed, {check_counts['failed']} failed.",
    ]
    if failed:
        lines += [
            "",
            f"**Experiments that failed:** {', '.join(failed)} (see their report.md for the error).",
        ]
    if not reports:
        lines += ["", "No experiments are registered yet."]
    path = out_dir / "REPORT.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    atomic_write_json(
        out_dir / "report_card.json",
        {"preset": preset, "counts": counts, "check_counts": check_counts, "failed": failed,
         "experiments": [r.to_json() for r in reports]},
    )
    return path
