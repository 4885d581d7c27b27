"""Batched sampling with a KV cache for lmlab models.

Prompts of different lengths are left-padded; each sequence has its own stop tokens and budget.
`generate(...)` equals naive no-cache sampling (`generate_naive`) token for token under the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per sequence (the stop token included when hit)
    logprobs: list[list[float]]  # log-prob of each new token under the sampling distribution (temperature-scaled)
    finished: list[bool]  # stopped on a stop token (vs. ran out of budget)


def process_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """Return (scaled logits for log-probs, filtered logits for sampling)."""
    if temperature <= 0:
        return logits, logits
    scaled = logits / temperature
    filt = scaled
    if top_k is not None and top_k < filt.shape[-1]:
        kth = torch.topk(filt, top_k, dim=-1).values[..., -1:]
        filt = filt.masked_fill(filt < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = torch.sort(filt, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        remove = cum - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        filt = torch.full_like(filt, float("-inf")).scatter(-1, idx, sorted_logits)
    return scaled, filt


def sample_next(logits: torch.Tensor, temperature: float, top_k, top_p, generator):
    """logits: (B, V) float32 -> (token ids (B,), log-probs (B,))."""
    scaled, filt = process_logits(logits.float(), temperature, top_k, top_p)
    if temperature <= 0:
        nxt = filt.argmax(-1)
    else:
        probs = torch.softmax(filt, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    logp = torch.log_softmax(scaled, dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
    return nxt, logp


def _left_pad(prompts: list[list[int]], pad_id: int, device):
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, n - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, n - len(p):] = True
    return ids.to(device), mask.to(device)


def _budgets(max_new_tokens, b):
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * b
    if len(max_new_tokens) != b:
        raise ValueError(f"max_new_tokens has {len(max_new_tokens)} entries for {b} prompts")
    return list(max_new_tokens)


def _stops(stop_tokens, b):
    if stop_tokens is None:
        return [set() for _ in range(b)]
    if isinstance(stop_tokens, (set, frozenset)) or (stop_tokens and isinstance(next(iter(stop_tokens)), int)):
        return [set(stop_tokens) for _ in range(b)]
    return [set(s) for s in stop_tokens]


@torch.no_grad()
def generate(model: nn.Module, prompts: list[list[int]], max_new_tokens: int | list[int] = 32,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             stop_tokens=None, pad_id: int = 0, seed: int | None = None,
             generator: torch.Generator | None = None) -> Generation:
    """Sample continuations for a batch of token-id prompts with a KV cache.

    temperature 0 is greedy. stop_tokens: a set of ids for all sequences, or one set per sequence.
    """
    dev = next(model.parameters()).device
    b = len(prompts)
    budgets, stops = _budgets(max_new_tokens, b), _stops(stop_tokens, b)
    if generator is None:
        generator = torch.Generator(device=dev)
        generator.manual_seed(0 if seed is None else seed)
    ids, mask = _left_pad(prompts, pad_id, dev)
    max_new = max(budgets)
    was_training = model.training
    model.eval()
    cache = model.new_cache(b, ids.shape[1] + max_new)
    logits = model(ids, cache=cache, key_mask=mask)[:, -1]
    out = [[] for _ in range(b)]
    lps = [[] for _ in range(b)]
    done = [budgets[i] == 0 for i in range(b)]
    finished = [False] * b
    for _ in range(max_new):
        if all(done):
            break
        nxt, logp = sample_next(logits, temperature, top_k, top_p, generator)
        nl, pl = nxt.tolist(), logp.tolist()
        for i in range(b):
            if done[i]:
                continue
            out[i].append(nl[i])
            lps[i].append(pl[i])
            if nl[i] in stops[i]:
                done[i], finished[i] = True, True
            elif len(out[i]) >= budgets[i]:
                done[i] = True
        if all(done):
            break
        logits = model(nxt[:, None], cache=cache)[:, -1]
    model.train(was_training)
    return Generation(out, lps, finished)


@torch.no_grad()
def generate_naive(model: nn.Module, prompts: list[list[int]], max_new_tokens: int | list[int] = 32,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   stop_tokens=None, pad_id: int = 0, seed: int | None = None) -> Generation:
    """Reference sampler: re-runs the full forward on the whole sequence each step (no cache)."""
    dev = next(model.parameters()).device
    b = len(prompts)
    budgets, stops = _budgets(max_new_tokens, b), _stops(stop_tokens, b)
    generator = torch.Generator(device=dev)
    generator.manual_seed(0 if seed is None else seed)
    ids, mask = _left_pad(prompts, pad_id, dev)
    out = [[] for _ in range(b)]
    lps = [[] for _ in range(b)]
    done = [budgets[i] == 0 for i in range(b)]
    finished = [False] * b
    model.eval()
    for _ in range(max(budgets)):
        if all(done):
            break
        logits = model(ids, key_mask=mask)[:, -1]
        nxt, logp = sample_next(logits, temperature, top_k, top_p, generator)
        for i in range(b):
            if done[i]:
                continue
            out[i].append(int(nxt[i]))
            lps[i].append(float(logp[i]))
            if int(nxt[i]) in stops[i]:
                done[i], finished[i] = True, True
            elif len(out[i]) >= budgets[i]:
                done[i] = True
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool, device=dev)], 1)
    return Generation(out, lps, finished)
