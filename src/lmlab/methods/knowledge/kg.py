"""A small knowledge graph: (head, relation, tail) triples with relation templates and entity aliases.

Facts can be added, removed and updated in place; `version` increases on every edit so retrievers
rebuild their indexes lazily and an edit changes retrieval immediately. Loaders read TSV / JSONL,
the ConceptNet OMCS TSV (`rel<TAB>head<TAB>tail<TAB>label`) and LAMA T-REx / Google-RE JSONL probes.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.inputs import read_text
from lmlab.utils import LmlabError, atomic_write_text


def norm(text: str) -> str:
    """Case- and whitespace-insensitive key for entity names."""
    return " ".join(text.lower().split())


@dataclass(frozen=True, order=True)
class Triple:
    head: str
    relation: str
    tail: str


def relation_words(relation: str) -> str:
    """'AtLocation' -> 'at location', 'born_in' -> 'born in', '/people/person/place_of_birth' -> 'place of birth'."""
    r = relation.rsplit("/", 1)[-1].replace("_", " ")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", r).lower()


class KnowledgeGraph:
    """Triples in insertion order, an entity index (head or tail), templates `[X] ... [Y]` per relation."""

    def __init__(self, triples: Iterable[Triple | tuple[str, str, str]] = (), templates: dict[str, str] | None = None,
                 aliases: dict[str, Iterable[str]] | None = None):
        self._triples: dict[Triple, None] = {}
        self._by_entity: dict[str, dict[Triple, None]] = defaultdict(dict)
        self._by_head_rel: dict[tuple[str, str], dict[Triple, None]] = defaultdict(dict)
        self.templates: dict[str, str] = {}
        self.aliases: dict[str, set[str]] = defaultdict(set)
        self.version = 0
        for rel, tpl in (templates or {}).items():
            self.set_template(rel, tpl)
        for ent, names in (aliases or {}).items():
            for a in names:
                self.add_alias(ent, a)
        for t in triples:
            self.add(*(t.head, t.relation, t.tail) if isinstance(t, Triple) else t)

    # ------------------------------------------------------------------ container
    def __len__(self) -> int:
        return len(self._triples)

    def __iter__(self):
        return iter(list(self._triples))

    def __contains__(self, t) -> bool:
        return Triple(*t) in self._triples if not isinstance(t, Triple) else t in self._triples

    @property
    def triples(self) -> list[Triple]:
        """Every triple, in insertion order."""
        return list(self._triples)

    def entities(self) -> set[str]:
        """Every head and tail."""
        return {e for t in self._triples for e in (t.head, t.tail)}

    def relations(self) -> list[str]:
        """The relation names, sorted."""
        return sorted({t.relation for t in self._triples})

    def about(self, entity: str) -> list[Triple]:
        """Triples with `entity` as head or tail (case-insensitive)."""
        return list(self._by_entity.get(norm(entity), {}))

    def objects(self, head: str, relation: str) -> list[str]:
        """The tails of (head, relation), head matched case-insensitively."""
        return [t.tail for t in self._by_head_rel.get((norm(head), relation), {})]

    def neighbours(self, entity: str) -> list[tuple[Triple, str]]:
        """(triple, other end) for every edge touching `entity`, either direction."""
        key = norm(entity)
        return [(t, t.tail if norm(t.head) == key else t.head) for t in self.about(entity)]

    # ------------------------------------------------------------------ edits
    def add(self, head: str, relation: str, tail: str) -> Triple:
        """Add (head, relation, tail), stripped (an empty part raises), and return it."""
        head, relation, tail = (str(x).strip() for x in (head, relation, tail))
        if not head or not relation or not tail:
            raise LmlabError(f"a triple needs a non-empty head, relation and tail; got {(head, relation, tail)!r}")
        t = Triple(head, relation, tail)
        if t not in self._triples:
            self._triples[t] = None
            self._by_entity[norm(head)][t] = None
            self._by_entity[norm(tail)][t] = None
            self._by_head_rel[(norm(head), relation)][t] = None
            self.version += 1
        return t

    def remove(self, head: str, relation: str, tail: str) -> bool:
        """Remove one fact; returns whether it was present."""
        t = Triple(head, relation, tail)
        if t not in self._triples:
            return False
        del self._triples[t]
        for key in (norm(head), norm(tail)):
            self._by_entity[key].pop(t, None)
            if not self._by_entity[key]:
                del self._by_entity[key]
        hr = (norm(head), relation)
        self._by_head_rel[hr].pop(t, None)
        if not self._by_head_rel[hr]:
            del self._by_head_rel[hr]
        self.version += 1
        return True

    def update(self, head: str, relation: str, new_tail: str) -> list[Triple]:
        """Replace every (head, relation, *) fact by (head, relation, new_tail); returns the removed triples."""
        old = [t for t in self._by_head_rel.get((norm(head), relation), {}) if t.tail != new_tail]
        for t in old:
            self.remove(t.head, t.relation, t.tail)
        self.add(head, relation, new_tail)
        return old

    def set_template(self, relation: str, template: str) -> None:
        """Verbalise `relation` through `template` (it needs both [X] and [Y])."""
        if "[X]" not in template or "[Y]" not in template:
            raise LmlabError(f"template {template!r} for {relation!r} needs both [X] and [Y] placeholders")
        self.templates[relation] = template
        self.version += 1

    def add_alias(self, entity: str, alias: str) -> None:
        """Let `alias` name `entity` in entity linking (blank or identical aliases are ignored)."""
        if alias.strip() and norm(alias) != norm(entity):
            self.aliases[entity].add(alias.strip())
            self.version += 1

    # ------------------------------------------------------------------ text
    def template(self, relation: str) -> str:
        """The relation's template, else `[X] <relation in words> [Y] .`."""
        return self.templates.get(relation) or f"[X] {relation_words(relation)} [Y] ."

    def verbalise(self, t: Triple) -> str:
        """The triple as a sentence through its relation template."""
        return self.template(t.relation).replace("[X]", t.head).replace("[Y]", t.tail)

    def cloze(self, head: str, relation: str, mask: str = "[MASK]") -> str:
        """The (head, relation) sentence with `mask` where the tail goes."""
        return self.template(relation).replace("[X]", head).replace("[Y]", mask)

    def surface_forms(self) -> dict[str, str]:
        """normalised name or alias -> entity (names take precedence over aliases)."""
        forms = {norm(a): e for e, names in self.aliases.items() for a in names}
        forms.update({norm(e): e for e in self.entities()})
        return forms

    def copy(self) -> KnowledgeGraph:
        """An independent copy (triples, templates and aliases)."""
        return KnowledgeGraph(self.triples, dict(self.templates), {e: set(a) for e, a in self.aliases.items()})

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """`.tsv` / `.txt` (the suffixes `load` reads as TSV): head<TAB>relation<TAB>tail (facts only);
        otherwise JSONL with facts, templates and aliases. Whatever `save` writes, `load` reads back."""
        p = Path(path)
        if p.suffix in TSV_SUFFIXES:
            bad = [t for t in self._triples if any(c in x for x in (t.head, t.relation, t.tail) for c in "\t\r\n")]
            if bad:
                raise LmlabError(f"cannot write {p} as TSV: {bad[0]} contains a tab or line break; save to a "
                                 ".jsonl file instead")
            atomic_write_text(p, "".join(f"{t.head}\t{t.relation}\t{t.tail}\n" for t in self._triples))
            return
        lines = [json.dumps({"relation": r, "template": tpl}) for r, tpl in sorted(self.templates.items())]
        lines += [json.dumps({"entity": e, "aliases": sorted(a)}) for e, a in sorted(self.aliases.items()) if a]
        lines += [json.dumps({"head": t.head, "relation": t.relation, "tail": t.tail}) for t in self._triples]
        atomic_write_text(p, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str | Path, **kw) -> KnowledgeGraph:
        """Read a `.tsv` (see `from_tsv`) or JSONL file (`head/relation/tail` or LAMA records)."""
        p = Path(path)
        if not p.is_file():
            raise LmlabError(f"knowledge graph file {p} not found: pass a .tsv or .jsonl file of triples")
        return cls.from_tsv(p, **kw) if p.suffix in TSV_SUFFIXES else cls.from_jsonl(p, **kw)

    @classmethod
    def from_tsv(cls, path: str | Path, order: str = "hrt", keep_label: str | None = "1") -> KnowledgeGraph:
        """TSV triples; `order` names the first three columns ('hrt' or 'rht' for ConceptNet OMCS). A 4th column
        is a truth label: rows whose label differs from `keep_label` are skipped (None keeps all)."""
        if sorted(order) != ["h", "r", "t"]:
            raise LmlabError(f"order must be a permutation of 'hrt', got {order!r}")
        kg = cls()
        for n, line in enumerate(_lines(path), 1):
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 3:
                raise LmlabError(f"{path}:{n}: expected at least 3 tab-separated columns, got {len(cols)}")
            if len(cols) > 3 and keep_label is not None and cols[3].strip() != keep_label:
                continue
            f = dict(zip(order, cols[:3]))
            try:
                kg.add(f["h"], f["r"], f["t"])
            except LmlabError as e:
                raise LmlabError(f"{path}:{n}: {e}") from None
        return kg

    @classmethod
    def from_jsonl(cls, path: str | Path, templates: dict[str, str] | None = None) -> KnowledgeGraph:
        """A KG from a JSONL file of triples, templates and aliases (errors name the line)."""
        kg = cls(templates=templates)
        for n, rec in _records(path):
            try:
                if "template" in rec and "relation" in rec and "head" not in rec:
                    _strings(rec, "relation", "template")
                    kg.set_template(rec["relation"], rec["template"])
                elif "aliases" in rec and "entity" in rec:
                    _strings(rec, "entity")
                    if not (isinstance(rec["aliases"], list) and all(isinstance(a, str) for a in rec["aliases"])):
                        raise LmlabError("'aliases' must be a list of strings")
                    for a in rec["aliases"]:
                        kg.add_alias(rec["entity"], a)
                elif "head" in rec:
                    _strings(rec, "head", "relation", "tail")
                    kg.add(rec["head"], rec["relation"], rec["tail"])
                elif "sub_label" in rec:
                    probe = probe_from_lama(rec, templates or {})
                    kg.add(probe.subject, probe.relation, probe.answer)
                    for a in probe.subject_aliases:
                        kg.add_alias(probe.subject, a)
                else:
                    raise LmlabError(f"unrecognised record {sorted(rec)[:6]}: expected head/relation/tail "
                                     "or LAMA sub_label/obj_label")
            except LmlabError as e:
                raise LmlabError(f"{path}:{n}: {e}") from None
        return kg


TSV_SUFFIXES = (".tsv", ".txt")  # read and written as head<TAB>relation<TAB>tail; anything else is JSONL


def file_format(path: str | Path) -> str:
    """The layout of an existing KG file, as `KnowledgeGraph.load` reads it: "tsv" (three tab-separated
    columns), "tsv_labelled" (a 4th column, e.g. ConceptNet OMCS `rel head tail label`), "jsonl" (lmlab's
    head/relation/tail, template and alias records) or "lama" (LAMA probe records)."""
    p = Path(path)
    if p.suffix in TSV_SUFFIXES:
        rows = [ln for ln in _lines(p) if ln.strip()]
        return "tsv_labelled" if any(len(ln.split("\t")) > 3 for ln in rows) else "tsv"
    return "lama" if any("sub_label" in rec and "head" not in rec for rec in read_jsonl(p)) else "jsonl"


def tsv_order(path: str | Path) -> str:
    """Column order of a TSV KG file: "rht" for a labelled 4-column file (ConceptNet OMCS `rel head tail
    label`), otherwise "hrt"."""
    return "rht" if file_format(path) == "tsv_labelled" else "hrt"


def check_rewritable(path: str | Path) -> None:
    """Refuse to edit a file that `save` would not write back in its own layout (it would lose data or
    change format): labelled TSV such as ConceptNet OMCS, and LAMA probe files. Missing files are fine."""
    p = Path(path)
    if not p.exists():
        return
    fmt = file_format(p)
    if fmt == "tsv_labelled":
        raise LmlabError(f"{p} has rows with more than 3 tab-separated columns (a truth label, as in ConceptNet OMCS "
                         "`rel head tail label`): rewriting it would drop the label column and the rows with other "
                         "labels, so it is left unchanged. Convert it and edit the copy: "
                         f"`lmlab kg convert --kg {p} --out facts.jsonl` (ConceptNet OMCS files are read as "
                         "rel/head/tail; pass --order to say otherwise)")
    if fmt == "lama":
        raise LmlabError(f"{p} holds LAMA probe records: rewriting it would replace them with plain triples and "
                         "lose their evidence sentences, so it is left unchanged. Convert it and edit the copy: "
                         f"`lmlab kg convert --kg {p} --out facts.jsonl`")


def _lines(path: str | Path) -> list[str]:
    return read_text(path, "knowledge graph file", allow_empty=True).splitlines()


def _records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, JSON object) of each non-blank line."""
    out = []
    for n, line in enumerate(_lines(path), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmlabError(f"{path}:{n}: not valid JSON ({e.msg}): one JSON object a line") from None
            if not isinstance(rec, dict):
                raise LmlabError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            out.append((n, rec))
    return out


def _strings(rec: dict, *keys: str) -> None:
    bad = [k for k in keys if not isinstance(rec.get(k), str)]
    if bad:
        raise LmlabError(f"{', '.join(map(repr, bad))} must be a string in a record with {sorted(rec)[:6]}")


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL file, one a line (errors name the line)."""
    return [rec for _, rec in _records(path)]


# ---------------------------------------------------------------------- ConceptNet
def load_conceptnet(folder: str | Path, files=("new_omcs_test.txt", "new_omcs_dev1.txt", "new_omcs_dev2.txt"),
                    keep_label: str | None = "1") -> KnowledgeGraph:
    """ConceptNet OMCS triples (`rel head tail label`, ACL_CKBC); only true triples (label 1) by default."""
    folder = Path(folder)
    kg = KnowledgeGraph()
    for f in files:
        if not (folder / f).is_file():
            raise LmlabError(f"ConceptNet file {folder / f} not found: point at the folder holding {', '.join(files)}")
        for t in KnowledgeGraph.from_tsv(folder / f, order="rht", keep_label=keep_label):
            kg.add(t.head, t.relation, t.tail)
    return kg


# ---------------------------------------------------------------------- LAMA
# LAMA's own templates for Google-RE (facebookresearch/LAMA, scripts/run_experiments.py).
GOOGLE_RE_TEMPLATES = {"place_of_birth": "[X] was born in [Y] .", "date_of_birth": "[X] (born [Y]).",
                       "place_of_death": "[X] died in [Y] ."}


@dataclass
class Probe:
    """A LAMA-style cloze probe: `template` with [X] = subject; the answer fills [Y]."""
    subject: str
    relation: str
    answer: str
    template: str
    evidence: list[str] = field(default_factory=list)  # natural sentences with [MASK] at the answer
    subject_aliases: list[str] = field(default_factory=list)

    @property
    def triple(self) -> Triple:
        """The probed fact as a triple (subject, relation, answer)."""
        return Triple(self.subject, self.relation, self.answer)

    def cloze(self, mask: str = "[MASK]") -> str:
        """The template with the subject filled in and `mask` where the answer goes."""
        return self.template.replace("[X]", self.subject).replace("[Y]", mask)

    def prompt(self) -> str:
        """The text before the answer (what a causal LM is conditioned on)."""
        return self.template.split("[Y]")[0].replace("[X]", self.subject).rstrip()


def load_lama_templates(path: str | Path) -> dict[str, str]:
    """relations.jsonl -> {relation id: template}, plus the Google-RE templates."""
    out = dict(GOOGLE_RE_TEMPLATES)
    out.update({r["relation"]: r["template"] for r in read_jsonl(path)})
    return out


def probe_from_lama(rec: dict, templates: dict[str, str]) -> Probe:
    """A Probe from one LAMA T-REx or Google-RE record, its template from `templates`."""
    pid, pred = rec.get("predicate_id") or "", rec.get("pred") or ""
    if not isinstance(pid, str) or not isinstance(pred, str):
        raise LmlabError(f"LAMA record's predicate_id/pred must be strings: {sorted(rec)[:8]}")
    rel = pid or pred.rsplit("/", 1)[-1]
    if not rel or "sub_label" not in rec or "obj_label" not in rec:
        raise LmlabError(f"LAMA record lacks predicate_id/pred, sub_label or obj_label: {sorted(rec)[:8]}")
    def listed(key: str) -> list:
        return rec[key] if isinstance(rec.get(key), list) else []

    evidence = [e["masked_sentence"] for e in listed("evidences")
                if isinstance(e, dict) and isinstance(e.get("masked_sentence"), str)]
    evidence += [e for e in listed("masked_sentences") if isinstance(e, str)]
    tpl = templates.get(rel) or GOOGLE_RE_TEMPLATES.get(rel) or f"[X] {relation_words(rel)} [Y] ."
    return Probe(str(rec["sub_label"]), rel, str(rec["obj_label"]), tpl, list(dict.fromkeys(evidence)),
                 [a for a in listed("sub_aliases") if isinstance(a, str)])


def load_lama_probes(path: str | Path, templates: dict[str, str] | None = None, relations: Iterable[str] | None = None,
                     max_per_relation: int | None = None) -> list[Probe]:
    """Probes from a LAMA JSONL file or a folder of them (T-REx `P*.jsonl`, Google-RE `*_test.jsonl`).

    `templates` default to `relations.jsonl` next to the folder (LAMA layout) when present."""
    p = Path(path)
    if not p.exists():
        raise LmlabError(f"LAMA path {p} not found: pass a T-REx/Google-RE .jsonl file or a folder of them")
    if templates is None:
        for cand in (p.parent / "relations.jsonl", p.parent.parent / "relations.jsonl"):
            if cand.is_file():
                templates = load_lama_templates(cand)
                break
    templates = templates or dict(GOOGLE_RE_TEMPLATES)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    wanted = set(relations) if relations is not None else None
    probes, counts = [], defaultdict(int)
    for f in files:
        for rec in read_jsonl(f):
            pr = probe_from_lama(rec, templates)
            if wanted is not None and pr.relation not in wanted:
                continue
            if max_per_relation is not None and counts[pr.relation] >= max_per_relation:
                continue
            counts[pr.relation] += 1
            probes.append(pr)
    return probes


def kg_from_probes(probes: Iterable[Probe]) -> KnowledgeGraph:
    """A KG holding every probe's fact, with its relation template and subject aliases."""
    kg = KnowledgeGraph()
    for pr in probes:
        if pr.relation not in kg.templates:
            kg.set_template(pr.relation, pr.template)
        kg.add(pr.subject, pr.relation, pr.answer)
        for a in pr.subject_aliases:
            kg.add_alias(pr.subject, a)
    return kg
