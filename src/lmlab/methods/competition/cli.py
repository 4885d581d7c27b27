"""`lmlab interference`: gradient interference between tasks in your own causal LM (an lmlab run/step folder or
a local HF causal-LM folder). Each task is a text file; its loss is the next-token loss on its lines. Reports
each task's loss and gradient norm, the pairwise gradient cosines, how a frequency-weighted step on the common
tasks moves the rare one (task competition, spec 02), and with --layer how the MLP units of that layer are
allocated to the tasks (first-order ablation effects). Writes report.md, results.json and cosines.png."""

from __future__ import annotations

from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.inputs import read_lines


def register(sub) -> None:
    p = sub.add_parser(
        "interference", help="gradient interference and unit allocation between tasks in your LM"
    )
    p.add_argument("model", help="lmlab run/step folder or local HF causal-LM folder")
    p.add_argument(
        "--task",
        action="append",
        required=True,
        metavar="NAME=FILE",
        help="a task: its name and a text file, one example per line (give two or more)",
    )
    p.add_argument("--rare", required=True, help="the task whose interference with the others is measured")
    p.add_argument(
        "--freq",
        action="append",
        default=[],
        metavar="NAME=P",
        help="frequency of a common task in the training mix (default: equal)",
    )
    p.add_argument(
        "--layer", type=int, default=None, help="also allocate this layer's MLP units to the tasks"
    )
    p.add_argument("--max-lines", type=int, default=64, help="examples per task")
    p.add_argument("--seq-len", type=int, default=128, help="tokens kept per example")
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer file for an lmlab checkpoint without one beside it"
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step of an lmlab run (default: latest)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (default: auto, CUDA when available)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise LmlabError(f"{what} {item!r}: expected NAME=VALUE")
        if name.strip() in out:
            raise LmlabError(f"{what} {name.strip()!r} is given twice")
        out[name.strip()] = value.strip()
    return out


def task_batch(codec, path: str, max_lines: int, seq_len: int, device):
    """(ids, targets) of a task file's first lines (see `lmlab.loading.lm_batch`)."""
    from lmlab.loading import lm_batch  # torch: imported when the command runs, not for --help

    return lm_batch(codec, read_lines(path, "task file"), max_lines, seq_len, device, path)


def run(args) -> int:
    # heavy imports (torch) when the command runs, not when the parser is built
    import torch

    from lmlab.methods.competition import interference as I
    from lmlab.loading import load_policy
    from lmlab.progress import Progress
    from lmlab.utils import atomic_write_json, atomic_write_png, atomic_write_text, get_device

    tasks = parse_pairs(args.task, "--task")
    if len(tasks) < 2:
        raise LmlabError("give two or more --task NAME=FILE")
    if args.rare not in tasks:
        raise LmlabError(f"--rare {args.rare!r} is not one of the tasks {list(tasks)}")
    common = [t for t in tasks if t != args.rare]
    given = parse_pairs(args.freq, "--freq")
    unknown = [t for t in given if t not in common]
    if unknown:
        raise LmlabError(f"--freq for {unknown}: frequencies are for the common tasks {common}")
    try:
        freqs = {t: float(given.get(t, 1.0 / len(common))) for t in common}
    except ValueError as e:
        raise LmlabError(f"--freq values must be numbers ({e})") from e
    dev = get_device(args.device)
    model, codec, kind = load_policy(args.model, args.step, args.tokenizer, dev)
    model.eval()  # no dropout: the gradients are of the model as it is
    if args.layer is not None and not 0 <= args.layer < I.n_layers(model):
        raise LmlabError(f"--layer {args.layer}: the model has layers 0..{I.n_layers(model) - 1}")
    batches = {t: task_batch(codec, f, args.max_lines, args.seq_len, dev) for t, f in tasks.items()}
    # every pass over a task (its loss, its gradient, its unit attributions) advances the bar
    bar = Progress(len(tasks) * (2 if args.layer is None else 3), "interference", unit="pass")

    def counted(m, b):
        loss = m(b[0], b[1])
        bar.update()
        return loss

    loss_fns = {t: (lambda m, b=b: counted(m, b)) for t, b in batches.items()}
    with torch.no_grad():
        losses = {t: float(fn(model)) for t, fn in loss_fns.items()}
    grads = I.task_gradients(model, loss_fns)
    res = I.interference(grads, freqs, common, args.rare)
    results = {
        "model": args.model,
        "kind": kind,
        "tasks": tasks,
        "examples": {t: len(b[0]) for t, b in batches.items()},
        "rare": args.rare,
        "freqs": freqs,
        "loss": losses,
        "grad_norm": res["norms"],
        "cosines": res["cosines"].tolist(),
        "common_norm": res["common_norm"],
        "cos_common_rare": res["cos_common_rare"],
        "projection": res["projection"],
        "rare_loss_change": res["rare_loss_change"],
        "layer": args.layer,
        "allocation": None,
    }
    if args.layer is not None:
        names, effects = I.effect_matrix(I.unit_attributions(model, loss_fns, args.layer))
        alloc = I.allocation(effects)
        results["allocation"] = {
            "units": int(effects.shape[0]),
            "active": int(alloc["active"].sum()),
            "fractions": {n: float(f) for n, f in zip(names, alloc["fractions"])},
        }
    bar.close()
    out = Path(args.out)
    atomic_write_json(out / "results.json", results)
    atomic_write_png(out / "cosines.png", _cosine_figure(list(tasks), res["cosines"]))
    atomic_write_text(out / "report.md", _report(results))
    print(
        f"rare task {args.rare}: cos(common step, rare gradient) {res['cos_common_rare']:+.4f}; first-order change "
        f"of its loss per unit step on the common mix {res['rare_loss_change']:+.4g}"
    )
    print(f"report: {out / 'report.md'}")
    return 0


def _cosine_figure(names: list[str], cos):
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    fig, ax = plt.subplots(figsize=(3 + 0.4 * len(names), 2.6 + 0.4 * len(names)))
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(im, ax=ax, label="gradient cosine")
    ax.set_title("Task gradient cosines")
    fig.tight_layout()
    return fig


def _report(r: dict) -> str:
    names = list(r["tasks"])
    lines = [
        "# Gradient interference between tasks",
        "",
        f"Model `{r['model']}` ({r['kind']}). Rare task `{r['rare']}`; common mix "
        + ", ".join(f"`{t}` {p:g}" for t, p in r["freqs"].items())
        + f". Common-mix gradient norm {r['common_norm']:.4g}; its cosine with the rare task's gradient "
        f"{r['cos_common_rare']:+.4f}; |g_common·ĝ_rare| = {r['projection']:.4g}; first-order change of the rare "
        f"loss per unit learning rate of a common step {r['rare_loss_change']:+.4g} (> 0: common steps undo it).",
        "",
        "| task | examples | loss | gradient norm | " + " | ".join(f"cos with {n}" for n in names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for i, n in enumerate(names):
        lines.append(
            f"| {n} | {r['examples'][n]} | {r['loss'][n]:.4f} | {r['grad_norm'][n]:.4g} | "
            + " | ".join(f"{c:+.3f}" for c in r["cosines"][i])
            + " |"
        )
    if r["allocation"]:
        a = r["allocation"]
        lines += [
            "",
            f"**Unit allocation, layer {r['layer']}** ({a['active']} of {a['units']} MLP units with an "
            "effect; each unit split over the tasks in proportion to its first-order ablation effect):",
            "",
            "| task | share of units |",
            "|---|---|",
        ]
        lines += [f"| {n} | {f:.3f} |" for n, f in a["fractions"].items()]
    lines += ["", "![task gradient cosines](cosines.png)", ""]
    return "\n".join(lines)
