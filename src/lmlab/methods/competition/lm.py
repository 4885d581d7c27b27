"""Part B of task_competition, one seed: a ladder of lmlab GPTs (relu² MLPs: a privileged neuron basis) trained
on a Markov background stream with comparison and modular-addition instances injected at `lm_freqs` per batch
(spec 02 §8.2). `lm_run` trains one (size, frequency) cell and returns plain numbers: answer accuracy on trained
and held-out pairs, the injection signal, the background gradient's interference with each task over training,
per-layer linear probes and the injected tasks' share of the last layer's unit effects. Nothing is decided here.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.methods.competition import interference as itf
from lmlab.methods.competition import tasks as tc
from lmlab.model import GPT, GPTConfig
from lmlab.train import lr_at, make_optimizer, set_lr
from lmlab.utils import autocast_ctx


class LMSetup:
    """The background chain and the two injected tasks of one seed (the same for every cell of the ladder)."""

    def __init__(self, cfg, seed):
        v = cfg.lm_vocab
        self.bg = tc.MarkovBackground(v, cfg.lm_order, cfg.lm_branching, seed=seed)
        marker_cmp, marker_add, eq = v, v + 1, v + 2
        self.tasks = [tc.make_comparison(cfg.cmp_items, v, marker_cmp, eq, cfg.heldout_frac, seed=seed),
                      tc.make_modular_addition(cfg.mod_p, v, marker_add, eq, cfg.heldout_frac, seed=seed)]
        self.entropy = self.bg.entropy_rate()


def _answer_stats(model, prompts, answers):
    """(mean log-prob of the answer, accuracy) at the last prompt position."""
    with torch.no_grad():
        logp = F.log_softmax(model(prompts)[:, -1].float(), -1)
    return float(logp.gather(1, answers[:, None]).mean()), float((logp.argmax(-1) == answers).float().mean())


def lm_run(cfg, setup: LMSetup, layers, d_model, freq, seed, device, log) -> dict:
    t0 = time.time()
    torch.manual_seed(seed)
    stream = tc.InjectionStream(setup.bg, setup.tasks, [freq] * len(setup.tasks), cfg.lm_batch, cfg.lm_seq,
                                seed=seed + 1)
    mcfg = GPTConfig(vocab_size=stream.vocab_size, n_layers=layers, n_heads=max(1, d_model // 32), d_model=d_model,
                     seq_len=cfg.lm_seq + 8, mlp="relu2")
    model = GPT(mcfg).to(device)
    opt = make_optimizer(model, cfg.lm_lr, weight_decay=0.1)
    steps = cfg.lm_steps
    evals = {}
    for t in setup.tasks:
        for split, idx in (("train", t.train_idx), ("heldout", t.heldout_idx)):
            evals[(t.name, split)] = (stream.eval_batch(t, idx, seed=seed + 5).to(device), t.answers[idx].to(device))
    bg_eval = setup.bg.sample(32, cfg.lm_seq + 1, torch.Generator().manual_seed(seed + 9)).to(device)

    def loss_fns():
        fns = {"background": lambda m: m(bg_eval[:, :-1], bg_eval[:, 1:])}
        for t in setup.tasks:
            p, a = evals[(t.name, "train")]
            fns[t.name] = lambda m, _p=p, _a=a: F.cross_entropy(m(_p)[:, -1].float(), _a)
        return fns

    def grad_stats():
        model.eval()
        g = itf.task_gradients(model, loss_fns())
        model.train()
        return {t.name: itf.interference(g, {"background": 1.0}, ["background"], t.name) for t in setup.tasks}

    track = itf.TaskHistory({t.name: lambda m, _t=t: _answer_stats(m, *evals[(_t.name, "train")])[0]
                             for t in setup.tasks})  # log p(answer) on trained pairs
    inj = {t.name: {"before": [], "after": []} for t in setup.tasks}
    grads = {"steps": [], "bg_norm": [], **{t.name: {"cos": [], "projection": []} for t in setup.tasks}}

    model.train()
    track.record(0, model)
    for step in range(steps):
        seq, counts = stream.batch(step)
        seq = seq.to(device)
        injected = sum(counts) > 0 and freq < 1
        if injected:
            before = {t.name: track.metric_fns[t.name](model) for t in setup.tasks}
        set_lr(opt, lr_at(step, steps, cfg.lm_lr, warmup=min(100, steps // 10)))
        with autocast_ctx(device):
            loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if injected:
            for t in setup.tasks:
                inj[t.name]["before"].append(before[t.name])
                inj[t.name]["after"].append(track.metric_fns[t.name](model))
        if (step + 1) % cfg.lm_eval_every == 0 or step + 1 == steps:
            track.record(step + 1, model)
            st = grad_stats()
            grads["steps"].append(step + 1)
            grads["bg_norm"].append(st[setup.tasks[0].name]["common_norm"])
            for t in setup.tasks:
                grads[t.name]["cos"].append(st[t.name]["cos_common_rare"])
                grads[t.name]["projection"].append(st[t.name]["projection"])
    model.eval()
    res = {"params": model.num_params(), "layers": layers, "d_model": d_model, "freq": freq,
           "token_frac": freq * tc.InjectedTask.LENGTH / (cfg.lm_batch * (cfg.lm_seq + 1)),
           "track": {"steps": track.steps, **track.values}, "grads": grads, "tasks": {}}
    with torch.no_grad():
        res["bg_loss"] = float(model(bg_eval[:, :-1], bg_eval[:, 1:]))
    for t in setup.tasks:
        lp, acc = _answer_stats(model, *evals[(t.name, "train")])
        lph, acch = _answer_stats(model, *evals[(t.name, "heldout")])
        b, a = np.array(inj[t.name]["before"]), np.array(inj[t.name]["after"])
        res["tasks"][t.name] = {
            "acc_train": acc, "acc_heldout": acch, "logp_train": lp, "logp_heldout": lph,
            "jump": float((a - b).mean()) if len(a) else None,
            "decay_frac": float((a[:-1] - b[1:]).mean() / (a - b).mean()) if len(a) > 1 and (a - b).mean() > 0 else None,
            "bg_projection_end": grads[t.name]["projection"][-1], "cos_end": grads[t.name]["cos"][-1],
            "probe": _probe(model, stream, t, seed, device) if freq in cfg.lm_probe_freqs else {},
        }
    res["bg_grad_end"] = grads["bg_norm"][-1]
    res["alloc_injected"] = _lm_allocation(model, loss_fns(), setup)
    log(f"LM L={layers} d={d_model} ({res['params'] / 1e6:.2f}M) freq {freq}/batch: "
        + ", ".join(f"{n} acc {v['acc_train']:.2f}/{v['acc_heldout']:.2f}" for n, v in res["tasks"].items())
        + f", bg loss {res['bg_loss']:.3f} (entropy {setup.entropy:.3f}) in {time.time() - t0:.1f}s")
    return res


def _probe(model, stream, task, seed, device) -> dict[int, float]:
    """Linear-probe accuracy of the task variable at the `=` position (train pairs → held-out pairs) at the
    embeddings, the middle block and the last block."""
    idx = torch.arange(len(task.answers))
    n = model.cfg.n_layers
    layers = sorted({-1, n // 2 - 1, n - 1})
    feats = itf.layer_features(model, stream.eval_batch(task, idx, seed=seed + 5).to(device), position=-1,
                               layers=layers)
    return itf.probe_layers(feats, task.labels.numpy(), task.heldout.numpy())


def _lm_allocation(model, fns, setup) -> float:
    """Soft share of the last-layer MLP units' (first-order) ablation effects that goes to the injected tasks
    (each unit split across tasks in proportion to its effects; not a count of units)."""
    eff = itf.unit_attributions(model, fns, layer=model.cfg.n_layers - 1)
    names, mat = itf.effect_matrix(eff)
    alloc = itf.allocation(mat, min_frac=0.01)
    return float(sum(alloc["fractions"][i] for i, n in enumerate(names) if n != "background"))
