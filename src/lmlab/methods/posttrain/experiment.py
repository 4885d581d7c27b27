"""RL, SFT, SFT→RL and parallel averaging on intermediate pre-training checkpoints (spec 01), on the decision engine.

`measure(ctx, seed)` runs one seed and returns numbers only: pre-train a small GPT on a mixture of general text and
verifiable-reasoning documents (worked solutions in random valid orders, intermediate results corrupted at rate
`noise`; the test and validation questions never appear in them), keep checkpoints on a grid that is dense around
the step where the base starts to solve the task, apply each post-training pipeline to each checkpoint (RL runs
until its training reward is flat, with a step cap), and measure pass@k (unbiased, k up to n, sampled at
`eval_temperature`) on a hard held-out split, general capability (held-out loss on a general language, and the
loss of in-context copy and recall answers) and RL-readiness (the base's pass@n on the RL training prompts). The
parallel-averaging SFT learning rate is chosen per seed on a validation split from `mixed_sft_lrs`. With
`data_arm`, RL also runs after pre-training on a mix with more hard problems and after pre-training a wider model.
The pure `decide_*` functions in `decide.py` turn the per-seed numbers into verdicts; `summary.py` writes the
tables and figures.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lmlab.data import GeneratorSource, Mixture, in_background
from lmlab.experiment import RunContext, experiment, presets
from lmlab.methods.posttrain.decide import CHECKS, CLAIMS, M_NLL, decide
from lmlab.methods.posttrain.general import GeneralSuite, evaluate_general
from lmlab.methods.posttrain.pipelines import PostTrainConfig, run_pipeline
from lmlab.methods.posttrain.summary import summarize
from lmlab.methods.posttrain.tasks import get_task, make_split
from lmlab.model import GPT, IGNORE_INDEX, GPTConfig
from lmlab.rl import GRPOConfig, sample_pass_at_k
from lmlab.sft import SFTConfig
from lmlab.tokenizer import CharTokenizer
from lmlab.train import fit
from lmlab.utils import LmlabError, pad_batch, tiny_threads


@dataclass
class Config:
    """One seed: pre-train a GPT on a mixture of `task` documents and general text, keep the `checkpoints`
    (pre-training steps), apply each of the `pipelines` to each checkpoint, and measure pass@k on `n_test` held-out
    questions of `test_difficulty` and general capability; with `data_arm`, also RL after pre-training on a mix
    with more hard problems and after pre-training a wider model (claim 5). The defaults are the tiny preset."""

    seeds: int = 1
    # the task and the pre-training mixture
    task: str = "digitsum"
    max_value: int = 99  # task "wordprob" only
    easy: list[int] = field(default_factory=lambda: [2, 3])
    hard: list[int] = field(default_factory=lambda: [4, 5])
    hard_share: float = 0.1
    noise: float = 0.1
    task_weight: float = 0.75
    # shares of Markov text, copy and recall among the general documents: copy at 0.2 (0.4) of 20 % (25 %) stayed
    # unlearned at step 600 (copy loss at or above uniform guessing), so c3's second measure carried no signal
    general_weights: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.2])
    # the model and pre-training
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    pretrain_docs: int = 64
    pretrain_lr: float = 3e-3
    warmup: int = 30
    pretrain_schedule: str = "constant"
    pretrain_steps: int = 600
    checkpoints: list[int] = field(default_factory=lambda: [200, 400, 600])
    data_process: bool | None = None  # generate pre-training batches in a worker process (None: on CUDA only)
    # the splits and the evaluation
    test_difficulty: int = 4
    train_difficulties: list[int] = field(default_factory=lambda: [3, 4])
    n_train: int = 400
    n_test: int = 32
    n_val: int = 24  # validation questions (test difficulty) that choose the parallel-averaging SFT LR
    eval_samples: int = 32
    val_samples: int = 16
    eval_temperature: float = 0.6  # spec §8: the paper samples at 0.6
    general_eval: int = 64
    sample_batch: int = 512
    ready_n: int = 16  # RL-readiness (spec §8): base pass@n on this many (fixed) RL training prompts per checkpoint
    # post-training; RL stops when its mean training reward over the last `plateau_window` steps rose by less than
    # `plateau_rise` over the window before (not before `rl_min_steps`: a sparse reward stays flat before it takes
    # off), or at `rl_steps`
    rl_steps: int = 60
    rl_min_steps: int = 0
    plateau_window: int = 8
    plateau_rise: float = 0.02
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
    mixed_sft_lrs: list[float] = field(default_factory=lambda: [1e-3])  # the grid the validation split chooses from
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


PRESETS = presets(
    Config,
    # one seed, three checkpoints, four pipelines (two where the base never succeeds on the RL prompts), one mixed
    # SFT LR (not swept: c4 stays undecided at tiny); timing: docs/results/tiny/rl_checkpoints
    tiny={},
    # three seeds; a grid dense where the base starts to solve the RL prompts (readiness 0 -> 0.8 between steps 400
    # and 600 in the previous small runs); 200 test questions of difficulty 5 (difficulty 4 saturated pass@32
    # after SFT); the parallel-averaging SFT LR chosen from 0.1x, 1x and ~3x the RL LR (the paper swept 0.1x, 1x
    # and 40x); timing: docs/results/small/rl_checkpoints
    small={"seeds": 3, "hard": [4, 5, 6], "pretrain_steps": 900, "checkpoints": [300, 450, 525, 600, 900],
           "test_difficulty": 5, "train_difficulties": [3, 4, 5], "n_test": 200, "n_val": 32, "general_eval": 96,
           "ready_n": 32, "rl_steps": 80, "rl_min_steps": 40, "plateau_window": 10, "rl_log_kl": True,
           "sft_steps": 60, "mixed_sft_lrs": [3e-5, 3e-4, 1e-3],
           "pipelines": ["rl", "sft", "sft_gold", "sft_rl", "parallel_avg"], "dynamics_every": 20,
           "data_arm": True},
    # the test split is difficulty 7 (difficulty 6 saturated pass@64 and 8 went unsolved in earlier runs), 256
    # questions at n = 128; four seeds; sized for one H100/H200 (not yet run at this version)
    gpu={"seeds": 4, "easy": [3, 4, 5], "hard": [6, 7], "d_model": 128, "n_layers": 4, "pretrain_docs": 128,
         "pretrain_lr": 2e-3, "pretrain_steps": 1200, "checkpoints": [150, 300, 400, 500, 700, 1200],
         "test_difficulty": 7, "train_difficulties": [6, 7], "n_train": 2000, "n_test": 256, "n_val": 96,
         "eval_samples": 128, "val_samples": 32, "general_eval": 128, "sample_batch": 8192, "ready_n": 64,
         "rl_steps": 200, "rl_min_steps": 40, "plateau_window": 10, "rl_prompts": 32, "rl_lr": 1e-4,
         "rl_log_kl": True, "sft_steps": 60, "sft_batch": 128, "sft_lr": 3e-4, "mixed_sft_lrs": [1e-5, 1e-4, 3e-4],
         "pipelines": ["rl", "sft", "sft_gold", "sft_rl", "parallel_avg"], "dynamics_every": 20,
         "dynamics_samples": 32, "data_arm": True, "big_d_model": 176},
)
TEST_SEED, VAL_SEED, TRAIN_SEED = 10_000, 20_000, 1  # the split draws (fixed across seeds)


# ---------------------------------------------------------------------------------------------- pre-training
def task_document(task, rng: random.Random, difficulties: list[int], noise: float, exclude: frozenset) -> str:
    """A pre-training document of `task` (prompt + a random worked solution, steps corrupted at rate `noise`)
    whose question is not in `exclude` (the test and validation prompts)."""
    while True:
        p = task.sample(rng, rng.choice(difficulties))
        if p.prompt not in exclude:
            return p.prompt + task.sample_solution(p, rng, noise)


def _pretrain(cfg: Config, task, suite, tok, hard_share: float, d_model: int, seed: int, dev, log,
              exclude: frozenset = frozenset()):
    """Pre-train on the mixture; returns (model, {step: state_dict copy}) for cfg.checkpoints."""
    def task_doc(rng: random.Random) -> str:
        diffs = cfg.hard if rng.random() < hard_share else cfg.easy
        return task_document(task, rng, diffs, cfg.noise, exclude) + "<eos>"

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

    # on a GPU, generating the documents in Python takes longer than the step itself: a worker process makes them
    # (the same batches in the same order) while the GPU trains
    background = cfg.data_process if cfg.data_process is not None else dev.type == "cuda"
    drawn = {}

    def consumed(stream):  # the mixture lives in the worker: its composition travels with each batch
        for x, y, composition in stream:
            drawn["composition"] = composition
            yield x, y

    stream = consumed(in_background(batches, pin_memory=dev.type == "cuda") if background else batches())
    torch.manual_seed(seed)
    model = GPT(_gpt_config(cfg, tok, d_model)).to(dev)
    snaps, wanted = {}, set(cfg.checkpoints)

    def snap(step: int, loss: torch.Tensor) -> None:
        if step + 1 in wanted:
            snaps[step + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    t0 = time.time()
    losses = fit(model, loss, stream, cfg.pretrain_steps, lr=cfg.pretrain_lr, warmup=cfg.warmup,
                 schedule=cfg.pretrain_schedule, callback=snap)
    log(f"pre-trained d={d_model} hard_share={hard_share} seed={seed}: loss {losses[0]:.3f} -> {losses[-1]:.3f} "
        f"in {time.time() - t0:.1f}s; token composition "
        + ", ".join(f"{name} {share:.3f}" for name, share in drawn["composition"].items()))
    return model, snaps


def _gpt_config(cfg: Config, tok, d_model: int) -> GPTConfig:
    return GPTConfig(vocab_size=tok.vocab_size, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=d_model,
                     seq_len=128)


# ---------------------------------------------------------------------------------------------- evaluation
def _pass(model, setup, problems, n: int, seed: int) -> dict:
    cfg = setup.cfg
    r = sample_pass_at_k(model, setup.tok, setup.task, problems, n, ks=(1, n), temperature=cfg.eval_temperature,
                         seed=seed, batch_size=cfg.sample_batch)
    return {"pass1": r["pass"][1], "passk": r["pass"][n], "counts": r["counts"], "curve": r["curve"],
            "format_rate": r["format_rate"]}


def _evaluate(model, setup, seed: int) -> dict:
    """pass@1, pass@n (and the curve, per-question counts) on the test split, and general capability."""
    gen = evaluate_general(model, setup.tok, setup.suite, n=setup.cfg.general_eval)
    return {**_pass(model, setup, setup.test, setup.cfg.eval_samples, seed), **gen}


def _validate(model, setup, seed: int) -> dict:
    """pass@k on the validation split and general loss on documents the test evaluation never sees."""
    gen = evaluate_general(model, setup.tok, setup.suite, n=setup.cfg.general_eval, seed=77_777)
    r = _pass(model, setup, setup.val, setup.cfg.val_samples, seed + 11)
    return {"pass1": r["pass1"], "passk": r["passk"], "general_nll": gen["general_nll"]}


def _readiness(model, setup, seed: int) -> dict:
    """RL-readiness as spec §8 defines it: the base checkpoint's pass@1 / pass@n on (a fixed sample of) the RL
    training prompts, i.e. whether RL can ever see a reward there."""
    r = _pass(model, setup, setup.ready_probe, setup.cfg.eval_samples, seed + 3)
    return {"pass1": r["pass1"], "passk": r["passk"], "counts": r["counts"]}


# ---------------------------------------------------------------------------------------------- post-training
def plateau(window: int, rise: float, min_steps: int = 0):
    """An RL stop rule: true once, after at least `min_steps` steps, the mean training reward of the last `window`
    steps is less than `rise` above that of the `window` steps before (a flat reward, also one that stays 0 or 1)."""
    def flat(logs: list[dict]) -> bool:
        if len(logs) < max(2 * window, min_steps):
            return False
        r = [e["reward"] for e in logs[-2 * window:]]
        return float(np.mean(r[window:]) - np.mean(r[:window])) < rise
    return flat


def _post_cfg(cfg: Config, task, mixed_sft_lr: float) -> PostTrainConfig:
    rl = GRPOConfig(steps=cfg.rl_steps, prompts_per_step=cfg.rl_prompts, group_size=cfg.rl_group, lr=cfg.rl_lr,
                    scale_advantages=cfg.rl_scale, kl_coef=cfg.rl_kl, log_kl=cfg.rl_log_kl,
                    max_new_tokens=task.max_completion_chars(max(cfg.hard + [cfg.test_difficulty])) + 1)
    sft = SFTConfig(steps=cfg.sft_steps, batch_size=cfg.sft_batch, lr=cfg.sft_lr)
    return PostTrainConfig(rl=rl, sft=sft, gold_limit=cfg.gold_limit, mixed_sft_lr=mixed_sft_lr)


def _post_train(arm: str, model, setup, seed: int, mixed_sft_lr: float, callback=None) -> dict:
    """Run pipeline `arm` on `model` in place; the RL part's diagnostics: steps run, whether it stopped on a flat
    reward, the reward and zero-variance groups at the end (mean of the last window)."""
    cfg = setup.cfg
    stop = plateau(cfg.plateau_window, cfg.plateau_rise, cfg.rl_min_steps)
    hist = run_pipeline(arm, model, setup.tok, setup.task, setup.train, _post_cfg(cfg, setup.task, mixed_sft_lr),
                        seed=seed, callback=callback, until=stop)
    rl = [e for k, h in hist.items() if k != "sft" for e in h if "reward" in e]
    if not rl:
        return {}
    tail = rl[-cfg.plateau_window:]
    out = {"rl_steps": len(rl), "rl_plateau": len(rl) < cfg.rl_steps or stop(rl),
           "rl_s": float(sum(e.get("rollout_s", 0) + e.get("update_s", 0) for e in rl)),
           "rl_frac_zero_std": float(np.mean([e["frac_zero_std"] for e in rl]))}
    for key in ("reward", "frac_zero_std", "entropy", "kl"):
        if key in tail[-1]:
            out[f"rl_end_{key}"] = float(np.mean([e[key] for e in tail]))
    return out


def _dynamics(model, setup, seed: int, store: list):
    """(record, callback): pass@1 / pass@k on half the test split when RL starts and every `dynamics_every` RL
    steps."""
    cfg = setup.cfg
    probe = setup.test[: max(8, len(setup.test) // 2)]

    def record(step: int) -> None:
        r = _pass(model, setup, probe, cfg.dynamics_samples, seed + 7)
        store.append({"rl_step": step, "pass1": r["pass1"], "passk": r["passk"]})
        model.train()

    def cb(phase, step, log):
        if phase == "sft" and step + 1 == cfg.sft_steps:
            record(0)  # SFT→RL: RL starts from here
        elif phase == "rl" and (step + 1) % cfg.dynamics_every == 0:
            record(step + 1)

    return record, cb


@dataclass
class Setup:
    """What every seed shares: the task, general suite, tokenizer and the splits (none of the test or validation
    questions is in the training split or in any pre-training document)."""

    cfg: Config
    task: object
    suite: GeneralSuite
    tok: CharTokenizer
    test: list
    val: list
    train: list
    ready_probe: list
    excluded: frozenset

    @classmethod
    def build(cls, cfg: Config) -> Setup:
        task = get_task(cfg.task, **({"max_value": cfg.max_value} if cfg.task == "wordprob" else {}))
        suite = GeneralSuite(weights=tuple(cfg.general_weights))
        tok = CharTokenizer(set(task.alphabet + suite.alphabet))
        test = make_split(task, cfg.n_test, cfg.test_difficulty, seed=TEST_SEED)
        val = make_split(task, cfg.n_val, cfg.test_difficulty, seed=VAL_SEED, exclude={p.prompt for p in test})
        excluded = frozenset(p.prompt for p in test + val)
        train = make_split(task, cfg.n_train, cfg.train_difficulties, seed=TRAIN_SEED, exclude=set(excluded))
        return cls(cfg, task, suite, tok, test, val, train, train[:cfg.ready_n], excluded)

    def model(self, d_model: int, state: dict, dev) -> GPT:
        m = GPT(_gpt_config(self.cfg, self.tok, d_model)).to(dev)
        m.load_state_dict(state)
        return m


def check_config(cfg: Config) -> None:
    """Settings that would otherwise fail only after pre-training (or silently mislabel the latest checkpoint)."""
    cks, steps = cfg.checkpoints, cfg.pretrain_steps
    if not cks or any(isinstance(c, bool) or not isinstance(c, int) for c in cks):
        raise LmlabError(f"checkpoints must be a non-empty list of pre-training steps (integers), got {cks}")
    if any(not 1 <= c <= steps for c in cks):
        raise LmlabError(f"checkpoints {cks} must lie in 1..pretrain_steps ({steps})")
    if any(a >= b for a, b in itertools.pairwise(cks)):
        raise LmlabError(f"checkpoints {cks} must be strictly increasing: the last one is the latest checkpoint "
                         "(RL dynamics, the SFT-LR choice and the data-composition arm run there)")
    for key in ("ready_n", "n_test", "n_val", "eval_samples", "val_samples", "plateau_window"):
        if getattr(cfg, key) < 1:
            raise LmlabError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.eval_samples < 2:
        raise LmlabError(f"eval_samples must be >= 2 (pass@k_max needs k_max > 1), got {cfg.eval_samples}")
    if not cfg.eval_temperature > 0:
        raise LmlabError(f"eval_temperature must be > 0, got {cfg.eval_temperature}")
    if len(cfg.general_weights) != 3 or any(w < 0 for w in cfg.general_weights) or not sum(cfg.general_weights) > 0:
        raise LmlabError(f"general_weights must be three shares >= 0 (Markov, copy, recall), got {cfg.general_weights}")
    if not cfg.mixed_sft_lrs or any(not lr > 0 for lr in cfg.mixed_sft_lrs):
        raise LmlabError(f"mixed_sft_lrs must be a non-empty list of learning rates > 0, got {cfg.mixed_sft_lrs}")
    if cfg.rl_steps < max(2 * cfg.plateau_window, cfg.rl_min_steps):
        raise LmlabError(f"rl_steps ({cfg.rl_steps}) must be >= rl_min_steps ({cfg.rl_min_steps}) and >= 2 * "
                         f"plateau_window ({cfg.plateau_window}): the plateau rule compares two windows of RL steps")


# ---------------------------------------------------------------------------------------------- one seed
def choose_mixed_lr(val: dict[float, dict], base_nll: float) -> float:
    """The parallel-averaging SFT LR: the highest validation pass@k_max among the grid LRs whose validation
    general loss rose by at most M_NLL over the base (the method's two aims, as the paper's sweep chose); when
    none keeps it, the one that raised it least. Ties go to the smaller LR."""
    keeps = [lr for lr, v in val.items() if v["general_nll"] - base_nll <= M_NLL]
    if not keeps:
        return min(val, key=lambda lr: (val[lr]["general_nll"], lr))
    return max(sorted(keeps), key=lambda lr: val[lr]["passk"])


def _mixed_lr(setup, state, seed: int, dev, log) -> tuple[dict, dict]:
    """Run parallel averaging from the latest checkpoint with each grid LR, score each on the validation split;
    returns ({"grid", "val", "base_val", "chosen"}, the chosen run's {"model_state", "rl"})."""
    cfg = setup.cfg
    base_val = _validate(setup.model(cfg.d_model, state, dev), setup, seed)
    val, runs = {}, {}
    for lr in cfg.mixed_sft_lrs:
        m = setup.model(cfg.d_model, state, dev)
        rl = _post_train("parallel_avg", m, setup, seed, lr)
        val[lr] = _validate(m, setup, seed)
        runs[lr] = ({k: v.detach().clone() for k, v in m.state_dict().items()}, rl)
    chosen = choose_mixed_lr(val, base_val["general_nll"])
    log(f"seed {seed}: parallel-averaging SFT LR {chosen} chosen on validation ("
        + ", ".join(f"{lr}: pass@k {v['passk']:.3f}, general {v['general_nll']:.3f}" for lr, v in val.items())
        + f"; base general {base_val['general_nll']:.3f})")
    info = {"grid": list(cfg.mixed_sft_lrs), "chosen": chosen, "base_val": base_val,
            "val": [{"lr": lr, **v} for lr, v in val.items()]}
    return info, {"state": runs[chosen][0], "rl": runs[chosen][1]}


def _checkpoint(setup, ck: int, state, seed: int, dev, lr: float, chosen_run: dict | None, dynamics: dict,
                log) -> dict:
    """Every pipeline on one checkpoint: {"step", "ready", "arms": {arm: numbers}}."""
    cfg = setup.cfg
    base = setup.model(cfg.d_model, state, dev)
    out = {"step": ck, "ready": _readiness(base, setup, seed), "arms": {"base": _evaluate(base, setup, seed)}}
    never = out["ready"]["passk"] == 0  # no reward on the RL prompts
    last = ck == cfg.checkpoints[-1]
    for arm in cfg.pipelines:
        if never and cfg.early_arms is not None and arm not in cfg.early_arms:
            continue  # budget: RL has no signal here (readiness 0), so the mixed arms add little
        model = setup.model(cfg.d_model, state, dev)
        if arm == "parallel_avg" and chosen_run is not None:  # run by the LR choice already
            model.load_state_dict(chosen_run["state"])
            rl = chosen_run["rl"]
        else:
            cb = None
            if cfg.dynamics_every and last and arm in ("rl", "sft_rl"):
                record, cb = _dynamics(model, setup, seed, dynamics.setdefault(arm, []))
                if arm == "rl":
                    record(0)
            rl = _post_train(arm, model, setup, seed, lr, cb)
        out["arms"][arm] = {**_evaluate(model, setup, seed), **rl}
    a = out["arms"]
    log(f"seed {seed} ckpt {ck}: readiness {out['ready']['passk']:.2f}; "
        + ", ".join(f"{k} {v['pass1']:.2f}/{v['passk']:.2f}" for k, v in a.items()))
    return out


def _data_arm(setup, seed: int, dev, base_row: dict, log) -> dict:
    """Claim 5: RL after pre-training with more hard problems, and after pre-training a 2x wider model, from the
    latest checkpoint; the base mix's own row is the main grid's."""
    cfg, last = setup.cfg, setup.cfg.checkpoints[-1]
    out = {"base mix": {"before": base_row["arms"]["base"], "after": base_row["arms"]["rl"],
                        "params": GPT(_gpt_config(cfg, setup.tok, cfg.d_model)).num_params()}}
    for name, share, d in (("targeted mix", cfg.targeted_hard_share, cfg.d_model),
                           ("base mix, 2x model", cfg.hard_share, cfg.big_d_model)):
        _, snaps = _pretrain(cfg, setup.task, setup.suite, setup.tok, share, d, seed, dev, log, setup.excluded)
        model = setup.model(d, snaps[last], dev)
        before = _evaluate(model, setup, seed)
        rl = _post_train("rl", model, setup, seed, cfg.mixed_sft_lrs[0])
        out[name] = {"before": before, "after": {**_evaluate(model, setup, seed), **rl},
                     "params": model.num_params()}
    log(f"data arm seed {seed}: " + ", ".join(f"{nm} {v['before']['pass1']:.3f}->{v['after']['pass1']:.3f}"
                                              for nm, v in out.items()))
    return out


def measure(ctx: RunContext, seed: int) -> dict:
    """One seed: pre-training, the LR choice, every pipeline at every checkpoint, the data arm."""
    cfg, dev = ctx.cfg, ctx.device
    check_config(cfg)
    if dev.type == "cpu":
        tiny_threads()  # tiny models: intra-op threading only adds overhead
    setup = Setup.build(cfg)
    t0 = time.time()
    _, snaps = _pretrain(cfg, setup.task, setup.suite, setup.tok, cfg.hard_share, cfg.d_model, seed, dev, ctx.log,
                         setup.excluded)
    mixed, chosen_run = {"grid": list(cfg.mixed_sft_lrs), "chosen": cfg.mixed_sft_lrs[0]}, None
    if "parallel_avg" in cfg.pipelines:
        mixed, chosen_run = _mixed_lr(setup, snaps[cfg.checkpoints[-1]], seed, dev, ctx.log)
    dynamics: dict = {}
    rows = []
    for ck in cfg.checkpoints:
        last = ck == cfg.checkpoints[-1]
        rows.append(_checkpoint(setup, ck, snaps[ck], seed, dev, mixed["chosen"], chosen_run if last else None,
                                dynamics, ctx.log))
    data = _data_arm(setup, seed, dev, rows[-1], ctx.log) if cfg.data_arm and "rl" in rows[-1]["arms"] else None
    ctx.log(f"seed {seed} measured in {time.time() - t0:.0f}s")
    return {"n": cfg.eval_samples, "n_test": len(setup.test), "checkpoints": rows, "mixed_lr": mixed,
            "dynamics": dynamics, "data_arm": data}


experiment(name="rl_checkpoints",
           paper="RL Excursions during Pre-Training: Re-examining Policy Optimization for LLM training "
                 "(Bansal, Mohri, Qin et al., 2026)",
           claims=CLAIMS, checks=CHECKS, presets=PRESETS, decide=decide, summarize=summarize)(measure)
