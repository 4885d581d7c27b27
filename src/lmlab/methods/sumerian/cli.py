"""`lmlab sumerian …`: tag and translate raw Sumerian lines, train the models, explain translations,
download the data."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.runlock import RunLock

DEFAULT_MODELS = "runs/sumerian"
log = logging.getLogger(__name__)


def _read_input(path: str) -> list[str]:
    from lmlab.methods.sumerian.loaders import read_lines  # imported when the command runs, not for --help

    if path == "-":
        return sys.stdin.read().splitlines()
    return read_lines(path)


def _emit(text: str, out: str | None) -> None:
    from lmlab.utils import atomic_write_text  # torch: imported when the command runs, not for --help

    if out:
        atomic_write_text(out, text)
        print(f"wrote {out}")
    else:
        sys.stdout.write(text)


def cmd_tag(args) -> int:
    """`lmlab sumerian tag`: raw lines to CoNLL with POS and NER (trained taggers or --hf-model folders)."""
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.methods.sumerian.pipeline import SumerianPipeline

    lines = _read_input(args.file)  # before loading the models: a wrong path fails fast
    if not args.hf_model:
        pipe = SumerianPipeline.load(args.models, args.tagger, with_mt=False, device=args.device)
        _emit(pipe.run(lines, translate=False), args.out)
        return 0
    from lmlab.methods.sumerian.hf_models import HFTagger  # heavy: only with --hf-model
    from lmlab.methods.sumerian.loaders import raw_lines_to_tokens
    from lmlab.methods.sumerian.pipeline import to_conll

    taggers = {}
    for path in args.hf_model:
        t = HFTagger.from_pretrained(path, args.device)
        if t.column in taggers:
            raise LmlabError(f"two --hf-model folders tag {t.column.upper()} ({taggers[t.column][0]} and {path}): "
                             "give one POS tagger and one NER (B-/I-/O labels) tagger")
        taggers[t.column] = (path, t)
    sents = raw_lines_to_tokens(lines)
    pipe = None
    if len(taggers) < 2 and (Path(args.models) / "manifest.json").is_file():
        pipe = SumerianPipeline.load(args.models, args.tagger, with_mt=False, device=args.device)
    cols = {}
    for col in ("pos", "ner"):
        if col in taggers:
            cols[col] = taggers[col][1].predict(sents)
        elif pipe is not None:
            cols[col] = getattr(pipe, col).predict(sents)
        else:
            log.info("no %s tagger (no --hf-model for it, no trained models in %s): its column is '_'",
                     col.upper(), args.models)
            cols[col] = [["_"] * len(w) for w in sents]
    _emit(to_conll(sents, cols["pos"], cols["ner"]), args.out)
    return 0


def cmd_translate(args) -> int:
    """`lmlab sumerian translate`: raw lines to CoNLL with tags and translation, or English lines only."""
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.methods.sumerian.loaders import raw_lines_to_tokens
    from lmlab.methods.sumerian.pipeline import SumerianPipeline

    if args.beam < 1:
        raise LmlabError(f"--beam must be >= 1, got {args.beam}")
    lines = _read_input(args.file)
    translator = None
    if args.hf_model:
        from lmlab.methods.sumerian.translate import HFTranslator  # heavy: only with --hf-model

        translator = HFTranslator.from_pretrained(args.hf_model, args.device)
    if args.format == "text" and translator is not None:  # English only: no taggers, no --models folder needed
        pipe = None
    else:
        pipe = SumerianPipeline.load(args.models, args.tagger, with_mt=translator is None, device=args.device)
        pipe.translator = translator or pipe.translator
    if args.format == "text":
        sents = raw_lines_to_tokens(lines)
        tr = translator or pipe.translator
        _emit("".join(t + "\n" for t in tr.translate([" ".join(s) for s in sents], beam=args.beam)), args.out)
    else:
        _emit(pipe.run(lines, translate=True, beam=args.beam), args.out)
    return 0


def cmd_train(args) -> int:
    """`lmlab sumerian train`: train the taggers and translator into --out (resumable)."""
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.methods.sumerian.loaders import PARALLEL_CORPORA, data_dir
    from lmlab.methods.sumerian.pipeline import train_models
    from lmlab.methods.sumerian.taggers import TAGGERS, BiLSTMCRFConfig
    from lmlab.methods.sumerian.translate import MTConfig
    from lmlab.train import StopOnSigint, StopRequested

    taggers = [t.strip() for t in args.taggers.split(",") if t.strip()]
    bad = [t for t in taggers if t not in TAGGERS]
    if bad or not taggers:
        raise LmlabError(f"unknown tagger(s) {bad or args.taggers!r}; choose from {', '.join(TAGGERS)}")
    if args.mt_steps < 1 and not args.no_mt:
        raise LmlabError("--mt-steps must be >= 1 (or pass --no-mt)")
    mt = (
        None
        if args.no_mt
        else MTConfig(
            steps=args.mt_steps,
            d_model=args.mt_d_model,
            d_ff=4 * args.mt_d_model,
            src_vocab_size=args.mt_vocab,
            tgt_vocab_size=args.mt_vocab,
            seed=args.seed,
        )
    )
    if args.save_every < 0:
        raise LmlabError("--save-every must be >= 0 (0: save only on Ctrl-C)")
    if (mt is not None or args.hf_model) and args.mt_corpus not in PARALLEL_CORPORA:
        raise LmlabError(f"unknown --mt-corpus {args.mt_corpus!r}: use one of {', '.join(PARALLEL_CORPORA)}")
    root = data_dir(args.data)
    try:
        # one writer per models folder, taken before anything in it is read or written
        with RunLock(args.out, "lmlab sumerian train", force=args.force_unlock), StopOnSigint() as stop:
            scores = train_models(
                root,
                args.out,
                taggers,
                args.limit or None,
                args.augment,
                args.crf_iters,
                BiLSTMCRFConfig(epochs=args.bilstm_epochs, seed=args.seed),
                mt,
                args.mt_corpus,
                hf_model=args.hf_model,
                hf_steps=args.hf_steps,
                device=args.device,
                resume=args.resume,
                stop=stop,
                save_every=args.save_every,
            )
    except StopRequested:
        print(f"interrupted: the finished models and the translator's last step are saved in {args.out}; "
              "continue exactly with the same command and --resume", file=sys.stderr)
        return 130
    print(f"models saved in {args.out}")
    for k, v in scores.items():
        print(
            f"  {k}: "
            + ", ".join(f"{m}={x:.3f}" if isinstance(x, float) else f"{m}={x}" for m, x in v.items())
        )
    return 0


def _aligned_references(path: str, n_input: int, kept: list[int]) -> list[str]:
    """The reference line of each kept input line (`kept`: their 0-based indices among the `n_input` input
    lines). The reference file is either line-aligned with the input file (same number of lines: the lines
    facing ATF structure lines and blank lines are ignored) or holds exactly one line per kept input line."""
    refs = _read_input(path)
    if len(refs) == n_input:
        pairs = [(i, refs[i]) for i in kept]
    elif len(refs) == len(kept):
        pairs = list(zip(kept, refs))
    else:
        raise LmlabError(
            f"--reference {path} has {len(refs)} lines, but the input has {n_input} lines of which "
            f"{len(kept)} are Sumerian text (ATF structure lines `&@#$` and blank lines are skipped): give "
            f"either one reference per input line ({n_input}) or one per text line ({len(kept)})"
        )
    blank = [i + 1 for i, r in pairs if not r.strip()]
    if blank:
        raise LmlabError(
            f"--reference {path}: no reference for input line(s) {', '.join(map(str, blank[:10]))} "
            "(blank reference line)"
        )
    return [r for _, r in pairs]


def cmd_explain(args) -> int:
    """`lmlab sumerian explain`: attribution heatmaps and HTML views of each line's translation."""
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.methods.sumerian.interpret import save_heatmap, save_html
    from lmlab.methods.sumerian.loaders import indexed_raw_tokens
    from lmlab.methods.sumerian.pipeline import explain_translation
    from lmlab.methods.sumerian.translate import Translator

    raw = _read_input(args.file)
    kept = indexed_raw_tokens(raw)
    refs = _aligned_references(args.reference, len(raw), [i for i, _ in kept]) if args.reference else None
    kept, refs = kept[: args.max_lines], refs[: args.max_lines] if refs else None
    sents = [" ".join(toks) for _, toks in kept]
    if args.hf_model:
        from lmlab.methods.sumerian.hf_models import (  # heavy
            explain_hf_translation,
            hf_translator_for_explain,
        )

        tr, explain = hf_translator_for_explain(args.hf_model, args.device), explain_hf_translation
    else:
        tr, explain = Translator.load(Path(args.models) / "mt", args.device), explain_translation
    out = Path(args.out)
    for i, line in enumerate(sents):
        mats, src, tgt = explain(tr, line, refs[i] if refs else None, n_steps=args.steps)
        for m, mat in mats.items():
            save_heatmap(out / f"line{i + 1}_{m}.png", mat, src, tgt, f"line {i + 1}: {m}")
        save_html(out / f"line{i + 1}.html", mats, src, tgt, f"line {i + 1}: {line}")
    print(f"wrote heatmaps (PNG) and HTML views for {len(sents)} line(s) to {out}")
    return 0


def cmd_download(args) -> int:
    """`lmlab sumerian download`: fetch the Sumerian data into --to."""
    from lmlab.methods.sumerian.loaders import download  # imported when the command runs, not for --help

    dest = download(args.to, overwrite=args.overwrite)
    print(f"data in {dest}; use --data {args.to} (or LMLAB_DATA={args.to})")
    return 0


def register(sub) -> None:
    """Add `lmlab sumerian` and its actions to the subcommand parsers `sub`."""
    p = sub.add_parser("sumerian", help="Sumerian POS/NER tagging, translation, explanations, data download")
    s = p.add_subparsers(dest="sumerian_command", metavar="ACTION")
    s.required = True

    def models_args(q, tagger=True):
        q.add_argument(
            "--models", default=DEFAULT_MODELS, help=f"trained models folder (default {DEFAULT_MODELS})"
        )
        if tagger:
            q.add_argument(
                "--tagger", default=None, help="hmm | crf | bilstm_crf (default: the first trained)"
            )
        q.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
        q.add_argument("--out", default=None, help="output file (default: stdout)")

    q = s.add_parser(
        "tag", help="raw Sumerian lines (one per line, ATF line numbers allowed) → CoNLL with POS/NER"
    )
    q.add_argument("file", help="input text file, or - for stdin")
    models_args(q)
    q.add_argument("--hf-model", action="append", default=None,
                   help="a local HF token-classification folder as the POS tagger, or as the NER tagger when its "
                   "labels are B-/I-/O (repeatable: one of each); a column no folder serves comes from --models "
                   "when it holds trained taggers, else is '_'")
    q.set_defaults(func=cmd_tag)

    q = s.add_parser("translate", help="raw Sumerian lines → CoNLL with POS/NER and the English translation")
    q.add_argument("file", help="input text file, or - for stdin")
    models_args(q)
    q.add_argument("--beam", type=int, default=4, help="beam width of the translator (1: greedy)")
    q.add_argument("--format", choices=("conll", "text"), default="conll", help="text: English lines only")
    q.add_argument(
        "--hf-model", default=None, help="translate with a local fine-tuned HF seq2seq model (T5, BART, Marian) "
        "instead; with --format text no --models folder is needed"
    )
    q.set_defaults(func=cmd_translate)

    q = s.add_parser("train", help="train the taggers and translator used by tag/translate")
    q.add_argument("--data", default=None, help="data root holding sumerian/ (default: $LMLAB_DATA)")
    q.add_argument("--out", default=DEFAULT_MODELS, help="folder of the trained models (tag, translate and "
                   "explain read it as --models)")
    q.add_argument(
        "--taggers", default="crf,hmm", help="comma list of hmm, crf, bilstm_crf (tag and translate use the first)"
    )
    q.add_argument(
        "--limit", type=int, default=0, help="use only the first N training sentences/pairs (0 = all)"
    )
    q.add_argument("--augment", type=int, default=1, help="entity-swap copies per sentence with entities")
    q.add_argument("--crf-iters", type=int, default=200, help="training iterations of the CRF tagger")
    q.add_argument("--bilstm-epochs", type=int, default=3, help="training epochs of the BiLSTM-CRF tagger")
    q.add_argument("--mt-corpus", default="ur3_line", help="ur3_line | ur3_sent | all_sent")
    q.add_argument("--mt-steps", type=int, default=3000, help="training steps of the from-scratch translator")
    q.add_argument("--mt-d-model", type=int, default=128, help="width of the translator (its MLP: 4x)")
    q.add_argument("--mt-vocab", type=int, default=2000, help="vocabulary size of each side of the translator")
    q.add_argument("--no-mt", action="store_true", help="train the taggers only")
    q.add_argument(
        "--hf-model", default=None, help="also fine-tune this local HF seq2seq model (→ OUT/hf_mt)"
    )
    q.add_argument("--hf-steps", type=int, default=500, help="fine-tuning steps of --hf-model")
    q.add_argument("--seed", type=int, default=0, help="random seed (taggers, translator)")
    q.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    q.add_argument("--resume", action="store_true",
                   help="continue an interrupted training in --out exactly: finished models are kept, a translator "
                        "continues from its last saved step (same command otherwise)")
    q.add_argument("--save-every", type=int, default=0,
                   help="also save the translator's state every N steps (0: only on Ctrl-C)")
    q.add_argument("--force-unlock", action="store_true",
                   help="take over a models folder locked from another host (only when that training is gone)")
    q.set_defaults(func=cmd_train)

    q = s.add_parser("explain", help="attribution heatmaps (PNG + HTML) of the translation of each line")
    q.add_argument("file", help="input text file, or - for stdin")
    q.add_argument("--models", default=DEFAULT_MODELS, help="trained models folder (its mt/ translator is explained)")
    q.add_argument(
        "--reference",
        default=None,
        help="English reference translations to explain (default: the model's own), either line-aligned "
        "with FILE (lines facing ATF structure or blank lines are ignored) or one per Sumerian text line",
    )
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--max-lines", type=int, default=20, help="explain at most this many lines")
    q.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
    q.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    q.add_argument("--hf-model", default=None, help="explain a local HF seq2seq translator (T5, BART, Marian) "
                   "instead of --models' mt/ (a decoder-only model cannot be: the attributions need an encoder)")
    q.set_defaults(func=cmd_explain)

    q = s.add_parser(
        "download", help="fetch the Sumerian data from the public CDLI repositories (needs internet)"
    )
    q.add_argument("--to", required=True, help="data root; files go to DIR/sumerian/")
    q.add_argument("--overwrite", action="store_true", help="replace files already in DIR/sumerian/")
    q.set_defaults(func=cmd_download)
