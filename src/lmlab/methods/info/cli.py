"""`lmlab info`: information measures of neuron activations (Bansal, Pruthi & Belinkov, 2022) for your own
local HF models: per-neuron entropy and pairwise KSG mutual information on one unlabeled set, and the models
ranked by how little they memorize (heuristic or example-level), with Kendall τ against a labelled metric
when one is given. Writes report.md, results.json, entropy.png and mi_density.png."""

from __future__ import annotations

import logging
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.inputs import read_json
from lmlab.methods.info import MEMORIZATION

log = logging.getLogger(__name__)

def register(sub) -> None:
    """Add `lmlab info` to the subcommand parsers `sub`."""
    p = sub.add_parser(
        "info", help="entropy and mutual information of neuron activations: rank your models for memorization"
    )
    p.add_argument("models", nargs="+", help="local HF model folders (each with its tokenizer) or lmlab runs "
                   "(read through their blocks.{i}.hook_resid_post hook points)")
    p.add_argument(
        "--data", required=True, help="unlabeled texts: a .txt file (one per line) or JSONL with 'text'"
    )
    p.add_argument(
        "--memorization",
        required=True,
        choices=list(MEMORIZATION),
        help="heuristic: shortcuts lower entropy and raise MI; example: label-noise fitting does the reverse",
    )
    p.add_argument(
        "--metric",
        default=None,
        help="optional JSON {model folder name: labelled metric, higher is better} for Kendall τ",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--kind", default="encoder", choices=["encoder", "classifier", "causal"],
                   help="how each folder is loaded: an encoder (an encoder-decoder is read through its encoder), "
                   "a sequence classifier, or a causal LM")
    p.add_argument("--layers", default=None, help="comma-separated layer indices (default: all)")
    p.add_argument("--reduce", default="cls", choices=["cls", "mean"], help="one vector per text and layer")
    p.add_argument("--max-examples", type=int, default=2500, help="texts read from --data")
    p.add_argument("--mi-neurons", type=int, default=64, help="neurons per layer in the MI (the paper's 64)")
    p.add_argument("--bins", type=int, default=100, help="histogram bins of the entropy estimate")
    p.add_argument("--batch", type=int, default=32, help="texts per forward pass")
    p.add_argument("--max-length", type=int, default=128, help="tokens kept per text")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (default: auto, CUDA when available)")
    p.set_defaults(func=run)


def run(args) -> int:
    """`lmlab info`: activations of every model on --data, their entropy and MI, rankings and a report."""
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.hf import load_model, load_tokenizer
    from lmlab.loading import load_policy, model_names, read_texts
    from lmlab.methods.info import information as I
    from lmlab.utils import atomic_write_json, atomic_write_png, atomic_write_text, get_device

    texts = read_texts(args.data, args.max_examples)
    names = model_names(args.models)
    metric = None
    if args.metric:
        mp = Path(args.metric)
        metric = read_json(mp, "metric file")
        if not isinstance(metric, dict) or not all(isinstance(v, (int, float)) for v in metric.values()):
            raise LmlabError(f"{mp} must hold one JSON object {{model folder name: number}}")
        missing = [n for n in names if n not in metric]
        if missing:
            raise LmlabError(
                f"{mp} has no value for {missing}: give {{model folder name: value}} for every model"
            )
    try:
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    except ValueError as e:
        raise LmlabError(f"--layers {args.layers!r}: give comma-separated layer indices, e.g. 0,2,5") from e
    dev = get_device(args.device)
    acts = {}
    for i, (name, path) in enumerate(zip(names, args.models), 1):
        log.info("loading %s (%d of %d) ...", path, i, len(names))
        if not (Path(path) / "config.json").is_file():  # an lmlab run or step folder
            model, tok, _ = load_policy(path, None, None, dev)
            acts[name] = I.lmlab_activations(model.float(), texts, tok, layers, args.reduce, args.max_examples,
                                             args.batch, args.max_length, progress=f"info: {name} activations")
            continue
        model = load_model(path, kind=args.kind).float().to(dev)
        acts[name] = I.hf_activations(
            model,
            texts,
            load_tokenizer(path),
            layers,
            args.reduce,
            args.max_examples,
            args.batch,
            args.max_length,
            progress=f"info: {name} activations",
        )
        log.debug("%s: activations %s", name, acts[name].values.shape)
    sel = I.select_models(
        acts,
        args.memorization,
        metric,
        n_bins=args.bins,
        mi_neurons_per_layer=args.mi_neurons,
        keep_arrays=True,
        progress="info: entropy and MI",
    )
    results = {
        "models": dict(zip(names, args.models)),
        "data": args.data,
        "n_texts": len(texts),
        "memorization": args.memorization,
        "layers": layers,
        "reduce": args.reduce,
        "bins": args.bins,
        "mi_neurons_per_layer": args.mi_neurons,
        "summaries": sel["summaries"],
        "ranking_entropy": sel["ranking_entropy"],
        "ranking_mi": sel["ranking_mi"],
        "metric": metric,
        "tau_entropy": sel.get("tau_entropy"),
        "tau_mi": sel.get("tau_mi"),
    }
    out = Path(args.out)
    atomic_write_json(out / "results.json", results)
    for fname, fig in (
        ("entropy.png", I.plot_entropy_boxes(sel["entropy"])),
        ("mi_density.png", I.plot_mi_density(sel["mi"])),
    ):
        atomic_write_png(out / fname, fig)
    atomic_write_text(out / "report.md", _report(results))
    print(
        f"least memorizing first ({args.memorization}), by entropy: {', '.join(sel['ranking_entropy'])}; "
        f"by MI: {', '.join(sel['ranking_mi'])}"
    )
    if metric:
        print(f"Kendall τ with {args.metric}: entropy {sel['tau_entropy']:+.3f}, MI {sel['tau_mi']:+.3f}")
    print(f"report: {out / 'report.md'}")
    return 0


def _report(res: dict) -> str:
    s, metric = res["summaries"], res["metric"]
    lines = [
        "# Information measures of neuron activations",
        "",
        f"{len(s)} models on {res['n_texts']} texts of `{res['data']}` ({res['reduce']} vector per layer; "
        f"entropy over every neuron with {res['bins']} global bins, KSG MI (k=3) over the first "
        f"{res['mi_neurons_per_layer']} neurons of each layer). Ranked for `{res['memorization']}` memorization, "
        "least memorizing first.",
        "",
        "| model | mean entropy | mean MI (off-diagonal) | "
        + ("metric | " if metric else "")
        + "rank (entropy) | "
        "rank (MI) |",
        "|---|---|---|" + ("---|" if metric else "") + "---|---|",
    ]
    for n, v in s.items():
        lines.append(
            f"| {n} | {v['mean_entropy']:.4f} | {v['mean_mi_offdiag']:.4f} | "
            + (f"{metric[n]} | " if metric else "")
            + f"{res['ranking_entropy'].index(n) + 1} | {res['ranking_mi'].index(n) + 1} |"
        )
    if metric:
        lines += [
            "",
            f"Kendall τ between each ranking and the metric: entropy {res['tau_entropy']:+.3f}, "
            f"MI {res['tau_mi']:+.3f}.",
        ]
    lines += ["", "![per-neuron entropy](entropy.png)", "", "![pairwise MI density](mi_density.png)", ""]
    return "\n".join(lines)
