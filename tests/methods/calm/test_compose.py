import random

import pytest
import torch

from lmlab.methods.calm.compose import ComposedModel, compose, evenly_spaced, parse_connections
from lmlab.methods.calm.tasks import KVTask
from lmlab.model import GPT, GPTConfig
from lmlab.utils import LmlabError


def gpt(d=32, layers=2, heads=2, vocab=40, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, n_layers=layers, n_heads=heads, d_model=d, seq_len=64)).eval()


def randomise_bridges(cm, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cm.bridge_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_zero_init_equals_anchor():
    anchor, aug = gpt(32, 3, 4), gpt(16, 2, 2, seed=1)
    cm = compose(anchor, aug, n_connections=2)
    x = torch.randint(3, 40, (2, 12))
    torch.testing.assert_close(cm(x), anchor(x), rtol=0, atol=0)


def test_parameter_count_matches_formula():
    anchor, aug = gpt(32, 4, 4), gpt(16, 4, 2, seed=1)
    cm = compose(anchor, aug, n_connections=2)
    assert cm.num_bridge_params() == ComposedModel.expected_bridge_params(2, 16, 32) == 2 * (16 * 32 + 3 * 32**2) + 2 * 32**2


def test_only_bridges_train_and_bases_stay_bit_identical():
    anchor, aug = gpt(32, 2, 2), gpt(24, 2, 2, seed=1)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (anchor, aug)]
    cm = compose(anchor, aug, n_connections=2)
    opt = torch.optim.AdamW(cm.bridge_parameters(), lr=1e-2)
    for _ in range(3):
        x = torch.randint(3, 40, (4, 10))
        loss = cm(x, x.roll(-1, 1))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in list(anchor.parameters()) + list(aug.parameters()))
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in cm.bridge_parameters())
        opt.step()
    for m, b in zip((anchor, aug), before):
        for k, v in m.state_dict().items():
            assert torch.equal(v, b[k]), k
    assert sum(p.numel() for p in cm.parameters() if p.requires_grad) == cm.num_bridge_params()


def test_cross_attention_is_causal():
    cm = compose(gpt(32, 2, 2), gpt(16, 2, 2, seed=1), n_connections=2)
    randomise_bridges(cm)
    x = torch.randint(3, 40, (2, 12))
    y = x.clone()
    y[:, 7:] = torch.randint(3, 40, (2, 5))
    torch.testing.assert_close(cm(x)[:, :7], cm(y)[:, :7])
    assert not torch.allclose(cm(x)[:, 7:], cm(y)[:, 7:])


def test_right_padding_does_not_change_real_tokens():
    cm = compose(gpt(32, 2, 2), gpt(16, 2, 2, seed=1), n_connections=1)
    randomise_bridges(cm)
    x = torch.randint(3, 40, (1, 8))
    padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 8, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool)], 1)
    torch.testing.assert_close(cm(padded, key_mask=mask)[:, :8], cm(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sees", ["sequence", "prefix"])
def test_cached_generation_equals_uncached(sees):
    cm = compose(gpt(32, 3, 2), gpt(16, 2, 2, seed=1), n_connections=2, augment_sees=sees)
    randomise_bridges(cm)
    prompts = [[1, 5, 6, 7], [1, 9], [1, 3, 4, 5, 6, 7]]
    a = cm.generate(prompts, 8, use_cache=True)
    b = cm.generate(prompts, 8, use_cache=False)
    assert a == b
    # and the uncached rollout is an argmax rollout of the teacher-forced forward
    seq = torch.tensor([prompts[0] + a[0][:-1]])
    plen = len(prompts[0]) if sees == "prefix" else None
    assert cm(seq, prefix_len=plen)[0, len(prompts[0]) - 1:].argmax(-1).tolist() == a[0]


def _tiny_llama(tmp_path, vocab=40, d=32, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    m = LlamaForCausalLM(cfg)
    m.save_pretrained(tmp_path)
    from lmlab.hf import load_model

    return load_model(tmp_path, "causal").eval()


def test_mixed_hf_and_lmlab_composition(tmp_path):
    hf = _tiny_llama(tmp_path)
    for anchor, aug in ((gpt(32, 2, 2), hf), (hf, gpt(16, 2, 2))):
        cm = compose(anchor, aug, n_connections=1)
        x = torch.randint(3, 40, (2, 9))
        base = anchor(x) if hasattr(anchor, "blocks") else anchor(input_ids=x).logits
        torch.testing.assert_close(cm(x), base)
        randomise_bridges(cm)
        loss = cm(x, x.roll(-1, 1))
        loss.backward()
        assert all(p.grad is None for p in hf.parameters())
        prompts = [[1, 5, 6, 7], [1, 9, 8, 3]]
        assert cm.generate(prompts, 6, use_cache=True) == cm.generate(prompts, 6, use_cache=False)


def test_save_and_load_bridges(tmp_path):
    anchor, aug = gpt(32, 2, 2), gpt(16, 2, 2, seed=1)
    cm = compose(anchor, aug, connections=[(1, 0), (1, 1)])
    randomise_bridges(cm)
    cm.save_bridges(tmp_path / "bridge.pt", "runs/anchor", "runs/aug")
    cm2 = ComposedModel.load_bridges(tmp_path / "bridge.pt", anchor, aug)
    x = torch.randint(3, 40, (2, 7))
    torch.testing.assert_close(cm(x), cm2(x))
    with pytest.raises(LmlabError, match="does not match"):
        ComposedModel.load_bridges(tmp_path / "bridge.pt", gpt(48, 2, 2), aug)


def test_refuses_different_tokenizers():
    from lmlab.tokenizer import CharTokenizer

    with pytest.raises(LmlabError, match="tokenizers differ"):
        compose(gpt(), gpt(seed=1), tokenizers=(CharTokenizer("abc"), CharTokenizer("abd")))
    with pytest.raises(LmlabError, match="shared tokenizer"):
        compose(gpt(vocab=40), gpt(vocab=50))


def test_connection_layouts():
    assert evenly_spaced(3, 3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert evenly_spaced(12, 24, 3) == [(3, 7), (7, 15), (11, 23)]
    assert parse_connections("2:0, 2:1") == [(2, 0), (2, 1)]
    with pytest.raises(LmlabError):
        parse_connections("2-0")


def test_kv_task_is_deterministic_disjoint_and_correct():
    t1, t2 = KVTask(n_keys=50, ops="+-*", seed=3), KVTask(n_keys=50, ops="+-*", seed=3)
    assert t1.values == t2.values and t1.dc_keys == t2.dc_keys
    assert not set(t1.dc_keys) & set(t1.heldout_keys) and len(t1.dc_keys) == 10
    assert t1.dataset("kv_math", 5, "heldout", 1) == t2.dataset("kv_math", 5, "heldout", 1)
    rng = random.Random(0)
    for _ in range(50):
        ks, ops = t1.sample_expr(rng, t1.heldout_keys)
        views = t1.texts(ks, ops)
        vals = [t1.values[k] for k in ks]
        expected = vals[0]
        terms, cur = [], vals[0]  # reference: evaluate with × precedence by hand
        for o, v in zip(ops, vals[1:]):
            if o == "*":
                cur *= v
            else:
                terms.append(cur)
                terms.append(o)
                cur = v
        terms.append(cur)
        expected = terms[0]
        for i in range(1, len(terms), 2):
            expected = expected + terms[i + 1] if terms[i] == "+" else expected - terms[i + 1]
        assert KVTask.answer(views["kv_math"][1]) == str(expected)
        assert all(k in t1.heldout_keys for k in ks)
    tok = t1.tokenizer()
    p, c = t1.dataset("kv_math", 1, "dc", 0)[0]
    assert tok.decode(tok.encode(p + c)) == p + c


def test_compose_cli_trains_bridges_between_two_checkpoints(tmp_path):
    import json

    from lmlab import checkpoint
    from lmlab.cli import main
    from lmlab.methods.calm.compose import ComposedModel

    task = KVTask(n_keys=30)
    tok = task.tokenizer()
    runs = []
    for name, d in (("anchor", 32), ("aug", 16)):
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=d, seq_len=64))
        checkpoint.save(tmp_path / name, 0, m)
        tok.save(tmp_path / name / "tokenizer.json")
        runs.append(tmp_path / name)
    data = tmp_path / "dc.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in task.dc_dataset(40, 0)))
    out = tmp_path / "bridge"
    rc = main(["compose", str(runs[0]), str(runs[1]), "--data", str(data),
               "--steps", "3", "--batch", "4", "--out", str(out), "--eval", str(data), "--n-connections", "1"])
    assert rc == 0 and (out / "bridges.pt").is_file() and (out / "metrics.jsonl").is_file()
    anchor, _ = checkpoint.load(runs[0])
    aug, _ = checkpoint.load(runs[1])
    cm = ComposedModel.load_bridges(out / "bridges.pt", anchor, aug)
    assert cm.connections == [(1, 1)]
    assert main(["compose", str(runs[0]), str(runs[1]), "--data", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "o")]) == 2

    import signal

    import lmlab.train

    real_set_lr = lmlab.train.set_lr
    calls = []

    def step_then_ctrl_c(*a, **kw):  # Ctrl-C as the second step starts: it finishes, then the bridges are saved
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return real_set_lr(*a, **kw)

    cut, whole = tmp_path / "cut", tmp_path / "whole"
    args = ["compose", str(runs[0]), str(runs[1]), "--data", str(data), "--steps", "6",
            "--batch", "4", "--n-connections", "1"]
    assert main([*args, "--out", str(whole)]) == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lmlab.train, "set_lr", step_then_ctrl_c)
        rc = main([*args, "--out", str(cut)])
    assert rc == 130 and len(calls) == 2
    blob = torch.load(cut / "bridges.pt", weights_only=True)
    assert blob["extra"]["interrupted"] and blob["extra"]["steps"] == 2
    assert ComposedModel.load_bridges(cut / "bridges.pt", anchor, aug).connections == [(1, 1)]  # a loadable composition
    assert main([*args, "--out", str(cut)]) == 2  # an interrupted run is not overwritten by a fresh one
    assert main([*args, "--out", str(cut), "--resume"]) == 0 and not (cut / "resume.pt").exists()
    a, b = (torch.load(p / "bridges.pt", weights_only=True)["bridges"] for p in (whole, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resumed == uninterrupted
    assert not all(torch.equal(a[k], blob["bridges"][k]) for k in a)  # and the 4 later steps did train


def test_prefix_encoder_reads_each_rows_own_prompt_in_training():
    """augment_sees="prefix": in a right-padded batch of a 2-key and a 3-key prompt, the 3-key row's augmenting
    context holds its third key (it used to be cut to the batch's shortest prompt)."""
    from lmlab.methods.calm.measure import encode_pairs, prefix_len

    task = KVTask(n_keys=30, seed=0)
    tok = task.tokenizer()
    torch.manual_seed(0)
    anchor = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=32, seq_len=64)).eval()
    aug = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=16, seq_len=64)).eval()
    cm = compose(anchor, aug, n_connections=2, augment_sees="prefix")
    randomise_bridges(cm)
    pairs = [("<k1>+<k2>>", "1+2=3"), ("<k1>+<k2>-<k3>>", "1+2-3=0")]
    ids, tg = encode_pairs(tok, pairs, "cpu")
    p_short, p_long = (len(tok.encode(p, bos=True)) for p, _ in pairs)
    plen = prefix_len(tg)
    assert plen.tolist() == [p_short, p_long]
    k3 = tok.encode("<k3>")[0]
    assert ids[1, p_long - 2] == k3 and p_long - 2 >= p_short  # the third key lies beyond the short prompt
    mask = cm._cross_mask(ids.shape[1], ids.shape[1], 0, None, plen, "cpu")
    assert mask.shape == (2, 1, ids.shape[1], ids.shape[1])
    assert mask[1, 0, :, p_long - 2].all() and not mask[0, 0, :, p_long - 2].any()
    assert mask[0, 0, :, :p_short].all() and not mask[0, 0, :, p_short:].any()
    n = len(tok.encode(pairs[1][0] + pairs[1][1], bos=True, eos=True))
    alone = cm(ids[1:2, :n], prefix_len=p_long)  # the 3-key row on its own, with its whole prompt
    torch.testing.assert_close(cm(ids, prefix_len=plen)[1:2, :n], alone)
    cut = cm(ids[1:2, :n], prefix_len=p_short)  # what the batch-minimum prefix gave it
    assert not torch.allclose(cut[:, p_long - 1:], alone[:, p_long - 1:])
    # the training loss goes through the same per-row path
    assert torch.isfinite(cm(ids, tg, prefix_len=plen))
    with pytest.raises(LmlabError, match="one length per row"):
        cm(ids, prefix_len=torch.tensor([3, 4, 5]))
