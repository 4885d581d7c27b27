"""The `lmlab` command line. Core commands (list, run, reproduce, pretrain) live here; each method adds its
own subcommands in `lmlab/methods/<name>/cli.py` through `register(subparsers)` (discovered by
`lmlab.plugins`). Building the parser imports no torch: handlers import their heavy modules when they run."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from lmlab import plugins
from lmlab.errors import LmlabError


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
    from lmlab.report import verdict

    overrides = split_overrides(args.overrides)
    out = Path(args.out) if args.out else Path("reports") / args.preset / args.name
    rep = experiment.run_experiment(args.name, args.preset, out, seed=args.seed, device=args.device,
                                     data=args.data, overrides=overrides)
    print(f"report: {out / 'report.md'}")
    for c in rep.claims.values():
        print(f"  {c.id}: {verdict(c.held)} — {c.evidence[:160]}")
    if rep.error:
        print(f"error: the experiment failed: {rep.error.splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_reproduce(args) -> int:
    from lmlab import experiment  # torch: imported when the command runs, not for --help
    from lmlab.report import verdict, write_report_card
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
    reports = []
    try:
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] {name} (preset {args.preset}) ...", flush=True)
            rep = experiment.run_experiment(name, args.preset, out / name, seed=args.seed,
                                             device=args.device, data=args.data)
            summary = ", ".join(f"{c.id}={verdict(c.held)}" for c in rep.claims.values())
            status = "FAILED" if rep.error else f"{rep.runtime_s:.0f}s"
            print(f"      {status}: {summary}", flush=True)
            reports.append(rep)
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


def cmd_pretrain(args) -> int:
    from lmlab.config import load_config  # torch: imported when the command runs, not for --help
    from lmlab.train import pretrain

    cfg = load_config(args.config, args.overrides)  # validated before any heavy work
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    result = pretrain(cfg, out, resume=args.resume)
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
    p = argparse.ArgumentParser(prog="lmlab", description="A laboratory for small-scale language-model science.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("list", help="list experiments and their claims")
    s.set_defaults(func=cmd_list)

    def common(s):
        s.add_argument("--preset", default="tiny", help="tiny | small | gpu")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--device", default=None, help="cpu | cuda | auto (default: auto)")
        s.add_argument("--data", default=None, help="real-data root (default: $LMLAB_DATA)")

    s = sub.add_parser("run", help="run one experiment and write its report")
    s.add_argument("name")
    s.add_argument("--out", default=None)
    s.add_argument("overrides", nargs="*", help="preset overrides key=value")
    common(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("reproduce", help="run every experiment and write a REPORT.md report card")
    s.add_argument("--out", default="reports/reproduce")
    s.add_argument("--only", default=None, help="comma-separated subset of experiments")
    common(s)
    s.set_defaults(func=cmd_reproduce)

    s = sub.add_parser(
        "pretrain",
        help="pretrain an lmlab GPT from a YAML config (checkpoints, resume, DDP or FSDP2 under torchrun)",
        description="Pretrain an lmlab GPT. Launch with `torchrun --nproc_per_node N lmlab ...` "
        "for data-parallel training.",
    )
    s.add_argument("--config", required=True, help="YAML run config (e.g. configs/tiny.yaml)")
    s.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    s.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.n_layers=2 train.max_steps=50")
    s.set_defaults(func=cmd_pretrain)

    for name in plugins.part_names("cli"):
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `lmlab run NAME --preset tiny key=value`: overrides may also follow the options
    if extra and getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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


if __name__ == "__main__":
    sys.exit(main())
