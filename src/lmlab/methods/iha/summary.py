"""iha_synthetic's tables and figures over the seeds (nothing here decides a claim)."""

from __future__ import annotations

from lmlab.methods.iha.decide import ACC_FAIL, ACC_OK, LEARNED_SHARE, NMSE_FAIL, NMSE_FIT, POLY_MODELS


def summarize(ctx, per_seed: list[dict], verdicts: dict) -> None:
    rep, cfg, seeds = ctx.report, ctx.cfg, ctx.report.seeds
    rows = []
    for s, n in zip(seeds, per_seed):
        for m in POLY_MODELS:
            p, c = n["poly"][m], n["cpm3"][m]
            rows += [["polynomial k=4", m, s, p["params"], f"{p['nmse']:.2e}", "", f"{p['cpu_s']:.1f}"],
                     ["CPM-3 workspace N_max=4", m, s, c["params"], f"{c['nmse']:.2e}", f"{c['row_acc']:.4f}",
                      f"{c['cpu_s']:.1f}"]]
    rep.table(sorted(rows, key=lambda r: (r[0], r[2])), ["task", "model", "seed", "params", "test nmse", "row acc",
                                                         "CPU s"],
              title=f"c1–c2: trained constructions ({cfg.theory_steps} Adam steps, lr {cfg.theory_lr}, batch "
                    f"{cfg.theory_batch}, one CPU thread)")
    for key in ("poly", "cpm3"):
        rep.metric(key, {m: [n[key][m]["row_acc" if key == "cpm3" else "nmse"] for n in per_seed] for m in POLY_MODELS})
    _theory_figures(rep, per_seed)
    if all(n.get("relations") for n in per_seed):
        _relations(rep, cfg, seeds, per_seed)
    if all(n.get("niah") for n in per_seed):
        _niah(rep, cfg, seeds, per_seed)


def _theory_figures(rep, per_seed):
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    panels = (
        ("polynomial_filters", "poly", "nmse", "test nmse (log)", "c1: polynomial filter bank, k = 4",
         ((NMSE_FIT, "g", f"fitted: nmse < {NMSE_FIT:g}"), (NMSE_FAIL, "r", f"cannot fit: nmse > {NMSE_FAIL:g}")),
         "c1: per-seed test error of the trained polynomial-filter constructions (dashed: the decision thresholds)."),
        ("cpm3_workspace", "cpm3", "row_acc", "workspace row accuracy", "c2: CPM-3 workspace, N_max = 4",
         ((ACC_OK, "g", f"built: accuracy > {ACC_OK:g}"), (ACC_FAIL, "r", f"not built: accuracy < {ACC_FAIL:g}")),
         "c2: per-seed workspace row accuracy of the trained CPM-3 constructions (dashed: the decision thresholds)."),
    )
    for name, key, value, ylabel, title, thresholds, caption in panels:
        fig, ax = plt.subplots(figsize=(7, 3.4))
        for i, model in enumerate(POLY_MODELS):
            ax.scatter([i] * len(per_seed), [n[key][model][value] for n in per_seed], color="tab:blue",
                       label="one seed" if i == 0 else None)
        for y, colour, label in thresholds:
            ax.axhline(y, ls="--", c=colour, lw=1, label=label)
        if key == "poly":
            ax.set_yscale("log")
        ax.set_xticks(range(len(POLY_MODELS)), POLY_MODELS, fontsize=8)
        ax.set_xlabel("model")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: no point hidden
        fig.tight_layout()
        rep.figure(fig, name, caption)


def _relations(rep, cfg, seeds, per_seed):
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    rows = []
    for s, n in zip(seeds, per_seed):
        for c in n["relations"]["cells"]:
            for m in ("mha", "iha"):
                r = c[m]
                rows.append([s, "R∘R" if c["order"] == 2 else "R∘R∘R", f"{c['m_range'][0]}..{c['m_range'][1]}",
                             f"{c['lr']:g}", "MHA" if m == "mha" else f"IHA P={cfg.rel_pseudo}", r["params"],
                             f"{c['constant']:.2f}", f"{r['test_acc']:.2f}", f"{r['exact']:.2f}", f"{r['val_acc']:.2f}",
                             r["best_step"], r["steps"], "yes" if r["stopped"] else "no (cap)", f"{r['cpu_s']:.0f}"])
    rep.table(rows, ["seed", "task", "m", "lr", "model", "params", "constant guess %", "test token acc %",
                     "exact matrix %", "best val acc %", "best step", "steps", "early stop", "CPU s"],
              title=f"c3: relation composition, 1 layer, H={cfg.rel_heads}, d={cfg.rel_d_model}, batch {cfg.rel_batch}, "
                    f"validation every {cfg.rel_eval_every} steps (patience {cfg.rel_patience}, cap "
                    f"{cfg.rel_max_steps}); learned = MHA removes {LEARNED_SHARE:.0%} of the constant guess's errors")
    cells = per_seed[0]["relations"]["cells"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for j, c in enumerate(cells):
        for k, (m, colour) in enumerate((("mha", "tab:blue"), ("iha", "tab:orange"))):
            ax.scatter([j + (k - 0.5) * 0.3] * len(per_seed), [n["relations"]["cells"][j][m]["test_acc"]
                                                              for n in per_seed],
                       color=colour, label=(("MHA", f"IHA P={cfg.rel_pseudo}")[k]) if j == 0 else None)
        const = [n["relations"]["cells"][j]["constant"] for n in per_seed]
        need = [cc + LEARNED_SHARE * (100 - cc) for cc in const]
        ax.hlines([sum(const) / len(const)], j - 0.4, j + 0.4, colors="gray", linestyles=":",
                  label="constant guess" if j == 0 else None)
        ax.hlines([sum(need) / len(need)], j - 0.4, j + 0.4, colors="red", linestyles="--",
                  label="MHA 'learned' line" if j == 0 else None)
    ax.set_xticks(range(len(cells)), [f"{'R∘R' if c['order'] == 2 else 'R∘R∘R'}\nlr {c['lr']:g}" for c in cells])
    ax.set_xlabel("task and learning rate")
    ax.set_ylabel("test token accuracy (%)")
    ax.set_title("c3: relation composition, 1 layer (one point per seed)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    rep.figure(fig, "relations", "c3: test token accuracy per seed of MHA and IHA in each task and learning rate, with "
               "the constant guess and the line MHA must reach to count as learned.")
    rep.metric("relations", [[{"lr": c["lr"], "order": c["order"], "constant": c["constant"],
                               "mha": c["mha"]["test_acc"], "iha": c["iha"]["test_acc"]}
                              for c in n["relations"]["cells"]] for n in per_seed])


def _niah(rep, cfg, seeds, per_seed):
    rows = [[s, m, n["niah"][m]["params"], n["niah"]["steps"], f"{n['niah'][m]['score']:.1f}",
             f"{n['niah'][m]['curve'][-1][1]:.1f}", f"{n['niah'][m]['train_s']:.0f}"]
            for s, n in zip(seeds, per_seed) for m in ("mha", "hybrid")]
    rep.table(rows, ["seed", "model", "params", "steps", f"MK-2 test @{cfg.niah_seq_len}", "last validation",
                     "train s"],
              title=f"c4: char LMs at N={cfg.niah_seq_len}; MHA trained until validation string_match_all >= "
                    f"{cfg.niah_target:g} (cap {cfg.niah_max_steps}), the hybrid as many steps; {cfg.niah_eval_n} "
                    f"test prompts")
    rep.metric("niah", [{m: n["niah"][m]["score"] for m in ("mha", "hybrid")} for n in per_seed])
