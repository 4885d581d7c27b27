"""Claims 1–2 and the inclusion check: the paper's constructions (Sec. 4.1–4.3), trained at equal head count.

The proofs' attention layer reads positions in its queries and keys and the content in its values. MHA with H=2,
IHA with H=P=2 and MHA with H=4 (the control that the task is learnable with this optimiser) are trained with Adam
on the polynomial filter bank (k=4, linear attention) and on the CPM-3 workspace (N_max=4, softmax attention).
These tiny models run on one CPU thread, where they are fastest.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.methods.iha.attention import InterleavedHeadAttention, collapse_pseudo, mix_pseudo
from lmlab.methods.iha.tasks import CPM3Task, PolynomialFilterTask, cyclic_workspace, nmse
from lmlab.model import AttnContext, GPTConfig, MultiHeadAttention
from lmlab.train import fit

MODELS = [("MHA H=2", 2, None), ("IHA H=2 P=2", 2, 2), ("MHA H=4 (control)", 4, None)]


class PositionalHeads(nn.Module):
    """The proofs' attention layer: queries/keys read only one-hot positions, values read the content.

    MHA when n_pseudo is None; IHA (mixing + global collapse, identity-plus-noise init) otherwise.
    No mask (the theory is non-causal); softmax or linear attention.
    """

    def __init__(self, n_pos: int, d_in: int, n_heads: int, d_qk: int, d_v: int, d_out: int,
                 n_pseudo: int | None = None, softmax: bool = True, init_noise: float = 1e-2):
        super().__init__()
        h = n_heads
        self.h, self.d_v, self.softmax, self.p = h, d_v, softmax, n_pseudo
        self.wq = nn.Parameter(torch.randn(n_pos, h, d_qk) / math.sqrt(n_pos))
        self.wk = nn.Parameter(torch.randn(n_pos, h, d_qk) / math.sqrt(n_pos))
        self.wv = nn.Linear(d_in, h * d_v, bias=False)
        self.wo = nn.Linear(h * d_v, d_out, bias=False)
        if n_pseudo:
            eye = torch.eye(h)[:, :, None].repeat(1, 1, n_pseudo)
            self.alpha = nn.ParameterList(nn.Parameter(eye + init_noise * torch.randn_like(eye))
                                          for _ in range(3))
            r = torch.zeros(h, h, n_pseudo)
            r[torch.arange(h), torch.arange(h), -1] = 1.0
            self.r = nn.Parameter(r.view(h, -1) + init_noise * torch.randn(h, h * n_pseudo))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k = self.wq[None], self.wk[None]  # (1, N, H, d_qk): position-only, batch-independent
        v = self.wv(x).view(b, n, self.h, self.d_v)
        if self.p:
            q, k, v = (mix_pseudo(t, a) for t, a in zip((q, k, v), self.alpha))
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        y = (scores.softmax(-1) if self.softmax else scores) @ v
        if self.p:
            y = collapse_pseudo(y, self.r, per_head=False)
        return self.wo(y.transpose(1, 2).reshape(b, n, self.h * self.d_v))


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def train_regression(model: nn.Module, sample, steps: int, lr: float, batch: int) -> float:
    """Adam + cosine schedule on MSE (as in the spec's prototype); returns CPU seconds."""
    t0 = time.process_time()
    fit(model, lambda m, xy: F.mse_loss(m(xy[0]), xy[1]), (sample(batch) for _ in iter(int, 1)), steps, lr=lr,
        grad_clip=None, optimizer=torch.optim.Adam(model.parameters(), lr=lr), device=torch.device("cpu"))
    return time.process_time() - t0


def measure_polynomial(seed: int, steps: int, lr: float, batch: int) -> dict[str, dict]:
    """c1: test nmse (4096 fresh examples) of each model on the k=4 filter bank of an 8-node graph."""
    task = PolynomialFilterTask(n_nodes=8, n_features=2, k=4, seed=seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    xt, yt = task.sample(4096, torch.Generator().manual_seed(2000 + seed))
    out = {}
    for name, h, p in MODELS:
        torch.manual_seed(seed)
        # per-head value width k·d/H: the heads' total value width is the target's k·d = 8
        m = PositionalHeads(8, 2, h, d_qk=8, d_v=8 // h, d_out=8, n_pseudo=p, softmax=False)
        sec = train_regression(m, lambda b: task.sample(b, gen), steps, lr, batch)
        with torch.no_grad():
            out[name] = {"nmse": nmse(m(xt), yt), "params": n_params(m), "cpu_s": sec}
    return out


def measure_cpm3(seed: int, steps: int, lr: float, batch: int) -> dict[str, dict]:
    """c2: workspace row accuracy and nmse (4096 fresh sequences) of each model on CPM-3 with N_max=4."""
    task = CPM3Task(n_max=4, n_values=10)
    gen = torch.Generator().manual_seed(1000 + seed)
    xt = task.sample(4096, torch.Generator().manual_seed(3000 + seed))
    zt = task.standardise(cyclic_workspace(xt))

    def sample(b):
        x = task.sample(b, gen)
        return task.standardise(x)[..., None], task.standardise(cyclic_workspace(x))

    out = {}
    for name, h, p in MODELS:
        torch.manual_seed(seed)
        m = PositionalHeads(4, 1, h, d_qk=4, d_v=max(2, p or 1), d_out=4, n_pseudo=p, softmax=True)
        sec = train_regression(m, sample, steps, lr, batch)
        with torch.no_grad():
            pred = m(task.standardise(xt)[..., None])
        out[name] = {"row_acc": task.workspace_row_accuracy(pred, xt), "nmse": nmse(pred, zt), "params": n_params(m),
                     "cpu_s": sec}
    return out


def inclusion_gap(seed: int) -> float:
    """The largest |IHA − MHA| output difference when IHA takes MHA's projections with identity mixing, R on the
    last pseudo and no init noise (Sec. 4.1's inclusion MHA ⊆ IHA; spec §7, I1: D=32, H=4, P=3, N=7, no RoPE),
    under the flat and the token mask."""
    torch.manual_seed(seed)
    worst = 0.0
    x = torch.randn(2, 7, 32)
    ident = (torch.ones(1, 1, 7, 8), torch.zeros(1, 1, 7, 8))  # RoPE off: cos 1, sin 0
    for mask in ("flat", "token"):
        cfg = GPTConfig(vocab_size=8, n_layers=1, n_heads=4, d_model=32, seq_len=7, attention="iha",
                        attention_options={"n_pseudo": 3, "mask": mask, "rope": "none", "init_noise": 0.0})
        mha = MultiHeadAttention(GPTConfig(vocab_size=8, n_layers=1, n_heads=4, d_model=32, seq_len=7), 0)
        iha = InterleavedHeadAttention(cfg, 0)
        iha.load_state_dict(mha.state_dict(), strict=False)
        with torch.no_grad():
            worst = max(worst, float((iha(x, ident, AttnContext()) - mha(x, ident, AttnContext())).abs().max()))
    return worst
