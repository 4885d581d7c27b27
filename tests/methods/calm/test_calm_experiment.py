import json

import pytest

from lmlab.experiment import run_experiment
from lmlab.methods.calm.experiment import CLAIMS
from lmlab.methods.calm.measure import (
    accuracy,
    anchor_skill_pairs,
    base_gen,
    encode_pairs,
    mixed_batches,
    scores,
)
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


SHRUNK = {"n_keys": 40, "d_model": 32, "n_layers": 3, "n_heads": 2, "batch": 8, "anchor_steps": 3,
          "augment_steps": 3, "bridge_steps": 3, "finetune_steps": 3, "n_eval": 4, "seeds": 1}


def test_measure_runs_every_arm_of_every_row_and_decides_from_its_numbers(tmp_path, monkeypatch):
    import lmlab.methods.calm.measure as cm

    monkeypatch.setattr(cm, "ANCHOR_POOL", 16)
    fast = {**SHRUNK, "formats": "direct,scratchpad", "rehearsal": "direct,scratchpad",
            "baselines": "random_augment,anchor_finetune,prefix_encoder,projection_only"}
    rep = run_experiment("calm_kv", "tiny", tmp_path, overrides=fast, quiet=True, raise_errors=True)
    out = json.loads((tmp_path / "results.json").read_text())
    (numbers,) = [r["numbers"] for r in out["runs"]]
    assert set(numbers["rows"]) == {"direct/dc_only", "direct/rehearsal", "scratchpad/dc_only",
                                    "scratchpad/rehearsal"}
    for row in numbers["rows"].values():
        assert set(row) == {"calm", "random_augment", "anchor_finetune", "prefix_encoder", "projection_only"}
        for arm in row.values():
            assert all(0.0 <= arm[k] <= 1.0 for k in ("heldout", "dc", "num_math", "num_math_exact"))
            assert arm["n"] == 4
    assert set(numbers["base"]["anchor"]["num_math"]) == {"direct", "scratchpad"}
    assert {c["id"] for c in out["claims"]} == set(CLAIMS)
    # three-step models learn nothing: the composition claims are undecided (not learned), never not held
    claims = {c.id: c for c in rep.claims.values()}
    for cid in ("composed_solves_heldout", "gain_needs_augment", "calm_keeps_anchor_skill", "beats_anchor_finetune"):
        assert claims[cid].held is None and "not learned" in claims[cid].evidence, claims[cid].evidence
    md = (tmp_path / "report.md").read_text()
    assert "Every arm of every row" in md and (tmp_path / "calm_heldout.png").is_file()


def test_tiny_leaves_the_rows_it_does_not_run_undecided(tmp_path):
    rep = run_experiment("calm_kv", "tiny", tmp_path, overrides=SHRUNK, quiet=True, raise_errors=True)
    out = json.loads((tmp_path / "results.json").read_text())
    assert set(out["runs"][0]["numbers"]["rows"]) == {"direct/dc_only"}
    ev = {c.id: c.evidence for c in rep.claims.values()}
    assert "scratchpad format was not measured" in ev["composed_solves_heldout_scratchpad"]


@pytest.mark.slow
def test_gpu_preset_runs_on_cpu_shrunk(tmp_path, monkeypatch, capsys):
    """The gpu preset as it is (5,000 keys, 256-wide 6-layer models, ops +-*, evenly spaced connections, every
    row and claim baseline) with only step counts, batch, eval size, seeds and the anchor-skill pool shrunk."""
    import lmlab.methods.calm.measure as cm

    monkeypatch.setattr(cm, "ANCHOR_POOL", 16)
    shrunk = {"batch": 8, "anchor_steps": 2, "augment_steps": 2, "bridge_steps": 2, "finetune_steps": 2,
              "n_eval": 6, "seeds": 1}
    rep = run_experiment("calm_kv", "gpu", out_dir=tmp_path, device="cpu", overrides=shrunk, quiet=False,
                         raise_errors=True)
    assert rep.error is None
    res = json.loads((tmp_path / "results.json").read_text())
    rows = res["runs"][0]["numbers"]["rows"]
    assert {"direct/dc_only", "direct/rehearsal", "scratchpad/dc_only"} <= set(rows)
    assert all({"calm", "random_augment", "anchor_finetune"} <= set(r) for r in rows.values())
    assert all("failed" not in c["evidence"] for c in res["claims"])
