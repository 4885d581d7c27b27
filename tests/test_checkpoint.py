import json

import pytest
import torch
from torch import nn

from lmlab import checkpoint as ck
from lmlab.model import GPT, GPTConfig, MultiHeadAttention, register_attention
from lmlab.train import make_optimizer
from lmlab.utils import LmlabError


@register_attention("test_gained_mha")
class GainedMHA(MultiHeadAttention):
    """MHA with an extra learned per-head gain whose initial value comes from attention_options."""

    def __init__(self, cfg, layer_idx):
        super().__init__(cfg, layer_idx)
        self.gain0 = cfg.attention_options.get("gain", 1.0)
        self.head_gain = nn.Parameter(torch.full((cfg.n_heads,), self.gain0))

    def reset_custom_parameters(self):
        nn.init.constant_(self.head_gain, self.gain0)

    def forward(self, x, rope, ctx):
        return super().forward(x, rope, ctx) * self.head_gain.mean()


def tiny(**kw):
    return GPTConfig(**{"vocab_size": 61, "n_layers": 2, "n_heads": 2, "d_model": 32, "seq_len": 16, **kw})


def trained(cfg, steps=2):
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = make_optimizer(model, 1e-2, 0.1)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    for _ in range(steps):
        opt.zero_grad()
        model(x, x).backward()
        opt.step()
    return model, opt, x


@pytest.mark.parametrize(
    "cfg",
    [
        tiny(),
        tiny(tie_embeddings=False),
        tiny(layer_attention=["mha", "test_gained_mha"], attention_options={"gain": 0.5}, n_kv_heads=1),
    ],
    ids=["tied", "untied", "custom-attention"],
)
def test_roundtrip(tmp_path, cfg):
    model, opt, x = trained(cfg)
    path = ck.save(tmp_path, 3, model, opt, config={"k": "v"}, tokens_seen=96, data_state={"pos": 5})
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "optim.pt"]
    loaded, meta = ck.load(tmp_path)
    assert meta["step"] == 3 and meta["tokens_seen"] == 96 and meta["data_state"] == {"pos": 5}
    assert meta["run_config"] == {"k": "v"} and meta["content_hash"] == meta["files"]["model.safetensors"]
    assert loaded.cfg == model.cfg
    assert (loaded.lm_head.weight is loaded.embed.weight) == cfg.tie_embeddings
    for (n, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n
    assert torch.equal(model(x), loaded(x))
    if cfg.layer_attention:
        assert type(loaded.blocks[1].attn) is GainedMHA and "test_checkpoint" in meta["attention_modules"][-1]


def test_optimizer_and_rng_roundtrip(tmp_path):
    model, opt, x = trained(tiny())
    torch.manual_seed(123)
    ck.save(tmp_path, 1, model, opt)
    expected = torch.rand(3)
    model2 = GPT(tiny())
    opt2 = make_optimizer(model2, 1e-2, 0.1)
    meta = ck.load_into(model2, opt2, tmp_path)
    ck.set_rng_state(json.loads(json.dumps(meta["rng"])))
    assert torch.equal(torch.rand(3), expected)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k]["exp_avg_sq"], s2[k]["exp_avg_sq"]) for k in s1)
    for o in (opt, opt2):  # one more identical step keeps them identical
        o.zero_grad()
    model(x, x).backward()
    model2(x, x).backward()
    opt.step()
    opt2.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


def test_latest_step_and_listing(tmp_path):
    model, _, _ = trained(tiny(), steps=0)
    for step in (0, 10, 5):
        ck.save(tmp_path, step, model)
    (tmp_path / ".tmp-step_000020-999").mkdir()  # a save killed midway
    (tmp_path / "step_000030").mkdir()  # no meta.json: not complete
    assert ck.list_steps(tmp_path) == [0, 5, 10]
    assert ck.load(tmp_path)[1]["step"] == 10
    assert ck.load(tmp_path, step=0)[1]["step"] == 0
    with pytest.raises(LmlabError, match="available steps"):
        ck.load(tmp_path, step=7)
    with pytest.raises(LmlabError, match="meta.json is missing"):
        ck.load(tmp_path, step=30)
    ck.remove_partial(tmp_path)
    assert not (tmp_path / ".tmp-step_000020-999").exists()


def test_interrupted_replacement_is_restored(tmp_path):
    model, _, _ = trained(tiny(), steps=0)
    ck.save(tmp_path, 4, model)
    (tmp_path / "step_000004").rename(tmp_path / ".old-step_000004-123")  # killed between the two renames
    ck.remove_partial(tmp_path)
    assert ck.list_steps(tmp_path) == [4]


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta"])
def test_damaged_checkpoint_is_refused(tmp_path, damage):
    model, opt, _ = trained(tiny())
    d = ck.save(tmp_path, 2, model, opt)
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(bytes(data[: len(data) // 2]))
    else:
        (d / "meta.json").write_text((d / "meta.json").read_text()[:50])
    with pytest.raises(LmlabError) as e:
        ck.load(tmp_path)
    assert str(d / ("meta.json" if damage == "meta" else "model.safetensors")) in str(e.value)


def test_damaged_optimizer_state_is_refused(tmp_path):
    model, opt, _ = trained(tiny())
    d = ck.save(tmp_path, 2, model, opt)
    with open(d / "optim.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(LmlabError, match="optim.pt"):
        ck.load_into(GPT(tiny()), make_optimizer(model, 1e-2), tmp_path)


def test_resume_into_a_different_model_is_refused(tmp_path):
    model, _, _ = trained(tiny(), steps=0)
    ck.save(tmp_path, 0, model)
    with pytest.raises(LmlabError, match="different model config"):
        ck.load_into(GPT(tiny(n_layers=3)), None, tmp_path)


def test_equal_weights_give_equal_checkpoint_bytes(tmp_path):
    """The model file, and so its content hash, depends on the weights alone: saved again, in this process and in
    fresh interpreters (whose hash seeds differ), the bytes are the same."""
    import subprocess
    import sys

    code = ("import sys, torch; from lmlab import checkpoint; from lmlab.model import GPT, GPTConfig; "
            "torch.manual_seed(0); m = GPT(GPTConfig(vocab_size=16, n_layers=1, n_heads=2, d_model=16)); "
            "checkpoint.save(sys.argv[1], 3, m, save_rng=False)")
    for i in range(3):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"run{i}")], check=True)
    files = [(tmp_path / f"run{i}" / "step_000003" / ck.MODEL_FILE).read_bytes() for i in range(3)]
    assert files[0] == files[1] == files[2]
    metas = [ck.read_meta(tmp_path / f"run{i}" / "step_000003") for i in range(3)]
    assert len({m["content_hash"] for m in metas}) == 1


def _foreign(d, name, source):
    """Put `source` in place of checkpoint file `name` of folder `d` and record its hash in meta.json, as a
    hand-copied file with a matching hash would be."""
    (d / name).write_bytes(source.read_bytes())
    meta = json.loads((d / ck.META_FILE).read_text())
    meta["files"][name] = ck.sha256_file(d / name)
    (d / ck.META_FILE).write_text(json.dumps(meta))


def test_tensors_of_another_model_with_a_matching_hash_are_refused_naming_parameter_and_shapes(tmp_path):
    model, opt, _ = trained(tiny())
    d = ck.save(tmp_path / "run", 2, model, opt)
    other = ck.save(tmp_path / "other", 2, trained(tiny(d_model=16))[0])  # same names, other shapes
    _foreign(d, ck.MODEL_FILE, other / ck.MODEL_FILE)
    for load in (lambda: ck.load(tmp_path / "run"), lambda: ck.load_into(GPT(tiny()), None, tmp_path / "run")):
        with pytest.raises(LmlabError, match=r"holds \S+ with shape \(\d+(, \d+)*\), but the model its meta.json "
                                             r"describes has \(\d+(, \d+)*\)") as e:
            load()
        assert str(d / ck.MODEL_FILE) in str(e.value) and "\n" not in str(e.value)
    deeper = ck.save(tmp_path / "deeper", 2, trained(tiny(n_layers=3))[0])  # extra tensors
    _foreign(d, ck.MODEL_FILE, deeper / ck.MODEL_FILE)
    with pytest.raises(LmlabError, match=r"holds blocks\.2\.\S+ .*which the model its meta.json describes does not"):
        ck.load(tmp_path / "run")
    (d / ck.MODEL_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")  # not safetensors, hash matching
    _foreign(d, ck.MODEL_FILE, d / ck.MODEL_FILE)
    with pytest.raises(LmlabError, match="is not a readable safetensors file"):
        ck.load(tmp_path / "run")


def test_a_foreign_optimizer_state_with_a_matching_hash_is_refused_naming_parameter_and_shapes(tmp_path):
    model, opt, _ = trained(tiny())
    d = ck.save(tmp_path / "run", 2, model, opt)
    small, small_opt, _ = trained(tiny(d_model=16))  # as many parameters, other shapes
    other = ck.save(tmp_path / "other", 2, small, small_opt)
    _foreign(d, ck.OPTIM_FILE, other / ck.OPTIM_FILE)
    fresh = GPT(tiny())
    with pytest.raises(LmlabError, match=r"optim.pt holds exp_avg of \S+ with shape \(\d+(, \d+)*\), but the "
                                         r"parameter has \(\d+(, \d+)*\)"):
        ck.load_into(fresh, make_optimizer(fresh, 1e-2, 0.1), tmp_path / "run")
    deeper, deeper_opt, _ = trained(tiny(n_layers=3))  # more parameters: torch's own check, in one line
    _foreign(d, ck.OPTIM_FILE, ck.save(tmp_path / "deeper", 2, deeper, deeper_opt) / ck.OPTIM_FILE)
    with pytest.raises(LmlabError, match=r"optim.pt does not fit this model's optimizer \(ValueError: "):
        ck.load_into(fresh, make_optimizer(fresh, 1e-2, 0.1), tmp_path / "run")
    for junk in (b"not a zip", json.dumps([1, 2]).encode()):
        (d / ck.OPTIM_FILE).write_bytes(junk)
        _foreign(d, ck.OPTIM_FILE, d / ck.OPTIM_FILE)
        with pytest.raises(LmlabError, match="optim.pt is unreadable"):
            ck.load_optimizer_state(tmp_path / "run")


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04truncated zip", "torch-list"])
def test_a_damaged_resume_snapshot_is_a_named_error(tmp_path, content):
    path = tmp_path / "resume.pt"
    if content == "torch-list":  # a readable file that is no snapshot
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    with pytest.raises(LmlabError, match=r"--resume: \S*resume.pt is (damaged|not an lmlab resume snapshot)"):
        ck.load_snapshot(path, {"a": 1}, "")
    ck.save_snapshot(path, {"run": {"a": 1}, "step": 3})
    assert ck.load_snapshot(path, {"a": 1}, "")["step"] == 3
