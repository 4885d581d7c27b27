"""A HANS-like NLI task and a family of fine-tunes of one parent, for linear mode connectivity.

- `HansLikeNLI`: premise "the ADJ N1 V the N2"; entailed hypotheses drop the adjective, non-entailed ones
  swap subject and object (the lexical-overlap trap, HANS-LO-nonent analogue) or replace a noun. Training
  sees a fraction p of swaps; the diagnostic split is all swaps.
- `pretrain_parent` / `finetune_child`: a shared masked-token "pre-trained" `PositionalMLP` parent and
  fine-tunes that differ only in seed (data order, head init).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.classifier import PositionalMLP, train_classifier
from lmlab.utils import LmlabError, check_fraction


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
        check_fraction(p_swap=p_swap)
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
