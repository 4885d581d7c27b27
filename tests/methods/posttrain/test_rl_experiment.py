import dataclasses
import json
import random

import pytest

from lmlab.experiment import get, redecide, run_experiment
from lmlab.methods.posttrain.decide import CHECKS, CLAIMS
from lmlab.methods.posttrain.experiment import PRESETS, Setup, task_document
from lmlab.utils import LmlabError

FAST = {"pretrain_steps": 12, "checkpoints": [4, 12], "pretrain_docs": 8, "n_train": 12, "n_test": 3, "n_val": 3,
        "eval_samples": 4, "val_samples": 2, "rl_steps": 4, "plateau_window": 2, "rl_prompts": 2, "rl_group": 4,
        "sft_steps": 2, "sft_batch": 4, "general_eval": 8, "dynamics_every": 1, "dynamics_samples": 2,
        "data_arm": True, "big_d_model": 32, "d_model": 16, "n_heads": 2, "n_layers": 1,
        "mixed_sft_lrs": [1e-4, 1e-3], "pipelines": ["rl", "sft", "sft_rl", "parallel_avg"],
        "early_arms": None}  # every arm at every checkpoint


def test_measure_runs_on_a_shrunken_config_and_decides_every_claim(tmp_path):
    rep = run_experiment("rl_checkpoints", "tiny", tmp_path, overrides=FAST, quiet=True, raise_errors=True)
    assert rep.error is None
    out = json.loads((tmp_path / "results.json").read_text())
    assert {c["id"] for c in out["claims"]} == set(CLAIMS) and {c["id"] for c in out["checks"]} == set(CHECKS)
    for c in out["claims"]:  # a verdict, or a reason why not
        assert c["evidence"].strip() and "failed" not in c["evidence"], c
    numbers = out["runs"][0]["numbers"]
    assert [r["step"] for r in numbers["checkpoints"]] == [4, 12]
    arms = numbers["checkpoints"][-1]["arms"]
    assert set(arms) == {"base", "rl", "sft", "sft_rl", "parallel_avg"}
    assert all(a["rl_steps"] <= FAST["rl_steps"] for k, a in arms.items() if k in ("rl", "sft_rl", "parallel_avg"))
    assert {"copy_nll", "recall_nll", "general_nll", "counts"} <= set(arms["base"])
    assert numbers["mixed_lr"]["chosen"] in FAST["mixed_sft_lrs"] and len(numbers["mixed_lr"]["val"]) == 2
    assert set(numbers["data_arm"]) == {"base mix", "targeted mix", "base mix, 2x model"}
    for name in ("pass_per_checkpoint", "pass_at_k_curves", "general_capability", "rl_readiness", "rl_dynamics",
                 "data_vs_size"):
        assert (tmp_path / f"{name}.png").is_file()
    assert redecide(tmp_path).error is None  # the per-seed numbers decide again without training


def test_no_test_or_validation_question_is_in_the_pretraining_documents():
    """With 2-digit questions (100 in all), 30 of them in the test and validation splits, 2000 documents drawn
    without the exclusion would contain nearly every one of them."""
    cfg = dataclasses.replace(PRESETS["tiny"], test_difficulty=2, train_difficulties=[2], n_test=20, n_val=10,
                              n_train=20)
    setup = Setup.build(cfg)
    assert len(setup.excluded) == 30 and not setup.excluded & {p.prompt for p in setup.train}
    rng = random.Random(0)
    docs = [task_document(setup.task, rng, [2], 0.1, setup.excluded) for _ in range(2000)]
    assert not {doc[:doc.index(":") + 1] for doc in docs} & setup.excluded
    unguarded = [task_document(setup.task, rng, [2], 0.1, frozenset()) for _ in range(2000)]
    assert {doc[:doc.index(":") + 1] for doc in unguarded} & setup.excluded  # the test can fail


def test_presets_declare_the_budgeted_configurations():
    exp = get("rl_checkpoints")
    assert exp.presets["tiny"].seeds == 1 and exp.presets["small"].seeds >= 3 and exp.presets["gpu"].seeds >= 4
    assert exp.presets["small"].n_test >= 200 and exp.presets["gpu"].n_test >= 200
    assert exp.presets["gpu"].eval_samples >= 128
    for preset in exp.presets.values():
        assert preset.checkpoints[-1] == preset.pretrain_steps
        assert sorted(preset.checkpoints) == preset.checkpoints
        assert preset.eval_temperature == 0.6
    assert len(exp.presets["small"].mixed_sft_lrs) >= 2 and exp.presets["small"].data_arm


@pytest.mark.parametrize("key, value, match", [
    ("checkpoints", [4, 20], "checkpoints"), ("checkpoints", [12, 4], "checkpoints"),
    ("checkpoints", [0, 12], "checkpoints"), ("eval_temperature", 0.0, "eval_temperature"),
    ("mixed_sft_lrs", [], "mixed_sft_lrs"), ("rl_steps", 3, "plateau_window"),
    ("general_weights", [1.0, 0.0], "general_weights")])
def test_bad_settings_are_refused_before_pretraining(tmp_path, key, value, match):
    with pytest.raises(LmlabError, match=match):
        run_experiment("rl_checkpoints", "tiny", tmp_path, overrides={**FAST, key: value}, quiet=True,
                       raise_errors=True)


def test_unknown_override_is_rejected(tmp_path):
    with pytest.raises(LmlabError):
        run_experiment("rl_checkpoints", "tiny", tmp_path, overrides={"no_such_key": 1}, quiet=True)


def test_pretraining_with_a_data_worker_process_gives_the_same_checkpoints():
    import torch

    from lmlab.methods.posttrain.experiment import _pretrain

    snaps, logs = {}, {}
    for worker in (False, True):
        cfg = dataclasses.replace(PRESETS["tiny"], **{**FAST, "pretrain_steps": 6, "checkpoints": [3, 6],
                                                       "data_process": worker})
        setup = Setup.build(cfg)
        log = logs.setdefault(worker, []).append
        _, snaps[worker] = _pretrain(cfg, setup.task, setup.suite, setup.tok, 0.1, 16, 0, torch.device("cpu"), log,
                                     setup.excluded)
    composition = [line.split("token composition ")[1] for line in logs[False]]
    assert composition == [line.split("token composition ")[1] for line in logs[True]]
    assert "task 0.0" not in composition[0] and "general 0.0" not in composition[0]
    for step in (3, 6):
        for k, v in snaps[False][step].items():
            assert torch.equal(v, snaps[True][step][k]), (step, k)


@pytest.mark.parametrize("pipeline", ["rl", "sft_rl", "parallel_avg"])
def test_rl_stops_when_the_stop_rule_says_so_and_not_before(pipeline):
    from lmlab.methods.posttrain.pipelines import PostTrainConfig, run_pipeline
    from lmlab.methods.posttrain.tasks import DigitSumTask, make_split
    from lmlab.model import GPT, GPTConfig
    from lmlab.rl import GRPOConfig
    from lmlab.sft import SFTConfig
    from lmlab.tokenizer import CharTokenizer

    task = DigitSumTask()
    tok = CharTokenizer(task.alphabet)
    probs = make_split(task, 8, 2, seed=0)
    cfg = PostTrainConfig(rl=GRPOConfig(steps=6, prompts_per_step=2, group_size=4, max_new_tokens=10),
                          sft=SFTConfig(steps=2, batch_size=4))
    asked = []

    def until(logs):
        asked.append(len(logs))
        return len(logs) >= 3

    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=1, n_heads=2, d_model=16, seq_len=32))
    hist = run_pipeline(pipeline, model, tok, task, probs, cfg, until=until)
    rl = hist["rl" if pipeline != "parallel_avg" else "parallel_avg"]
    assert len(rl) == 3 and asked == [1, 2, 3] and not model.training
    with pytest.raises(LmlabError, match="resume"):
        run_pipeline(pipeline, model, tok, task, probs, cfg, until=until, resume=object())
