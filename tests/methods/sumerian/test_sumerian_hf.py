"""`lmlab sumerian tag|explain --hf-model` on tiny local HF folders: a token-classification folder tags (POS, or
NER when its labels are B-/I-/O), an HF seq2seq translator is explained; a folder the method cannot serve is
refused in one line."""

import pytest
import torch
import transformers as tf
from test_sumerian_translate import PAIRS, hf_t5

from lmlab.cli import main

POS = ["N", "V", "NU", "DET"]
NER = ["O", "B-PN", "I-PN"]


def token_tagger(path, tokenizer, config, labels):
    torch.manual_seed(len(labels))
    cfg = config(16, 1, num_labels=len(labels), id2label=dict(enumerate(labels)),
                 label2id={lb: i for i, lb in enumerate(labels)})
    tf.BertForTokenClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "raw.txt"
    path.write_text("1. the cat sat\n2. a big dog ran on the mat\n")
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_tag_with_hf_token_classifiers(tmp_path, raw, word_tokenizer, tiny_bert_config, capsys):
    pos = token_tagger(tmp_path / "pos", word_tokenizer, tiny_bert_config, POS)
    ner = token_tagger(tmp_path / "ner", word_tokenizer, tiny_bert_config, NER)
    capsys.readouterr()
    assert main(["sumerian", "tag", str(raw), "--hf-model", ner, "--hf-model", pos,
                 "--models", str(tmp_path / "none")]) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("#")]
    assert [r[1] for r in rows] == ["the", "cat", "sat", "a", "big", "dog", "ran", "on", "the", "mat"]
    assert all(r[2] in POS and r[3] in NER for r in rows)
    # one column served, no trained taggers: the other is '_'
    assert main(["sumerian", "tag", str(raw), "--hf-model", pos, "--models", str(tmp_path / "none")]) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("#")]
    assert all(r[2] in POS and r[3] == "_" for r in rows)
    assert main(["sumerian", "tag", str(raw), "--hf-model", pos, "--hf-model", pos]) == 2
    assert "two --hf-model folders tag POS" in error_line(capsys)


def test_hf_folders_the_method_cannot_serve_are_refused_in_one_line(tmp_path, raw, word_tokenizer,
                                                                     tiny_bert_config, capsys):
    t5 = str(hf_t5(tmp_path / "t5"))
    capsys.readouterr()
    assert main(["sumerian", "tag", str(raw), "--hf-model", t5]) == 2
    assert "t5 model" in (line := error_line(capsys)) and "token-classification" in line and len(line) < 300
    pos = token_tagger(tmp_path / "pos", word_tokenizer, tiny_bert_config, POS)
    assert main(["sumerian", "explain", str(raw), "--hf-model", pos, "--out", str(tmp_path / "x")]) == 2
    assert "needs an encoder-decoder (seq2seq) model" in error_line(capsys)


def test_explain_an_hf_seq2seq_translator(tmp_path, capsys):
    t5 = str(hf_t5(tmp_path / "t5"))
    raw, ref = tmp_path / "raw.txt", tmp_path / "ref.txt"
    raw.write_text("".join(s + "\n" for s, _ in PAIRS[:2]))
    ref.write_text("".join(e + "\n" for _, e in PAIRS[:2]))
    out = tmp_path / "expl"
    assert main(["sumerian", "explain", str(raw), "--hf-model", t5, "--reference", str(ref), "--out", str(out),
                 "--steps", "4"]) == 0
    assert (out / "line1.html").is_file() and (out / "line2_attention.png").is_file()
    assert (out / "line1_integrated_gradients.png").is_file()
