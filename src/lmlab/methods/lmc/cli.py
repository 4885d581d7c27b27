"""`lmlab lmc`: linear mode connectivity of your own models of one architecture: fine-tuned classifiers (local
HF folders; --kind classifier) or language models (lmlab runs or HF causal-LM folders; --kind causal). Every
pair's barrier along the straight path between their weights, basins by spectral clustering of the barrier
matrix, and, with a diagnostic set, how the basins line up with each model's accuracy there (Juneja et al.,
2023). Writes report.md, results.json and barrier_heatmap.png."""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.inputs import read_text
from lmlab.methods.lmc import BARRIER_KINDS


def register(sub) -> None:
    p = sub.add_parser(
        "lmc", help="linear mode connectivity of your classifiers or LMs: barrier matrix and basins"
    )
    p.add_argument("models", nargs="+", help="two or more model folders of one architecture (see --kind)")
    p.add_argument(
        "--data",
        required=True,
        help='where the paths are evaluated: classifier: JSONL of {"text", optional "text_pair", integer "label"}; '
        "causal: text, one example per line (or JSONL with 'text')",
    )
    p.add_argument(
        "--diagnostic",
        default=None,
        help="optional JSONL in the same format (e.g. HANS): each model's accuracy there and its "
        "correlation with the basins' spectral axis",
    )
    p.add_argument(
        "--label-map",
        default=None,
        help="classifier: score the models on a coarser task's labels, CLASS:LABEL pairs (e.g. 0:0,1:1,2:1) or "
        "mnli3to2 (the class the models' config names 'entailment' -> 0, the other two -> 1: MNLI models on HANS)",
    )
    p.add_argument(
        "--label-map-on",
        choices=["diagnostic", "data", "both"],
        default=None,
        help="the file(s) labelled in the mapped task (default: --diagnostic when given, else --data)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--points", type=int, default=10, help="evenly spaced interpolation points per path")
    p.add_argument("--barrier", choices=BARRIER_KINDS, default="mod_bh",
                   help="mod_bh: the paper's barrier, the largest rise above the chord over every sub-segment of "
                   "the path; endpoint: above the chord between the two models only")
    p.add_argument("--metric", choices=["loss", "acc"], default="loss",
                   help="what the barrier measures along each path")
    p.add_argument("--clusters", type=int, default=2, help="number of basins to find")
    p.add_argument("--max-examples", type=int, default=512, help="examples read from --data and --diagnostic")
    p.add_argument("--batch", type=int, default=64, help="examples per forward pass")
    p.add_argument("--max-length", type=int, default=128, help="tokens kept per example")
    p.add_argument(
        "--kind",
        choices=["classifier", "causal"],
        default="classifier",
        help="classifier: HF sequence classifiers on labelled JSONL; causal: language models (lmlab "
        "runs or HF causal-LM folders) on text, one example per line (or JSONL with 'text')",
    )
    p.add_argument(
        "--tokenizer", default=None, help="causal: tokenizer file for lmlab runs without one beside them"
    )
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (default: auto, CUDA when available)")
    p.set_defaults(func=run)


def read_examples(path: str | Path, limit: int) -> tuple[list[str], list[str] | None, list[int]]:
    p = Path(path)
    texts, pairs, labels = [], [], []
    for n, line in enumerate(read_text(p, "data file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{p}:{n}: not valid JSON ({e.msg}): one JSON object a line") from None
        if not (isinstance(row, dict) and "text" in row and isinstance(row.get("label"), int)):
            raise LmlabError(f"{p}:{n}: expected a JSON object with 'text' and an integer 'label', got {line[:80]!r}")
        texts.append(str(row["text"]))
        pairs.append(row.get("text_pair"))
        labels.append(row["label"])
        if len(texts) == limit:
            break
    if not texts:
        raise LmlabError(f"{p} holds no examples")
    if any(x is None for x in pairs) and not all(x is None for x in pairs):
        raise LmlabError(f"{p}: give 'text_pair' on every line or on none")
    return texts, (None if pairs[0] is None else [str(x) for x in pairs]), labels


def make_batches(tok, examples, n_labels: int, batch: int, max_length: int, where: str) -> list:
    import torch  # heavy: imported when the command runs, not when the parser is built

    texts, pairs, labels = examples
    bad = sorted({y for y in labels if not 0 <= y < n_labels})
    if bad:
        raise LmlabError(
            f"{where}: labels {bad[:5]} are outside the models' {n_labels} classes (0..{n_labels - 1})"
        )
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(
            texts[i : i + batch],
            pairs[i : i + batch] if pairs else None,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        out.append((dict(enc), torch.tensor(labels[i : i + batch])))
    return out


def label_groups(spec: str, id2label: dict | None, n_classes: int) -> tuple[tuple[int, ...], ...]:
    """--label-map as the model classes behind each task label (groups[j]: the classes mapped to label j)."""
    if spec == "mnli3to2":
        entail = [int(i) for i, name in (id2label or {}).items() if str(name).lower() == "entailment"]
        if n_classes != 3 or len(entail) != 1:
            raise LmlabError(
                f"--label-map mnli3to2 needs 3-class models whose config names one class 'entailment' (these have "
                f"{n_classes} classes, id2label {id2label}): give the map by class, e.g. --label-map 0:0,1:1,2:1"
            )
        mapping = {i: int(i != entail[0]) for i in range(3)}
    else:
        mapping = {}
        for part in spec.split(","):
            try:
                cls, label = (int(x) for x in part.split(":"))
            except ValueError:
                raise LmlabError(
                    f"--label-map {spec}: {part!r} is not CLASS:LABEL; write e.g. 0:0,1:1,2:1 or mnli3to2"
                ) from None
            if cls in mapping:
                raise LmlabError(f"--label-map {spec}: class {cls} is mapped twice")
            mapping[cls] = label
        if sorted(mapping) != list(range(n_classes)):
            raise LmlabError(
                f"--label-map {spec}: map each of the models' {n_classes} classes 0..{n_classes - 1} exactly once"
            )
        if set(mapping.values()) != set(range(max(mapping.values()) + 1)):
            raise LmlabError(f"--label-map {spec}: the task's labels must be 0, 1, ... with each one mapped to")
    return tuple(
        tuple(c for c in range(n_classes) if mapping[c] == j) for j in range(max(mapping.values()) + 1)
    )


def logit_map_of(groups: tuple[tuple[int, ...], ...]):
    """The logit map of label groups: `three_to_two` for one class against the rest, else `merge_classes`."""
    import functools  # imported when the command runs, like the rest of this handler's imports

    from lmlab.methods.lmc import connectivity as C  # heavy (torch): imported when the command runs

    if len(groups) == 2 and len(groups[0]) == 1:
        return functools.partial(C.three_to_two, entail=groups[0][0])
    return functools.partial(C.merge_classes, groups=groups)


ARCH_KEYS = (
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "num_labels",
    "id2label",
)


def check_same_architecture(paths: list[str]) -> None:
    """Every folder holds an HF model config and weights, and all share one architecture (interpolating
    weights needs the same shapes): a clear error naming the folder and the differing setting otherwise."""
    configs = []
    for p in map(Path, paths):
        if not (p / "config.json").is_file():
            raise LmlabError(
                f"{p} is not a Hugging Face model directory (no config.json): pass folders saved with "
                "save_pretrained"
            )
        if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
            raise LmlabError(f"{p} holds no weights (*.safetensors or *.bin)")
        configs.append(json.loads((p / "config.json").read_text()))
    for p, cfg in zip(paths[1:], configs[1:]):
        diff = [k for k in ARCH_KEYS if cfg.get(k) != configs[0].get(k)]
        if diff:
            raise LmlabError(
                f"{p} has another architecture than {paths[0]} ({diff[0]}: {cfg.get(diff[0])!r} vs "
                f"{configs[0].get(diff[0])!r}); linear mode connectivity needs one architecture"
            )


def _classifier_setup(args, dev):
    """(template, model folders loaded lazily by barrier_matrix, batches of a data file, load model i)."""
    from lmlab.hf import load_model, load_tokenizer  # heavy (torch): imported when the command runs

    check_same_architecture(args.models)
    template = load_model(args.models[0], kind="classifier").float().to(dev).eval()
    tok = load_tokenizer(args.models[0])
    n_labels = template.config.num_labels

    def batches_of(path, labels: int | None = None):  # labels: those of a --label-map task
        examples = read_examples(path, args.max_examples)
        return make_batches(tok, examples, labels or n_labels, args.batch, args.max_length, path)

    def load(i):
        return load_model(args.models[i], kind="classifier").float().to(dev)

    return template, [Path(m) for m in args.models], batches_of, load


def _causal_setup(args, dev):
    """The same for language models (lmlab runs or HF causal-LM folders): next-token loss on text lines. The
    models are held in memory, so this suits small LMs."""
    # heavy imports (torch) when the command runs, not when the parser is built
    import copy

    from lmlab.loading import lm_batch, load_policy, read_texts

    loaded = [load_policy(m, None, args.tokenizer, dev) for m in args.models]
    codec = loaded[0][1]
    sds = [m.state_dict() for m, _, _ in loaded]  # evaluated through a copy (template): read, never written
    shapes = {k: tuple(v.shape) for k, v in sds[0].items()}
    for path, sd in zip(args.models[1:], sds[1:]):
        other = {k: tuple(v.shape) for k, v in sd.items()}
        if other != shapes:
            first = sorted(set(shapes) ^ set(other)) or [k for k in shapes if shapes[k] != other[k]]
            raise LmlabError(
                f"{path} has another architecture than {args.models[0]} (first difference: "
                f"{first[0]}); linear mode connectivity needs one architecture"
            )
    template = copy.deepcopy(loaded[0][0]).float().eval()

    def batches_of(path, labels=None):
        ids, tgt = lm_batch(
            codec, read_texts(path, args.max_examples), args.max_examples, args.max_length, "cpu", path
        )
        return [(ids[i : i + args.batch], tgt[i : i + args.batch]) for i in range(0, len(ids), args.batch)]

    def load(i):
        return loaded[i][0].float()

    return template, sds, batches_of, load


def run(args) -> int:
    # heavy imports (numpy, torch) when the command runs, not when the parser is built
    import numpy as np

    from lmlab.loading import model_names
    from lmlab.methods.lmc import connectivity as C
    from lmlab.progress import track
    from lmlab.utils import atomic_write_json, atomic_write_png, atomic_write_text, get_device

    if len(args.models) < 2:
        raise LmlabError("lmc needs two or more model folders")
    if not 2 <= args.clusters <= len(args.models):
        raise LmlabError(f"--clusters must be between 2 and the number of models ({len(args.models)})")
    if args.points < 3:
        raise LmlabError("--points must be >= 3 (the endpoints and at least one point between)")
    on = args.label_map_on or ("diagnostic" if args.diagnostic else "data")
    if args.label_map is None and args.label_map_on:
        raise LmlabError("--label-map-on needs --label-map")
    if args.label_map is not None and args.kind != "classifier":
        raise LmlabError("--label-map maps classifier labels: it applies to --kind classifier only")
    if args.label_map is not None and on != "data" and not args.diagnostic:
        raise LmlabError(f"--label-map-on {on} needs a --diagnostic file")
    groups = data_map = diag_map = None
    if args.label_map is not None:  # checked against the models' config before any weights load
        from transformers import AutoConfig  # heavy: imported when the command runs

        check_same_architecture(args.models)
        config = AutoConfig.from_pretrained(args.models[0])
        groups = label_groups(args.label_map, config.id2label, config.num_labels)
    dev = get_device(args.device)
    out = Path(args.out)
    setup = _causal_setup if args.kind == "causal" else _classifier_setup
    template, models, batches_of, load = setup(args, dev)
    if groups is not None:
        data_map = logit_map_of(groups) if on in ("data", "both") else None
        diag_map = logit_map_of(groups) if on in ("diagnostic", "both") else None
    data = batches_of(args.data, len(groups) if data_map else None)
    names = model_names(args.models)
    res = C.barrier_matrix(
        template,
        dict(zip(names, models)),
        data,
        n_points=args.points,
        barrier=args.barrier,
        metric=args.metric,
        logit_map=data_map,
        cache=out / "curves.json",
        cache_tag=f"kind={args.kind},max_length={args.max_length}",
        progress="lmc",
    )
    D = np.asarray(res["D"], dtype=np.float64)
    basins = C.cluster_basins(D, k=args.clusters)
    within, between = C.within_between(D, basins)
    if len(set(basins.tolist())) == len(names):
        within = None  # every basin holds one model: no pair within a basin
    diag, r = None, None
    if args.diagnostic:
        dbatches = C.prepare_batches(batches_of(args.diagnostic, len(groups) if diag_map else None), dev)
        diag = [C.evaluate(load(i), dbatches, diag_map)["acc"]
                for i in track(range(len(names)), "lmc: diagnostic", unit="model")]
        r = C.axis_correlation(D, diag) if len(names) >= 3 else None

    results = {
        "models": dict(zip(names, args.models)),
        "data": args.data,
        "kind": args.kind,
        "n_examples": sum(len(y) for _, y in data),
        "points": args.points,
        "barrier": args.barrier,
        "metric": args.metric,
        "D": D.tolist(),
        "endpoints": res["endpoints"],
        "basins": [int(b) for b in basins],
        "within_barrier": within,
        "between_barrier": between,
        "diagnostic": args.diagnostic,
        "label_map": None if groups is None else {"map": args.label_map, "on": on, "groups": groups},
        "diagnostic_acc": dict(zip(names, diag)) if diag else None,
        "axis_correlation": r,
    }
    atomic_write_json(out / "results.json", results)
    fig = C.plot_barrier_heatmap(
        D, names, order=diag, labels=list(basins), title=f"{args.metric} barrier ({args.barrier})"
    )
    atomic_write_png(out / "barrier_heatmap.png", fig)
    atomic_write_text(out / "report.md", _report(results, names))
    print(
        f"{len(names)} models, {len(names) * (len(names) - 1) // 2} paths on {results['n_examples']} examples: "
        f"mean {args.metric} barrier within basins {_num(within)}, between {_num(between)}"
    )
    if r is not None:
        print(f"spectral axis vs diagnostic accuracy: r = {r:+.3f}")
    print(f"report: {out / 'report.md'}")
    return 0


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _report(res: dict, names: list[str]) -> str:
    diag = res["diagnostic_acc"]
    lines = [
        "# Linear mode connectivity",
        "",
        f"{len(names)} models, {res['points']} points per path, {res['metric']} barrier `{res['barrier']}` on "
        f"{res['n_examples']} examples of `{res['data']}`. Mean barrier within basins {_num(res['within_barrier'])}, "
        f"between basins {_num(res['between_barrier'])}."
        + (
            f" Labels of the {res['label_map']['on']} file: model classes {res['label_map']['groups']} "
            f"(`--label-map {res['label_map']['map']}`)."
            if res["label_map"]
            else ""
        )
        + (
            f" Spectral axis vs diagnostic accuracy: r = {res['axis_correlation']:+.3f}."
            if res["axis_correlation"] is not None
            else ""
        ),
        "",
        "| model | folder | loss | accuracy | " + ("diagnostic accuracy | " if diag else "") + "basin |",
        "|---|---|---|---|" + ("---|" if diag else "") + "---|",
    ]
    for i, n in enumerate(names):
        e = res["endpoints"][n]
        lines.append(
            f"| {n} | `{res['models'][n]}` | {e['loss']:.4f} | {e['acc']:.4f} | "
            + (f"{diag[n]:.4f} | " if diag else "")
            + f"{res['basins'][i]} |"
        )
    lines += [
        "",
        "**Barrier matrix**",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    lines += [f"| {n} | " + " | ".join(f"{x:.4f}" for x in row) + " |" for n, row in zip(names, res["D"])]
    lines += ["", "![barrier heatmap, models ordered by basin](barrier_heatmap.png)", ""]
    return "\n".join(lines)
