"""`lmlab compose ANCHOR AUGMENT --data PAIRS --out DIR`: train CALM bridges between two frozen checkpoints (lmlab
runs or local HF models).

DIR holds the bridges (`bridges.pt`), `metrics.jsonl`, `tb/` and, after a Ctrl-C, `resume.pt`. The old spellings
(`--anchor/--augment`, `--out FILE.pt`, with `FILE.pt.metrics.jsonl` and `FILE.pt.resume` beside it) still work,
with a deprecation note.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.inputs import read_text
from lmlab.runlock import LOCK_FILE, RunLock

log = logging.getLogger(__name__)
BRIDGES = "bridges.pt"
OLD_OUT_SUFFIXES = (".pt", ".safetensors")  # `--out FILE.pt`: the spelling before --out was a folder


def register(sub) -> None:
    p = sub.add_parser("compose", help="compose a frozen anchor and augmenting model with learned cross-attention",
                       usage="lmlab compose ANCHOR AUGMENT --data PAIRS --out DIR [options]")
    # nargs="?": the deprecated --anchor/--augment may stand in for them (run() checks that both are given)
    p.add_argument("anchor", nargs="?", metavar="ANCHOR",
                   help="anchor: lmlab run/step folder or local HF causal-LM folder")
    p.add_argument("augment", nargs="?", metavar="AUGMENT", help="augmenting model: lmlab run/step folder or HF folder")
    p.add_argument("--anchor", dest="anchor_flag", metavar="ANCHOR", help="deprecated: pass ANCHOR as the first "
                   "argument")
    p.add_argument("--augment", dest="augment_flag", metavar="AUGMENT", help="deprecated: pass AUGMENT as the second "
                   "argument")
    p.add_argument("--data", required=True, help="JSONL of {\"prompt\": ..., \"completion\": ...} (composition set)")
    p.add_argument("--eval", default=None, help="optional JSONL to report greedy exact-match accuracy on")
    p.add_argument("--tokenizer", default=None, help="shared tokenizer file (default: the anchor's)")
    p.add_argument("--connections", default=None, help="explicit pairs AUG:ANCHOR, e.g. 2:0,2:1")
    p.add_argument("--n-connections", type=int, default=None, help="evenly spaced pairs (default: every 4th layer)")
    p.add_argument("--augment-sees", default="sequence", choices=["sequence", "prefix"],
                   help="what the augmenting model reads: the whole sequence (the paper); prefix is an ablation of "
                   "the calm_kv experiment only")
    p.add_argument("--steps", type=int, default=500, help="training steps of the bridges")
    p.add_argument("--batch", type=int, default=16, help="prompt/completion pairs per step")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the bridges")
    p.add_argument("--seed", type=int, default=0, help="random seed (bridge initialisation, batch order)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (default: auto, CUDA when available)")
    p.add_argument("--out", required=True,
                   help=f"output folder: the composition parameters ({BRIDGES}), metrics.jsonl (the loss of every "
                   "step) and tb/ (TensorBoard)")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from OUT/resume.pt (written on Ctrl-C), with the same command")
    p.add_argument("--force-unlock", action="store_true",
                   help="take over an --out locked from another host (only when that run is gone)")
    p.set_defaults(func=run)


def read_pairs(path: str, what: str = "--data") -> list[tuple[str, str]]:
    p = Path(path)
    pairs = []
    for n, line in enumerate(read_text(p, f"{what} file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{p}:{n}: not valid JSON ({e.msg}): expected one JSON object with 'prompt' and "
                             "'completion' a line") from None
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), str)
                and isinstance(row.get("completion"), str)):
            raise LmlabError(f"{p}:{n}: expected a JSON object with string 'prompt' and 'completion', got "
                             f"{line[:80]!r}")
        pairs.append((row["prompt"], row["completion"]))
    return pairs


def _models(args) -> None:
    """ANCHOR AUGMENT from the positional arguments or the deprecated --anchor/--augment."""
    for name in ("anchor", "augment"):
        flag = getattr(args, f"{name}_flag")
        if flag is not None:
            if getattr(args, name) is not None:
                raise LmlabError(f"{name} given twice: pass ANCHOR AUGMENT as the first two arguments, without "
                                 f"--{name}")
            log.warning("--%s is deprecated: pass ANCHOR AUGMENT as the first two arguments", name)
            setattr(args, name, flag)
        delattr(args, f"{name}_flag")  # a resume compares the arguments: either spelling is the same run
    if args.anchor is None or args.augment is None:
        raise LmlabError("compose needs two models: lmlab compose ANCHOR AUGMENT --data PAIRS --out DIR")


def outputs(out: str) -> dict[str, Path]:
    """Where compose writes: inside the folder OUT, or beside the file OUT.pt (the old spelling)."""
    if Path(out).suffix in OLD_OUT_SUFFIXES:
        return {"bridges": Path(out), "metrics": Path(f"{out}.metrics.jsonl"), "tb": Path(f"{out}.tb"),
                "resume": Path(f"{out}.resume")}
    d = Path(out)
    return {"bridges": d / BRIDGES, "metrics": d / "metrics.jsonl", "tb": d / "tb", "resume": d / "resume.pt"}


def run(args) -> int:
    from lmlab.utils import check_lr  # torch: imported when the command runs, not for --help

    _models(args)
    check_lr(args.lr, "--lr")
    if args.steps < 0 or args.batch < 1:
        raise LmlabError(f"need --steps >= 0 and --batch >= 1, got {args.steps} and {args.batch}")
    pairs = read_pairs(args.data)  # before the models load: a bad file fails fast
    ev = read_pairs(args.eval, "--eval") if args.eval else None
    old_file = Path(args.out).suffix in OLD_OUT_SUFFIXES
    if old_file:
        log.warning("--out %s: a file for --out is deprecated; pass a folder (the bridges go to OUT/%s)",
                    args.out, BRIDGES)
        lock = RunLock.for_file(args.out, "lmlab compose", force=args.force_unlock)
    else:
        lock = RunLock(args.out, "lmlab compose", force=args.force_unlock)
    with lock:  # one writer of --out
        if not (old_file or args.resume):
            _check_out(Path(args.out))
        return _run(args, pairs, ev, outputs(args.out))


def _check_out(out: Path) -> None:
    """A fresh composition writes into a new (or empty) folder: results are never overwritten."""
    if (out / "resume.pt").exists():
        raise LmlabError(f"--out {out} holds an interrupted run: continue it with --resume, or pass a new folder")
    if any(p.name != LOCK_FILE for p in out.iterdir()):
        raise LmlabError(f"--out {out} is not empty: pass a new folder (results are never overwritten)")


def _run(args, pairs, ev, paths: dict[str, Path]) -> int:
    # heavy imports (torch) when the command runs, not when the parser is built
    import torch

    from lmlab.checkpoint import load_snapshot, random_state, save_snapshot
    from lmlab.hf import unwrap_hf
    from lmlab.loading import load_policy
    from lmlab.methods.calm.compose import compose, parse_connections
    from lmlab.methods.calm.measure import encode_pairs
    from lmlab.progress import MetricsLog, Progress
    from lmlab.train import StopOnSigint, StopRequested, TrainingDiverged, fit
    from lmlab.utils import get_device, seed_everything

    seed_everything(args.seed)
    dev = get_device(args.device)
    # composition hooks HF decoder layers itself: it takes raw transformers models, not the lmlab adapter
    anchor, codec, _ = load_policy(args.anchor, None, args.tokenizer, dev)
    augment, aug_codec, _ = load_policy(args.augment, None, args.tokenizer, dev)
    anchor, augment = unwrap_hf(anchor), unwrap_hf(augment)
    if args.augment_sees == "prefix":
        raise LmlabError("--augment-sees prefix is an ablation for the calm_kv experiment; use 'sequence' here")
    conns = parse_connections(args.connections) if args.connections else None
    cm = compose(anchor, augment, n_connections=args.n_connections, connections=conns,
                 augment_sees=args.augment_sees, tokenizers=(codec, aug_codec))
    rng = random.Random(args.seed)

    def batches():
        while True:
            yield encode_pairs(codec, [pairs[rng.randrange(len(pairs))] for _ in range(args.batch)], dev)

    opt = torch.optim.AdamW(cm.bridge_parameters(), lr=args.lr)
    snap_path, saved = paths["resume"], paths["bridges"]
    run_id = {k: str(v) for k, v in sorted(vars(args).items())
              if k not in ("resume", "func", "eval", "device", "force_unlock")}
    done = [0]  # steps completed
    if args.resume:
        snap = load_snapshot(snap_path, run_id, "it is written on Ctrl-C: run without --resume")
        cm.bridges.load_state_dict(snap["bridges"])
        opt.load_state_dict(snap["opt"])
        rng.setstate(random_state(snap["rng"]))
        done[0] = snap["step"]
    elif snap_path.exists():
        raise LmlabError(f"{snap_path} holds an interrupted run: continue it with --resume, or choose another --out")

    # a resume keeps the lines of the steps it continues
    metrics = MetricsLog(paths["metrics"], tensorboard=paths["tb"],
                         keep=(lambda r: r.get("step", 0) < done[0]) if args.resume else None,
                         purge_step=done[0] if args.resume else None)
    bar = Progress(args.steps, "compose", initial=done[0])

    def after_step(step, loss):
        done[0] = step + 1
        value = float(loss)  # no extra stall: fit's guard reads the loss back every step already
        metrics.log({"step": step, "loss": value})
        bar.update(1, loss=value)
        stop.stop_here()

    try:
        with StopOnSigint() as stop, bar, metrics:
            losses = fit(cm, lambda m, b: m(b[0], b[1]), batches(), args.steps, lr=args.lr,
                         warmup=min(50, args.steps // 10), optimizer=opt, callback=after_step, start=done[0],
                         guard=True)
    except TrainingDiverged as e:  # the failing update was not applied: the bridges hold the last good step
        cm.save_bridges(saved, str(args.anchor), str(args.augment),
                        extra={"data": str(args.data), "steps": done[0], "diverged": str(e)})
        raise TrainingDiverged(f"composition training diverged after {done[0]} good step(s) ({e}); the bridges of "
                               f"the last good step are saved in {saved} (extra.diverged)") from None
    except StopRequested:
        cm.save_bridges(saved, str(args.anchor), str(args.augment),
                        extra={"data": str(args.data), "steps": done[0], "interrupted": True})
        save_snapshot(snap_path, {"run": run_id, "step": done[0], "bridges": cm.bridges.state_dict(),
                                  "opt": opt.state_dict(), "rng": rng.getstate()})
        print(f"interrupted after {done[0]} of {args.steps} steps: the bridges as they stood are saved in {saved} "
              "(extra.interrupted); continue exactly with the same command and --resume", file=sys.stderr)
        return 130
    cm.save_bridges(saved, str(args.anchor), str(args.augment), extra={"data": str(args.data), "steps": args.steps})
    snap_path.unlink(missing_ok=True)
    if not losses:
        losses = [float("nan")]
    print(f"trained {cm.num_bridge_params():,} bridge parameters on connections {cm.connections}: "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved {saved}")
    if ev:
        prompts = [codec.encode(p, bos=True) for p, _ in ev]
        outs = cm.generate(prompts, max(len(codec.encode(c)) for _, c in ev) + 2, stop_token=codec.eos_id,
                           pad_id=codec.pad_id)
        hits = sum(codec.decode([t for t in o if t != codec.eos_id], skip_special=True).strip() == c.strip()
                   for o, (_, c) in zip(outs, ev))
        print(f"exact match on {args.eval}: {hits}/{len(ev)} = {hits / len(ev):.3f}")
    return 0
