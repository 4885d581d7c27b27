import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.tokenizer import BPETokenizer, CharTokenizer, Tokenizer
from lmlab.utils import LmlabError

ALPHABET = "abcdefghij ,.\n<>"


@pytest.fixture(scope="module")
def bpe():
    texts = [f"the {w} sat on the mat number {i}. ünïcödé → ok" for i in range(60) for w in ("cat", "dog")]
    return BPETokenizer.train(texts, vocab_size=400, specials=["<sep>", "<ans>"])


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_char_round_trip(text):
    tok = CharTokenizer(ALPHABET, specials=["<pad>", "<bos>", "<eos>", "<sep>"])
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids[1:-1]) == text


def test_char_specials_are_single_ids_and_skippable(tmp_path):
    tok = CharTokenizer.from_text("ab=", specials=["<sep>"])
    assert tok.specials[:3] == ["<pad>", "<bos>", "<eos>"] and tok.pad_id == 0
    ids = tok.encode("ab<sep>ba")
    assert ids.count(tok.token_id("<sep>")) == 1 and len(ids) == 5
    assert tok.decode(ids) == "ab<sep>ba" and tok.decode(ids, skip_special=True) == "abba"
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.encode("ab<sep>ba") == ids and again.vocab_size == tok.vocab_size
    with pytest.raises(LmlabError, match="not in the tokenizer"):
        tok.encode("abc")


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=30))
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text  # byte-level: nothing is out of vocabulary


def test_bpe_specials_save_load(bpe, tmp_path):
    assert bpe.vocab_size <= 400
    ids = bpe.encode("the cat<sep>42", bos=True)
    assert ids[0] == bpe.bos_id and bpe.token_id("<sep>") in ids
    assert len(bpe.encode("the cat sat on the mat")) < len("the cat sat on the mat") / 2  # merges learned
    bpe.save(tmp_path / "tok.json")
    again = Tokenizer.load(tmp_path / "tok.json")
    assert isinstance(again, BPETokenizer) and again.encode("the cat<sep>42", bos=True) == ids
    assert again.decode(ids, skip_special=True) == "the cat42"


def test_foreign_tokenizer_files_give_one_line_errors_naming_the_file(tmp_path):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models

    # a Hugging Face tokenizer.json without lmlab's specials (e.g. a BERT-style vocabulary)
    hf = HFTok(models.WordLevel({"[UNK]": 0, "[CLS]": 1, "<pad>": 2, "a": 3}, unk_token="[UNK]"))
    path = tmp_path / "foreign.json"
    path.write_text(hf.to_str())
    with pytest.raises(LmlabError) as e:
        Tokenizer.load(path)
    msg = str(e.value)
    assert str(path) in msg and "<bos>" in msg and "<eos>" in msg and "data.tokenizer=bpe" in msg
    assert "<pad>," not in msg.split("special token(s)")[1].split(":")[0]  # only the missing ones are named

    junk = tmp_path / "junk.json"
    junk.write_text("not json")
    with pytest.raises(LmlabError, match="junk.json.*not JSON"):
        Tokenizer.load(junk)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LmlabError, match="bin.json"):
        Tokenizer.load(binary)


def test_pretrain_with_a_foreign_tokenizer_fails_before_writing(tmp_path):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models

    from lmlab.config import load_config
    from lmlab.train import pretrain

    path = tmp_path / "foreign.json"
    path.write_text(HFTok(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).to_str())
    cfg = load_config(None, {"data.tokenizer": str(path), "train.device": "cpu", "train.max_steps": 1})
    with pytest.raises(LmlabError, match="<bos>"):
        pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "tokenizer.json").exists()


@pytest.fixture
def gpt2_style(tmp_path):
    """A stock byte-level BPE saved by transformers: bos_token = eos_token = <|endoftext|>, no pad token."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = HFTok(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(["the cat sat on the mat", "12+34=46", "a red dog ran"] * 20, trainer=trainer)
    path = tmp_path / "gpt2tok"
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(path)
    return path


def test_a_stock_hf_tokenizer_plays_lmlabs_roles(gpt2_style, tmp_path, caplog):
    with caplog.at_level("INFO", logger="lmlab.tokenizer"):
        tok = Tokenizer.load(gpt2_style)
    end = tok.tok.token_to_id("<|endoftext|>")
    assert tok.bos_id == tok.eos_id == end and tok.pad_id == tok.tok.token_to_id("<pad>") != end
    assert "has no pad token: added <pad>" in caplog.text
    ids = tok.encode("the cat", bos=True, eos=True)
    assert ids[0] == ids[-1] == end and tok.decode(ids[1:-1]) == "the cat"
    tok.save(tmp_path / "again" / "tokenizer.json")  # the roles travel with it (HF's special_tokens_map.json)
    back = Tokenizer.load(tmp_path / "again")
    assert (back.bos_id, back.eos_id, back.pad_id, back.vocab_size) == (end, end, tok.pad_id, tok.vocab_size)


def test_pretrain_on_a_stock_hf_tokenizer(gpt2_style, tmp_path):
    from lmlab.cli import main
    from lmlab.loading import load_policy

    out = tmp_path / "run"
    assert main(["pretrain", "--config", "tiny", "--out", str(out), f"data.tokenizer={gpt2_style}",
                 "model.d_model=32", "model.n_heads=2", "model.seq_len=64", "train.max_steps=2",
                 "train.batch_size=4", "train.save_every=2", "train.save_steps=[]", "train.eval_every=2",
                 "train.eval_batches=1", "train.progress=false", "train.tensorboard=false"]) == 0
    model, tok, kind = load_policy(str(out), None, None, "cpu")
    assert kind == "lmlab" and model.cfg.vocab_size >= tok.vocab_size == Tokenizer.load(gpt2_style).vocab_size
    assert tok.bos_id == tok.tok.token_to_id("<|endoftext|>")
    # exported, the tokenizer encodes as lmlab does: its own <|endoftext|> first, pad kept
    from transformers import AutoTokenizer

    assert main(["export", str(out), "--to", str(tmp_path / "hf")]) == 0
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf("the cat").input_ids == tok.encode("the cat", bos=True)
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<pad>")
