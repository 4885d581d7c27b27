"""RL, SFT, SFT→RL and parallel averaging on intermediate pre-training checkpoints (spec 01).

Pre-train a small GPT on a mixture of general text and verifiable-reasoning documents (worked solutions
in random valid orders, intermediate results corrupted at rate `noise`, a knob for the share of hard
problems), keep in-memory checkpoints at a list of steps, apply the post-training pipelines to each, and
measure pass@k (unbiased, k up to n) on a hard held-out split and general capability (held-out loss on
the general language, copy and recall accuracy). RL-readiness (spec §8) is the base checkpoint's pass@k on a
fixed sample of the RL training prompts.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lmlab.data import GeneratorSource, Mixture, in_background
from lmlab.evaluate import pass_at_k
from lmlab.experiment import RunContext, experiment, presets
from lmlab.methods.posttrain.general import GeneralSuite, evaluate_general
from lmlab.methods.posttrain.pipelines import PostTrainConfig, run_pipeline
from lmlab.methods.posttrain.tasks import get_task, make_split, pretraining_document
from lmlab.model import GPT, IGNORE_INDEX, GPTConfig
from lmlab.rl import GRPOConfig, sample_pass_at_k, summarize_history
from lmlab.sft import SFTConfig
from lmlab.tokenizer import CharTokenizer
from lmlab.train import fit
from lmlab.utils import LmlabError, pad_batch

CLAIMS = {
    "c1_too_early": "RL is effective as soon as the base sometimes samples a verified solution on the RL training "
                    "prompts (test pass@1 rises by a margin at the first such checkpoint); before that it has no "
                    "reward signal (zero reward gives a zero update: reported as a sanity check).",
    "c2_expand_vs_sharpen": "RL from a base checkpoint raises pass@1 and pass@k_max (expansion); RL after SFT "
                            "raises pass@1 but not pass@k_max (sharpening).",
    "c3_general": "General capability is about unchanged by RL and degraded by SFT.",
    "c4_parallel_avg": "Parallel averaging reaches the best pass@k_max while preserving general capability.",
    "c5_data_vs_size": "Targeted pre-training data (more hard problems) raises the RL gain (pass@1 after minus before "
                       "RL) more than doubling model size does.",
}

# margins used to decide the claims (absolute differences of pass rates / nats)
M_RL_GAIN = 0.10  # c1: pass@1 gain that counts as "RL effective"
M_NO_GAIN = 0.02  # c1 sanity check: "ineffective" needs the upper bound (gain + 2·SE) below this
M_PASS1 = 0.05  # c2: pass@1 rise
M_PASSK = 0.03  # c2: pass@k_max rise that counts as expansion; sharpening needs Δ + 2·SE below it
SATURATED = 0.98  # c2/c4: pass@k_max at or above this is saturated and cannot show a difference
M_NLL = 0.02  # c3/c4: nats of general held-out loss
M_PASSK_TIE = 0.02  # c4: pass@k_max within this of the best counts as "best"
M_DATA = 0.05  # c5: RL-gain (pass@1 after - before RL) advantage of the targeted mix over the 2x model

@dataclass
class Config:
    """One run, per seed: pre-train a GPT on a mixture of `task` documents and general text, keep the
    `checkpoints` (pre-training steps), apply each of the `pipelines` to each checkpoint, and measure pass@k on
    held-out questions of `test_difficulty` and general capability; with `data_arm`, also RL after pre-training
    on a mix with more hard problems vs after pre-training a wider model (claim 5). The defaults are the tiny
    preset."""

    # the task and the pre-training mixture
    task: str = "digitsum"
    max_value: int = 99  # task "wordprob" only
    easy: list[int] = field(default_factory=lambda: [2, 3])
    hard: list[int] = field(default_factory=lambda: [4, 5])
    hard_share: float = 0.1
    noise: float = 0.1
    task_weight: float = 0.8
    # the model and pre-training
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    pretrain_docs: int = 64
    pretrain_lr: float = 3e-3
    warmup: int = 30
    pretrain_schedule: str = "constant"
    pretrain_steps: int = 600
    checkpoints: list[int] = field(default_factory=lambda: [200, 600])
    data_process: bool | None = None  # generate pre-training batches in a worker process (None: on CUDA only)
    # the splits and the evaluation
    test_difficulty: int = 4
    train_difficulties: list[int] = field(default_factory=lambda: [3, 4])
    n_train: int = 400
    n_test: int = 32
    eval_samples: int = 32
    general_eval: int = 64
    sample_batch: int = 512
    ready_n: int = 16  # RL-readiness (spec §8): base pass@n on this many (fixed) RL training prompts per checkpoint
    # post-training
    rl_steps: int = 30
    rl_prompts: int = 8
    rl_group: int = 16
    rl_lr: float = 3e-4
    rl_scale: str = "std"
    rl_kl: float = 0.0
    rl_log_kl: bool = False
    sft_steps: int = 40
    sft_batch: int = 32
    sft_lr: float = 1e-3
    gold_limit: int = 16
    mixed_sft_lr: float = 1e-3
    pipelines: list[str] = field(default_factory=lambda: ["rl", "sft", "sft_rl", "parallel_avg"])
    # the pipelines run at checkpoints where RL has no reward (RL-readiness 0); None: all of them
    early_arms: list[str] | None = field(default_factory=lambda: ["rl", "sft"])
    # RL dynamics at the latest checkpoint (0: off)
    dynamics_every: int = 0
    dynamics_samples: int = 16
    # the data-composition arm (claim 5)
    data_arm: bool = False
    targeted_hard_share: float = 0.5
    big_d_model: int = 96
    seeds: int = 1


PRESETS = presets(
    Config,
    # sized for the tiny budget (timing: docs/results/run_history_from_code.md): one seed, an early and a mid
    # checkpoint, four pipelines (two at the early one)
    tiny={},
    # two seeds, four checkpoints, five pipelines, RL dynamics, the data-vs-size arm (timing:
    # docs/results/run_history_from_code.md)
    small={"hard": [4, 5, 6], "pretrain_steps": 1000, "checkpoints": [200, 400, 600, 1000], "n_test": 48,
           "general_eval": 96, "ready_n": 32, "rl_steps": 50, "rl_log_kl": True, "sft_steps": 60,
           "pipelines": ["rl", "sft", "sft_gold", "sft_rl", "parallel_avg"], "early_arms": None,
           "dynamics_every": 10, "data_arm": True, "seeds": 2},
    # the test split is difficulty 7: difficulty 6 saturated pass@64 and difficulty 8 went unsolved in earlier
    # runs. Sized to finish in ~5 min on one H100/H200, with batches made in a worker process; see
    # docs/results/run_history_from_code.md
    gpu={"easy": [3, 4, 5], "hard": [6, 7], "d_model": 128, "n_layers": 4, "pretrain_docs": 128,
         "pretrain_lr": 2e-3, "pretrain_steps": 1200, "checkpoints": [150, 500, 1200], "test_difficulty": 7,
         "train_difficulties": [6, 7], "n_train": 2000, "n_test": 96, "general_eval": 96, "sample_batch": 8192,
         "ready_n": 32, "rl_steps": 40, "rl_prompts": 32, "rl_lr": 1e-4, "rl_log_kl": True, "sft_steps": 60,
         "sft_batch": 128, "sft_lr": 3e-4, "mixed_sft_lr": 3e-4,
         "pipelines": ["rl", "sft", "sft_gold", "sft_rl", "parallel_avg"], "early_arms": None,
         "dynamics_every": 20, "dynamics_samples": 32, "data_arm": True, "big_d_model": 176, "seeds": 2},
)


# ---------------------------------------------------------------------------------------------- pre-training
def _pretrain(cfg: Config, task, suite, tok, hard_share: float, d_model: int, seed: int, dev, log):
    """Pre-train on the mixture; returns (model, {step: state_dict copy}) for cfg.checkpoints."""
    def task_doc(rng: random.Random) -> str:
        diffs = cfg.hard if rng.random() < hard_share else cfg.easy
        return pretraining_document(task, rng, diffs, cfg.noise) + "<eos>"

    def general_doc(rng: random.Random) -> str:
        return suite.document(rng) + "<eos>"

    w = cfg.task_weight
    mix = Mixture([GeneratorSource(task_doc, tok, seed, "task"), GeneratorSource(general_doc, tok, seed, "general")],
                  [w, 1 - w])

    def batches():
        # one document per row, each starting at position 0 (packing several short documents per row lets
        # the tiny model copy digits from the wrong document, and it then fails to learn the task)
        while True:
            ids, mask = pad_batch([mix.next_doc().tolist() for _ in range(cfg.pretrain_docs)], tok.pad_id)
            y = ids[:, 1:].clone()
            y[~mask[:, 1:]] = IGNORE_INDEX
            yield ids[:, :-1], y, mix.composition()  # token shares drawn so far

    def loss(m, batch):
        x, y = (t.to(dev, non_blocking=True) for t in batch)
        return m(x, y)

    # on a GPU, generating 128 documents in Python takes longer than the step itself: a worker process
    # makes them (the same batches in the same order) while the GPU trains
    background = cfg.data_process if cfg.data_process is not None else dev.type == "cuda"
    drawn = {}

    def consumed(stream):  # the mixture lives in the worker: its composition travels with each batch
        for x, y, composition in stream:
            drawn["composition"] = composition
            yield x, y

    stream = consumed(in_background(batches, pin_memory=dev.type == "cuda") if background else batches())

    torch.manual_seed(seed)
    mcfg = GPTConfig(vocab_size=tok.vocab_size, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=d_model,
                     seq_len=128)
    model = GPT(mcfg).to(dev)
    snaps = {}
    wanted = set(cfg.checkpoints)

    def snap(step: int, loss: torch.Tensor) -> None:
        if step + 1 in wanted:
            snaps[step + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    t0 = time.time()
    losses = fit(model, loss, stream, cfg.pretrain_steps, lr=cfg.pretrain_lr,
                 warmup=cfg.warmup, schedule=cfg.pretrain_schedule, callback=snap)
    log(f"pre-trained d={d_model} hard_share={hard_share} seed={seed}: loss {losses[0]:.3f} -> {losses[-1]:.3f} "
        f"in {time.time() - t0:.1f}s; token composition "
        + ", ".join(f"{name} {share:.3f}" for name, share in drawn["composition"].items()))
    return model, snaps


# ---------------------------------------------------------------------------------------------- evaluation
def _evaluate(model, tok, task, test, suite, cfg: Config, seed: int) -> dict:
    n = cfg.eval_samples
    res = sample_pass_at_k(model, tok, task, test, n, ks=(1, n), seed=seed, batch_size=cfg.sample_batch)
    gen = evaluate_general(model, tok, suite, n=cfg.general_eval)
    return {"pass1": res["pass"][1], "passk": res["pass"][n], "curve": res["curve"], "counts": res["counts"],
            "format_rate": res["format_rate"], **gen}


def _readiness(model, tok, task, probe, cfg: Config, seed: int) -> dict:
    """RL-readiness as spec §8 defines it: the base checkpoint's pass@1 / pass@n on (a fixed sample of) the RL
    training prompts, i.e. whether RL can ever see a reward there."""
    n = cfg.eval_samples
    r = sample_pass_at_k(model, tok, task, probe, n, ks=(1, n), seed=seed + 3, batch_size=cfg.sample_batch)
    return {"ready_pass1": r["pass"][1], "ready_passk": r["pass"][n], "ready_counts": r["counts"]}


def _check_config(cfg: Config) -> None:
    """Settings that would otherwise fail only after pre-training (or silently mislabel the latest checkpoint)."""
    cks, steps = cfg.checkpoints, cfg.pretrain_steps
    if not cks or any(isinstance(c, bool) or not isinstance(c, int) for c in cks):
        raise LmlabError(f"checkpoints must be a non-empty list of pre-training steps (integers), got {cks}")
    if any(not 1 <= c <= steps for c in cks):
        raise LmlabError(f"checkpoints {cks} must lie in 1..pretrain_steps ({steps})")
    if any(a >= b for a, b in itertools.pairwise(cks)):
        raise LmlabError(f"checkpoints {cks} must be strictly increasing: the last one is the latest checkpoint "
                         "(RL dynamics and the data-composition arm run there)")
    if cfg.ready_n < 1:
        raise LmlabError(f"ready_n (RL training prompts for RL-readiness) must be >= 1, got {cfg.ready_n}")


def _post_cfg(cfg: Config, task):
    rl = GRPOConfig(steps=cfg.rl_steps, prompts_per_step=cfg.rl_prompts, group_size=cfg.rl_group,
                    lr=cfg.rl_lr, scale_advantages=cfg.rl_scale, kl_coef=cfg.rl_kl,
                    log_kl=cfg.rl_log_kl,
                    max_new_tokens=task.max_completion_chars(max(cfg.hard + [cfg.test_difficulty])) + 1)
    sft = SFTConfig(steps=cfg.sft_steps, batch_size=cfg.sft_batch, lr=cfg.sft_lr)
    return PostTrainConfig(rl=rl, sft=sft, gold_limit=cfg.gold_limit, mixed_sft_lr=cfg.mixed_sft_lr)


def _dynamics_callback(model, tok, task, probe, cfg: Config, seed, store: list):
    """Evaluate pass@1 / pass@k on `probe` every `dynamics_every` RL steps (and once when RL starts)."""
    every, n = cfg.dynamics_every, cfg.dynamics_samples

    def record(step: int) -> None:
        r = sample_pass_at_k(model, tok, task, probe, n, ks=(1, n), seed=seed + 7, batch_size=cfg.sample_batch)
        store.append({"rl_step": step, "pass1": r["pass"][1], "passk": r["pass"][n]})
        model.train()

    def cb(phase, step, log):
        if phase == "sft" and step + 1 == cfg.sft_steps:
            record(0)  # SFT→RL: RL starts from here
        elif phase == "rl" and (step + 1) % every == 0:
            record(step + 1)

    return record, cb


# ---------------------------------------------------------------------------------------------- the experiment
@experiment(name="rl_checkpoints",
            paper="RL Excursions during Pre-Training: Re-examining Policy Optimization for LLM training "
                  "(Bansal, Mohri, Qin et al., 2026)",
            claims=CLAIMS, presets=PRESETS)
def run(ctx: RunContext) -> None:
    """Post-training pipelines applied to intermediate pre-training checkpoints of a tiny GPT."""
    cfg, dev = ctx.cfg, ctx.device
    _check_config(cfg)
    if dev.type == "cpu":
        torch.set_num_threads(1)  # tiny models: intra-op threading only adds overhead (restored by the runner)
    task = get_task(cfg.task, **({"max_value": cfg.max_value} if cfg.task == "wordprob" else {}))
    suite = GeneralSuite()
    tok = CharTokenizer(set(task.alphabet + suite.alphabet))
    test = make_split(task, cfg.n_test, cfg.test_difficulty, seed=10_000)
    train = make_split(task, cfg.n_train, cfg.train_difficulties, seed=1, exclude={p.prompt for p in test})
    ready_probe = train[:cfg.ready_n]  # (all of them if n_train is smaller) a fixed sample of the RL training prompts (RL-readiness, spec §8)
    post_cfg = _post_cfg(cfg, task)
    seeds = [ctx.seed + i for i in range(cfg.seeds)]
    results: dict = {}  # (seed, ckpt, arm) -> eval dict
    rl_logs: list = []
    dynamics: dict = {}
    t_start = time.time()

    def fresh(d_model, state):
        m = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                          d_model=d_model, seq_len=128)).to(dev)
        m.load_state_dict(state)
        return m

    finished: list[int] = []  # seeds whose checkpoints and arms all ran
    with ctx.interruptible():  # e.g. a time limit: the seeds that finished are still reported
        for seed in seeds:
            _, snaps = _pretrain(cfg, task, suite, tok, cfg.hard_share, cfg.d_model, seed, dev, ctx.log)
            for ck in cfg.checkpoints:
                base = fresh(cfg.d_model, snaps[ck])
                results[(seed, ck, "base")] = _evaluate(base, tok, task, test, suite, cfg, seed)
                results[(seed, ck, "base")].update(_readiness(base, tok, task, ready_probe, cfg, seed))
                never = results[(seed, ck, "base")]["ready_passk"] == 0  # no reward on the RL prompts
                for arm in cfg.pipelines:
                    if never and cfg.early_arms is not None and arm not in cfg.early_arms:
                        continue  # budget: RL has no signal here (readiness 0), so mixed arms add little (tiny)
                    model = fresh(cfg.d_model, snaps[ck])
                    cb = None
                    if cfg.dynamics_every and ck == cfg.checkpoints[-1] and arm in ("rl", "sft_rl"):
                        probe = test[: max(8, len(test) // 2)]
                        record, cb = _dynamics_callback(model, tok, task, probe, cfg, seed,
                                                        dynamics.setdefault((seed, arm), []))
                        if arm == "rl":
                            record(0)
                    hist = run_pipeline(arm, model, tok, task, train, post_cfg, seed=seed, callback=cb)
                    rl_hist = [e for k, h in hist.items() if k != "sft" for e in h if "reward" in e]
                    rl_logs += rl_hist
                    results[(seed, ck, arm)] = _evaluate(model, tok, task, test, suite, cfg, seed)
                    if rl_hist:
                        res = results[(seed, ck, arm)]
                        res["rl_frac_zero_std"] = float(np.mean([e["frac_zero_std"] for e in rl_hist]))
                        tail = rl_hist[-5:]  # the end of RL training
                        for key in ("reward", "reward_std", "frac_zero_std", "completion_len", "entropy", "kl"):
                            if key in tail[-1]:
                                res[f"rl_end_{key}"] = float(np.mean([e[key] for e in tail]))
                r = results
                ctx.log(f"seed {seed} ckpt {ck}: readiness {r[(seed, ck, 'base')]['ready_passk']:.2f}; " + ", ".join(
                    f"{a} {r[(seed, ck, a)]['pass1']:.2f}/{r[(seed, ck, a)]['passk']:.2f}"
                    for a in ["base"] + cfg.pipelines if (seed, ck, a) in r) + f"  ({time.time() - t_start:.0f}s)")
            finished.append(seed)
    if ctx.interrupted:
        if not finished:
            raise KeyboardInterrupt  # nothing to report
        ctx.log(f"interrupted; reporting the finished seeds {finished} (of {seeds}) without the data arm")
        results = {k: v for k, v in results.items() if k[0] in finished}
        dynamics = {k: v for k, v in dynamics.items() if k[0] in finished}
        seeds = finished

    data_arm = {}
    if cfg.data_arm and not ctx.interrupted:
        with ctx.interruptible():  # c1-c4 are reported either way, c5 over the seeds the arm finished
            _data_arm(ctx, cfg, task, suite, tok, train, test, post_cfg, seeds, results, fresh, data_arm)
        if ctx.interrupted:
            done = {s for s in seeds if all((s, nm) in data_arm for nm in DATA_ARMS)}
            data_arm = {k: v for k, v in data_arm.items() if k[0] in done}
            ctx.log(f"interrupted in the data arm; reporting it for seeds {sorted(done) or 'none'}")

    _report(ctx, cfg, results, seeds, rl_logs, dynamics, data_arm)


DATA_ARMS = ("base mix", "targeted mix", "base mix, 2x model")


def _data_arm(ctx, cfg: Config, task, suite, tok, train, test, post_cfg, seeds, results, fresh, data_arm) -> None:
    """Claim 5: RL after pre-training with more hard problems vs after pre-training a 2x wider model."""
    dev = ctx.device
    last = cfg.checkpoints[-1]
    for seed in seeds:
        for name, share, d in zip(DATA_ARMS, (cfg.hard_share, cfg.targeted_hard_share, cfg.hard_share),
                                  (cfg.d_model, cfg.d_model, cfg.big_d_model)):
            if name == "base mix" and (seed, last, "rl") in results:
                before, after = results[(seed, last, "base")], results[(seed, last, "rl")]
            else:
                _, sn = _pretrain(cfg, task, suite, tok, share, d, seed, dev, ctx.log)
                model = fresh(d, sn[last])
                before = _evaluate(model, tok, task, test, suite, cfg, seed)
                run_pipeline("rl", model, tok, task, train, post_cfg, seed=seed)
                after = _evaluate(model, tok, task, test, suite, cfg, seed)
            params = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                                   d_model=d, seq_len=128)).num_params()
            data_arm[(seed, name)] = {"before": before, "after": after, "params": params}
        ctx.log(f"data arm seed {seed}: " + ", ".join(
            f"{nm} {data_arm[(seed, nm)]['before']['pass1']:.2f}->{data_arm[(seed, nm)]['after']['pass1']:.2f}"
            for (s_, nm) in data_arm if s_ == seed))


# ---------------------------------------------------------------------------------------------- report
def _mean(results, seeds, ck, arm, key):
    vals = [results[(s, ck, arm)][key] for s in seeds if key in results.get((s, ck, arm), {})]
    return float(np.mean(vals)) if vals else float("nan")


def _se_diff(results, seeds, ck, arm_a, arm_b, k: int, n: int) -> float:
    """Standard error (over test questions, paired) of pass@k(arm_a) - pass@k(arm_b), averaged over seeds."""
    ses = []
    for s in seeds:
        a, b = results.get((s, ck, arm_a)), results.get((s, ck, arm_b))
        if a is None or b is None or "counts" not in a or "counts" not in b:
            continue
        d = [pass_at_k(n, ca, k) - pass_at_k(n, cb, k) for ca, cb in zip(a["counts"], b["counts"])]
        ses.append(float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"))
    return float(np.mean(ses) / np.sqrt(len(ses))) if ses else float("nan")


def _decide(ctx, cfg: Config, results, seeds, data_arm) -> None:
    """Decide the claims. c1 splits checkpoints by RL-readiness (base pass@n on the RL training prompts,
    spec §8). The c2-c4 comparisons average over the seeds whose base sometimes samples a verified test
    solution there (pass@n > 0): pre-training is seed-brittle around the point where the task is first solved.
    A "does not rise" conclusion needs the upper bound (estimate + 2·SE) below its margin, else it is undecided."""
    rep, cks, arms = ctx.report, cfg.checkpoints, cfg.pipelines
    n = cfg.eval_samples
    live = lambda ck: [s for s in seeds if results[(s, ck, "base")]["passk"] > 0]
    m = lambda ck, arm, key: _mean(results, live(ck), ck, arm, key)
    se = lambda ck, a, b, k: _se_diff(results, live(ck), ck, a, b, k, n)
    seeds_note = f"mean over the seeds (of {seeds}) whose base succeeds at each checkpoint"
    active = [ck for ck in cks if live(ck)]  # checkpoints where some seed's base sometimes succeeds

    # c1 ----------------------------------------------------------------------------------------------
    # the never / ready split uses RL-readiness (base pass@n on the RL training prompts, spec §8): that is
    # where RL gets its reward. Where the base never succeeds there, every group has zero reward, every
    # advantage is 0 and (kl 0, no weight decay) the update is exactly zero, so "RL is ineffective there" is a
    # sanity check of the implementation, not a finding; the verdict rests on the gain at the first ready step.
    ready_gains, lines, sanity = [], [], []
    for s in seeds:
        rdy = {ck: results[(s, ck, "base")]["ready_passk"] for ck in cks}
        never = [ck for ck in cks if rdy[ck] == 0]
        ready = next((ck for ck in cks if rdy[ck] > 0), None)
        n_ready = len(results[(s, cks[0], "base")].get("ready_counts", ())) or "?"
        parts = [f"seed {s}: RL-readiness (base pass@{n} on {n_ready} RL training prompts) "
                 + ", ".join(f"step {ck} {v:.3f}" for ck, v in rdy.items())]
        for ck in never:
            if (s, ck, "rl") not in results:
                continue
            b, r = results[(s, ck, "base")], results[(s, ck, "rl")]
            g, e = r["pass1"] - b["pass1"], _se_diff(results, [s], ck, "rl", "base", 1, n)
            same = all(r.get(k) == b.get(k) for k in ("counts", "general_nll", "copy_acc", "recall_acc"))
            no_rise = _no_rise(g, e, M_NO_GAIN)
            sanity.append(same)
            parts.append(f"sanity check at step {ck} (readiness 0): zero-std RL groups "
                         f"{r.get('rl_frac_zero_std', float('nan')):.2f}, rl row identical to base: {same}, "
                         f"test pass@1 gain {g:+.3f} (upper bound {g + 2 * e:+.3f}) -> "
                         + {True: f"ineffective (bound < {M_NO_GAIN})",
                            None: f"ineffectiveness undecided (underpowered: bound >= {M_NO_GAIN})",
                            False: f"RL moved pass@1 by >= {M_NO_GAIN} although the readiness sample saw no "
                                   "success (it found rewards on other training prompts)"}[no_rise])
        if ready is None:
            parts.append("never ready")
        elif not any(ck < ready for ck in never):
            parts.append(f"ready from the first checkpoint ({ready}): no transition to test")
        elif (s, ready, "rl") in results:
            b, r = results[(s, ready, "base")], results[(s, ready, "rl")]
            ready_gains.append(r["pass1"] - b["pass1"])
            parts.append(f"first ready step {ready} (readiness {rdy[ready]:.3f}, test pass@{n} {b['passk']:.3f}): "
                         f"RL test pass@1 {b['pass1']:.3f} -> {r['pass1']:.3f} ({ready_gains[-1]:+.3f} ± "
                         f"{_se_diff(results, [s], ready, 'rl', 'base', 1, n):.3f} SE)")
        lines.append(", ".join(parts))
    if "rl" not in arms:
        rep.decide("c1_too_early", None, "undecided: the preset does not run the rl pipeline")
    elif not ready_gains:
        rep.decide("c1_too_early", None, "undecided: needs a seed whose base never succeeds on the RL training "
                   "prompts at one checkpoint and sometimes does at a later one; " + "; ".join(lines))
    else:
        g = float(np.mean(ready_gains))
        held = g >= M_RL_GAIN
        rep.decide("c1_too_early", held,
                   "; ".join(lines) + f". Verdict: mean RL test pass@1 gain at each seed's first ready checkpoint "
                   f"{g:+.3f} (effective if >= {M_RL_GAIN}) -> {held}. Sanity check (zero reward => zero update), "
                   f"not part of the verdict: rl row identical to base at every readiness-0 checkpoint: "
                   f"{all(sanity) if sanity else 'no such rl run'}")

    # c2 ----------------------------------------------------------------------------------------------
    if not {"rl", "sft", "sft_rl"} <= set(arms):
        rep.decide("c2_expand_vs_sharpen", None, "undecided: needs the rl, sft and sft_rl pipelines")
    else:
        cand = [ck for ck in active if m(ck, "base", "passk") < SATURATED and m(ck, "sft", "passk") < SATURATED]
        if not cand:
            rep.decide("c2_expand_vs_sharpen", None,
                       f"undecided: at every checkpoint where RL has signal, pass@{n} of the base or of SFT is "
                       f"saturated (>= {SATURATED}) or zero, so k_max cannot show expansion vs sharpening")
        else:
            ck = cand[-1]
            d1 = m(ck, "rl", "pass1") - m(ck, "base", "pass1")
            dk = m(ck, "rl", "passk") - m(ck, "base", "passk")
            s1 = m(ck, "sft_rl", "pass1") - m(ck, "sft", "pass1")
            sk = m(ck, "sft_rl", "passk") - m(ck, "sft", "passk")
            se_sk = se(ck, "sft_rl", "sft", n)
            expansion = d1 >= M_PASS1 and dk >= M_PASSK
            held, sharpening = _c2_held(d1, dk, s1, sk, se_sk)
            text = (f"step {ck} (latest checkpoint with unsaturated base and SFT pass@{n}): RL from base "
                    f"Δpass@1 {d1:+.3f} ± {se(ck, 'rl', 'base', 1):.3f}, Δpass@{n} {dk:+.3f} ± "
                    f"{se(ck, 'rl', 'base', n):.3f} -> expansion={expansion} (needs Δpass@1 >= {M_PASS1} and "
                    f"Δpass@{n} >= {M_PASSK}); SFT→RL vs SFT Δpass@1 {s1:+.3f} ± "
                    f"{se(ck, 'sft_rl', 'sft', 1):.3f}, Δpass@{n} {sk:+.3f} ± {se_sk:.3f} (upper bound "
                    f"{sk + 2 * se_sk:+.3f}) -> sharpening={sharpening} (needs Δpass@1 >= {M_PASS1} and the upper "
                    f"bound Δpass@{n} + 2·SE < {M_PASSK}; below the margin with a wider bound is undecided); "
                    f"± = SE over test questions; mean over seeds {live(ck)} whose base succeeds there")
            if held is None:
                text = ("undecided (underpowered): SFT→RL's pass@k_max rise is below the margin but its upper "
                        "bound is not, so 'no rise' cannot be concluded; " + text)
            rep.decide("c2_expand_vs_sharpen", held, text)

    # c3 ----------------------------------------------------------------------------------------------
    sft_arms = [a for a in ("sft", "sft_gold") if a in arms]
    use = active
    dnll = lambda arm: float(np.mean([m(ck, arm, "general_nll") - m(ck, "base", "general_nll")
                                      for ck in use]))
    if "rl" not in arms or not sft_arms:
        rep.decide("c3_general", None, "undecided: needs the rl and sft pipelines")
    elif not active:
        rep.decide("c3_general", None, f"undecided: the base never samples a verified solution (pass@{n} = 0) at "
                   "any checkpoint, so RL never updates and its effect on general capability is not tested")
    else:
        d_rl = dnll("rl")
        d_sft = {a: dnll(a) for a in sft_arms}
        worst = max(d_sft.values())
        held = abs(d_rl) <= M_NLL and worst - d_rl >= M_NLL
        rep.decide("c3_general", held,
                   f"general held-out loss change vs base (nats; mean over checkpoints {use} where the base "
                   f"sometimes succeeds, so RL has signal): RL {d_rl:+.4f}, "
                   + ", ".join(f"{a} {v:+.4f}" for a, v in d_sft.items())
                   + f"; held needs |ΔRL| <= {M_NLL} and ΔSFT - ΔRL >= {M_NLL}; {seeds_note}")

    # c4 ----------------------------------------------------------------------------------------------
    if "parallel_avg" not in arms or "rl" not in arms:
        rep.decide("c4_parallel_avg", None, "undecided: needs the parallel_avg and rl pipelines")
    else:
        others = [a for a in arms if a != "parallel_avg"] + ["base"]
        rows = []
        for ck in active:
            best_other = max(m(ck, a, "passk") for a in others)
            rows.append((ck, m(ck, "parallel_avg", "passk"), best_other))
        best, informative, tied = _c4_best(rows)
        if best is None:
            rep.decide("c4_parallel_avg", None,
                       f"undecided: parallel_avg's pass@{n} is saturated (>= {SATURATED}) or RL has no signal at "
                       "every checkpoint")
        else:
            d_pa, d_rl = dnll("parallel_avg"), dnll("rl")
            keeps = d_pa <= d_rl + M_NLL
            rep.decide("c4_parallel_avg", best and keeps,
                       f"pass@{n} parallel_avg vs best other arm: "
                       + ", ".join(f"step {ck}: {pa:.3f} vs {bo:.3f}" for ck, pa, bo in informative)
                       + (f"; tied-best (parallel_avg itself saturated >= {SATURATED}): "
                          + ", ".join(f"step {ck}: {pa:.3f} vs {bo:.3f}" for ck, pa, bo in tied) if tied else "")
                       + f" (best if within {M_PASSK_TIE}) -> {best}; general loss change parallel_avg "
                       f"{d_pa:+.4f} vs RL {d_rl:+.4f} nats (preserved if <= RL + {M_NLL}) -> {keeps}; {seeds_note}")

    # c5 ----------------------------------------------------------------------------------------------
    if not data_arm:
        rep.decide("c5_data_vs_size", None, "undecided: the run was interrupted before the data-composition arm "
                   "finished a seed" if cfg.data_arm else "undecided: this preset does not run the "
                   "data-composition arm (run --preset small or gpu)")
    else:
        arm_seeds = sorted({s for s, _ in data_arm})  # fewer than `seeds` if the run was interrupted
        tg, bg = "targeted mix", "base mix, 2x model"
        no_signal = all(data_arm[(s, nm)]["before"]["passk"] == 0 and data_arm[(s, nm)]["after"]["pass1"] == 0
                        for s in arm_seeds for nm in (tg, bg))
        if no_signal:
            rep.decide("c5_data_vs_size", None, f"undecided: neither the targeted-mix nor the 2x-model checkpoint "
                       f"ever samples a verified solution (pass@{n} = 0), so RL cannot act on either")
            return
        gain = lambda nm: [data_arm[(s, nm)]["after"]["pass1"] - data_arm[(s, nm)]["before"]["pass1"]
                           for s in arm_seeds]
        after = lambda nm: [data_arm[(s, nm)]["after"]["pass1"] for s in arm_seeds]
        d_gain = float(np.mean(gain(tg)) - np.mean(gain(bg)))
        d_after = float(np.mean(after(tg)) - np.mean(after(bg)))
        held = d_gain >= M_DATA
        r3 = lambda xs: [round(x, 3) for x in xs]
        rep.decide("c5_data_vs_size", held,
                   f"RL gain (test pass@1 after - before RL, hard test split): targeted mix (hard share "
                   f"{cfg.targeted_hard_share}) {np.mean(gain(tg)):+.3f} vs base mix with the 2x model "
                   f"(d={cfg.big_d_model}) {np.mean(gain(bg)):+.3f}: difference {d_gain:+.3f} (held if >= "
                   f"{M_DATA}, spec §11.2 criterion 5) -> {held}. For context (criterion 7, not decided here): "
                   f"post-RL pass@1 targeted {np.mean(after(tg)):.3f} vs 2x {np.mean(after(bg)):.3f}, difference "
                   f"{d_after:+.3f}. Per seed ({arm_seeds}): RL gain targeted {r3(gain(tg))}, 2x {r3(gain(bg))}; "
                   f"after RL targeted {r3(after(tg))}, 2x {r3(after(bg))}")


def _no_rise(est: float, se: float, margin: float) -> bool | None:
    """Is a rise below `margin`? True only when the upper bound est + 2·SE is below it; False when the
    estimate itself reaches it; None (undecided, underpowered) when the estimate is below but the bound is
    not (or the SE is unknown)."""
    if est >= margin:
        return False
    if np.isfinite(se) and est + 2 * se < margin:
        return True
    return None


def _c2_held(d1: float, dk: float, s1: float, sk: float, se_sk: float) -> tuple[bool | None, bool | None]:
    """(claim 2 verdict, sharpening) from RL-vs-base (d1, dk) and SFT→RL-vs-SFT (s1, sk ± se_sk) differences of
    pass@1 / pass@k_max. Sharpening needs pass@1 to rise and pass@k_max *not* to rise with confidence."""
    expansion = d1 >= M_PASS1 and dk >= M_PASSK
    sharpening = False if s1 < M_PASS1 else _no_rise(sk, se_sk, M_PASSK)
    if not expansion or sharpening is False:
        return False, sharpening
    return sharpening, sharpening  # True, or None when underpowered


def _c4_best(rows: list[tuple]) -> tuple[bool | None, list, list]:
    """rows (ckpt, parallel_avg pass@k_max, best other arm's pass@k_max) -> (best?, informative rows, tied rows).
    A row is informative unless parallel_avg itself is saturated (then it is tied-best whatever the others
    reach); another arm's saturation does not drop a row — that is exactly where parallel_avg can lose.
    None when no row is informative."""
    informative = [r for r in rows if r[1] < SATURATED]
    tied = [r for r in rows if r[1] >= SATURATED]
    if not informative:
        return None, informative, tied
    return all(pa >= bo - M_PASSK_TIE for _, pa, bo in informative), informative, tied


def _report(ctx, cfg: Config, results, seeds, rl_logs, dynamics, data_arm) -> None:
    import matplotlib  # heavy: imported only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep, cks = ctx.report, cfg.checkpoints
    arms = ["base"] + cfg.pipelines
    n = cfg.eval_samples
    m = lambda ck, arm, key: _mean(results, seeds, ck, arm, key)
    rep.text(f"Task `{cfg.task}` (test difficulty {cfg.test_difficulty}, {cfg.n_test} held-out questions, "
             f"n = {n} samples each, unbiased pass@k), pre-training mixture {cfg.task_weight:.0%} task documents "
             f"(hard share {cfg.hard_share}, noise {cfg.noise}) / {1 - cfg.task_weight:.0%} general text; "
             f"GPT d={cfg.d_model}, {cfg.n_layers} layers; seeds {seeds}. General capability = held-out loss "
             f"on the general language (nats; floor {next(iter(results.values()))['general_nll_floor']:.3f} = the "
             "loss of the true generating process on such documents, first letter from the start distribution "
             "included), copy and recall accuracy (greedy).")
    rows = []
    for ck in cks:
        for arm in arms:
            vals = [m(ck, arm, k) for k in ("pass1", "passk", "format_rate", "general_nll", "copy_acc", "recall_acc")]
            rows.append([ck, arm] + ["—" if np.isnan(v) else v for v in vals])
            for key in ("pass1", "passk", "general_nll", "copy_acc"):
                rep.metric(f"{key}/step{ck}/{arm}", m(ck, arm, key))
    rep.table(rows, ["ckpt", "arm", "pass@1", f"pass@{n}", "format", "general NLL", "copy", "recall"],
              f"Per checkpoint and pipeline ({len(seeds)} seed(s), mean)")
    keep = ("pass1", "passk", "format_rate", "general_nll", "copy_acc", "recall_acc", "counts", "ready_pass1",
            "ready_passk", "ready_counts")
    rep.metric("runs", {f"seed{s}/step{ck}/{arm}": {k: v for k, v in r.items() if k in keep or k.startswith("rl_")}
                        for (s, ck, arm), r in results.items()})  # per seed: the claims can be re-derived
    # RL-readiness (spec §8): base pass@k on the RL training prompts vs what RL then gains on the test split
    ready_rows = []
    for ck in cks:
        vals = [m(ck, "base", "ready_pass1"), m(ck, "base", "ready_passk"),
                m(ck, "rl", "pass1") - m(ck, "base", "pass1"), m(ck, "rl", "passk") - m(ck, "base", "passk")]
        ready_rows.append([ck] + ["—" if np.isnan(v) else v for v in vals])
        rep.metric(f"ready_passk/step{ck}", vals[1])
        rep.metric(f"ready_pass1/step{ck}", vals[0])
    rep.table(ready_rows, ["ckpt", "readiness pass@1", f"readiness pass@{n}", "RL Δpass@1 (test)",
                           f"RL Δpass@{n} (test)"],
              f"RL-readiness: base pass@1 / pass@{n} on a fixed sample of {min(cfg.ready_n, cfg.n_train)} RL "
              "training prompts "
              f"(difficulties {cfg.train_difficulties}) per checkpoint, and the RL gain on the test split "
              f"({len(seeds)} seed(s), mean)")
    diag = []
    for ck in cks:
        for arm in cfg.pipelines:
            vals = [m(ck, arm, f"rl_end_{k}") for k in ("reward", "reward_std", "frac_zero_std", "completion_len",
                                                         "entropy", "kl")]
            if not np.isnan(vals[0]):
                diag.append([ck, arm] + ["—" if np.isnan(v) else v for v in vals])
    if diag:
        rep.table(diag, ["ckpt", "arm", "reward", "reward std", "zero-std groups", "completion len", "entropy",
                         "KL to RL start (k3)"], "RL diagnostics, mean of the last 5 RL steps")
    if rl_logs:
        summ = summarize_history(rl_logs)
        rep.metric("rollout_tok_s", summ["rollout_tok_s"])
        rep.metric("rollout_s", summ["rollout_s"])
        rep.metric("update_s", summ["update_s"])
        rep.metric("rollout_time_frac", summ["rollout_frac"])
        rep.text(f"RL time split: rollouts {summ['rollout_s']:.1f}s ({summ['rollout_frac']:.0%}), updates "
                 f"{summ['update_s']:.1f}s; rollout throughput {summ['rollout_tok_s']:.0f} tokens/s "
                 f"(KV-cached engine, {ctx.device}).")

    # figures ------------------------------------------------------------------------------------------
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "pass1", "pass@1"), (axes[1], "passk", f"pass@{n}")):
        for arm in arms:
            ax.plot(cks, [m(ck, arm, key) for ck in cks], marker="o", label=arm)
        ax.set_xlabel("pre-training step of the checkpoint")
        ax.set_ylabel(f"{label} on held-out test")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(label)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    rep.figure(fig, "pass_per_checkpoint", f"pass@1 and pass@{n} per checkpoint and pipeline")

    fig, axes = plt.subplots(1, len(cks), figsize=(3.6 * len(cks), 3.4), squeeze=False)
    ks = np.arange(1, n + 1)
    for ax, ck in zip(axes[0], cks):
        for arm in arms:
            curves = [results[(s, ck, arm)]["curve"] for s in seeds if (s, ck, arm) in results]
            if curves:
                ax.plot(ks, np.mean(curves, axis=0), label=arm)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"checkpoint {ck}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    rep.figure(fig, "pass_at_k_curves", "pass@k curves (k = 1..n) per checkpoint and pipeline")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        axes[0].plot(cks, [m(ck, arm, "general_nll") for ck in cks], marker="o", label=arm)
        axes[1].plot(cks, [m(ck, arm, "copy_acc") for ck in cks], marker="o", label=arm)
    axes[0].set_ylabel("general held-out loss (nats)")
    axes[1].set_ylabel("copy accuracy (greedy)")
    axes[0].set_title("general held-out loss (lower is better)")
    axes[1].set_title("copy task accuracy")
    for ax in axes:
        ax.set_xlabel("pre-training step of the checkpoint")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    rep.figure(fig, "general_capability", "general capability per checkpoint and pipeline (lower loss is better)")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label in (("pass1", "Δpass@1"), ("passk", f"Δpass@{n}")):
        pts = [(results[(s, ck, "base")]["ready_passk"],
                results[(s, ck, "rl")][key] - results[(s, ck, "base")][key])
               for s in seeds for ck in cks if (s, ck, "rl") in results and "ready_passk" in results[(s, ck, "base")]]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"RL {label} (test)")
    ax.axhline(0, color="gray", lw=0.5, label="no change")
    ax.set_xlabel(f"RL-readiness: base pass@{n} on RL training prompts")
    ax.set_ylabel("change after RL on the test split")
    ax.set_title("RL gain against RL-readiness")
    ax.legend(fontsize=8)
    fig.tight_layout()
    rep.figure(fig, "rl_readiness", "RL-readiness (spec §8): what the base samples on the RL prompts vs the RL gain")

    if dynamics:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for (seed, arm), pts in sorted(dynamics.items()):
            name = "RL from base" if arm == "rl" else "RL after SFT"
            steps = [p["rl_step"] for p in pts]
            axes[0].plot(steps, [p["pass1"] for p in pts], marker=".", label=f"{name} (seed {seed})")
            axes[1].plot(steps, [p["passk"] for p in pts], marker=".", label=f"{name} (seed {seed})")
        for ax, lab in ((axes[0], "pass@1"), (axes[1], f"pass@{cfg.dynamics_samples}")):
            ax.set_xlabel("RL step")
            ax.set_ylabel(f"{lab} (half of the test split)")
            ax.set_title(f"{lab} during RL, checkpoint {cks[-1]}")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        rep.figure(fig, "rl_dynamics", f"pass@1 / pass@k over RL steps at checkpoint {cks[-1]}")
        rep.metric("dynamics", {f"{arm}/seed{s}": pts for (s, arm), pts in dynamics.items()})

    if data_arm:
        names = ["base mix", "targeted mix", "base mix, 2x model"]
        rows = []
        for nm in names:
            arm_seeds = sorted({s for s, _ in data_arm})
            b = [data_arm[(s, nm)]["before"]["pass1"] for s in arm_seeds]
            a = [data_arm[(s, nm)]["after"]["pass1"] for s in arm_seeds]
            ak = [data_arm[(s, nm)]["after"]["passk"] for s in arm_seeds]
            rows.append([nm, data_arm[(arm_seeds[0], nm)]["params"], float(np.mean(b)), float(np.mean(a)),
                         float(np.mean(a) - np.mean(b)), float(np.mean(ak))])
            rep.metric(f"data_arm/{nm}/post_rl_pass1", float(np.mean(a)))
        rep.table(rows, ["pre-training", "params", "pass@1 base", "pass@1 after RL", "RL gain", f"pass@{n} after RL"],
                  f"Data composition vs model size (checkpoint {cks[-1]}, hard test split)")
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(names))
        ax.bar(x - 0.2, [r[2] for r in rows], 0.4, label="base checkpoint")
        ax.bar(x + 0.2, [r[3] for r in rows], 0.4, label="after RL")
        ax.set_xticks(x, names, fontsize=8)
        ax.set_xlabel("pre-training data / model")
        ax.set_ylabel("pass@1 on the hard test split")
        ax.set_title(f"targeted data vs a 2x model (checkpoint {cks[-1]})")
        ax.legend()
        rep.figure(fig, "data_vs_size", "RL outcome: targeted pre-training data vs doubling model size")

    _decide(ctx, cfg, results, seeds, data_arm)
