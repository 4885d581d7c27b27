"""calm_kv's tables and figure over the seeds (nothing here decides a claim): the Table 1 analogue per format, every
arm of every row, and the time each part took."""

from __future__ import annotations

import statistics


def _mean(values) -> float:
    return statistics.fmean(float(v) for v in values)


def _per_seed(values) -> str:
    return " ".join(f"{float(v):.2f}" for v in values)


def summarize(ctx, per_seed: list[dict], verdicts: dict) -> None:
    rep, cfg = ctx.report, ctx.cfg
    formats = [f for f in cfg.format_list() if all(f in n["base"]["aug"]["kv_math"] for n in per_seed)]
    for fmt in formats:
        row = f"{fmt}/dc_only"
        calm = [n["rows"][row]["calm"] for n in per_seed] if all(row in n["rows"] for n in per_seed) else None

        def cells(get_base, key):
            return [_per_seed([get_base(n, "aug") for n in per_seed]),
                    _per_seed([get_base(n, "anchor") for n in per_seed]),
                    _per_seed([c[key] for c in calm]) if calm and key else "-"]

        rows = [["KV-SUBS (held-out keys)", *cells(lambda n, m: n["base"][m]["kv_subs"][fmt], None)],
                ["NUM-MATH", *cells(lambda n, m: n["base"][m]["num_math"][fmt], "num_math")],
                ["KV-MATH (held-out keys)", *cells(lambda n, m: n["base"][m]["kv_math"][fmt], "heldout")]]
        rep.table(rows, ["eval set", "m_A (augmenting)", "m_B (anchor)", "CALM m_A⊕B (D_C alone)"],
                  title=f"Table 1 analogue, {fmt} format: accuracy per seed (paper: KV-MATH 0.7 / 0.0 / 84.3 %)")
    arm_rows = []
    for row in per_seed[0]["rows"]:
        for arm in per_seed[0]["rows"][row]:
            got = [n["rows"][row][arm] for n in per_seed]
            arm_rows.append([row, arm, _per_seed([g["heldout"] for g in got]), _per_seed([g["dc"] for g in got]),
                             _per_seed([g["num_math"] for g in got]), _per_seed([g["num_math_exact"] for g in got])])
    share = f"{cfg.anchor_mix:.0%} NUM-MATH labelled by {'the frozen anchor' if cfg.anchor_mix_labels == 'anchor' else 'the task'}"
    rep.table(arm_rows, ["row (format/rehearsal)", "arm", "KV-MATH held-out keys", "KV-MATH D_C keys", "NUM-MATH",
                         "NUM-MATH exact"],
              title=f"Every arm of every row, per seed (rehearsal = {share}; every arm of a row trains on the same "
                    f"batches, bridges {cfg.bridge_steps} steps, fine-tune {cfg.finetune_steps})")
    rep.table([[k, _per_seed([n["time_s"][k] for n in per_seed])] for k in per_seed[0]["time_s"]],
              ["part", "seconds per seed"], title="Wall time of each part")
    rep.metric("mean_heldout", {f"{row}/{arm}": _mean(n["rows"][row][arm]["heldout"] for n in per_seed)
                                for row in per_seed[0]["rows"] for arm in per_seed[0]["rows"][row]})
    _figure(rep, per_seed, formats)


def _figure(rep, per_seed, formats):
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    rows = list(per_seed[0]["rows"])
    arms = sorted({a for r in rows for a in per_seed[0]["rows"][r]}, key=lambda a: a != "calm")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 3.8))
    w = 0.8 / (len(arms) + 1)
    base = [_mean(max(n["base"]["aug"]["kv_math"][r.split("/")[0]], n["base"]["anchor"]["kv_math"][r.split("/")[0]])
                  for n in per_seed) for r in rows]
    ax.bar([x - 0.4 + w / 2 for x in range(len(rows))], base, w, label="better base model")
    for i, arm in enumerate(arms, 1):
        ax.bar([x - 0.4 + w / 2 + i * w for x in range(len(rows))],
               [_mean(n["rows"][r][arm]["heldout"] for n in per_seed) if arm in per_seed[0]["rows"][r] else 0
                for r in rows], w, label=arm)
    ax.set_xticks(range(len(rows)), rows)
    ax.set_xlabel("row (KV-MATH format / composition data)")
    ax.set_ylabel("KV-MATH accuracy, held-out keys")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"CALM key-value arithmetic: mean over {len(per_seed)} seeds")
    ax.legend(fontsize=7)
    rep.figure(fig, "calm_heldout", "Held-out-key KV-MATH accuracy of each arm per row (mean over seeds); "
               f"formats measured: {', '.join(formats)}.")
