"""InterpretLR-style attributions through Captum, for classifiers, taggers, seq2seq and causal LMs.

Every attribution is a matrix [T_out × T_src]: row t explains output t (a generated token under teacher
forcing, a tag, or a class) in terms of the source tokens. Gradient methods differentiate the output's
log-probability with respect to the source token embeddings, as InterpretLR did:

- `integrated_gradients`, `saliency`, `input_x_gradient`: Captum on the embeddings (zero-embedding baseline);
- `feature_ablation` / `occlusion`: replace one token's (or a window's) embedding by the baseline;
- `layer_conductance`: Captum LayerConductance at an encoder layer's output;
- `attention`: cross-attention (seq2seq) or attention to the prompt (causal LM), mean over heads/layers.

Per token, gradient attributions are summed over the embedding dimensions (signed, as InterpretLR did).
`agreement()` scores a matrix against human rationales/alignments (hit@k, average precision, Spearman);
`heatmap_figure()`/`save_heatmap()` draw output×source heatmaps and `html_view()` a small HTML page.
"""

from __future__ import annotations

import html as _html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lmlab.hf import decoder_layers
from lmlab.utils import LmlabError, atomic_write_png, atomic_write_text

METHODS = (
    "integrated_gradients",
    "saliency",
    "input_x_gradient",
    "feature_ablation",
    "occlusion",
    "layer_conductance",
    "attention",
)


@dataclass
class Explainable:
    """What the attribution methods need from one example, whatever the model family.

    `score(embeds (N, S, d), out_pos (N,), *extra)` returns log-probabilities (N, C) of the output at
    position `out_pos[i]` (extra tensors have batch size 1 and are expanded to N). `targets[t]` is the class
    (token/tag id) explained at output t. `layers` are modules whose (N, S, d) outputs LayerConductance can
    use; `attention()` returns a [T_out × S] map or None.
    """

    embeds: torch.Tensor  # (1, S, d)
    targets: list[int]
    score: Callable[..., torch.Tensor]
    extra: tuple = ()
    layers: list[nn.Module] = field(default_factory=list)
    attention: Callable[[], torch.Tensor] | None = None
    src_labels: list[str] = field(default_factory=list)
    out_labels: list[str] = field(default_factory=list)
    layer_cols: slice | None = None  # source columns of a layer's output (causal LMs: the prompt part)

    @property
    def n_out(self) -> int:
        """Number of explained output tokens."""
        return len(self.targets)

    def rows(self):
        """Inputs expanded to one row per output position, and the matching forward args."""
        n = self.n_out
        emb = self.embeds.detach().expand(n, *self.embeds.shape[1:]).clone().requires_grad_()
        pos = torch.arange(n, device=emb.device)
        extra = tuple(x.expand(n, *x.shape[1:]) if torch.is_tensor(x) else x for x in self.extra)
        return emb, (pos, *extra)


@dataclass
class Attribution:
    method: str
    matrix: np.ndarray  # (T_out, S)
    delta: np.ndarray | None = None  # IG convergence delta per output (completeness gap)


def attribute(
    expl: Explainable,
    method: str,
    n_steps: int = 50,
    layer: int = 0,
    window: int = 2,
    internal_batch_size: int | None = None,
) -> Attribution:
    """One [T_out × S] attribution matrix for `expl` by `method` (see METHODS)."""
    # heavy: captum is imported only when attributions are computed
    from captum.attr import (
        FeatureAblation,
        InputXGradient,
        IntegratedGradients,
        LayerConductance,
        Occlusion,
        Saliency,
    )

    if method not in METHODS:
        raise LmlabError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    if method == "attention":
        if expl.attention is None:
            raise LmlabError(
                "this model exposes no attention weights (e.g. a BiLSTM tagger): pick a gradient method"
            )
        return Attribution(method, expl.attention().detach().float().cpu().numpy())
    emb, args = expl.rows()
    base = torch.zeros_like(emb)
    fwd = expl.score
    tgt = list(expl.targets)
    delta = None
    with torch.enable_grad():
        if method == "integrated_gradients":
            attr, d = IntegratedGradients(fwd).attribute(
                emb,
                base,
                target=tgt,
                additional_forward_args=args,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
            delta = d.detach().cpu().numpy()
        elif method == "saliency":
            attr = Saliency(fwd).attribute(emb, target=tgt, additional_forward_args=args, abs=True)
        elif method == "input_x_gradient":
            attr = InputXGradient(fwd).attribute(emb, target=tgt, additional_forward_args=args)
        elif method == "feature_ablation":
            mask = torch.arange(emb.shape[1], device=emb.device)[None, :, None].expand_as(emb)
            attr = FeatureAblation(fwd).attribute(
                emb, base, target=tgt, additional_forward_args=args, feature_mask=mask
            )
        elif method == "occlusion":
            window = max(1, min(window, emb.shape[1]))
            attr = Occlusion(fwd).attribute(
                emb,
                sliding_window_shapes=(window, emb.shape[2]),
                strides=(1, emb.shape[2]),
                baselines=0.0,
                target=tgt,
                additional_forward_args=args,
            )
        else:
            if not expl.layers:
                raise LmlabError("layer_conductance needs the model's layers; none were found for this model")
            if not -len(expl.layers) <= layer < len(expl.layers):
                raise LmlabError(f"layer {layer} out of range: the model has {len(expl.layers)} layers")
            attr = LayerConductance(fwd, expl.layers[layer]).attribute(
                emb,
                base,
                target=tgt,
                additional_forward_args=args,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
            )
            attr = attr[0] if isinstance(attr, tuple) else attr
            if expl.layer_cols is not None:
                attr = attr[:, expl.layer_cols]
    # gradient methods: sum over embedding dims (InterpretLR); perturbation methods give every dim of a
    # token the same score (f(x) - f(x without it)), so take that value rather than d times it
    pooled = (
        attr.detach().float().mean(-1)
        if method in ("feature_ablation", "occlusion")
        else attr.detach().float().sum(-1)
    )
    return Attribution(method, pooled.cpu().numpy(), delta)


def attribute_all(expl: Explainable, methods: Sequence[str] = METHODS, **kw) -> dict[str, Attribution]:
    """One Attribution per method (attention skipped when the model gives no attention map)."""
    out = {}
    for m in methods:
        if m == "attention" and expl.attention is None:
            continue
        if m == "layer_conductance" and not expl.layers:
            continue
        out[m] = attribute(expl, m, **kw)
    return out


# ---------------------------------------------------------------- adapters
def _tensor_output_module(layer: nn.Module) -> nn.Module:
    """The sub-module whose (N, S, d) tensor output equals a HF layer's output (HF layers often return
    tuples, which LayerConductance cannot hook): T5 `layer[-1]`, BART/Marian `final_layer_norm`,
    BERT `output`."""
    sub = getattr(layer, "layer", None)
    if isinstance(sub, nn.ModuleList) and len(sub):
        return sub[-1]
    for name in ("final_layer_norm", "output"):
        if isinstance(getattr(layer, name, None), nn.Module):
            return getattr(layer, name)
    return layer


def _mean_attention(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers and heads of (1, H, T, S) maps -> (T, S)."""
    return torch.stack([m[0].float().mean(0) for m in maps]).mean(0)


def seq2seq_explainable(
    model, src: torch.Tensor, out_ids: torch.Tensor, bos: int, src_labels=None, out_labels=None
) -> Explainable:
    """lmlab's `Seq2SeqTransformer`: src (1, S) ids, out_ids (1, T) the output tokens explained (reference or
    generated; teacher forcing feeds [bos] + out_ids[:-1])."""
    model.eval()
    tgt_in = torch.cat([torch.full_like(out_ids[:, :1], bos), out_ids[:, :-1]], 1)

    def score(emb, pos, src_ids, tin):
        logits = model(src_ids, tin, src_embeds=emb)
        return logits[torch.arange(len(pos), device=pos.device), pos].float().log_softmax(-1)

    def attention():
        with torch.no_grad(), model.recording_attention():
            model(src, tgt_in)
        return _mean_attention(model.cross_attention())

    return Explainable(
        model.embed_source(src).detach(),
        out_ids[0].tolist(),
        score,
        (src, tgt_in),
        list(model.encoder_layers),
        attention,
        list(src_labels or []),
        list(out_labels or []),
    )


def hf_seq2seq_explainable(
    model, input_ids: torch.Tensor, out_ids: torch.Tensor, src_labels=None, out_labels=None
) -> Explainable:
    """A Hugging Face encoder–decoder (T5, Marian, BART…). `out_ids` (1, T) are the explained output tokens;
    decoder inputs are the shifted outputs (teacher forcing)."""
    model.eval()
    encoder = model.get_encoder()
    scale = float(getattr(encoder, "embed_scale", None) or 1.0)
    start = model.config.decoder_start_token_id
    if start is None:
        start = model.config.pad_token_id
    dec_in = torch.cat([torch.full_like(out_ids[:, :1], start), out_ids[:, :-1]], 1)
    mask = torch.ones_like(input_ids)

    def score(emb, pos, am, din):
        logits = model(inputs_embeds=emb, attention_mask=am, decoder_input_ids=din).logits
        return logits[torch.arange(len(pos), device=pos.device), pos].float().log_softmax(-1)

    def attention():
        with torch.no_grad():
            out = model(
                input_ids=input_ids, attention_mask=mask, decoder_input_ids=dec_in, output_attentions=True
            )
        if not out.cross_attentions or out.cross_attentions[0] is None:
            raise LmlabError(
                "the model returned no cross-attentions: load it with attn_implementation='eager'"
            )
        return _mean_attention(out.cross_attentions)

    blocks = getattr(encoder, "layers", None) or getattr(encoder, "block", None) or []
    layers = [_tensor_output_module(block) for block in blocks]
    emb = (encoder.embed_tokens(input_ids) * scale).detach()
    return Explainable(
        emb,
        out_ids[0].tolist(),
        score,
        (mask, dec_in),
        layers,
        attention,
        list(src_labels or []),
        list(out_labels or []),
    )


def causal_lm_explainable(
    model, prompt: torch.Tensor, continuation: torch.Tensor, src_labels=None, out_labels=None
) -> Explainable:
    """lmlab GPT (through `inputs_embeds=`) or a HF causal LM: explains each continuation token by the
    prompt tokens, with the continuation fed by teacher forcing."""
    model.eval()
    is_lmlab = hasattr(model, "blocks") and hasattr(model, "embed")
    emb_layer = model.embed if is_lmlab else model.get_input_embeddings()
    p = prompt.shape[1]
    cont_in = continuation[:, :-1]

    def logits_of(full_emb):
        return model(inputs_embeds=full_emb) if is_lmlab else model(inputs_embeds=full_emb).logits

    def score(emb, pos, cin):
        full = torch.cat([emb, emb_layer(cin).to(emb.dtype)], 1)
        return logits_of(full)[torch.arange(len(pos), device=pos.device), p - 1 + pos].float().log_softmax(-1)

    def attention():
        ids = torch.cat([prompt, cont_in], 1)
        if is_lmlab:
            names = [f"blocks.{i}.attn.hook_pattern" for i in range(len(model.blocks))]
            _, cache = model.run_with_cache(ids, names=names)
            maps = [cache[n] for n in names]
        else:
            with torch.no_grad():
                maps = model(ids, output_attentions=True).attentions
        return _mean_attention(maps)[p - 1 :, :p]

    if is_lmlab:
        layers = list(model.blocks)
    else:
        layers = decoder_layers(model)
    return Explainable(
        emb_layer(prompt).detach(),
        continuation[0].tolist(),
        score,
        (cont_in,),
        layers,
        attention,
        list(src_labels or []),
        list(out_labels or []),
        layer_cols=slice(0, p),
    )


def tagger_explainable(tagger, tokens: list[str], tags: list[str] | None = None) -> Explainable:
    """lmlab's BiLSTM-CRF tagger: explains the emission score of each position's tag (predicted, or `tags`)
    by the input token features (word embedding + character CNN)."""
    m = tagger.model
    m.eval()
    words, chars, mask = tagger.encode([tokens])
    tags = tags or tagger.predict([tokens])[0]
    targets = [tagger.ti[t] for t in tags]

    def score(emb, pos, mk):
        em = m.emissions_from_features(emb, mk)
        return em[torch.arange(len(pos), device=pos.device), pos].float().log_softmax(-1)

    with torch.no_grad():
        feats = m.token_features(words, chars)
    return Explainable(feats, targets, score, (mask,), [m.proj[0]], None, list(tokens), list(tags))


def classifier_explainable(
    model, input_ids: torch.Tensor, target: int | None = None, src_labels=None
) -> Explainable:
    """A HF sequence classifier (or any module taking `inputs_embeds=` and returning `.logits` (1, C)):
    one output row explaining the (predicted or given) class."""
    model.eval()
    emb_layer = model.get_input_embeddings()
    mask = torch.ones_like(input_ids)

    def score(emb, pos, am):
        out = model(inputs_embeds=emb, attention_mask=am)
        return getattr(out, "logits", out).float().log_softmax(-1)

    with torch.no_grad():
        emb = emb_layer(input_ids)
        if target is None:
            target = int(score(emb, torch.zeros(1, dtype=torch.long), mask).argmax(-1))
    return Explainable(
        emb.detach(), [target], score, (mask,), [], None, list(src_labels or []), [str(target)]
    )


# ---------------------------------------------------------------- agreement with human rationales
def gold_mask(alignment: Sequence[tuple[int, int]], n_out: int, n_src: int) -> np.ndarray:
    """(T_out, S) bool from (output index, source index) pairs."""
    m = np.zeros((n_out, n_src), dtype=bool)
    for t, s in alignment:
        if not (0 <= t < n_out and 0 <= s < n_src):
            raise LmlabError(f"alignment pair ({t}, {s}) is outside a {n_out}×{n_src} matrix")
        m[t, s] = True
    return m


def hit_at_k(scores: np.ndarray, gold: np.ndarray, k: int = 1) -> float:
    """Share of aligned output rows whose k highest-scored source tokens include a gold token."""
    rows = [t for t in range(gold.shape[0]) if gold[t].any()]
    if not rows:
        return float("nan")
    hits = [gold[t, np.argsort(-scores[t], kind="stable")[:k]].any() for t in rows]
    return float(np.mean(hits))


def average_precision(scores: np.ndarray, gold: np.ndarray) -> float:
    """Mean over aligned rows of the average precision of ranking source tokens by score."""
    from sklearn.metrics import average_precision_score  # heavy: sklearn imported only for this metric

    vals = [
        average_precision_score(gold[t], scores[t])
        for t in range(gold.shape[0])
        if gold[t].any() and not gold[t].all()
    ]
    return float(np.mean(vals)) if vals else float("nan")


def rank_correlation(scores: np.ndarray, gold: np.ndarray) -> float:
    """Mean over aligned rows of Spearman's rho between scores and the 0/1 gold mask."""
    from scipy.stats import spearmanr  # heavy: scipy imported only for this statistic

    vals = []
    for t in range(gold.shape[0]):
        if gold[t].any() and not gold[t].all() and np.ptp(scores[t]) > 0:
            vals.append(spearmanr(scores[t], gold[t].astype(float)).statistic)
    return float(np.mean(vals)) if vals else float("nan")


def agreement(scores: np.ndarray, gold: np.ndarray, ks: Sequence[int] = (1, 3)) -> dict[str, float]:
    """hit@k, average precision and rank correlation of attributions against a gold alignment."""
    if scores.shape != gold.shape:
        raise LmlabError(f"attribution matrix {scores.shape} and gold alignment {gold.shape} differ in shape")
    out = {f"hit@{k}": hit_at_k(scores, gold, k) for k in ks}
    out["ap"] = average_precision(scores, gold)
    out["spearman"] = rank_correlation(scores, gold)
    return out


def group_matrix(
    matrix: np.ndarray,
    row_groups: Sequence[Sequence[int]] | None = None,
    col_groups: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """Pool subword rows (mean) and columns (sum) into words: groups list the indices of each word."""
    m = matrix
    if col_groups is not None:
        m = np.stack([m[:, list(g)].sum(1) for g in col_groups], 1)
    if row_groups is not None:
        m = np.stack([m[list(g)].mean(0) for g in row_groups], 0)
    return m


# ---------------------------------------------------------------- views
def heatmap_axes(
    ax, matrix: np.ndarray, src_labels: Sequence[str], out_labels: Sequence[str], title: str = ""
):
    """Draw an output×source heatmap on `ax` (diverging colours when the matrix has negative values)."""
    m = np.asarray(matrix, dtype=float)
    lim = float(np.abs(m).max()) or 1.0
    signed = bool((m < 0).any())
    im = ax.imshow(
        m, cmap="RdBu_r" if signed else "Reds", vmin=-lim if signed else 0, vmax=lim, aspect="auto"
    )
    ax.set_xticks(
        range(m.shape[1]), list(src_labels) or range(m.shape[1]), rotation=60, ha="right", fontsize=8
    )
    ax.set_yticks(range(m.shape[0]), list(out_labels) or range(m.shape[0]), fontsize=8)
    ax.set_xlabel("source token")
    ax.set_ylabel("output token")
    ax.set_title(title, fontsize=9)
    return im


def heatmap_figure(matrix: np.ndarray, src_labels: Sequence[str], out_labels: Sequence[str], title: str = ""):
    """A matplotlib heatmap of an [output x source] attribution matrix."""
    import matplotlib  # heavy: imported only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * m.shape[1], 1.2 + 0.4 * m.shape[0]))
    fig.colorbar(
        heatmap_axes(ax, m, src_labels, out_labels, title), ax=ax, fraction=0.04, label="attribution"
    )
    return fig


def save_heatmap(path: str | Path, matrix, src_labels, out_labels, title: str = "") -> Path:
    """Write the attribution heatmap as a PNG (atomically)."""
    return atomic_write_png(path, heatmap_figure(matrix, src_labels, out_labels, title))


def html_view(
    attributions: dict[str, np.ndarray],
    src_labels: Sequence[str],
    out_labels: Sequence[str],
    title: str = "Attributions",
) -> str:
    """A self-contained HTML page: one coloured output×source table per method
    (red positive, blue negative)."""
    esc = _html.escape
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:8px 0 24px}"
        "td,th{border:1px solid #ddd;padding:3px 6px;font-size:12px;text-align:center}</style>",
        f"<h1>{esc(title)}</h1>",
    ]
    for method, m in attributions.items():
        m = np.asarray(m, dtype=float)
        lim = float(np.abs(m).max()) or 1.0
        parts.append(
            f"<h2>{esc(method)}</h2><table><tr><th></th>"
            + "".join(f"<th>{esc(str(s))}</th>" for s in src_labels)
            + "</tr>"
        )
        for t, row in enumerate(m):
            cells = []
            for v in row:
                a = min(1.0, abs(v) / lim)
                rgb = "220,40,40" if v >= 0 else "40,80,220"
                cells.append(f"<td style='background:rgba({rgb},{a:.2f})'>{v:.2f}</td>")
            label = out_labels[t] if t < len(out_labels) else t
            parts.append(f"<tr><th>{esc(str(label))}</th>{''.join(cells)}</tr>")
        parts.append("</table>")
    return "\n".join(parts) + "\n"


def save_html(
    path: str | Path, attributions: dict[str, np.ndarray], src_labels, out_labels, title: str = "Attributions"
) -> Path:
    """Write an HTML view of the attribution matrices (atomically)."""
    atomic_write_text(path, html_view(attributions, src_labels, out_labels, title))
    return Path(path)
