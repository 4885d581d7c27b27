import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab import checkpoint as ck
from lmlab.config import load_config
from lmlab.model import GPT, GPTConfig
from lmlab.train import TrainingDiverged, lm_loss, lr_at, make_optimizer, peak_flops, pretrain, train_step
from lmlab.utils import LmlabError

MICRO = {
    "model.n_layers": 1,
    "model.n_heads": 2,
    "model.d_model": 32,
    "model.seq_len": 32,
    "data.sources": [
        {"kind": "synthetic", "generator": "grammar", "weight": 3},
        {"kind": "synthetic", "generator": "arithmetic", "weight": 1},
    ],
    "data.buffer_docs": 16,
    "train.batch_size": 4,
    "train.max_steps": 8,
    "train.warmup": 2,
    "train.lr": 1e-2,
    "train.save_every": 3,
    "train.eval_every": 4,
    "train.eval_batches": 1,
    "train.log_every": 1,
    "train.device": "cpu",
    "train.threads": 1,
    "train.progress": False,
    "train.tensorboard": False,
}


def micro_cfg(**kw):
    return load_config(None, {**MICRO, **{k.replace("__", "."): v for k, v in kw.items()}})


def final_weights(run):
    model, meta = ck.load(run)
    return model.state_dict(), meta


def assert_same(a, b, exact=True):
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 8-step run (TensorBoard on)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    pretrain(micro_cfg(train__tensorboard=True), out)
    return out


def test_grad_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    a = GPT(GPTConfig(vocab_size=40, n_layers=2, n_heads=2, d_model=32, seq_len=16))
    b = copy.deepcopy(a)
    x = torch.randint(0, 40, (8, 16))
    opt_a, opt_b = make_optimizer(a, 1e-2, 0.1), make_optimizer(b, 1e-2, 0.1)
    micro = [(x[i : i + 2], x[i : i + 2].roll(-1, 1)) for i in range(0, 8, 2)]
    la, na, _ = train_step(a, opt_a, micro, lm_loss, grad_clip=0.5)
    lb, nb, _ = train_step(b, opt_b, [(x, x.roll(-1, 1))], lm_loss, grad_clip=0.5)
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(na, nb)
    assert na > 0.5  # clipping was active
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_nonfinite_step_is_not_applied():
    model = GPT(GPTConfig(vocab_size=40, n_layers=1, n_heads=2, d_model=16, seq_len=8))
    before = copy.deepcopy(model.state_dict())
    opt = make_optimizer(model, 1e-2)
    x = torch.randint(0, 40, (2, 8))
    _, _, applied = train_step(model, opt, [(x, x)], lambda m, b: m(*b) * float("nan"))
    assert not applied
    assert_same(before, model.state_dict())


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, warmup=10, min_lr_frac=0.1) == pytest.approx(0.1)
    assert lr_at(55, 100, 1.0, warmup=10, min_lr_frac=0.0) == pytest.approx(0.5)
    assert peak_flops(torch.device("cpu")) is None


def test_pretrain_writes_run_folder(reference):
    assert ck.list_steps(reference) == [0, 3, 6, 8]
    for name in ("config.yaml", "tokenizer.json", "metrics.jsonl"):
        assert (reference / name).is_file()
    assert any((reference / "tb").glob("events.out.tfevents.*"))
    recs = [json.loads(ln) for ln in (reference / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in recs if "val_loss" in r] == [4, 8]
    _, meta = final_weights(reference)
    assert meta["tokens_seen"] == 8 * 4 * 32 and meta["data_state"]["rows_emitted"] == 8 * 4
    seed, _ = ck.load(reference, step=0)  # the seed checkpoint is the initialisation
    torch.manual_seed(0)
    assert_same(seed.state_dict(), GPT(seed.cfg).state_dict())


def test_existing_run_needs_resume(reference):
    with pytest.raises(Exception, match="--resume"):
        pretrain(micro_cfg(), reference)


@pytest.mark.parametrize(
    "key, value",
    [
        ("lr", 2e-2),
        ("warmup", 3),
        ("min_lr_frac", 0.5),
        ("schedule", "constant"),
        ("weight_decay", 0.0),  # would be silently ignored: the optimizer's saved param_groups win
        ("betas", [0.8, 0.99]),
        ("grad_clip", 0.5),
        ("max_steps", 12),  # the cosine schedule depends on max_steps
        ("parallel", "fsdp"),  # FSDP checkpoints key the optimizer state by name, DDP by index
    ],
)
def test_resume_refuses_changed_optimisation_settings(reference, key, value):
    from lmlab.utils import LmlabError

    before = sorted(p.name for p in reference.iterdir())
    with pytest.raises(LmlabError) as e:
        pretrain(micro_cfg(**{f"train__{key}": value}), reference, resume=True)
    msg = str(e.value)
    saved = micro_cfg().to_dict()["train"][key]
    assert f"train.{key} was {saved}, now {value}" in msg and f"train.{key}={saved}" in msg
    assert sorted(p.name for p in reference.iterdir()) == before


def test_resume_of_a_finished_run_says_so_and_exits_0(reference, tmp_path, capsys):
    import yaml

    from lmlab.cli import main
    from lmlab.utils import LmlabError

    with pytest.raises(LmlabError, match=r"already at step 8 >= train.max_steps=8: raise train.max_steps"):
        pretrain(micro_cfg(), reference, resume=True)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(micro_cfg().to_dict()))
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()}
    rc = main(["pretrain", "--config", str(cfg), "--out", str(reference), "--resume"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("nothing to do:") and "already at step 8" in out
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()} == before  # nothing rewritten


def test_constant_schedule_run_can_be_extended_exactly(tmp_path):
    kw = {"train__schedule": "constant", "train__eval_every": 0, "train__save_every": 0}
    ref, ext = tmp_path / "ref", tmp_path / "ext"
    pretrain(micro_cfg(train__max_steps=5, **kw), ref)
    assert pretrain(micro_cfg(train__max_steps=3, **kw), ext)["step"] == 3
    res = pretrain(micro_cfg(train__max_steps=5, **kw), ext, resume=True)
    assert res["step"] == 5
    assert_same(final_weights(ref)[0], final_weights(ext)[0])


def test_wsd_schedule_warms_up_holds_then_decays_linearly():
    lrs = [lr_at(s, 10, 1.0, warmup=2, min_lr_frac=0.1, schedule="wsd", decay_frac=0.3) for s in range(11)]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.7, 0.4, 0.1])
    assert lr_at(3, 10, 1.0, warmup=6, schedule="wsd", decay_frac=0.9) == pytest.approx(4 / 6)  # warmup first
    with pytest.raises(LmlabError, match="unknown learning-rate schedule 'linear'"):
        lr_at(0, 10, 1.0, schedule="linear")


def _interrupted_at(step):
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] == step:
            signal.raise_signal(signal.SIGINT)
        return lm_loss(model, batch)

    return loss


def test_wsd_run_extended_before_its_decay_equals_an_uninterrupted_longer_run(tmp_path):
    kw = {"train__schedule": "wsd", "train__decay_frac": 0.25, "train__eval_every": 0}
    ref, ext = tmp_path / "ref", tmp_path / "ext"
    pretrain(micro_cfg(train__max_steps=12, **kw), ref)  # decays from step 9
    res = pretrain(micro_cfg(train__max_steps=8, **kw), ext, loss_fn=_interrupted_at(5))  # would decay from 6
    assert res["interrupted"] and res["step"] == 5
    assert pretrain(micro_cfg(train__max_steps=12, **kw), ext, resume=True)["step"] == 12
    assert_same(final_weights(ref)[0], final_weights(ext)[0])


def test_wsd_run_in_its_decay_cannot_change_max_steps(tmp_path):
    kw = {"train__schedule": "wsd", "train__decay_frac": 0.5, "train__eval_every": 0}
    out = tmp_path / "run"
    pretrain(micro_cfg(train__max_steps=8, **kw), out, loss_fn=_interrupted_at(6))  # decay from step 4
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(LmlabError, match=r"checkpoint \(step 6\) is past step 4.*train.max_steps=8"):
        pretrain(micro_cfg(train__max_steps=16, **kw), out, resume=True)
    assert sorted(p.name for p in out.iterdir()) == before


def test_unknown_schedule_and_decay_share_are_config_errors():
    with pytest.raises(LmlabError, match="train.schedule must be 'cosine', 'constant' or 'wsd'"):
        micro_cfg(train__schedule="linear").validate()
    with pytest.raises(LmlabError, match=r"train.decay_frac must be in \[0, 1\]"):
        micro_cfg(train__decay_frac=1.5).validate()


def test_resume_refuses_another_world_size(reference, tmp_path):
    from lmlab.train import _check_resume_config
    from lmlab.utils import LmlabError

    meta = ck.read_meta(ck.resolve(reference))
    assert meta["extra"]["world_size"] == 1  # recorded with every checkpoint
    with pytest.raises(LmlabError, match=r"trained on 2 process\(es\), now 1.*--nproc_per_node 2"):
        _check_resume_config(meta["run_config"], micro_cfg(), reference, saved_world=2, world=1)
    _check_resume_config(meta["run_config"], micro_cfg(), reference, saved_world=1, world=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="train.device=auto resolves to CUDA here")
def test_bf16_without_cuda_is_refused_before_anything_is_written(tmp_path):
    from lmlab.utils import LmlabError

    with pytest.raises(LmlabError, match="train.dtype=bf16 needs a CUDA device"):
        pretrain(micro_cfg(train__dtype="bf16", train__device="auto"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sigint_saves_and_resume_is_bit_identical(reference, tmp_path):
    out = tmp_path / "run"
    calls = {"n": 0}

    def interrupting_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # during step 5: like Ctrl-C
            signal.raise_signal(signal.SIGINT)
        return lm_loss(model, batch)

    res = pretrain(micro_cfg(), out, loss_fn=interrupting_loss)
    assert res["interrupted"] and res["step"] == 5 and ck.list_steps(out) == [0, 3, 5]
    res = pretrain(micro_cfg(), out, resume=True)
    assert res["step"] == 8 and not res["interrupted"]
    assert_same(final_weights(reference)[0], final_weights(out)[0])
    ref_losses = [json.loads(ln).get("loss") for ln in (reference / "metrics.jsonl").read_text().splitlines()]
    losses = [json.loads(ln).get("loss") for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses == ref_losses


def test_kill9_between_checkpoints_then_resume_is_bit_identical(tmp_path):
    # a slower run (more steps, larger batch) so that the kill lands between checkpoints
    kw = {"train__max_steps": 40, "train__save_every": 10, "train__batch_size": 8, "train__eval_every": 0}
    ref = tmp_path / "ref"
    pretrain(micro_cfg(**kw), ref)
    cfg = tmp_path / "cfg.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(micro_cfg(**kw).to_dict()))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmlab.cli", "pretrain", "--config", str(cfg), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait until it is past step 12 (checkpoint 10 written)
            if metrics.exists() and sum(1 for _ in metrics.open()) >= 12:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    steps = ck.list_steps(out)
    assert 10 <= steps[-1] < 40, steps  # killed mid-run
    res = pretrain(micro_cfg(**kw), out, resume=True)
    assert res["step"] == 40
    assert_same(final_weights(ref)[0], final_weights(out)[0])


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    calls = {"n": 0}

    def exploding_loss(model, batch):
        calls["n"] += 1
        loss = lm_loss(model, batch)
        return loss * float("inf") if calls["n"] == 5 else loss

    with pytest.raises(TrainingDiverged, match="step 5") as e:
        pretrain(micro_cfg(), out, loss_fn=exploding_loss)
    assert "step_000003" in str(e.value)
    assert ck.list_steps(out) == [0, 3]
    ck.load(out)  # the last good checkpoint is intact


def _torchrun_pretrain(cfg, out, tmp_path, *args):
    """`lmlab pretrain` under torchrun with 2 CPU processes (gloo)."""
    import yaml

    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lmlab.cli",
           "pretrain", "--config", str(path), "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # no dependence on the hostname resolving
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parent)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.slow
def test_ddp_gloo_two_processes_equal_single_process_accumulation(tmp_path):
    single = tmp_path / "single"
    pretrain(
        micro_cfg(train__batch_size=2, train__grad_accum=2, train__max_steps=4, train__eval_every=0), single
    )
    out = tmp_path / "ddp"
    _torchrun_pretrain(micro_cfg(train__batch_size=2, train__max_steps=4, train__eval_every=0), out, tmp_path)
    assert ck.list_steps(out) == [0, 3, 4]
    a, meta_a = final_weights(single)
    b, meta_b = final_weights(out)
    assert meta_a["tokens_seen"] == meta_b["tokens_seen"] and meta_a["data_state"] == meta_b["data_state"]
    assert_same(a, b, exact=False)


@pytest.mark.slow
def test_fsdp_gloo_two_processes_equal_single_process_and_resume_sharded(tmp_path):
    """FSDP2 shards weights, gradients and optimizer state; its checkpoints hold the full state, so a run
    saved and resumed under FSDP (with gradient accumulation, clipping and evaluation) equals one process."""
    kw = {"train__batch_size": 1, "train__schedule": "constant", "train__eval_every": 2, "train__save_every": 0}
    single = tmp_path / "single"
    pretrain(micro_cfg(train__grad_accum=4, train__max_steps=4, **kw), single)
    out = tmp_path / "fsdp"
    fsdp = {"train__parallel": "fsdp", "train__grad_accum": 2, **kw}
    _torchrun_pretrain(micro_cfg(train__max_steps=2, **fsdp), out, tmp_path)
    _torchrun_pretrain(micro_cfg(train__max_steps=4, **fsdp), out, tmp_path, "--resume")
    assert ck.list_steps(out) == [0, 2, 4]
    a, meta_a = final_weights(single)
    b, meta_b = final_weights(out)
    assert meta_a["tokens_seen"] == meta_b["tokens_seen"] and meta_a["data_state"] == meta_b["data_state"]
    assert_same(a, b, exact=False)
    opt = ck.load_optimizer_state(out)
    assert set(opt["state"]) >= {"embed.weight", "blocks.0.attn.q_proj.weight"}  # full, keyed by name
    assert opt["state"]["embed.weight"]["exp_avg"].shape == a["embed.weight"].shape
    val = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in ln]
    ref = [json.loads(ln) for ln in (single / "metrics.jsonl").read_text().splitlines() if "val_loss" in ln]
    assert [v["step"] for v in val] == [2, 4] and val[-1]["val_loss"] == pytest.approx(ref[-1]["val_loss"], rel=1e-4)


