"""The `lmlab` command line. Core commands live here; each method adds its own subcommands in
`lmlab/commands/<name>.py` through `register(subparsers)` (discovered automatically)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from lmlab.utils import LmlabError


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`key=value` pairs from the command line. Values stay strings: `experiments.resolve_config` parses
    each one as the type of the preset value it replaces (and names the key when it cannot)."""
    out = {}
    for it in items:
        if "=" not in it:
            raise LmlabError(f"override {it!r} is not key=value (e.g. train.max_steps=50)")
        k, v = it.split("=", 1)
        if not k.strip():
            raise LmlabError(f"override {it!r} has no key before '='")
        out[k.strip()] = v.strip()
    return out


def cmd_list(args) -> int:
    from lmlab import experiments

    reg = experiments.registry()
    if not reg:
        print("No experiments are registered yet.")
        return 0
    for exp in reg.values():
        print(f"{exp.name}  —  {exp.paper}")
        for cid, st in exp.claims.items():
            print(f"    {cid}: {st}")
    return 0


def cmd_run(args) -> int:
    from lmlab import experiments

    overrides = parse_overrides(args.overrides)
    out = Path(args.out) if args.out else Path("reports") / args.preset / args.name
    rep = experiments.run_experiment(args.name, args.preset, out, seed=args.seed, device=args.device,
                                     data=args.data, overrides=overrides)
    print(f"report: {out / 'report.md'}")
    for c in rep.claims.values():
        from lmlab.report import verdict

        print(f"  {c.id}: {verdict(c.held)} — {c.evidence[:160]}")
    if rep.error:
        print(f"error: the experiment failed: {rep.error.splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_reproduce(args) -> int:
    from lmlab import experiments
    from lmlab.report import verdict, write_report_card
    from lmlab.utils import get_device

    out = Path(args.out)
    reg = experiments.registry()
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
        experiments.resolve_config(reg[name], args.preset)
    get_device(args.device)
    reports = []
    try:
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] {name} (preset {args.preset}) ...", flush=True)
            rep = experiments.run_experiment(name, args.preset, out / name, seed=args.seed,
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

    from lmlab import commands

    for mod in pkgutil.iter_modules(commands.__path__):
        m = importlib.import_module(f"lmlab.commands.{mod.name}")
        m.register(sub)
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
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
