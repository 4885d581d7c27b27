"""`lmlab kg train-reader|answer|generate` on a tiny user KG: the README's commands run end to end, a reader answers
from the facts it retrieves (and follows an edit without retraining), folders of the wrong kind are refused."""

import json
import re
import shlex
from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.methods.knowledge.kg import KnowledgeGraph
from lmlab.methods.knowledge.own import answer_questions, load_kg_model, train_kg_reader

README = Path(__file__).resolve().parents[3] / "src" / "lmlab" / "methods" / "knowledge" / "README.md"
FACTS = [("trobex", "born_in", "vantor"), ("melda", "born_in", "pelmor"), ("trobex", "works_as", "baker"),
         ("melda", "works_as", "miner"), ("dog", "AtLocation", "kennel"), ("kennel", "PartOf", "yard")]
SENTENCES = ["the dog sleeps in the kennel", "the kennel is in the yard", "a dog barks in a yard"]


@pytest.fixture
def kg_dir(tmp_path, monkeypatch):
    (tmp_path / "facts.tsv").write_text("".join("\t".join(f) + "\n" for f in FACTS))
    (tmp_path / "sentences.txt").write_text("\n".join(SENTENCES) + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def test_readme_commands_run(kg_dir, capsys):
    block = re.search(r"^```bash kg-own\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL).group(1)
    for line in block.strip().splitlines():
        argv = shlex.split(line.replace("--steps 300", "--steps 5"))
        assert main(argv[1:]) == 0, line
    answers = [json.loads(x) for x in (kg_dir / "answers" / "answers.jsonl").read_text().splitlines()]
    assert answers[0]["question"] == "trobex born in" and ["trobex", "born_in", "vantor"] in answers[0]["facts"]
    paths = [json.loads(x) for x in (kg_dir / "generator" / "paths.jsonl").read_text().splitlines()]
    assert [p["sentence"] for p in paths] == ["the dog sleeps in the kennel"] and len(paths[0]["paths"]) == 2
    assert "already holds a trained model" in refused(
        ["kg", "train-reader", "--kg", "facts.tsv", "--out", "reader", "--steps", "1"], capsys)
    assert "not a reader" in refused(["kg", "answer", "generator", "--kg", "facts.tsv", "--question", "x"], capsys)


def test_reader_reads_retrieved_facts_and_follows_edits(tmp_path):
    kg = KnowledgeGraph(FACTS)
    train_kg_reader(kg, tmp_path / "r", steps=300)
    reader, cfg = load_kg_model(tmp_path / "r", "reader")
    assert [a for a, _ in answer_questions(reader, kg, ["trobex born in", "melda works as"], k=cfg["k"])] == \
        ["vantor", "miner"]
    kg.update("trobex", "born_in", "pelmor")  # no retraining: the retrieved fact changes the answer
    assert answer_questions(reader, kg, ["trobex born in"], k=cfg["k"])[0][0] == "pelmor"


def test_generator_needs_sentences_that_name_entities(kg_dir, capsys):
    (kg_dir / "other.txt").write_text("nothing here\n")
    assert "mentions a KG entity" in refused(
        ["kg", "generate", "--kg", "facts.tsv", "--sentences", "other.txt", "--out", "g", "--steps", "1"], capsys)
    assert "pass --sentences" in refused(["kg", "generate", "--kg", "facts.tsv", "--out", "g2"], capsys)


def test_an_hf_causal_lm_as_the_reader(tmp_path, capsys):
    """`--hf-model` fine-tunes a local HF folder (a tiny random Llama) into OUT/hf/; `kg answer` loads it."""
    import string

    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.hf import hf_tokenizer
    from lmlab.tokenizer import CharTokenizer

    hf = tmp_path / "llama"
    tok = hf_tokenizer(CharTokenizer(set(string.printable) - set("\t\r\x0b\x0c")))
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(hf)
    tok.save_pretrained(hf)
    facts = tmp_path / "facts.tsv"
    facts.write_text("".join("\t".join(f) + "\n" for f in FACTS))
    out = tmp_path / "reader"
    assert main(["kg", "train-reader", "--kg", str(facts), "--out", str(out), "--hf-model", str(hf),
                 "--steps", "2", "--batch", "2"]) == 0
    assert (out / "hf" / "config.json").is_file() and (out / "kg_model.json").is_file()
    capsys.readouterr()
    assert main(["kg", "answer", str(out), "--kg", str(facts), "--question", "melda works as"]) == 0
    assert capsys.readouterr().out.startswith("melda works as -> ")
    assert "already holds a trained model" in refused(
        ["kg", "train-reader", "--kg", str(facts), "--out", str(out), "--steps", "1"], capsys)


def test_an_hf_seq2seq_model_as_the_generator(kg_dir, capsys):
    """`kg generate --hf-model` fine-tunes a local T5 (relation tokens added to its tokenizer) into OUT/hf/ and
    writes k paths per sentence; the next call reuses it."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(SENTENCES + [" ".join(f) for f in FACTS], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                        num_decoder_layers=1, num_heads=2, pad_token_id=tok.pad_token_id,
                                        eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
                               ).save_pretrained(kg_dir / "t5")
    tok.save_pretrained(kg_dir / "t5")
    argv = ["kg", "generate", "--kg", "facts.tsv", "--sentences", "sentences.txt", "--out", "gen", "-k", "2"]
    assert main([*argv, "--hf-model", "t5", "--steps", "2", "--batch", "2"]) == 0
    assert (kg_dir / "gen" / "hf" / "config.json").is_file()
    assert main([*argv[:-2], "--sentence", "the dog", "-k", "1"]) == 0
    assert "using the generator in gen" in capsys.readouterr().out
    rows = [json.loads(x) for x in (kg_dir / "gen" / "paths.jsonl").read_text().splitlines()]
    assert [r["sentence"] for r in rows] == ["the dog"] and len(rows[0]["paths"]) == 1
