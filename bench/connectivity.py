"""Time for an M×M loss-barrier matrix: `lmlab.methods.lmc.connectivity.barrier_matrix` vs a naive loop.

The naive loop is what a first script does: for every pair it re-loads both checkpoints from disk,
builds a fresh model at each of the 10 α-points, and re-evaluates every point (endpoints included)
from CPU batches. `barrier_matrix` keeps the state dicts in memory, moves the evaluation batches to the
device once and evaluates each model's endpoint once for its M−1 paths. Both produce the same matrix
(checked). Models: perturbed copies of a PositionalMLP parent on the HANS-like NLI task.

    python bench/connectivity.py            # M = 8, 16; 512 evaluation examples
    python bench/connectivity.py --quick    # M = 4, 8; 256 examples
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmlab.methods.lmc.connectivity import (
    barrier_matrix,
    barrier_max_subsegment,
    buffer_keys,
    evaluate,
    interpolate_state_dicts,
    prepare_batches,
)
from lmlab.classifier import PositionalMLP
from lmlab.methods.lmc.tasks import HansLikeNLI


def make_models(task, m: int, folder: Path, hidden: int) -> dict[str, dict]:
    torch.manual_seed(0)
    parent = PositionalMLP(task.vocab_size, task.SEQ_LEN, hidden=hidden)
    sds = {}
    for i in range(m):
        sd = {k: v + 0.05 * torch.randn_like(v) for k, v in parent.state_dict().items()}
        torch.save(sd, folder / f"m{i}.pt")
        sds[f"m{i}"] = sd
    return sds


def naive(task, names, folder: Path, batches, n_points: int, hidden: int, device) -> np.ndarray:
    D = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            sd1 = torch.load(folder / f"{a}.pt")
            sd2 = torch.load(folder / f"{names[j]}.pt")
            losses = []
            for alpha in np.linspace(0, 1, n_points):
                model = PositionalMLP(task.vocab_size, task.SEQ_LEN, hidden=hidden).to(device)
                model.load_state_dict(interpolate_state_dicts(sd1, sd2, alpha, buffer_keys(model)))
                losses.append(evaluate(model, [(x.to(device), y.to(device)) for x, y in batches])["loss"])
            D[i, j] = D[j, i] = barrier_max_subsegment(losses)
    return D


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--vectorize", choices=["auto", "on", "off"], default="auto",
                    help="vmap the interior α-points (auto: on for accelerators)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    sizes, n_eval, hidden = ([4, 8], 256, 128) if args.quick else ([8, 16], 512, 256)
    task = HansLikeNLI()
    x, y, _ = task.sample(n_eval, split="id", seed=1)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, n_eval, 64)]
    print(f"device {dev}, {n_eval} eval examples, 10-point paths, workers={args.workers}, "
          f"vectorize={args.vectorize}")
    for m in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            sds = make_models(task, m, folder, hidden)
            template = PositionalMLP(task.vocab_size, task.SEQ_LEN, hidden=hidden).to(dev)
            sds_dev = {k: {n: v.to(dev) for n, v in sd.items()} for k, sd in sds.items()}
            t0 = time.perf_counter()
            vec = {"auto": None, "on": True, "off": False}[args.vectorize]
            fast = barrier_matrix(template, sds_dev, prepare_batches(batches, dev), n_points=10,
                                  workers=args.workers, vectorize=vec)["D"]
            t_fast = time.perf_counter() - t0
            t0 = time.perf_counter()
            slow = naive(task, list(sds), folder, batches, 10, hidden, dev)
            t_slow = time.perf_counter() - t0
        same = np.allclose(fast, slow, atol=1e-5)
        print(f"M={m:3d} ({m * (m - 1) // 2} pairs): barrier_matrix {t_fast:7.2f}s  naive {t_slow:7.2f}s  "
              f"ratio naive/ours {t_slow / t_fast:5.2f}x  same matrix: {same}")


if __name__ == "__main__":
    main()
