"""CALM: compose a frozen anchor model with a frozen augmenting model through learned cross-attention.

Per connection (augmenting layer i -> anchor layer j): a projection f_proj: D_A -> D_B and a multi-head
cross-attention whose queries come from the anchor's hidden state at layer j and whose keys/values come
from the projected augmenting state at layer i; the result is added to the anchor's residual stream
(H_j <- H_j + f_cross(f_proj(H_A^i), H_j)). The output projection starts at zero, so the composed model
equals the anchor at initialisation. Cross-attention is causal (anchor position t reads augmenting
positions <= t) and ignores padding — the official code leaks future tokens here.

Both base models see the same growing sequence ("iterative decoding"); `augment_sees="prefix"` gives the
paper's weaker "augmenting model as encoder" ablation. Works for lmlab GPTs and local HF decoder models.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.generate import left_pad
from lmlab.hf import decoder_layers, hidden_size
from lmlab.lengths import check_length
from lmlab.utils import LmlabError, atomic_write_bytes


def n_layers_of(model: nn.Module) -> int:
    return len(decoder_layers(model))


def n_heads_of(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "n_heads"):
        return cfg.n_heads
    c = model.config
    return getattr(c, "num_attention_heads", None) or c.n_head


def evenly_spaced(n_a: int, n_b: int, n: int) -> list[tuple[int, int]]:
    """n (augmenting layer, anchor layer) pairs, evenly spaced (stride N/n) and ending at each model's last layer."""
    if n < 1 or n > min(n_a, n_b):
        raise LmlabError(f"n_connections={n} must be between 1 and min(layers)={min(n_a, n_b)}")
    la = [int(math.floor(n_a - 1 - k * n_a / n)) for k in range(n)][::-1]
    lb = [int(math.floor(n_b - 1 - k * n_b / n)) for k in range(n)][::-1]
    return list(zip(la, lb))


def parse_connections(spec: str) -> list[tuple[int, int]]:
    """"2:0,2:1" -> [(2, 0), (2, 1)] (augmenting layer : anchor layer, 0-based)."""
    try:
        return [tuple(int(x) for x in pair.split(":")) for pair in spec.split(",") if pair.strip()]
    except ValueError as e:
        raise LmlabError(f"bad connections {spec!r}: write pairs AUG:ANCHOR separated by commas, e.g. 2:0,2:1") from e


class CrossBridge(nn.Module):
    """f_proj (D_A -> D_B) and multi-head cross-attention (anchor queries, augmenting keys/values)."""

    def __init__(self, d_aug: int, d_anchor: int, n_heads: int):
        super().__init__()
        if d_anchor % n_heads:
            raise LmlabError(f"anchor width {d_anchor} is not divisible by {n_heads} cross-attention heads")
        self.n_heads = n_heads
        self.proj = nn.Linear(d_aug, d_anchor, bias=False)
        self.q = nn.Linear(d_anchor, d_anchor, bias=False)
        self.k = nn.Linear(d_anchor, d_anchor, bias=False)
        self.v = nn.Linear(d_anchor, d_anchor, bias=False)
        self.o = nn.Linear(d_anchor, d_anchor, bias=False)
        for lin in (self.proj, self.q, self.k, self.v):
            nn.init.normal_(lin.weight, std=1.0 / math.sqrt(lin.in_features))
        nn.init.zeros_(self.o.weight)

    def forward(self, h_anchor: torch.Tensor, h_aug: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h_anchor (B,T,D_B), h_aug (B,S,D_A), mask (B,1,T,S) bool -> residual update (B,T,D_B)."""
        b, t, d = h_anchor.shape
        a = self.proj(h_aug.to(self.proj.weight.dtype))
        hd = d // self.n_heads

        def split(x):
            return x.view(b, x.shape[1], self.n_heads, hd).transpose(1, 2)

        q = split(self.q(h_anchor.to(self.q.weight.dtype)))
        y = F.scaled_dot_product_attention(q, split(self.k(a)), split(self.v(a)), attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(b, t, d)).to(h_anchor.dtype)


def _is_lmlab(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "cfg")


@contextlib.contextmanager
def _layer_output_hook(model: nn.Module, layer: int, fn):
    """Call fn(hidden) on the output hidden state of decoder layer `layer`; a returned tensor replaces it.
    HF decoder layers return a tensor or a tuple depending on the transformers version: handle both."""
    if _is_lmlab(model):
        mod = model.blocks[layer].hook_resid_post

        def hook(m, i, out):
            return fn(out)
    else:
        mod = decoder_layers(model)[layer]

        def hook(m, i, out):
            if isinstance(out, tuple):
                new = fn(out[0])
                return out if new is None else (new,) + tuple(out[1:])
            return fn(out)
    h = mod.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


class _BaseRunner:
    """Runs an lmlab GPT or an HF causal LM on new tokens, with its own KV cache when decoding."""

    def __init__(self, model: nn.Module, batch: int, max_len: int | None):
        self.model = model
        self.lmlab = _is_lmlab(model)
        self.cache = model.new_cache(batch, max_len) if (self.lmlab and max_len) else None
        self.pkv = None
        self.use_cache = max_len is not None
        self.mask_so_far = None

    def __call__(self, ids: torch.Tensor, key_mask: torch.Tensor | None):
        if self.lmlab:
            return self.model(ids, cache=self.cache, key_mask=key_mask)
        km = torch.ones_like(ids, dtype=torch.bool) if key_mask is None else key_mask
        self.mask_so_far = km if (self.mask_so_far is None or not self.use_cache) else torch.cat([self.mask_so_far, km], 1)
        am = self.mask_so_far.long()
        # transformers >= 5.x names the cache argument `cache`; older releases `past_key_values`
        kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        out = self.model(input_ids=ids, attention_mask=am, use_cache=self.use_cache, **{kw: self.pkv})
        self.pkv = getattr(out, kw, None) if self.use_cache else None
        return out.logits


@dataclass
class _DecodeState:
    anchor: _BaseRunner
    augment: _BaseRunner
    aug_states: list[torch.Tensor | None]  # per connection, augmenting hidden states so far (B, S, D_A)
    aug_valid: torch.Tensor | None  # (B, S) validity of augmenting positions


class ComposedModel(nn.Module):
    """anchor ⊕ augment with trainable cross-attention bridges; only `bridges` has trainable parameters."""

    def __init__(self, anchor: nn.Module, augment: nn.Module, connections: list[tuple[int, int]],
                 n_heads: int | None = None, augment_sees: str = "sequence", position_aligned: bool = False):
        super().__init__()
        if augment_sees not in ("sequence", "prefix"):
            raise LmlabError(f"augment_sees must be 'sequence' or 'prefix', got {augment_sees!r}")
        na, nb = n_layers_of(augment), n_layers_of(anchor)
        for i, j in connections:
            if not (0 <= i < na and 0 <= j < nb):
                raise LmlabError(f"connection ({i}, {j}) out of range: augment has {na} layers, anchor {nb}")
        self.anchor, self.augment = anchor, augment
        for m in (anchor, augment):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        self.connections = [tuple(c) for c in connections]
        self.augment_sees = augment_sees
        self.position_aligned = position_aligned
        heads = n_heads or n_heads_of(anchor)
        self.bridges = nn.ModuleList(CrossBridge(hidden_size(augment), hidden_size(anchor), heads)
                                     for _ in connections)
        dev = next(anchor.parameters()).device
        self.bridges.to(dev)

    def train(self, mode: bool = True):
        super().train(mode)
        self.anchor.eval()
        self.augment.eval()  # frozen models stay in eval mode (no dropout)
        return self

    def bridge_parameters(self):
        return list(self.bridges.parameters())

    def num_bridge_params(self) -> int:
        return sum(p.numel() for p in self.bridge_parameters())

    @staticmethod
    def expected_bridge_params(n: int, d_aug: int, d_anchor: int) -> int:
        """n·(D_A·D_B + 3·D_B²) (the paper's count: projection + Q/K/V) plus n·D_B² for the output projections."""
        return n * (d_aug * d_anchor + 3 * d_anchor**2) + n * d_anchor**2

    # ---------------------------------------------------------------- forward
    def _cross_mask(self, t_new: int, s_total: int, offset: int, valid: torch.Tensor | None,
                    prefix_len: int | torch.Tensor | None, device) -> torch.Tensor:
        """(B or 1, 1, T, S): anchor position offset+i reads augmenting positions <= offset+i (valid only).
        With augment_sees="prefix" every anchor position reads augmenting positions < prefix_len, where
        prefix_len is one length for the batch or one per row (B,)."""
        q = offset + torch.arange(t_new, device=device)
        s = torch.arange(s_total, device=device)
        if self.position_aligned:  # projection-only ablation: one key, so the bridge is a linear map
            allowed = (s[None, :] == q[:, None])[None, None]
        elif self.augment_sees == "prefix":
            pl = torch.as_tensor(prefix_len, device=device)
            if pl.dim() == 0:
                allowed = (s[None, :] < pl).expand(t_new, -1)[None, None]
            else:  # per row: row b reads its own prompt, s < prefix_len[b]
                allowed = (s[None, :] < pl[:, None])[:, None, None, :].expand(-1, 1, t_new, -1)
        else:
            allowed = (s[None, :] <= q[:, None])[None, None]
        if valid is not None:
            allowed = allowed & valid[:, None, None, :]
            allowed = allowed | (~valid.any(1))[:, None, None, None]  # all-padding rows: avoid NaN
        return allowed

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                prefix_len: int | torch.Tensor | None = None):
        """Teacher-forced forward over the whole sequence: logits, or the mean loss when targets are given
        (targets use -100 for positions without loss). `prefix_len`: with augment_sees="prefix", the number of
        leading tokens the augmenting model may read — one int for the batch, or a (B,) tensor with each row's
        own prompt length (right-padded batches of prompts of different lengths)."""
        for m in (self.anchor, self.augment):
            check_length(m, idx.shape[1])
        if self.augment_sees == "prefix":
            if prefix_len is None:
                raise LmlabError("augment_sees='prefix' needs prefix_len")
            pl = torch.as_tensor(prefix_len)
            if pl.dim() > 1 or (pl.dim() == 1 and pl.shape[0] != idx.shape[0]):
                raise LmlabError(f"prefix_len must be an int or one length per row ({idx.shape[0]}), "
                                 f"got shape {tuple(pl.shape)}")
            if int(pl.min()) < 1:
                raise LmlabError("prefix_len must be at least 1 (the augmenting model needs a token to read)")
            # the augmenting model is causal, so its states at positions < prefix_len[b] depend on row b's
            # prompt only; the cross mask keeps each row to its own prefix
            aug_ids = idx[:, :int(pl.max())]
        else:
            aug_ids = idx
        aug_mask = key_mask[:, :aug_ids.shape[1]] if key_mask is not None else None
        states = self._augment_states(_BaseRunner(self.augment, idx.shape[0], None), aug_ids, aug_mask)
        mask = self._cross_mask(idx.shape[1], aug_ids.shape[1], 0, aug_mask, prefix_len, idx.device)
        logits = self._anchor_pass(_BaseRunner(self.anchor, idx.shape[0], None), idx, key_mask, states, mask)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def _augment_states(self, runner: _BaseRunner, ids, key_mask) -> list[torch.Tensor]:
        store: dict[int, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            for i in sorted({c[0] for c in self.connections}):
                stack.enter_context(_layer_output_hook(self.augment, i, lambda h, _i=i: store.__setitem__(_i, h)))
            runner(ids, key_mask)
        return [store[i] for i, _ in self.connections]

    def _anchor_pass(self, runner: _BaseRunner, ids, key_mask, aug_states, mask):
        with contextlib.ExitStack() as stack:
            for (_, j), bridge, h_a in zip(self.connections, self.bridges, aug_states):
                stack.enter_context(_layer_output_hook(
                    self.anchor, j, lambda h, _b=bridge, _a=h_a: h + _b(h, _a, mask)))
            return runner(ids, key_mask)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int = 16, stop_token: int | None = None,
                 pad_id: int = 0, use_cache: bool = True) -> list[list[int]]:
        """Greedy decoding. Both base models re-read the growing sequence; with use_cache each keeps its own
        KV cache and the augmenting states are kept in a growing buffer (never a shared cache)."""
        dev = next(self.anchor.parameters()).device
        ids, mask = left_pad(prompts, pad_id, dev)
        for m in (self.anchor, self.augment):
            check_length(m, ids.shape[1] + max_new_tokens, "a prompt with its new tokens")
        b = ids.shape[0]
        out = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        if not use_cache:
            seq, m = ids, mask
            for _ in range(max_new_tokens):
                plen = ids.shape[1] if self.augment_sees == "prefix" else None
                nxt = self.forward(seq, key_mask=m, prefix_len=plen)[:, -1].argmax(-1)
                if self._record(out, nxt, done, stop_token):
                    break
                seq = torch.cat([seq, nxt[:, None]], 1)
                m = torch.cat([m, torch.ones(b, 1, dtype=torch.bool, device=dev)], 1)
            return out
        total = ids.shape[1] + max_new_tokens
        st = _DecodeState(_BaseRunner(self.anchor, b, total), _BaseRunner(self.augment, b, total),
                          [None] * len(self.connections), None)
        new, new_mask, offset = ids, mask, 0
        for step in range(max_new_tokens):
            if self.augment_sees == "sequence" or step == 0:
                fresh = self._augment_states(st.augment, new, new_mask)
                st.aug_states = [f if s is None else torch.cat([s, f], 1) for s, f in zip(st.aug_states, fresh)]
                nm = new_mask if new_mask is not None else torch.ones(new.shape, dtype=torch.bool, device=dev)
                st.aug_valid = nm if st.aug_valid is None else torch.cat([st.aug_valid, nm], 1)
            mask4 = self._cross_mask(new.shape[1], st.aug_valid.shape[1], offset, st.aug_valid,
                                     ids.shape[1], dev)
            nxt = self._anchor_pass(st.anchor, new, new_mask, st.aug_states, mask4)[:, -1].argmax(-1)
            if self._record(out, nxt, done, stop_token):
                break
            offset += new.shape[1]
            new, new_mask = nxt[:, None], None
        return out

    @staticmethod
    def _record(out, nxt, done, stop_token) -> bool:
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                out[i].append(t)
                if stop_token is not None and t == stop_token:
                    done[i] = True
        return bool(done.all())

    # ---------------------------------------------------------------- save / load
    def save_bridges(self, path: str | Path, anchor_ref: str = "", augment_ref: str = "", extra: dict | None = None):
        """Save only the composition parameters, with references to the two base checkpoints."""
        buf = io.BytesIO()
        torch.save({"bridges": self.bridges.state_dict(), "connections": self.connections,
                    "augment_sees": self.augment_sees, "position_aligned": self.position_aligned,
                    "n_heads": self.bridges[0].n_heads,
                    "anchor": anchor_ref, "augment": augment_ref, "extra": extra or {}}, buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load_bridges(cls, path: str | Path, anchor: nn.Module, augment: nn.Module) -> "ComposedModel":
        p = Path(path)
        if not p.exists():
            raise LmlabError(f"composition checkpoint {p} not found")
        try:
            blob = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise LmlabError(f"{p} is not a readable composition checkpoint: {e}") from e
        m = cls(anchor, augment, [tuple(c) for c in blob["connections"]], blob["n_heads"], blob["augment_sees"],
                blob.get("position_aligned", False))
        try:
            m.bridges.load_state_dict(blob["bridges"])
        except RuntimeError as e:
            raise LmlabError(f"{p} does not match these base models (widths/connections differ): {e}") from e
        return m


def check_same_tokenizer(tok_a, tok_b) -> None:
    """Refuse to compose models whose tokenizers differ (positions and ids must line up); the refusal names both
    tokenizers (class, vocabulary size) and one token they disagree on."""
    def vocab(t):
        if hasattr(t, "get_vocab"):
            return t.get_vocab()
        if hasattr(t, "stoi"):
            return dict(t.stoi)
        if hasattr(t, "tok"):
            return t.tok.get_vocab()
        raise LmlabError(f"cannot read the vocabulary of tokenizer {type(t).__name__}")

    va, vb = vocab(tok_a), vocab(tok_b)
    if va == vb:
        return
    by_id = sorted(set(va.items()) ^ set(vb.items()), key=lambda kv: (kv[1], kv[0]))
    token = by_id[0][0]

    def where(v):
        return f"id {v[token]}" if token in v else "absent"

    def name(t, v):  # lmlab's HFCodec wraps a transformers tokenizer: name that one
        return f"{type(t.tok if type(t).__name__ == 'HFCodec' else t).__name__} ({len(v)} tokens)"

    raise LmlabError(f"the anchor and augmenting tokenizers differ: anchor {name(tok_a, va)}, augment "
                     f"{name(tok_b, vb)}; e.g. token {token!r} is {where(va)} in the anchor's and {where(vb)} in the "
                     "augment's. CALM needs both models to tokenise identically; pass a shared tokenizer (e.g. "
                     "--tokenizer) or use a same-family model pair")


def compose(anchor: nn.Module, augment: nn.Module, n_connections: int | None = None,
            connections: list[tuple[int, int]] | None = None, n_heads: int | None = None,
            augment_sees: str = "sequence", tokenizers: tuple | None = None,
            position_aligned: bool = False) -> ComposedModel:
    """Build anchor ⊕ augment. Default wiring: every 4th augmenting layer (the paper), evenly spaced on both
    models; or `n_connections` evenly spaced pairs; or explicit `connections` [(augment layer, anchor layer)].
    The two models become the frozen parts of the composition: their parameters are set to requires_grad=False
    and they are put in eval mode, in place (their weights are never changed)."""
    if tokenizers is not None:
        check_same_tokenizer(*tokenizers)
    va = getattr(getattr(anchor, "cfg", None), "vocab_size", None) or getattr(anchor.config, "vocab_size", None)
    vb = getattr(getattr(augment, "cfg", None), "vocab_size", None) or getattr(augment.config, "vocab_size", None)
    if tokenizers is None and va != vb:
        raise LmlabError(f"anchor vocab {va} != augmenting vocab {vb}: the models do not share a tokenizer; "
                         "CALM needs a shared tokenizer")
    if connections is None:
        na, nb = n_layers_of(augment), n_layers_of(anchor)
        n = n_connections or max(1, na // 4)
        connections = evenly_spaced(na, nb, n)
    return ComposedModel(anchor, augment, connections, n_heads, augment_sees, position_aligned)
