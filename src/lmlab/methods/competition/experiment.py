"""Task competition (spec 02): why larger models learn rare and complex tasks — on the decision engine.

`measure(ctx, seed)` runs one seed and returns numbers only:
- part A (every preset, `toy.py`): the multi-task regression toy — K tasks on orthogonal blocks, Zipf frequencies,
  rank complexity — with a population of `nets` ReLU networks per width (the claims' test) and linear ones (the
  checks of the Eckart–Young theory): a width sweep (c1, c2, k1, k2) and a rare-task injection protocol with the
  common steps' interference with the rare task (c3, c4, c5; k3 with linear nets at small/gpu);
- part B (small, gpu, `lm.py`): a ladder of lmlab GPTs on a Markov background with comparison and modular-addition
  instances injected at 10 to 1 per batch (c6).
The pure `decide_*` functions in `decide.py` turn the per-seed numbers into verdicts; `summary.py` writes the tables
and figures. Toy networks always train on the CPU (they are launch-bound on a GPU); when the LM ladder runs, the toy
runs beside it in a forked process.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import traceback
from dataclasses import dataclass, field

import torch

from lmlab.experiment import RunContext, experiment, presets
from lmlab.methods.competition import toy
from lmlab.methods.competition.decide import decide
from lmlab.methods.competition.lm import LMSetup, lm_run
from lmlab.methods.competition.summary import summarize
from lmlab.utils import tiny_threads


@dataclass
class Config:
    """One seed. Part A: the regression toy — `n_tasks` tasks on orthogonal blocks of `block_dim`, Zipf(`zipf`)
    frequencies, `ranks` complexities — with `nets` networks per width: ReLU over `widths` (sweep) and
    `inj_widths` (injection every `inj_periods` steps), linear over `linear_widths` and `linear_inj_widths` (the
    checks). Part B (when `lm`): a ladder of GPTs `lm_sizes` ([layers, d_model]) on a Markov background with
    comparison and modular-addition instances injected at `lm_freqs` per batch. `seeds` seeds of all of it."""

    seeds: int = 2
    # part A: the toy regression
    n_tasks: int = 12
    block_dim: int = 8
    zipf: float = 1.2
    ranks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    toy_lr: float = 0.2
    toy_batch: int = 64
    init_std: float = 0.01
    nets: int = 3  # networks per width in one seed (trained side by side)
    widths: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128])  # ReLU sweep (c1, c2)
    linear_widths: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128])  # linear sweep (k1, k2)
    sweep_steps: int = 2000
    eval_per_task: int = 256  # examples of each task in the fixed evaluation batch of the ReLU nets
    inj_periods: list[int] = field(default_factory=lambda: [100, 20])
    inj_widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # ReLU injection (c3, c4, c5)
    linear_inj_widths: list[int] = field(default_factory=list)  # linear injection (k3): small and gpu
    inj_steps: int = 2999
    rare_rank: int = 2
    cycles: int = 5  # the last injection intervals over which interference is averaged (c4)
    # the toy claims' thresholds (normalised error; rare-task signal 1 − error)
    learned_err: float = 0.1
    retained: float = 0.8
    lost: float = 0.1
    # part B: the LM ladder (off: no sizes, no frequencies)
    lm: bool = False
    lm_sizes: list[list[int]] = field(default_factory=list)  # [n_layers, d_model] per model
    lm_freqs: list[int | float] = field(default_factory=list)  # injected instances of each task per batch
    lm_probe_freqs: list[int | float] = field(default_factory=list)
    lm_steps: int = 0
    lm_batch: int = 16
    lm_seq: int = 32
    lm_lr: float = 3e-3
    lm_vocab: int = 64
    lm_order: int = 2
    lm_branching: int = 3
    cmp_items: int = 12
    mod_p: int = 11
    heldout_frac: float = 0.2
    lm_learned_acc: float = 0.8
    lm_eval_every: int = 50
    toy_in_process: bool | None = None  # run the toy in a forked process beside the LM ladder (None: when lm is on)


PRESETS = presets(
    Config,
    tiny={},
    # c6: frequencies from 10 to 1 per batch (the paper's range above one per batch) and enough steps for the
    # learned-frequency frontier to move: the previous small run (4, 1, 0.25 per batch, 1500 steps) learned only its
    # top frequency
    small={"seeds": 3, "inj_widths": [16, 32, 64, 128, 256], "linear_inj_widths": [8, 16, 32, 64],
           "lm": True, "lm_sizes": [[1, 32], [2, 64], [2, 128]], "lm_freqs": [10, 4, 2, 1],
           "lm_probe_freqs": [10, 1], "lm_steps": 2000},
    # the toy part runs on the CPU beside the LM cells; the ladder is sized for one H100/H200
    gpu={"seeds": 3, "inj_widths": [16, 32, 64, 128, 256], "linear_inj_widths": [8, 16, 32, 64],
         "lm": True, "lm_sizes": [[2, 64], [4, 128], [6, 256]], "lm_freqs": [10, 4, 2, 1],
         "lm_probe_freqs": [10, 1], "lm_steps": 2000, "lm_batch": 64, "lm_seq": 128, "lm_vocab": 128,
         "cmp_items": 16, "mod_p": 23, "lm_eval_every": 150},
)

CLAIMS = {
    "c1_tasks_learned_grow": "(ReLU toy) the number of tasks learned grows with width, and the unlearned ones are "
                             "the rarest/most complex",
    "c2_allocation": "(ReLU toy) small models allocate most units to frequent/simple tasks (the share of units, by "
                     "unit ablation, of the top-3 tasks falls with width)",
    "c3_retention_threshold": "(ReLU toy) under injection a rare task is retained only above a width threshold, "
                              "while smaller models show rise-and-decay",
    "c4_interference": "(ReLU toy) reduced interference: the common-task steps' first-order effect on the rare loss "
                       "(−η·g_common·g_rare) undoes much less of each injection's gain in the widths that keep the "
                       "rare task than in those that lose it",
    "c5_frequency_substitutes": "(ReLU toy) raising the rare task's frequency lets a mid-size model learn it (data "
                                "as a substitute for scale)",
    "c6_lm_rare_tasks": "(LM) larger LMs learn the injected tasks at lower frequencies and show less gradient "
                        "interference between background and injected task",
}
CHECKS = {
    "k1_linear_eckart_young": "Linear toy: the per-task errors sit at the Eckart–Young rank-N optimum, so the tasks "
                              "learned grow with width in utility order (the theory behind c1; guaranteed once SGD "
                              "converges, so a check)",
    "k2_linear_allocation": "Linear toy: the top-3 share of units (path strength) falls with width (c2's criterion "
                            "on the Eckart–Young solution; a check)",
    "k3_linear_retention": "Linear toy: the rare task is kept only from the Eckart–Young capacity on, and a faster "
                           "injection flips a mid width (c3's and c5's criteria on linear nets; a check)",
}


# ================================================================ measuring (one seed)
def toy_part(cfg: Config, seed: int, log) -> dict:
    """Every toy run of one seed (ReLU and linear sweeps and injections), on the CPU with one thread."""
    tiny_threads()  # the toy nets are tiny: one thread is fastest
    out = {"sweep": {"relu": toy.sweep(cfg, seed, "relu", cfg.widths, log)},
           "inj": {"relu": [toy.injection(cfg, seed, "relu", p, cfg.inj_widths, log) for p in cfg.inj_periods]}}
    if cfg.linear_widths:
        out["sweep"]["linear"] = toy.sweep(cfg, seed, "linear", cfg.linear_widths, log)
    if cfg.linear_inj_widths:
        out["inj"]["linear"] = [toy.injection(cfg, seed, "linear", p, cfg.linear_inj_widths, log)
                                for p in cfg.inj_periods]
    return out


class _ToyProcess:
    """`toy_part` in a forked process, so that the CPU-only toy runs while the parent trains the LM ladder.

    Forked, not spawned: the child inherits the config and imports, and it never touches the GPU. Its result
    comes back as plain pickle bytes; an exception in it is raised again here with the child's traceback. The
    child ignores SIGINT, so a Ctrl-C to the process group stops the LM ladder and not the toy; a Ctrl-C while
    waiting for it ends the child.
    """

    def __init__(self, cfg: Config, seed, log):
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=self._main, args=(child, cfg, seed, log), daemon=True)
        self.proc.start()
        child.close()  # so that a child that dies without sending gives EOFError here, not a hang

    @staticmethod
    def _main(conn, cfg: Config, seed, log):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            msg = ("ok", pickle.dumps(toy_part(cfg, seed, log)))
        except Exception:  # noqa: BLE001 -- any failure goes back to the parent with its traceback
            msg = ("error", traceback.format_exc())
        conn.send(msg)

    def result(self) -> dict:
        try:
            status, value = self.conn.recv()
        except EOFError:
            status, value = "died", None
        except BaseException:
            self.proc.terminate()
            raise
        finally:
            self.proc.join()
        if status == "died":
            raise RuntimeError(f"the toy-regression process died without a result (exit code {self.proc.exitcode})")
        if status == "error":
            raise RuntimeError(f"the toy-regression process failed:\n{value}")
        return pickle.loads(value)


def measure(ctx: RunContext, seed: int) -> dict:
    """One seed: the toy (sweeps, injections, interference) and, when `lm`, the LM ladder."""
    cfg = ctx.cfg
    overlap = cfg.lm if cfg.toy_in_process is None else cfg.toy_in_process
    proc = _ToyProcess(cfg, seed, ctx.log) if overlap else None  # the CPU toy beside the LM ladder
    if proc is None:
        threads = torch.get_num_threads()
        try:
            out = toy_part(cfg, seed, ctx.log)
        finally:
            torch.set_num_threads(threads)
    out_lm, entropy = None, None
    try:
        if cfg.lm:
            if ctx.device.type == "cpu":
                tiny_threads()  # small models on a shared CPU
            setup = LMSetup(cfg, seed)
            entropy = setup.entropy
            out_lm = [lm_run(cfg, setup, layers, d, f, seed, ctx.device, ctx.log)
                      for f in cfg.lm_freqs for layers, d in cfg.lm_sizes]
    except BaseException:  # e.g. Ctrl-C: the seed is measured again on --resume, so its toy is not waited for
        if proc is not None:
            proc.proc.terminate()
            proc.proc.join()
        raise
    if proc is not None:
        out = proc.result()
    return {**out, "lm": out_lm, "lm_background_entropy": entropy}


experiment(name="task_competition",
           paper="Huang et al., Why Larger Models Learn More: Effects of Capacity, Interference, and Rare-Task "
                 "Retention, 2026 (arXiv:2605.29548)",
           claims=CLAIMS, checks=CHECKS, presets=PRESETS, decide=decide, summarize=summarize)(measure)
