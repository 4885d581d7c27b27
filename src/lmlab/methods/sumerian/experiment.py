"""Sumerian POS/NER/MT pipeline and InterpretLR attributions (Bansal et al., 2021) at small scale.

1. Taggers (HMM, CRF, BiLSTM-CRF) on the CDLI POS and NER corpora, trained with entity-swap augmentation,
   against the majority-class and the most-frequent-tag-per-word (lookup) baselines.
2. A small encoder–decoder Transformer on the Ur III line-by-line parallel corpus against copy and
   lexicon baselines (BLEU/chrF), optionally with one round of self-training (forward translation of
   monolingual Sumerian, the procedure the paper calls monolingual back-translation, M-BT).
3. On a synthetic translation task with known alignments, attributions of a trained model against those of
   its untrained twin (same architecture and initialisation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.experiment import RunContext, experiment, presets
from lmlab.methods.sumerian import loaders
from lmlab.methods.sumerian.interpret import (
    METHODS,
    agreement,
    attribute_all,
    gold_mask,
    heatmap_axes,
    seq2seq_explainable,
)
from lmlab.methods.sumerian.metrics import tagging_scores
from lmlab.methods.sumerian.pipeline import explain_translation, make_tagger, training_sentences
from lmlab.methods.sumerian.seq2seq import Seq2SeqConfig, Seq2SeqTransformer, greedy_decode
from lmlab.methods.sumerian.taggers import (
    BiLSTMCRFConfig,
    MajorityTagger,
    WordMajorityTagger,
    attested_entries,
)
from lmlab.methods.sumerian.tasks import AlignedTranslationTask
from lmlab.methods.sumerian.translate import (
    LexiconBaseline,
    MTConfig,
    bleu_chrf,
    copy_baseline,
    epochs_covered,
    overlaps_held_out,
    self_training_round,
    train_translator,
)
from lmlab.train import fit

CLAIMS = {
    "taggers_beat_majority": (
        "every POS and NER tagger (HMM, CRF, BiLSTM-CRF) beats both baselines on the test split: the "
        "majority-class tagger (POS token accuracy +0.15; it tags every token O, so its NER entity F1 is 0 "
        "and the NER requirement against it is an absolute entity F1 >= 0.30) and the most-frequent-tag-"
        "per-word lookup tagger (POS token accuracy +0.05, NER entity F1 +0.05)"
    ),
    "mt_beats_baseline": (
        "the encoder-decoder Transformer beats the better of a copy and a word-lexicon baseline in BLEU "
        "(by at least 1 point) on Ur III line-by-line test data"
    ),
    "trained_attributions_align": (
        "on a synthetic translation task with known word alignments, attributions of a trained model agree "
        "with the true alignment far more than those of an untrained model (mean average precision over "
        "methods +0.20, and higher for every method)"
    ),
}

POS_MARGIN, NER_MARGIN, BLEU_MARGIN, AP_MARGIN = 0.15, 0.30, 1.0, 0.20
LOOKUP_POS_MARGIN, LOOKUP_NER_MARGIN = 0.05, 0.05  # over WordMajorityTagger (most frequent tag per word)


@dataclass
class Config:
    """One run: HMM/CRF/BiLSTM-CRF taggers on the CDLI POS and NER corpora against two baselines; an
    encoder–decoder Transformer on an Ur III parallel corpus against copy and lexicon baselines (optionally
    with one round of self-training); attributions of a trained and an untrained model on a synthetic
    translation task with known alignments. Sizes of 0 (tag_train, tag_test, mt_train, mt_test,
    self_training_lines) mean "all"."""

    # 1. tagging
    taggers: str = "hmm,crf,bilstm_crf"  # comma-separated
    augment_copies: int = 1  # entity-swapped copies of each training sentence
    tag_train: int = 1000
    tag_test: int = 600
    compare_augment: bool = False  # also a CRF trained without augmentation
    crf_iters: int = 50
    bilstm_epochs: int = 4
    # 2. translation
    mt_corpus: str = "ur3_line"
    mt_train: int = 0
    mt_test: int = 200
    mt_steps: int = 150
    mt_d_model: int = 64
    mt_vocab: int = 1000
    mt_batch: int = 64
    mt_lr: float = 3e-3
    beam: int = 2
    self_training: bool = False
    self_training_lines: int = 0  # monolingual Sumerian lines translated for self-training
    # the tiny preset's few hundred steps leave the translator far from converged (it needs ~2000 steps of
    # batch 64 on Ur III lines), so there the MT claim is reported but left undecided
    decide_mt: bool = False
    # 3. synthetic alignment
    synth_steps: int = 250
    synth_eval: int = 12  # held-out sentences whose attributions are scored
    ig_steps: int = 16  # integrated-gradients steps (also for the real example sentence)


# fmt: off
PRESETS = presets(
    Config,
    tiny={},
    small={"tag_train": 0, "tag_test": 0, "compare_augment": True, "crf_iters": 100, "bilstm_epochs": 1,
           "mt_test": 0, "mt_steps": 1500, "mt_d_model": 128, "mt_vocab": 2000, "mt_lr": 2e-3, "beam": 4,
           "self_training": True, "self_training_lines": 2000, "decide_mt": True, "synth_steps": 400,
           "synth_eval": 30, "ig_steps": 32},
    gpu={"tag_train": 0, "tag_test": 0, "crf_iters": 100, "bilstm_epochs": 2, "mt_test": 0, "mt_steps": 4000,
         "mt_d_model": 256, "mt_vocab": 2000, "mt_batch": 128, "mt_lr": 1e-3, "beam": 5, "self_training": True,
         "self_training_lines": 8000, "decide_mt": True, "synth_steps": 600, "synth_eval": 60, "ig_steps": 50},
)
# fmt: on

# A sentence from the InterpretLR figure, with lexical correspondences encoded by hand from its gloss
# ("barley rations of the female weavers under seal of UrAnan the foreman"); function words are unaligned.
HIGHLIGHT = {
    "source": "sze-ba geme2 usz-bar kiszib3 ur-{d}asznan ugula".split(),
    "target": "barley rations of the female weavers under seal of UrAnan the foreman".split(),
    "alignment": [(0, 0), (1, 0), (4, 1), (5, 2), (6, 3), (7, 3), (9, 4), (11, 5)],
}


@experiment(
    name="sumerian_pipeline",
    paper="Bansal et al., How Low is Too Low? A Computational Perspective on Extremely Low-Resource "
    "Languages (ACL-IJCNLP SRW 2021)",
    claims=CLAIMS,
    presets=PRESETS,
    needs_data=("sumerian",),
)
def run(ctx: RunContext) -> None:
    if ctx.device.type == "cpu":  # every model here is tiny: intra-op threads only add overhead
        torch.set_num_threads(1)  # run_experiment restores the thread count afterwards
    root = ctx.data("sumerian")
    synthetic_alignment(ctx)
    if root is None:
        for cid in ("taggers_beat_majority", "mt_beats_baseline"):
            ctx.report.decide(cid, None, ctx.no_data_reason("sumerian"))
        return
    tagging(ctx, root)
    translation(ctx, root)


# ---------------------------------------------------------------- 1. tagging
def tagging(ctx: RunContext, root) -> None:
    cfg, rep = ctx.cfg, ctx.report
    limit = cfg.tag_train or None
    pos_train, ner_train = training_sentences(root, limit, cfg.augment_copies, ctx.seed)
    n_orig = len(loaders.load_tagged("pos", "train", root, limit))
    _, list_counts = attested_entries(loaders.load_entity_lists(root), ner_train[:n_orig])
    for typ, (k, n) in list_counts.items():
        ctx.log(f"named-entity list {typ}: {k} of {n} entries attested in the training sentences")
    bilstm = BiLSTMCRFConfig(epochs=cfg.bilstm_epochs, seed=ctx.seed)
    names = [t.strip() for t in cfg.taggers.split(",")]
    rows, results = [], {}
    for task, train in (("pos", pos_train), ("ner", ner_train)):
        test = loaders.load_tagged(task, "test", root, cfg.tag_test or None)
        gold, toks = [s.tags for s in test], [s.tokens for s in test]
        models = [MajorityTagger(), WordMajorityTagger()] + [
            make_tagger(n, cfg.crf_iters, bilstm, ctx.device) for n in names
        ]
        for m in models:
            t0 = time.process_time()
            m.fit(train)
            sc = tagging_scores(gold, m.predict(toks), entities=task == "ner")
            res = {"accuracy": sc["accuracy"], "macro_f1": sc["macro_f1"], "cpu_s": time.process_time() - t0}
            if task == "ner":
                res["entity_f1"] = sc["entity"]["f1"]
                res["per_type_f1"] = {t: v["f1"] for t, v in sc["entity"]["per_type"].items()}
            results[(task, m.name)] = res
            for k, v in res.items():
                if k != "per_type_f1":
                    rep.metric(f"{task}.{m.name}.{k}", v)
            for t, v in res.get("per_type_f1", {}).items():
                rep.metric(f"{task}.{m.name}.f1_{t}", v)
            rows.append(
                [
                    task,
                    m.name,
                    res["accuracy"],
                    res["macro_f1"],
                    res.get("entity_f1", "–"),
                    f"{res['cpu_s']:.1f}",
                ]
            )
            ctx.log(
                f"{task} {m.name}: acc {res['accuracy']:.3f} macro-F1 {res['macro_f1']:.3f}"
                + (f" entity-F1 {res['entity_f1']:.3f}" if task == "ner" else "")
            )
    if cfg.compare_augment and "crf" in names:
        plain_ner = loaders.load_tagged("ner", "train", root, limit)
        test = loaders.load_tagged("ner", "test", root, cfg.tag_test or None)
        gold = [s.tags for s in test]
        m = make_tagger("crf", cfg.crf_iters).fit(plain_ner)
        ent = tagging_scores(gold, m.predict([s.tokens for s in test]), True)["entity"]
        rep.metric("ner.crf_no_augmentation.entity_f1", ent["f1"])
        rows.append(["ner", "crf (no augmentation)", "", "", ent["f1"], ""])
        aug = results[("ner", "crf")]["per_type_f1"]
        per = []
        for typ in ("GN", "SN"):
            plain_f1 = ent["per_type"].get(typ, {}).get("f1", 0.0)
            rep.metric(f"ner.crf_no_augmentation.f1_{typ}", plain_f1)
            per.append(f"{typ} {aug.get(typ, 0.0):.3f} with / {plain_f1:.3f} without augmentation")
        rep.text("CRF entity F1 per type (geographical names GN, settlements SN): " + "; ".join(per) + ".")
    used, listed = (sum(v[i] for v in list_counts.values()) for i in (0, 1))
    source = ""
    if cfg.augment_copies > 0:
        rep.metric("ner.entity_lists_used", used)
        rep.metric("ner.entity_lists_listed", listed)
        source = (
            " Swapped-in entities come from the training sentences and from the named-entity lists; of the "
            f"lists' {listed} entries (cities tagged SN, as the corpus tags them), only the {used} that the "
            "training sentences attest with the same tag are used — the others are spelled unlike the corpus "
            "(`akhetaten`, `urnammak`) or labelled differently there."
        )
    rep.table(
        rows,
        ["task", "model", "token acc", "macro F1", "entity F1", "fit+predict CPU s"],
        f"Tagging on the test split ({n_orig} training sentences + {len(pos_train) - n_orig} entity-swapped "
        f"copies; test sentences: {cfg.tag_test or 'all'}).{source}",
    )

    base_pos = results[("pos", "majority")]["accuracy"]
    base_ner = results[("ner", "majority")]["entity_f1"]
    look_pos = results[("pos", "word_majority")]["accuracy"]
    look_ner = results[("ner", "word_majority")]["entity_f1"]
    parts, ok = [], True
    for n in names:
        acc, f1 = results[("pos", n)]["accuracy"], results[("ner", n)]["entity_f1"]
        ok &= (
            acc - base_pos >= POS_MARGIN
            and acc - look_pos >= LOOKUP_POS_MARGIN
            and f1 - base_ner >= NER_MARGIN
            and f1 - look_ner >= LOOKUP_NER_MARGIN
        )
        parts.append(
            f"{n}: POS acc {acc:.3f} ({acc - base_pos:+.3f} vs majority, {acc - look_pos:+.3f} vs lookup), "
            f"NER entity F1 {f1:.3f} ({f1 - base_ner:+.3f} vs majority, {f1 - look_ner:+.3f} vs lookup)"
        )
    rep.decide(
        "taggers_beat_majority",
        ok,
        f"baselines: majority-class POS acc {base_pos:.3f}, NER entity F1 {base_ner:.3f} (it tags every "
        f"token O); most-frequent-tag-per-word lookup POS acc {look_pos:.3f}, NER entity F1 {look_ner:.3f}. "
        + "; ".join(parts)
        + f". Required of every tagger: vs majority POS +{POS_MARGIN}, NER +{NER_MARGIN}; vs lookup POS "
        f"+{LOOKUP_POS_MARGIN}, NER +{LOOKUP_NER_MARGIN}.",
    )
    _tagging_figure(ctx, results, names)


def _tagging_figure(ctx, results, names):
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    models = ["majority", "word_majority"] + names
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(models))
    ax.bar(x - 0.2, [results[("pos", m)]["accuracy"] for m in models], 0.4, label="POS token accuracy")
    ax.bar(x + 0.2, [results[("ner", m)]["entity_f1"] for m in models], 0.4, label="NER entity F1")
    ax.set_xticks(x, models)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score on test split")
    ax.set_xlabel("tagger")
    ax.legend(fontsize=8)
    ax.set_title("Sumerian taggers vs majority baselines")
    ctx.report.figure(
        fig, "tagging", "POS token accuracy and NER entity F1 of each tagger and of the baselines."
    )


# ---------------------------------------------------------------- 2. translation
def translation(ctx: RunContext, root) -> None:
    cfg, rep = ctx.cfg, ctx.report
    corpus = cfg.mt_corpus
    train = loaders.load_parallel(corpus, "train", root, cfg.mt_train or None)
    test = loaders.load_parallel(corpus, "test", root, cfg.mt_test or None)
    src, refs = [s for s, _ in test], [e for _, e in test]
    scores = {"copy": bleu_chrf(copy_baseline(src), refs)}
    lex = LexiconBaseline().fit(train)
    scores["lexicon"] = bleu_chrf(lex.translate(src), refs)
    mt_cfg = MTConfig(
        src_vocab_size=cfg.mt_vocab,
        tgt_vocab_size=cfg.mt_vocab,
        d_model=cfg.mt_d_model,
        d_ff=4 * cfg.mt_d_model,
        steps=cfg.mt_steps,
        batch_size=cfg.mt_batch,
        lr=cfg.mt_lr,
        warmup=max(1, cfg.mt_steps // 10),
        seed=ctx.seed,
    )
    t0 = time.process_time()
    tr = train_translator(train, mt_cfg, ctx.device, log=ctx.log)
    rep.metric("mt.train_cpu_s", time.process_time() - t0)
    rep.metric("mt.epochs", epochs_covered(mt_cfg, len(train)))
    hyps = tr.translate(src, beam=cfg.beam)
    scores["transformer"] = bleu_chrf(hyps, refs)
    if cfg.beam > 1:
        scores["transformer (greedy)"] = bleu_chrf(tr.translate(src, beam=1), refs)
    if cfg.self_training:
        mono, n_dropped = self_training_lines(root, cfg.self_training_lines or None)
        rep.metric("mt.self_training.lines", len(mono))
        rep.metric("mt.self_training.lines_dropped_overlapping_held_out", n_dropped)
        st = self_training_round(tr, train, mono, device=ctx.device, log=ctx.log)
        scores[ST_SYSTEM] = bleu_chrf(st.translate(src, beam=cfg.beam), refs)
    for name, sc in scores.items():
        rep.metric(f"mt.{name}.bleu", sc["bleu"])
        rep.metric(f"mt.{name}.chrf", sc["chrf"])
        ctx.log(f"mt {name}: BLEU {sc['bleu']:.2f} chrF {sc['chrf']:.2f}")
    rep.table(
        [[k, v["bleu"], v["chrf"]] for k, v in scores.items()],
        ["system", "BLEU", "chrF"],
        f"Sumerian→English on {corpus} test ({len(test)} pairs; {len(train)} training pairs, "
        f"{cfg.mt_steps} steps ≈ {epochs_covered(mt_cfg, len(train)):.1f} epochs, beam {cfg.beam})",
    )
    if cfg.self_training:
        d = scores[ST_SYSTEM]["bleu"] - scores["transformer"]["bleu"]
        rep.metric("mt.self_training_bleu_change", d)
        rep.text(
            "One round of self-training (forward translation): the trained model translates "
            f"{len(mono)} monolingual Sumerian lines, and a model is retrained for the same number of steps on "
            "the parallel data plus these (real Sumerian, machine English) pairs. This is the procedure the "
            "paper calls monolingual back-translation (M-BT); no reverse English→Sumerian model is involved. "
            "The real monolingual corpus is not available, so the lines are the Sumerian side of "
            f"`all_sent/train`, skipping the {n_dropped} lines that contain or are contained in a dev or test "
            f"source of any parallel corpus. It changed test BLEU by {d:+.2f}. The paper's gains came from "
            "3–7 rounds over ~85k-line shards of Ur III monolingual text."
        )
    rep.table(
        [list(row) for row in list(zip(src, refs, hyps, lex.translate(src)))[:6]],
        ["Sumerian", "reference", "transformer", "lexicon baseline"],
        "Example test translations",
    )
    best_base = max(scores["copy"]["bleu"], scores["lexicon"]["bleu"])
    gap = scores["transformer"]["bleu"] - best_base
    numbers = (
        f"transformer BLEU {scores['transformer']['bleu']:.2f} (chrF {scores['transformer']['chrf']:.1f}) vs "
        f"copy {scores['copy']['bleu']:.2f} / lexicon {scores['lexicon']['bleu']:.2f} "
        f"(chrF {scores['lexicon']['chrf']:.1f}): gap {gap:+.2f} BLEU, required +{BLEU_MARGIN} "
        f"({cfg.mt_steps} training steps; the paper's 6-layer model reached 36–44 BLEU on larger setups)"
    )
    if cfg.decide_mt:
        rep.decide("mt_beats_baseline", gap >= BLEU_MARGIN, numbers)
    else:
        rep.decide(
            "mt_beats_baseline",
            None,
            "undecided at this preset: its training budget is far below "
            f"convergence (run --preset small); numbers for the record: {numbers}",
        )
    _loss_figure(ctx, tr.losses)
    _real_attribution(ctx, tr)


ST_SYSTEM = "transformer + 1 round self-training"


def self_training_lines(root, n: int | None) -> tuple[list[str], int]:
    """The first `n` (None: all) Sumerian lines of `all_sent/train` that neither contain nor are contained in
    a dev/test source of any parallel corpus, and how many lines were skipped for that reason on the way."""
    lines = [s for s, _ in loaders.load_parallel("all_sent", "train", root)]
    kept, dropped = [], 0
    for line, bad in zip(lines, overlaps_held_out(lines, loaders.held_out_sources(root))):
        if n is not None and len(kept) >= n:
            break
        if bad:
            dropped += 1
        else:
            kept.append(line)
    return kept, dropped


def _loss_figure(ctx, losses):
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    fig, ax = plt.subplots(figsize=(5, 3))
    k = max(1, len(losses) // 50)
    sm = np.convolve(losses, np.ones(k) / k, mode="valid")
    ax.plot(np.arange(len(sm)) + k, sm)
    ax.set_xlabel("training step")
    ax.set_ylabel("label-smoothed cross-entropy")
    ax.set_title("Translator training loss")
    ctx.report.figure(fig, "mt_loss", "Training loss of the Sumerian→English Transformer (moving average).")


def _real_attribution(ctx, tr) -> None:
    """Qualitative: attributions of the trained translator on the InterpretLR example sentence."""
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    src, tgt = " ".join(HIGHLIGHT["source"]), " ".join(HIGHLIGHT["target"])
    methods = ("integrated_gradients", "attention")
    mats, sw, ow = explain_translation(tr, src, tgt, methods, n_steps=ctx.cfg.ig_steps)
    if (len(ow), len(sw)) == (len(HIGHLIGHT["target"]), len(HIGHLIGHT["source"])):
        gold = gold_mask(HIGHLIGHT["alignment"], len(ow), len(sw))
        for m, mat in mats.items():
            for k, v in agreement(mat, gold).items():
                ctx.report.metric(f"real_example.{m}.{k}", v)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, m in zip(axes, methods):
        heatmap_axes(ax, mats[m], sw, ow, m.replace("_", " "))
    fig.suptitle("Trained translator on the InterpretLR example (reference forced)", fontsize=10)
    fig.tight_layout()
    ctx.report.figure(
        fig,
        "real_example_attributions",
        "Word-level attributions (rows: English reference words, columns: Sumerian words) of the "
        "trained translator; qualitative only — the hand alignment is in the experiment module.",
    )


# ---------------------------------------------------------------- 3. synthetic alignment
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


def synthetic_alignment(ctx: RunContext) -> None:
    cfg, rep, dev = ctx.cfg, ctx.report, ctx.device
    task = AlignedTranslationTask(n_words=24, min_len=4, max_len=8, reorder="reverse", seed=ctx.seed)
    sv = {w: i + 3 for i, w in enumerate(task.src_vocab)}
    tv = {w: i + 3 for i, w in enumerate(task.tgt_vocab)}
    torch.manual_seed(ctx.seed)
    mcfg = Seq2SeqConfig(
        len(sv) + 3,
        len(tv) + 3,
        d_model=64,
        n_heads=4,
        enc_layers=2,
        dec_layers=2,
        d_ff=128,
        dropout=0.0,
        max_len=16,
    )
    model = Seq2SeqTransformer(mcfg).to(dev)
    untrained = Seq2SeqTransformer(mcfg).to(dev)
    untrained.load_state_dict(model.state_dict())

    def batches():
        step = 0
        while True:
            step += 1
            yield _encode_synthetic(task.sample(64, seed=ctx.seed * 100_003 + step), sv, tv, dev)

    def loss_fn(m, batch):
        src, tgt = batch
        logits = m(src, tgt[:, :-1])
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1), ignore_index=0
        )

    t0 = time.process_time()
    losses = fit(model, loss_fn, batches(), cfg.synth_steps, lr=3e-3, warmup=30, device=dev)
    held_out = task.sample(200, seed=10_000_019 + ctx.seed)
    src, _ = _encode_synthetic(held_out, sv, tv, dev)
    pred = greedy_decode(model, src, 1, 2, 12)
    exact = float(np.mean([p == [tv[w] for w in e.target] for p, e in zip(pred, held_out)]))
    rep.metric("synthetic.exact_match", exact)
    rep.metric("synthetic.final_loss", losses[-1])
    ctx.log(f"synthetic task: exact match {exact:.3f} after {cfg.synth_steps} steps")

    scores = {name: {} for name in ("trained", "untrained")}
    deltas = []
    keep = {}
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
                if e is held_out[0]:
                    keep[(name, meth)] = mat
    rep.metric("synthetic.attribution_cpu_s", time.process_time() - t0)
    rep.metric("synthetic.ig_mean_abs_convergence_delta", float(np.mean(deltas)))
    rep.metric("synthetic.ig_max_abs_convergence_delta", float(np.max(deltas)))
    rows, diffs, all_higher = [], [], True
    for meth in METHODS:
        tr_, un_ = (
            {k: float(np.nanmean(v)) for k, v in scores[n][meth].items()} for n in ("trained", "untrained")
        )
        for k in tr_:
            rep.metric(f"synthetic.{meth}.trained.{k}", tr_[k])
            rep.metric(f"synthetic.{meth}.untrained.{k}", un_[k])
        diffs.append(tr_["ap"] - un_["ap"])
        all_higher &= tr_["ap"] > un_["ap"]
        rows.append(
            [meth, tr_["hit@1"], un_["hit@1"], tr_["ap"], un_["ap"], tr_["spearman"], un_["spearman"]]
        )
    rep.table(
        rows,
        [
            "method",
            "hit@1 trained",
            "hit@1 untrained",
            "AP trained",
            "AP untrained",
            "Spearman trained",
            "Spearman untrained",
        ],
        f"Agreement with the true alignment ({cfg.synth_eval} held-out sentences, reversed word order; "
        f"chance hit@1 ≈ 1/6)",
    )
    mean_diff = float(np.mean(diffs))
    rep.metric("synthetic.mean_ap_gain", mean_diff)
    rep.decide(
        "trained_attributions_align",
        mean_diff >= AP_MARGIN and all_higher and exact >= 0.5,
        f"mean AP over {len(METHODS)} methods: trained − untrained = {mean_diff:+.3f} (required "
        f"+{AP_MARGIN}); trained higher for every method: {all_higher}; per method AP gain: "
        + ", ".join(f"{m} {d:+.2f}" for m, d in zip(METHODS, diffs))
        + f"; the trained model solves the task (exact match {exact:.2f}, required ≥ 0.5); "
        f"IG completeness gap |δ| mean {np.mean(deltas):.2g}, max {np.max(deltas):.2g} "
        f"({ctx.cfg.ig_steps} steps)",
    )
    _synthetic_figure(ctx, keep, held_out[0])


def _synthetic_figure(ctx, keep, example):
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    fig, axes = plt.subplots(2, 2, figsize=(8, 7))
    for i, name in enumerate(("trained", "untrained")):
        for j, meth in enumerate(("integrated_gradients", "attention")):
            heatmap_axes(
                axes[i, j],
                keep[(name, meth)],
                example.source,
                example.target,
                f"{name}: {meth.replace('_', ' ')}",
            )
    fig.suptitle("Synthetic reversed-order translation: the true alignment is the anti-diagonal", fontsize=10)
    fig.tight_layout()
    ctx.report.figure(
        fig,
        "synthetic_attributions",
        "Attribution heatmaps (output word × source word) of a trained and an untrained model on one "
        "held-out sentence; the correct source of each output word is on the anti-diagonal.",
    )
