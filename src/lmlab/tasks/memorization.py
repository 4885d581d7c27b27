"""Model families with planted memorization and a HANS-like NLI task, for the information-measure and
linear-connectivity analyses.

- `circles`: concentric circles plus one spurious feature whose sign equals the label for a fraction
  α of training points (heuristic memorization) and/or a fraction β of labels redrawn (example-level).
- `sentiment_text`: token sequences labelled by the majority of positive vs negative lexicon words, with a
  shortcut token at position 1 that agrees with the label for a fraction α (and β shuffled labels).
- `HansLikeNLI`: premise "the ADJ N1 V the N2"; entailed hypotheses drop the adjective, non-entailed ones
  swap subject and object (the lexical-overlap trap, HANS-LO-nonent analogue) or replace a noun. Training
  sees a fraction p of swaps; the diagnostic split is all swaps.
- `PositionalMLP` + `pretrain_parent` / `finetune_child`: a small order-aware classifier, a shared
  masked-token "pre-trained" parent and fine-tunes that differ only in seed (data order, head init).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.utils import LmlabError


def _check_frac(**kw) -> None:
    for k, v in kw.items():
        if not 0.0 <= v <= 1.0:
            raise LmlabError(f"{k}={v} must be a fraction in [0, 1]")


def shuffle_labels(y: np.ndarray, beta: float, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Redraw a fraction β of labels uniformly over the classes (flip rate β·(1−1/C))."""
    y = y.copy()
    idx = rng.random(len(y)) < beta
    y[idx] = rng.integers(0, n_classes, idx.sum())
    return y


# ============================================================================ circles
def circles(n: int, alpha: float = 0.0, beta: float = 0.0, seed: int = 0, noise: float = 0.05,
            factor: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(X (n, 3) float, y (n,) long): 2-D circles + a spurious feature (±1 matching the label w.p. α)."""
    from sklearn.datasets import make_circles

    _check_frac(alpha=alpha, beta=beta)
    rng = np.random.default_rng(seed)
    xy, y = make_circles(n, noise=noise, factor=factor, random_state=seed)
    sign = np.where(rng.random(n) < alpha, 2 * y - 1, rng.choice([-1, 1], n))
    spur = sign + 0.1 * rng.standard_normal(n)
    y = shuffle_labels(y, beta, 2, rng)
    return torch.tensor(np.c_[xy, spur], dtype=torch.float32), torch.tensor(y, dtype=torch.long)


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
        return [f"fc{i + 1}" for i in range(self.depth)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
    model.eval()
    out = model(**x) if isinstance(x, dict) else model(x)
    logits = out.logits if hasattr(out, "logits") else out
    return float((logits.argmax(-1) == y).float().mean())


# ============================================================================ text with a shortcut
TEXT_SPECIALS = ("<cls>", "<sc_neg>", "<sc_pos>")


def sentiment_text(n: int, alpha: float = 0.0, beta: float = 0.0, seed: int = 0, length: int = 12,
                   n_lex: int = 8, n_neutral: int = 16) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids (n, length), labels, vocab size). Token 0 is <cls>, position 1 the shortcut token, then
    an odd number of lexicon words (label = positive majority) among neutral filler words."""
    _check_frac(alpha=alpha, beta=beta)
    rng = np.random.default_rng(seed)
    pos0 = len(TEXT_SPECIALS)
    neg0, neu0 = pos0 + n_lex, pos0 + 2 * n_lex
    vocab = neu0 + n_neutral
    ids = rng.integers(neu0, vocab, (n, length))
    ids[:, 0] = 0
    n_sent = rng.choice([1, 3, 5], n)
    y = np.zeros(n, dtype=np.int64)
    for r in range(n):
        k = n_sent[r]
        n_pos = rng.integers(0, k + 1)
        y[r] = int(n_pos > k - n_pos)
        slots = rng.choice(np.arange(2, length), k, replace=False)
        words = np.r_[rng.integers(pos0, neg0, n_pos), rng.integers(neg0, neu0, k - n_pos)]
        ids[r, slots] = words
    agree = rng.random(n) < alpha
    ids[:, 1] = np.where(agree, 1 + y, 1 + rng.integers(0, 2, n))
    y = shuffle_labels(y, beta, 2, rng)
    return torch.tensor(ids), torch.tensor(y), vocab


# ============================================================================ HANS-like NLI
class HansLikeNLI:
    """Premise "the ADJ N1 V the N2" [sep] hypothesis; label 0 = entailment, 1 = non-entailment."""

    SPECIALS = ("<pad>", "<cls>", "<sep>", "<mask>", "the")
    NOUNS = ("cat", "dog", "lawyer", "doctor", "artist", "judge", "student", "actor", "banker", "poet")
    VERBS = ("saw", "helped", "called", "paid", "met", "thanked")
    ADJS = ("old", "young", "tall", "happy", "famous")
    SEQ_LEN = 13  # <cls> + 6 premise + <sep> + 5 hypothesis

    def __init__(self):
        self.words = list(self.SPECIALS + self.NOUNS + self.VERBS + self.ADJS)
        self.id = {w: i for i, w in enumerate(self.words)}
        self.vocab_size = len(self.words)
        self.mask_id = self.id["<mask>"]

    def _sample(self, rng: np.random.Generator, kind: str) -> tuple[list[str], list[str], int]:
        n1, n2, n3 = rng.choice(self.NOUNS, 3, replace=False)
        v, adj = rng.choice(self.VERBS), rng.choice(self.ADJS)
        prem = ["the", adj, n1, v, "the", n2]
        if kind == "entail":
            return prem, ["the", n1, v, "the", n2], 0
        if kind == "swap":
            return prem, ["the", n2, v, "the", n1], 1
        if kind == "new_noun":
            return prem, (["the", n1, v, "the", n3] if rng.random() < 0.5 else ["the", n3, v, "the", n2]), 1
        raise LmlabError(f"unknown example kind {kind!r}")

    def sample(self, n: int, p_swap: float = 0.0, split: str = "train", seed: int = 0):
        """split: "train" (fraction p_swap of swaps, the rest half entailed, half new-noun), "id"
        (entailed / new-noun only) or "diagnostic" (all swaps: overlap is complete, label non-entailed).
        Returns (ids (n, 13), labels, [(premise, hypothesis) strings])."""
        _check_frac(p_swap=p_swap)
        if split not in ("train", "id", "diagnostic"):
            raise LmlabError(f"unknown split {split!r}; choose train, id or diagnostic")
        rng = np.random.default_rng(seed)
        rows, labels, texts = [], [], []
        for _ in range(n):
            if split == "diagnostic" or (split == "train" and rng.random() < p_swap):
                kind = "swap"
            else:
                kind = "entail" if rng.random() < 0.5 else "new_noun"
            prem, hyp, lab = self._sample(rng, kind)
            rows.append([self.id[w] for w in ["<cls>", *prem, "<sep>", *hyp]])
            labels.append(lab)
            texts.append((" ".join(prem), " ".join(hyp)))
        return torch.tensor(rows), torch.tensor(labels), texts


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
        return ["fc1", "fc2"]

    def trunk(self, ids: torch.Tensor) -> torch.Tensor:
        h = (self.tok(ids) + self.pos).flatten(1)
        return F.relu(self.fc2(F.relu(self.fc1(h))))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(ids))

    def mlm_logits(self, ids: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(where, ids.shape[1]).float()
        return self.mlm_head(torch.cat([self.trunk(ids), onehot], -1))


def pretrain_parent(task: HansLikeNLI, steps: int = 300, batch_size: int = 128, lr: float = 3e-3,
                    seed: int = 0, **model_kw) -> PositionalMLP:
    """A shared parent: masked-token prediction on unlabeled premise/hypothesis pairs (swaps included,
    so the parent has seen every word order). Same-init is what makes connectivity meaningful."""
    torch.manual_seed(seed)
    model = PositionalMLP(task.vocab_size, task.SEQ_LEN, **model_kw)
    ids, _, _ = task.sample(steps * batch_size // 4, p_swap=0.5, seed=seed + 10_000)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    content = torch.tensor([p for p in range(1, task.SEQ_LEN) if p != 7])  # not <sep>
    for _ in range(steps):
        idx = torch.randint(0, len(ids), (batch_size,), generator=g)
        x = ids[idx].clone()
        where = content[torch.randint(0, len(content), (batch_size,), generator=g)]
        target = x[torch.arange(batch_size), where]
        x[torch.arange(batch_size), where] = task.mask_id
        loss = F.cross_entropy(model.mlm_logits(x, where), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model


def finetune_child(parent: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = 8,
                   batch_size: int = 64, lr: float = 2e-3, new_head: bool = True) -> nn.Module:
    """A fine-tune of `parent`: the seed sets the data order and, with new_head, the classifier-head init
    (new_head=False keeps the parent's head, so children differ only in data order)."""
    child = copy.deepcopy(parent)
    torch.manual_seed(seed)
    if new_head:
        child.head.reset_parameters()
    train_classifier(child, x, y, epochs, lr=lr, batch_size=batch_size, seed=seed)
    return child
