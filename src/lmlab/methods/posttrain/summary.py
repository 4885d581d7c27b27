"""rl_checkpoints' tables and figures over the seeds (nothing here decides a claim): pass@k and general capability
per checkpoint and pipeline, the RL gain per readiness bin, RL diagnostics, the parallel-averaging LR choice, RL
dynamics and the data-vs-size arm."""

from __future__ import annotations

import numpy as np

from lmlab.methods.posttrain.decide import READY_BINS

ARMS = ("base", "rl", "sft", "sft_gold", "sft_rl", "parallel_avg")
DATA = ("base mix", "targeted mix", "base mix, 2x model")


def _mean(vals) -> float:
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _cell(per_seed, step, arm, key):
    return _mean(r["arms"][arm].get(key) for s in per_seed for r in s["checkpoints"]
                 if r["step"] == step and arm in r["arms"])


def summarize(ctx, per_seed: list[dict], verdicts: dict) -> None:
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    rep, cfg = ctx.report, ctx.cfg
    n, steps = per_seed[0]["n"], [r["step"] for r in per_seed[0]["checkpoints"]]
    arms = [a for a in ARMS if any(a in r["arms"] for s in per_seed for r in s["checkpoints"])]
    rep.text(f"Task `{cfg.task}`: {per_seed[0]['n_test']} held-out test questions of difficulty {cfg.test_difficulty} "
             f"(none in the pre-training documents), n = {n} samples each at temperature {cfg.eval_temperature}, "
             f"unbiased pass@k; pre-training {cfg.task_weight:.0%} task documents (hard share {cfg.hard_share}, noise "
             f"{cfg.noise}) / {1 - cfg.task_weight:.0%} general text; GPT d={cfg.d_model}, {cfg.n_layers} layers; "
             f"{len(per_seed)} seed(s). RL runs until its training reward is flat (mean of the last "
             f"{cfg.plateau_window} steps less than {cfg.plateau_rise} above the {cfg.plateau_window} before) or "
             f"{cfg.rl_steps} steps. General capability: held-out loss on the general language (nats) and the loss "
             "of copy / recall answers (nats per letter; uniform guessing 2.77); greedy copy accuracy.")
    keys = ("pass1", "passk", "format_rate", "general_nll", "copy_nll", "recall_nll", "copy_acc", "rl_steps")
    rows = [[ck, a] + [_cell(per_seed, ck, a, k) for k in keys] for ck in steps for a in arms
            if not np.isnan(_cell(per_seed, ck, a, "pass1"))]
    rep.table(rows, ["ckpt", "arm", "pass@1", f"pass@{n}", "format", "general NLL", "copy NLL", "recall NLL",
                     "copy acc", "RL steps"], f"Per checkpoint and pipeline (mean over {len(per_seed)} seed(s))")
    for ck in steps:
        for a in arms:
            rep.metric(f"pass1/step{ck}/{a}", _cell(per_seed, ck, a, "pass1"))
            rep.metric(f"passk/step{ck}/{a}", _cell(per_seed, ck, a, "passk"))
    _readiness(rep, per_seed, n)
    _diagnostics(rep, per_seed, steps)
    _mixed(rep, per_seed)
    _figures(rep, plt, per_seed, steps, arms, n, cfg)
    if all(s.get("data_arm") for s in per_seed):
        _data(rep, plt, per_seed, n, steps[-1])


def _readiness(rep, per_seed, n):
    rows = []
    for lo, hi in zip((None,) + READY_BINS[:-1], READY_BINS):
        pts = [(r["ready"]["passk"], r["arms"]["rl"]["pass1"] - r["arms"]["base"]["pass1"],
                r["arms"]["rl"]["passk"] - r["arms"]["base"]["passk"])
               for s in per_seed for r in s["checkpoints"] if "rl" in r["arms"]
               and (r["ready"]["passk"] == 0 if lo is None else lo < r["ready"]["passk"] <= hi)]
        label = "0" if lo is None else f"({lo}, {hi}]"
        rows.append([label, len(pts)] + ([_mean(p[i] for p in pts) for i in (1, 2)] if pts else ["—", "—"]))
    rep.table(rows, ["RL-readiness bin", "checkpoints × seeds", "RL Δpass@1 (test)", f"RL Δpass@{n} (test)"],
              f"RL gain per RL-readiness bin (readiness = base pass@{n} on a fixed sample of RL training prompts)")


def _diagnostics(rep, per_seed, steps):
    rows = []
    for ck in steps:
        for a in ("rl", "sft_rl", "parallel_avg"):
            vals = [_cell(per_seed, ck, a, k) for k in ("rl_steps", "rl_end_reward", "rl_end_frac_zero_std",
                                                        "rl_end_entropy", "rl_end_kl", "rl_s")]
            if not np.isnan(vals[0]):
                rows.append([ck, a] + vals)
    if rows:
        rep.table(rows, ["ckpt", "arm", "RL steps", "end reward", "zero-std groups", "entropy", "KL to RL start",
                         "RL seconds"], "RL diagnostics (end = mean of the last plateau window; mean over seeds)")


def _mixed(rep, per_seed):
    rows = [[i, v["lr"], v["pass1"], v["passk"], v["general_nll"] - s["mixed_lr"]["base_val"]["general_nll"],
             "chosen" if v["lr"] == s["mixed_lr"]["chosen"] else ""]
            for i, s in enumerate(per_seed) for v in s["mixed_lr"].get("val", [])]
    if rows:
        rep.table(rows, ["seed #", "SFT LR", "val pass@1", "val pass@k", "val Δgeneral NLL vs base", ""],
                  "Parallel averaging: SFT learning rate chosen on the validation split (latest checkpoint)")


def _figures(rep, plt, per_seed, steps, arms, n, cfg):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "pass1", "pass@1"), (axes[1], "passk", f"pass@{n}")):
        for a in arms:
            ax.plot(steps, [_cell(per_seed, ck, a, key) for ck in steps], marker="o", label=a)
        ax.set_xlabel("pre-training step of the checkpoint")
        ax.set_ylabel(f"{label} on held-out test")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(label)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    rep.figure(fig, "pass_per_checkpoint", f"pass@1 and pass@{n} per checkpoint and pipeline (mean over seeds)")

    fig, axes = plt.subplots(1, len(steps), figsize=(3.4 * len(steps), 3.4), squeeze=False)
    for ax, ck in zip(axes[0], steps):
        for a in arms:
            curves = [r["arms"][a]["curve"] for s in per_seed for r in s["checkpoints"]
                      if r["step"] == ck and a in r["arms"]]
            if curves:
                ax.plot(np.arange(1, n + 1), np.mean(curves, axis=0), label=a)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"checkpoint {ck}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    rep.figure(fig, "pass_at_k_curves", "pass@k curves (k = 1..n) per checkpoint and pipeline")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for a in arms:
        axes[0].plot(steps, [_cell(per_seed, ck, a, "general_nll") for ck in steps], marker="o", label=a)
        axes[1].plot(steps, [_cell(per_seed, ck, a, "copy_nll") for ck in steps], marker="o", label=a)
    axes[0].set_ylabel("general-language held-out loss (nats)")
    axes[1].set_ylabel("copy-answer loss (nats per letter)")
    axes[0].set_title("general language (lower is better)")
    axes[1].set_title("in-context copy (lower is better)")
    for ax in axes:
        ax.set_xlabel("pre-training step of the checkpoint")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    rep.figure(fig, "general_capability", "general capability per checkpoint and pipeline (lower loss is better)")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label in (("pass1", "Δpass@1"), ("passk", f"Δpass@{n}")):
        pts = [(r["ready"]["passk"], r["arms"]["rl"][key] - r["arms"]["base"][key])
               for s in per_seed for r in s["checkpoints"] if "rl" in r["arms"]]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"RL {label} (test)")
    ax.axhline(0, color="gray", lw=0.5, label="no change")
    ax.set_xlabel(f"RL-readiness: base pass@{n} on RL training prompts")
    ax.set_ylabel("change after RL on the test split")
    ax.set_title("RL gain against RL-readiness")
    ax.legend(fontsize=8)
    fig.tight_layout()
    rep.figure(fig, "rl_readiness", "RL-readiness (spec §8): what the base samples on the RL prompts vs the RL gain")

    if any(s.get("dynamics") for s in per_seed):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for i, s in enumerate(per_seed):
            for a, pts in sorted((s.get("dynamics") or {}).items()):
                name = "RL from base" if a == "rl" else "RL after SFT"
                x = [p["rl_step"] for p in pts]
                axes[0].plot(x, [p["pass1"] for p in pts], marker=".", label=f"{name} (seed #{i})")
                axes[1].plot(x, [p["passk"] for p in pts], marker=".", label=f"{name} (seed #{i})")
        for ax, lab in ((axes[0], "pass@1"), (axes[1], f"pass@{cfg.dynamics_samples}")):
            ax.set_xlabel("RL step")
            ax.set_ylabel(f"{lab} (half of the test split)")
            ax.set_title(f"{lab} during RL, checkpoint {steps[-1]}")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        rep.figure(fig, "rl_dynamics", f"pass@1 / pass@k over RL steps at checkpoint {steps[-1]}")


def _data(rep, plt, per_seed, n, last):
    rows = []
    for nm in DATA:
        b = [s["data_arm"][nm]["before"]["pass1"] for s in per_seed]
        a = [s["data_arm"][nm]["after"]["pass1"] for s in per_seed]
        ak = [s["data_arm"][nm]["after"]["passk"] for s in per_seed]
        rows.append([nm, per_seed[0]["data_arm"][nm]["params"], _mean(b), _mean(a), _mean(a) - _mean(b), _mean(ak)])
        rep.metric(f"data_arm/{nm}/rl_gain", _mean(a) - _mean(b))
    rep.table(rows, ["pre-training", "params", "pass@1 base", "pass@1 after RL", "RL gain", f"pass@{n} after RL"],
              f"Data composition vs model size (checkpoint {last}, test split; mean over seeds)")
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(DATA))
    ax.bar(x - 0.2, [r[2] for r in rows], 0.4, label="base checkpoint")
    ax.bar(x + 0.2, [r[3] for r in rows], 0.4, label="after RL")
    ax.set_xticks(x, DATA, fontsize=8)
    ax.set_xlabel("pre-training data / model")
    ax.set_ylabel("test pass@1")
    ax.set_title(f"targeted data vs a 2x model (checkpoint {last})")
    ax.legend()
    rep.figure(fig, "data_vs_size", "RL outcome: targeted pre-training data vs doubling model size")
