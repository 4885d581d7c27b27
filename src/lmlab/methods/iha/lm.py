"""Claim 4: multi-key needle retrieval with small character LMs — all-MHA against the FLOP-matched IHA hybrid.

Both LMs train on the same stream of key=value lines with inline queries of earlier keys (the loss on the queried
values only). The MHA LM trains in chunks of `niah_eval_every` steps until its string_match_all on `niah_val_n`
validation prompts at the trained length reaches `niah_target`, or until `niah_max_steps`; the hybrid then trains the
same number of steps on the same data (like for like). Both are scored on `niah_eval_n` fresh RULER MK-2 prompts
(compact wording) at the trained length: the context filled with key=value distractors, one key queried.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch

from lmlab.generate import generate
from lmlab.methods.iha.attention import hybrid_config
from lmlab.methods.iha.niah import (
    COMPACT_TEMPLATES,
    NeedleHaystack,
    random_number,
    string_match_all,
    word_vocabulary,
)
from lmlab.model import GPT, IGNORE_INDEX, GPTConfig, flop_ratio_vs_mha
from lmlab.tokenizer import CharTokenizer
from lmlab.train import fit, make_optimizer


class KeyValueLines:
    """Character LM data: needle lines `key=value.` with inline queries `key?=value.` of earlier keys.

    The loss is on the queried values only (the other values are random, hence unpredictable). The
    format is the one `NeedleHaystack(variant=2, templates=COMPACT_TEMPLATES)` produces for evaluation.
    """

    CHARS = "abcdefghijklmnopqrstuvwxyz0123456789=.?\n-, "

    def __init__(self, tokenizer, seq_len: int, seed: int, query_rate: float = 0.3):
        self.tok, self.seq_len, self.query_rate = tokenizer, seq_len, query_rate
        self.rng = random.Random(seed)
        self.keys = word_vocabulary(4096, seed=0)
        self.lut = np.zeros(128, dtype=np.int64)
        for c in self.CHARS:
            self.lut[ord(c)] = tokenizer.stoi[c]

    def sequence(self) -> tuple[np.ndarray, np.ndarray]:
        parts, supervised, seen, used, length = [], [], [], set(), 0
        while length < self.seq_len:
            if seen and self.rng.random() < self.query_rate:
                key, value = self.rng.choice(seen)
                line_head, line_tail = f"{key}?=", f"{value}.\n"
            else:
                key = self.rng.choice(self.keys)
                if key in used:
                    continue
                used.add(key)
                value = random_number(self.rng)
                seen.append((key, value))
                line_head, line_tail = f"{key}={value}.\n", ""
            for text, sup in ((line_head, False), (line_tail, True)):
                if text:
                    parts.append(text)
                    supervised.append(np.full(len(text), sup))
                    length += len(text)
        ids = self.lut[np.frombuffer("".join(parts).encode("ascii"), dtype=np.uint8)]
        sup = np.concatenate(supervised)
        ids = np.concatenate([[self.tok.bos_id], ids])[: self.seq_len + 1]
        sup = np.concatenate([[False], sup])[: self.seq_len + 1]
        return ids, sup

    def batch(self, b: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [self.sequence() for _ in range(b)]
        ids = torch.tensor(np.stack([s[0] for s in seqs]))
        targets = ids[:, 1:].clone()
        targets[~torch.tensor(np.stack([s[1][1:] for s in seqs]))] = IGNORE_INDEX
        return ids[:, :-1].to(dev), targets.to(dev)


@torch.no_grad()
def niah_scores(model, tok, length: int, n: int, seed: int, batch: int = 16) -> list[float]:
    """string_match_all (0–100) of each of `n` compact MK-2 prompts at `length` characters."""
    gen = NeedleHaystack(variant=2, seed=seed, templates=COMPACT_TEMPLATES, tokens_to_generate=10)
    samples = gen.samples(n, max_length=length, length_fn=lambda s: len(s) + 1)
    scores = []
    for i in range(0, n, batch):
        chunk = samples[i:i + batch]
        out = generate(model, [tok.encode(s.input, bos=True) for s in chunk], max_new_tokens=8, temperature=0.0,
                       pad_id=tok.pad_id)
        scores += [string_match_all([tok.decode(t, skip_special=True)], [s.answers]) for t, s in zip(out.tokens, chunk)]
    return scores


def niah_configs(cfg) -> dict[str, GPTConfig]:
    tok = CharTokenizer(KeyValueLines.CHARS)
    base = GPTConfig(vocab_size=tok.vocab_size, n_layers=cfg.niah_layers, n_heads=cfg.niah_heads,
                     d_model=cfg.niah_d_model, seq_len=cfg.niah_seq_len)
    return {"mha": base, "hybrid": hybrid_config(base, n_pseudo=cfg.niah_pseudo)}


def hybrid_flop_ratio(cfg) -> float:
    return flop_ratio_vs_mha(niah_configs(cfg)["hybrid"])


def measure_niah(cfg, seed: int, dev, log) -> dict:
    """One seed: the MHA LM trained to the retrieval target (or the cap), the hybrid for as many steps, both scored
    at the trained length; with the paired per-prompt difference's standard error."""
    tok = CharTokenizer(KeyValueLines.CHARS)
    n = cfg.niah_seq_len
    out, steps = {}, None
    for name, mcfg in niah_configs(cfg).items():
        torch.manual_seed(seed)
        model = GPT(mcfg).to(dev)
        data = KeyValueLines(tok, n, seed=seed)
        opt = make_optimizer(model, cfg.niah_lr, weight_decay=0.1)
        batches = (data.batch(cfg.niah_batch, dev) for _ in iter(int, 1))
        t0, step, curve = time.time(), 0, []
        cap = cfg.niah_max_steps if steps is None else steps
        while step < cap:
            end = min(step + cfg.niah_eval_every, cap)
            losses = fit(model, lambda m, b: m(b[0], b[1]), batches, end, lr=cfg.niah_lr, warmup=100,
                         schedule="constant", optimizer=opt, device=dev, start=step)
            step = end
            model.eval()
            val = float(np.mean(niah_scores(model, tok, n, cfg.niah_val_n, 1000 + seed)))
            curve.append([step, val, losses[-1]])
            log(f"niah {name} step {step}: validation string_match_all {val:.1f}, answer loss {losses[-1]:.3f}")
            if steps is None and val >= cfg.niah_target:
                break
        steps = step
        model.eval()
        scores = niah_scores(model, tok, n, cfg.niah_eval_n, 7 + seed)
        out[name] = {"score": float(np.mean(scores)), "per_prompt": scores, "curve": curve, "params": model.num_params(),
                     "train_s": time.time() - t0}
    diff = np.array(out["hybrid"]["per_prompt"]) - np.array(out["mha"]["per_prompt"])
    return {**out, "steps": steps, "diff_se": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0,
            "flop_ratio": hybrid_flop_ratio(cfg)}
