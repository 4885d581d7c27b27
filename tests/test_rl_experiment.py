import json

import pytest

from lmlab.experiments import get, run_experiment
from lmlab.experiments.rl_checkpoints import CLAIMS, _decide

FAST = {"pretrain_steps": 12, "checkpoints": [4, 12], "pretrain_docs": 8, "n_train": 12, "n_test": 3,
        "eval_samples": 4, "rl_steps": 2, "rl_prompts": 2, "rl_group": 4, "sft_steps": 2, "sft_batch": 4,
        "general_eval": 8, "dynamics_every": 1, "dynamics_samples": 2, "data_arm": True, "big_d_model": 32,
        "d_model": 16, "n_heads": 2, "n_layers": 1, "pipelines": ["rl", "sft", "sft_rl", "parallel_avg"],
        "early_arms": None}


def test_experiment_runs_end_to_end_and_decides_every_claim(tmp_path):
    rep = run_experiment("rl_checkpoints", "tiny", tmp_path, overrides=FAST, quiet=True, raise_errors=True)
    assert rep.error is None
    out = json.loads((tmp_path / "results.json").read_text())
    assert {c["id"] for c in out["claims"]} == set(CLAIMS)
    for c in out["claims"]:  # a verdict, or an explicit reason why not
        assert c["held"] is not None or c["evidence"].startswith("undecided")
    for name in ("pass_per_checkpoint", "pass_at_k_curves", "general_capability", "rl_dynamics", "data_vs_size"):
        assert (tmp_path / f"{name}.png").is_file()
    m = out["metrics"]
    assert m["rollout_tok_s"] > 0 and 0 < m["rollout_time_frac"] < 1
    assert "pass1/step12/parallel_avg" in m and "data_arm/targeted mix/post_rl_pass1" in m


def _interrupted_run(tmp_path, monkeypatch, stop) -> dict:
    """Run the FAST preset with 2 seeds, raising KeyboardInterrupt (as a time limit's SIGINT would) when
    pre-training is called with arguments for which `stop(seed, share, cfg)` is true; return results.json."""
    import lmlab.experiments.rl_checkpoints as rc

    real = rc._pretrain

    def pretrain(cfg, task, suite, tok, share, d, seed, dev, log):
        if stop(seed, share, cfg):
            raise KeyboardInterrupt
        return real(cfg, task, suite, tok, share, d, seed, dev, log)

    monkeypatch.setattr(rc, "_pretrain", pretrain)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("rl_checkpoints", "tiny", tmp_path, overrides={**FAST, "seeds": 2}, quiet=True)
    out = json.loads((tmp_path / "results.json").read_text())
    assert "interrupted" in out["error"]
    out["claims"] = {c["id"]: c for c in out["claims"]}
    return out


def test_interrupt_in_data_arm_still_reports_claims_1_to_4(tmp_path, monkeypatch):
    out = _interrupted_run(tmp_path, monkeypatch,
                           lambda seed, share, cfg: seed == 1 and share == cfg["targeted_hard_share"])
    claims = out["claims"]
    for cid in ("c1_too_early", "c2_expand_vs_sharpen", "c3_general", "c4_parallel_avg"):
        assert "interrupted" not in claims[cid]["evidence"]
    c5 = claims["c5_data_vs_size"]["evidence"]
    assert "per seed ([0])" in c5 or "undecided: neither" in c5
    assert (tmp_path / "data_vs_size.png").is_file()


def test_interrupt_after_the_first_seed_reports_that_seed(tmp_path, monkeypatch):
    out = _interrupted_run(tmp_path, monkeypatch, lambda seed, share, cfg: seed == 1)
    assert "interrupted" not in out["claims"]["c3_general"]["evidence"]
    assert "interrupted before the data-composition arm" in out["claims"]["c5_data_vs_size"]["evidence"]
    assert "pass1/step12/rl" in out["metrics"]


def test_presets_declare_the_budgeted_configurations():
    exp = get("rl_checkpoints")
    assert exp.presets["tiny"]["seeds"] == 1 and exp.presets["small"]["seeds"] >= 2
    assert exp.presets["gpu"]["seeds"] >= 2 and exp.presets["small"]["data_arm"]
    for preset in exp.presets.values():
        assert preset["checkpoints"][-1] == preset["pretrain_steps"]
        assert sorted(preset["checkpoints"]) == preset["checkpoints"]


class _Rep:
    def __init__(self):
        self.claims = {}

    def decide(self, cid, held, evidence):
        self.claims[cid] = (held, evidence)


class _Ctx:
    def __init__(self):
        self.report = _Rep()


def _res(pass1, passk, nll):
    return {"pass1": pass1, "passk": passk, "general_nll": nll}


def test_claim_decisions_follow_the_numbers():
    """The decision rules on hand-made numbers: the paper's pattern holds, its opposite does not."""
    cfg = {"checkpoints": [1, 2], "pipelines": ["rl", "sft", "sft_rl", "parallel_avg"], "eval_samples": 32,
           "targeted_hard_share": 0.5, "big_d_model": 96}
    paper = {(0, 1, "base"): _res(0, 0, 2.0), (0, 1, "rl"): _res(0, 0, 2.0), (0, 1, "sft"): _res(0.1, 0.5, 2.3),
             (0, 1, "sft_rl"): _res(0.2, 0.5, 2.3), (0, 1, "parallel_avg"): _res(0.05, 0.4, 2.05),
             (0, 2, "base"): _res(0.05, 0.6, 1.9), (0, 2, "rl"): _res(0.3, 0.8, 1.9),
             (0, 2, "sft"): _res(0.3, 0.8, 2.0), (0, 2, "sft_rl"): _res(0.5, 0.75, 2.0),
             (0, 2, "parallel_avg"): _res(0.3, 0.85, 1.91)}
    data = {(0, "targeted mix"): {"before": {"passk": 0.5}, "after": {"pass1": 0.4}},
            (0, "base mix, 2x model"): {"before": {"passk": 0.5}, "after": {"pass1": 0.2}}}
    ctx = _Ctx()
    _decide(ctx, cfg, paper, [0], data)
    assert all(held is True for held, _ in ctx.report.claims.values()), ctx.report.claims
    flipped = dict(paper)
    flipped[(0, 2, "rl")] = _res(0.06, 0.55, 2.1)  # RL barely helps and hurts general text
    flipped[(0, 2, "sft_rl")] = _res(0.5, 0.95, 2.0)  # SFT→RL expands instead of sharpening
    data[(0, "targeted mix")]["after"]["pass1"] = 0.1
    ctx = _Ctx()
    _decide(ctx, cfg, flipped, [0], data)
    assert {cid: held for cid, (held, _) in ctx.report.claims.items()} == {
        "c1_too_early": False, "c2_expand_vs_sharpen": False, "c3_general": False,
        "c4_parallel_avg": False,  # SFT→RL now has the best pass@k_max
        "c5_data_vs_size": False}


def test_unknown_override_is_rejected(tmp_path):
    from lmlab.utils import LmlabError

    with pytest.raises(LmlabError):
        run_experiment("rl_checkpoints", "tiny", tmp_path, overrides={"no_such_key": 1}, quiet=True)


def test_pretraining_with_a_data_worker_process_gives_the_same_checkpoints():
    import torch

    from lmlab.experiments.rl_checkpoints import PRESETS, _pretrain
    from lmlab.tasks.general import GeneralSuite
    from lmlab.tasks.reasoning import get_task
    from lmlab.tokenizer import CharTokenizer

    task, suite = get_task("digitsum"), GeneralSuite()
    tok = CharTokenizer(set(task.alphabet + suite.alphabet))
    snaps, logs = {}, {}
    for worker in (False, True):
        cfg = {**PRESETS["tiny"], **FAST, "pretrain_steps": 6, "checkpoints": [3, 6], "data_process": worker}
        log = logs.setdefault(worker, []).append
        _, snaps[worker] = _pretrain(cfg, task, suite, tok, 0.1, 16, 0, torch.device("cpu"), log)
    composition = [line.split("token composition ")[1] for line in logs[False]]
    assert composition == [line.split("token composition ")[1] for line in logs[True]]
    assert "task 0.0" not in composition[0] and "general 0.0" not in composition[0]
    for step in (3, 6):
        for k, v in snaps[False][step].items():
            assert torch.equal(v, snaps[True][step][k]), (step, k)
