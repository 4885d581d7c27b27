"""`lmlab kg ...`: inspect, edit and query a knowledge graph file.

    lmlab kg stats --kg facts.jsonl
    lmlab kg retrieve --kg facts.jsonl --query "trobex was born in" --method bm25 -k 3
    lmlab kg add --kg facts.jsonl --head trobex --relation born_in --tail vantor
    lmlab kg update --kg facts.jsonl --head trobex --relation born_in --tail pelmor
    lmlab kg remove --kg facts.jsonl --head trobex --relation born_in --tail pelmor
    lmlab kg paths --kg conceptnet/ --sentence "a dog can bark at a cat"
    lmlab kg convert --kg conceptnet/new_omcs_test.txt --out facts.jsonl

--kg takes a .jsonl/.tsv/.txt file of triples or a ConceptNet OMCS folder (read-only). Edits write the file back
in its own format (.tsv/.txt stay head<TAB>relation<TAB>tail, JSONL stays JSONL); files that cannot be written
back unchanged (ConceptNet OMCS `rel head tail label`, LAMA probe files) are refused: `kg convert` them first.
"""

from __future__ import annotations

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
    kg = load_kg(args.kg)
    print(f"{len(kg)} triples, {len(kg.entities())} entities, {len(kg.relations())} relations")
    for r in kg.relations():
        n = sum(1 for t in kg if t.relation == r)
        print(f"  {r}: {n}  template: {kg.template(r)}")
    return 0


def cmd_retrieve(args) -> int:
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


def register(sub) -> None:
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
