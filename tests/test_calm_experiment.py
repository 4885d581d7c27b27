import json

from lmlab.experiments import run_experiment
from lmlab.experiments.calm_kv import CLAIMS, _alternatives_note, accuracy, encode_pairs
from lmlab.tasks.kv_arith import KVTask

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
                "anchor_finetune/heldout", "anchor_finetune/num_math", "calm/kv_math", "aug/kv_subs"):
        assert 0.0 <= mean[key] <= 1.0
    claims = {c.id: c for c in rep.claims.values()}
    # the verdicts follow the recorded numbers (untrained models: far from every threshold)
    a = claims["augment_knows_values"]
    assert a.held == (mean["aug/kv_subs"] >= 0.8 and mean["aug/kv_math"] <= 0.2)
    c = claims["composed_solves_heldout"]
    assert c.held == (mean["calm/kv_math"] - max(mean["aug/kv_math"], mean["anchor/kv_math"]) >= 0.3)
    assert claims["gain_needs_augment"].held is not None and claims["beats_anchor_finetune"].held is not None
    md = (tmp_path / "report.md").read_text()
    assert "How the alternatives compare" in md and (tmp_path / "calm_table1.png").is_file()
