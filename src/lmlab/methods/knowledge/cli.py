"""`lmlab kg ...`: inspect, edit and query a knowledge graph file.

    lmlab kg stats --kg facts.jsonl
    lmlab kg retrieve --kg facts.jsonl --query "trobex was born in" --method bm25 -k 3
    lmlab kg add --kg facts.jsonl --head trobex --relation born_in --tail vantor
    lmlab kg update --kg facts.jsonl --head trobex --relation born_in --tail pelmor
    lmlab kg remove --kg facts.jsonl --head trobex --relation born_in --tail pelmor
    lmlab kg paths --kg conceptnet/ --sentence "a dog can bark at a cat"
    lmlab kg convert --kg conceptnet/new_omcs_test.txt --out facts.jsonl
    lmlab kg train-reader --kg facts.jsonl --out reader/ --steps 300
    lmlab kg answer reader/ --kg facts.jsonl --question "trobex was born in"
    lmlab kg generate --kg facts.jsonl --sentences sentences.txt --out generator/ -k 3

--kg takes a .jsonl/.tsv/.txt file of triples or a ConceptNet OMCS folder (read-only). Edits write the file back
in its own format (.tsv/.txt stay head<TAB>relation<TAB>tail, JSONL stays JSONL); files that cannot be written
back unchanged (ConceptNet OMCS `rel head tail label`, LAMA probe files) are refused: `kg convert` them first.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.errors import LmlabError


def load_kg(path: str):
    """A KG file or ConceptNet OMCS folder; a labelled 4-column TSV file is read in OMCS order (rel head tail
    label, true rows only), as `kg convert` reads it."""
    # imported when the command runs, not when the parser is built
    from lmlab.methods.knowledge.kg import TSV_SUFFIXES, KnowledgeGraph, load_conceptnet, tsv_order

    p = Path(path)
    if p.is_dir():
        return load_conceptnet(p)
    if p.is_file() and p.suffix in TSV_SUFFIXES:
        return KnowledgeGraph.from_tsv(p, order=tsv_order(p))
    return KnowledgeGraph.load(p)


def cmd_stats(args) -> int:
    """`lmlab kg stats`: print the counts of triples, entities and relations, and each relation's template."""
    kg = load_kg(args.kg)
    print(f"{len(kg)} triples, {len(kg.entities())} entities, {len(kg.relations())} relations")
    for r in kg.relations():
        n = sum(1 for t in kg if t.relation == r)
        print(f"  {r}: {n}  template: {kg.template(r)}")
    return 0


def cmd_retrieve(args) -> int:
    """`lmlab kg retrieve`: print the linked entities and the top-k triples for --query."""
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.methods.knowledge.retrieval import EntityLinker, Retriever

    kg = load_kg(args.kg)
    if not len(kg):
        raise LmlabError(f"knowledge graph {args.kg} holds no triples: add facts first (`lmlab kg add --kg "
                         f"{args.kg} --head ... --relation ... --tail ...`)")
    linker = EntityLinker(kg)
    print("linked: " + (", ".join(m.entity for m in linker.link(args.query)) or "(none; ranking all triples)"))
    for s in Retriever(kg, args.method, args.k, linker=linker).retrieve(args.query):
        print(f"{s.score:8.3f}  {s.triple.head}\t{s.triple.relation}\t{s.triple.tail}\t({kg.verbalise(s.triple)})")
    return 0


def _edit(args, op: str) -> int:
    p = Path(args.kg)
    if p.is_dir():
        raise LmlabError(f"{p} is a folder; edits need a .jsonl or .tsv KG file (create one with `lmlab kg add`)")
    from lmlab.methods.knowledge.kg import KnowledgeGraph, check_rewritable  # imported when the command runs

    check_rewritable(p)  # never rewrite a file into another format (that would corrupt it)
    kg = KnowledgeGraph.load(p) if p.exists() else KnowledgeGraph()
    if op == "add":
        kg.add(args.head, args.relation, args.tail)
        print(f"added ({args.head}, {args.relation}, {args.tail})")
    elif op == "update":
        old = kg.update(args.head, args.relation, args.tail)
        print(f"({args.head}, {args.relation}) -> {args.tail}; replaced: {', '.join(t.tail for t in old) or 'nothing'}")
    elif not kg.remove(args.head, args.relation, args.tail):
        raise LmlabError(f"({args.head}, {args.relation}, {args.tail}) is not in {p}; see `lmlab kg retrieve`")
    else:
        print(f"removed ({args.head}, {args.relation}, {args.tail})")
    kg.save(p)
    return 0


def cmd_convert(args) -> int:
    """`lmlab kg convert`: copy a KG (TSV, ConceptNet OMCS, LAMA, JSONL) into an editable file."""
    # imported when the command runs, not when the parser is built
    from lmlab.methods.knowledge.kg import TSV_SUFFIXES, KnowledgeGraph, load_conceptnet, tsv_order

    src, out = Path(args.kg), Path(args.out)
    if out.resolve() == src.resolve():
        raise LmlabError("--out must differ from --kg (convert never rewrites its input)")
    keep = None if args.keep_label == "all" else args.keep_label
    if src.is_dir():
        kg = load_conceptnet(src, keep_label=keep)
    elif not src.is_file():
        raise LmlabError(f"knowledge graph file {src} not found")
    elif src.suffix in TSV_SUFFIXES:
        order = args.order or tsv_order(src)
        kg = KnowledgeGraph.from_tsv(src, order=order, keep_label=keep)
        print(f"read {src} as TSV columns {'/'.join({'h': 'head', 'r': 'relation', 't': 'tail'}[c] for c in order)}"
              + ("" if keep is None else f", keeping rows labelled {keep} when a 4th column is present"))
    else:
        kg = KnowledgeGraph.load(src)
    kg.save(out)
    print(f"wrote {len(kg)} triples to {out}")
    return 0


def cmd_paths(args) -> int:
    """`lmlab kg paths`: print the KG paths joining the entities --sentence mentions."""
    # heavy imports (sklearn, torch) when the command runs, not when the parser is built
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from lmlab.methods.knowledge.coseco import linearise, sentence_paths
    from lmlab.methods.knowledge.retrieval import EntityLinker

    kg = load_kg(args.kg)
    sp = sentence_paths(kg, EntityLinker(kg, skip=ENGLISH_STOP_WORDS, min_chars=3), args.sentence, args.max_hops)
    print("entities: " + (", ".join(dict.fromkeys(m.entity for m in sp.mentions)) or "(none)"))
    for p in sp.paths:
        print(linearise(p))
    return 0


def _size(args):
    from lmlab.methods.knowledge.own import ModelSize  # imported when the command runs

    return ModelSize(args.tokenizer, args.d_model, args.n_layers, args.n_heads, args.seq_len, args.vocab_size)


def cmd_train_reader(args) -> int:
    """`lmlab kg train-reader`: train an LM-CORE reader on the KG's facts into --out."""
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.methods.knowledge.own import train_kg_reader
    from lmlab.runlock import RunLock
    from lmlab.utils import get_device

    kg = load_kg(args.kg)
    with RunLock(args.out, "lmlab kg train-reader", force=args.force_unlock):
        train_kg_reader(kg, args.out, args.steps, args.k, args.batch, args.lr, args.seed, size=_size(args),
                        hf_model=args.hf_model, device=get_device(args.device))
    print(f"reader saved in {args.out}; ask it with `lmlab kg answer {args.out} --kg {args.kg} --question ...`")
    return 0


def _lines(args, flag: str, files: str) -> list[str]:
    from lmlab.inputs import read_lines  # imported when the command runs

    got = list(getattr(args, flag) or [])
    if getattr(args, files):
        got += read_lines(getattr(args, files), f"--{files} file")
    return [g for g in got if g.strip()]


def _write_jsonl(out: str | None, name: str, rows: list[dict]) -> None:
    if out is None:
        return
    from lmlab.runlock import RunLock
    from lmlab.utils import atomic_write_text

    with RunLock(out, f"lmlab kg ({name})"):
        atomic_write_text(Path(out) / name, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {Path(out) / name}")


def cmd_answer(args) -> int:
    """`lmlab kg answer`: answer each question with the reader and the facts retrieved from --kg."""
    from lmlab.methods.knowledge.own import answer_questions, load_kg_model  # imported when the command runs

    questions = _lines(args, "question", "questions")
    if not questions:
        raise LmlabError("no question: pass --question TEXT (repeatable) or --questions FILE (one per line)")
    reader, cfg = load_kg_model(args.reader, "reader")
    kg = load_kg(args.kg)
    rows = []
    for q, (ans, facts) in zip(questions, answer_questions(reader, kg, questions, args.method, args.k or cfg["k"])):
        print(f"{q} -> {ans}")
        for t in facts:
            print(f"    {t.head}\t{t.relation}\t{t.tail}")
        rows.append({"question": q, "answer": ans, "facts": [[t.head, t.relation, t.tail] for t in facts]})
    _write_jsonl(args.out, "answers.jsonl", rows)
    return 0


def cmd_generate(args) -> int:
    """`lmlab kg generate`: train a CoSe-Co generator into --out once, then write k paths per sentence."""
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.inputs import read_lines
    from lmlab.methods.knowledge.coseco import linearise
    from lmlab.methods.knowledge.own import holds_model, load_kg_model, train_kg_generator
    from lmlab.runlock import RunLock
    from lmlab.utils import get_device

    out = Path(args.out)
    with RunLock(out, "lmlab kg generate", force=args.force_unlock):
        if holds_model(out):
            print(f"using the generator in {out} (trained before; a new --out trains a new one)")
        else:
            if not args.sentences:
                raise LmlabError(f"{out} holds no generator yet: pass --sentences FILE (one sentence a line) to "
                                 "train one on the KG paths those sentences mention")
            train_kg_generator(load_kg(args.kg), read_lines(args.sentences, "--sentences file"), out, args.steps,
                               args.batch, args.lr, args.seed, max_hops=args.max_hops, size=_size(args),
                               hf_model=args.hf_model, device=get_device(args.device))
        gen, _ = load_kg_model(out, "generator", get_device(args.device))
        sentences = _lines(args, "sentence", "input") or (read_lines(args.sentences, "--sentences file")
                                                          if args.sentences else [])
        if not sentences:
            raise LmlabError("no sentence to generate paths for: pass --sentence TEXT or --input FILE")
        rows = []
        for s, paths in zip(sentences, gen.generate(sentences, k=args.k)):
            print(s)
            texts = [linearise(p) for p in paths]
            for t in texts:
                print(f"    {t or '(no path)'}")
            rows.append({"sentence": s, "paths": texts})
        _write_jsonl(str(out), "paths.jsonl", rows)
    return 0


def _model_args(s) -> None:
    s.add_argument("--steps", type=int, default=300, help="training steps")
    s.add_argument("--batch", type=int, default=16, help="examples per step")
    s.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    s.add_argument("--seed", type=int, default=0, help="seed of the model and the example order")
    s.add_argument("--tokenizer", default="char", choices=["char", "bpe"],
                   help="char (any text; unseen characters read as '?') or bpe (trained on the KG's text)")
    s.add_argument("--vocab-size", type=int, default=800, help="BPE vocabulary size")
    s.add_argument("--d-model", type=int, default=64, help="width of the lmlab GPT")
    s.add_argument("--n-layers", type=int, default=2, help="layers of the lmlab GPT")
    s.add_argument("--n-heads", type=int, default=4, help="attention heads")
    s.add_argument("--seq-len", type=int, default=256, help="longest input in tokens (knowledge is cut to fit)")
    s.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    s.add_argument("--force-unlock", action="store_true",
                   help="take over --out even when another host's lmlab holds it")


def register(sub) -> None:
    """Add `lmlab kg` and its operations to the subcommand parsers `sub`."""
    p = sub.add_parser("kg", help="knowledge graph: stats, retrieve, add/update/remove facts, sentence paths")
    ops = p.add_subparsers(dest="kg_command", metavar="OP")
    ops.required = True

    s = ops.add_parser("stats", help="count triples, entities and relations")
    s.add_argument("--kg", required=True, help="knowledge graph: a .jsonl/.tsv/.txt file of triples or a ConceptNet OMCS folder")
    s.set_defaults(func=cmd_stats)

    s = ops.add_parser("retrieve", help="top-k triples for a query (entity linking + ranking)")
    s.add_argument("--kg", required=True, help="knowledge graph: a .jsonl/.tsv/.txt file of triples or a ConceptNet OMCS folder")
    s.add_argument("--query", required=True, help="the text to find facts for")
    s.add_argument("--method", default="bm25", choices=["bm25", "dense", "entity", "random"],
                   help="ranking of the linked entities' triples: bm25 (lexical), dense (MiniLM cosine), entity "
                   "(unranked), random (any triples)")
    s.add_argument("-k", type=int, default=3, help="triples to return")
    s.set_defaults(func=cmd_retrieve)

    for op, help_ in (("add", "add a fact"), ("update", "replace the (head, relation) fact's tail"),
                      ("remove", "remove a fact")):
        s = ops.add_parser(op, help=help_)
        s.add_argument("--kg", required=True, help="the .jsonl or .tsv KG file to edit (created when missing)")
        s.add_argument("--head", required=True, help="head entity")
        s.add_argument("--relation", required=True, help="relation name")
        s.add_argument("--tail", required=True, help="tail entity")
        s.set_defaults(func=lambda a, _op=op: _edit(a, _op))

    s = ops.add_parser("convert", help="copy a KG (TSV, ConceptNet OMCS, LAMA, JSONL) into an editable .jsonl/.tsv")
    s.add_argument("--kg", required=True, help="the KG to copy: a TSV/.txt file, a ConceptNet OMCS folder, a LAMA "
                   "or JSONL file")
    s.add_argument("--out", required=True, help=".jsonl (facts, templates, aliases) or .tsv/.txt (facts only)")
    s.add_argument("--order", default=None, choices=["hrt", "rht"],
                   help="TSV column order (default: rht for labelled 4-column files such as ConceptNet OMCS, else hrt)")
    s.add_argument("--keep-label", default="1", help="with a 4th (label) column keep rows with this label ('all': "
                                                      "every row)")
    s.set_defaults(func=cmd_convert)

    s = ops.add_parser("paths", help="KG paths connecting the entities a sentence mentions (CoSe-Co pairs)")
    s.add_argument("--kg", required=True, help="knowledge graph: a .jsonl/.tsv/.txt file of triples or a ConceptNet OMCS folder")
    s.add_argument("--sentence", required=True, help="the sentence whose entities the paths connect")
    s.add_argument("--max-hops", type=int, default=2, help="longest path, in KG edges")
    s.set_defaults(func=cmd_paths)

    kg_help = "knowledge graph: a .jsonl/.tsv/.txt file of triples, a LAMA file or a ConceptNet OMCS folder"
    s = ops.add_parser("train-reader", help="train an LM-CORE reader (a small lmlab GPT) to read your KG's facts")
    s.add_argument("--kg", required=True, help=kg_help)
    s.add_argument("--out", required=True, help="new folder for the reader (checkpoint + tokenizer)")
    s.add_argument("-k", type=int, default=3, help="facts in the reader's input: the gold one among k-1 others")
    s.add_argument("--hf-model", default=None, help="fine-tune this local HF causal LM folder as the reader instead "
                   "of a fresh lmlab GPT (the size options then do not apply; use a smaller --lr, e.g. 1e-4)")
    _model_args(s)
    s.set_defaults(func=cmd_train_reader)

    s = ops.add_parser("answer", help="answer questions with a trained reader and facts retrieved from your KG")
    s.add_argument("reader", help="a folder written by `lmlab kg train-reader`")
    s.add_argument("--kg", required=True, help=kg_help + " (edits take effect without retraining)")
    s.add_argument("--question", action="append", help="a cloze prompt, e.g. 'trobex was born in' (repeatable)")
    s.add_argument("--questions", default=None, help="a text file of questions, one a line")
    s.add_argument("--method", default="bm25", choices=["bm25", "dense", "entity", "random"],
                   help="how the linked entities' facts are ranked (see `kg retrieve`)")
    s.add_argument("-k", type=int, default=None, help="facts retrieved per question (default: the reader's k)")
    s.add_argument("--out", default=None, help="folder to write answers.jsonl into (default: print only)")
    s.set_defaults(func=cmd_answer)

    s = ops.add_parser("generate", help="train (once) and run a CoSe-Co generator: k KG-style paths per sentence")
    s.add_argument("--kg", required=True, help=kg_help)
    s.add_argument("--out", required=True, help="folder of the generator: trained into it when it holds none, "
                   "reused when it does; paths.jsonl is written there")
    s.add_argument("--sentences", default=None,
                   help="training sentences, one a line (paired with the KG paths joining the entities they name)")
    s.add_argument("--sentence", action="append", help="a sentence to generate paths for (repeatable; default: "
                   "the --sentences)")
    s.add_argument("--input", default=None, help="a text file of sentences to generate paths for, one a line")
    s.add_argument("-k", type=int, default=3, help="paths per sentence (diverse-path search when k > 1)")
    s.add_argument("--max-hops", type=int, default=2, help="longest training path, in KG edges")
    s.add_argument("--hf-model", default=None, help="fine-tune this local HF seq2seq folder (T5, BART) as the "
                   "generator instead of a fresh lmlab GPT (the size options then do not apply)")
    _model_args(s)
    s.set_defaults(func=cmd_generate)
