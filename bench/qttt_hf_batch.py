"""qTTT on a Hugging Face decoder: B contexts adapted in one left-padded batch against the same B contexts one at a
time (the only way before), same steps, spans and answers (tests/methods/qttt/test_ttt_hf.py checks they are equal).

Prints seconds for each and the loop ÷ batch ratio measured in the same run. The model is a randomly initialised
Llama built from its config (no download): speed does not depend on the weights.

    python bench/qttt_hf_batch.py            # CUDA if present: d = 512, 8 layers, T = 2048, B = 8
    python bench/qttt_hf_batch.py --quick    # CPU-sized: d = 64, 2 layers, T = 256, B = 8
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers

from lmlab.methods.qttt.ttt import QTTT, QTTTConfig
from lmlab.utils import get_device


def clocked(fn, dev) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = get_device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    d, layers, T, B, steps, k = (64, 2, 256, 8, 8, 32) if args.quick else (512, 8, 2048, 8, 16, 128)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=layers,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2 * T)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    contexts = [torch.randint(0, 256, (T - 7 * i,), generator=gen).tolist() for i in range(B)]  # unequal lengths
    questions = [[1, 2, 3]] * B
    q = QTTT(model, QTTTConfig(steps=steps, span_len=k, lr=1e-4))

    def loop():
        for c, qu in zip(contexts, questions):
            with q.adapt([c]) as st:
                st.generate([qu], max_new_tokens=4)

    def batch():
        with q.adapt(contexts) as st:
            st.generate(questions, max_new_tokens=4)

    batch()  # warm-up
    t_loop, t_batch = clocked(loop, dev), clocked(batch, dev)
    print(json.dumps({"device": str(dev), "d_model": d, "layers": layers, "context": T, "contexts": B,
                      "steps": steps, "span": k, "loop_s": round(t_loop, 3), "batch_s": round(t_batch, 3),
                      "loop_over_batch": round(t_loop / t_batch, 2)}))


if __name__ == "__main__":
    main()
