"""Multiple-choice QA as a cross-encoder: MiniLM reads (question ⊕ knowledge, choice) jointly, a linear head on the
[CLS] state scores each pair, and the whole model is fine-tuned with a softmax over the choices.

CoSe-Co's OpenBookQA test appends knowledge to the QA model's input; a frozen bi-encoder (`EncoderChoiceScorer`)
embeds question and knowledge into one vector and cannot read the knowledge, a cross-encoder attends across it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.hf import minilm_path
from lmlab.inputs import read_jsonl
from lmlab.methods.knowledge.coseco import MCItem


@dataclass(frozen=True)
class OBQAQuestion:
    stem: str
    choices: list[str]
    answer: int


def load_obqa(root: str | Path, split: str) -> list[OBQAQuestion]:
    """OpenBookQA `{split}.jsonl` under `root` (the openbookqa folder): question stem, choices, answer index."""
    path = Path(root) / f"{split}.jsonl"
    out = []
    for i, row in enumerate(read_jsonl(path, "OpenBookQA file"), 1):
        try:
            labels = [c["label"] for c in row["question"]["choices"]]
            out.append(OBQAQuestion(row["question"]["stem"], [c["text"] for c in row["question"]["choices"]],
                                    labels.index(row["answerKey"])))
        except (KeyError, TypeError, ValueError):
            raise LmlabError(f"{path}, line {i}: not an OpenBookQA record (question.stem, question.choices[label, "
                             "text] and answerKey, one of the labels, are needed)") from None
    if not out:
        raise LmlabError(f"{path} holds no questions")
    return out


@dataclass
class CrossEncoderConfig:
    max_len: int = 128  # tokens of (question ⊕ knowledge, choice); knowledge is cut first
    epochs: int = 1
    batch_questions: int = 4
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    seed: int = 0


class CrossEncoderQA(torch.nn.Module):
    """MiniLM (the packaged all-MiniLM-L6-v2, or `path`) with a linear scoring head on the [CLS] state."""

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer  # heavy: imported when the model is built

        path = str(path or minilm_path())
        self.encoder = AutoModel.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1)

    def encode(self, items: list[MCItem], max_len: int) -> dict:
        """Token ids of every (item, choice) pair, row i·C + c; only the first segment (question ⊕ knowledge) is
        truncated, from its end, so the knowledge goes before the question does."""
        firsts = [it.text for it in items for _ in it.choices]
        seconds = [c for it in items for c in it.choices]
        return self.tokenizer(firsts, seconds, truncation="only_first", max_length=max_len, padding=True,
                              return_tensors="pt")

    def forward(self, enc: dict, n_choices: int) -> torch.Tensor:
        device = self.head.weight.device
        hidden = self.encoder(**{k: v.to(device) for k, v in enc.items()}).last_hidden_state[:, 0]
        return self.head(hidden).view(-1, n_choices)


def _choices(items: list[MCItem]) -> int:
    n = {len(it.choices) for it in items}
    if len(n) != 1:
        raise LmlabError(f"all questions need the same number of choices, got {sorted(n)}")
    return n.pop()


def fine_tune(items: list[MCItem], answers: list[int], cfg: CrossEncoderConfig, device="cpu",
              path: str | Path | None = None, log=None) -> CrossEncoderQA:
    """Fine-tune a fresh cross-encoder (head init and data order from `cfg.seed`): AdamW, linear warmup then
    linear decay, cross-entropy over each question's choices."""
    if len(items) != len(answers) or not items:
        raise LmlabError(f"need one answer per question and at least one question, got {len(items)} questions and "
                         f"{len(answers)} answers")
    torch.manual_seed(cfg.seed)
    model = CrossEncoderQA(path).to(device)
    n_choices = _choices(items)
    steps = cfg.epochs * math.ceil(len(items) / cfg.batch_questions)
    warmup = max(1, int(cfg.warmup_frac * steps))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    gen = torch.Generator().manual_seed(cfg.seed)
    y_all = torch.tensor(answers)
    model.train()
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(items), generator=gen).tolist()
        for i in range(0, len(order), cfg.batch_questions):
            idx = order[i : i + cfg.batch_questions]
            logits = model(model.encode([items[j] for j in idx], cfg.max_len), n_choices)
            loss = F.cross_entropy(logits, y_all[idx].to(logits.device))
            if not torch.isfinite(loss):
                raise LmlabError(f"cross-encoder loss is {loss.item()} at step {step}: lower the learning rate "
                                 f"(lr={cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if log and (step % max(1, steps // 4) == 0 or step == steps):
                log(f"cross-encoder step {step}/{steps}: loss {loss.item():.3f}")
    model.eval()
    return model


@torch.no_grad()
def predict(model: CrossEncoderQA, items: list[MCItem], max_len: int, batch_questions: int = 16) -> np.ndarray:
    """The chosen choice index of each question."""
    model.eval()
    n_choices = _choices(items)
    out = [model(model.encode(items[i : i + batch_questions], max_len), n_choices).argmax(-1).cpu()
           for i in range(0, len(items), batch_questions)]
    return torch.cat(out).numpy()


def paired_accuracy_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, n: int = 1000, seed: int = 0) -> dict:
    """accuracy(b) − accuracy(a) on the same questions and its sampling noise: `n` resamples of the questions,
    the same for both. Returns the difference, the bootstrap sd and the 95 % percentile interval."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equal-length 1-d correctness vectors, got {a.shape} and {b.shape}")
    idx = np.random.default_rng(seed).integers(0, len(a), (n, len(a)))
    draws = (b[idx] - a[idx]).mean(1)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"delta": float(b.mean() - a.mean()), "sd": float(draws.std(ddof=1)), "lo": float(lo), "hi": float(hi),
            "n": n}
