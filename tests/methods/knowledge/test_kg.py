import math

import numpy as np
import torch
import pytest

from lmlab.methods.knowledge.kg import (
    KnowledgeGraph,
    Triple,
    kg_from_probes,
    load_conceptnet,
    load_lama_probes,
    load_lama_templates,
)
from lmlab.hf import MiniLMEncoder, minilm_path
from lmlab.methods.knowledge.retrieval import (
    BM25,
    EntityLinker,
    Retriever,
    recall_at_k,
    tokens,
)
from lmlab.utils import LmlabError

FACTS = [("trobex", "born_in", "vantor"), ("trobex", "works_for", "kelda corp"), ("trobex", "speaks", "ilvish"),
         ("milo", "born_in", "pelmor"), ("milo", "works_for", "acme"), ("nora vale", "speaks", "ilvish")]
TEMPLATES = {"born_in": "[X] was born in [Y] .", "works_for": "[X] works for [Y] .", "speaks": "[X] speaks [Y] ."}


@pytest.fixture
def kg():
    return KnowledgeGraph(FACTS, TEMPLATES, aliases={"nora vale": ["the painter"]})


def test_store_index_and_edits(kg):
    assert len(kg) == 6 and ("milo", "born_in", "pelmor") in kg
    assert {t.relation for t in kg.about("TROBEX")} == {"born_in", "works_for", "speaks"}
    assert len(kg.about("ilvish")) == 2  # tails are indexed too
    v = kg.version
    kg.add("milo", "born_in", "pelmor")  # duplicate: no change
    assert len(kg) == 6 and kg.version == v
    old = kg.update("milo", "born_in", "zandor")
    assert old == [Triple("milo", "born_in", "pelmor")] and kg.objects("milo", "born_in") == ["zandor"]
    assert kg.about("pelmor") == [] and kg.version > v
    assert kg.remove("milo", "born_in", "zandor") and not kg.remove("milo", "born_in", "zandor")
    assert kg.objects("milo", "born_in") == []
    with pytest.raises(LmlabError):
        kg.add("x", "", "y")
    with pytest.raises(LmlabError):
        kg.set_template("r", "no placeholders")


def test_verbalise_cloze_and_default_template(kg):
    t = Triple("trobex", "born_in", "vantor")
    assert kg.verbalise(t) == "trobex was born in vantor ."
    assert kg.cloze("trobex", "born_in") == "trobex was born in [MASK] ."
    assert KnowledgeGraph().verbalise(Triple("dog", "AtLocation", "kennel")) == "dog at location kennel ."


def test_save_load_roundtrip(kg, tmp_path):
    kg.save(tmp_path / "kg.jsonl")
    back = KnowledgeGraph.load(tmp_path / "kg.jsonl")
    assert back.triples == kg.triples and back.templates == kg.templates
    assert back.aliases["nora vale"] == {"the painter"}
    kg.save(tmp_path / "kg.tsv")
    assert KnowledgeGraph.load(tmp_path / "kg.tsv").triples == kg.triples
    with pytest.raises(LmlabError):
        KnowledgeGraph.load(tmp_path / "missing.jsonl")


def test_tsv_label_filter_and_order(tmp_path):
    f = tmp_path / "omcs.txt"
    f.write_text("IsA\tbaseball\tsport\t1\nIsA\tbaseball\tfood\t0\nCapableOf\tdog\tbark\t1\n")
    kg = KnowledgeGraph.from_tsv(f, order="rht")
    assert kg.triples == [Triple("baseball", "IsA", "sport"), Triple("dog", "CapableOf", "bark")]
    assert len(KnowledgeGraph.from_tsv(f, order="rht", keep_label=None)) == 3
    (tmp_path / "bad.tsv").write_text("only\ttwo\n")
    with pytest.raises(LmlabError):
        KnowledgeGraph.from_tsv(tmp_path / "bad.tsv")


def test_linker_longest_match_aliases_and_offsets(kg):
    linker = EntityLinker(kg)
    text = "Yesterday Nora Vale met trobex; the painter speaks Ilvish."
    ms = linker.link(text)
    assert [m.entity for m in ms] == ["nora vale", "trobex", "nora vale", "ilvish"]
    assert [text[m.start:m.end] for m in ms] == ["Nora Vale", "trobex", "the painter", "Ilvish"]
    kg.add("nora", "speaks", "tolk")  # a shorter name inside a longer one: longest match wins
    assert linker.entities("nora vale and nora") == ["nora vale", "nora"]


def test_bm25_matches_reference_formula():
    docs = ["a b b c", "b c d", "a a a e", "c"]
    k1, b = 1.5, 0.75
    bm = BM25(docs, k1, b)
    toks = [d.split() for d in docs]
    avg = np.mean([len(t) for t in toks])
    for q in ["a b", "c e", "d d"]:
        ref = []
        for t in toks:
            s = 0.0
            for w in set(q.split()):
                df = sum(w in d for d in toks)
                idf = math.log((len(docs) - df + 0.5) / (df + 0.5) + 1)
                tf = t.count(w)
                s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(t) / avg))
            ref.append(s)
        np.testing.assert_allclose(bm.scores(q), ref, rtol=1e-9)


def test_bm25_retrieval_returns_expected_triples(kg):
    r = Retriever(kg, "bm25", k=1)
    assert r.retrieve("trobex was born in")[0].triple == Triple("trobex", "born_in", "vantor")
    assert r.retrieve("who does milo work for? milo works for")[0].triple == Triple("milo", "works_for", "acme")
    # only the linked entity's triples are candidates
    assert {s.triple.head for s in r.retrieve("trobex speaks", k=5)} == {"trobex"}
    assert len(Retriever(kg, "bm25", k=2, restrict_to_linked=False).retrieve("speaks")) == 2


def test_fact_update_changes_retrieval_immediately(kg):
    r = Retriever(kg, "bm25", k=1)
    assert r.retrieve("milo was born in")[0].triple.tail == "pelmor"
    kg.update("milo", "born_in", "zandor")
    assert r.retrieve("milo was born in")[0].triple == Triple("milo", "born_in", "zandor")
    kg.add("gwen", "born_in", "oslar")  # a new entity becomes linkable at once
    assert r.retrieve("gwen was born in")[0].triple == Triple("gwen", "born_in", "oslar")


def test_entity_and_random_methods(kg):
    got = Retriever(kg, "entity", k=3, seed=1).retrieve("tell me about milo")
    assert {s.triple for s in got} == set(kg.about("milo"))
    assert len(Retriever(kg, "random", k=4).retrieve("anything")) == 4
    with pytest.raises(LmlabError):
        Retriever(kg, "magic")


def test_recall_at_k():
    a, b, c = (Triple(x, "r", "y") for x in "abc")
    assert recall_at_k([[a, b], [c, a]], [a, b], k=1) == 0.5
    assert recall_at_k([[a, b], [c, a]], [a, b], k=2) == 0.5
    assert recall_at_k([[a, b]], [{a, b, c}], k=2) == pytest.approx(2 / 3)
    assert tokens("Nora's well-known cat!") == ["nora's", "well-known", "cat"]


def test_minilm_dense_ranks_paraphrase_above_unrelated():
    kg = KnowledgeGraph([("trobex", "born_in", "vantor"), ("trobex", "works_for", "kelda"),
                         ("trobex", "speaks", "ilvish")], TEMPLATES)
    r = Retriever(kg, "dense", k=3, encoder=MiniLMEncoder())
    assert r.retrieve("what is the birthplace of trobex?")[0].triple.relation == "born_in"
    assert r.retrieve("the employer of trobex is")[0].triple.relation == "works_for"


def test_conceptnet_loader_reads_shared_files(shared_data):
    folder = shared_data / "knowledge" / "conceptnet"
    kg = load_conceptnet(folder)
    assert len(kg) == 2400  # true triples of test (1,200) + dev1 + dev2
    assert len(load_conceptnet(folder, files=("new_omcs_test.txt",))) == 1200
    lines = (folder / "new_omcs_test.txt").read_text().splitlines()
    distinct = {tuple(line.split("\t")[:3]) for line in lines}  # corrupted rows repeat two triples
    assert len(lines) == 2400
    assert len(load_conceptnet(folder, files=("new_omcs_test.txt",), keep_label=None)) == len(distinct)
    assert Triple("baseball", "IsA", "sport") in kg
    assert len((folder / "rel.txt").read_text().split()) == 34


def test_lama_loaders_read_shared_files(shared_data):
    lama = shared_data / "knowledge" / "lama"
    templates = load_lama_templates(lama / "relations.jsonl")
    assert templates["P19"] == "[X] was born in [Y] ."
    trex = load_lama_probes(lama / "TREx")
    assert len({p.relation for p in trex}) == 16 and len(trex) == 12939
    p19 = [p for p in trex if p.relation == "P19"]
    assert len(p19) == 944 and p19[0].prompt() == f"{p19[0].subject} was born in"
    assert p19[0].evidence and "[MASK]" in p19[0].evidence[0]
    gre = load_lama_probes(lama / "Google_RE")
    counts = {r: sum(p.relation == r for p in gre) for r in ("place_of_birth", "date_of_birth", "place_of_death")}
    assert counts == {"place_of_birth": 2937, "date_of_birth": 1825, "place_of_death": 766}
    capped = load_lama_probes(lama / "TREx", relations=["P19", "P20"], max_per_relation=5)
    assert len(capped) == 10
    kg = kg_from_probes(capped)
    assert kg.templates["P20"] == "[X] died in [Y] ." and len(kg) == 10


def test_minilm_encoder_is_loaded_once_per_device(monkeypatch):
    import sentence_transformers

    calls = []

    class FakeST:
        def __init__(self, path, device=None):
            calls.append(device)

        def float(self):
            return self

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeST)
    monkeypatch.setattr(MiniLMEncoder, "_models", {})
    cpu = MiniLMEncoder.model("cpu")
    assert MiniLMEncoder.model("cpu") is cpu and calls == ["cpu"]
    assert MiniLMEncoder.model("cuda") is not cpu and calls == ["cpu", "cuda"]  # not the CPU copy


def test_a_half_precision_minilm_copy_via_lmlab_minilm_encodes_like_the_packaged_one(tmp_path, monkeypatch):
    """docs/results/gpu/pack_minilm.py writes the copy that travels to GPU machines without the package."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "pack_minilm", Path(__file__).parents[3] / "docs" / "results" / "gpu" / "pack_minilm.py")
    pack_minilm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_minilm)
    texts = ["trobex was born in vantor .", "the employer of trobex is acme", "a cat sat on the mat"]
    packaged = MiniLMEncoder().encode(texts)
    half = pack_minilm.pack(tmp_path / "minilm")
    assert (half / "model.safetensors").stat().st_size < 0.6 * (minilm_path() / "model.safetensors").stat().st_size
    monkeypatch.setenv("LMLAB_MINILM", str(half))
    assert minilm_path() == half
    copy = MiniLMEncoder().encode(texts)
    cos = (packaged * copy).sum(1)
    assert cos.min() > 0.9999 and not np.array_equal(packaged, copy)  # rounded weights, same embeddings
    assert next(MiniLMEncoder.model("cpu").parameters()).dtype == torch.float32
    monkeypatch.setenv("LMLAB_MINILM", str(tmp_path))
    with pytest.raises(LmlabError, match="LMLAB_MINILM=.*not a sentence-transformers model folder"):
        minilm_path()


def test_kg_cli_edit_and_retrieve(tmp_path, capsys):
    from lmlab.cli import main

    f = str(tmp_path / "facts.jsonl")
    assert main(["kg", "add", "--kg", f, "--head", "trobex", "--relation", "born_in", "--tail", "vantor"]) == 0
    assert main(["kg", "add", "--kg", f, "--head", "trobex", "--relation", "works_for", "--tail", "acme"]) == 0
    assert main(["kg", "update", "--kg", f, "--head", "trobex", "--relation", "born_in", "--tail", "pelmor"]) == 0
    capsys.readouterr()
    assert main(["kg", "retrieve", "--kg", f, "--query", "trobex born in", "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "linked: trobex" in out and "pelmor" in out and "vantor" not in out
    assert main(["kg", "remove", "--kg", f, "--head", "x", "--relation", "y", "--tail", "z"]) == 2
    assert "is not in" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["facts.txt", "facts.tsv"])
def test_kg_cli_edits_keep_a_tsv_file_tsv(tmp_path, name):
    """add/update/remove write a .txt/.tsv KG back as head<TAB>relation<TAB>tail (it used to become JSONL,
    which the TSV reader then rejected)."""
    from lmlab.cli import main

    f = tmp_path / name
    f.write_text("a\tr\tb\nc\tr\td\n")
    assert main(["kg", "add", "--kg", str(f), "--head", "e", "--relation", "r", "--tail", "g"]) == 0
    assert main(["kg", "update", "--kg", str(f), "--head", "a", "--relation", "r", "--tail", "z"]) == 0
    assert main(["kg", "remove", "--kg", str(f), "--head", "c", "--relation", "r", "--tail", "d"]) == 0
    assert f.read_text() == "e\tr\tg\na\tr\tz\n"
    assert KnowledgeGraph.load(f).triples == [Triple("e", "r", "g"), Triple("a", "r", "z")]
    assert main(["kg", "stats", "--kg", str(f)]) == 0
    # a value that TSV cannot hold is refused instead of splitting the row
    kg = KnowledgeGraph.load(f)
    kg.add("tab\there", "r", "x")
    with pytest.raises(LmlabError, match="tab or line break"):
        kg.save(f)
    assert f.read_text() == "e\tr\tg\na\tr\tz\n"


def test_kg_cli_edit_keeps_jsonl_templates_and_aliases(kg, tmp_path):
    from lmlab.cli import main

    f = tmp_path / "kg.jsonl"
    kg.save(f)
    assert main(["kg", "add", "--kg", str(f), "--head", "milo", "--relation", "speaks", "--tail", "ilvish"]) == 0
    back = KnowledgeGraph.load(f)
    assert back.triples == kg.triples + [Triple("milo", "speaks", "ilvish")]
    assert back.templates == kg.templates and back.aliases["nora vale"] == {"the painter"}


def test_kg_cli_refuses_to_rewrite_conceptnet_and_lama_files(tmp_path, capsys):
    """An OMCS file (rel head tail label) or a LAMA probe file is never rewritten; `kg convert` makes an
    editable copy with the right column order."""
    from lmlab.cli import main

    omcs = tmp_path / "new_omcs_test.txt"
    text = "IsA\tbaseball\tsport\t1\nIsA\tbaseball\tfood\t0\nCapableOf\tdog\tbark\t1\n"
    omcs.write_text(text)
    for op in ("add", "update", "remove"):
        assert main(["kg", op, "--kg", str(omcs), "--head", "dog", "--relation", "IsA", "--tail", "pet"]) == 2
        err = capsys.readouterr().err
        assert "left unchanged" in err and "lmlab kg convert" in err
    assert omcs.read_text() == text
    lama = tmp_path / "P19.jsonl"
    lama_text = '{"sub_label": "trobex", "obj_label": "vantor", "predicate_id": "P19", "evidences": []}\n'
    lama.write_text(lama_text)
    assert main(["kg", "add", "--kg", str(lama), "--head", "a", "--relation", "P19", "--tail", "b"]) == 2
    assert "LAMA probe records" in capsys.readouterr().err and lama.read_text() == lama_text

    out = tmp_path / "omcs.jsonl"
    assert main(["kg", "convert", "--kg", str(omcs), "--out", str(out)]) == 0
    assert KnowledgeGraph.load(out).triples == [Triple("baseball", "IsA", "sport"), Triple("dog", "CapableOf", "bark")]
    assert main(["kg", "add", "--kg", str(out), "--head", "dog", "--relation", "IsA", "--tail", "pet"]) == 0
    assert Triple("dog", "IsA", "pet") in KnowledgeGraph.load(out)
    assert main(["kg", "convert", "--kg", str(omcs), "--out", str(omcs)]) == 2
    assert omcs.read_text() == text
    capsys.readouterr()
    assert main(["kg", "stats", "--kg", str(omcs)]) == 0  # read in OMCS order: IsA is a relation, not a head
    out = capsys.readouterr().out
    assert out.startswith("2 triples") and "  IsA: 1" in out and "  CapableOf: 1" in out
