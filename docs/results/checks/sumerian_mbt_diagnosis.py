"""Why one round of self-training (M-BT) lost 5.6 BLEU on the small card of 2026-11-26.

That arm forward-translated (greedy) 2,000 `all_sent/train` sentences — complete sentences of every period — and
retrained on the full Ur III line corpus plus those pairs. This script holds everything else fixed and swaps the
monolingual text: one translator trains on the parallel half of `ur3_line/train` (seed 0, the small preset's
translator settings); two translators retrain, same settings, seed, tokenizers and steps, on that half plus the
greedy forward translations of 2,000 lines of either (a) the pseudo-monolingual other half (in domain) or (b) the
old `all_sent/train` selection (out of domain). It also measures what the forward model makes of each domain (BLEU
on `ur3_line/dev` and `all_sent/dev`), the length of each text and the share of training tokens it contributes.

    LMLAB_DATA=/work/shared/data OMP_NUM_THREADS=1 python docs/results/checks/sumerian_mbt_diagnosis.py
    LMLAB_DATA=/work/shared/data OMP_NUM_THREADS=1 python docs/results/checks/sumerian_mbt_diagnosis.py --old-design

writes sumerian_mbt_diagnosis.json and .md beside this file (about 10 CPU minutes on one thread). `--old-design`
reruns the 2026-11-26 arm itself on today's code — base on the full corpus, retrained on it plus the greedy
translations of the same 2,000 all_sent lines — and writes sumerian_mbt_old_design.json/.md (`--seed N`: with seed N, to ..._seedN.json/.md).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from lmlab.methods.sumerian import loaders
from lmlab.methods.sumerian.backtranslation import paired_bootstrap, pseudo_monolingual_split
from lmlab.methods.sumerian.experiment import PRESETS, mt_config
from lmlab.methods.sumerian.translate import bleu_chrf, overlaps_held_out, self_training_round, train_translator
from lmlab.utils import git_state

log = logging.getLogger("mbt_diagnosis")
N_MONO, SEED, N_DEV = 2000, 0, 400


def old_all_sent_lines(root, n: int) -> list[str]:
    """The 2026-11-26 selection: the first `n` all_sent/train Sumerian lines that neither contain nor sit inside a
    dev/test source of any parallel corpus."""
    lines = [s for s, _ in loaders.load_parallel("all_sent", "train", root)]
    bad = overlaps_held_out(lines, loaders.held_out_sources(root))
    return [s for s, b in zip(lines, bad) if not b][:n]


def token_share(tr, parallel, extra) -> float:
    """Share of the retraining corpus's target tokens that are synthetic."""
    count = lambda pairs: sum(len(tr.tgt_tok.encode(e)) for _, e in pairs)  # noqa: E731
    return count(extra) / (count(parallel) + count(extra))


def setup():
    """Logging, one thread, and the data both designs use: (root, small preset, ur3_line train, test sources, test
    references)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    root = Path(os.environ.get("LMLAB_DATA", "../shared/data")) / "sumerian"
    train = loaders.load_parallel("ur3_line", "train", root)
    test = loaders.load_parallel("ur3_line", "test", root)
    return root, PRESETS["small"], train, [s for s, _ in test], [e for _, e in test]


def main() -> None:
    root, cfg, train, src, refs = setup()
    parallel, mono, counts = pseudo_monolingual_split(train, cfg.bt_mono_frac, SEED, loaders.held_out_sources(root))
    texts = {"in_domain": mono[:N_MONO], "all_sent": old_all_sent_lines(root, N_MONO)}
    t0 = time.process_time()
    base = train_translator(parallel, mt_config(cfg, SEED), log=log.info)
    out = {"seed": SEED, "split": counts, "commit": git_state()[0], "torch": torch.__version__,
           "mt_steps": cfg.mt_steps, "beam_at_test": cfg.beam, "forward_translation": "greedy", "arms": {}}
    h_base = base.translate(src, beam=cfg.beam)
    out["parallel_only_bleu"] = bleu_chrf(h_base, refs)["bleu"]
    for dom, corpus in (("ur3_line", "ur3_line"), ("all_sent", "all_sent")):
        dev = loaders.load_parallel(corpus, "dev", root)[:N_DEV]
        out[f"forward_model_bleu_on_{dom}_dev"] = bleu_chrf(base.translate([s for s, _ in dev], beam=1),
                                                            [e for _, e in dev])["bleu"]
    for arm, lines in texts.items():
        synthetic = base.translate(lines, beam=1)
        bt = self_training_round(base, parallel, lines, log=log.info)
        hyps = bt.translate(src, beam=cfg.beam)
        extra = [(s, e) for s, e in zip(lines, synthetic) if s.strip() and e.strip()]
        out["arms"][arm] = {
            "lines": len(lines),
            "mean_source_words": statistics.fmean(len(s.split()) for s in lines),
            "source_tokens_over_max_len": sum(len(base.src_tok.encode(s, eos=True)) > base.cfg.max_len
                                              for s in lines),
            "synthetic_target_token_share": token_share(base, parallel, extra),
            "bleu": bleu_chrf(hyps, refs)["bleu"],
            "vs_parallel_only": paired_bootstrap(h_base, hyps, refs, n=1000, seed=SEED),
        }
        log.info("%s: %s", arm, out["arms"][arm])
    out["mean_source_words_parallel"] = statistics.fmean(len(s.split()) for s, _ in parallel)
    out["cpu_s"] = time.process_time() - t0
    here = Path(__file__).parent
    (here / "sumerian_mbt_diagnosis.json").write_text(json.dumps(out, indent=2) + "\n")
    rows = "\n".join(
        f"| {arm} | {a['lines']} | {a['mean_source_words']:.1f} | {a['source_tokens_over_max_len']} | "
        f"{a['synthetic_target_token_share']:.1%} | {a['bleu']:.2f} | {a['vs_parallel_only']['delta']:+.2f} "
        f"[{a['vs_parallel_only']['lo']:+.2f}, {a['vs_parallel_only']['hi']:+.2f}] |"
        for arm, a in out["arms"].items())
    (here / "sumerian_mbt_diagnosis.md").write_text(
        f"# M-BT diagnosis (generated by `{Path(__file__).name}`)\n\n"
        f"Commit {out['commit']}, torch {out['torch']}, seed {SEED}, small preset translator ({cfg.mt_steps} steps), "
        f"one CPU thread; {out['cpu_s'] / 60:.1f} CPU min. Parallel half: {counts['parallel']} pairs "
        f"(mean {out['mean_source_words_parallel']:.1f} Sumerian words per line); its translator scores "
        f"{out['parallel_only_bleu']:.2f} BLEU on ur3_line/test (beam {cfg.beam}). The forward model, greedy, scores "
        f"{out['forward_model_bleu_on_ur3_line_dev']:.2f} BLEU on ur3_line/dev and "
        f"{out['forward_model_bleu_on_all_sent_dev']:.2f} on all_sent/dev (first {N_DEV} lines each): the quality "
        "of the synthetic English it adds in each domain.\n\n"
        "| monolingual text | lines | mean Sumerian words | lines over max_len | synthetic share of target tokens | "
        "BLEU after retraining | change vs parallel only (95 % paired bootstrap) |\n|---|---|---|---|---|---|---|\n"
        + rows + "\n")


def old_design(seed: int = SEED) -> None:
    root, cfg, train, src, refs = setup()
    lines = old_all_sent_lines(root, N_MONO)
    t0 = time.process_time()
    base = train_translator(train, mt_config(cfg, seed), log=log.info)
    h_base = base.translate(src, beam=cfg.beam)
    st = self_training_round(base, train, lines, log=log.info)
    h_st = st.translate(src, beam=cfg.beam)
    out = {"seed": seed, "commit": git_state()[0], "torch": torch.__version__, "lines": len(lines),
           "full_corpus_bleu": bleu_chrf(h_base, refs)["bleu"], "after_self_training_bleu": bleu_chrf(h_st, refs)["bleu"],
           "vs_full": paired_bootstrap(h_base, h_st, refs, n=1000, seed=seed), "cpu_s": time.process_time() - t0}
    here = Path(__file__).parent
    tag = "" if seed == SEED else f"_seed{seed}"
    (here / f"sumerian_mbt_old_design{tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    b = out["vs_full"]
    (here / f"sumerian_mbt_old_design{tag}.md").write_text(
        f"# The 2026-11-26 self-training arm, rerun (generated by `{Path(__file__).name} --old-design`)\n\n"
        f"Commit {out['commit']}, torch {out['torch']}, seed {seed}, small preset translator, one CPU thread; "
        f"{out['cpu_s'] / 60:.1f} CPU min. Base on all {len(train)} ur3_line/train pairs: "
        f"{out['full_corpus_bleu']:.2f} BLEU (beam {cfg.beam}); retrained, same settings, seed, tokenizers and steps, "
        f"on those pairs plus the greedy translations of the same {len(lines)} all_sent/train lines as on "
        f"2026-11-26: {out['after_self_training_bleu']:.2f} BLEU, a change of {b['delta']:+.2f} (95 % paired "
        f"bootstrap [{b['lo']:+.2f}, {b['hi']:+.2f}]). The card of 2026-11-26 recorded 43.33 → 37.69 (−5.64).\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else SEED
    sys.exit(old_design(seed) if "--old-design" in args else main())
