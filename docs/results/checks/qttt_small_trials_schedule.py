"""trial: circuit phases with an lr schedule override. python3 trial2.py SEED PHASES PHASE_STEPS SCHEDULE key=value"""
import sys, dataclasses, time, ast, functools
import numpy as np, torch
torch.set_num_threads(1)
from lmlab.methods.qttt import lm
from lmlab.methods.qttt.experiment import PRESETS
seed, phases, ph, sched = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
over = {}
for kv in sys.argv[5:]:
    k, v = kv.split("=", 1); over[k] = ast.literal_eval(v)
lm.fit = functools.partial(lm.fit, schedule=sched)
cfg = dataclasses.replace(PRESETS["small"], **over)
torch.manual_seed(seed)
task = lm.build_task(cfg); model = lm.build_model(cfg, task, torch.device("cpu"))
dense = lm.build_task(cfg, cfg.circuit_repeat_frac)
rng = np.random.default_rng(seed); crng = np.random.default_rng(seed + 7)
ev = lm.Evaluator(model, task, 64)
lo, hi = min(cfg.lengths), max(cfg.lengths)
ps = [task.sample(lo, crng) for _ in range(64)]; pl = [task.sample(hi, crng) for _ in range(64)]
t0 = time.time()
for i in range(phases):
    lm.train_phase(model, dense, cfg, torch.device("cpu"), rng, ph, "circuit", lambda s: None)
    print(f"seed {seed} {sched} {over} step {(i+1)*ph}: acc {ev.run(ps)['acc']:.2f} @{lo} / {ev.run(pl)['acc']:.2f} @{hi}  {time.time()-t0:.0f}s", flush=True)
