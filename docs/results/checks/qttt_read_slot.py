"""Where does the small LM's layer-1 head look at the answer row? Mass by offset from the needle line's prefix.
python3 qttt_read_slot.py SEED MAX_PHASES: the small preset's circuit phases (500 steps each) until 0.9 at 4 lines."""
import sys, dataclasses, time
import numpy as np, torch
torch.set_num_threads(1)
from lmlab.methods.qttt import lm
from lmlab.methods.qttt.experiment import PRESETS
seed = int(sys.argv[1]); max_phases = int(sys.argv[2])
cfg = PRESETS["small"]
torch.manual_seed(seed)
task = lm.build_task(cfg); model = lm.build_model(cfg, task, torch.device("cpu"))
dense = lm.build_task(cfg, cfg.circuit_repeat_frac)
rng = np.random.default_rng(seed); crng = np.random.default_rng(seed + 7)
ev = lm.Evaluator(model, task, 64)
probe = [task.sample(4, crng) for _ in range(64)]
t0 = time.time()
for i in range(max_phases):
    lm.train_phase(model, dense, cfg, torch.device("cpu"), rng, 500, "circuit", lambda s: None)
    a = ev.run(probe)["acc"]; print(f"step {(i+1)*500} acc {a:.2f} {time.time()-t0:.0f}s", flush=True)
    if a >= 0.9: break

model.eval()
erng = np.random.default_rng(seed + 1)
for n in (4, 32):
    insts = [task.sample(n, erng) for _ in range(256)]
    print(f"\n{n} lines: acc {ev.run(insts)['acc']:.3f}; ablation acc per (layer, head):",
          {(l, h): round(ev.run(insts, ablate=(l, h))['acc'], 3) for l in range(cfg.n_layers) for h in range(cfg.n_heads)})
    ok = [x for x in insts if 4 <= x.needle_positions[0] and x.needle_positions[0] + 8 < len(x.context)]
    print(f"  {len(ok)} contexts with room around the needle; mass (L, H) by offset from the needle prefix:")
    for off in range(-4, 9):
        sub = [dataclasses.replace(x, needle_positions=[x.needle_positions[0] + off]) for x in ok]
        m = ev.run(sub)["mass"].mean(1)  # (L, H)
        print(f"  {off:+d}: " + "  ".join(f"L{l}H{h} {m[l, h]:.3f}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)))
    sub = [dataclasses.replace(x, needle_positions=[0]) for x in ok]
    m = ev.run(sub)["mass"].mean(1)
    print("  BOS: " + "  ".join(f"L{l}H{h} {m[l, h]:.3f}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)))
