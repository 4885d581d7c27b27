"""Claim 3: relation composition (App. D) — 1-layer encoders, MHA against IHA, trained with early stopping.

Each (learning rate, order) cell trains MHA and IHA on the same stream of fresh random relations (the same
generator seed: like for like), evaluates token accuracy on a fixed validation split every `rel_eval_every` steps,
stops after `rel_patience` evaluations without improvement (or at the `rel_max_steps` cap) and restores the best
validation state; the test split then scores it. The constant guess (the label more frequent on the validation
split, scored on the test split) is the baseline that says whether a model learned anything.
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.methods.iha.attention import InterleavedHeadAttention
from lmlab.methods.iha.tasks import PAD, RelationBatch, RelationCompositionTask
from lmlab.model import AttnContext, GPTConfig, MultiHeadAttention
from lmlab.train import fit, make_optimizer


class RelationEncoder(nn.Module):
    """One pre-norm encoder block (bidirectional attention over valid tokens, GELU MLP), learned
    absolute positions, a per-token logit. The attention is lmlab's MHA or IHA module (token mask,
    no RoPE, so the padding mask is the only restriction)."""

    def __init__(self, d_model: int, n_heads: int, n_pseudo: int | None, max_len: int):
        super().__init__()
        opts = {"n_pseudo": n_pseudo, "mask": "token", "rope": "none"} if n_pseudo else {}
        cfg = GPTConfig(vocab_size=3, n_layers=1, n_heads=n_heads, d_model=d_model, seq_len=max_len,
                        attention="iha" if n_pseudo else "mha", attention_options=opts)
        self.tok = nn.Embedding(3, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.ln1, self.ln2, self.ln_f = (nn.LayerNorm(d_model) for _ in range(3))
        self.attn = (InterleavedHeadAttention if n_pseudo else MultiHeadAttention)(cfg, 0)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.head = nn.Linear(d_model, 1)
        self.head_dim = cfg.head_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        x = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))[None]
        valid = tokens != PAD
        mask = valid[:, None, None, :].expand(b, 1, t, t)
        ident = (torch.ones(1, 1, t, self.head_dim, device=x.device),
                 torch.zeros(1, 1, t, self.head_dim, device=x.device))
        x = x + self.attn(self.ln1(x), ident, AttnContext(mask=mask))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x)).squeeze(-1)


def relation_loss(model, batch):
    tokens, labels, valid = batch
    logits = model(tokens)
    return F.binary_cross_entropy_with_logits(logits[valid].float(), labels[valid])


@torch.no_grad()
def per_example_accuracy(model, data: list[RelationBatch], dev) -> tuple[torch.Tensor, torch.Tensor]:
    """(token accuracy of each example, whether its whole matrix is right), over a fixed split."""
    model.eval()
    tok_acc, exact = [], []
    for bt in data:
        tok, lab, val = bt.tokens.to(dev), bt.labels.to(dev), bt.valid.to(dev)
        ok = ((model(tok) > 0).float() == lab) & val
        tok_acc.append((ok.sum(1) / val.sum(1)).cpu())
        exact.append((ok.sum(1) == val.sum(1)).cpu())
    model.train()
    return torch.cat(tok_acc), torch.cat(exact)


def constant_guess(val: list[RelationBatch], test: list[RelationBatch]) -> float:
    """Token accuracy (%) on `test` of always answering the label that is more frequent on `val`."""
    ones = sum(float(b.labels[b.valid].sum()) for b in val) / sum(int(b.valid.sum()) for b in val)
    guess = 1.0 if ones > 0.5 else 0.0
    per_example = torch.cat([((b.labels == guess) & b.valid).sum(1) / b.valid.sum(1) for b in test])
    return 100.0 * float(per_example.mean())


def train_early_stopping(model, task, cfg, lr: float, data_seed: int, val, dev) -> dict:
    """AdamW at a constant `lr` after a linear warm-up, evaluated on `val` every `rel_eval_every` steps; stops after
    `rel_patience` evaluations without a better validation token accuracy, or at `rel_max_steps`, and keeps the best
    validation state."""
    gen = torch.Generator().manual_seed(data_seed)

    def batches():
        while True:
            bt = task.sample(cfg.rel_batch, gen)
            yield bt.tokens.to(dev), bt.labels.to(dev), bt.valid.to(dev)

    stream, opt = batches(), make_optimizer(model, lr)
    best, best_state, best_step, waited, step, curve = -1.0, None, 0, 0, 0, []
    while step < cfg.rel_max_steps and waited < cfg.rel_patience:
        end = min(step + cfg.rel_eval_every, cfg.rel_max_steps)
        fit(model, relation_loss, stream, end, lr=lr, warmup=cfg.rel_warmup, schedule="constant", optimizer=opt,
            device=dev, start=step)
        step = end
        acc = 100.0 * float(per_example_accuracy(model, val, dev)[0].mean())
        curve.append([step, acc])
        if acc > best:
            best, best_state, best_step, waited = acc, copy.deepcopy(model.state_dict()), step, 0
        else:
            waited += 1
    model.load_state_dict(best_state)
    return {"val_acc": best, "best_step": best_step, "steps": step, "stopped": waited >= cfg.rel_patience,
            "curve": curve}


def measure_relations(cfg, seed: int, dev, log) -> dict:
    """Every (learning rate, order) cell of one seed: the constant guess, MHA and IHA(P=rel_pseudo) with their
    test token accuracy, exact-matrix accuracy, training record, and the paired per-example difference's
    standard error (the test split's sampling noise of IHA − MHA)."""
    cells = []
    for lr in cfg.rel_lrs:
        for order, m_range in ((2, cfg.rel_m2), (3, cfg.rel_m3)):
            task = RelationCompositionTask(order, m_range=tuple(m_range))
            val = task.dataset(cfg.rel_val, seed=20_000 + 10 * order + seed)
            test = task.dataset(cfg.rel_test, seed=10_000 + order)
            cell = {"lr": lr, "order": order, "m_range": list(m_range), "constant": constant_guess(val, test)}
            per_ex = {}
            for name, p in (("mha", None), ("iha", cfg.rel_pseudo)):
                torch.manual_seed(seed)
                model = RelationEncoder(cfg.rel_d_model, cfg.rel_heads, p, task.max_len).to(dev)
                t0 = time.process_time()
                rec = train_early_stopping(model, task, cfg, lr, seed * 100 + order, val, dev)
                acc, exact = per_example_accuracy(model, test, dev)
                per_ex[name] = acc
                cell[name] = {**rec, "test_acc": 100.0 * float(acc.mean()), "exact": 100.0 * float(exact.float().mean()),
                              "params": sum(q.numel() for q in model.parameters()),
                              "cpu_s": time.process_time() - t0}
                log(f"relations lr {lr:g} order {order} {name}: test token acc {cell[name]['test_acc']:.2f} "
                    f"(constant {cell['constant']:.2f}), {rec['steps']} steps, stopped early: {rec['stopped']}")
            diff = 100.0 * (per_ex["iha"] - per_ex["mha"])
            cell["diff_se"] = float(diff.std() / math.sqrt(len(diff)))
            cells.append(cell)
    return {"cells": cells}
