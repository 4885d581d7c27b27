"""The mechanism part of long_context_ttt: checks, not claims (no language model).

1. The spec's numeric checks of Lemmas 2.2/2.3, Prop. 3.1 and Lemma 3.2 on random instances (`attention_stats`).
2. One hand-built retrieval head trained on near-duplicate keys (unit keys = √share·family + √(1−share)·own): its
   accuracy and needle mass as the number of lines grows (score dilution at head level).
3. The head's W_Q updated on the *oracle* retrieval loss −log p(value) of the context's other lines (Prop. 3.1's
   objective, no next-token loss): what the margin argument predicts when the loss is retrieval. Not qTTT.

`measure(cfg, seed)` returns plain numbers; `decide_theory`, `decide_head` and `decide_oracle` turn the per-seed
numbers into check verdicts.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.methods.qttt import attention_stats as ast
from lmlab.verdict import Verdict, check, rounded

HEAD_VALUES = 16  # values a hand-built head retrieves among
HEAD_MASS_FALL = 0.2  # the head's needle mass at the longest length at most 0.8× the shortest's (the old c1 rule)


def _head_batch(rng, n_lines, n_ctx, d, fam_vecs, share, n_values, gen):
    """Contexts of `n_lines` (key, value) pairs with unit key vectors = √share·family + √(1−share)·own."""
    n_fam = fam_vecs.shape[0]
    fam = torch.as_tensor(rng.integers(n_fam, size=(n_ctx, n_lines)))
    own = torch.randn(n_ctx, n_lines, d, generator=gen)
    keys = math.sqrt(share) * fam_vecs[fam] + math.sqrt(1 - share) * own / math.sqrt(d)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    vals = torch.as_tensor(rng.integers(n_values, size=(n_ctx, n_lines)))
    return keys, vals


def _head_predict(wq, wk, keys, vals, qi, n_values):
    """Queries for lines `qi` (B, Q) of each context: attention over all lines, p(value) = attention mass on lines
    holding that value. Returns (log p(true value), predicted value, needle mass)."""
    d = keys.shape[-1]
    kq = keys.gather(1, qi[..., None].expand(-1, -1, d))
    q = torch.einsum("bqd,bed->bqe", kq, wq) if wq.dim() == 3 else torch.einsum("bqd,ed->bqe", kq, wq)
    k = keys @ wk.T
    att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)  # (B, Q, n)
    p = att @ F.one_hot(vals, n_values).float()
    true = vals.gather(1, qi)
    logp = torch.log(p.gather(2, true[..., None]).squeeze(-1) + 1e-9)
    mass = att.gather(2, qi[..., None]).squeeze(-1)
    return logp, p.argmax(-1), mass


def _unique_needle_values(vals, needle, n_values, rng):
    """Give the needle a value no other line holds, so a correct answer means the needle was retrieved."""
    vals = vals.clone()
    for b in range(vals.shape[0]):
        v = int(vals[b, needle[b, 0]])
        for i in (vals[b] == v).nonzero().flatten().tolist():
            if i != int(needle[b, 0]):
                vals[b, i] = int((v + 1 + rng.integers(n_values - 1)) % n_values)
    return vals


def _train_head(cfg, seed):
    d = cfg.head_dim
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    fam_vecs = torch.randn(cfg.head_families, d, generator=gen)
    fam_vecs = fam_vecs / fam_vecs.norm(dim=-1, keepdim=True)
    wq = (torch.eye(d) + 0.1 * torch.randn(d, d, generator=gen)).requires_grad_(True)
    wk = (torch.eye(d) + 0.1 * torch.randn(d, d, generator=gen)).requires_grad_(True)
    opt = torch.optim.AdamW([wq, wk], lr=cfg.head_lr, weight_decay=0.1)
    for _ in range(cfg.head_steps):
        keys, vals = _head_batch(rng, cfg.head_train_lines, 32, d, fam_vecs, cfg.family_share, HEAD_VALUES, gen)
        qi = torch.as_tensor(rng.integers(cfg.head_train_lines, size=(32, 4)))
        logp, _, _ = _head_predict(wq, wk, keys, vals, qi, HEAD_VALUES)
        opt.zero_grad()
        (-logp.mean()).backward()
        opt.step()
    return wq.detach(), wk.detach(), fam_vecs, rng, gen


def _oracle_update(cfg, wq0, wk0, keys, vals, needle, rng):
    """One W_Q per context (batched: AdamW is elementwise and the clipping per context, so this equals a loop over
    contexts), updated on −log p(value) of the context's lines other than the needle."""
    n_eval, n, d = keys.shape
    m_ev = min(cfg.oracle_events, n - 1)
    events = torch.as_tensor(np.stack([
        np.stack([rng.choice(others, size=m_ev, replace=False) for _ in range(cfg.oracle_steps)])
        for others in (np.delete(np.arange(n), int(needle[b, 0])) for b in range(n_eval))]))
    wqa = wq0.expand(n_eval, d, d).clone().requires_grad_(True)
    opt = torch.optim.AdamW([wqa], lr=cfg.oracle_lr, weight_decay=0.01)
    for step in range(cfg.oracle_steps):
        lp, _, _ = _head_predict(wqa, wk0, keys, vals, events[:, step], HEAD_VALUES)
        opt.zero_grad()
        (-lp.mean(1).sum()).backward()
        norms = wqa.grad.flatten(1).norm(dim=1)
        wqa.grad.mul_((1.0 / (norms + 1e-6)).clamp(max=1.0)[:, None, None])  # clip 1.0 per context
        opt.step()
    return wqa.detach()


def measure(cfg, seed: int) -> dict:
    """One seed of the mechanism part: the lemma checks and the hand-built head at each of `cfg.head_lengths`."""
    lemmas = ast.check_lemmas(cfg.lemma_instances, seed)
    wq0, wk0, fam_vecs, rng, gen = _train_head(cfg, seed)
    rows = []
    for n in cfg.head_lengths:
        keys, vals = _head_batch(rng, n, cfg.head_n_eval, cfg.head_dim, fam_vecs, cfg.family_share, HEAD_VALUES, gen)
        needle = torch.as_tensor(rng.integers(n, size=(cfg.head_n_eval, 1)))
        vals = _unique_needle_values(vals, needle, HEAD_VALUES, rng)
        truth = vals.gather(1, needle)
        with torch.no_grad():
            _, pred, mass = _head_predict(wq0, wk0, keys, vals, needle, HEAD_VALUES)
        wqa = _oracle_update(cfg, wq0, wk0, keys, vals, needle, rng)
        with torch.no_grad():
            _, pred1, mass1 = _head_predict(wqa, wk0, keys, vals, needle, HEAD_VALUES)
        rows.append({"lines": n, "acc": float((pred == truth).float().mean()), "mass": float(mass.mean()),
                     "acc_oracle": float((pred1 == truth).float().mean()), "mass_oracle": float(mass1.mean())})
    return {"lemmas": {k: v for k, v in lemmas.items() if not isinstance(v, dict)},
            "lemma22_alpha_by_T": {str(k): v for k, v in lemmas["lemma22_alpha_by_T"].items()}, "head": rows}


def theory_passes(lemmas: dict) -> dict[str, bool]:
    """Each numeric check's pass criterion (spec 04 §12 Q1–Q4)."""
    return {
        "lemma22": lemmas["lemma22_max_excess"] <= 1e-12,
        "lemma23": lemmas["lemma23_min_mass_minus_target"] >= -1e-12,
        "prop31": lemmas["prop31_max_abs_err"] < 1e-6,
        "lemma32": lemmas["lemma32_max_rel_err"] < 0.05 and lemmas["lemma32_monotone_frac"] == 1.0,
    }


def decide_theory(per_seed: list[dict]) -> Verdict:
    """Check: Lemmas 2.2/2.3, Prop. 3.1 and Lemma 3.2 hold on every seed's random instances."""
    passes = [theory_passes(n["mechanism"]["lemmas"]) for n in per_seed]
    failed = sorted({k for p in passes for k, ok in p.items() if not ok})
    worst = {k: [n["mechanism"]["lemmas"][k] for n in per_seed] for k in
             ("lemma22_max_excess", "lemma23_min_mass_minus_target", "prop31_max_abs_err", "lemma32_max_rel_err")}
    return check(not failed, f"numeric checks on random instances, per seed: {worst}; "
                 + (f"failed: {failed}" if failed else "all pass (spec 04 §12 Q1–Q4)"), **worst)


def decide_head(per_seed: list[dict]) -> Verdict:
    """Check: the hand-built head's accuracy falls and its needle mass falls below (1 − HEAD_MASS_FALL)× from the
    shortest to the longest length, on every seed."""
    rows = [n["mechanism"]["head"] for n in per_seed]
    acc = [(r[0]["acc"], r[-1]["acc"]) for r in rows]
    mass = [(r[0]["mass"], r[-1]["mass"]) for r in rows]
    ok = [a1 < a0 and m1 < (1 - HEAD_MASS_FALL) * m0 for (a0, a1), (m0, m1) in zip(acc, mass)]
    return check(all(ok), f"one trained head, near-duplicate keys, {rows[0][0]['lines']} → {rows[0][-1]['lines']} "
                 f"lines: accuracy per seed {_pairs(acc)}, needle mass {_pairs(mass)}; passes when accuracy falls and "
                 f"mass falls below {1 - HEAD_MASS_FALL:g}× on every seed ({sum(ok)} of {len(ok)})",
                 acc=acc, mass=mass)


def decide_oracle(per_seed: list[dict]) -> Verdict:
    """Check: the oracle retrieval-loss W_Q update raises accuracy more at the longest length than at the shortest,
    on every seed (Prop. 3.1 / Lemma 3.2 at head level; not qTTT)."""
    rows = [n["mechanism"]["head"] for n in per_seed]
    g_long = [r[-1]["acc_oracle"] - r[-1]["acc"] for r in rows]
    g_short = [r[0]["acc_oracle"] - r[0]["acc"] for r in rows]
    ok = [gl > 0 and gl > gs for gl, gs in zip(g_long, g_short)]
    return check(all(ok), f"W_Q of the hand-built head updated on the oracle loss −log p(value) of the context's other "
                 f"lines (not qTTT): accuracy gain at {rows[0][-1]['lines']} lines per seed {rounded(g_long)} vs "
                 f"{rounded(g_short)} at {rows[0][0]['lines']}; passes when the long gain is positive and larger on "
                 f"every seed ({sum(ok)} of {len(ok)})", gain_long=g_long, gain_short=g_short)


def _pairs(pairs) -> str:
    return ", ".join(f"{a:.3f} → {b:.3f}" for a, b in pairs)
