"""`lmlab ttt MODEL --context FILE --question TEXT`: answer a question about a long context after
query-only test-time training (qTTT) on that context.

MODEL is a local Hugging Face causal-LM folder (Llama/Qwen/Mistral/OLMo) or an lmlab run / step folder (the old
spelling `--model MODEL` still works, with a deprecation note).
"""

from __future__ import annotations

import logging
import time

from lmlab.errors import LmlabError
from lmlab.inputs import read_text

log = logging.getLogger(__name__)

def register(sub) -> None:
    p = sub.add_parser(
        "ttt",
        usage="lmlab ttt MODEL --context FILE --question TEXT [options]",
        help="answer a question about a long context after qTTT (query-only test-time "
        "training) on that context",
        description="One prefill of the context, N next-token steps on length-k spans that update "
        "only the query projections, then the answer over the unchanged cache.",
    )
    # nargs="?": the deprecated --model may stand in for it (run() checks that one is given)
    p.add_argument("model", nargs="?", metavar="MODEL", help="HF causal-LM folder or lmlab run/step folder")
    p.add_argument("--model", dest="model_flag", metavar="MODEL", help="deprecated: pass MODEL as the first argument")
    p.add_argument("--context", required=True, help="text file holding the long context")
    p.add_argument("--question", required=True, help="question text appended after the context")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of an lmlab run (default: latest)")
    p.add_argument(
        "--tokenizer", default=None, help="lmlab tokenizer.json (default: the run's / the HF model's)"
    )
    p.add_argument("--steps", type=int, default=32, help="qTTT steps N (paper: 32)")
    p.add_argument("--span", type=int, default=128, help="span length k (paper: 128)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (paper grid 1e-6..3e-4)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decoupled weight decay of the queries")
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip per context (0: none)")
    p.add_argument("--params", default="q_full", choices=["q_full", "q_lora"],
                   help="q_full: update the whole query projections; q_lora: a low-rank update of them")
    p.add_argument("--lora-rank", type=int, default=8, help="rank of the q_lora update")
    p.add_argument("--sampler", default="uniform", choices=["uniform", "sweep", "tail"], help="span sampler")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens of the answer")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--compare", action="store_true", help="also answer without adaptation")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (default: auto, CUDA when available)")
    p.add_argument("--seed", type=int, default=0, help="random seed (span sampling, LoRA initialisation, answer "
                   "sampling)")
    p.set_defaults(func=run)


def run(args) -> int:
    # heavy imports (torch) when the command runs, not when the parser is built
    from lmlab.lengths import trained_length
    from lmlab.loading import load_policy
    from lmlab.methods.qttt.flops import FlopModel
    from lmlab.methods.qttt.ttt import QTTT, QTTTConfig
    from lmlab.utils import get_device

    if args.model_flag is not None:
        if args.model is not None:
            raise LmlabError("model given twice: pass MODEL as the first argument, without --model")
        log.warning("--model is deprecated: pass MODEL as the first argument (lmlab ttt MODEL --context ...)")
        args.model = args.model_flag
    if args.model is None:
        raise LmlabError("ttt needs a model: lmlab ttt MODEL --context FILE --question TEXT")
    text = read_text(args.context, "context file")
    cfg = QTTTConfig(
        steps=args.steps,
        span_len=args.span,
        lr=args.lr,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip or None,
        params=args.params,
        lora_rank=args.lora_rank,
        lora_alpha=2.0 * args.lora_rank,
        sampler=args.sampler,
        seed=args.seed,
    )
    dev = get_device(args.device)
    model, codec, kind = load_policy(args.model, args.step, args.tokenizer, dev)
    context = codec.encode(text, bos=True)
    question = codec.encode("\n" + args.question)
    if len(context) < 2:
        raise LmlabError("the context encodes to fewer than 2 tokens: qTTT needs a longer context")
    if not question:
        raise LmlabError("the question encodes to no tokens")
    trained = trained_length(model)
    total = len(context) + len(question) + args.max_new_tokens
    if trained is not None and total > trained:
        log.warning("the context with its question and answer is %d tokens, past the %d the model was trained on "
                    "(max_position_embeddings / seq_len): qTTT re-weights attention over the cache and cannot "
                    "repair positions the model never learned; shorten the context to trust the answer",
                    total, trained)
    stops = {codec.eos_id} if getattr(codec, "eos_id", None) is not None else None
    qttt = QTTT(model, cfg)
    flops = FlopModel.from_model(model)
    k = min(cfg.span_len, len(context) - 1)
    log.info("model: %s (%s); context %d tokens; qTTT N=%d, k=%d, lr=%g, %s; matched thinking budget ≈ %.0f tokens",
             args.model, kind, len(context), cfg.steps, k, cfg.lr, cfg.params,
             flops.matched_thinking_tokens(cfg.steps, k, len(context)))

    def answer(steps):
        t0 = time.time()
        with qttt.adapt([context], steps=steps, progress="qTTT") as st:
            t1 = time.time()
            out = st.generate(
                [question],
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                stop_tokens=stops,
                seed=args.seed,
            )
            losses = [l[0] for l in st.losses]
        toks = [t for t in out.tokens[0] if stops is None or t not in stops]
        return codec.decode(toks), losses, t1 - t0, time.time() - t1

    if args.compare:
        base, _, tp, ta = answer(0)
        print(f"without qTTT ({tp:.1f}s prefill, {ta:.1f}s answer): {base}")
    ans, losses, tp, ta = answer(None)
    if losses:
        print(
            f"span loss: first {losses[0]:.3f}, last {losses[-1]:.3f} (mean of first/last quarter "
            f"{sum(losses[: max(1, len(losses) // 4)]) / max(1, len(losses) // 4):.3f} → "
            f"{sum(losses[-max(1, len(losses) // 4) :]) / max(1, len(losses) // 4):.3f})"
        )
    print(f"with qTTT ({tp:.1f}s prefill + adaptation, {ta:.1f}s answer): {ans}")
    return 0
