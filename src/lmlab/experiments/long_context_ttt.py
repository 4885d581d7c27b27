"""Score dilution and query-only test-time training (qTTT) vs thinking tokens (spec 04).

tiny: mechanism level, no language model. The spec's numeric checks of Lemmas 2.2/2.3, Prop. 3.1 and
Lemma 3.2 on random instances, and one trained attention head that retrieves values by key among
near-duplicate keys: its accuracy and needle mass as contexts grow (claim 1 at head level), and qTTT on
its query matrix using the context's own retrieval events (a mechanism diagnostic).

small / gpu: a toy language model trained on `KVRetrieval` (key value check lines, some keys repeated,
needle seen once), trained with pause tokens before some answers so that "thinking" is something it
knows. `upper_attention: nope` drops positions above layer 0 (content-only retrieval at any length);
the presets keep RoPE because the NoPE variant did not form its retrieval circuit within the small
budget in our CPU trials. At each context length: in-context answering, thinking (pause) tokens and
self-consistency at the FLOPs of the qTTT budget, and qTTT with the paper's uniform random spans and
with spans that contain retrieval events (the span-sampling control), full-matrix and LoRA.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.analysis import attention_stats as ast
from lmlab.experiments import RunContext, experiment
from lmlab.flops_ttt import FlopModel
from lmlab.model import GPT, GPTConfig
from lmlab.tasks.longctx import PAUSE, KVRetrieval, collate
from lmlab.ttt import QTTT, QTTTConfig
from lmlab.utils import tiny_threads

CLAIMS = {
    "c1_dilution": "Accuracy and attention mass on the needle fall as the context grows (score dilution).",
    "c2_thinking": "Thinking tokens at the FLOPs of the qTTT budget do not recover long-context accuracy.",
    "c3_qttt": "qTTT raises needle attention mass and accuracy at long context, more than at short context.",
}

PRESETS = {
    "tiny": {
        "mode": "mechanism",
        "lemma_instances": 40,
        "head_dim": 32,
        "n_families": 8,
        "family_share": 0.7,
        "train_lines": 16,
        "head_steps": 300,
        "head_lr": 0.05,
        "lengths": [16, 64, 256, 1024],
        "n_eval": 64,
        "ttt_steps": 32,
        "ttt_lr": 0.05,
        "ttt_events": 16,
    },
    "small": {
        "mode": "lm",
        "n_keys": 64,
        "n_values": 32,
        "n_families": 8,
        "repeat_frac": 0.5,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 2,
        "upper_attention": "mha",
        "train_steps": 3000,
        "batch_size": 16,
        "lr": 3e-3,
        "train_lines": [8, 64],
        "other_weight": 0.0,
        "pause_frac": 0.4,
        "think_max": 128,
        "lengths": [16, 64, 192],
        "n_eval": 128,
        "n_val": 48,
        "ttt_steps": 8,
        "ttt_span": 8,
        "ttt_lrs": [3e-3, 1e-2, 3e-2],
        "lora_rank": 4,
        "eval_batch": 64,
    },
    "gpu": {
        "mode": "lm",
        "n_keys": 256,
        "n_values": 64,
        "n_families": 8,
        "repeat_frac": 0.5,
        "d_model": 256,
        "n_layers": 4,
        "n_heads": 4,
        "upper_attention": "mha",
        "train_steps": 1200,  # an H200 run reached loss 0.03 by step 750 and 0.000 by 1125
        "batch_size": 64,
        "lr": 1e-3,
        "train_lines": [16, 128],
        "other_weight": 0.0,
        "pause_frac": 0.2,
        "think_max": 512,
        "lengths": [32, 128, 512, 1024],
        "n_eval": 256,
        "n_val": 64,
        "ttt_steps": 16,
        "ttt_span": 16,
        "ttt_lrs": [3e-4, 1e-3, 3e-3],
        "lora_rank": 8,
        "eval_batch": 64,
    },
}


@experiment(
    name="long_context_ttt",
    paper="Bansal et al., Let's (not) just put things in Context: Test-Time "
    "Training for Long-Context LLMs (qTTT), 2025",
    claims=CLAIMS,
    presets=PRESETS,
)
def run(ctx: RunContext) -> None:
    if ctx.cfg["mode"] == "mechanism":
        run_mechanism(ctx)
    else:
        run_lm(ctx)


# ====================================================================== statistics
def mean_ci(x) -> tuple[float, float, float]:
    """Mean and normal-approximation 95% CI."""
    x = np.asarray(x, dtype=float)
    m = float(x.mean())
    h = 1.96 * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else float("inf")
    return m, m - h, m + h


# ====================================================================== tiny: mechanism level
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
    """Queries for lines `qi` (B, Q) of each context: attention over all lines, p(value) = attention mass
    on lines holding that value. Returns (log p(true value), predicted value, needle mass)."""
    d = keys.shape[-1]
    q = torch.einsum("bqd,ed->bqe", keys.gather(1, qi[..., None].expand(-1, -1, d)), wq)
    k = keys @ wk.T
    att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)  # (B, Q, n)
    onehot = F.one_hot(vals, n_values).float()  # (B, n, V)
    p = att @ onehot
    true = vals.gather(1, qi)
    logp = torch.log(p.gather(2, true[..., None]).squeeze(-1) + 1e-9)
    mass = att.gather(2, qi[..., None]).squeeze(-1)
    return logp, p.argmax(-1), mass


def run_mechanism(ctx: RunContext) -> None:
    cfg, rep = ctx.cfg, ctx.report
    t0 = time.process_time()
    checks = ast.check_lemmas(cfg["lemma_instances"], ctx.seed)
    rep.metric("lemma_checks", checks)
    ok22 = checks["lemma22_max_excess"] <= 1e-12
    ok23 = checks["lemma23_min_mass_minus_target"] >= -1e-12
    ok31 = checks["prop31_max_abs_err"] < 1e-6
    ok32 = checks["lemma32_max_rel_err"] < 0.05 and checks["lemma32_monotone_frac"] == 1.0
    rep.table(
        [
            ["Lemma 2.2: α* ≤ 1/(1+m·e^{−Δ})", f"max(α* − bound) = {checks['lemma22_max_excess']:.2e}", ok22],
            [
                "Lemma 2.2: α* at m=T/4, T=64/256/1024",
                " / ".join(f"{v:.4f}" for v in checks["lemma22_alpha_by_T"].values()),
                None,
            ],
            [
                "Lemma 2.3: gap log((T−1)(1−ε)/ε) ⇒ α* ≥ 1−ε",
                f"min(α* − (1−ε)) = {checks['lemma23_min_mass_minus_target']:.2e}",
                ok23,
            ],
            [
                "Prop. 3.1: ∇q(−log α*) = (μ − k*)/√d",
                f"max abs err = {checks['prop31_max_abs_err']:.1e}",
                ok31,
            ],
            [
                "Lemma 3.2: ΔM ≈ η‖∇‖² (η=1e-3); monotone ascent",
                f"max rel err = {checks['lemma32_max_rel_err']:.1e}, monotone {checks['lemma32_monotone_frac']:.2f}",
                ok32,
            ],
            [
                "Lemma 3.2: ΔM after 20 steps, T=64 vs 1024",
                f"{checks['lemma32_margin_gain_short']:.3f} vs {checks['lemma32_margin_gain_long']:.3f}",
                None,
            ],
        ],
        ["check", "measured", "passes"],
        "Numeric checks of the theory (random instances)",
    )

    # a trained retrieval head with near-duplicate keys (keys of one family share most of their direction)
    d, n_values = cfg["head_dim"], 16
    gen = torch.Generator().manual_seed(ctx.seed)
    rng = np.random.default_rng(ctx.seed)
    fam_vecs = torch.randn(cfg["n_families"], d, generator=gen)
    fam_vecs = fam_vecs / fam_vecs.norm(dim=-1, keepdim=True)
    wq = (torch.eye(d) + 0.1 * torch.randn(d, d, generator=gen)).requires_grad_(True)
    wk = (torch.eye(d) + 0.1 * torch.randn(d, d, generator=gen)).requires_grad_(True)
    opt = torch.optim.AdamW([wq, wk], lr=cfg["head_lr"], weight_decay=0.1)
    n_train = cfg["train_lines"]
    for _ in range(cfg["head_steps"]):
        keys, vals = _head_batch(rng, n_train, 32, d, fam_vecs, cfg["family_share"], n_values, gen)
        qi = torch.as_tensor(rng.integers(n_train, size=(32, 4)))
        logp, _, _ = _head_predict(wq, wk, keys, vals, qi, n_values)
        opt.zero_grad()
        (-logp.mean()).backward()
        opt.step()
    wq0, wk0 = wq.detach(), wk.detach()

    rows, results = [], {}
    for n in cfg["lengths"]:
        keys, vals = _head_batch(rng, n, cfg["n_eval"], d, fam_vecs, cfg["family_share"], n_values, gen)
        needle = torch.as_tensor(rng.integers(n, size=(cfg["n_eval"], 1)))
        vals = _unique_needle_values(vals, needle, n_values, rng)
        with torch.no_grad():
            _, pred, mass = _head_predict(wq0, wk0, keys, vals, needle, n_values)
        acc0 = (pred == vals.gather(1, needle)).float().squeeze(1)
        # qTTT on the query matrix only: gradient steps on the context's own retrieval events (other lines),
        # then the held-out needle query is answered with the adapted W_Q
        acc1, mass1 = [], []  # per context
        for b in range(cfg["n_eval"]):
            wqa = wq0.clone().requires_grad_(True)
            o = torch.optim.AdamW([wqa], lr=cfg["ttt_lr"], weight_decay=0.01)
            others = [i for i in range(n) if i != int(needle[b])]
            for _ in range(cfg["ttt_steps"]):
                ev = torch.as_tensor(
                    rng.choice(others, size=min(cfg["ttt_events"], len(others)), replace=False)
                )
                lp, _, _ = _head_predict(wqa, wk0, keys[b : b + 1], vals[b : b + 1], ev[None], n_values)
                o.zero_grad()
                (-lp.mean()).backward()
                torch.nn.utils.clip_grad_norm_([wqa], 1.0)
                o.step()
            with torch.no_grad():
                _, p1, m1 = _head_predict(
                    wqa, wk0, keys[b : b + 1], vals[b : b + 1], needle[b : b + 1], n_values
                )
            acc1.append(float(p1[0, 0] == vals[b, needle[b, 0]]))
            mass1.append(float(m1[0, 0]))
        results[n] = {
            "acc": float(acc0.mean()),
            "mass": float(mass.mean()),
            "acc_ttt": float(np.mean(acc1)),
            "mass_ttt": float(np.mean(mass1)),
            "acc_list": acc0.tolist(),
            "acc_ttt_list": acc1,
        }
        rows.append([n, results[n]["acc"], results[n]["mass"], results[n]["acc_ttt"], results[n]["mass_ttt"]])
    rep.table(
        rows,
        ["lines", "accuracy", "needle mass", "accuracy after qTTT on W_Q", "needle mass after qTTT"],
        "Trained retrieval head with near-duplicate keys",
    )
    rep.metric(
        "head", {n: {k: v for k, v in r.items() if not k.endswith("_list")} for n, r in results.items()}
    )
    _plot_lengths(
        rep,
        cfg["lengths"],
        {
            "in-context": [results[n]["acc"] for n in cfg["lengths"]],
            "qTTT on W_Q": [results[n]["acc_ttt"] for n in cfg["lengths"]],
        },
        {
            "in-context": [results[n]["mass"] for n in cfg["lengths"]],
            "qTTT on W_Q": [results[n]["mass_ttt"] for n in cfg["lengths"]],
        },
        "head_dilution",
        "One trained retrieval head: accuracy and needle mass vs context lines",
    )

    short, long_ = cfg["lengths"][0], cfg["lengths"][-1]
    acc_gap = [a - b for a, b in zip(results[short]["acc_list"], results[long_]["acc_list"])]
    gap, lo, hi = mean_ci(acc_gap)
    mass_ratio = results[long_]["mass"] / max(results[short]["mass"], 1e-12)
    theory_ok = ok22 and ok23 and ok31 and ok32
    held = (lo > 0) and mass_ratio < 0.8 and theory_ok if results[short]["acc"] >= 0.5 else None
    rep.decide(
        "c1_dilution",
        held,
        f"tiny = mechanism level (one trained attention head, near-duplicate keys; the language-model test "
        f"is the small/gpu preset): accuracy {results[short]['acc']:.2f} → {results[long_]['acc']:.2f} "
        f"from {short} to {long_} lines (drop {gap:.2f}, 95% CI [{lo:.2f}, {hi:.2f}]); needle mass "
        f"{results[short]['mass']:.3f} → {results[long_]['mass']:.3f} (×{mass_ratio:.2f}); theory checks "
        f"{'pass' if theory_ok else 'FAIL'}. Held needs CI>0, mass ×<0.8 and passing checks.",
    )
    rep.decide(
        "c2_thinking",
        None,
        "undecided at tiny: thinking tokens need a trained language model (the "
        "small/gpu preset); the tiny run checks the attention mechanism only",
    )
    g_l, glo, ghi = mean_ci(
        np.asarray(results[long_]["acc_ttt_list"]) - np.asarray(results[long_]["acc_list"])
    )
    g_s = results[short]["acc_ttt"] - results[short]["acc"]
    dm_l = results[long_]["mass_ttt"] - results[long_]["mass"]
    dm_s = results[short]["mass_ttt"] - results[short]["mass"]
    ev3 = (
        f"tiny = mechanism level: qTTT on the head's W_Q only ({cfg['ttt_steps']} AdamW steps on the context's own "
        f"retrieval events, i.e. spans that exercise retrieval; the language-model test with random spans is the "
        f"small/gpu preset): accuracy gain {g_l:+.3f} at {long_} lines (95% CI [{glo:.3f}, {ghi:.3f}]) vs {g_s:+.3f} "
        f"at {short}; needle mass {results[long_]['mass']:.3f} → {results[long_]['mass_ttt']:.3f} at {long_} lines "
        f"({dm_l:+.3f}) vs {dm_s:+.3f} at {short}. Held needs CI > 0, mass up, and larger gains than at short "
        "context; not held when the CI's upper end < 0.02 or mass falls."
    )
    if glo > 0 and dm_l > 0 and g_l > g_s and dm_l > dm_s:
        rep.decide("c3_qttt", True, ev3)
    elif ghi < 0.02 or dm_l < 0:
        rep.decide("c3_qttt", False, ev3)
    else:
        rep.decide("c3_qttt", None, "inconclusive: " + ev3)
    rep.metric("cpu_seconds", time.process_time() - t0)


def _unique_needle_values(vals, needle, n_values, rng):
    """Give the needle a value no other line holds, so a correct answer means the needle was retrieved."""
    vals = vals.clone()
    for b in range(vals.shape[0]):
        v = int(vals[b, needle[b, 0]])
        others = (vals[b] == v).nonzero().flatten().tolist()
        for i in others:
            if i != int(needle[b, 0]):
                vals[b, i] = int((v + 1 + rng.integers(n_values - 1)) % n_values)
    return vals


def _plot_lengths(rep, lengths, accs: dict, masses: dict, name: str, caption: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, ys in accs.items():
        axes[0].plot(lengths, ys, marker="o", label=label)
    for label, ys in masses.items():
        axes[1].plot(lengths, ys, marker="o", label=label)
    for ax, yl in zip(axes, ("accuracy", "needle attention mass")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (lines)")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(caption, fontsize=9)
    rep.figure(fig, name, caption)


# ====================================================================== small / gpu: a toy language model
def build_task(cfg) -> KVRetrieval:
    return KVRetrieval(cfg["n_keys"], cfg["n_values"], cfg["n_families"], cfg["repeat_frac"])


def build_model(cfg, task: KVRetrieval, device) -> GPT:
    layers = ["mha"] + [cfg["upper_attention"]] * (cfg["n_layers"] - 1)
    mcfg = GPTConfig(
        vocab_size=task.vocab_size,
        n_layers=cfg["n_layers"],
        n_heads=cfg["n_heads"],
        d_model=cfg["d_model"],
        seq_len=1024,
        layer_attention=layers,
    )
    return GPT(mcfg).to(device)


def train_lm(model: GPT, task: KVRetrieval, cfg, device, seed: int, log=print) -> list[float]:
    from lmlab.train import fit

    rng = np.random.default_rng(seed)
    lo, hi = cfg["train_lines"]

    def batches():
        while True:
            n = int(rng.integers(lo, hi + 1))
            pauses = rng.random() < cfg["pause_frac"]  # whole batches with pauses keep the others short
            rows = []
            for _ in range(cfg["batch_size"]):
                m = int(rng.integers(1, cfg["think_max"] + 1)) if pauses else 0
                rows.append(
                    task.training_row(task.sample(n, rng, n_pause=m), other_weight=cfg["other_weight"])
                )
            yield tuple(t.to(device) for t in collate(rows))

    def loss_fn(m, batch):
        ids, tgt, w = batch
        loss = m(ids, tgt, loss_reduction="none")
        return (loss * w).sum() / w.sum()

    every = max(1, cfg["train_steps"] // 8)
    return fit(
        model,
        loss_fn,
        batches(),
        cfg["train_steps"],
        lr=cfg["lr"],
        weight_decay=0.1,
        warmup=min(100, cfg["train_steps"] // 10),
        grad_clip=1.0,
        device=device,
        callback=lambda s, l: log(f"train step {s}: loss {l:.3f}") if s % every == 0 else None,
    )


class Evaluator:
    """Answers needle questions for a batch of contexts under one method and records accuracy, needle
    attention mass per layer/head at the answer position, and the retrieval margin."""

    def __init__(self, model: GPT, task: KVRetrieval, batch: int):
        self.model, self.task, self.batch = model, task, batch

    def run(
        self,
        insts,
        qttt: QTTT | None = None,
        n_pause: int = 0,
        span_weights=False,
        sc_samples: int = 0,
        seed: int = 0,
    ) -> dict:
        correct, masses, sc_correct = [], [], []
        value_ids = torch.arange(self.task.value0, self.task.check0)
        for s in range(0, len(insts), self.batch):
            chunk = insts[s : s + self.batch]
            q = qttt or QTTT(self.model, QTTTConfig(steps=0))
            sw = [self.task.retrieval_weights(i) for i in chunk] if span_weights else None
            with q.adapt([i.context for i in chunk], span_weights=sw, steps=None if qttt else 0) as st:
                questions = [i.query[:1] + [PAUSE] * n_pause for i in chunk]
                logits, pats = ast.attention_patterns(
                    self.model, lambda st=st, q=questions: st.forward(q), last_rows=1
                )
            last = logits[:, -1, :]
            pred = value_ids.to(last.device)[last[:, value_ids.to(last.device)].argmax(-1)]
            ans = torch.tensor([i.answer for i in chunk], device=last.device)
            correct += (pred == ans).float().tolist()
            slots = [[st.context_slot(b, p) for p in i.needle_positions] for b, i in enumerate(chunk)]
            masses.append(ast.needle_mass(pats, slots))  # (L, B, H)
            if sc_samples:
                g = torch.Generator(device=last.device).manual_seed(seed + s)
                probs = torch.softmax(last[:, value_ids.to(last.device)].float(), -1)
                draws = torch.multinomial(probs, sc_samples, replacement=True, generator=g)
                votes = [Counter(r.tolist()).most_common(1)[0][0] for r in draws]
                sc_correct += [float(self.task.value0 + v == int(a)) for v, a in zip(votes, ans)]
        mass = torch.cat(masses, dim=1)  # (L, N, H)
        out = {"correct": correct, "acc": float(np.mean(correct)), "mass": mass}
        if sc_samples:
            out["sc_correct"], out["sc_acc"] = sc_correct, float(np.mean(sc_correct))
        return out


def run_lm(ctx: RunContext) -> None:
    cfg, rep, dev = ctx.cfg, ctx.report, ctx.device
    if dev.type == "cpu":
        tiny_threads()  # tiny matrices: intra-op threads cost far more than they give (the runner restores them)
    t0 = time.time()
    torch.manual_seed(ctx.seed)
    task = build_task(cfg)
    model = build_model(cfg, task, dev)
    losses = train_lm(model, task, cfg, dev, ctx.seed, ctx.log)
    model.eval()
    rep.metric("train_final_loss", float(np.mean(losses[-20:])))
    rep.metric("train_seconds", time.time() - t0)
    flops = FlopModel.from_model(model)
    ev = Evaluator(model, task, cfg["eval_batch"])
    rng = np.random.default_rng(ctx.seed + 1)
    N, k = cfg["ttt_steps"], cfg["ttt_span"]

    def qttt(lr, sampler="uniform", params="q_full"):
        return QTTT(
            model,
            QTTTConfig(
                steps=N,
                span_len=k,
                lr=lr,
                weight_decay=0.01,
                grad_clip=1.0,
                sampler=sampler,
                params=params,
                lora_rank=cfg["lora_rank"],
                lora_alpha=2.0 * cfg["lora_rank"],
                seed=ctx.seed,
            ),
        )

    # learning rate of qTTT: chosen on held-out contexts at the longest length (as the paper picks it per dataset)
    long_n = cfg["lengths"][-1]
    val = [task.sample(long_n, rng) for _ in range(cfg["n_val"])]
    base_val = ev.run(val)["acc"]
    lr_rows, best = [], {}
    for sampler in ("uniform", "targeted"):
        scores = {
            lr: ev.run(val, qttt(lr, sampler), span_weights=sampler == "targeted")["acc"]
            for lr in cfg["ttt_lrs"]
        }
        best[sampler] = max(scores, key=lambda x: (scores[x], -x))
        lr_rows += [[sampler, lr, base_val, a] for lr, a in scores.items()]
    rep.table(
        lr_rows,
        ["span sampler", "lr", "val acc (no qTTT)", "val acc (qTTT)"],
        f"qTTT learning-rate selection on {cfg['n_val']} held-out contexts of {long_n} lines",
    )
    rep.metric("qttt_lr", best)

    results, rows = {}, []
    for n in cfg["lengths"]:
        insts = [task.sample(n, rng) for _ in range(cfg["n_eval"])]
        T = len(insts[0].context)
        m_think = round(flops.matched_thinking_tokens(N, k, T))
        ic = ev.run(insts, sc_samples=max(1, m_think), seed=ctx.seed)
        think = ev.run(insts, n_pause=m_think)
        think_trained = think if m_think <= cfg["think_max"] else ev.run(insts, n_pause=cfg["think_max"])
        uni = ev.run(insts, qttt(best["uniform"]))
        tgt = ev.run(insts, qttt(best["targeted"], "targeted"), span_weights=True)
        lora = ev.run(insts, qttt(best["uniform"], params="q_lora"))
        results[n] = {
            "T": T,
            "m_think": m_think,
            "ic": ic,
            "think": think,
            "think_trained": think_trained,
            "uniform": uni,
            "targeted": tgt,
            "lora": lora,
        }
        ctx.log(
            f"{n} lines (T={T}): IC {ic['acc']:.3f}, think({m_think}) {think['acc']:.3f}, "
            f"SC {ic['sc_acc']:.3f}, qTTT {uni['acc']:.3f}, targeted {tgt['acc']:.3f}, LoRA {lora['acc']:.3f}"
        )

    # the retrieval head: the (layer, head) with most needle mass in-context at the shortest length
    m0 = results[cfg["lengths"][0]]["ic"]["mass"].mean(1)  # (L, H)
    L_r, H_r = divmod(int(m0.argmax()), m0.shape[1])

    def head_mass(r):
        return float(r["mass"][L_r, :, H_r].mean())

    def avg_mass(r):
        return float(r["mass"].mean())

    arms = ["ic", "think", "think_trained", "uniform", "targeted", "lora"]
    names = {
        "ic": "in-context",
        "think": "thinking (matched FLOPs)",
        "think_trained": "thinking (≤ trained pauses)",
        "uniform": "qTTT (uniform spans)",
        "targeted": "qTTT (retrieval spans)",
        "lora": "qTTT LoRA-q",
    }
    for n in cfg["lengths"]:
        r = results[n]
        for a in arms:
            pauses = {"think": r["m_think"], "think_trained": min(r["m_think"], cfg["think_max"])}.get(a, "")
            rows.append([n, r["T"], names[a], r[a]["acc"], head_mass(r[a]), avg_mass(r[a]), pauses])
        rows.append([n, r["T"], "self-consistency (matched FLOPs)", r["ic"]["sc_acc"], "", "", r["m_think"]])
    rep.table(
        rows,
        [
            "lines",
            "tokens",
            "method",
            "accuracy",
            f"needle mass (L{L_r}H{H_r})",
            "needle mass (avg)",
            "think tokens / SC samples",
        ],
        "Long-context retrieval, compute-matched",
    )
    rep.metric("retrieval_head", [L_r, H_r])
    rep.metric(
        "results",
        {
            n: {
                a: {"acc": r[a]["acc"], "head_mass": head_mass(r[a]), "avg_mass": avg_mass(r[a])}
                for a in arms
            }
            | {"T": r["T"], "m_think": r["m_think"], "sc_acc": r["ic"]["sc_acc"]}
            for n, r in results.items()
        },
    )
    rep.metric("flop_budget", flops.budget_table(N, k, [results[n]["T"] for n in cfg["lengths"]]))
    lengths = cfg["lengths"]
    _plot_lengths(
        rep,
        lengths,
        {names[a]: [results[n][a]["acc"] for n in lengths] for a in arms},
        {names[a]: [head_mass(results[n][a]) for n in lengths] for a in arms},
        "accuracy_mass",
        "Toy LM: accuracy and retrieval-head needle mass vs context length",
    )
    _decide_lm(ctx, results, lengths, head_mass, cfg)
    rep.metric("seconds", time.time() - t0)


def _paired(a: dict, b: dict):
    return mean_ci(np.asarray(b["correct"]) - np.asarray(a["correct"]))


def _decide_lm(ctx, results, lengths, head_mass, cfg) -> None:
    rep = ctx.report
    s, l = results[lengths[0]], results[lengths[-1]]
    learned = s["ic"]["acc"] >= 0.5
    not_learned = (
        f"undecided: the toy LM did not learn retrieval (in-context accuracy {s['ic']['acc']:.2f} < 0.5 "
        f"at {lengths[0]} lines)"
    )
    drop, lo, hi = mean_ci(
        np.asarray(s["ic"]["correct"][: len(l["ic"]["correct"])]) - np.asarray(l["ic"]["correct"])
    )
    mr = head_mass(l["ic"]) / max(head_mass(s["ic"]), 1e-12)
    by_len = ", ".join(
        f"{n}: {results[n]['ic']['acc']:.2f}/{head_mass(results[n]['ic']):.2f}" for n in lengths
    )
    trained = f"trained on {cfg['train_lines'][0]}-{cfg['train_lines'][1]} lines"
    if lengths[-1] > cfg["train_lines"][1]:
        trained += "; beyond that range a drop mixes dilution with length extrapolation"
    rep.decide(
        "c1_dilution",
        (lo > 0 and mr < 0.8) if learned else None,
        (
            f"in-context accuracy {s['ic']['acc']:.3f} → {l['ic']['acc']:.3f} from {lengths[0]} to {lengths[-1]} "
            f"lines (drop {drop:.3f}, 95% CI [{lo:.3f}, {hi:.3f}]); retrieval-head needle mass "
            f"{head_mass(s['ic']):.3f} → {head_mass(l['ic']):.3f} (×{mr:.2f}); accuracy/mass by length "
            f"{by_len} ({trained}). Held needs CI > 0 and mass ×< 0.8."
        )
        if learned
        else not_learned,
    )

    gap = s["ic"]["acc"] - l["ic"]["acc"]
    rec, rlo, rhi = _paired(l["ic"], l["think"])
    valid = s["think_trained"]["acc"] >= s["ic"]["acc"] - 0.05
    ev = (
        f"at {lengths[-1]} lines thinking with {l['m_think']} pause tokens (the qTTT budget's FLOPs) changes accuracy "
        f"by {rec:+.3f} (95% CI [{rlo:.3f}, {rhi:.3f}]) against a short-vs-long gap of {gap:.3f}; self-consistency "
        f"at matched FLOPs {l['ic']['sc_acc']:.3f} vs greedy {l['ic']['acc']:.3f}; at {lengths[0]} lines pauses "
        f"within the trained range give {s['think_trained']['acc']:.3f} vs {s['ic']['acc']:.3f} in-context. "
        "Held: the CI's upper end recovers < half the gap."
    )
    if not learned:
        rep.decide("c2_thinking", None, not_learned)
    elif gap <= 0.05:
        rep.decide("c2_thinking", None, "undecided: no long-context drop to recover. " + ev)
    elif not valid:
        rep.decide(
            "c2_thinking",
            None,
            "undecided: the toy LM does not use pause tokens even at short context, so "
            "the thinking baseline is not meaningful. " + ev,
        )
    else:
        rep.decide("c2_thinking", rhi < 0.5 * gap, ev)

    g_l, glo, ghi = _paired(l["ic"], l["uniform"])
    g_s, _, _ = _paired(s["ic"], s["uniform"])
    dm = head_mass(l["uniform"]) - head_mass(l["ic"])
    t_l, tlo, thi = _paired(l["ic"], l["targeted"])
    ev3 = (
        f"qTTT (uniform spans, N={cfg['ttt_steps']}, k={cfg['ttt_span']}) accuracy gain {g_l:+.3f} at {lengths[-1]} "
        f"lines (95% CI [{glo:.3f}, {ghi:.3f}]) vs {g_s:+.3f} at {lengths[0]}; retrieval-head needle mass "
        f"{head_mass(l['ic']):.3f} → {head_mass(l['uniform']):.3f}. Span control (retrieval spans): gain "
        f"{t_l:+.3f} (95% CI [{tlo:.3f}, {thi:.3f}]), mass → {head_mass(l['targeted']):.3f}. Held needs CI > 0, "
        "mass up and a larger gain than at short context; not held when the CI's upper end < 0.02 or mass falls."
    )
    if not learned:
        rep.decide("c3_qttt", None, not_learned)
    elif glo > 0 and dm > 0 and g_l > g_s:
        rep.decide("c3_qttt", True, ev3)
    elif ghi < 0.02 or dm < 0:
        rep.decide("c3_qttt", False, ev3)
    else:
        rep.decide("c3_qttt", None, "inconclusive at this sample size: " + ev3)
