"""The `lmlab` command line. Core commands (list, run, reproduce, pretrain) live here; each method adds its
own subcommands in `lmlab/methods/<name>/cli.py` through `register(subparsers)` (discovered by
`lmlab.plugins`). Building the parser imports no torch: handlers import their heavy modules when they run."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmlab import plugins, progress
from lmlab.errors import LmlabError, write_failure
from lmlab.runlock import RunLock

log = logging.getLogger(__name__)

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default at the end of its help, except where there is nothing to show (None, False) or the
    help already says it in words ("(default: the run's)")."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default.value() if isinstance(action.default, ConfigDefault) else action.default
        if default is None or default is False or "(default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """The parser of `lmlab` and, through `add_subparsers`, of every subcommand: defaults shown in `--help`."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("formatter_class") in (None, argparse.ArgumentDefaultsHelpFormatter):
            kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)


class ConfigDefault:
    """An argparse default that is a field of a config dataclass, so the number is written once (in the
    dataclass) while building the parser stays torch-free: the dataclass's module is imported only when the
    default is needed — `--help` prints it, or `resolve_defaults(args)` reads it when the command runs."""

    def __init__(self, ref: str, field: str):
        self.ref, self.field = ref, field  # ref: "module:DataclassName"

    def value(self):
        module, name = self.ref.split(":")
        spec = getattr(importlib.import_module(module), name).__dataclass_fields__[self.field]
        return spec.default_factory() if callable(spec.default_factory) else spec.default

    def __str__(self) -> str:  # what ArgumentDefaultsHelpFormatter prints
        return repr(self.value())


def resolve_defaults(args) -> None:
    """Replace every `ConfigDefault` left in `args` (flags not given) by its value."""
    for name, value in vars(args).items():
        if isinstance(value, ConfigDefault):
            setattr(args, name, value.value())


def cmd_list(args) -> int:
    from lmlab import experiment  # torch: imported when the command runs, not for --help

    reg = experiment.registry()
    if not reg:
        print("No experiments are registered yet.")
        return 0
    for exp in reg.values():
        print(f"{exp.name}  —  {exp.paper}")
        for cid, st in exp.claims.items():
            print(f"    {cid}: {st}")
    return 0


def cmd_run(args) -> int:
    from lmlab import experiment  # torch: imported when the command runs, not for --help
    from lmlab.config import split_overrides

    overrides = split_overrides(args.overrides)
    out = Path(args.out) if args.out else Path("reports") / args.preset / args.name
    experiment.get(args.name)  # an unknown name is refused before a folder is made
    with RunLock(out, f"lmlab run {args.name}"):
        rep = experiment.run_experiment(args.name, args.preset, out, seed=args.seed, device=args.device,
                                         data=args.data, overrides=overrides, seeds=args.seeds, resume=args.resume,
                                         seeds_from=args.seeds_from, quiet=args.quiet)
    print(f"report: {out / 'report.md'}")
    for c in list(rep.claims.values()) + list(rep.checks.values()):
        print(f"  {c.id}: {c.status} — {c.evidence[:160]}")
    if rep.error:
        print(f"error: the experiment failed: {rep.error.splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_reproduce(args) -> int:
    from lmlab import experiment  # torch: imported when the command runs, not for --help
    from lmlab.report import Report, write_report_card
    from lmlab.utils import get_device

    out = Path(args.out)
    reg = experiment.registry()
    if args.only is not None:
        names = list(dict.fromkeys(n.strip() for n in args.only.split(",") if n.strip()))
        if not names:
            raise LmlabError(f"--only {args.only!r} names no experiment; known: {', '.join(reg)}")
        unknown = [n for n in names if n not in reg]
        if unknown:
            raise LmlabError(
                f"--only: unknown experiment(s) {', '.join(map(repr, unknown))}; known: {', '.join(reg)}"
            )
    else:
        names = list(reg)
    # every name, preset and the device are checked before anything runs (a typo must not cost the
    # report card of the experiments before it)
    for name in names:
        experiment.resolve_config(reg[name], args.preset)
    get_device(args.device)
    if args.jobs < 1:
        raise LmlabError(f"--jobs must be >= 1, got {args.jobs}")
    seeds = {n: args.seeds if reg[n].decide is not None else None for n in names}  # engine experiments only
    reports = []
    with RunLock(out, "lmlab reproduce"):  # one writer of the card folder; released after the card is written

        def done(i: int, rep) -> None:
            summary = ", ".join(f"{c.id}={c.status}" for c in rep.claims.values())
            status = "FAILED" if rep.error else f"{rep.runtime_s:.0f}s"
            print(f"[{i}/{len(names)}] {rep.experiment} {status}: {summary}", flush=True)

        try:
            if args.jobs == 1:
                for i, name in enumerate(names, 1):
                    log.info("[%d/%d] %s (preset %s) ...", i, len(names), name, args.preset)
                    rep = experiment.run_experiment(name, args.preset, out / name, seed=args.seed,
                                                     device=args.device, data=args.data, seeds=seeds[name],
                                                     quiet=args.quiet)
                    done(i, rep)
                    reports.append(rep)
            else:  # independent experiments in parallel processes, each with its own log
                def run_one(name: str):
                    cmd = [sys.executable, "-m", "lmlab.cli", "run", name, "--preset", args.preset, "--seed",
                           str(args.seed), "--out", str(out / name)]
                    cmd += [f"--device={args.device}"] * bool(args.device) + [f"--data={args.data}"] * bool(args.data)
                    cmd += [f"--seeds={seeds[name]}"] * bool(seeds[name])
                    (out / name).mkdir(parents=True, exist_ok=True)
                    with open(out / f"{name}.log", "w") as log:
                        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
                    results = out / name / "results.json"
                    if not results.is_file():
                        raise LmlabError(f"{name} wrote no report: see {out / f'{name}.log'}")
                    return Report.from_json(json.loads(results.read_text()), out / name)

                log.info("running %d experiments, %d at a time (logs: %s/NAME.log) ...", len(names), args.jobs, out)
                with ThreadPoolExecutor(args.jobs) as pool:
                    finished = {}
                    for i, rep in enumerate(pool.map(run_one, names), 1):
                        done(i, rep)
                        finished[rep.experiment] = rep
                reports = [finished[n] for n in names]
        finally:  # also when a run is interrupted or fails outside the experiment: keep what finished
            card = write_report_card(out, reports, args.preset)
            print(f"report card: {card}" + ("" if len(reports) == len(names) else
                                            f" ({len(reports)} of {len(names)} experiments finished)"))
    if not reg:
        print("No experiments are registered yet.")
    failed = [r.experiment for r in reports if r.error]
    if failed:
        print(f"error: {len(failed)} experiment(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_decide(args) -> int:
    from lmlab import experiment  # torch: imported when the command runs, not for --help

    rep = experiment.redecide(args.dir)
    print(f"report: {Path(args.dir) / 'report.md'}")
    for c in list(rep.claims.values()) + list(rep.checks.values()):
        print(f"  {c.id}: {c.status} — {c.evidence[:160]}")
    return 0


def cmd_export(args) -> int:
    from lmlab.hf import export_llama  # torch: imported when the command runs, not for --help
    from lmlab.loading import load_policy

    if Path(args.run, "config.json").is_file():
        raise LmlabError(f"{args.run} is already a Hugging Face model folder: nothing to export")
    model, tokenizer, _ = load_policy(args.run, args.step, args.tokenizer, "cpu")
    out = export_llama(model, args.to, tokenizer)
    print(f"exported {args.run} to {out} (LlamaForCausalLM and its tokenizer; transformers' "
          "AutoModelForCausalLM.from_pretrained loads it)")
    return 0


def cmd_pretrain(args) -> int:
    from lmlab.config import load_config  # torch: imported when the command runs, not for --help
    from lmlab.train import RunFinished, pretrain

    cfg = load_config(args.config, args.overrides)  # validated before any heavy work
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    try:
        result = pretrain(cfg, out, resume=args.resume, force_unlock=args.force_unlock)
    except RunFinished as e:  # nothing to resume: not an error
        print(f"nothing to do: {e}")
        return 0
    if result["interrupted"]:
        return 130
    summary = f"done: step {result['step']}, {result['tokens_seen']:,} tokens"
    if result["loss"] is not None:
        summary += f", loss {result['loss']:.4f}"
    if result["val_loss"] is not None:
        summary += f", val loss {result['val_loss']:.4f}"
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary, not one per process
        print(f"{summary}; checkpoints in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="lmlab", description="A laboratory for small-scale language-model science.")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="debug logs (per-step metrics), transformers' own messages, and full tracebacks of "
                      "internal errors")
    loud.add_argument("-q", "--quiet", action="store_true",
                      help="warnings, errors and results only: no progress bars or progress logs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("list", help="list experiments and their claims")
    s.set_defaults(func=cmd_list)

    def common(s):
        s.add_argument("--preset", default="tiny", help="tiny | small | gpu")
        s.add_argument("--seed", type=int, default=0, help="random seed (with --seeds: which block of seeds)")
        s.add_argument("--device", default=None, help="cpu | cuda | auto (default: auto)")
        s.add_argument("--data", default=None, help="real-data root (default: $LMLAB_DATA)")

    seeds_help = ("seeds per run for experiments on the decision engine (default: the preset's); --seed S runs "
                  "the S-th block of that many seeds")
    s = sub.add_parser("run", help="run one experiment and write its report")
    s.add_argument("name", help="the experiment (see `lmlab list`)")
    s.add_argument("--out", default=None, help="report folder (default: reports/PRESET/NAME)")
    s.add_argument("overrides", nargs="*", help="preset overrides key=value")
    common(s)
    s.add_argument("--seeds", type=int, default=None, help=seeds_help)
    s.add_argument("--resume", action="store_true",
                   help="continue a stopped run in --out at its next unfinished seed (same settings)")
    s.add_argument("--seeds-from", action="append", default=[], metavar="DIR",
                   help="take the seeds of this run's block that another run finished in DIR (same experiment, "
                        "preset, overrides, commit and data; e.g. `--seed 2 --seeds 1` run in another process); "
                        "repeatable")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("reproduce", help="run every experiment and write a REPORT.md report card")
    s.add_argument("--out", default="reports/reproduce", help="report folder (default: reports/reproduce)")
    s.add_argument("--only", default=None, help="comma-separated subset of experiments")
    s.add_argument("--jobs", type=int, default=1, help="experiments run at once, each in its own process")
    common(s)
    s.add_argument("--seeds", type=int, default=None, help=seeds_help)
    s.set_defaults(func=cmd_reproduce)

    s = sub.add_parser("export", help="write an lmlab run as a Hugging Face Llama folder with its tokenizer")
    s.add_argument("run", help="an lmlab run folder (or one of its step folders)")
    s.add_argument("--to", required=True, help="the Hugging Face folder to write")
    s.add_argument("--step", type=int, default=None, help="checkpoint step (None: the latest)")
    s.add_argument("--tokenizer", default=None, help="lmlab tokenizer.json (None: the run's)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("decide", help="recompute the verdicts of a finished run from its per-seed numbers")
    s.add_argument("dir", help="a report folder written by `lmlab run` (holding results.json)")
    s.set_defaults(func=cmd_decide)

    s = sub.add_parser(
        "pretrain",
        help="pretrain an lmlab GPT from a YAML config (checkpoints, resume, DDP or FSDP2 under torchrun)",
        description="Pretrain an lmlab GPT. Launch with `torchrun --nproc_per_node N lmlab ...` "
        "for data-parallel training.",
    )
    s.add_argument("--config", required=True, help="YAML run config (e.g. `tiny`, a packaged config, or configs/my.yaml)")
    s.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    s.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    s.add_argument("--force-unlock", action="store_true",
                   help="take over a run folder locked from another host (only when that run is gone)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.n_layers=2 train.max_steps=50")
    s.set_defaults(func=cmd_pretrain)

    for name in plugins.part_names("cli"):
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    for flag in [e for e in extra if e in ("-v", "--verbose", "-q", "--quiet")]:  # also after the subcommand
        extra.remove(flag)
        setattr(args, "verbose" if flag in ("-v", "--verbose") else "quiet", True)
    if args.verbose and args.quiet:
        parser.error("argument -q/--quiet: not allowed with argument -v/--verbose")
    # `lmlab run NAME --preset tiny key=value`: overrides may also follow the options
    if extra and getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    progress.setup(progress.VERBOSE if args.verbose else progress.QUIET if args.quiet else progress.NORMAL)
    try:
        return int(args.func(args) or 0)
    except LmlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lmlab list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug, not the user's input: one line (the traceback with -v), and exit 1
        filename = getattr(e, "filename", None)
        failed_write = write_failure(e, filename) if filename else None  # a full disk where lmlab named no path
        if failed_write is not None:
            print(f"error: {failed_write}", file=sys.stderr)
            return 2
        if args.verbose:
            raise
        first = (str(e).splitlines() or [""])[0]
        print(f"internal error: {type(e).__name__}: {first} (rerun with -v for the traceback; please report it)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
