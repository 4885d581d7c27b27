"""One seed of calm_kv: train the two base models, then every arm of every row, and score them (nothing decided).

A *row* is one KV-MATH format ("direct", the paper's `<k3>+<k7>=6`, or "scratchpad", which writes the substituted
values first) with one rehearsal share (0 = D_C alone, the paper's setting; or `anchor_mix`, a share of each batch
showing NUM-MATH prompts labelled by the frozen anchor). Every trained *arm* of a row — CALM and each baseline —
trains on the same batches of that row for the same number of steps, so the arms of a row compare like for like.
"""

from __future__ import annotations

import random
import time

import torch

from lmlab.generate import generate
from lmlab.methods.calm.compose import compose, parse_connections
from lmlab.methods.calm.tasks import KVTask
from lmlab.model import GPT, GPTConfig
from lmlab.train import fit
from lmlab.utils import tiny_threads

ANCHOR_POOL = 2000  # NUM-MATH prompts labelled by the anchor for the rehearsal share (batches draw from them)
MAX_NEW = {"direct": 6, "scratchpad": 24}  # longest completion of each format (3 operands, with EOS)
BASELINES = ("random_augment", "anchor_finetune", "prefix_encoder", "projection_only")


def encode_pairs(tok, pairs, device):
    """Right-padded (ids, targets): targets[i] = ids[i+1] on completion tokens (and EOS), else -100."""
    seqs, starts = [], []
    for prompt, completion in pairs:
        p = tok.encode(prompt, bos=True)
        seqs.append(p + tok.encode(completion, eos=True))
        starts.append(len(p))
    n = max(map(len, seqs))
    ids = torch.full((len(seqs), n), tok.pad_id, dtype=torch.long)
    tg = torch.full((len(seqs), n), -100, dtype=torch.long)
    for i, (seq, st) in enumerate(zip(seqs, starts)):
        ids[i, :len(seq)] = torch.tensor(seq)
        tg[i, st - 1:len(seq) - 1] = torch.tensor(seq[st:])
    return ids.to(device), tg.to(device)


def task_batches(tok, tasks: list[KVTask], view: str, batch: int, seed: int, device):
    """Endless batches of `view` over all keys, each example in the format of a task drawn at random."""
    rng = random.Random(seed)
    while True:
        pairs = [rng.choice(tasks).dataset(view, 1, "all", rng.randrange(1 << 30))[0] for _ in range(batch)]
        yield encode_pairs(tok, pairs, device)


def mixed_batches(tok, dc_pairs, anchor_pairs, share: float, batch: int, seed: int, device):
    """Composition batches: round(share·batch) examples from `anchor_pairs`, the rest from D_C."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"anchor_mix must be in [0, 1), got {share}")
    n_a = round(share * batch) if anchor_pairs else 0
    rng = random.Random(seed)
    while True:
        pairs = [anchor_pairs[rng.randrange(len(anchor_pairs))] for _ in range(n_a)]
        pairs += [dc_pairs[rng.randrange(len(dc_pairs))] for _ in range(batch - n_a)]
        rng.shuffle(pairs)
        yield encode_pairs(tok, pairs, device)


def lm_loss(model, batch):
    ids, tg = batch
    return model(ids, tg)


def base_gen(model, tok):
    def gen(prompts, max_new):
        return generate(model, prompts, max_new, temperature=0, stop_tokens={tok.eos_id}, pad_id=tok.pad_id).tokens
    return gen


def composed_gen(cm, tok):
    def gen(prompts, max_new):
        out = []
        for i in range(0, len(prompts), 256):
            out += cm.generate(prompts[i:i + 256], max_new, stop_token=tok.eos_id, pad_id=tok.pad_id)
        return out
    return gen


def scores(gen_fn, tok, task: KVTask, pairs, view: str, max_new: int) -> tuple[float, float]:
    """(accuracy, exact): accuracy counts the final number (NUM-MATH, KV-MATH) or the substitution (KV-SUBS);
    exact = the whole completion equals the gold one (answer-only scoring can flatter a wrong scratchpad)."""
    outs = gen_fn([tok.encode(p, bos=True) for p, _ in pairs], max_new)
    correct = exact = 0
    for (_, gold), out in zip(pairs, outs):
        text = tok.decode([t for t in out if t != tok.eos_id], skip_special=True)
        exact += text.strip() == gold
        if view == "kv_subs":  # the substitution, whether or not the model goes on to compute a result
            correct += text.split("=")[0].strip() == gold
        else:
            correct += task.answer(text) == task.answer(gold)
    n = max(1, len(pairs))
    return correct / n, exact / n


def accuracy(gen_fn, tok, task: KVTask, pairs, view: str, max_new: int) -> float:
    return scores(gen_fn, tok, task, pairs, view, max_new)[0]


def anchor_skill_pairs(task: KVTask, n: int, seed: int, labels: str, anchor=None, tok=None,
                       max_new: int = 24) -> list[tuple[str, str]]:
    """NUM-MATH (prompt, completion) pairs for the rehearsal share. labels="anchor": the completion is the frozen
    anchor's own greedy output (what the composed model should keep doing); "verifier": the task's exact one."""
    pairs = task.dataset("num_math", n, "dc", seed)
    if labels == "verifier":
        return pairs
    if labels != "anchor":
        raise ValueError(f"anchor_mix_labels must be 'anchor' or 'verifier', got {labels!r}")
    outs = base_gen(anchor, tok)([tok.encode(p, bos=True) for p, _ in pairs], max_new)
    return [(p, tok.decode([t for t in o if t != tok.eos_id], skip_special=True)) for (p, _), o in zip(pairs, outs)]


def prefix_len(targets: torch.Tensor) -> torch.Tensor:
    """Each row's prompt length (B,): its first position that carries a target, plus one. Per row, so a 3-key
    prompt batched with 2-key prompts still shows all its keys to the augmenting model (as at generation)."""
    return (targets != -100).float().argmax(1) + 1


def row_name(fmt: str, share: float) -> str:
    return f"{fmt}/{'dc_only' if share == 0 else 'rehearsal'}"


def make_tasks(cfg, seed: int) -> dict[str, KVTask]:
    """One task per format; the seed fixes the keys, their values and the D_C split, the same in every format."""
    return {f: KVTask(n_keys=cfg.n_keys, value_max=cfg.value_max, ops=cfg.ops, dc_key_frac=cfg.dc_key_frac,
                      fmt=f, dc_source=cfg.dc_source, seed=seed) for f in cfg.format_list()}


def measure(ctx, seed: int) -> dict:
    """One seed: base models, then each row's arms, each scored on held-out and D_C keys and on NUM-MATH."""
    cfg, dev = ctx.cfg, ctx.device
    if dev.type == "cpu":
        tiny_threads()  # small models on a shared CPU
    tasks = make_tasks(cfg, seed)
    tok = next(iter(tasks.values())).tokenizer()
    mcfg = GPTConfig(vocab_size=tok.vocab_size, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model,
                     seq_len=64)
    t0 = time.time()
    anchor = GPT(mcfg).to(dev)  # NUM-MATH in every measured format
    fit(anchor, lm_loss, task_batches(tok, list(tasks.values()), "num_math", cfg.batch, seed + 1, dev),
        cfg.anchor_steps, lr=cfg.lr, warmup=50, callback=ctx.fit_progress(f"seed {seed}: anchor", cfg.anchor_steps))
    augment = GPT(mcfg).to(dev)  # KV-SUBS over all keys (the same text in every format)
    fit(augment, lm_loss, task_batches(tok, list(tasks.values())[:1], "kv_subs", cfg.batch, seed + 2, dev),
        cfg.augment_steps, lr=cfg.augment_lr, warmup=50,
        callback=ctx.fit_progress(f"seed {seed}: augmenting model", cfg.augment_steps))
    out = {"base": base_scores(cfg, tasks, tok, anchor, augment, seed), "rows": {},
           "time_s": {"base": round(time.time() - t0, 1)}}
    for fmt, task in tasks.items():
        ev = {"heldout": task.dataset("kv_math", cfg.n_eval, "heldout", seed + 100),
              "dc": task.dataset("kv_math", cfg.n_eval, "dc", seed + 101),
              "num_math": task.dataset("num_math", cfg.n_eval, "heldout", seed + 102)}
        dc_pairs = task.dc_dataset(20000, seed + 3)
        for share in cfg.share_list(fmt):
            t1, name = time.time(), row_name(fmt, share)
            skill = anchor_skill_pairs(task, ANCHOR_POOL, seed + 6, cfg.anchor_mix_labels, anchor, tok,
                                       MAX_NEW[fmt]) if share > 0 else []
            arms = Arms(ctx, cfg, tok, anchor, augment, mcfg, lambda s: mixed_batches(
                tok, dc_pairs, skill, share, cfg.batch, s, dev), seed, name)
            out["rows"][name] = {arm: arm_scores(gen, tok, task, ev, fmt)
                                 for arm, gen in arms.each(["calm", *cfg.baseline_list()])}
            out["time_s"][name] = round(time.time() - t1, 1)
            ctx.log(f"seed {seed} {name}: " + ", ".join(
                f"{a} held-out {r['heldout']:.2f} D_C {r['dc']:.2f} NUM-MATH {r['num_math']:.2f}"
                for a, r in out["rows"][name].items()))
    return out


def base_scores(cfg, tasks, tok, anchor, augment, seed: int) -> dict:
    """The base models alone: KV-SUBS, NUM-MATH (answer and exact) and held-out KV-MATH, per format."""
    res = {"aug": {"kv_subs": {}, "kv_math": {}, "num_math": {}},
           "anchor": {"kv_subs": {}, "kv_math": {}, "num_math": {}, "num_math_exact": {}}}
    for fmt, task in tasks.items():
        mx = MAX_NEW[fmt]
        for name, model in (("aug", augment), ("anchor", anchor)):
            gen = base_gen(model, tok)
            for view in ("kv_subs", "kv_math", "num_math"):
                acc, exact = scores(gen, tok, task, task.dataset(view, cfg.n_eval, "heldout", seed + 100), view,
                                    MAX_NEW["scratchpad"] if view == "kv_subs" else mx)
                res[name][view][fmt] = acc
                if name == "anchor" and view == "num_math":
                    res[name]["num_math_exact"][fmt] = exact
    return res


def arm_scores(gen, tok, task, ev, fmt) -> dict:
    mx = MAX_NEW[fmt]
    num, num_exact = scores(gen, tok, task, ev["num_math"], "num_math", mx)
    return {"heldout": accuracy(gen, tok, task, ev["heldout"], "kv_math", mx),
            "dc": accuracy(gen, tok, task, ev["dc"], "kv_math", mx), "num_math": num, "num_math_exact": num_exact,
            "n": len(ev["heldout"])}


class Arms:
    """The trained arms of one row, each on `batches(seed)` of that row for the same number of steps."""

    def __init__(self, ctx, cfg, tok, anchor, augment, mcfg, batches, seed: int, row: str):
        self.ctx, self.cfg, self.tok, self.anchor, self.augment, self.mcfg = ctx, cfg, tok, anchor, augment, mcfg
        self.batches, self.seed, self.row = batches, seed, row
        self.dev = next(anchor.parameters()).device

    def each(self, names: list[str]):
        """(arm name, greedy generation function) for each arm, trained when asked for."""
        for name in names:
            yield name, self.train(name)

    def train(self, name: str):
        desc = f"seed {self.seed} {self.row}: {name}"
        if name == "anchor_finetune":
            ft = GPT(self.mcfg).to(self.dev)
            ft.load_state_dict(self.anchor.state_dict())
            fit(ft, lm_loss, self.batches(self.seed + 5), self.cfg.finetune_steps, lr=self.cfg.lr / 2, warmup=50,
                callback=self.ctx.fit_progress(desc, self.cfg.finetune_steps))
            return base_gen(ft, self.tok)
        if name == "calm":
            cm = self.bridges(self.augment, desc=desc)
        elif name == "random_augment":
            torch.manual_seed(self.seed + 7)
            cm = self.bridges(GPT(self.mcfg).to(self.dev), desc=desc)
        elif name == "prefix_encoder":
            cm = self.bridges(self.augment, augment_sees="prefix", desc=desc)
        elif name == "projection_only":
            cm = self.bridges(self.augment, position_aligned=True, desc=desc)
        else:
            raise ValueError(f"unknown baseline {name!r}: choose from {', '.join(BASELINES)}")
        return composed_gen(cm, self.tok)

    def bridges(self, aug_model, augment_sees: str = "sequence", position_aligned: bool = False, desc: str = ""):
        cfg = self.cfg
        conns = parse_connections(cfg.connections) if cfg.connections else None
        cm = compose(self.anchor, aug_model, n_connections=cfg.n_connections, connections=conns,
                     augment_sees=augment_sees, position_aligned=position_aligned)
        if augment_sees == "sequence":
            def loss_fn(model, batch):
                return model(batch[0], batch[1])
        else:
            def loss_fn(model, batch):
                return model(batch[0], batch[1], prefix_len=prefix_len(batch[1]))
        fit(cm, loss_fn, self.batches(self.seed + 4), cfg.bridge_steps, lr=cfg.lr, warmup=50, grad_clip=1.0,
            optimizer=torch.optim.AdamW(cm.bridge_parameters(), lr=cfg.lr, weight_decay=0.0),
            callback=self.ctx.fit_progress(desc, cfg.bridge_steps))
        return cm
