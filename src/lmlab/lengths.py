"""How long an input a model takes: refuse past its position limit (learned absolute position embeddings end
there), warn once past the length it was trained on (RoPE models run on, with worse predictions). One check,
`check_length(model, n)`, called where lengths are known: the generation engine, the HF adapter's forward, qTTT's
prefill, composition, lmlab runs loaded by `lmlab.loading.load_policy`."""

from __future__ import annotations

import logging
import weakref

from torch import nn

from lmlab.errors import PositionLimitError

log = logging.getLogger(__name__)

# submodule names of learned absolute position embeddings (GPT-2 / GPT-Neo, OPT, BERT-like)
LEARNED_POSITIONS = ("wpe", "embed_positions", "position_embeddings")
_LIMITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> position limit (None: none)
_WARNED: weakref.WeakSet = weakref.WeakSet()  # models already warned about their trained length


def _core(model: nn.Module) -> nn.Module:
    return getattr(model, "hf", model)  # lmlab's HFModel adapter holds the transformers model as .hf


def trained_length(model: nn.Module) -> int | None:
    """The sequence length the model was trained on: an lmlab run's training row length (`trained_len`, set when
    its checkpoint is loaded) or its model.seq_len; a Hugging Face config's max_position_embeddings / n_positions."""
    model = _core(model)
    if getattr(model, "trained_len", None):
        return model.trained_len
    cfg = getattr(model, "cfg", None)
    if isinstance(getattr(cfg, "seq_len", None), int):  # lmlab GPT
        return cfg.seq_len
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def position_limit(model: nn.Module) -> int | None:
    """The most positions the model can take at all: its config's limit where positions are learned embeddings
    (GPT-2, OPT, BERT); None where they are computed (RoPE, ALiBi: lmlab's GPT, Llama, Qwen, Mistral, GPT-NeoX)."""
    model = _core(model)
    if model not in _LIMITS:
        learned = getattr(model, "config", None) is not None and any(
            isinstance(m, nn.Embedding) and name.rsplit(".", 1)[-1] in LEARNED_POSITIONS
            for name, m in model.named_modules())
        _LIMITS[model] = trained_length(model) if learned else None
    return _LIMITS[model]


def check_length(model: nn.Module, n: int, what: str = "the sequence") -> None:
    """Refuse `n` positions past the model's position limit (PositionLimitError); warn once per model past the
    length it was trained on."""
    limit = position_limit(model)
    if limit is not None and n > limit:
        raise PositionLimitError(
            f"{what} is {n} tokens, past the {limit} positions {type(_core(model)).__name__} can take (its learned "
            "position embeddings end there): shorten the input or lower --seq-len/--max-length/--max-new-tokens")
    trained = trained_length(model)
    core = _core(model)
    if trained is not None and n > trained and core not in _WARNED:
        _WARNED.add(core)
        log.warning("%s is %d tokens, past the %d the model was trained on: its predictions there may be poor",
                    what, n, trained)
