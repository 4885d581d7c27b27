import sys, dataclasses, time
import numpy as np, torch
torch.set_num_threads(1)
from lmlab.methods.qttt import lm
from lmlab.methods.qttt.experiment import PRESETS
PH = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
variant, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
base = PRESETS["tiny"]
import functools
_fit = lm.fit
def fit2(*a, **k):
    if "const" in variant: k["schedule"] = "constant"
    if "wd0" in variant: k["weight_decay"] = 0.0
    return _fit(*a, **k)
lm.fit = fit2
for seed in seeds:
    cfg = dataclasses.replace(base)
    if "heads4" in variant: cfg = dataclasses.replace(cfg, n_heads=4)
    if "lr1e2" in variant: cfg = dataclasses.replace(cfg, lr=1e-2)
    if "lr6e3" in variant: cfg = dataclasses.replace(cfg, lr=6e-3)
    if "bs32" in variant: cfg = dataclasses.replace(cfg, batch_size=32)
    if "bs64" in variant: cfg = dataclasses.replace(cfg, batch_size=64)
    if "layers3" in variant: cfg = dataclasses.replace(cfg, n_layers=3)
    if "wide" in variant: cfg = dataclasses.replace(cfg, d_model=128, n_heads=4)
    if "rep8" in variant: cfg = dataclasses.replace(cfg, repeat_frac=0.8)
    torch.manual_seed(seed)
    task = lm.build_task(cfg); model = lm.build_model(cfg, task, torch.device("cpu"))
    rng = np.random.default_rng(seed)
    ev = lm.Evaluator(model, task, 64)
    crng = np.random.default_rng(seed + 7)
    probe_s = [task.sample(4, crng) for _ in range(64)]; probe_l = [task.sample(24, crng) for _ in range(64)]
    t0 = time.time(); out = []
    for ph in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
        c = dataclasses.replace(cfg, lengths=[4, 8]) if ("short" in variant and ph == 0) else cfg
        lm.train_phase(model, task, c, torch.device("cpu"), rng, PH, "circuit", lambda s: None)
        out.append((ev.run(probe_s)["acc"], ev.run(probe_l)["acc"]))
    print(variant, seed, " ".join(f"{(i+1)*PH}:{a:.2f}/{b:.2f}" for i, (a, b) in enumerate(out)), f"{time.time()-t0:.0f}s", flush=True)
