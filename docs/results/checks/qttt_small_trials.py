"""Circuit-phase trial for long_context_ttt's small preset: accuracy at the shortest / longest length after each phase.
python3 qttt_small_trials.py SEED PHASES PHASE_STEPS key=value ... (besides the preset's keys: check_suffix=True,
schedule="'constant'" for the circuit phases' learning-rate schedule, default 'cosine')"""
import sys, dataclasses, time, ast, functools
import numpy as np, torch
torch.set_num_threads(1)
from lmlab.methods.qttt import lm
from lmlab.methods.qttt.experiment import PRESETS
seed, phases, ph = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
over = {}
for kv in sys.argv[4:]:
    k, v = kv.split("=", 1)
    over[k] = ast.literal_eval(v)
check_suffix = over.pop("check_suffix", False)
lm.fit = functools.partial(lm.fit, schedule=over.pop("schedule", "cosine"))
cfg = dataclasses.replace(PRESETS["small"], **over)
if check_suffix:  # the line's check is its suffix mod n_checks (one token at offset 1, like KV's family check)
    _build = lm.build_task
    def build_task(cfg, repeat_frac=None):
        t = _build(cfg, repeat_frac)
        _sample = t.sample
        def sample(n, rng, n_pause=0):
            inst = _sample(n, rng, n_pause)
            for i in range(inst.n_lines):
                j = 1 + 4 * i
                inst.context[j + 3] = t.check0 + (inst.context[j + 1] - t.suffix0) % t.n_checks
            return inst
        t.sample = sample
        return t
    lm.build_task = build_task
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
    print(f"seed {seed} {over} step {(i+1)*ph}: acc {ev.run(ps)['acc']:.2f} @{lo} / {ev.run(pl)['acc']:.2f} @{hi}  {time.time()-t0:.0f}s", flush=True)
