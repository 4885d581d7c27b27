"""A small pre-norm encoder–decoder Transformer with SDPA attention, an incremental (KV-cached) decoder,
greedy and beam decoding, and optional attention-weight recording (for attention heatmaps).

Source embeddings can be passed in directly (`encode(src_embeds=...)`) so attribution methods can take
gradients with respect to them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Seq2SeqConfig:
    src_vocab: int
    tgt_vocab: int
    d_model: int = 128
    n_heads: int = 4
    enc_layers: int = 2
    dec_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.1
    max_len: int = 128
    pad_id: int = 0

    def to_dict(self) -> dict:
        """The config as a plain dict (saved beside the weights)."""
        return asdict(self)


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    """The (n, d) sinusoidal position table of the original Transformer."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return table


class Attention(nn.Module):
    def __init__(self, d: int, h: int, dropout: float):
        super().__init__()
        self.h, self.dropout = h, dropout
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.record = False
        self.weights: torch.Tensor | None = None  # (B, H, Tq, Tk) when recording

    def split(self, x):
        """(batch, positions, d) -> (batch, heads, positions, d_head)."""
        b, t, d = x.shape
        return x.view(b, t, self.h, d // self.h).transpose(1, 2)

    def kv(self, src):
        """The keys and values of `src`, split into heads."""
        return self.split(self.k_proj(src)), self.split(self.v_proj(src))

    def forward(self, x, k, v, mask=None, causal: bool = False):
        """mask: bool (B, 1, 1|Tq, Tk), True where attending is allowed."""
        q = self.split(self.q_proj(x))
        if self.record:
            s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if causal:
                s = s.masked_fill(
                    ~torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(), float("-inf")
                )
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            w = s.softmax(-1)
            self.weights = w
            out = F.dropout(w, self.dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=causal and mask is None,
                dropout_p=self.dropout if self.training else 0.0,
            )
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Sequential):
    def __init__(self, d, d_ff, dropout):
        super().__init__(nn.Linear(d, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.self_attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask):
        """One pre-norm encoder layer: self-attention, then the MLP, each residual."""
        h = self.ln1(x)
        x = x + self.drop(self.self_attn(h, *self.self_attn.kv(h), mask=mask))
        return x + self.drop(self.ff(self.ln2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.cross_attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cross_kv, src_mask, cache: dict | None = None):
        """One pre-norm decoder layer: causal self-attention (cached when `cache`), cross-attention, MLP."""
        h = self.ln1(x)
        k, v = self.self_attn.kv(h)
        if cache is not None:  # incremental decoding: append this step's keys/values
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        x = x + self.drop(self.self_attn(h, k, v, causal=cache is None))
        x = x + self.drop(self.cross_attn(self.ln2(x), *cross_kv, mask=src_mask))
        return x + self.drop(self.ff(self.ln3(x)))


class Seq2SeqTransformer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.src_emb = nn.Embedding(cfg.src_vocab, d, padding_idx=cfg.pad_id)
        self.tgt_emb = nn.Embedding(cfg.tgt_vocab, d, padding_idx=cfg.pad_id)
        self.register_buffer("pos_table", sinusoidal_positions(cfg.max_len, d), persistent=False)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.tgt_vocab, bias=False)
        self.out.weight = self.tgt_emb.weight
        self.drop = nn.Dropout(cfg.dropout)
        self.scale = math.sqrt(d)
        for name, p in self.named_parameters():
            if p.dim() > 1 and "emb" in name:  # emb·sqrt(d) then has unit scale, like the sinusoids
                nn.init.normal_(p, 0.0, d**-0.5)
            elif p.dim() > 1:  # Xavier, as in the original Transformer (0.02 is far too small at d=64)
                nn.init.xavier_uniform_(p)

    def positions(self, start: int, n: int) -> torch.Tensor:
        """Position encodings of positions start .. start + n - 1 (the table grows as needed)."""
        if start + n > self.pos_table.shape[0]:
            self.pos_table = sinusoidal_positions(2 * (start + n), self.cfg.d_model).to(self.pos_table.device)
        return self.pos_table[start : start + n]

    # ---- encoder
    def embed_source(self, src: torch.Tensor) -> torch.Tensor:
        """Source token embeddings (B, S, d): the input attribution methods differentiate against."""
        return self.src_emb(src)

    def source_mask(self, src: torch.Tensor) -> torch.Tensor:
        """(batch, 1, 1, S) mask of the non-padding source positions."""
        return (src != self.cfg.pad_id)[:, None, None, :]

    def encode(
        self,
        src: torch.Tensor | None = None,
        src_mask: torch.Tensor | None = None,
        src_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The encoder's memory of `src` (or of given source embeddings, for attributions)."""
        emb = self.embed_source(src) if src_embeds is None else src_embeds
        if src_mask is None:
            src_mask = self.source_mask(src)
        x = self.drop(emb * self.scale + self.positions(0, emb.shape[1]).to(emb.dtype))
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.enc_norm(x)

    # ---- decoder
    def cross_kv(self, memory):
        """Every decoder layer's cross-attention keys and values of `memory` (computed once)."""
        return [layer.cross_attn.kv(memory) for layer in self.decoder_layers]

    def decode(self, tgt_in, memory, src_mask, cross_kv=None, caches=None, start: int = 0):
        """Target logits given the memory; `caches` and `start` decode incrementally."""
        x = self.drop(self.tgt_emb(tgt_in) * self.scale + self.positions(start, tgt_in.shape[1]))
        cross_kv = cross_kv or self.cross_kv(memory)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, cross_kv[i], src_mask, None if caches is None else caches[i])
        return self.out(self.dec_norm(x))

    def forward(self, src, tgt_in, src_embeds=None):
        """Teacher-forced target logits of (src, tgt_in)."""
        mask = self.source_mask(src)
        return self.decode(tgt_in, self.encode(src, mask, src_embeds), mask)

    # ---- attention maps
    @contextlib.contextmanager
    def recording_attention(self):
        """Within this context every attention keeps its last attention map."""
        mods = [m for m in self.modules() if isinstance(m, Attention)]
        for m in mods:
            m.record = True
        try:
            yield
        finally:
            for m in mods:
                m.record = False

    def cross_attention(self) -> list[torch.Tensor]:
        """Per decoder layer (B, H, T_out, T_src), from the last forward run under `recording_attention`."""
        return [layer.cross_attn.weights for layer in self.decoder_layers]


# ---------------------------------------------------------------- decoding
@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, src, bos: int, eos: int, max_len: int) -> list[list[int]]:
    """Greedy target ids of each source row, up to `max_len` tokens or `eos`."""
    model.eval()
    mask = model.source_mask(src)
    memory = model.encode(src, mask)
    ckv = model.cross_kv(memory)
    caches = [{} for _ in model.decoder_layers]
    tok = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
    out, done = [], torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for t in range(min(max_len, model.cfg.max_len)):
        tok = model.decode(tok, memory, mask, ckv, caches, start=t)[:, -1].argmax(-1, keepdim=True)
        out.append(tok)
        done |= tok[:, 0] == eos
        if bool(done.all()):
            break
    return [_strip(row, eos) for row in torch.cat(out, 1).tolist()]


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    src,
    bos: int,
    eos: int,
    max_len: int,
    beam: int = 4,
    length_penalty: float = 0.6,
) -> list[list[int]]:
    """Batched beam search with KV caching; final hypotheses ranked by log-prob / ((5+len)/6)^alpha (GNMT)."""
    model.eval()
    b, k = src.shape[0], beam
    mask = model.source_mask(src)
    memory = model.encode(src, mask)
    memory, mask = memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    ckv = model.cross_kv(memory)
    caches = [{} for _ in model.decoder_layers]
    tok = torch.full((b * k, 1), bos, dtype=torch.long, device=src.device)
    scores = torch.full((b, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0
    seqs = torch.empty((b * k, 0), dtype=torch.long, device=src.device)
    finished = torch.zeros(b * k, dtype=torch.bool, device=src.device)
    lengths = torch.zeros(b * k, device=src.device)
    for t in range(min(max_len, model.cfg.max_len)):
        logp = model.decode(tok, memory, mask, ckv, caches, start=t)[:, -1].float().log_softmax(-1)
        v = logp.shape[-1]
        logp[finished] = float("-inf")
        logp[finished, eos] = 0.0  # a finished hypothesis only continues with (free) padding
        cand = (scores.view(-1, 1) + logp).view(b, k * v)
        scores, idx = cand.topk(k, dim=-1)
        src_beam = (torch.arange(b, device=src.device)[:, None] * k + idx // v).view(-1)
        tok = (idx % v).view(-1, 1)
        seqs = torch.cat([seqs[src_beam], tok], 1)
        lengths = lengths[src_beam] + (~finished[src_beam]).float()
        finished = finished[src_beam] | (tok[:, 0] == eos)
        for c in caches:
            c["k"], c["v"] = c["k"][src_beam], c["v"][src_beam]
        if bool(finished.all()):
            break
    norm = scores.view(-1) / (((5 + lengths) / 6) ** length_penalty)
    best = norm.view(b, k).argmax(-1) + torch.arange(b, device=src.device) * k
    return [_strip(seqs[i].tolist(), eos) for i in best.tolist()]


def _strip(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids
