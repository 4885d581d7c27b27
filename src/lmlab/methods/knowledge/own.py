"""LM-CORE readers and CoSe-Co path generators trained on a user's knowledge graph, saved as lmlab run folders.

A saved folder is an lmlab checkpoint (`OUT/step_N/`, written atomically) plus `OUT/tokenizer.json`; the
checkpoint's run config records what the model is (`lmlab_kg`: "reader" or "generator") and its settings. A model
fine-tuned from a local HF folder (a causal LM reader, a seq2seq generator) is `OUT/hf/` (save_pretrained) with its
settings in `OUT/kg_model.json`.

    reader = train_kg_reader(kg, "reader/", steps=300)
    reader, cfg = load_kg_model("reader/", "reader")
    answers = answer_questions(reader, kg, ["trobex was born in"], method="bm25", k=cfg["k"])
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from lmlab import checkpoint
from lmlab.hf import load_model, load_tokenizer
from lmlab.inputs import read_json
from lmlab.methods.knowledge.coseco import (
    PathGenerator,
    SentencePaths,
    Seq2SeqPathGenerator,
    build_dataset,
    linearise,
    training_pairs,
)
from lmlab.methods.knowledge.kg import KnowledgeGraph, Probe, Triple
from lmlab.methods.knowledge.lmcore import (
    GPTReader,
    HFReader,
    ReadExample,
    probe_example,
    train_reader,
    verbalise,
)
from lmlab.methods.knowledge.retrieval import EntityLinker, Retriever
from lmlab.tokenizer import Tokenizer
from lmlab.utils import LmlabError, atomic_write_json

log = logging.getLogger(__name__)
HF_DIR, HF_SETTINGS = "hf", "kg_model.json"  # an HF reader: its save_pretrained folder and its settings


@dataclass
class ModelSize:
    """The lmlab GPT behind a reader or generator."""
    tokenizer: str = "char"  # "char" or "bpe"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    seq_len: int = 256
    vocab_size: int = 800  # bpe only


def kg_probes(kg: KnowledgeGraph) -> list[Probe]:
    """One cloze probe per triple whose relation template puts the subject before the answer."""
    probes = [Probe(t.head, t.relation, t.tail, kg.template(t.relation)) for t in kg]
    probes = [p for p in probes if p.prompt()]
    if not probes:
        raise LmlabError("no triple of the knowledge graph gives a question (every template starts with [Y]): "
                         "give templates like '[X] was born in [Y] .' in the JSONL file")
    return probes


def holds_model(out: str | Path) -> bool:
    """Whether `out` already holds a trained reader or generator (an lmlab checkpoint or an HF folder)."""
    out = Path(out)
    return out.is_dir() and bool(checkpoint.list_steps(out) or (out / HF_SETTINGS).is_file()
                                 or (out / HF_DIR).exists())


def check_new(out: str | Path) -> Path:
    """`out` as a Path, refused when it already holds a trained reader or generator."""
    out = Path(out)
    if holds_model(out):
        raise LmlabError(f"{out} already holds a trained model: pass a new --out folder (or delete {out})")
    return out


def _save(out: Path, model, tok: Tokenizer, steps: int, config: dict, losses: Sequence[float]) -> Path:
    tok.save(out / "tokenizer.json")  # before the checkpoint: a folder with a step always has its tokenizer
    return checkpoint.save(out, steps, model, config=config, extra={"final_loss": float(losses[-1])})


def reading_example(kg: KnowledgeGraph, probe: Probe, k: int, rng: random.Random,
                    triples: Sequence[Triple]) -> ReadExample:
    """The probe's fact among k-1 others (half about its subject, half any), in random order; no other fact of the
    same (subject, relation) sits beside it, so a swapped fact is never contradicted by the true one."""
    key = (probe.subject, probe.relation)
    own = [t for t in kg.about(probe.subject) if (t.head, t.relation) != key]
    ctx = [probe.triple]
    for _ in range(20 * k):  # bounded: a tiny KG may hold fewer than k other facts
        if len(ctx) >= k:
            break
        t = rng.choice(own if own and rng.random() < 0.5 else triples)  # no list of the rest: KGs can be large
        if (t.head, t.relation) != key and t not in ctx:
            ctx.append(t)
    rng.shuffle(ctx)
    return probe_example(probe, verbalise(kg, ctx))


def train_kg_reader(kg: KnowledgeGraph, out: str | Path, steps: int = 300, k: int = 3, batch: int = 16,
                    lr: float = 3e-3, seed: int = 0, size: ModelSize | None = None, p_swap: float = 0.5,
                    hf_model: str | Path | None = None, device: str | torch.device = "cpu"):
    """Train an LM-CORE reader on every fact of `kg` (the fact among k-1 others in its input) and save it into
    `out`; the caller holds `out`'s RunLock. With probability `p_swap` the fact's tail is swapped for another tail
    of its relation, in the input and the answer alike, so the reader learns to read its input rather than recall
    the graph (what lets `kg answer` follow edits without retraining). `hf_model`: fine-tune that local HF causal
    LM as the reader (saved in `out/hf/`) instead of a fresh lmlab GPT of `size`."""
    out, size = check_new(out), size or ModelSize()
    probes = kg_probes(kg)
    torch.manual_seed(seed)
    if hf_model is not None:
        reader = HFReader(load_model(hf_model, "causal").to(device), load_tokenizer(hf_model))
    else:
        texts = [kg.verbalise(t) for t in kg] + [p.prompt() for p in probes]
        reader = GPTReader.create(texts, size.tokenizer, size.vocab_size, size.n_layers, size.d_model, size.n_heads,
                                  size.seq_len, device)
    triples = kg.triples
    tails: dict[str, list[str]] = {}
    for t in triples:
        tails.setdefault(t.relation, []).append(t.tail)

    def example(rng: random.Random) -> ReadExample:
        p = rng.choice(probes)
        if rng.random() < p_swap:  # a fact it cannot have memorised: the answer is only in the input
            other = next((x for x in (rng.choice(tails[p.relation]) for _ in range(10)) if x != p.answer), None)
            p = p if other is None else replace(p, answer=other)
        return reading_example(kg, p, k, rng, triples)

    losses = train_reader(reader, lambda rng: [example(rng) for _ in range(batch)], steps, lr=lr, seed=seed)
    log.info("reader: %d facts, %d steps, final loss %.3f", len(probes), steps, losses[-1])
    settings = {"lmlab_kg": "reader", "k": k, "steps": steps, "lr": lr, "batch": batch, "seed": seed,
                "p_swap": p_swap, "final_loss": float(losses[-1])}
    if hf_model is not None:
        _save_hf(out, reader, {**settings, "hf_model": str(hf_model)})
    else:
        _save(out, reader.model, reader.tok, steps, {**settings, "max_answer": reader.max_answer, **size.__dict__},
              losses)
    return reader


def _save_hf(out: Path, reader: HFReader | Seq2SeqPathGenerator, settings: dict) -> None:
    """`out/hf/` (model + tokenizer, renamed into place whole) and then `out/kg_model.json`."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-hf-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    reader.model.save_pretrained(str(tmp))
    reader.tok.save_pretrained(str(tmp))
    os.replace(tmp, out / HF_DIR)
    atomic_write_json(out / HF_SETTINGS, settings)


def train_kg_generator(kg: KnowledgeGraph, sentences: Sequence[str], out: str | Path, steps: int = 300,
                       batch: int = 16, lr: float = 3e-3, seed: int = 0, p_mask: float = 0.33, max_hops: int = 2,
                       size: ModelSize | None = None, hf_model: str | Path | None = None,
                       device: str | torch.device = "cpu"):
    """Train a CoSe-Co generator on the sentences paired with the KG paths joining the entities they mention;
    `hf_model`: fine-tune that local HF seq2seq model (T5, BART) instead of a fresh lmlab GPT (saved in `out/hf/`)."""
    out, size = check_new(out), size or ModelSize()
    items = sentence_items(kg, sentences, max_hops)
    if not items:
        raise LmlabError(f"none of the {len(sentences)} sentences mentions a KG entity with a path: the generator "
                         "learns from sentences that name the graph's entities (see `lmlab kg paths`)")
    relations = kg.relations()
    texts = [it.sentence for it in items] + [linearise(p) for it in items for p in it.paths]
    torch.manual_seed(seed)
    if hf_model is not None:
        gen = Seq2SeqPathGenerator(load_model(hf_model, "seq2seq").to(device), load_tokenizer(hf_model), relations)
    else:
        gen = PathGenerator.create(texts, relations, size.tokenizer, size.vocab_size, n_layers=size.n_layers,
                                   d_model=size.d_model, n_heads=size.n_heads, seq_len=size.seq_len, device=device,
                                   max_answer=40)
    losses = train_reader(gen, lambda rng: training_pairs([rng.choice(items) for _ in range(batch)], rng, p_mask),
                          steps, lr=lr, seed=seed)
    log.info("generator: %d sentences with paths, %d steps, final loss %.3f", len(items), steps, losses[-1])
    settings = {"lmlab_kg": "generator", "relations": relations, "steps": steps, "lr": lr, "batch": batch,
                "seed": seed, "p_mask": p_mask, "max_hops": max_hops, "final_loss": float(losses[-1])}
    if hf_model is not None:
        _save_hf(out, gen, {**settings, "hf_model": str(hf_model)})
    else:
        _save(out, gen.model, gen.reader.tok, steps, {**settings, "max_answer": 40, **size.__dict__}, losses)
    return gen


def sentence_items(kg: KnowledgeGraph, sentences: Sequence[str], max_hops: int = 2) -> list[SentencePaths]:
    """The sentences paired with the KG paths joining the (non-stop-word) entities they mention."""
    # stop words are no entities: ConceptNet holds "a", "the", ... as nodes
    return build_dataset(kg, sentences, EntityLinker(kg, skip=ENGLISH_STOP_WORDS, min_chars=3), max_hops)


def load_kg_model(folder: str | Path, want: str, device: str | torch.device = "cpu"):
    """(GPTReader or PathGenerator, its saved settings) from a folder written by `train_kg_reader` (want="reader")
    or `train_kg_generator` (want="generator")."""
    folder = Path(folder)
    if (folder / HF_SETTINGS).is_file():
        cfg = read_json(folder / HF_SETTINGS, "KG model settings")
        model = None
    else:
        model, meta = checkpoint.load(folder, device=device)
        cfg = meta.get("run_config") or {}
    kind = cfg.get("lmlab_kg")
    if kind != want:
        made = {"reader": "lmlab kg train-reader", "generator": "lmlab kg generate"}[want]
        raise LmlabError(f"{folder} holds {'a KG ' + kind if kind else 'no KG model'}, not a {want}: make one with "
                         f"`{made} --out {folder}`")
    if model is None:
        hf = folder / HF_DIR
        if want == "reader":
            return HFReader(load_model(hf, "causal").to(device), load_tokenizer(hf)), cfg
        return Seq2SeqPathGenerator(load_model(hf, "seq2seq").to(device), load_tokenizer(hf), cfg["relations"]), cfg
    tok = Tokenizer.load(folder / "tokenizer.json")
    model.eval()
    reader = GPTReader(model, tok, cfg["max_answer"])
    return (reader if want == "reader" else PathGenerator(reader, cfg["relations"])), cfg


def answer_questions(reader: GPTReader, kg: KnowledgeGraph, questions: Sequence[str], method: str = "bm25",
                     k: int = 3) -> list[tuple[str, list[Triple]]]:
    """(answer, retrieved facts) per question: the top-k facts of `kg` are verbalised into the reader's input."""
    got = Retriever(kg, method, k).retrieve_many(list(questions), k) if len(kg) else [[] for _ in questions]
    facts = [[s.triple for s in g] for g in got]
    preds = reader.predict([ReadExample(verbalise(kg, ts), q.strip(), "") for q, ts in zip(questions, facts)])
    return list(zip(preds, facts))
