"""The end-to-end pipeline: raw Sumerian lines → POS and NER tags (CoNLL) → English translation, plus
training of the models it uses and per-line attribution views of the translation (InterpretLR).

A models folder holds `pos/<tagger>/`, `ner/<tagger>/`, `mt/` and `manifest.json`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lmlab.checkpoint import check_same_run
from lmlab.inputs import read_json
from lmlab.methods.sumerian import loaders
from lmlab.methods.sumerian.interpret import attribute, group_matrix, seq2seq_explainable
from lmlab.methods.sumerian.metrics import tagging_scores
from lmlab.methods.sumerian.taggers import (
    TAGGERS,
    BiLSTMCRFConfig,
    BiLSTMCRFTagger,
    CRFTagger,
    HMMTagger,
    attested_entries,
    entity_lexicon,
    entity_swap,
    load_tagger,
)
from lmlab.methods.sumerian.translate import HFTranslator, MTConfig, Translator, bleu_chrf, train_translator
from lmlab.train import FitResume, TrainingDiverged
from lmlab.utils import LmlabError, atomic_write_json

_log = logging.getLogger(__name__)


def make_tagger(name: str, crf_iters: int = 1000, bilstm: BiLSTMCRFConfig | None = None, device="cpu"):
    """An untrained tagger by name: hmm, crf or bilstm_crf."""
    if name == "hmm":
        return HMMTagger()
    if name == "crf":
        return CRFTagger(max_iterations=crf_iters)
    if name == "bilstm_crf":
        return BiLSTMCRFTagger(bilstm, device)
    raise LmlabError(f"unknown tagger {name!r}; choose from {', '.join(TAGGERS)}")


def training_sentences(root: Path, limit: int | None, augment_copies: int, seed: int = 0):
    """POS and NER training sentences (same tokens), with entity-swap augmented copies appended. Entities
    are swapped for others of the same class from the training sentences and from the named-entity lists,
    of which only entries the training sentences attest with the list's tag are used (`attested_entries`)."""
    pos, ner = (
        loaders.load_tagged("pos", "train", root, limit),
        loaders.load_tagged("ner", "train", root, limit),
    )
    return augmented(root, pos, ner, augment_copies, seed)


def augmented(root: Path, pos, ner, augment_copies: int, seed: int = 0):
    """`pos` and `ner` (the same sentences, POS and NER tags) with `augment_copies` entity-swapped copies of each
    sentence that holds an entity appended (see `training_sentences`)."""
    if augment_copies > 0:
        bad = next((i for i, (p, n) in enumerate(zip(pos, ner)) if p.tokens != n.tokens), None)
        if bad is not None or len(pos) != len(ner):
            where = f"sentence {bad + 1} differs" if bad is not None else f"{len(pos)} vs {len(ner)} sentences"
            raise LmlabError(f"{root / 'pos' / 'train.txt'} and {root / 'ner' / 'train.txt'} must hold the same "
                             f"sentences (POS and NER layers of one corpus), but {where}: restore the files, or pass "
                             "--augment 0")
        lists, _ = attested_entries(loaders.load_entity_lists(root), ner)
        lex = entity_lexicon(ner, lists)
        ner_aug, pos_aug = entity_swap(ner, lex, augment_copies, seed, pos_sents=pos)
        pos, ner = pos + pos_aug, ner + ner_aug
    return pos, ner


def train_models(
    root: str | Path,
    out: str | Path,
    taggers=("crf",),
    limit: int | None = None,
    augment_copies: int = 1,
    crf_iters: int = 200,
    bilstm: BiLSTMCRFConfig | None = None,
    mt: MTConfig | None = None,
    mt_corpus: str = "ur3_line",
    hf_model: str | Path | None = None,
    hf_steps: int = 500,
    device="cpu",
    log=_log.info,
    resume: bool = False,
    stop=None,
    save_every: int = 0,
) -> dict:
    """Train the taggers (POS and NER) and, unless `mt` is None, the translator; with `hf_model` (a local
    HF seq2seq folder) also fine-tune it into `out/hf_mt`. Saves everything under `out`; returns dev
    scores. A translator's steps show on a progress bar and go to `out/metrics.jsonl` (phase "mt" or "hf_mt") and
    `out/tb/`.

    Nothing finished is lost: `out/progress.json` records each finished model (with the run's settings) until
    the manifest is written. `stop` (a StopOnSigint) ends the run after the current tagger, or after the current
    step of a translator, whose state goes to `out/<mt|hf_mt>.resume` (also every `save_every` steps);
    `resume=True` skips the finished models and continues a translator exactly where it stopped."""
    root, out = Path(root), Path(out)
    run = {
        "data": str(root.resolve()), "taggers": list(taggers), "limit": limit, "augment_copies": augment_copies,
        "crf_iters": crf_iters, "bilstm": asdict(bilstm) if bilstm else None, "mt": asdict(mt) if mt else None,
        "mt_corpus": mt_corpus, "hf_model": str(hf_model) if hf_model else None, "hf_steps": hf_steps,
    }
    run = json.loads(json.dumps(run))  # as progress.json gives it back (lists, not tuples)
    # every file is read (and refused if damaged) before anything is written or trained
    pos_train, ner_train = training_sentences(root, limit, augment_copies)
    devs = {task: loaders.load_tagged(task, "dev", root) for task in ("pos", "ner")}
    if mt is not None or hf_model is not None:
        mt_pairs, mt_dev = (loaders.load_parallel(mt_corpus, split, root, lim) for split, lim in
                            (("train", limit), ("dev", None)))
        for split, got in (("train", mt_pairs), ("dev", mt_dev)):
            if not got:
                raise LmlabError(f"the {mt_corpus} {split} split in {root / 'parallel' / mt_corpus} holds no sentence "
                                 "pairs: check the .sum/.eng files")
    progress_path = out / "progress.json"
    progress = _start_progress(progress_path, run, resume)
    scores: dict = progress["done"]

    def finished(stage: str, stage_scores: dict) -> None:
        scores[stage] = stage_scores
        atomic_write_json(progress_path, progress)
        log(f"  dev {stage_scores}")
        if stop is not None:
            stop.stop_here()

    def fit_resume(stage: str) -> FitResume:
        return FitResume(out / f"{stage}.resume", run, resume, stop, save_every)

    for task, train in (("pos", pos_train), ("ner", ner_train)):
        dev = devs[task]
        for name in taggers:
            if f"{task}/{name}" in scores:
                log(f"{task}/{name}: finished before the interruption, kept")
                continue
            log(f"training {name} for {task} on {len(train)} sentences")
            tagger = make_tagger(name, crf_iters, bilstm, device)
            try:
                tagger.fit(train)
            except TrainingDiverged as e:  # the failing update was not applied: keep the last good weights
                tagger.save(out / task / name)
                raise TrainingDiverged(f"{task}/{name} diverged ({e}); its last good weights are saved in "
                                       f"{out / task / name} and the models finished before it in {out}") from None
            tagger.save(out / task / name)
            sc = tagging_scores([s.tags for s in dev], tagger.predict([s.tokens for s in dev]), task == "ner")
            finished(f"{task}/{name}", {
                "accuracy": sc["accuracy"],
                "macro_f1": sc["macro_f1"],
                **({"entity_f1": sc["entity"]["f1"]} if task == "ner" else {}),
            })
    if mt is not None and "mt" not in scores:
        log(f"training the translator on {len(mt_pairs)} {mt_corpus} pairs for {mt.steps} steps")
        res = fit_resume("mt")
        try:
            tr = train_translator(mt_pairs, mt, device, log=log, resume=res, progress="mt",
                                  metrics=out / "metrics.jsonl")
        except TrainingDiverged as e:
            raise _diverged("the translator", res, e, out) from None
        tr.save(out / "mt")
        finished("mt", bleu_chrf(tr.translate([s for s, _ in mt_dev]), [e for _, e in mt_dev]))
    if hf_model is not None and "hf_mt" not in scores:
        log(f"fine-tuning {hf_model} on {len(mt_pairs)} {mt_corpus} pairs for {hf_steps} steps")
        hf = HFTranslator.from_pretrained(hf_model, device)
        res = fit_resume("hf_mt")
        try:
            hf.finetune(mt_pairs, hf_steps, log=log, resume=res, progress="hf_mt", metrics=out / "metrics.jsonl")
        except TrainingDiverged as e:
            raise _diverged(f"fine-tuning {hf_model}", res, e, out) from None
        hf.save(out / "hf_mt")
        finished("hf_mt", bleu_chrf(hf.translate([s for s, _ in mt_dev]), [e for _, e in mt_dev]))
    atomic_write_json(
        out / "manifest.json",
        {
            "taggers": list(taggers),
            "default_tagger": taggers[0],
            "mt": mt is not None,
            "mt_config": asdict(mt) if mt else None,
            "hf_mt": hf_model is not None,
            "dev_scores": scores,
        },
    )
    progress_path.unlink()
    return scores


def _diverged(what: str, res: FitResume, e: TrainingDiverged, out: Path) -> TrainingDiverged:
    """Save the last good step of a diverged translator (its failing update was not applied) as its resume
    snapshot, and the error that says where it is."""
    res.save(len(res.losses))
    return TrainingDiverged(f"{what} diverged after {len(res.losses)} good step(s) ({e}); its last good step is "
                            f"saved in {res.path} and the models finished before it in {out}")


def _start_progress(path: Path, run: dict, resume: bool) -> dict:
    """The progress record of a training into `path.parent`: a new one, or with `resume` the interrupted one
    (refused when its settings differ from `run`, naming them)."""
    if resume:
        if not path.exists():
            raise LmlabError(f"--resume: {path} not found: {path.parent} holds no interrupted training "
                             "(run without --resume)")
        progress = read_json(path, "training progress file")
        if not isinstance(progress, dict) or not isinstance(progress.get("run"), dict) \
                or not isinstance(progress.get("done"), dict):
            raise LmlabError(f"{path} is not an lmlab training progress file: start the training without --resume "
                             "in a new --out")
        check_same_run(progress["run"], run, path)
        return progress
    if path.exists():
        raise LmlabError(f"{path.parent} holds an interrupted training ({path.name}): continue it with --resume, "
                         "or choose another --out")
    progress = {"run": run, "done": {}}
    atomic_write_json(path, progress)
    return progress


class SumerianPipeline:
    def __init__(self, pos_tagger, ner_tagger, translator: Translator | None = None):
        self.pos, self.ner, self.translator = pos_tagger, ner_tagger, translator

    @classmethod
    def load(
        cls,
        models: str | Path,
        tagger: str | None = None,
        with_mt: bool = True,
        device: str | torch.device = "cpu",
    ) -> SumerianPipeline:
        """The taggers (and translator, with `with_mt`) trained into a models folder."""
        models = Path(models)
        manifest = models / "manifest.json"
        if not manifest.exists():
            raise LmlabError(
                f"no trained Sumerian models in {models} (manifest.json missing): run "
                f"`lmlab sumerian train --out {models}` first, or pass --models DIR"
            )
        meta = json.loads(manifest.read_text())
        name = tagger or meta["default_tagger"]
        if name not in meta["taggers"]:
            raise LmlabError(
                f"tagger {name!r} was not trained in {models}; available: {', '.join(meta['taggers'])}"
            )
        translator = None
        if with_mt:
            if not meta.get("mt"):
                raise LmlabError(f"{models} holds no translation model: retrain without --no-mt")
            translator = Translator.load(models / "mt", device)
        return cls(
            load_tagger(models / "pos" / name, device), load_tagger(models / "ner" / name, device), translator
        )

    def tag(self, sentences: list[list[str]]) -> tuple[list[list[str]], list[list[str]]]:
        """(POS tags, NER tags) of each tokenized sentence."""
        return self.pos.predict(sentences), self.ner.predict(sentences)

    def translate(self, sentences: list[list[str]], beam: int = 4) -> list[str]:
        """The English translation of each tokenized sentence."""
        if self.translator is None:
            raise LmlabError("this pipeline was loaded without a translation model")
        return self.translator.translate([" ".join(s) for s in sentences], beam=beam)

    def run(self, lines: list[str], translate: bool = True, beam: int = 4) -> str:
        """Raw lines to CoNLL with POS, NER and, with `translate`, the translation."""
        sents = loaders.raw_lines_to_tokens(lines)
        pos, ner = self.tag(sents)
        eng = self.translate(sents, beam) if translate else None
        return to_conll(sents, pos, ner, eng)


def to_conll(
    sents: list[list[str]], pos: list[list[str]], ner: list[list[str]], translations: list[str] | None = None
) -> str:
    """CoNLL: `# text = …` (and `# translation = …`), then `ID FORM POS NER` rows, a blank line
    per sentence."""
    out = []
    for i, toks in enumerate(sents):
        out.append(f"# sent_id = {i + 1}")
        out.append(f"# text = {' '.join(toks)}")
        if translations is not None:
            out.append(f"# translation = {translations[i]}")
        out.append("# ID\tFORM\tPOS\tNER")
        out += [f"{j + 1}\t{w}\t{p}\t{n}" for j, (w, p, n) in enumerate(zip(toks, pos[i], ner[i]))]
        out.append("")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- attribution views of translations
def word_groups(tok, words: list[str]) -> list[list[int]] | None:
    """Token indices of each word when `tok` splits on whitespace (None when the pieces do not line up)."""
    groups, pos = [], 0
    pieces = []
    for w in words:
        ids = tok.encode(w)
        groups.append(list(range(pos, pos + len(ids))))
        pos += len(ids)
        pieces += ids
    return groups if pieces == tok.encode(" ".join(words)) else None


def explain_translation(
    translator: Translator,
    sumerian: str,
    english: str | None = None,
    methods=("integrated_gradients", "saliency", "feature_ablation", "attention"),
    n_steps: int = 32,
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Word-level [English word × Sumerian word] attribution matrices for one line (teacher forcing on
    `english`, or on the model's own greedy translation). Subword rows are averaged, columns summed."""
    src_words = sumerian.split()
    english = english if english is not None else translator.translate([sumerian])[0]
    out_words = english.split()
    if not src_words or not out_words:
        raise LmlabError("cannot explain an empty line or an empty translation")
    src = translator.encode_source([sumerian])
    out = torch.tensor([translator.tgt_tok.encode(english, eos=False)], device=translator.device)
    expl = seq2seq_explainable(translator.model, src, out, translator.tgt_tok.bos_id)
    cols = word_groups(translator.src_tok, src_words)
    rows = word_groups(translator.tgt_tok, out_words)
    n_src = src.shape[1] - 1  # drop the <eos> column
    # word level unless the line was cut to max_len or BPE pieces cross word boundaries
    grouped = cols is not None and rows is not None and n_src == sum(len(g) for g in cols)
    mats = {}
    for m in methods:
        a = attribute(expl, m, n_steps=n_steps).matrix[:, :n_src]
        mats[m] = group_matrix(a, rows, cols) if grouped else a
    if not grouped:
        src_words = [translator.src_tok.decode([i]) for i in src[0, :n_src].tolist()]
        out_words = [translator.tgt_tok.decode([i]) for i in out[0].tolist()]
    return mats, src_words, out_words
