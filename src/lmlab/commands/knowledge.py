"""`lmlab kg ...`: inspect, edit and query a knowledge graph file.

    lmlab kg stats --kg facts.jsonl
    lmlab kg retrieve --kg facts.jsonl --query "trobex was born in" --method bm25 -k 3
    lmlab kg add --kg facts.jsonl --head trobex --relation born_in --tail vantor
    lmlab kg update --kg facts.jsonl --head trobex --relation born_in --tail pelmor
    lmlab kg remove --kg facts.jsonl --head trobex --relation born_in --tail pelmor
    lmlab kg paths --kg conceptnet/ --sentence "a dog can bark at a cat"

--kg takes a .jsonl/.tsv file of triples or a ConceptNet OMCS folder (read-only).
"""

from __future__ import annotations

from pathlib import Path

from lmlab.utils import LmlabError


def load_kg(path: str):
    from lmlab.knowledge.kg import KnowledgeGraph, load_conceptnet

    p = Path(path)
    if p.is_dir():
        return load_conceptnet(p)
    return KnowledgeGraph.load(p)


def cmd_stats(args) -> int:
    kg = load_kg(args.kg)
    print(f"{len(kg)} triples, {len(kg.entities())} entities, {len(kg.relations())} relations")
    for r in kg.relations():
        n = sum(1 for t in kg if t.relation == r)
        print(f"  {r}: {n}  template: {kg.template(r)}")
    return 0


def cmd_retrieve(args) -> int:
    from lmlab.knowledge.retrieval import EntityLinker, Retriever

    kg = load_kg(args.kg)
    linker = EntityLinker(kg)
    print("linked: " + (", ".join(m.entity for m in linker.link(args.query)) or "(none; ranking all triples)"))
    for s in Retriever(kg, args.method, args.k, linker=linker).retrieve(args.query):
        print(f"{s.score:8.3f}  {s.triple.head}\t{s.triple.relation}\t{s.triple.tail}\t({kg.verbalise(s.triple)})")
    return 0


def _edit(args, op: str) -> int:
    p = Path(args.kg)
    if p.is_dir():
        raise LmlabError(f"{p} is a folder; edits need a .jsonl or .tsv KG file (create one with `lmlab kg add`)")
    from lmlab.knowledge.kg import KnowledgeGraph

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


def cmd_paths(args) -> int:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from lmlab.knowledge.coseco import linearise, sentence_paths
    from lmlab.knowledge.retrieval import EntityLinker

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
    s.add_argument("--kg", required=True)
    s.set_defaults(func=cmd_stats)

    s = ops.add_parser("retrieve", help="top-k triples for a query (entity linking + ranking)")
    s.add_argument("--kg", required=True)
    s.add_argument("--query", required=True)
    s.add_argument("--method", default="bm25", choices=["bm25", "dense", "entity", "random"])
    s.add_argument("-k", type=int, default=3)
    s.set_defaults(func=cmd_retrieve)

    for op, help_ in (("add", "add a fact"), ("update", "replace the (head, relation) fact's tail"),
                      ("remove", "remove a fact")):
        s = ops.add_parser(op, help=help_)
        s.add_argument("--kg", required=True)
        s.add_argument("--head", required=True)
        s.add_argument("--relation", required=True)
        s.add_argument("--tail", required=True)
        s.set_defaults(func=lambda a, _op=op: _edit(a, _op))

    s = ops.add_parser("paths", help="KG paths connecting the entities a sentence mentions (CoSe-Co pairs)")
    s.add_argument("--kg", required=True)
    s.add_argument("--sentence", required=True)
    s.add_argument("--max-hops", type=int, default=2)
    s.set_defaults(func=cmd_paths)
