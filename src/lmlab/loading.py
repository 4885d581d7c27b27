"""What the method commands read: a model the CLI accepts — an lmlab run or step folder, or a local Hugging Face
causal-LM folder — with the tokenizer (or codec) that goes with it, and text files turned into LM batches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lmlab import checkpoint, hf
from lmlab.inputs import read_lines
from lmlab.lengths import check_length
from lmlab.tokenizer import Tokenizer
from lmlab.utils import LmlabError

log = logging.getLogger(__name__)


def load_policy(path: str, step: int | None, tokenizer: str | None, device):
    """(model, codec, kind) from an HF causal-LM folder or an lmlab run/step folder."""
    p = Path(path)
    if (p / "config.json").is_file():
        log.info("loading %s (Hugging Face causal LM) ...", p)
        model = hf.load_model(p, "causal", wrap=True).to(device)  # lmlab's interface: KV-cached engine, hooks
        codec = Tokenizer.load(tokenizer) if tokenizer else hf.HFCodec(hf.load_tokenizer(p))
        return model, codec, "hf"

    log.info("loading %s (lmlab run%s) ...", p, "" if step is None else f", step {step}")
    model, meta = checkpoint.load(p, step, device=device)
    train = (meta.get("run_config") or {}).get("train") or {}
    if train.get("seq_len"):  # rows shorter than model.seq_len
        model.trained_len = int(train["seq_len"])
    model.register_forward_pre_hook(_length_check, with_kwargs=True)
    if tokenizer is None:
        cands = [Path(meta["path"]) / "tokenizer.json", Path(meta["path"]).parent / "tokenizer.json",
                 p / "tokenizer.json"]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise LmlabError(f"no tokenizer.json next to checkpoint {meta['path']}: pass --tokenizer FILE")
        tokenizer = str(found)
    return model, Tokenizer.load(tokenizer), "lmlab"


def _length_check(model, args, kwargs):
    """Forward pre-hook of an lmlab GPT: warn (once) past its trained length. A frozen cache (qTTT) is read by
    spans inside it."""
    x = args[0] if args else kwargs.get("idx")
    x = x if x is not None else kwargs.get("inputs_embeds")
    cache = kwargs.get("cache")
    if cache is not None and cache.frozen:
        check_length(model, cache.length)
    else:
        check_length(model, x.shape[1] + (cache.length if cache is not None else 0))


def model_names(paths: list[str]) -> list[str]:
    """Short names for model folders in reports: the folder names, numbered when two are alike."""
    names = [Path(p).name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    return names


def read_texts(path: str | Path, limit: int) -> list[str]:
    """Up to `limit` texts from a .txt file (one a line) or a .jsonl file (objects with "text"); at least 10."""
    p = Path(path)
    lines = read_lines(p, "data file")
    if p.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(lines, 1):
            try:
                texts.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise LmlabError(f"{p}:{n}: expected a JSON object with 'text' ({e!r})") from e
    else:
        texts = lines
    if len(texts) < 10:
        raise LmlabError(
            f"{p} holds {len(texts)} texts; entropy and MI estimates need many (hundreds or more)"
        )
    return texts[:limit]


def lm_batch(codec, lines: list[str], max_lines: int, seq_len: int, device, source="the data"):
    """(ids, targets) of up to `max_lines` texts of two or more tokens: BOS first, right-padded, next-token
    targets with -100 on padding."""
    rows = []
    for line in lines:  # encodes only the lines it keeps (a task file can be a whole corpus)
        if len(rows) == max_lines:
            break
        row = codec.encode(line, bos=True)[:seq_len]
        if len(row) >= 2:
            rows.append(row)
    if not rows:
        raise LmlabError(f"{source} has no line of two or more tokens")
    n = max(map(len, rows))
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    tgt = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        tgt[i, : len(r) - 1] = torch.tensor(r[1:])
    return ids.to(device), tgt.to(device)
