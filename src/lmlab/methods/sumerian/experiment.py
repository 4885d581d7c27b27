"""Sumerian POS/NER/MT pipeline and InterpretLR attributions (Bansal et al., 2021) at small scale, on the decision
engine: `measure(ctx, seed)` returns one seed's numbers, a pure `decide_*` per claim or check turns the per-seed
numbers into a `Verdict`, and `summarize` writes the tables and figures.

One seed measures:
1. Taggers (HMM, CRF, BiLSTM-CRF) on the CDLI POS and NER corpora, trained with entity-swap augmentation on a
   training sample drawn by the seed (all sentences at small/gpu), and three simple baselines: the majority class,
   the most frequent tag per word (unknown words: the majority tag) and the same with a word-shape fallback.
2. At small/gpu, a small encoder–decoder Transformer on the Ur III line-by-line parallel corpus against copy and
   lexicon baselines (BLEU/chrF), with the measured differences that explain its BLEU (decoding, tokenisation,
   near-duplicates); monolingual back-translation (M-BT, forward translation of Sumerian text, as the paper does
   it) as a controlled comparison on a pseudo-monolingual split of the training corpus (`backtranslation.py`);
   and the trained translator's attributions on the one sentence the shared data give an expert alignment for
   (a case study: a check).
3. On a synthetic translation task with known alignments, attributions of a trained model against those of its
   untrained twin (same architecture and initialisation): a check that the attribution code tracks learning.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.experiment import RunContext, experiment, presets
from lmlab.methods.sumerian import loaders
from lmlab.methods.sumerian.backtranslation import bleu_breakdown, paired_bootstrap, pseudo_monolingual_split
from lmlab.methods.sumerian.interpret import (
    METHODS,
    agreement,
    attribute_all,
    gold_mask,
    heatmap_axes,
    seq2seq_explainable,
)
from lmlab.methods.sumerian.metrics import tagging_scores
from lmlab.methods.sumerian.pipeline import augmented, explain_translation, make_tagger
from lmlab.methods.sumerian.seq2seq import Seq2SeqConfig, Seq2SeqTransformer, greedy_decode
from lmlab.methods.sumerian.taggers import (
    BiLSTMCRFConfig,
    MajorityTagger,
    WordMajorityTagger,
    WordShapeMajorityTagger,
    attested_entries,
)
from lmlab.methods.sumerian.tasks import AlignedTranslationTask
from lmlab.methods.sumerian.translate import (
    LexiconBaseline,
    MTConfig,
    bleu_chrf,
    copy_baseline,
    epochs_covered,
    self_training_round,
    train_translator,
)
from lmlab.train import fit
from lmlab.utils import DATA_HINT
from lmlab.verdict import Verdict, by_threshold, check, not_tested, part_not_measured, rounded, undecided

CLAIMS = {
    "pos_taggers_beat_baselines": (
        "every POS tagger (HMM, CRF, BiLSTM-CRF) beats the strongest simple baseline — the best of the majority "
        "class, the most frequent tag per word, and the most frequent tag per word with a word-shape fallback for "
        "unknown words — in token accuracy on the POS test split"
    ),
    "ner_taggers_beat_baselines": (
        "every NER tagger (HMM, CRF, BiLSTM-CRF) beats the strongest simple baseline — the best of the majority "
        "class, the most frequent tag per word, and the most frequent tag per word with a word-shape fallback for "
        "unknown words — in entity F1 on the NER test split"
    ),
    "mt_beats_baseline": (
        "the encoder-decoder Transformer beats the better of a copy and a word-lexicon baseline in BLEU "
        "(by at least 1 point) on Ur III line-by-line test data"
    ),
    "back_translation_raises_bleu": (
        "monolingual back-translation (M-BT) raises the Transformer's BLEU over the Transformer trained on the "
        "parallel data alone (paper: 44.14 with 5 rounds vs 42.23 without, all complete sentences). Tested as one "
        "round on Ur III lines: the Sumerian side of a random half of the training corpus is the monolingual text "
        "(the real monolingual corpus is absent), forward-translated by the model trained on the other half and "
        "stacked onto it; BLEU gain by at least 1 point over that half alone, same steps"
    ),
    "attributions_agree_with_experts": (
        "InterpretLR's attributions of the translation model agree with expert human attributions (for each "
        "English word, the Sumerian words an expert marks as its source)"
    ),
}

CHECKS = {
    "synthetic_attributions_align": (
        "on a synthetic translation task with known word alignments, attributions of a trained model agree "
        "with the true alignment far more than those of its untrained twin (mean average precision over "
        "methods +0.20, and higher for every method), on every seed"
    ),
    "expert_example_case_study": (
        "case study of one sentence (the InterpretLR highlights.png example, hand-encoded expert alignment): "
        "the trained translator's integrated-gradients and attention attributions rank the expert-aligned "
        "Sumerian word above chance (mean average precision over the aligned English words above that of a "
        "random ranking), on every seed"
    ),
}

# --- margins, each with its source; committed before any engine run of this experiment ---
# Tagger score minus the strongest baseline's score: 0.05 POS token accuracy and 0.05 NER entity F1 are the
# margins over the lookup baseline committed in 2f2f9a2 ("taggers must beat a word-lookup baseline"), before the
# engine; the spec (10, §5.2) gives no figure ("well above the majority-class baseline"), and the paper's tagger
# scores are not verified there, so no paper number enters.
TAGGER_MARGIN = {"pos": 0.05, "ner": 0.05}
# A tagger has learned the task when it beats the majority-class tagger by this much (POS token accuracy; NER
# entity F1, where the majority tagger, tagging every token O, scores 0): lmlab's choice, written with the engine
# move before any run of it. Below it the claim is undecided (not learned), never not held.
TAGGER_LEARNED = {"pos": 0.05, "ner": 0.05}
# BLEU points over the better of copy and lexicon: committed with the first sumerian_pipeline (0b4decf).
BLEU_MARGIN = 1.0
# The translator has learned when its BLEU exceeds the copy baseline's (≈ 0.1–0.2: only numerals survive) by this
# much: lmlab's choice, written with the engine move before any run of it. The earlier card's 150-step translator,
# which emits "the the the ...", scored 0.10 BLEU.
MT_LEARNED_BLEU = 5.0
# Mean AP over attribution methods, trained minus untrained twin: committed with the first sumerian_pipeline
# (0b4decf); spec 10 §5.2 asks only that the trained model agree more.
AP_MARGIN = 0.20
SYNTH_LEARNED = 0.5  # exact-match share the synthetic model must reach to count as trained (0b4decf)
# M-BT's BLEU gain: the same 1.0 point as BLEU_MARGIN (0b4decf), committed with the decided M-BT claim before any
# run of it. The paper's own gains: +1.91 after 5 rounds, −0.25 after 3 (spec 10, table of nmt_results.png). The
# noise floor is measured per seed: 1.96 × the paired-bootstrap sd of the BLEU difference over test sentences.
BT_MARGIN = 1.0
BOOTSTRAP_Z = 1.96

TASK_METRIC = {"pos": "accuracy", "ner": "entity_f1"}
BASELINES = ("majority", "word_majority", "word_shape_majority")
BT_BASE, BT_SYSTEM = "transformer (parallel half)", "transformer (parallel half) + 1 round M-BT"
EXPERT_METHODS = ("integrated_gradients", "attention")


@dataclass
class Config:
    """One seed: HMM/CRF/BiLSTM-CRF taggers on the CDLI POS and NER corpora against three baselines; at small/gpu an
    encoder–decoder Transformer on an Ur III parallel corpus against copy and lexicon baselines (with one round of
    self-training); attributions of a trained and an untrained model on a synthetic translation task with known
    alignments. Sizes of 0 (tag_train, tag_test, mt_train, mt_test) mean "all"; tag_train
    sentences are drawn at random by the seed."""

    seeds: int = 2  # seeds of the decision engine
    # 1. tagging
    taggers: str = "hmm,crf,bilstm_crf"  # comma-separated
    augment_copies: int = 1  # entity-swapped copies of each training sentence
    tag_train: int = 1000
    tag_test: int = 600
    compare_augment: bool = False  # also a CRF trained without augmentation
    crf_iters: int = 50
    bilstm_epochs: int = 4
    # 2. translation: trained (and its claim decided) only when decide_mt; the tiny preset's budget leaves the
    # translator far from converged (it needs ~2000 steps of batch 64 on Ur III lines), so tiny skips it
    decide_mt: bool = False
    mt_corpus: str = "ur3_line"
    mt_train: int = 0
    mt_test: int = 200
    mt_steps: int = 150
    mt_d_model: int = 64
    mt_vocab: int = 1000
    mt_batch: int = 64
    mt_lr: float = 3e-3
    beam: int = 2
    back_translation: bool = False  # the M-BT comparison (two more translators per seed)
    bt_mono_frac: float = 0.5  # share of the training pairs whose Sumerian side is the monolingual text
    bootstrap: int = 1000  # test-set resamples for the paired bootstrap of BLEU differences
    # 3. synthetic alignment
    synth_steps: int = 250
    synth_eval: int = 12  # held-out sentences whose attributions are scored
    ig_steps: int = 16  # integrated-gradients steps (also for the expert example sentence)


# fmt: off
PRESETS = presets(
    Config,
    tiny={},
    small={"seeds": 3, "tag_train": 0, "tag_test": 0, "compare_augment": True, "crf_iters": 100,
           "bilstm_epochs": 1, "decide_mt": True, "mt_test": 0, "mt_steps": 1500, "mt_d_model": 128,
           "mt_vocab": 2000, "mt_lr": 2e-3, "beam": 4, "back_translation": True,
           "synth_steps": 400, "synth_eval": 30, "ig_steps": 32},
    gpu={"seeds": 3, "tag_train": 0, "tag_test": 0, "crf_iters": 100, "bilstm_epochs": 2, "decide_mt": True,
         "mt_test": 0, "mt_steps": 4000, "mt_d_model": 256, "mt_vocab": 2000, "mt_batch": 128, "mt_lr": 1e-3,
         "beam": 5, "back_translation": True, "synth_steps": 600, "synth_eval": 60,
         "ig_steps": 50},
)
# fmt: on

# A sentence from the InterpretLR figure, with lexical correspondences encoded by hand from its gloss
# ("barley rations of the female weavers under seal of UrAnan the foreman"); function words are unaligned.
# The only expert alignment the shared data give (misc/human_eval holds sentence pairs, no alignments).
HIGHLIGHT = {
    "source": "sze-ba geme2 usz-bar kiszib3 ur-{d}asznan ugula".split(),
    "target": "barley rations of the female weavers under seal of UrAnan the foreman".split(),
    "alignment": [(0, 0), (1, 0), (4, 1), (5, 2), (6, 3), (7, 3), (9, 4), (11, 5)],
}


def tagger_names(cfg: Config) -> list[str]:
    return [t.strip() for t in cfg.taggers.split(",") if t.strip()]


# ---------------------------------------------------------------- measure: one seed
def measure(ctx: RunContext, seed: int) -> dict:
    """One seed's numbers: the synthetic attribution check; with the real data, every tagger and baseline on the
    POS and NER test splits and (when `decide_mt`) every MT system's BLEU/chrF and the expert example."""
    if ctx.device.type == "cpu":  # every model here is tiny: intra-op threads only add overhead
        torch.set_num_threads(1)  # run_experiment restores the thread count afterwards
    root = ctx.data("sumerian")
    numbers = {"synthetic": measure_synthetic(ctx, seed), "tagging": None, "mt": None}
    if root is not None:
        numbers["tagging"] = measure_tagging(ctx, root, seed)
        if ctx.cfg.decide_mt:
            numbers["mt"] = measure_translation(ctx, root, seed)
    return numbers


def tagging_sample(root, n: int, seed: int):
    """`n` (0: all) POS/NER training sentences drawn at random by `seed` (the same sentences for both tasks), in
    corpus order."""
    pos, ner = loaders.load_tagged("pos", "train", root), loaders.load_tagged("ner", "train", root)
    if n and n < len(pos):
        idx = sorted(np.random.default_rng(seed).choice(len(pos), n, replace=False).tolist())
        pos, ner = [pos[i] for i in idx], [ner[i] for i in idx]
    return pos, ner


def measure_tagging(ctx: RunContext, root, seed: int) -> dict:
    cfg = ctx.cfg
    pos_orig, ner_orig = tagging_sample(root, cfg.tag_train, seed)
    pos_train, ner_train = augmented(root, pos_orig, ner_orig, cfg.augment_copies, seed)
    _, list_counts = attested_entries(loaders.load_entity_lists(root), ner_orig)
    bilstm = BiLSTMCRFConfig(epochs=cfg.bilstm_epochs, seed=seed)
    out = {"n_train": len(pos_orig), "n_augmented": len(pos_train) - len(pos_orig),
           "entity_lists": {"used": sum(k for k, _ in list_counts.values()),
                            "listed": sum(n for _, n in list_counts.values())}}
    for task, train in (("pos", pos_train), ("ner", ner_train)):
        test = loaders.load_tagged(task, "test", root, cfg.tag_test or None)
        gold, toks = [s.tags for s in test], [s.tokens for s in test]
        out["n_test"] = len(test)
        models = [MajorityTagger(), WordMajorityTagger(), WordShapeMajorityTagger()] + [
            make_tagger(n, cfg.crf_iters, bilstm, ctx.device) for n in tagger_names(cfg)]
        out[task] = {}
        for m in models:
            t0 = time.process_time()
            m.fit(train)
            sc = tagging_scores(gold, m.predict(toks), entities=task == "ner")
            res = {"accuracy": sc["accuracy"], "macro_f1": sc["macro_f1"], "cpu_s": time.process_time() - t0}
            if task == "ner":
                res["entity_f1"] = sc["entity"]["f1"]
                res["per_type_f1"] = {t: v["f1"] for t, v in sc["entity"]["per_type"].items()}
            out[task][m.name] = res
            ctx.log(f"seed {seed} {task} {m.name}: acc {res['accuracy']:.3f} macro-F1 {res['macro_f1']:.3f}"
                    + (f" entity-F1 {res['entity_f1']:.3f}" if task == "ner" else ""))
    out["crf_no_augmentation"] = None
    if cfg.compare_augment and "crf" in tagger_names(cfg):
        test = loaders.load_tagged("ner", "test", root, cfg.tag_test or None)
        m = make_tagger("crf", cfg.crf_iters).fit(ner_orig)
        ent = tagging_scores([s.tags for s in test], m.predict([s.tokens for s in test]), True)["entity"]
        out["crf_no_augmentation"] = {"entity_f1": ent["f1"],
                                      "per_type_f1": {t: v["f1"] for t, v in ent["per_type"].items()}}
    return out


def measure_translation(ctx: RunContext, root, seed: int) -> dict:
    cfg = ctx.cfg
    train = loaders.load_parallel(cfg.mt_corpus, "train", root, cfg.mt_train or None)
    test = loaders.load_parallel(cfg.mt_corpus, "test", root, cfg.mt_test or None)
    src, refs = [s for s, _ in test], [e for _, e in test]
    lex = LexiconBaseline().fit(train)
    lex_out = lex.translate(src)
    scores = {"copy": bleu_chrf(copy_baseline(src), refs), "lexicon": bleu_chrf(lex_out, refs)}
    mt_cfg = mt_config(cfg, seed)
    t0 = time.process_time()
    tr = train_translator(train, mt_cfg, ctx.device, log=ctx.log)
    out = {"n_train": len(train), "n_test": len(test), "train_cpu_s": time.process_time() - t0,
           "epochs": epochs_covered(mt_cfg, len(train))}
    hyps = tr.translate(src, beam=cfg.beam)
    greedy = tr.translate(src, beam=1) if cfg.beam > 1 else hyps
    scores["transformer"] = bleu_chrf(hyps, refs)
    if cfg.beam > 1:
        scores["transformer (greedy)"] = bleu_chrf(greedy, refs)
    out["bleu_breakdown"] = bleu_breakdown({f"beam {cfg.beam}": hyps, "greedy": greedy}, refs, src,
                                           [s for s, _ in train])
    out["back_translation"] = None
    if cfg.back_translation:
        out["back_translation"] = measure_back_translation(ctx, root, train, src, refs, seed)
        scores.update(out["back_translation"].pop("scores"))
    for name, sc in scores.items():
        ctx.log(f"seed {seed} mt {name}: BLEU {sc['bleu']:.2f} chrF {sc['chrf']:.2f}")
    out["scores"] = scores
    k = max(1, len(tr.losses) // 100)  # the loss curve, thinned to about 100 points
    out["losses"] = [float(np.mean(tr.losses[i:i + k])) for i in range(0, len(tr.losses), k)]
    out["loss_every"] = k
    out["examples"] = [list(row) for row in list(zip(src, refs, hyps, lex_out))[:6]]
    out["expert_example"] = expert_example(tr, ctx.cfg.ig_steps)
    return out


def mt_config(cfg: Config, seed: int) -> MTConfig:
    return MTConfig(src_vocab_size=cfg.mt_vocab, tgt_vocab_size=cfg.mt_vocab, d_model=cfg.mt_d_model,
                    d_ff=4 * cfg.mt_d_model, steps=cfg.mt_steps, batch_size=cfg.mt_batch, lr=cfg.mt_lr,
                    warmup=max(1, cfg.mt_steps // 10), seed=seed)


def measure_back_translation(ctx: RunContext, root, train, src, refs, seed: int) -> dict:
    """One round of M-BT against its like-for-like baseline: both translators train `mt_steps` steps (same
    settings, same seed) on the same parallel part of the training corpus; the M-BT one also on the forward
    translations (beam `cfg.beam`, by the parallel-only model, as the paper's rounds use the current model) of
    the Sumerian side of the rest. BLEU of each, and the paired bootstrap of their difference."""
    cfg = ctx.cfg
    parallel, mono, counts = pseudo_monolingual_split(train, cfg.bt_mono_frac, seed, loaders.held_out_sources(root))
    ctx.log(f"seed {seed} M-BT split: {counts}")
    base = train_translator(parallel, mt_config(cfg, seed), ctx.device, log=ctx.log)
    bt = self_training_round(base, parallel, mono, beam=cfg.beam, device=ctx.device, log=ctx.log)
    h_base, h_bt = base.translate(src, beam=cfg.beam), bt.translate(src, beam=cfg.beam)
    return {**counts, "scores": {BT_BASE: bleu_chrf(h_base, refs), BT_SYSTEM: bleu_chrf(h_bt, refs)},
            "bootstrap": paired_bootstrap(h_base, h_bt, refs, n=cfg.bootstrap, seed=seed)}


def chance_ap(gold: np.ndarray, draws: int = 2000) -> float:
    """Expected average precision of a random ranking of each aligned row's source words (mean over rows),
    estimated from `draws` fixed-seed permutations."""
    rng = np.random.default_rng(0)
    vals = []
    for row in gold:
        if not row.any() or row.all():
            continue
        aps = []
        for _ in range(draws):
            rel = row[rng.permutation(len(row))]
            hits = np.flatnonzero(rel)
            aps.append(float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1))))
        vals.append(np.mean(aps))
    return float(np.mean(vals))


def expert_example(tr, ig_steps: int) -> dict:
    """The trained translator's word-level attributions on the InterpretLR example sentence (reference forced),
    and their agreement with the hand-encoded expert alignment (None where BPE pieces cross word boundaries)."""
    src, tgt = " ".join(HIGHLIGHT["source"]), " ".join(HIGHLIGHT["target"])
    mats, sw, ow = explain_translation(tr, src, tgt, EXPERT_METHODS, n_steps=ig_steps)
    out = {"source": sw, "target": ow, "matrices": {m: mats[m].tolist() for m in EXPERT_METHODS},
           "agreement": None, "chance_ap": None}
    if (len(ow), len(sw)) == (len(HIGHLIGHT["target"]), len(HIGHLIGHT["source"])):
        gold = gold_mask(HIGHLIGHT["alignment"], len(ow), len(sw))
        out["agreement"] = {m: agreement(np.asarray(mats[m]), gold) for m in EXPERT_METHODS}
        out["chance_ap"] = chance_ap(gold)
    return out


def _encode_synthetic(examples, sv, tv, device):
    pad, bos, eos = 0, 1, 2
    s_len = max(len(e.source) for e in examples) + 1
    t_len = max(len(e.target) for e in examples) + 2
    src = torch.full((len(examples), s_len), pad, dtype=torch.long)
    tgt = torch.full((len(examples), t_len), pad, dtype=torch.long)
    for i, e in enumerate(examples):
        s = [sv[w] for w in e.source] + [eos]
        t = [bos] + [tv[w] for w in e.target] + [eos]
        src[i, : len(s)] = torch.tensor(s)
        tgt[i, : len(t)] = torch.tensor(t)
    return src.to(device), tgt.to(device)


def measure_synthetic(ctx: RunContext, seed: int) -> dict:
    """A model trained on a synthetic reversed-order translation task and its untrained twin (same init): the
    agreement of each attribution method with the true alignment on held-out sentences."""
    cfg, dev = ctx.cfg, ctx.device
    task = AlignedTranslationTask(n_words=24, min_len=4, max_len=8, reorder="reverse", seed=seed)
    sv = {w: i + 3 for i, w in enumerate(task.src_vocab)}
    tv = {w: i + 3 for i, w in enumerate(task.tgt_vocab)}
    torch.manual_seed(seed)
    mcfg = Seq2SeqConfig(len(sv) + 3, len(tv) + 3, d_model=64, n_heads=4, enc_layers=2, dec_layers=2, d_ff=128,
                         dropout=0.0, max_len=16)
    model = Seq2SeqTransformer(mcfg).to(dev)
    untrained = Seq2SeqTransformer(mcfg).to(dev)
    untrained.load_state_dict(model.state_dict())

    def batches():
        step = 0
        while True:
            step += 1
            yield _encode_synthetic(task.sample(64, seed=seed * 100_003 + step), sv, tv, dev)

    def loss_fn(m, batch):
        src, tgt = batch
        logits = m(src, tgt[:, :-1])
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1), ignore_index=0)

    t0 = time.process_time()
    losses = fit(model, loss_fn, batches(), cfg.synth_steps, lr=3e-3, warmup=30, device=dev)
    held_out = task.sample(200, seed=10_000_019 + seed)
    src, _ = _encode_synthetic(held_out, sv, tv, dev)
    pred = greedy_decode(model, src, 1, 2, 12)
    exact = float(np.mean([p == [tv[w] for w in e.target] for p, e in zip(pred, held_out)]))
    ctx.log(f"seed {seed} synthetic task: exact match {exact:.3f} after {cfg.synth_steps} steps")
    scores = {name: {} for name in ("trained", "untrained")}
    deltas, example = [], {}
    for e in held_out[: cfg.synth_eval]:
        s = torch.tensor([[sv[w] for w in e.source] + [2]], device=dev)
        out = torch.tensor([[tv[w] for w in e.target]], device=dev)
        gold = gold_mask(e.alignment, len(e.target), len(e.source))
        for name, m in (("trained", model), ("untrained", untrained)):
            atts = attribute_all(seq2seq_explainable(m, s, out, 1), METHODS, n_steps=cfg.ig_steps)
            for meth, a in atts.items():
                mat = a.matrix[:, : len(e.source)]  # the <eos> column is not a word
                for k, v in agreement(mat, gold).items():
                    scores[name].setdefault(meth, {}).setdefault(k, []).append(v)
                if name == "trained" and a.delta is not None:
                    deltas += np.abs(a.delta).tolist()
                if e is held_out[0] and meth in EXPERT_METHODS:
                    example[f"{name}/{meth}"] = np.asarray(mat).tolist()
    agree = {meth: {n: {k: float(np.nanmean(v)) for k, v in scores[n][meth].items()} for n in scores}
             for meth in METHODS}
    return {"exact_match": exact, "final_loss": float(losses[-1]), "cpu_s": time.process_time() - t0,
            "ig_delta_mean": float(np.mean(deltas)), "ig_delta_max": float(np.max(deltas)), "agreement": agree,
            "example": {"source": held_out[0].source, "target": held_out[0].target, "matrices": example}}


# ---------------------------------------------------------------- decide: pure functions of the per-seed numbers
def decide_taggers(per_seed: list[dict], cfg: Config, task: str) -> Verdict:
    """Every tagger's score minus the strongest baseline's (best of `BASELINES` on that seed), its minimum over
    taggers per seed, against `TAGGER_MARGIN[task]` — once every tagger beats the majority class by
    `TAGGER_LEARNED[task]` on every seed."""
    missing = part_not_measured(per_seed, "tagging", data="sumerian/")
    if missing is not None:
        return missing
    metric, names = TASK_METRIC[task], tagger_names(cfg)
    scores = [{m: n["tagging"][task][m][metric] for m in (*BASELINES, *names)} for n in per_seed]
    unlearned = [(i, m) for i, s in enumerate(scores) for m in names if s[m] - s["majority"] <= TAGGER_LEARNED[task]]
    if unlearned:
        return undecided(
            f"not learned: {', '.join(sorted({m for _, m in unlearned}))} within {TAGGER_LEARNED[task]} {metric} "
            f"of the majority class on {len({i for i, _ in unlearned})} of {len(scores)} seeds; per seed "
            + "; ".join(", ".join(f"{m} {s[m]:.3f}" for m in ("majority", *names)) for s in scores),
            **{m: [s[m] for s in scores] for m in (*BASELINES, *names)})
    best = [max(BASELINES, key=lambda b: s[b]) for s in scores]
    gaps = {m: [s[m] - s[b] for s, b in zip(scores, best)] for m in names}
    worst = [min(gaps[m][i] for m in names) for i in range(len(scores))]
    v = by_threshold(worst, TAGGER_MARGIN[task], what=f"{task.upper()} {metric} of the weakest tagger minus the "
                     "strongest baseline", fmt=".3f")
    detail = ("; strongest baseline per seed: " + ", ".join(f"{b} {s[b]:.3f}" for s, b in zip(scores, best))
              + "; tagger − strongest baseline per seed: " + "; ".join(f"{m} {rounded(gaps[m])}" for m in names))
    return dataclasses.replace(v, reason=v.reason + detail,
                               extra={m: [s[m] for s in scores] for m in (*BASELINES, *names)})


def decide_pos_taggers(per_seed: list[dict], cfg: Config) -> Verdict:
    return decide_taggers(per_seed, cfg, "pos")


def decide_ner_taggers(per_seed: list[dict], cfg: Config) -> Verdict:
    return decide_taggers(per_seed, cfg, "ner")


def decide_mt_beats_baseline(per_seed: list[dict], cfg: Config) -> Verdict:
    """Transformer BLEU minus the better of copy and lexicon, per seed, against `BLEU_MARGIN` — once the
    transformer beats copying the source by `MT_LEARNED_BLEU` on every seed."""
    missing = part_not_measured(per_seed, "mt", enabled=cfg.decide_mt, data="sumerian/", budget=(
        "this preset trains no translator (at tiny's budget of a few hundred steps it emits 'the the the ...', 0.10 "
        "BLEU on the earlier card)"))
    if missing is not None:
        return missing
    sc = [n["mt"]["scores"] for n in per_seed]
    t, cp, lx = ([s[k]["bleu"] for s in sc] for k in ("transformer", "copy", "lexicon"))
    numbers = {"transformer": t, "copy": cp, "lexicon": lx}
    if any(a - c <= MT_LEARNED_BLEU for a, c in zip(t, cp)):
        return undecided(f"not learned: transformer BLEU per seed {rounded(t, 2)} is within {MT_LEARNED_BLEU} of the "
                         f"copy baseline {rounded(cp, 2)} on some seed (lexicon {rounded(lx, 2)})", **numbers)
    v = by_threshold([a - max(c, x) for a, c, x in zip(t, cp, lx)], BLEU_MARGIN,
                     what="BLEU of the transformer minus the better of copy and lexicon", fmt=".2f")
    return dataclasses.replace(v, reason=v.reason + f"; transformer {rounded(t, 2)}, copy {rounded(cp, 2)}, lexicon "
                               f"{rounded(lx, 2)} BLEU per seed", extra=numbers)


def decide_back_translation(per_seed: list[dict], cfg: Config) -> Verdict:
    """BLEU of the M-BT translator minus its parallel-only twin, per seed, against the larger of `BT_MARGIN`
    and the noise floor (`BOOTSTRAP_Z` × the largest per-seed paired-bootstrap sd) — once both translators
    beat copying the source by `MT_LEARNED_BLEU` on every seed."""
    missing = part_not_measured(per_seed, "mt", enabled=cfg.decide_mt and cfg.back_translation, data="sumerian/",
                                budget="this preset trains no M-BT translators (three translators per seed)")
    if missing is not None:
        return missing
    sc = [n["mt"]["scores"] for n in per_seed]
    base, bt, cp = ([s[k]["bleu"] for s in sc] for k in (BT_BASE, BT_SYSTEM, "copy"))
    boot = [n["mt"]["back_translation"]["bootstrap"] for n in per_seed]
    numbers = {"parallel_only": base, "mbt": bt, "copy": cp, "bootstrap_sd": [b["sd"] for b in boot]}
    if any(min(a, b) - c <= MT_LEARNED_BLEU for a, b, c in zip(base, bt, cp)):
        return undecided(f"not learned: BLEU per seed of the parallel-only translator {rounded(base, 2)} or the M-BT "
                         f"one {rounded(bt, 2)} is within {MT_LEARNED_BLEU} of the copy baseline {rounded(cp, 2)} on "
                         "some seed",
                         **numbers)
    noise = BOOTSTRAP_Z * max(b["sd"] for b in boot)
    v = by_threshold([b - a for a, b in zip(base, bt)], BT_MARGIN, noise=noise, fmt=".2f",
                     what="BLEU of the M-BT translator minus the parallel-only one")
    mt0 = per_seed[0]["mt"]["back_translation"]
    detail = (f"; parallel-only {rounded(base, 2)}, M-BT {rounded(bt, 2)} BLEU per seed; paired-bootstrap 95 % "
              "interval of the difference per seed " + ", ".join(f"[{b['lo']:.2f}, {b['hi']:.2f}]" for b in boot)
              + f" ({boot[0]['n']} test resamples); {mt0['parallel']} parallel pairs and {mt0['mono']} "
              "pseudo-monolingual lines (first seed)")
    return dataclasses.replace(v, reason=v.reason + detail, extra=numbers)


def decide_expert_agreement(per_seed: list[dict], cfg: Config) -> Verdict:
    """Not tested: the shared data hold one expert alignment, not a sample to measure agreement over."""
    return not_tested("the shared data (/work/shared/data/sumerian) hold one expert alignment — the highlights.png "
                      "sentence, hand-encoded in this module — and no other word-level expert attribution "
                      "(misc/human_eval holds 76 sentence pairs for MT human evaluation, without alignments); one "
                      "sentence is a case study, reported as the check expert_example_case_study, not a test; the "
                      "paper's agreement protocol, if any, is not verified (spec 10 §7)")


def decide_synthetic(per_seed: list[dict], cfg: Config) -> Verdict:
    """Check: on every seed the trained model solves the task, its mean AP over methods exceeds its untrained
    twin's by `AP_MARGIN`, and its AP is higher for every method."""
    syn = [n["synthetic"] for n in per_seed]
    exact = [s["exact_match"] for s in syn]
    gains = [float(np.mean([s["agreement"][m]["trained"]["ap"] - s["agreement"][m]["untrained"]["ap"]
                            for m in METHODS])) for s in syn]
    lower = [[m for m in METHODS if s["agreement"][m]["trained"]["ap"] <= s["agreement"][m]["untrained"]["ap"]]
             for s in syn]
    numbers = {"exact_match": exact, "mean_ap_gain": gains, "methods_not_higher": lower,
               "ig_delta_mean": [s["ig_delta_mean"] for s in syn]}
    if any(e < SYNTH_LEARNED for e in exact):
        return check(None, f"not learned: exact match per seed {rounded(exact)} below {SYNTH_LEARNED} on some seed",
                     **numbers)
    ok = [g > AP_MARGIN and not lo for g, lo in zip(gains, lower)]
    gain = {m: [s["agreement"][m]["trained"]["ap"] - s["agreement"][m]["untrained"]["ap"] for s in syn]
            for m in METHODS}
    per_method = "; ".join(f"{m} {rounded(gain[m], 2)}" for m in METHODS)
    return check(all(ok), f"mean AP gain (trained − untrained) per seed {rounded(gains)} vs margin {AP_MARGIN}; "
                 f"methods not higher per seed {lower}; {sum(ok)} of {len(ok)} seeds pass; AP gain per method per seed: "
                 f"{per_method}; exact match per seed {rounded(exact)}; IG completeness |δ| mean per seed "
                 f"{rounded(numbers['ig_delta_mean'], 3)} ({cfg.ig_steps} steps)", **numbers)


def decide_expert_example(per_seed: list[dict], cfg: Config) -> Verdict:
    """Case study: on every seed, the trained translator's AP against the expert alignment exceeds the chance AP
    for each of `EXPERT_METHODS`."""
    if not cfg.decide_mt:
        return check(None, "not run at this preset: the translator is trained at small/gpu only (time budget)")
    if any(n.get("mt") is None for n in per_seed):
        return check(None, f"not run: needs the real data sumerian/; {DATA_HINT}")
    ex = [n["mt"]["expert_example"] for n in per_seed]
    if any(e["agreement"] is None for e in ex):
        return check(None, "not run: the translator's BPE pieces of the example cross word boundaries on some seed, "
                     "so no word-level matrix matches the expert alignment")
    aps = {m: [e["agreement"][m]["ap"] for e in ex] for m in EXPERT_METHODS}
    chance = ex[0]["chance_ap"]
    ok = all(a > chance for m in EXPERT_METHODS for a in aps[m])
    return check(ok, f"one sentence, {len(HIGHLIGHT['alignment'])} expert-aligned word pairs: AP per seed "
                 + ", ".join(f"{m} {rounded(aps[m])}" for m in EXPERT_METHODS) + f" vs chance {chance:.3f}; hit@1 per "
                 "seed " + ", ".join(f"{m} {rounded([e['agreement'][m]['hit@1'] for e in ex])}"
                                     for m in EXPERT_METHODS),
                 chance_ap=chance, **aps)


def decide(per_seed: list[dict], cfg: Config) -> dict[str, Verdict]:
    return {
        "pos_taggers_beat_baselines": decide_pos_taggers(per_seed, cfg),
        "ner_taggers_beat_baselines": decide_ner_taggers(per_seed, cfg),
        "mt_beats_baseline": decide_mt_beats_baseline(per_seed, cfg),
        "back_translation_raises_bleu": decide_back_translation(per_seed, cfg),
        "attributions_agree_with_experts": decide_expert_agreement(per_seed, cfg),
        "synthetic_attributions_align": decide_synthetic(per_seed, cfg),
        "expert_example_case_study": decide_expert_example(per_seed, cfg),
    }


# ---------------------------------------------------------------- summarize: tables and figures over the seeds
def _mean_sd(values) -> tuple[float, float | str]:
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else "n/a")


def summarize(ctx: RunContext, per_seed: list[dict], verdicts: dict) -> None:
    n = len(per_seed)
    _summarize_synthetic(ctx, per_seed)
    if per_seed[0].get("tagging") is not None:
        _summarize_tagging(ctx, per_seed)
    if per_seed[0].get("mt") is not None:
        _summarize_mt(ctx, per_seed)
    ctx.report.metric("seeds_measured", n)


def _summarize_tagging(ctx, per_seed):
    cfg, rep = ctx.cfg, ctx.report
    tags = [p["tagging"] for p in per_seed]
    models = [*BASELINES, *tagger_names(cfg)]
    rows = []
    for task in ("pos", "ner"):
        for m in models:
            acc, sd = _mean_sd(t[task][m]["accuracy"] for t in tags)
            rep.metric(f"{task}.{m}.accuracy", acc)
            ent, ent_sd = ("–", "–")
            if task == "ner":
                ent, ent_sd = _mean_sd(t[task][m]["entity_f1"] for t in tags)
                rep.metric(f"{task}.{m}.entity_f1", ent)
            mf1 = statistics.fmean(t[task][m]["macro_f1"] for t in tags)
            rep.metric(f"{task}.{m}.macro_f1", mf1)
            cpu = statistics.fmean(t[task][m]["cpu_s"] for t in tags)
            rows.append([task, m, acc, sd, mf1, ent, ent_sd, f"{cpu:.1f}"])
    plain = [t["crf_no_augmentation"] for t in tags if t.get("crf_no_augmentation")]
    if plain:
        f1 = statistics.fmean(p["entity_f1"] for p in plain)
        rep.metric("ner.crf_no_augmentation.entity_f1", f1)
        rows.append(["ner", "crf (no augmentation)", "", "", "", f1, "", ""])
        per = []
        for typ in ("GN", "SN"):
            with_ = statistics.fmean(t["ner"]["crf"]["per_type_f1"].get(typ, 0.0) for t in tags)
            without = statistics.fmean(p["per_type_f1"].get(typ, 0.0) for p in plain)
            per.append(f"{typ} {with_:.3f} with / {without:.3f} without augmentation")
        rep.text("CRF entity F1 per type (geographical names GN, settlements SN), mean over seeds: "
                 + "; ".join(per) + ".")
    t0 = tags[0]
    rep.table(rows, ["task", "model", "token acc", "sd", "macro F1", "entity F1", "sd", "fit+predict CPU s"],
              f"Tagging on the test split ({t0['n_test']} sentences), mean over {len(tags)} seed(s); each seed "
              f"trains on {t0['n_train']} sentences{' drawn at random by the seed' if cfg.tag_train else ''} + "
              f"{t0['n_augmented']} entity-swapped copies (seed 0 of the block). Entity-swap draws from the training "
              f"sentences and from the named-entity lists, of whose {t0['entity_lists']['listed']} entries only the "
              f"{t0['entity_lists']['used']} that the training sentences attest with the same tag are used.")
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = np.arange(len(models))
    for off, task, label in ((-0.2, "pos", "POS token accuracy"), (0.2, "ner", "NER entity F1")):
        key = TASK_METRIC[task]
        vals = np.array([[t[task][m][key] for m in models] for t in tags])
        ax.bar(x + off, vals.mean(0), 0.4, yerr=vals.std(0) if len(tags) > 1 else None, label=label)
    ax.set_xticks(x, models, fontsize=7)
    ax.set_xlabel("tagger or baseline")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score on test split")
    ax.legend(fontsize=8)
    ax.set_title("Sumerian taggers vs simple baselines (mean over seeds)")
    rep.figure(fig, "tagging", "POS token accuracy and NER entity F1 of each tagger and baseline, mean over seeds "
               "(bars: sd).")


def _summarize_mt(ctx, per_seed):
    cfg, rep = ctx.cfg, ctx.report
    mts = [p["mt"] for p in per_seed]
    rows = []
    for name in mts[0]["scores"]:
        b, bsd = _mean_sd(m["scores"][name]["bleu"] for m in mts)
        c, _ = _mean_sd(m["scores"][name]["chrf"] for m in mts)
        rep.metric(f"mt.{name}.bleu", b)
        rep.metric(f"mt.{name}.chrf", c)
        rows.append([name, b, bsd, c, " ".join(f"{m['scores'][name]['bleu']:.2f}" for m in mts)])
    m0 = mts[0]
    rep.metric("mt.epochs", m0["epochs"])
    rep.table(rows, ["system", "BLEU", "sd", "chrF", "BLEU per seed"],
              f"Sumerian→English on {cfg.mt_corpus} test ({m0['n_test']} pairs; {m0['n_train']} training pairs, "
              f"{cfg.mt_steps} steps ≈ {m0['epochs']:.1f} epochs, beam {cfg.beam}), mean over {len(mts)} seed(s)")
    if m0.get("back_translation"):
        bts = [m["back_translation"] for m in mts]
        d = [b["bootstrap"]["delta"] for b in bts]
        rep.metric("mt.mbt_bleu_change", statistics.fmean(d))
        rep.text(
            "M-BT, one round, like for like: per seed a random half of the training pairs keeps only its Sumerian "
            f"side ({bts[0]['mono']} lines on the first seed; {bts[0]['mono_dropped_equal_to_held_out']} more were "
            "dropped because they equal, by hash, a dev or test source of some parallel corpus, and "
            f"{bts[0]['mono_overlapping_held_out_by_words']} of those kept contain or sit inside one — as do "
            f"lines of the parallel data). A translator trained on the other half ({bts[0]['parallel']} pairs) "
            "forward-translates these lines (beam as at test) — the procedure the paper calls monolingual "
            "back-translation — and a translator with the same settings, seed, tokenizers and steps is trained on "
            "the half plus these pairs. BLEU change per seed: "
            + ", ".join(f"{b['bootstrap']['delta']:+.2f} (paired bootstrap 95 % [{b['bootstrap']['lo']:+.2f}, "
                        f"{b['bootstrap']['hi']:+.2f}])" for b in bts) + ".")
    _summarize_bleu_breakdown(ctx, mts)
    rep.table(m0["examples"], ["Sumerian", "reference", "transformer", "lexicon baseline"],
              "Example test translations (first seed)")
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    fig, ax = plt.subplots(figsize=(5, 3))
    for i, m in enumerate(mts):
        ax.plot(np.arange(len(m["losses"])) * m["loss_every"], m["losses"], label=f"seed {ctx.report.seeds[i]}")
    ax.set_xlabel("training step")
    ax.set_ylabel("label-smoothed cross-entropy")
    ax.set_title("Translator training loss")
    ax.legend(fontsize=7)
    rep.figure(fig, "mt_loss", "Training loss of the Sumerian→English Transformer, one line per seed (block means).")
    ex = m0["expert_example"]
    grouped = all(m["expert_example"]["agreement"] for m in mts)
    for meth, ag in (ex["agreement"] if grouped else {}).items():
        for k in ag:
            rep.metric(f"expert_example.{meth}.{k}", statistics.fmean(m["expert_example"]["agreement"][meth][k]
                                                                     for m in mts))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, meth in zip(axes, EXPERT_METHODS):
        heatmap_axes(ax, np.asarray(ex["matrices"][meth]), ex["source"], ex["target"], meth.replace("_", " "))
    fig.suptitle("Trained translator on the InterpretLR example (reference forced; first seed)", fontsize=10)
    fig.tight_layout()
    rep.figure(fig, "real_example_attributions", "Word-level attributions (rows: English reference words, columns: "
               "Sumerian words) of the trained translator on the one expert-aligned sentence (a case study; the "
               "hand alignment is in the experiment module).")


def _summarize_bleu_breakdown(ctx, mts):
    """The named, measured differences behind the translator's BLEU, beside the paper's 36.32 for the same
    corpus (UrIIISeg, spec 10)."""
    rep = ctx.report
    bds = [m["bleu_breakdown"] for m in mts]
    rows = []
    for name in bds[0]["systems"]:
        row = [name]
        for key in ("bleu", "brevity_penalty", "bleu_lowercase", "bleu_tokenize_none", "bleu_tokenize_intl",
                    "bleu_near_duplicate", "bleu_no_near_duplicate"):
            vals = [b["systems"][name][key] for b in bds]
            row.append(statistics.fmean(vals) if None not in vals else "–")
            if None not in vals:
                rep.metric(f"mt.breakdown.{name}.{key}", row[-1])
        rows.append(row)
    share = bds[0]["near_duplicate_share"]
    rep.metric("mt.test_near_duplicate_share", share)
    rep.table(rows, ["decoding", "BLEU", "brevity penalty", "BLEU lowercased", "BLEU tokenize none",
                     "BLEU tokenize intl", "BLEU near-duplicate lines", "BLEU other lines"],
              f"What the full translator's BLEU is made of, mean over {len(bds)} seed(s). Same hypotheses, scored "
              f"by sacrebleu (default: 13a, cased) and variants. {share:.1%} of the test sources "
              f"({bds[0]['near_duplicates']} of {bds[0]['test_lines']}) equal a training source once numerals are "
              "masked (the same formula with other counts); the paper's split is the same files, so these lines "
              "were in its test set too. The paper reports 36.32 BLEU for this corpus (UrIIISeg) with a 6-layer "
              "OpenNMT Transformer; its decoding and BLEU script are not verified in spec 10.")


def _summarize_synthetic(ctx, per_seed):
    cfg, rep = ctx.cfg, ctx.report
    syn = [p["synthetic"] for p in per_seed]
    rows = []
    for meth in METHODS:
        row = [meth]
        for k in ("hit@1", "ap", "spearman"):
            for name in ("trained", "untrained"):
                v = statistics.fmean(s["agreement"][meth][name][k] for s in syn)
                rep.metric(f"synthetic.{meth}.{name}.{k}", v)
                row.append(v)
        rows.append(row)
    rep.metric("synthetic.exact_match", statistics.fmean(s["exact_match"] for s in syn))
    rep.metric("synthetic.ig_mean_abs_convergence_delta", statistics.fmean(s["ig_delta_mean"] for s in syn))
    rep.metric("synthetic.ig_max_abs_convergence_delta", max(s["ig_delta_max"] for s in syn))
    rep.metric("synthetic.mean_ap_gain", statistics.fmean(
        float(np.mean([s["agreement"][m]["trained"]["ap"] - s["agreement"][m]["untrained"]["ap"] for m in METHODS]))
        for s in syn))
    rep.table(rows, ["method", "hit@1 trained", "hit@1 untrained", "AP trained", "AP untrained", "Spearman trained",
                     "Spearman untrained"],
              f"Agreement with the true alignment ({cfg.synth_eval} held-out sentences per seed, reversed word "
              f"order; chance hit@1 ≈ 1/6), mean over {len(syn)} seed(s)")
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    ex = syn[0]["example"]
    fig, axes = plt.subplots(2, 2, figsize=(8, 7))
    for i, name in enumerate(("trained", "untrained")):
        for j, meth in enumerate(EXPERT_METHODS):
            heatmap_axes(axes[i, j], np.asarray(ex["matrices"][f"{name}/{meth}"]), ex["source"], ex["target"],
                         f"{name}: {meth.replace('_', ' ')}")
    fig.suptitle("Synthetic reversed-order translation: the true alignment is the anti-diagonal", fontsize=10)
    fig.tight_layout()
    rep.figure(fig, "synthetic_attributions", "Attribution heatmaps (output word × source word) of a trained and an "
               "untrained model on one held-out sentence (first seed); the correct source of each output word is on "
               "the anti-diagonal.")


experiment(
    name="sumerian_pipeline",
    paper="Bansal et al., How Low is Too Low? A Computational Perspective on Extremely Low-Resource "
    "Languages (ACL-IJCNLP SRW 2021)",
    claims=CLAIMS,
    checks=CHECKS,
    presets=PRESETS,
    needs_data=("sumerian",),
    decide=decide,
    summarize=summarize,
)(measure)
