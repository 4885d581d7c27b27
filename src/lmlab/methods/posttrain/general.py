"""A general-capability suite that is not the RL task, to measure forgetting.

* a synthetic "general language": text from a fixed random Markov chain over 16 letters (a sparse,
  low-entropy transition matrix, so a model can learn it well) — metric: held-out next-token loss (nats);
* copy: ``C<x>|<x>`` — repeat a random letter string (greedy exact match);
* recall: ``R<k1><v1>,<k2><v2>,...?<k>=<v>`` — look up the value of a key listed in context.

Documents are for pre-training mixtures; `evaluate_general` scores a model on fresh held-out documents.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from lmlab.rl import sample_completions
from lmlab.sft import forward_logits
from lmlab.utils import pad_batch

LETTERS = "abcdefghijklmnop"


@dataclass
class GeneralSuite:
    seed: int = 1234  # fixes the language (transition matrix), not the documents
    concentration: float = 0.3
    markov_len: tuple[int, int] = (16, 28)
    copy_len: tuple[int, int] = (4, 7)
    recall_pairs: tuple[int, int] = (3, 5)
    alphabet: str = LETTERS + "GCR|,?="
    weights: tuple[float, float, float] = (0.6, 0.2, 0.2)  # shares of Markov, copy and recall documents

    def __post_init__(self):
        gen = np.random.default_rng(self.seed)
        self.transition = gen.dirichlet([self.concentration] * len(LETTERS), size=len(LETTERS))
        self.start = gen.dirichlet([1.0] * len(LETTERS))

    # ------------------------------------------------------------------ documents
    def markov_text(self, rng: random.Random, length: int) -> str:
        """A letter sequence of `length` from the suite's Markov chain."""
        s = rng.choices(range(len(LETTERS)), self.start)[0]
        out = [s]
        for _ in range(length - 1):
            s = rng.choices(range(len(LETTERS)), self.transition[s])[0]
            out.append(s)
        return "".join(LETTERS[i] for i in out)

    def markov_doc(self, rng: random.Random) -> str:
        """A Markov document, marked 'G'."""
        return "G" + self.markov_text(rng, rng.randint(*self.markov_len))

    def copy_example(self, rng: random.Random) -> tuple[str, str]:
        """(prompt, answer) of a copy example: `C<letters>|` then the letters."""
        x = "".join(rng.choice(LETTERS) for _ in range(rng.randint(*self.copy_len)))
        return f"C{x}|", x

    def recall_example(self, rng: random.Random) -> tuple[str, str]:
        """(prompt, answer) of a key-value recall example."""
        keys = rng.sample(LETTERS, rng.randint(*self.recall_pairs))
        vals = [rng.choice(LETTERS) for _ in keys]
        i = rng.randrange(len(keys))
        ctx = ",".join(k + v for k, v in zip(keys, vals))
        return f"R{ctx}?{keys[i]}=", vals[i]

    def document(self, rng: random.Random, weights=None) -> str:
        """A general-capability document: Markov text, copy or recall, drawn by `weights` (default the suite's)."""
        kind = rng.choices(("markov", "copy", "recall"), weights or self.weights)[0]
        if kind == "markov":
            return self.markov_doc(rng)
        prompt, answer = self.copy_example(rng) if kind == "copy" else self.recall_example(rng)
        return prompt + answer

    def entropy_rate(self) -> float:
        """Stationary entropy rate of the chain (nats/token). Not the floor of `heldout_nll`: its documents
        are short and start from `self.start`, not from the stationary distribution (see `nll_floor`)."""
        evals, evecs = np.linalg.eig(self.transition.T)
        pi = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
        pi = pi / pi.sum()
        h = -(self.transition * np.log(np.clip(self.transition, 1e-300, None))).sum(1)
        return float((pi * h).sum())

    def nll_floor(self) -> float:
        """The loss the true generating process gets on general-language documents, per scored letter, as
        `heldout_nll` scores them (every letter after the `G` marker, the first one included): expected
        total entropy over expected letter count, for lengths uniform on `markov_len` — the first letter
        costs H(start) (≈ log 16 for the Dirichlet(1) start), later ones H(transition row) under the
        marginal start·P^t of that position. This is the floor a perfect model reaches."""
        h_row = -(self.transition * np.log(np.clip(self.transition, 1e-300, None))).sum(1)
        h_start = float(-(self.start * np.log(np.clip(self.start, 1e-300, None))).sum())
        lo, hi = self.markov_len
        per_pos = [h_start]  # expected entropy of the letter at position t
        p = self.start.copy()
        for _ in range(hi - 1):
            per_pos.append(float(p @ h_row))
            p = p @ self.transition
        cum = np.cumsum(per_pos)
        lengths = np.arange(lo, hi + 1)
        return float(np.mean(cum[lengths - 1]) / np.mean(lengths))


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def heldout_nll(model, codec, texts: list[str], batch_size: int = 64) -> float:
    """Mean next-token loss (nats) over the letters of `texts` (the leading type marker is context only)."""
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        seqs = [[codec.bos_id] + codec.encode(t) for t in texts[i:i + batch_size]]
        ids, mask = pad_batch(seqs, codec.pad_id)
        dev = next(model.parameters()).device
        ids, mask = ids.to(dev), mask.to(dev)
        logits = forward_logits(model, ids, mask).float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        m = mask[:, 1:].clone()
        m[:, 0] = False  # predicting the type marker right after BOS is not part of the language
        total += float(-(logp * m).sum())
        count += int(m.sum())
    return total / max(1, count)


@torch.no_grad()
def answer_nll(model, codec, examples: list[tuple[str, str]], batch_size: int = 64) -> float:
    """Mean loss (nats per letter) of the answers of (prompt, answer) examples given their prompts: a graded
    measure of in-context copying or recall that moves before greedy accuracy does."""
    total, count = 0.0, 0
    dev = next(model.parameters()).device
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        seqs = [[codec.bos_id] + codec.encode(p + a) for p, a in chunk]
        ids, mask = pad_batch(seqs, codec.pad_id)
        ids, mask = ids.to(dev), mask.to(dev)
        logp = torch.log_softmax(forward_logits(model, ids, mask)[:, :-1].float(), -1)
        logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        scored = torch.zeros_like(mask[:, 1:])
        for r, (p, a) in enumerate(chunk):  # target position t predicts token t + 1: the answer's letters
            start = len(codec.encode(p))  # BOS + prompt occupy positions 0..start; answer targets follow
            scored[r, start:start + len(codec.encode(a))] = True
        total += float(-(logp * scored).sum())
        count += int(scored.sum())
    return total / max(1, count)


def greedy_accuracy(model, codec, examples: list[tuple[str, str]], batch_size: int = 128) -> float:
    """Share of (prompt, answer) examples whose greedy completion is the answer."""
    prompts = [[codec.bos_id] + codec.encode(p) for p, _ in examples]
    max_new = max(len(codec.encode(a)) for _, a in examples) + 1
    outs = sample_completions(model, codec, prompts, max_new, temperature=0.0, batch_size=batch_size)
    return sum(o.strip() == a for o, (_, a) in zip(outs, examples)) / max(1, len(examples))


def evaluate_general(model, codec, suite: GeneralSuite, n: int = 128, seed: int = 99991) -> dict[str, float]:
    """Held-out next-token loss on fresh general-language text, copy and recall accuracy (greedy) and the loss of
    the copy and recall answers (`answer_nll`; uniform guessing scores log 16 = 2.77 nats)."""
    rng = random.Random(seed)
    texts = [suite.markov_doc(rng) for _ in range(n)]
    copies = [suite.copy_example(rng) for _ in range(n)]
    recalls = [suite.recall_example(rng) for _ in range(n)]
    nll = heldout_nll(model, codec, texts)
    return {"general_nll": nll, "copy_acc": greedy_accuracy(model, codec, copies),
            "recall_acc": greedy_accuracy(model, codec, recalls), "general_nll_floor": suite.nll_floor(),
            "copy_nll": answer_nll(model, codec, copies), "recall_nll": answer_nll(model, codec, recalls)}
