"""Small classifiers the toy studies train: a feed-forward MLP and an order-aware positional MLP over token
ids, with a plain Adam training loop and accuracy. Hidden layers are named so that activation analyses can
hook them (`MLP.fc1..fcL`, pre-ReLU outputs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Feed-forward classifier; hidden Linear layers are `fc1..fcL` (their outputs are pre-ReLU)."""

    def __init__(self, d_in: int, width: int = 64, depth: int = 2, n_classes: int = 2):
        super().__init__()
        dims = [d_in] + [width] * depth
        for i in range(depth):
            self.add_module(f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1]))
        self.depth = depth
        self.out = nn.Linear(width, n_classes)

    def hidden_names(self) -> list[str]:
        """Names of the hidden layers (fc1, fc2, ...), in order."""
        return [f"fc{i + 1}" for i in range(self.depth)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of `x` (ReLU hidden layers, linear output)."""
        for name in self.hidden_names():
            x = F.relu(getattr(self, name)(x))
        return self.out(x)


def train_classifier(model: nn.Module, x, y: torch.Tensor, epochs: int, lr: float = 1e-2,
                     batch_size: int | None = None, weight_decay: float = 0.0, seed: int = 0) -> list[float]:
    """Adam on cross-entropy; full batch when batch_size is None. x: tensor or dict of tensors."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(y)
    bs = batch_size or n
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, bs):
            idx = perm[s : s + bs]
            xb = {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]
            out = model(**xb) if isinstance(xb, dict) else model(xb)
            loss = F.cross_entropy(out.logits if hasattr(out, "logits") else out, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, x, y: torch.Tensor) -> float:
    """Share of rows of `x` (a tensor or a dict of HF inputs) whose argmax logit is the label."""
    model.eval()
    out = model(**x) if isinstance(x, dict) else model(x)
    logits = out.logits if hasattr(out, "logits") else out
    return float((logits.argmax(-1) == y).float().mean())


class PositionalMLP(nn.Module):
    """Token + position embeddings, flattened, through a ReLU MLP trunk; `head` classifies and
    `mlm_head` predicts a masked token (the parent's pre-training objective)."""

    def __init__(self, vocab_size: int, seq_len: int, d_embed: int = 16, hidden: int = 128, n_classes: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_embed)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_len, d_embed))
        self.fc1 = nn.Linear(seq_len * d_embed, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_classes)
        self.mlm_head = nn.Linear(hidden + seq_len, vocab_size)

    def hidden_names(self) -> list[str]:
        """Names of the hidden layers."""
        return ["fc1", "fc2"]

    def trunk(self, ids: torch.Tensor) -> torch.Tensor:
        """Hidden features of token ids (token plus position embeddings through two ReLU layers)."""
        h = (self.tok(ids) + self.pos).flatten(1)
        return F.relu(self.fc2(F.relu(self.fc1(h))))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Class logits of token ids."""
        return self.head(self.trunk(ids))

    def mlm_logits(self, ids: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Token logits at position `where` of each row (the masked-LM head)."""
        onehot = F.one_hot(where, ids.shape[1]).float()
        return self.mlm_head(torch.cat([self.trunk(ids), onehot], -1))
