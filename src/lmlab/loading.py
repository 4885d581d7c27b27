"""Load a model the CLI accepts — an lmlab run or step folder, or a local Hugging Face causal-LM folder —
with the tokenizer (or codec) that goes with it. Shared by `lmlab sft|rl|post-train`, `compose` and `ttt`."""

from __future__ import annotations

from pathlib import Path

from lmlab.utils import LmlabError


def load_policy(path: str, step: int | None, tokenizer: str | None, device):
    """(model, codec, kind) from an HF causal-LM folder or an lmlab run/step folder."""
    from lmlab.tokenizer import Tokenizer

    p = Path(path)
    if (p / "config.json").is_file():
        from lmlab import hf
        from lmlab.posttrain import HFCodec

        model = hf.load_model(p, "causal", wrap=True).to(device)  # lmlab's interface: KV-cached engine, hooks
        codec = Tokenizer.load(tokenizer) if tokenizer else HFCodec(hf.load_tokenizer(p))
        return model, codec, "hf"
    from lmlab import checkpoint

    model, meta = checkpoint.load(p, step, device=device)
    if tokenizer is None:
        cands = [Path(meta["path"]) / "tokenizer.json", Path(meta["path"]).parent / "tokenizer.json",
                 p / "tokenizer.json"]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise LmlabError(f"no tokenizer.json next to checkpoint {meta['path']}: pass --tokenizer FILE")
        tokenizer = str(found)
    return model, Tokenizer.load(tokenizer), "lmlab"
