import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXAMPLE_METHODS = Path(__file__).resolve().parent / "example_methods"  # a test-only method folder
if "LMLAB_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["LMLAB_DATA"] = str(SHARED_DATA)


def save_char_run(path, chars, step: int = 1, seed: int | None = 0, config: dict | None = None, **model) -> Path:
    """A random lmlab GPT (1 layer, 2 heads, d_model 16, seq_len 64 unless `model` says otherwise) with a character
    tokenizer over `chars`, saved as the run folder `path` at `step` (`seed` seeds its weights; None: as they come)."""
    from lmlab import checkpoint
    from lmlab.model import GPT, GPTConfig
    from lmlab.tokenizer import CharTokenizer

    tok = CharTokenizer(chars)
    if seed is not None:
        torch.manual_seed(seed)
    shape = {"n_layers": 1, "n_heads": 2, "d_model": 16, "seq_len": 64, **model}
    checkpoint.save(path, step, GPT(GPTConfig(vocab_size=tok.vocab_size, **shape)), config=config)
    tok.save(Path(path) / "tokenizer.json")
    return Path(path)


@pytest.fixture
def shared_data() -> Path:
    """The real-data root (../shared/data or $LMLAB_DATA); skips with a reason when absent."""
    root = Path(os.environ.get("LMLAB_DATA", SHARED_DATA))
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (set LMLAB_DATA)")
    return root


WORDS = "the cat dog sat ran on a mat rug big small red".split()


@pytest.fixture(scope="session")
def word_tokenizer():
    """A whitespace word-level HF tokenizer over WORDS (ids 0-3: [PAD], [UNK], [CLS], [SEP]), for tiny HF
    models saved with their tokenizer."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                      cls_token="[CLS]", sep_token="[SEP]")


@pytest.fixture(scope="session")
def tiny_bert_config():
    """Factory of tiny BertConfigs over the word_tokenizer's vocabulary (head size 8, MLP 2x hidden)."""
    import transformers as tf

    def make(hidden: int = 32, layers: int = 2, **kwargs):
        return tf.BertConfig(vocab_size=len(WORDS) + 4, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=hidden // 8, intermediate_size=2 * hidden,
                             max_position_embeddings=32, **kwargs)

    return make


@pytest.fixture
def extra_methods(monkeypatch):
    """Put folders of extra method packages on `lmlab.methods.__path__` — as new `src/lmlab/methods/<name>/`
    folders would be — with fresh experiment discovery; the packages, their experiments and attention
    variants are forgotten afterwards. Use: `extra_methods(folder)`."""
    import sys

    import lmlab.methods
    from lmlab import experiment, model

    before_modules, before_attn = set(sys.modules), dict(model.ATTENTIONS)
    monkeypatch.setattr(lmlab.methods, "__path__", list(lmlab.methods.__path__))
    monkeypatch.setattr(experiment, "_REGISTRY", dict(experiment._REGISTRY))
    monkeypatch.setattr(experiment, "_DISCOVERED", False)

    def add(folder: Path) -> None:
        lmlab.methods.__path__.append(str(folder))

    yield add
    for name in set(sys.modules) - before_modules:
        if name.startswith("lmlab.methods."):
            del sys.modules[name]
    model.ATTENTIONS.clear()
    model.ATTENTIONS.update(before_attn)


SUMERIAN_SENTENCES = [  # (token, POS, NER)
    [("lugal", "N", "O"), ("e2", "N", "O"), ("mu-un-du3", "V", "O")],
    [("ur-{d}nansze", "NE", "PN"), ("dumu", "N", "O"), ("ab-ba", "NE", "PN")],
    [("nibru{ki}", "NE", "SN"), ("e2", "N", "O"), ("mu-un-du3", "V", "O")],
    [("3(disz)", "NU", "O"), ("udu", "N", "O"), ("lu2-gi-na", "NE", "PN")],
]


@pytest.fixture
def sumerian_data():
    """`make(root)`: a tiny Sumerian data folder in `root/sumerian/` (the shared data's layout: POS/NER CoNLL
    splits, a city list, the ur3_line parallel corpus) for `lmlab sumerian train --data root`; returns root."""

    def make(root: Path) -> Path:
        base = root / "sumerian"
        for task, col in (("pos", 1), ("ner", 2)):
            (base / task).mkdir(parents=True, exist_ok=True)
            text = "".join("".join(f"{w[0]} {w[col]}\n" for w in s) + "\n" for s in SUMERIAN_SENTENCES)
            for split in ("train", "dev", "test"):
                (base / task / f"{split}.txt").write_text(text)
        (base / "named_entities").mkdir(exist_ok=True)
        (base / "named_entities" / "city_ner.csv").write_text("Text,NER\nNibru,QN\nUmma,QN\n")
        par = base / "parallel" / "ur3_line"
        par.mkdir(parents=True, exist_ok=True)
        src = ["lugal e2 mu-un-du3", "dumu ab-ba", "3(disz) udu", "e2 lugal", "udu dumu", "nibru{ki} e2"]
        eng = ["the king built the house", "son of abba", "3 sheep", "house of the king", "sheep of the son",
               "the house of nippur"]
        for split in ("train", "dev", "test"):
            (par / f"{split}.sum").write_text("\n".join(src) + "\n")
            (par / f"{split}.eng").write_text("\n".join(eng) + "\n")
        return root

    return make
