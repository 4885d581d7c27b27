"""Experiment registry and runner. Each method's `methods/<name>/experiment.py` (or `experiment_*.py`)
registers its experiments with `@experiment(...)`; modules are discovered by `lmlab.plugins` (no central
list to edit).

On the decision engine, an experiment registers `measure(ctx, seed) -> numbers` (one seed, nothing decided)
with `decide=` (the per-seed numbers -> {claim or check id: Verdict}, a pure function) and optionally
`summarize=` (tables and figures from all seeds). The runner owns the seed loop: `--seed S` with N seeds runs
the S-th block of N seeds, records every seed's numbers in results.json as it goes (a stopped run resumes at the
next unfinished seed), then decides. Experiments not yet on the engine register `run(ctx)` and decide inside.

    @experiment(name="scaling_smoke", paper="...", claims={"wider_lower_loss": "..."},
                presets={"tiny": {...}, "small": {...}, "gpu": {...}})
    def run(ctx: RunContext) -> None:
        ...
        ctx.report.decide("wider_lower_loss", held=..., evidence="...")
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmlab import config, plugins
from lmlab.progress import Progress, echo
from lmlab.report import NOT_EVALUATED, Claim, Report, provenance
from lmlab.utils import DATA_HINT, LmlabError, find_data, get_device, seed_everything, to_jsonable
from lmlab.verdict import Verdict

PRESETS = ("tiny", "small", "gpu")


@dataclass
class Experiment:
    name: str
    paper: str
    claims: dict[str, str]
    presets: dict[str, Any]  # preset name -> the experiment's config dataclass
    fn: Callable  # run(ctx), or measure(ctx, seed) -> numbers when `decide` is set
    needs_data: tuple[str, ...] = ()
    description: str = ""
    checks: dict[str, str] = field(default_factory=dict)  # sanity checks: reported apart, never counted
    decide: Callable[[list[dict], Any], dict[str, Verdict]] | None = None
    summarize: Callable[[RunContext, list[dict], dict[str, Verdict]], None] | None = None


@dataclass
class RunContext:
    experiment: Experiment
    preset: str
    cfg: Any  # the experiment's preset dataclass, overrides applied
    seed: int
    device: torch.device
    out_dir: Path
    data_arg: str | None = None
    report: Report = field(init=False)
    quiet: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # the preset keys set by the caller (parsed)
    interrupted: bool = field(default=False, init=False)

    def __post_init__(self):
        self.report = Report(
            self.experiment.name,
            self.preset,
            self.seed,
            self.out_dir,
            paper=self.experiment.paper,
            config=dataclasses.asdict(self.cfg),
            device=str(self.device),
            overrides=dict(self.overrides),
        )
        for cid, statement in self.experiment.claims.items():
            self.report.add_claim(cid, statement)
        for cid, statement in self.experiment.checks.items():
            self.report.add_check(cid, statement)

    def data(self, sub: str) -> Path | None:
        """Real-data subfolder (e.g. "sumerian") or None; experiments then mark data claims undecided
        with `ctx.no_data_reason(sub)` as evidence."""
        return find_data(sub, self.data_arg)

    @staticmethod
    def no_data_reason(sub: str) -> str:
        return f"undecided: needs real data `{sub}/`; {DATA_HINT}"

    @contextlib.contextmanager
    def interruptible(self):
        """A KeyboardInterrupt (Ctrl-C, `timeout -s INT`) inside this block ends the block, not the run: the
        experiment goes on to report what it finished (check `self.interrupted`), then the runner marks the
        report interrupted and re-raises."""
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted = True

    def log(self, msg: str) -> None:
        if not self.quiet:
            echo(f"[{self.experiment.name}] {msg}")

    def progress(self, iterable, total: int | None = None, desc: str = "", every_s: float = 10.0):
        """Yield from `iterable`, logging `desc i/total` at most every `every_s` seconds and at the end."""
        total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        t0 = last = time.time()
        i = 0
        for i, item in enumerate(iterable, 1):
            yield item
            now = time.time()
            if now - last >= every_s:
                last = now
                of = f"/{total}" if total else ""
                self.log(f"{desc} {i}{of} ({now - t0:.0f}s)")
        self.log(f"{desc} done: {i} in {time.time() - t0:.1f}s")

    def fit_progress(self, desc: str, steps: int, every_s: float = 30.0):
        """A `train.fit` callback that logs `desc step s/steps: loss (elapsed)` at most every `every_s` seconds
        and at the last step. The loss is read back (a device sync) only when a line is logged."""
        t0 = last = time.time()

        def callback(step: int, loss) -> None:
            nonlocal last
            now = time.time()
            if now - last >= every_s or step == steps - 1:
                last = now
                self.log(f"{desc} step {step + 1}/{steps}: loss {float(loss):.4f} ({now - t0:.0f}s)")

        return callback


_REGISTRY: dict[str, Experiment] = {}
_DISCOVERED = False


def experiment(
    name: str,
    paper: str,
    claims: dict[str, str],
    presets: dict[str, Any],
    needs_data: tuple[str, ...] = (),
    description: str = "",
    checks: dict[str, str] | None = None,
    decide: Callable[[list[dict], Any], dict[str, Verdict]] | None = None,
    summarize: Callable | None = None,
):
    missing = [p for p in PRESETS if p not in presets]
    if missing:
        raise ValueError(f"experiment {name!r} lacks presets {missing}")
    untyped = [p for p, cfg in presets.items() if not dataclasses.is_dataclass(cfg)]
    if untyped:
        raise ValueError(f"experiment {name!r}: presets {untyped} are not dataclasses; build them with "
                         "lmlab.experiment.presets(Config, tiny={...}, small={...}, gpu={...})")
    if decide is not None:
        bad = [p for p, cfg in presets.items() if not (isinstance(getattr(cfg, "seeds", None), int) and cfg.seeds >= 1)]
        if bad:
            raise ValueError(f"experiment {name!r} decides over seeds, but presets {bad} lack `seeds: int` >= 1")

    def deco(fn):
        _REGISTRY[name] = Experiment(
            name,
            paper,
            dict(claims),
            dict(presets),
            fn,
            tuple(needs_data),
            description or (fn.__doc__ or "").strip(),
            dict(checks or {}),
            decide,
            summarize,
        )
        return fn

    return deco


def _broken(module: str, error: BaseException) -> Experiment:
    """Stand-in for an experiment module that fails to import: running it records the import error, so
    `lmlab reproduce` still reports it (as failed) and keeps going."""
    detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    package, _, leaf = module.rpartition(".")
    name = package.rsplit(".", 1)[-1] if leaf == "experiment" else leaf.removeprefix("experiment_")

    def fn(ctx: RunContext) -> None:
        raise ImportError(f"experiment module {module} failed to import:\n{detail}")

    return Experiment(
        name,
        "(module failed to import)",
        {},
        {p: {} for p in PRESETS},
        fn,
        description=f"import error: {type(error).__name__}: {error}",
    )


def _discover() -> None:
    global _DISCOVERED
    _DISCOVERED = True
    for module in plugins.part_names("experiment"):
        before = set(_REGISTRY)
        try:
            importlib.import_module(module)
        except Exception as e:  # one broken module must not take the whole registry down
            if not (set(_REGISTRY) - before):
                stand_in = _broken(module, e)
                _REGISTRY[stand_in.name] = stand_in


def registry() -> dict[str, Experiment]:
    if not _DISCOVERED:
        _discover()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Experiment:
    reg = registry()
    if name not in reg:
        raise LmlabError(
            f"unknown experiment {name!r}; available: {', '.join(reg) or '(none)'} (see `lmlab list`)"
        )
    return reg[name]


def presets(config_cls: type, **changes: dict[str, Any]) -> dict[str, Any]:
    """An experiment's presets, typed: each is the dataclass `config_cls` — whose defaults are the base every
    preset shares — with that preset's changes, type-checked like any override.

        PRESETS = presets(Config, tiny={"steps": 200}, small={"steps": 1200}, gpu={"steps": 2000, "batch": 128})
    """
    base = config_cls()
    return {name: config.override(base, ch) for name, ch in changes.items()}


def resolve_config(exp: Experiment, preset: str, overrides: dict[str, Any] | None = None) -> Any:
    """The preset `preset` of `exp` with `overrides` (`key: value`, values as text from the command line or
    already typed) applied through `lmlab.config.override`."""
    if preset not in exp.presets:
        raise LmlabError(
            f"experiment {exp.name!r} has no preset {preset!r}; choose from {', '.join(exp.presets)}"
        )
    try:  # a deep copy: an experiment that changes its config in place must not change the registered preset
        return config.override(copy.deepcopy(exp.presets[preset]), dict(overrides or {}))
    except LmlabError as e:
        raise LmlabError(f"{exp.name} preset {preset}: {e}") from None


def cpu_seconds() -> float:
    """CPU time of this process and of the child processes it has waited for (data workers, the toy process
    of task_competition): the steadier measure of work on a shared machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def seed_block(base: int, n: int) -> list[int]:
    """The seeds of `--seed base` with `n` seeds: the base-th block of n, so blocks never share a seed."""
    return list(range(base * n, base * n + n))


def _read_results(path: Path, flag: str = "", fix: str = "") -> dict:
    """The results.json of an `lmlab run` as a dict, or a clear error that names `path`, the `flag` it came through
    and the `fix`."""
    where = f"{flag}: {path}" if flag else str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmlabError(f"{where} not found: pass a folder written by `lmlab run`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmlabError(f"{where} cannot be read ({e}){fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs") or [], list):
        raise LmlabError(f"{where} is not a report written by lmlab run (a JSON object with a list of 'runs' is "
                         f"expected){fix}")
    return data


def _finished_runs(out: Path, rep: Report) -> dict[int, dict]:
    """The seeds an earlier, stopped run of the same experiment, preset, config and seed block finished in
    `out` (to resume from); an empty dict when there is none. A report of another run there is refused."""
    path = out / "results.json"
    if not path.is_file():
        return {}
    old = _read_results(path, "--resume", ": pass another --out, or run without --resume")
    mine = {"experiment": rep.experiment, "preset": rep.preset, "seeds": rep.seeds, "config": to_jsonable(rep.config)}
    differ = [k for k, v in mine.items() if old.get(k) != v]
    if differ:
        raise LmlabError(f"--resume: {path} is from another run ({', '.join(differ)} differ): pass the same "
                         "experiment, preset, --seed, --seeds and overrides, or another --out")
    was, now = (old.get("provenance") or {}).get("git_commit"), (rep.provenance or {}).get("git_commit")
    if was and now and was != now:  # seeds measured by two versions of the code would be decided together
        raise LmlabError(f"--resume: {path} was measured at commit {was}, this checkout is at {now}: resume from a "
                         f"checkout of {was}, or run without --resume into another --out")
    return {r["seed"]: r for r in old.get("runs") or []}


def _seeds_from(folder: str | Path, rep: Report) -> tuple[dict[int, dict], dict]:
    """The per-seed runs of `folder`'s results.json that belong to this run's seed block, and that run's provenance:
    another process's run of the same experiment, preset, config (but its `seeds`) on the same data from a clean
    checkout — e.g. one seed of the block run alone with `--seed S --seeds 1`, on another core or machine. Which
    commits may meet is `_check_merge`'s business."""
    path = Path(folder) / "results.json"
    other = _read_results(path, "--seeds-from")

    def settings(config):
        return {k: v for k, v in (config or {}).items() if k != "seeds"}

    mine, theirs = rep.provenance or {}, other.get("provenance") or {}
    differ = [k for k, a, b in (("experiment", rep.experiment, other.get("experiment")),
                                ("preset", rep.preset, other.get("preset")),
                                ("config", settings(to_jsonable(rep.config)), settings(other.get("config"))),
                                ("data", mine.get("data"), theirs.get("data"))) if a != b]
    if theirs.get("git_dirty") or not theirs.get("git_commit"):
        differ.append("uncommitted changes or no commit (the code of a dirty checkout cannot be compared)")
    if differ:
        raise LmlabError(f"--seeds-from: {path} is from another run ({'; '.join(differ)} differ): only runs of the "
                         "same experiment, preset, overrides and commit on the same data can be merged")
    runs = {r["seed"]: r for r in other.get("runs") or [] if isinstance(r, dict) and "seed" in r}
    outside = sorted(set(runs) - set(rep.seeds))
    if outside:
        raise LmlabError(f"--seeds-from: {path} holds seeds {outside} outside this run's block {rep.seeds}")
    return runs, {**theirs, "runtime_s": other.get("runtime_s"), "cpu_time_s": other.get("cpu_time_s"),
                  "cpu_threads": (other.get("environment") or {}).get("cpu_threads")}


def _check_merge(rep: Report, merged: dict[str, dict], done: dict[int, dict]) -> None:
    """Seeds merged from other folders must have been measured by one commit, and by this checkout's commit (clean)
    when this process measures any seed itself; when it measures none, it only decides (like `lmlab decide`) and
    the report records the measuring commit beside its own."""
    commits = {p.get("git_commit") for p in merged.values()}
    if len(commits) > 1:
        raise LmlabError(f"--seeds-from: the folders were measured by different commits {sorted(commits)}: merge "
                         "runs of one commit only")
    here = [s for s in rep.seeds if s not in done]
    mine = rep.provenance or {}
    theirs = commits.pop()
    if here and (theirs != mine.get("git_commit") or mine.get("git_dirty")):
        raise LmlabError(f"--seeds-from: this run would measure seeds {here} at commit {mine.get('git_commit')}"
                         f"{' (with uncommitted changes)' if mine.get('git_dirty') else ''} while the merged seeds "
                         f"were measured at {theirs}: run it from a clean checkout of {theirs}")
    if not here:
        rep.provenance["measured_at"] = theirs


def _run_seeds(ctx: RunContext, done: dict[int, dict]) -> None:
    """The engine: measure each seed of the block (skipping those a stopped run finished), then decide."""
    exp, rep = ctx.experiment, ctx.report
    with Progress(len(rep.seeds), f"{exp.name} seeds", unit="seed", every_s=0, enabled=not ctx.quiet) as bar:
        for s in rep.seeds:
            if s in done:
                rep.runs.append(done[s])
                ctx.log(f"seed {s}: finished by the earlier run")
            else:
                seed_everything(s)
                rep.runs.append({"seed": s, "numbers": to_jsonable(exp.fn(ctx, s))})
                rep.write()  # after every seed: a stopped run keeps what it measured and resumes at the next seed
            bar.update()
    numbers = [r["numbers"] for r in rep.runs]
    verdicts = exp.decide(numbers, ctx.cfg)
    for cid, v in verdicts.items():
        rep.verdict(cid, v)
    if exp.summarize is not None:
        exp.summarize(ctx, numbers, verdicts)


def redecide(out_dir: str | Path) -> Report:
    """Recompute the verdicts of a finished engine run from the per-seed numbers in its results.json, with the
    current `decide_*` functions, and rewrite its report (nothing is trained again)."""
    out = Path(out_dir)
    path = out / "results.json"
    data = _read_results(path)
    exp = get(str(data.get("experiment", "?")))
    runs = data.get("runs")
    if exp.decide is None or not runs:
        raise LmlabError(f"{path} holds no per-seed measurements to decide from: {exp.name} is not on the "
                         "decision engine, or the report predates it (schema 1); run it again")
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("numbers"), dict)
                                             for r in runs):
        raise LmlabError(f"{path}: its per-seed 'runs' are malformed; run the experiment again")
    preset = data.get("preset")
    if not isinstance(preset, str) or preset not in exp.presets:
        raise LmlabError(f"{path}: preset {preset!r} is not one of {exp.name}'s ({', '.join(exp.presets)})")
    if not isinstance(data.get("config") or {}, dict):
        raise LmlabError(f"{path}: its 'config' is not a mapping; run the experiment again")
    cfg = config.build(type(exp.presets[preset]), data.get("config") or {})
    rep = Report.from_json({**data, "seed": data.get("seed", 0)}, out)
    rep.claims = {cid: Claim(cid, st) for cid, st in exp.claims.items()}
    rep.checks = {cid: Claim(cid, st, kind="check") for cid, st in exp.checks.items()}
    try:
        verdicts = exp.decide([r["numbers"] for r in rep.runs], cfg)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, StopIteration, ZeroDivisionError) as e:
        # numbers edited by hand, or written by another version
        raise LmlabError(f"{path}: the per-seed numbers do not fit {exp.name}'s decisions "
                         f"({type(e).__name__}: {e}); run the experiment again") from None
    for cid, v in verdicts.items():
        rep.verdict(cid, v)
    rep.write()
    return rep


def run_experiment(
    name: str,
    preset: str = "tiny",
    out_dir: str | Path | None = None,
    seed: int = 0,
    device: str | None = None,
    data: str | None = None,
    overrides: dict[str, Any] | None = None,
    quiet: bool = False,
    raise_errors: bool = False,
    seeds: int | None = None,
    resume: bool = False,
    seeds_from: Sequence[str | Path] = (),
) -> Report:
    """Run one experiment and write its report. Errors inside the experiment are recorded in the
    report (and re-raised when `raise_errors`). On the decision engine, `seeds` (default: the preset's) seeds
    are run from block `seed`; `resume` continues a stopped run in `out_dir` at its next unfinished seed;
    `seeds_from` takes the seeds of the block that runs in other folders finished (see `_seeds_from`)."""
    exp = get(name)
    if seeds is not None:
        if exp.decide is None:
            raise LmlabError(f"{name} is not on the decision engine yet: it runs one seed (drop --seeds)")
        if seeds < 1:
            raise LmlabError(f"--seeds must be >= 1, got {seeds}")
        overrides = {**(overrides or {}), "seeds": seeds}
    if (resume or seeds_from) and exp.decide is None:
        raise LmlabError(f"{name} is not on the decision engine yet: it cannot resume or merge runs (drop --resume "
                         "and --seeds-from)")
    cfg = resolve_config(exp, preset, overrides)
    out = Path(out_dir) if out_dir is not None else Path("reports") / preset / name
    dev = get_device(device)
    ctx = RunContext(exp, preset, cfg, seed, dev, out, data_arg=data, quiet=quiet,
                     overrides={k: getattr(cfg, k) for k in (overrides or {})})
    ctx.report.provenance = provenance([d for d in (find_data(sub, data) for sub in exp.needs_data) if d])
    if exp.decide is not None:
        ctx.report.seeds = seed_block(seed, cfg.seeds)
        done = _finished_runs(out, ctx.report) if resume else {}  # checked before anything is written
        merged = {}
        for folder in seeds_from:
            found, merged[str(folder)] = _seeds_from(folder, ctx.report)
            ctx.report.provenance.setdefault("seeds_from", {})[str(folder)] = sorted(found)
            ctx.report.provenance.setdefault("seeds_from_time_s", {})[str(folder)] = [
                merged[str(folder)][k] for k in ("runtime_s", "cpu_time_s", "cpu_threads")]
            done.update({s: r for s, r in found.items() if s not in done})
        if merged:
            _check_merge(ctx.report, merged, done)
    if preset == "gpu" and dev.type == "cpu" and not quiet:
        print(f"note: {name}'s gpu preset is sized for about 5 minutes on one H100/H200 and runs on the CPU here, "
              "where it takes far longer (hours for some); --preset small is the CPU-sized run", file=sys.stderr,
              flush=True)
    seed_everything(seed)
    threads = torch.get_num_threads()
    if preset == "tiny" and dev.type == "cpu":
        torch.set_num_threads(1)
    t0, c0 = time.time(), cpu_seconds()

    def close(unreached: str) -> None:
        """Write the report: times, threads, and a reason on every claim the run did not reach."""
        ctx.report.runtime_s, ctx.report.cpu_time_s = time.time() - t0, cpu_seconds() - c0
        ctx.report.cpu_threads = torch.get_num_threads()  # as the run left it (experiments may lower it)
        for c in ctx.report.claims.values():
            if c.evidence == NOT_EVALUATED:
                c.held, c.evidence = None, unreached
        ctx.report.write()

    try:
        if exp.decide is not None:
            _run_seeds(ctx, done)
        else:
            exp.fn(ctx)
        if ctx.interrupted:  # the experiment reported what it finished; the run still stops
            raise KeyboardInterrupt
        close("undecided: the experiment finished without deciding this claim")
    except Exception as e:  # recorded in the report; reproduce keeps going
        ctx.report.error = f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}"
        first_line = (str(e).splitlines() or [""])[0]
        close(f"undecided: the run failed ({type(e).__name__}: {first_line})")
        if raise_errors:
            raise
    except KeyboardInterrupt:  # Ctrl-C or `timeout -s INT`: keep what was measured, then stop
        ctx.report.error = f"interrupted after {time.time() - t0:.0f} s (KeyboardInterrupt); claims not yet " \
                           "decided stay undecided"
        close("undecided: the run was interrupted before deciding this claim")
        raise
    finally:
        torch.set_num_threads(threads)
    return ctx.report
