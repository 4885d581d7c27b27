import json

import pytest

from lmlab.experiment import run_experiment
from lmlab.methods.calm.experiment import (
    CLAIMS,
    KEEP_MARGIN,
    _alternatives_note,
    accuracy,
    anchor_skill_pairs,
    base_gen,
    decide_claims,
    encode_pairs,
    mixed_batches,
    scores,
)
from lmlab.report import Report
from lmlab.methods.calm.tasks import KVTask

TASK = KVTask(n_keys=20, dc_key_frac=0.5, seed=3)
TOK = TASK.tokenizer()


def test_encode_pairs_puts_targets_on_completion_tokens_only():
    pairs = [("<k1>+<k2>>", "3+4"), ("1+2>", "1+2=3")]
    ids, tg = encode_pairs(TOK, pairs, "cpu")
    for i, (prompt, completion) in enumerate(pairs):
        p = TOK.encode(prompt, bos=True)
        full = p + TOK.encode(completion, eos=True)
        assert ids[i, : len(full)].tolist() == full
        assert (ids[i, len(full) :] == TOK.pad_id).all()
        # position t predicts token t+1: only the completion (and EOS) carries targets
        assert (tg[i, : len(p) - 1] == -100).all() and (tg[i, len(full) - 1 :] == -100).all()
        assert tg[i, len(p) - 1 : len(full) - 1].tolist() == full[len(p) :]


def test_accuracy_scores_substitution_and_final_answers():
    pairs = TASK.dataset("kv_math", 6, "heldout", seed=1)
    gold = [TOK.encode(c, eos=True) for _, c in pairs]
    assert accuracy(lambda prompts, n: gold, TOK, TASK, pairs, "kv_math", 24) == 1.0
    # the right substitution with a wrong sum
    wrong = [TOK.encode(c.rsplit("=", 1)[0] + "=99", eos=True) for _, c in pairs]
    assert accuracy(lambda prompts, n: wrong, TOK, TASK, pairs, "kv_math", 24) == 0.0
    subs = TASK.dataset("kv_subs", 6, "heldout", seed=1)
    # a substitution counts even if the model goes on to compute a result
    ext = [TOK.encode(c + "=0", eos=True) for _, c in subs]
    assert accuracy(lambda prompts, n: ext, TOK, TASK, subs, "kv_subs", 24) == 1.0
    half = [TOK.encode(c if i % 2 else "0", eos=True) for i, (_, c) in enumerate(subs)]
    assert accuracy(lambda prompts, n: half, TOK, TASK, subs, "kv_subs", 24) == 0.5


def test_alternatives_note_compares_with_calm():
    note = _alternatives_note({"calm/kv_math": 0.5, "random_augment/heldout": 0.1,
                               "projection_only/heldout": 0.53, "anchor_finetune/heldout": 0.7})
    assert "`random_augment`" in note and "0.10 vs CALM 0.50" in note and "falls short of CALM" in note
    assert "0.53 vs CALM 0.50 on held-out keys, matches CALM" in note
    assert "0.70 vs CALM 0.50 on held-out keys, beats CALM" in note
    assert "prefix_encoder" not in note
    assert _alternatives_note({"calm/kv_math": 0.5}) == "No alternatives ran in this preset."


def test_experiment_runs_every_baseline_and_decides_from_its_numbers(tmp_path):
    fast = {"n_keys": 40, "d_model": 32, "n_layers": 3, "n_heads": 2, "batch": 8, "anchor_steps": 3,
            "augment_steps": 3, "bridge_steps": 3, "finetune_steps": 3, "n_eval": 4,
            "baselines": "random_augment,prefix_encoder,projection_only,anchor_finetune"}
    rep = run_experiment("calm_kv", "tiny", tmp_path, overrides=fast, quiet=True, raise_errors=True)
    out = json.loads((tmp_path / "results.json").read_text())
    assert {c["id"] for c in out["claims"]} == set(CLAIMS)
    mean = out["metrics"]["mean"]
    for key in ("random_augment/heldout", "prefix_encoder/heldout", "projection_only/heldout",
                "anchor_finetune/heldout", "anchor_finetune/num_math", "calm/kv_math", "aug/kv_subs",
                "calm/num_math_exact", "anchor/num_math_exact", "anchor_finetune_dc/heldout",
                "anchor_finetune_dc/num_math"):
        assert 0.0 <= mean[key] <= 1.0
    claims = {c.id: c for c in rep.claims.values()}
    # the verdicts follow the recorded numbers (untrained models: far from every threshold)
    a = claims["augment_knows_values"]
    assert a.held == (mean["aug/kv_subs"] >= 0.8 and mean["aug/kv_math"] <= 0.2)
    c = claims["composed_solves_heldout"]
    assert c.held == (mean["calm/kv_math"] - max(mean["aug/kv_math"], mean["anchor/kv_math"]) >= 0.3)
    assert claims["gain_needs_augment"].held is not None and claims["beats_anchor_finetune"].held is not None
    k = claims["calm_keeps_anchor_skill"]
    if mean["anchor/num_math_exact"] >= 0.6:
        assert k.held == (mean["calm/num_math_exact"] >= mean["anchor/num_math_exact"] - KEEP_MARGIN)
    else:
        assert k.held is None
    md = (tmp_path / "report.md").read_text()
    assert "30% share of NUM-MATH prompts labelled by the frozen anchor" in md
    assert "How the alternatives compare" in md and (tmp_path / "calm_table1.png").is_file()


def test_exact_scores_do_not_credit_a_wrong_scratchpad():
    pairs = [("3+6+7>", "3+6+7=16"), ("0+4>", "0+4=4")]
    outs = [TOK.encode("6=16", eos=True), TOK.encode("0+4=4", eos=True)]
    assert scores(lambda prompts, n: outs, TOK, TASK, pairs, "num_math", 24) == (1.0, 0.5)


def test_composition_mix_shows_the_anchor_skill():
    """Bridge batches hold round(share·batch) NUM-MATH prompts (no keys) next to D_C; labels come from the
    frozen anchor's own greedy output or from the task."""
    import torch

    from lmlab.model import GPT, GPTConfig

    dc = TASK.dc_dataset(50, 0)
    verified = anchor_skill_pairs(TASK, 20, 1, "verifier")
    assert verified == TASK.dataset("num_math", 20, "dc", 1)
    torch.manual_seed(0)
    anchor = GPT(GPTConfig(vocab_size=TOK.vocab_size, n_layers=1, n_heads=2, d_model=16, seq_len=64)).eval()
    own = anchor_skill_pairs(TASK, 5, 1, "anchor", anchor, TOK, 6)
    outs = base_gen(anchor, TOK)([TOK.encode(p, bos=True) for p, _ in own], 6)
    assert [c for _, c in own] == [TOK.decode([t for t in o if t != TOK.eos_id], skip_special=True) for o in outs]
    assert [p for p, _ in own] == [p for p, _ in verified[:5]]
    key_ids = {TOK.encode(k)[0] for k in TASK.keys}
    for share, want in ((0.3, 10), (0.0, 0)):
        it = mixed_batches(TOK, dc, verified, share, 32, 0, "cpu")
        for _ in range(3):
            ids, tg = next(it)
            numeric = sum(not (set(row.tolist()) & key_ids) for row in ids)
            assert numeric == want and (tg != -100).any(1).all()
    with pytest.raises(ValueError):
        anchor_skill_pairs(TASK, 5, 1, "teacher")


def _means(**kw):
    m = {"aug/kv_subs": 1.0, "aug/kv_math": 0.0, "anchor/num_math": 0.85, "anchor/num_math_exact": 0.85,
         "anchor/kv_math": 0.03, "calm/kv_math": 0.5, "calm/kv_math_dc": 0.6, "calm/num_math": 0.82,
         "calm/num_math_exact": 0.8, "anchor_finetune/heldout": 0.05, "anchor_finetune/num_math": 0.84,
         "anchor_finetune_dc/heldout": 0.04, "anchor_finetune_dc/num_math": 0.4}
    m.update(kw)
    return m


def _verdicts(tmp_path, mean):
    rep = Report("calm_kv", "tiny", 0, tmp_path)
    for cid, text in CLAIMS.items():
        rep.add_claim(cid, text)
    decide_claims(rep, mean)
    return {cid: c.held for cid, c in rep.claims.items()}


def test_keeps_anchor_skill_and_finetune_claims_can_fail(tmp_path):
    v = _verdicts(tmp_path, _means())
    assert v["calm_keeps_anchor_skill"] is True and v["beats_anchor_finetune"] is True
    # the audit's numbers: CALM loses the anchor's NUM-MATH (0.09 vs 0.82), worse than the fine-tuned anchor
    lost = _means(**{"calm/num_math": 0.09, "calm/num_math_exact": 0.0, "anchor_finetune_dc/num_math": 0.15})
    v = _verdicts(tmp_path, lost)
    assert v["calm_keeps_anchor_skill"] is False and v["beats_anchor_finetune"] is False
    # a fine-tune that generalises as well as CALM, or one on D_C that does not forget, also fails the claim
    assert _verdicts(tmp_path, _means(**{"anchor_finetune/heldout": 0.45}))["beats_anchor_finetune"] is False
    assert _verdicts(tmp_path, _means(**{"anchor_finetune_dc/num_math": 0.85}))["beats_anchor_finetune"] is False
    # without an anchor-skill share there is one fine-tune, on D_C
    no_mix = {k: v for k, v in _means(**{"anchor_finetune/num_math": 0.4}).items() if "_dc/" not in k}
    assert _verdicts(tmp_path, no_mix)["beats_anchor_finetune"] is True
    # answer-only accuracy may look fine while the completions are wrong: the claim reads exact completions
    assert _verdicts(tmp_path, _means(**{"calm/num_math_exact": 0.7}))["calm_keeps_anchor_skill"] is False
    # no skill to keep: undecided rather than vacuously held
    weak = _means(**{"anchor/num_math": 0.2, "anchor/num_math_exact": 0.2, "calm/num_math_exact": 0.2})
    assert _verdicts(tmp_path, weak)["calm_keeps_anchor_skill"] is None


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(tmp_path, monkeypatch, capsys):
    """The gpu preset as it is (5,000 keys, 256-wide 6-layer models, ops +-*, evenly spaced connections, every
    baseline) with only step counts, batch, eval size, seeds and the anchor-skill pool shrunk."""
    import lmlab.methods.calm.experiment as ck

    monkeypatch.setattr(ck, "ANCHOR_POOL", 16)
    shrunk = {"batch": 8, "anchor_steps": 2, "augment_steps": 2, "bridge_steps": 2, "finetune_steps": 2,
              "n_eval": 6, "seeds": 1}
    rep = run_experiment("calm_kv", "gpu", out_dir=tmp_path, device="cpu", overrides=shrunk, quiet=False,
                         raise_errors=True)
    assert rep.error is None
    assert "connections [(1, 1), (3, 3), (5, 5)]" in capsys.readouterr().out  # connections="": evenly spaced
    res = json.loads((tmp_path / "results.json").read_text())
    evidence = {c["id"]: c["evidence"] for c in res["claims"]}
    assert set(evidence) == set(CLAIMS)
    assert all("failed" not in e and "not evaluated" not in e for e in evidence.values()), evidence
    for cid in ("gain_needs_augment", "beats_anchor_finetune"):
        assert not evidence[cid].startswith("undecided"), evidence[cid]
    assert len(res["metrics"]["per_seed"]) == 1
    mean = res["metrics"]["mean"]
    for key in ("random_augment/heldout", "prefix_encoder/heldout", "projection_only/heldout",
                "anchor_finetune/heldout", "anchor_finetune_dc/heldout", "anchor_finetune_dc/num_math",
                "calm/kv_math_dc", "calm/num_math_exact"):
        assert 0.0 <= mean[key] <= 1.0
    md = (tmp_path / "report.md").read_text()
    assert all(f"`{b}`" in md for b in ("random_augment", "prefix_encoder", "projection_only", "anchor_finetune_dc"))
    assert (tmp_path / "calm_table1.png").is_file()
