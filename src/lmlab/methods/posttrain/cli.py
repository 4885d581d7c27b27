"""`lmlab sft`, `lmlab rl` and `lmlab post-train --pipeline P` on an lmlab checkpoint or a local HF causal LM.

    lmlab rl runs/tiny --step 2000 --task digitsum --difficulty 5 --out runs/tiny-rl
    lmlab post-train path/to/hf_model --pipeline parallel_avg --rl-steps 50 --out out/
    lmlab rl path/to/hf_model --data qa.jsonl --reward numeric --out out/   (your own task: see datatask.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from lmlab.cli import ConfigDefault, resolve_defaults
from lmlab.errors import LmlabError
from lmlab.methods.posttrain import PIPELINES
from lmlab.runlock import LOCK_FILE, RunLock

log = logging.getLogger(__name__)

def _common(p, pipeline_choice: bool) -> None:
    p.add_argument("model", help="lmlab run folder (or step folder) or a local Hugging Face causal LM folder")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of an lmlab run (default: latest)")
    p.add_argument("--tokenizer", default=None, help="lmlab tokenizer.json (default: the run's / the HF model's)")
    p.add_argument("--out", required=True, help="output folder: the post-trained model, metrics.json, history.jsonl, "
                   "metrics.jsonl (written step by step) and tb/ (TensorBoard)")
    p.add_argument("--task", default="digitsum", help="reasoning task: digitsum | wordprob")
    p.add_argument("--data", default=None,
                   help='your own task instead of --task: JSONL of {"prompt", "answer" or "answers", optional '
                   '"solution" (the SFT text) and other fields for a reward function}')
    p.add_argument("--reward", default=None,
                   help="with --data: exact | normalised | numeric[:TOL] | regex | choice (a multiple-choice letter) "
                   "| MODULE:FUNCTION, your FUNCTION(prompt, completion, example) -> float, solved at >= 1 "
                   "(default: exact)")
    p.add_argument("--test", default=None, help="with --data: a JSONL test file in the same format")
    p.add_argument("--test-frac", type=float, default=0.1,
                   help="with --data and no --test: the share of its prompts held out for pass@k")
    p.add_argument("--difficulty", type=int, default=None, help="problem difficulty (digits / steps)")
    p.add_argument("--n-train", type=int, default=500, help="training questions of a built-in --task")
    p.add_argument("--n-test", type=int, default=50, help="held-out test questions of a built-in --task")
    p.add_argument("--eval-samples", type=int, default=16, help="samples per test question for pass@k (n)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the train/test questions, sampling, batches)")
    p.add_argument("--device", default=None, help="cpu | cuda | auto")
    p.add_argument("--save-every", type=int, default=0,
                   help="write a resumable snapshot (OUT/resume.pt) every N steps (Ctrl-C always writes one)")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from OUT/resume.pt (same command and flags as the interrupted run)")
    if pipeline_choice:
        p.add_argument("--pipeline", required=True, choices=PIPELINES, help="the post-training pipeline to run")


GRPO, SFT, POST = "lmlab.rl:GRPOConfig", "lmlab.sft:SFTConfig", "lmlab.methods.posttrain.pipelines:PostTrainConfig"
# flag dest -> config field; the defaults are the dataclasses' own (ConfigDefault), written nowhere else
SFT_FLAGS = {"sft_steps": "steps", "sft_lr": "lr", "sft_batch_size": "batch_size",
             "sft_micro_batch_size": "micro_batch_size"}
RL_FLAGS = {"rl_steps": "steps", "rl_lr": "lr", "prompts_per_step": "prompts_per_step", "group_size": "group_size",
            "temperature": "temperature", "scale_advantages": "scale_advantages", "kl_coef": "kl_coef",
            "log_kl": "log_kl", "ppo_epochs": "ppo_epochs", "minibatches": "minibatches", "clip_eps": "clip_eps",
            "format_reward": "format_reward"}
POST_FLAGS = {"gold_limit": "gold_limit", "mixed_sft_lr": "mixed_sft_lr", "combined_weights": "combined_weights",
              "interleave_block": "interleave_block"}


def _sft_args(p, prefix: str) -> None:
    names = (lambda n: [f"--sft-{n}"] + ([f"--{n}"] if not prefix else []))
    p.add_argument(*names("steps"), dest="sft_steps", type=int, default=ConfigDefault(SFT, "steps"),
                   help="SFT optimizer steps")
    p.add_argument(*names("lr"), dest="sft_lr", type=float, default=ConfigDefault(SFT, "lr"), help="SFT learning rate")
    p.add_argument(*names("batch-size"), dest="sft_batch_size", type=int, default=ConfigDefault(SFT, "batch_size"),
                   help="SFT sequences per optimizer step")
    p.add_argument(*names("micro-batch-size"), dest="sft_micro_batch_size", type=int,
                   default=ConfigDefault(SFT, "micro_batch_size"), help="sequences per backward (None: the batch)")
    p.add_argument("--gold-limit", type=int, default=ConfigDefault(POST, "gold_limit"),
                   help="solutions per question for SFT-Gold")


def _rl_args(p, prefix: str) -> None:
    names = (lambda n: [f"--rl-{n}"] + ([f"--{n}"] if not prefix else []))
    p.add_argument(*names("steps"), dest="rl_steps", type=int, default=ConfigDefault(GRPO, "steps"),
                   help="GRPO steps")
    p.add_argument(*names("lr"), dest="rl_lr", type=float, default=ConfigDefault(GRPO, "lr"), help="GRPO learning rate")
    p.add_argument("--prompts-per-step", type=int, default=ConfigDefault(GRPO, "prompts_per_step"),
                   help="questions per GRPO step")
    p.add_argument("--group-size", type=int, default=ConfigDefault(GRPO, "group_size"),
                   help="sampled completions per question (the GRPO group)")
    p.add_argument("--temperature", type=float, default=ConfigDefault(GRPO, "temperature"),
                   help="sampling temperature of the rollouts")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's longest solution")
    p.add_argument("--scale-advantages", choices=("std", "none"), default=ConfigDefault(GRPO, "scale_advantages"),
                   help="std: GRPO's group-std scaling; none: mean-only (Dr.GRPO)")
    p.add_argument("--kl-coef", type=float, default=ConfigDefault(GRPO, "kl_coef"),
                   help="β of the k3-KL penalty to the RL start")
    p.add_argument("--log-kl", action="store_true", default=ConfigDefault(GRPO, "log_kl"),
                   help="log the KL to the RL start without penalising it")
    p.add_argument("--ppo-epochs", type=int, default=ConfigDefault(GRPO, "ppo_epochs"),
                   help="passes over each rollout batch")
    p.add_argument("--minibatches", type=int, default=ConfigDefault(GRPO, "minibatches"),
                   help="minibatches per pass")
    p.add_argument("--clip-eps", type=float, default=ConfigDefault(GRPO, "clip_eps"), help="PPO ratio clip ε")
    p.add_argument("--format-reward", type=float, default=ConfigDefault(GRPO, "format_reward"),
                   help="reward for a well-formed but wrong trace")


def register(sub) -> None:
    p = sub.add_parser("sft", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="SFT (one gold solution per question; --gold: all) on a checkpoint")
    _common(p, False)
    _sft_args(p, "")
    p.add_argument("--gold", action="store_true", help="SFT-Gold: train on all gold solutions")
    p.set_defaults(func=lambda a: run(a, "sft_gold" if a.gold else "sft"))

    p = sub.add_parser("rl", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="GRPO on a checkpoint with a verifiable reasoning task")
    _common(p, False)
    _rl_args(p, "")
    p.set_defaults(func=lambda a: run(a, "rl"))

    p = sub.add_parser("post-train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="a post-training pipeline (rl|sft|sft_gold|sft_rl|parallel_avg|...)")
    _common(p, True)
    _sft_args(p, "sft")
    _rl_args(p, "rl")
    p.add_argument("--mixed-sft-lr", type=float, default=ConfigDefault(POST, "mixed_sft_lr"),
                   help="SFT-side LR of mixed pipelines (None: --sft-lr)")
    p.add_argument("--combined-weights", type=float, nargs=2, default=ConfigDefault(POST, "combined_weights"),
                   metavar=("W_RL", "W_SFT"), help="loss weights of the combined pipeline")
    p.add_argument("--interleave-block", type=int, default=ConfigDefault(POST, "interleave_block"),
                   help="steps per block of the interleaved pipeline")
    p.set_defaults(func=lambda a: run(a, a.pipeline))


# ---------------------------------------------------------------------------------------------- configuration
def _config(args, pipeline: str, task, difficulty: int):
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.methods.posttrain.pipelines import PostTrainConfig
    from lmlab.rl import GRPOConfig
    from lmlab.sft import SFTConfig

    resolve_defaults(args)
    given = vars(args)

    def fields(flags: dict, **fixed) -> dict:
        return {**{field: given[dest] for dest, field in flags.items() if dest in given}, **fixed}

    max_new = args.max_new_tokens if given.get("max_new_tokens") is not None else \
        task.max_completion_chars(difficulty) + 1
    rl = GRPOConfig(**fields(RL_FLAGS, max_new_tokens=max_new, **({} if "rl_steps" in given else {"steps": 0})))
    sft = SFTConfig(**fields(SFT_FLAGS, **({} if "sft_steps" in given else {"steps": 0})))
    post = fields(POST_FLAGS)
    if "combined_weights" in post:
        post["combined_weights"] = tuple(post["combined_weights"])
    cfg = PostTrainConfig(rl=rl, sft=sft, **post)
    cfg.validate(pipeline)  # LmlabErrors name the flag
    for name, v in (("--n-train", args.n_train), ("--n-test", args.n_test), ("--eval-samples", args.eval_samples)):
        if v < 1:
            raise LmlabError(f"{name} must be >= 1, got {v}")
    return cfg


def _difficulty(args, task) -> int:
    """--difficulty (0 is an error, not the default) checked against the task."""
    import random  # imported when the command runs, like the rest of this handler's imports

    if args.difficulty is None:
        return task.default_difficulty
    try:
        task.sample(random.Random(0), args.difficulty)
    except LmlabError as e:
        raise LmlabError(f"--difficulty {args.difficulty}: {e}") from None
    return args.difficulty


def _task(args):
    """(task, difficulty, train, test) of --task or --data; the built-in splits are drawn later (None here)."""
    from lmlab.methods.posttrain.datatask import load_task  # heavy imports when the command runs
    from lmlab.methods.posttrain.tasks import get_task

    if args.data is None:
        for flag, value in (("--reward", args.reward), ("--test", args.test)):
            if value is not None:
                raise LmlabError(f"{flag} applies to your own task (--data FILE); --task {args.task} has its own "
                                 "verifier and test split")
        task = get_task(args.task)
        return task, _difficulty(args, task), None, None
    if args.difficulty is not None:
        raise LmlabError("--difficulty applies to the built-in --task, not to --data")
    task, train, test = load_task(args.data, args.reward or "exact", args.test, args.test_frac, args.seed)
    return task, task.default_difficulty, train, test


def _data_id(args) -> dict:
    """What a resumed --data run must share with the interrupted one: the files' contents and the reward."""
    import hashlib  # imported when the command runs, like the rest of this handler's imports

    def digest(path):
        return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()

    return {"file": str(args.data), "sha256": digest(args.data), "test": args.test, "test_sha256": digest(args.test),
            "test_frac": None if args.test else args.test_frac, "reward": args.reward or "exact"}


def _check_coverage(codec, task, args) -> None:
    from lmlab.tokenizer import missing_chars  # heavy imports when the command runs

    missing = missing_chars(codec, task.alphabet)
    if missing:
        what = f"--data {args.data}" if args.data else f"the {task.name} task"
        raise LmlabError(
            f"the model's tokenizer cannot encode {len(missing)} character(s) of {what}: "
            f"{' '.join(map(repr, missing))}; use a model whose tokenizer covers them (a Hugging Face model, or an "
            "lmlab run pre-trained with data.tokenizer=bpe or on text containing them)"
            + (", or remove them from the file" if args.data else ""))


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise LmlabError(f"--out {out} is a file, not a folder: pass a new folder")
    if (out / SNAPSHOT).exists():
        raise LmlabError(f"--out {out} holds an interrupted run: continue it with --resume, or pass a new folder")
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise LmlabError(f"--out {out} is not empty: pass a new folder (results are never overwritten)")


def _evaluate(model, codec, task, test, n: int, max_new: int, seed: int) -> dict:
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.methods.posttrain.general import GeneralSuite, evaluate_general
    from lmlab.rl import sample_pass_at_k

    log.info("evaluating pass@k on %d test question(s), %d sample(s) each ...", len(test), n)
    res = sample_pass_at_k(model, codec, task, test, n, ks=sorted({1, n}), max_new_tokens=max_new, seed=seed)
    out = {f"pass@{k}": v for k, v in res["pass"].items()}
    out["format_rate"] = res["format_rate"]
    try:
        out.update(evaluate_general(model, codec, GeneralSuite(), n=64))
    except LmlabError as e:  # the tokenizer cannot write the general suite's text
        out["general"] = f"skipped: {e}"
    return out


def run(args, pipeline: str) -> int:
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise LmlabError(f"--out {args.out} is a file, not a folder: pass a new folder")
    with RunLock(args.out, f"lmlab {pipeline}"):  # one writer per output folder, taken before any check or write
        return _run(args, pipeline)


def _run(args, pipeline: str) -> int:
    # heavy imports (torch) when the command runs, not when the parser is built
    from dataclasses import asdict

    from lmlab.checkpoint import Resume, load_snapshot, save_snapshot, set_rng_state
    from lmlab.loading import load_policy
    from lmlab.methods.posttrain.datatask import require_gold
    from lmlab.methods.posttrain.pipelines import run_pipeline
    from lmlab.methods.posttrain.tasks import make_split
    from lmlab.progress import MetricsLog, Progress
    from lmlab.rl import summarize_history
    from lmlab.train import StopOnSigint, StopRequested, TrainingDiverged
    from lmlab.utils import atomic_write_json, atomic_write_text, get_device, seed_everything

    task, difficulty, train, test = _task(args)
    if train is not None and pipeline != "rl":
        require_gold(train)
    out = Path(args.out)
    if args.save_every < 0:
        raise LmlabError(f"--save-every must be >= 0, got {args.save_every}")
    cfg = _config(args, pipeline, task, difficulty)
    run_id = {"pipeline": pipeline, "model": str(args.model), "step": args.step, "tokenizer": args.tokenizer,
              "task": task.name, "difficulty": difficulty, "n_train": args.n_train, "n_test": args.n_test,
              "eval_samples": args.eval_samples, "seed": args.seed, "config": json.loads(json.dumps(asdict(cfg)))}
    if args.data is not None:
        run_id["data"] = _data_id(args)
    snap = load_snapshot(out / SNAPSHOT, run_id, RESUME_HINT) if args.resume else _check_out(out)
    device = get_device(args.device)
    seed_everything(args.seed)
    model, codec, kind = load_policy(args.model, args.step, args.tokenizer, device)
    _check_coverage(codec, task, args)
    if args.data is None:
        test = make_split(task, args.n_test, difficulty, seed=args.seed + 10_000)
        train = make_split(task, args.n_train, difficulty, seed=args.seed, exclude={p.prompt for p in test})
    max_new = cfg.rl.max_new_tokens
    if snap is None:
        before, entries, train_s = _evaluate(model, codec, task, test, args.eval_samples, max_new, args.seed), [], 0.0
    else:
        model.load_state_dict(snap["model"])
        set_rng_state(snap["rng"])
        before, entries, train_s = snap["before"], snap["entries"], snap["train_s"]
        log.info("resuming %s after %d step(s) (phase %s)", out, len(entries), snap["phase"])
    print(f"before: {json.dumps({k: round(v, 4) for k, v in before.items() if isinstance(v, float)})}", flush=True)
    t0 = time.time() - train_s
    resume = Resume(snap)
    total = (cfg.sft.steps if pipeline in ("sft", "sft_gold", "sft_rl") else 0) + \
        (cfg.rl.steps if pipeline not in ("sft", "sft_gold") else 0)
    # one line per step, as it happens (history.jsonl: the same, written once at the end); a resume keeps its rows
    metrics = MetricsLog(out / "metrics.jsonl", keep=len(entries) if snap else None, tensorboard=out / "tb")
    bar = Progress(total, pipeline, initial=len(entries))
    shown = ("reward", "sft_loss", "loss", "frac_zero_std")

    def on_step(phase, step, entry):
        entries.append({"phase": phase, **entry})
        metrics.log(entries[-1])
        bar.update(1, **{k: entry[k] for k in shown if k in entry})
        log.debug("[%s %d] %s", phase, step, " ".join(f"{k}={v:.4g}" for k, v in entry.items()
                                                      if isinstance(v, float)))
        if stop.requested or (args.save_every and len(entries) % args.save_every == 0):
            out.mkdir(parents=True, exist_ok=True)  # between steps: weights, optimizers and samplers are consistent
            save_snapshot(out / SNAPSHOT, {**resume.snapshot(step + 1), "run": run_id, "before": before,
                                           "entries": entries, "train_s": time.time() - t0})
        stop.stop_here()

    own_data = {"data": run_id["data"], "n_train": len(train), "n_test": len(test)} if args.data else {}

    def write_run(after, **extra):
        out.mkdir(parents=True, exist_ok=True)
        _save(model, codec, kind, out, pipeline, len(entries))
        atomic_write_text(out / "history.jsonl", "".join(json.dumps(e) + "\n" for e in entries))
        atomic_write_json(out / "metrics.json", {
            "pipeline": pipeline, "model": str(args.model), "step": args.step, "task": task.name,
            "difficulty": difficulty, **own_data, **extra, "before": before, "after": after,
            "train_s": time.time() - t0,
            "config": cfg})

    try:
        with StopOnSigint() as stop, bar, metrics:
            run_pipeline(pipeline, model, codec, task, train, cfg, seed=args.seed, callback=on_step, resume=resume)
    except TrainingDiverged as e:  # the failing update was not applied: the model holds the last good step
        write_run(None, diverged=str(e), steps_done=len(entries))
        raise TrainingDiverged(f"post-training diverged after {len(entries)} good step(s) ({e}); the model of the "
                               f"last good step is saved in {out} (metrics.json: diverged)") from None
    except StopRequested:
        write_run(None, interrupted=True, steps_done=len(entries))
        print(f"interrupted after {len(entries)} post-training step(s): the model as it stood then is saved in {out} "
              "(metrics.json: interrupted, no 'after' evaluation); continue exactly with the same command and "
              "--resume", file=sys.stderr)
        return 130
    after = _evaluate(model, codec, task, test, args.eval_samples, max_new, args.seed)
    print(f"after:  {json.dumps({k: round(v, 4) for k, v in after.items() if isinstance(v, float)})}", flush=True)
    rl_logs = [e for e in entries if e["phase"] != "sft"]
    write_run(after, rollout=summarize_history(rl_logs) if rl_logs else None)
    (out / SNAPSHOT).unlink(missing_ok=True)  # the run is complete
    print(f"saved to {out}")
    return 0


SNAPSHOT = "resume.pt"
RESUME_HINT = ("it is written on Ctrl-C and every --save-every steps, and removed when a run completes: start the "
               "run without --resume")


def _save(model, codec, kind: str, out: Path, pipeline: str, steps: int) -> None:
    if kind == "hf":
        model.hf.save_pretrained(out)
        if hasattr(codec, "tok"):
            codec.tok.save_pretrained(out)
        else:
            codec.save(out / "lmlab_tokenizer.json")
        return
    from lmlab import checkpoint  # heavy (torch): imported when the command runs

    checkpoint.save(out, steps, model, extra={"posttrain": pipeline})
    codec.save(out / "tokenizer.json")
