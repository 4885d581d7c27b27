"""Interleaved Head Attention: equivalence to MHA, a naive reference, masks, cache, parameters, errors."""

import math

import pytest
import torch

from lmlab.model import AttnContext, MultiHeadAttention
from lmlab.methods.iha.attention import InterleavedHeadAttention, virtual_mask
from lmlab.model import GPT, GPTConfig


def make_cfg(**opts):
    base = dict(vocab_size=40, n_layers=2, n_heads=4, d_model=32, seq_len=32)
    model_keys = {"n_kv_heads", "n_layers", "n_heads", "d_model", "seq_len"}
    base.update({k: opts.pop(k) for k in list(opts) if k in model_keys})
    return GPTConfig(attention="iha", attention_options=opts, **base)


def rope_tables(t, d, theta=10000.0, identity=False):
    if identity:
        return torch.ones(1, 1, t, d), torch.zeros(1, 1, t, d)
    inv = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    ang = torch.arange(t).float()[:, None] * inv
    emb = torch.cat((ang, ang), -1)
    return emb.cos()[None, None], emb.sin()[None, None]


def iha_and_mha(seed=0, **opts):
    torch.manual_seed(seed)
    cfg = make_cfg(init_noise=0.0, **opts)
    iha = InterleavedHeadAttention(cfg, 0)
    mha = MultiHeadAttention(GPTConfig(vocab_size=40, n_heads=cfg.n_heads, d_model=cfg.d_model), 0)
    missing = iha.load_state_dict(mha.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["alpha_k", "alpha_q", "alpha_v", "collapse_r"]
    return iha, mha


# ------------------------------------------------------------------ equivalence at identity init
@pytest.mark.parametrize("mask", ["flat", "token"])
@pytest.mark.parametrize("collapse", ["global", "per_head"])
def test_identity_init_equals_mha_without_rope(mask, collapse):
    iha, mha = iha_and_mha(n_pseudo=3, mask=mask, collapse=collapse, rope="none")
    x = torch.randn(2, 7, 32)
    rope = rope_tables(7, 8, identity=True)
    diff = (iha(x, rope, AttnContext()) - mha(x, rope, AttnContext())).abs().max().item()
    assert diff < 1e-5


def test_selecting_first_pseudo_differs_under_flat_mask_only():
    x = torch.randn(2, 7, 32)
    rope = rope_tables(7, 8, identity=True)
    flat, mha = iha_and_mha(n_pseudo=3, mask="flat", rope="none", collapse_init="first")
    assert (flat(x, rope, AttnContext()) - mha(x, rope, AttnContext())).abs().max().item() > 1e-2
    token, mha = iha_and_mha(n_pseudo=3, mask="token", rope="none", collapse_init="first")
    assert (token(x, rope, AttnContext()) - mha(x, rope, AttnContext())).abs().max().item() < 1e-5


def test_shared_rope_equals_mha_with_rope_but_virtual_rope_does_not():
    x = torch.randn(2, 7, 32)
    rope = rope_tables(7, 8)
    shared, mha = iha_and_mha(n_pseudo=2, rope="shared")
    assert (shared(x, rope, AttnContext()) - mha(x, rope, AttnContext())).abs().max().item() < 1e-5
    virtual, mha = iha_and_mha(n_pseudo=2, rope="virtual")
    assert (virtual(x, rope, AttnContext()) - mha(x, rope, AttnContext())).abs().max().item() > 1e-3


# ------------------------------------------------------------------ naive reference
def naive_iha(layer: InterleavedHeadAttention, x, flat: bool, window, rope_mode: str):
    """Loop-level IHA straight from the paper's equations (one batch element)."""
    h, d, p = layer.n_heads, layer.head_dim, layer.n_pseudo
    n = x.shape[0]
    q, k, v = (proj(x).view(n, h, d) for proj in (layer.q_proj, layer.k_proj, layer.v_proj))
    inv = layer.inv_freq

    def rot(vec, pos):
        if rope_mode == "none":
            return vec
        ang = pos * inv
        c, s = torch.cat((ang.cos(), ang.cos())), torch.cat((ang.sin(), ang.sin()))
        return vec * c + torch.cat((-vec[d // 2:], vec[: d // 2])) * s

    pos = (lambda i, j: i * p + j) if rope_mode == "virtual" else (lambda i, j: i)
    out = torch.zeros(n, h, p, d)
    for head in range(h):
        mix = lambda t, a, i, j: sum(a[m, head, j] * t[i, m] for m in range(h))  # noqa: E731
        qs = {(i, j): rot(mix(q, layer.alpha_q, i, j), pos(i, j)) for i in range(n) for j in range(p)}
        ks = {(i, j): rot(mix(k, layer.alpha_k, i, j), pos(i, j)) for i in range(n) for j in range(p)}
        vs = {(i, j): mix(v, layer.alpha_v, i, j) for i in range(n) for j in range(p)}
        for (i, j), qv in qs.items():
            keys = [(m, jj) for m in range(n) for jj in range(p)
                    if (m < i or (m == i and (jj <= j or not flat))) and (window is None or i - m < window)]
            scores = torch.stack([qv @ ks[key] / math.sqrt(d) for key in keys])
            w = torch.softmax(scores, 0)
            out[i, head, j] = sum(wt * vs[key] for wt, key in zip(w, keys))
    r = layer.collapse_r
    if layer.collapse == "global":
        z = torch.einsum("nhpd,khp->nkd", out, r.view(h, h, p))
    else:
        z = torch.einsum("nhpd,hp->nhd", out, r)
    return layer.o_proj(z.reshape(n, h * d))


@pytest.mark.parametrize("mask,collapse,window,rope", [
    ("flat", "global", None, "virtual"), ("token", "per_head", None, "shared"),
    ("flat", "per_head", 2, "virtual"), ("token", "global", 3, "none")])
def test_matches_naive_reference_with_random_mixing(mask, collapse, window, rope):
    torch.manual_seed(1)
    cfg = make_cfg(n_heads=2, d_model=16, n_pseudo=3, mask=mask, collapse=collapse, window=window, rope=rope,
                   init_noise=0.5)
    layer = InterleavedHeadAttention(cfg, 0)
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        got = layer(x, rope_tables(5, 8), AttnContext())[0]
        ref = naive_iha(layer, x[0], mask == "flat", window, rope)
    assert torch.allclose(got, ref, atol=1e-5)


# ------------------------------------------------------------------ masks
@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("window", [None, 1, 3])
def test_virtual_mask_equals_brute_force(flat, window):
    n, p = 6, 3
    got = virtual_mask(AttnContext(), n, p, flat, window, torch.device("cpu"))[0, 0]
    want = torch.zeros(n * p, n * p, dtype=torch.bool)
    for i in range(n):
        for j in range(p):
            for m in range(n):
                for jj in range(p):
                    causal = m < i or (m == i and (jj <= j or not flat))
                    want[i * p + j, m * p + jj] = causal and (window is None or i - m < window)
    assert torch.equal(got, want)


@pytest.mark.parametrize("opts", [{"mask": "flat"}, {"mask": "token"}, {"mask": "flat", "window": 2}])
def test_future_tokens_do_not_change_past_outputs(opts):
    torch.manual_seed(0)
    model = GPT(make_cfg(n_pseudo=2, **opts)).eval()
    a = torch.randint(0, 40, (2, 10))
    b = a.clone()
    b[:, 6:] = torch.randint(0, 40, (2, 4))
    with torch.no_grad():
        la, lb = model(a), model(b)
    assert torch.allclose(la[:, :6], lb[:, :6], atol=1e-6)
    assert (la[:, 6:] - lb[:, 6:]).abs().max() > 1e-4


# ------------------------------------------------------------------ KV cache
@pytest.mark.parametrize("opts", [{"mask": "flat"}, {"mask": "token", "collapse": "per_head"},
                                  {"mask": "flat", "window": 3, "rope": "virtual"}])
def test_kv_cached_decoding_equals_full_forward(opts):
    torch.manual_seed(0)
    model = GPT(make_cfg(n_pseudo=2, **opts)).eval()
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 16)
        steps = [model(ids[:, :4], cache=cache)]  # prefill, then one token at a time
        steps += [model(ids[:, i:i + 1], cache=cache) for i in range(4, 9)]
    assert cache._kv[0][0].shape[2] == 16 * 2  # P virtual slots per token
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_hybrid_model_generates_like_the_naive_sampler_with_left_padding():
    from lmlab.methods.iha.attention import hybrid_config
    from lmlab.generate import generate, generate_naive

    torch.manual_seed(0)
    cfg = hybrid_config(make_cfg(n_layers=5, n_heads=2, d_model=16, seq_len=64), n_pseudo=2)
    model = GPT(cfg).eval()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9]]
    kw = dict(max_new_tokens=6, temperature=0.0, pad_id=0)
    assert generate(model, prompts, **kw).tokens == generate_naive(model, prompts, **kw).tokens


def test_frozen_cache_reads_virtual_keys_with_positions():
    torch.manual_seed(0)
    model = GPT(make_cfg(n_pseudo=2, window=3)).eval()
    layer = model.blocks[0].attn
    x = torch.randn(1, 6, 32)
    pos = torch.arange(6)[None]
    rope = model.rope(pos, x.dtype)
    with torch.no_grad():
        full = layer(x, rope, AttnContext())
        cache = model.new_cache(1, 8)
        cache._new_tokens = 6
        layer(x, rope, AttnContext(cache=cache))
        cache.length, cache.key_pos[:, :6], cache.key_valid[:, :6] = 6, pos, True
        cache.freeze()
        q_pos = pos[:, 3:]
        mask = (cache.key_pos[:, None, :6] <= q_pos[:, :, None])[:, None]
        ctx = AttnContext(mask=mask, cache=cache, positions=q_pos)
        again = layer(x[:, 3:], model.rope(q_pos, x.dtype), ctx)
        with pytest.raises(ValueError, match="positions"):
            layer(x[:, 3:], model.rope(q_pos, x.dtype), AttnContext(mask=mask, cache=cache))
    assert torch.allclose(again, full[:, 3:], atol=1e-5)


# ------------------------------------------------------------------ parameters, options, init
@pytest.mark.parametrize("h,p", [(4, 2), (2, 3)])
def test_extra_parameter_count(h, p):
    g = InterleavedHeadAttention(make_cfg(n_heads=h, d_model=8 * h, n_pseudo=p), 0)
    ph = InterleavedHeadAttention(make_cfg(n_heads=h, d_model=8 * h, n_pseudo=p, collapse="per_head"), 0)
    mha = MultiHeadAttention(GPTConfig(vocab_size=40, n_heads=h, d_model=8 * h), 0)
    n = lambda m: sum(t.numel() for t in m.parameters())  # noqa: E731
    assert n(g) - n(mha) == 4 * h * h * p
    assert n(ph) - n(mha) == 3 * h * h * p + h * p


def test_gpt_init_keeps_identity_mixing_and_excludes_it_from_weight_decay():
    torch.manual_seed(0)
    model = GPT(make_cfg(n_pseudo=2))
    a = model.blocks[1].attn
    eye = torch.eye(4)[:, :, None].expand(4, 4, 2)
    assert (a.alpha_q - eye).abs().max() < 0.1 and (a.alpha_q - eye).abs().max() > 0  # identity + noise
    assert a.collapse_r.view(4, 4, 2)[torch.arange(4), torch.arange(4), 1].min() > 0.9  # last pseudo
    no_decay = {id(p) for p in model.optimizer_groups(0.1)[1]["params"]}
    assert all(id(p) in no_decay for p in a.mixing_parameters())
    assert id(a.q_proj.weight) not in no_decay


@pytest.mark.parametrize("opts,match", [
    ({"n_kv_heads": 2}, "grouped-query"), ({"collapse": "rows"}, "collapse"), ({"n_pseudo": 0}, "n_pseudo"),
    ({"window": 0}, "window"), ({"pseudo": 2}, "unknown IHA option")])
def test_undefined_combinations_are_refused(opts, match):
    with pytest.raises(ValueError, match=match):
        GPT(make_cfg(**opts))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention path runs on CUDA")
@pytest.mark.parametrize("opts", [{"mask": "flat", "window": 5}, {"mask": "token"},
                                  {"mask": "token", "window": 3}])
def test_flex_attention_matches_dense_mask_on_cuda(opts):
    torch.manual_seed(0)
    kw = dict(n_heads=4, d_model=64, n_pseudo=2, **opts)
    dense = InterleavedHeadAttention(make_cfg(backend="sdpa", **kw), 0).cuda()
    flex = InterleavedHeadAttention(make_cfg(backend="flex", **kw), 0).cuda()
    flex.load_state_dict(dense.state_dict())
    x = torch.randn(2, 200, 64, device="cuda", requires_grad=True)
    cos, sin = rope_tables(200, 16)
    rope = (cos.cuda(), sin.cuda())
    y_dense = dense(x, rope, AttnContext())
    y_flex = flex(x, rope, AttnContext())
    assert torch.allclose(y_dense, y_flex, atol=2e-4)
    g_dense = torch.autograd.grad(y_dense.square().sum(), dense.alpha_q)[0]
    g_flex = torch.autograd.grad(y_flex.square().sum(), flex.alpha_q)[0]
    assert torch.allclose(g_dense, g_flex, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("opts", [{"mask": "flat"}, {"mask": "token", "window": 2}])
def test_hooked_pattern_path_equals_sdpa_and_rows_sum_to_one(opts):
    torch.manual_seed(0)
    model = GPT(make_cfg(n_pseudo=2, **opts)).eval()
    ids = torch.randint(0, 40, (2, 6))
    with torch.no_grad():
        plain = model(ids)
        logits, acts = model.run_with_cache(ids, names=["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z"])
    pattern = acts["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (2, 4, 12, 12) and acts["blocks.0.attn.hook_z"].shape == (2, 4, 6, 8)
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 12), atol=1e-5)
    by_token = pattern.view(2, 4, 6, 2, 6, 2).abs().sum(dim=(3, 5))  # (query token, key token)
    assert by_token.triu(1).max() == 0  # no attention to later tokens
    if opts["mask"] == "flat":
        assert pattern.triu(1).abs().max() == 0  # nor to later pseudos of the same token
    else:
        assert by_token.tril(-2).max() == 0  # window of 2 tokens
    assert torch.allclose(logits, plain, atol=1e-5)


# ------------------------------------------------------------------ window by positions, RoPE, hooks
@pytest.mark.parametrize("pad", ["right", "left", "inside"])
def test_window_counts_positions_not_cache_slots(pad):
    torch.manual_seed(0)
    model = GPT(make_cfg(n_layers=1, n_heads=2, d_model=16, n_pseudo=2, window=2, init_noise=0.3)).eval()
    prompt, nxt = [5, 6, 7, 8], torch.tensor([[9]])
    ids, km = {
        "right": ([5, 6, 7, 8, 0, 0], [1, 1, 1, 1, 0, 0]),
        "left": ([0, 0, 5, 6, 7, 8], [0, 0, 1, 1, 1, 1]),
        "inside": ([5, 6, 0, 0, 7, 8], [1, 1, 0, 0, 1, 1]),
    }[pad]
    with torch.no_grad():
        ref = model(torch.tensor([prompt + [9]]))
        cache = model.new_cache(1, 10)
        pre = model(torch.tensor([ids]), cache=cache, key_mask=torch.tensor([km]).bool())
        got = model(nxt, cache=cache)
        real = torch.tensor(km).bool()
        assert torch.allclose(pre[0, real], ref[0, :4], atol=1e-5)  # prefill, padded
        assert torch.allclose(got[:, -1], ref[:, -1], atol=1e-5)  # then one cached step
        # the same row without a cache (padding given by key_mask only)
        nocache = model(torch.tensor([ids + [9]]), key_mask=torch.tensor([km + [1]]).bool())
        assert torch.allclose(nocache[:, -1], ref[:, -1], atol=1e-5)


def test_virtual_rope_from_positions_is_accurate_in_bf16():
    from lmlab.methods.iha.attention import virtual_rope

    d, p = 32, 8
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    pos = torch.arange(0, 2048)[None]
    ang = pos[0].double()[:, None] * inv.double()
    emb = torch.cat((ang, ang), -1)
    cos, sin = emb.cos().to(torch.bfloat16)[None, None], emb.sin().to(torch.bfloat16)[None, None]
    vpos = torch.arange(2048 * p).double()[:, None] * inv.double()
    exact_cos, exact_sin = torch.cat((vpos, vpos), -1).cos(), torch.cat((vpos, vpos), -1).sin()
    vc, vs = virtual_rope(cos, sin, p, inv, "virtual", positions=pos)
    assert vc.dtype == torch.bfloat16 and vc.shape == (1, 1, 2048 * p, d)
    # a bf16 value of cos is within 2^-9 of it; the fp32 angle adds ~1e-3 at virtual position 16k
    assert (vc[0, 0].double() - exact_cos).abs().max() < 4e-3
    assert (vs[0, 0].double() - exact_sin).abs().max() < 4e-3
    vc32, _ = virtual_rope(cos.float(), sin.float(), p, inv, "virtual", positions=pos)
    assert (vc32[0, 0].double() - exact_cos).abs().max() < 2e-3


def test_bf16_model_rotates_virtual_queries_at_exact_positions():
    torch.manual_seed(0)
    model = GPT(make_cfg(n_layers=1, n_heads=2, d_model=32, seq_len=64, n_pseudo=8)).to(torch.bfloat16).eval()
    pos = 2000 + torch.arange(6)[None]  # large positions: the phase error of bf16 tables is large
    names = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_rot_q"]
    with torch.no_grad():
        _, acts = model.run_with_cache(torch.randint(0, 40, (1, 6)), positions=pos, names=names)
    q, rq = acts[names[0]].double(), acts[names[1]].double()  # (1, H, T·P, d): hook_q is before RoPE
    inv = model.blocks[0].attn.inv_freq.double()
    vpos = (pos[0, :, None] * 8 + torch.arange(8)).flatten().double()
    ang = vpos[:, None] * inv
    c, s = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    half = q.shape[-1] // 2
    want = q * c + torch.cat((-q[..., half:], q[..., :half]), -1) * s
    assert ((rq - want).abs().max() / q.abs().max()) < 1e-2


def test_iha_hook_q_is_before_rope_and_rot_q_after():
    torch.manual_seed(0)
    model = GPT(make_cfg(n_layers=1, n_pseudo=2)).eval()
    names = [f"blocks.0.attn.{h}" for h in ("hook_q", "hook_k", "hook_rot_q", "hook_rot_k")]
    with torch.no_grad():
        _, acts = model.run_with_cache(torch.randint(0, 40, (2, 5)), names=names)
    q, k, rq, rk = (acts[n] for n in names)
    assert q.shape == rq.shape == (2, 4, 10, 8)
    assert (q - rq).abs().max() > 1e-3 and (k - rk).abs().max() > 1e-3
    none = GPT(make_cfg(n_layers=1, n_pseudo=2, rope="none")).eval()
    with torch.no_grad():
        _, acts = none.run_with_cache(torch.randint(0, 40, (2, 5)), names=names)
    assert torch.equal(acts[names[0]], acts[names[2]])
