"""The hook API's two layouts of the per-head attention activations: lmlab's (batch, heads, pos, d_head), the
default, and TransformerLens's (batch, pos, heads, d_head) with `layout="tl"`, checked against a manual computation
on a tiny lmlab GPT (grouped-query attention) and a tiny HF Llama."""

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.hooks import hooks, run_with_cache
from lmlab.model import GPT, GPTConfig

HEADS = ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z")


def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seq_len=32)).eval()


def test_tl_layout_of_q_k_v_z_matches_transformerlens_and_a_manual_computation():
    model, x = tiny(), torch.randint(0, 50, (2, 7))
    names = [f"blocks.1.attn.{h}" for h in (*HEADS, "hook_pattern")] + ["blocks.1.hook_resid_pre",
                                                                          "blocks.1.hook_attn_out"]
    with torch.no_grad():
        logits, tl = model.run_with_cache(x, names=names, layout="tl")
        same, lm = model.run_with_cache(x, names=names)  # the default: lmlab's layout, as before
    act = {n.split(".")[-1]: v for n, v in tl.items()}
    assert torch.equal(logits, same)
    # TransformerLens: hook_q/rot_q/z [batch, pos, head_index, d_head]; k/v with the kv heads; pattern unchanged
    assert act["hook_q"].shape == act["hook_rot_q"].shape == act["hook_z"].shape == (2, 7, 4, 8)
    assert act["hook_k"].shape == act["hook_v"].shape == act["hook_rot_k"].shape == (2, 7, 2, 8)
    assert act["hook_pattern"].shape == (2, 4, 7, 7)
    for h in HEADS:
        assert torch.equal(tl[f"blocks.1.attn.{h}"], lm[f"blocks.1.attn.{h}"].transpose(1, 2))
    block = model.blocks[1]
    with torch.no_grad():
        resid = block.ln1(act["hook_resid_pre"])
        for h, proj, n in (("hook_q", block.attn.q_proj, 4), ("hook_k", block.attn.k_proj, 2),
                           ("hook_v", block.attn.v_proj, 2)):
            torch.testing.assert_close(act[h], proj(resid).view(2, 7, n, 8))  # W_x applied per position
        # z[b, p, h] = sum over key positions of pattern[b, h, p, k] · v[b, k, h's kv head]
        v = act["hook_v"].repeat_interleave(2, dim=2)
        z = torch.einsum("bhqk,bkhd->bqhd", act["hook_pattern"], v)
        torch.testing.assert_close(act["hook_z"], z, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(block.attn.o_proj(act["hook_z"].reshape(2, 7, 32)), act["hook_attn_out"],
                                   rtol=1e-4, atol=1e-5)


def test_a_replacement_in_tl_layout_patches_the_same_head():
    model, x = tiny(), torch.randint(0, 50, (2, 7))

    def zero_head_tl(z, name):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    def zero_head_lmlab(z, name):
        z = z.clone()
        z[:, 2] = 0
        return z

    with torch.no_grad():
        clean = model(x)
        with hooks(model, [("blocks.0.attn.hook_z", zero_head_tl)], layout="tl"):
            a = model(x)
        with hooks(model, [("blocks.0.attn.hook_z", zero_head_lmlab)]):
            b = model(x)
    assert torch.equal(a, b) and not torch.allclose(a, clean)
    with pytest.raises(LmlabError, match="unknown hook layout 'bhsd'"):
        with hooks(model, [("blocks.0.attn.hook_z", zero_head_tl)], layout="bhsd"):
            pass


def test_tl_layout_on_a_hugging_face_model():
    tf = pytest.importorskip("transformers")
    from lmlab.hf import as_lmlab

    torch.manual_seed(0)
    hf = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2)).eval()
    model, x = as_lmlab(hf), torch.randint(0, 40, (2, 5))
    names = [f"blocks.0.attn.{h}" for h in ("hook_q", "hook_k", "hook_z")] + ["blocks.0.hook_resid_pre"]
    with torch.no_grad():
        _, act = run_with_cache(model, x, names=names, layout="tl")
        q, k, z, resid = (act[n] for n in names)
        assert q.shape == z.shape == (2, 5, 4, 8) and k.shape == (2, 5, 2, 8)
        attn = hf.model.layers[0].self_attn
        normed = hf.model.layers[0].input_layernorm(resid)
        torch.testing.assert_close(q, attn.q_proj(normed).view(2, 5, 4, 8))
        torch.testing.assert_close(k, attn.k_proj(normed).view(2, 5, 2, 8))
