"""Hugging Face models in the Sumerian pipeline: a token-classification folder as a POS or NER tagger, and the
attributions of an HF seq2seq translator (T5, BART, Marian) for `lmlab sumerian explain --hf-model`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lmlab.hf import load_model, load_tokenizer
from lmlab.methods.sumerian.interpret import attribute, group_matrix, hf_seq2seq_explainable
from lmlab.methods.sumerian.pipeline import word_groups
from lmlab.methods.sumerian.translate import HFTranslator
from lmlab.utils import LmlabError

BIO = ("B-", "I-", "E-", "S-")


def _architectures(path: Path) -> tuple[str, list[str]]:
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LmlabError(f"{path} is not a Hugging Face model folder (no readable config.json): pass a folder "
                         "saved with save_pretrained") from None
    return str(cfg.get("model_type", "?")), list(cfg.get("architectures") or [])


class HFTagger:
    """A local `...ForTokenClassification` folder tagging whitespace-split words: each word gets the label of its
    first sub-token; words past the model's length get "_"."""

    def __init__(self, model, tokenizer, device="cpu"):
        if not getattr(tokenizer, "is_fast", False):
            raise LmlabError("an HF tagger needs a fast tokenizer (tokenizer.json), which maps sub-tokens to words")
        self.model, self.tok, self.device = model.to(device).eval(), tokenizer, torch.device(device)
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.column = "ner" if all(lb == "O" or lb.startswith(BIO) for lb in self.labels) else "pos"

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu") -> HFTagger:
        """The tagger in a local folder; any other kind of model is refused in one line."""
        path = Path(path)
        kind, archs = _architectures(path)
        if not any(a.endswith("ForTokenClassification") for a in archs):
            raise LmlabError(f"{path} holds a {kind} model ({', '.join(archs) or 'no architecture named'}), not a "
                             "token-classification model: sumerian tag labels every word, so it needs a folder "
                             "saved from ...ForTokenClassification")
        return cls(load_model(path, kind="token"), load_tokenizer(path), device)

    @torch.no_grad()
    def predict(self, sentences: list[list[str]]) -> list[list[str]]:
        """One label per word of each sentence."""
        out = []
        for words in sentences:
            enc = self.tok(words, is_split_into_words=True, truncation=True, return_tensors="pt")
            pred = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits[0].argmax(-1).tolist()
            tags = ["_"] * len(words)
            for pos, w in enumerate(enc.word_ids(0)):
                if w is not None and tags[w] == "_":
                    tags[w] = self.labels[pred[pos]]
            out.append(tags)
        return out


def hf_translator_for_explain(path: str | Path, device="cpu") -> HFTranslator:
    """An HF seq2seq folder with eager attention (the attention view reads its cross-attention maps)."""
    return HFTranslator(load_model(path, kind="seq2seq", attn_implementation="eager"), load_tokenizer(path), device)


class _Words:
    """`word_groups`' view of an HF tokenizer: pieces without special tokens."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]


def explain_hf_translation(tr: HFTranslator, sumerian: str, english: str | None = None,
                           methods=("integrated_gradients", "saliency", "feature_ablation", "attention"),
                           n_steps: int = 32) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """As `pipeline.explain_translation`, for an HF seq2seq translator: [English word × Sumerian word] matrices
    (sub-token rows averaged, columns summed), or token level when the pieces do not line up with words."""
    english = english if english is not None else tr.translate([sumerian])[0]
    src_words, out_words = sumerian.split(), english.split()
    if not src_words or not out_words:
        raise LmlabError("cannot explain an empty line or an empty translation")
    src = torch.tensor(tr._ids([sumerian]), device=tr.device)
    out = torch.tensor(tr._ids([english]), device=tr.device)
    expl = hf_seq2seq_explainable(tr.model, src, out)
    n_src, n_out = src.shape[1], out.shape[1]
    eos = tr.tok.eos_token_id
    n_src -= int(eos is not None and src[0, -1].item() == eos)  # the <eos> column and row are no words
    n_out -= int(eos is not None and out[0, -1].item() == eos)
    cols, rows = word_groups(_Words(tr.tok), src_words), word_groups(_Words(tr.tok), out_words)
    grouped = (cols is not None and rows is not None and n_src == sum(map(len, cols))
               and n_out == sum(map(len, rows)))
    mats = {}
    for m in methods:
        a = attribute(expl, m, n_steps=n_steps).matrix[:n_out, :n_src]
        mats[m] = group_matrix(a, rows, cols) if grouped else a
    if not grouped:
        src_words = tr.tok.convert_ids_to_tokens(src[0, :n_src].tolist())
        out_words = tr.tok.convert_ids_to_tokens(out[0, :n_out].tolist())
    return mats, src_words, out_words
