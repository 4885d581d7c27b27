"""Scaling smoke test: GPTs of different widths trained identically on a synthetic order-2 Markov source.

The source has a known entropy rate, so held-out loss can be read against the best achievable
(the true conditional entropy of the held-out tokens). All models share depth, data order, steps and
learning rate; only d_model (and hence the MLP width) differs. This experiment proves the
experiment → report path end to end; its claim is the most basic scaling observation.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

from lmlab.experiment import RunContext, experiment, presets
from lmlab.model import GPT, IGNORE_INDEX, GPTConfig
from lmlab.train import fit

MARGIN = 0.02  # nats/token: the wider model must be at least this much lower on held-out loss

@dataclass
class Config:
    """One scaling ladder: GPTs of `widths` (d_model), `layers` deep, trained `steps` steps on an order-2 Markov
    source over `vocab` symbols with `branching` successors per context; `seeds` replicates per width."""

    widths: list[int] = field(default_factory=lambda: [16, 64])
    seeds: int = 1
    steps: int = 200
    batch: int = 32
    vocab: int = 24
    branching: int = 3
    seq_len: int = 64
    layers: int = 2
    heads: int = 2
    lr: float = 3e-3
    eval_every: int = 50
    eval_seqs: int = 64


PRESETS = presets(
    Config,
    tiny={},
    small={"widths": [16, 32, 64, 128], "seeds": 3, "steps": 1200, "eval_seqs": 512},
    gpu={"widths": [32, 64, 128, 256], "seeds": 3, "steps": 2000, "batch": 128, "vocab": 48, "seq_len": 128,
         "eval_every": 100, "eval_seqs": 1024},
)


class MarkovSource:
    """Order-2 Markov chain over `vocab` symbols; each context allows `branching` next symbols with
    Dirichlet(1) probabilities. Fully determined by `seed` (its own generator, not the global RNG)."""

    def __init__(self, vocab: int, branching: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        scores = torch.rand(vocab, vocab, vocab, generator=g)
        keep = scores.argsort(-1)[..., :branching]
        # Dirichlet(1) = normalised Exp(1) draws from `g` (torch's Dirichlet takes no generator and would
        # read the global RNG, so `seed` alone would not determine the source)
        gam = -torch.log(torch.rand(vocab, vocab, branching, generator=g).clamp_min(1e-12))
        weights = gam / gam.sum(-1, keepdim=True)
        self.probs = torch.zeros(vocab, vocab, vocab).scatter_(-1, keep, weights)
        self.vocab = vocab
        cum = self.probs.cumsum(-1)
        self.cdf = cum / cum[..., -1:]  # exactly 1.0 from the last successor on, so u < 1 never runs past it

    def sample(self, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
        """n sequences by inverse-CDF sampling from uniforms drawn up front: one vectorised step per position
        (torch.multinomial per position was much slower: docs/results/run_history_from_code.md)."""
        x = torch.empty(n, length, dtype=torch.long)
        x[:, :2] = torch.randint(0, self.vocab, (n, 2), generator=gen)
        u = torch.rand(n, max(length - 2, 0), 1, generator=gen)
        for t in range(2, length):
            # the first symbol whose CDF exceeds u: it has positive probability, as the CDF jumps there
            x[:, t] = (self.cdf[x[:, t - 2], x[:, t - 1]] <= u[:, t - 2]).sum(-1)
        return x

    def conditional_entropy(self, x: torch.Tensor) -> float:
        """Mean -log p(x_t | x_{t-2}, x_{t-1}) over t >= 2: the loss of the true model on these tokens."""
        p = self.probs[x[:, :-2], x[:, 1:-1], x[:, 2:]]
        return float(-p.log().mean())


def targets_from(x: torch.Tensor) -> torch.Tensor:
    """Next-token targets, scored only where the order-2 context is complete (targets t >= 2)."""
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, 1:-1] = x[:, 2:]
    return y


@torch.no_grad()
def held_out_loss(model: GPT, x: torch.Tensor, batch: int = 256) -> float:
    total, n = 0.0, 0
    for s in range(0, len(x), batch):
        xb = x[s : s + batch]
        yb = targets_from(xb)
        loss = model(xb, yb, loss_reduction="none")
        total += float(loss[yb != IGNORE_INDEX].double().sum())
        n += int((yb != IGNORE_INDEX).sum())
    return total / n


def training_data(cfg: Config, source: MarkovSource, seed: int) -> torch.Tensor:
    """Every training batch of one seed, (steps, batch, seq_len), sampled once and shared by all widths."""
    x = source.sample(cfg.steps * cfg.batch, cfg.seq_len, torch.Generator().manual_seed(2000 + seed))
    return x.to(torch.uint8 if source.vocab <= 256 else torch.int32).view(cfg.steps, cfg.batch, -1)


def train_width(cfg: Config, width: int, seed: int, data: torch.Tensor, held: torch.Tensor, dev) -> dict:
    torch.manual_seed(1000 + seed)  # same init stream for every width
    model = GPT(
        GPTConfig(
            vocab_size=cfg.vocab,
            n_layers=cfg.layers,
            n_heads=cfg.heads,
            d_model=width,
            seq_len=cfg.seq_len,
        )
    ).to(dev)
    batches = (b.to(dev, torch.long) for b in data)  # same data order for every width

    curve = []

    def on_step(step: int, loss: torch.Tensor) -> None:
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            curve.append((step + 1, held_out_loss(model, held)))
            model.train()

    fit(
        model,
        lambda m, x: m(x, targets_from(x)),
        batches,
        cfg.steps,
        lr=cfg.lr,
        warmup=20,
        callback=on_step,
        device=dev,
    )
    return {"width": width, "seed": seed, "params": model.num_params(), "final": curve[-1][1], "curve": curve}


@experiment(
    name="scaling_smoke",
    paper="Scaling Laws for Neural Language Models (Kaplan et al., 2020) — smoke test",
    claims={
        "c1_wider_lower_loss": "With the same data, depth, steps and learning rate, the widest GPT reaches a "
        "lower held-out loss than the narrowest one."
    },
    presets=PRESETS,
)
def run(ctx: RunContext) -> None:
    """Train GPTs of each width on an order-2 Markov source; compare held-out loss to the entropy floor."""
    cfg, dev, rep = ctx.cfg, ctx.device, ctx.report
    source = MarkovSource(cfg.vocab, cfg.branching, seed=ctx.seed)
    held = source.sample(cfg.eval_seqs, cfg.seq_len, torch.Generator().manual_seed(10_000 + ctx.seed))
    floor = source.conditional_entropy(held)
    held = held.to(dev)
    runs = []
    jobs = [(w, s) for s in range(cfg.seeds) for w in cfg.widths]
    data_seed = data = None
    for w, s in ctx.progress(jobs, desc="width×seed runs", every_s=5):
        seed = ctx.seed * 100 + s
        if seed != data_seed:  # jobs run seed by seed: sample each seed's data once, for all widths
            data_seed, data = seed, training_data(cfg, source, seed)
        runs.append(train_width(cfg, w, seed, data, held, dev))
        ctx.log(f"d_model={w} seed={s}: held-out loss {runs[-1]['final']:.4f} (floor {floor:.4f})")

    finals = {w: [r["final"] for r in runs if r["width"] == w] for w in cfg.widths}
    rows = []
    for w in cfg.widths:
        f = finals[w]
        sd = statistics.stdev(f) if len(f) > 1 else "n/a"
        params = next(r["params"] for r in runs if r["width"] == w)
        rows.append([w, params, statistics.mean(f), sd, statistics.mean(f) - floor])
        rep.metric(f"held_out_loss_d{w}", statistics.mean(f))
    rep.metric("entropy_floor", floor)
    rep.metric("runs", [{k: r[k] for k in ("width", "seed", "params", "final")} for r in runs])
    rep.table(
        rows,
        ["d_model", "params", "held-out loss (nats/token)", "sd over seeds", "gap to floor"],
        title=f"Held-out loss after {cfg.steps} steps ({cfg.seeds} seed(s)); "
        f"true conditional entropy {floor:.4f} nats/token",
    )

    import matplotlib  # heavy: imported only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for w in cfg.widths:
        for r in (r for r in runs if r["width"] == w):
            steps, losses = zip(*r["curve"])
            shade = 0.85 * cfg.widths.index(w) / max(1, len(cfg.widths) - 1)
            ax.plot(
                steps,
                losses,
                color=plt.cm.viridis(shade),
                label=f"d_model={w}" if r["seed"] % 100 == 0 else None,
                alpha=0.9,
            )
    ax.axhline(floor, color="k", ls="--", lw=1, label="entropy floor")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("Order-2 Markov source: held-out loss by width")
    ax.legend()
    rep.figure(
        fig,
        "heldout_loss",
        "Held-out loss during training for each width; dashed: the source's "
        "true conditional entropy (lowest achievable loss).",
    )

    narrow, wide = min(cfg.widths), max(cfg.widths)
    gaps = [a - b for a, b in zip(finals[narrow], finals[wide])]  # paired by seed
    gap = statistics.mean(gaps)
    evidence = (
        f"held-out loss d_model={narrow}: {statistics.mean(finals[narrow]):.4f}, d_model={wide}: "
        f"{statistics.mean(finals[wide]):.4f} nats/token (floor {floor:.4f}); gap {gap:.4f} "
        f"over {len(gaps)} seed(s); held if gap > {MARGIN}"
    )
    held_claim = gap > MARGIN
    if len(gaps) > 1:
        se = statistics.stdev(gaps) / math.sqrt(len(gaps))
        held_claim = held_claim and gap > 2 * se
        evidence += f" and > 2·SE ({2 * se:.4f})"
    rep.decide("c1_wider_lower_loss", held_claim, evidence)
