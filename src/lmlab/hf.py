"""Hugging Face interop: load local `transformers` models behind the small interface lmlab's methods use.

Everything is offline (`local_files_only=True`). Architectures with named projections are
Llama, Qwen2/3, Mistral, OLMo (`model.layers[i].self_attn.{q,k,v,o}_proj`) and GPT-2 (fused `c_attn`).
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from lmlab.utils import LmlabError

KINDS = ("causal", "seq2seq", "encoder", "classifier")


def load_model(path: str | Path, kind: str = "causal", **kwargs) -> nn.Module:
    """Load a local HF model directory; kind: causal | seq2seq | encoder | classifier."""
    import transformers as tf

    p = Path(path)
    if not p.is_dir() or not (p / "config.json").exists():
        raise LmlabError(f"{p} is not a Hugging Face model directory (no config.json): pass a folder saved "
                         "with save_pretrained (weights cannot be downloaded here)")
    auto = {"causal": tf.AutoModelForCausalLM, "seq2seq": tf.AutoModelForSeq2SeqLM, "encoder": tf.AutoModel,
            "classifier": tf.AutoModelForSequenceClassification}
    if kind not in auto:
        raise LmlabError(f"unknown model kind {kind!r}; choose from {', '.join(KINDS)}")
    try:
        return auto[kind].from_pretrained(str(p), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise LmlabError(f"could not load {p} as a {kind} model: {e}") from e


def load_tokenizer(path: str | Path):
    import transformers as tf

    try:
        return tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise LmlabError(f"no tokenizer in {path}: {e}") from e


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The list of transformer blocks of an lmlab GPT or a HF decoder model."""
    if hasattr(model, "blocks"):  # lmlab GPT
        return list(model.blocks)
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or model
    for attr in ("layers", "h", "blocks"):
        if hasattr(base, attr):
            return list(getattr(base, attr))
    raise LmlabError(f"cannot find the decoder layers of {type(model).__name__}: supported are lmlab GPT, "
                     "Llama/Qwen/Mistral/OLMo (model.layers) and GPT-2 (transformer.h)")


def attention_projections(model: nn.Module) -> list[dict[str, nn.Module]]:
    """Per layer {"q": ..., "k": ..., "v": ..., "o": ...} linear modules (GPT-2: {"qkv": c_attn, "o": c_proj})."""
    out = []
    for layer in decoder_layers(model):
        attn = getattr(layer, "attn", None) or getattr(layer, "self_attn", None) or getattr(layer, "attention", None)
        if attn is None:
            raise LmlabError(f"no attention module found in {type(layer).__name__}")
        if hasattr(attn, "q_proj"):
            out.append({"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": attn.o_proj})
        elif hasattr(attn, "c_attn"):
            out.append({"qkv": attn.c_attn, "o": attn.c_proj})
        else:
            raise LmlabError(f"{type(attn).__name__} has no named q/k/v projections")
    return out


def hidden_size(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "d_model"):
        return cfg.d_model
    c = model.config
    return getattr(c, "hidden_size", None) or getattr(c, "n_embd", None) or c.d_model
