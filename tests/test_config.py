from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.config import RunConfig, load_config
from lmlab.utils import LmlabError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_configs_validate(shared_data):
    for name in ("tiny.yaml", "tiny-shakespeare.yaml", "gpt2-small.yaml"):
        cfg = load_config(CONFIGS / name)
        assert isinstance(cfg, RunConfig)
    big = load_config(CONFIGS / "gpt2-small.yaml").model_config()
    d, layers, hidden = big.d_model, big.n_layers, big.hidden
    n = big.padded_vocab * d + layers * (4 * d * d + 2 * d * hidden + 2 * d) + d  # tied, relu2 MLP
    assert 110e6 < n < 135e6  # GPT-2 small shape: ~124M


def test_tiny_config_needs_no_data_files(monkeypatch):
    monkeypatch.delenv("LMLAB_DATA", raising=False)
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert {s.kind for s in cfg.data.sources} == {"synthetic"}


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        [
            "model.n_layers=3",
            "train.lr=3e-4",
            "train.save_steps=[1, 2]",
            "data.sources.1.weight=2",
            "train.compile=true",
        ],
    )
    assert cfg.model["n_layers"] == 3 and cfg.train.lr == 3e-4  # YAML reads "3e-4" as a string: coerced
    assert cfg.train.save_steps == [1, 2] and cfg.data.sources[1].weight == 2.0 and cfg.train.compile is True


def test_defaults_without_a_file():
    cfg = load_config(None, {"train.max_steps": 5})
    assert cfg.train.max_steps == 5 and cfg.data.sources[0].kind == "synthetic"


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.lrr=0.1", ["unknown config key 'train.lrr'", "did you mean train.lr"]),
        ("model.n_layer=2", ["unknown config key 'model.n_layer'", "n_layers"]),
        ("train.max_steps=ten", ["train.max_steps", "must be int", "'ten'"]),
        ("model.d_model=130", ["d_model=130 is not divisible by model.n_heads=4"]),
        ("data.sources.0.kind=text", ["without a path", "data.sources.0.path"]),
        ("data.sources.0.generator=nosuch", ["unknown generator 'nosuch'"]),
        ("train.dtype=fp8", ["train.dtype"]),
        ("train.seq_len=4096", ["exceeds model.seq_len"]),
    ],
)
def test_bad_config_one_clear_error(override, words):
    with pytest.raises(LmlabError) as e:
        load_config(CONFIGS / "tiny.yaml", [override])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_missing_data_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_DATA", str(tmp_path))
    with pytest.raises(LmlabError, match="nope.txt"):
        load_config(CONFIGS / "tiny.yaml", ["data.sources=[{kind: text, path: text/nope.txt}]"])


def test_cli_prints_one_line_and_fails_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["pretrain", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "model.d_model=130"])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith("error:") and "d_model" in err
    assert not out.exists()  # nothing was written


def test_cli_missing_config_file(tmp_path, capsys):
    rc = main(["pretrain", "--config", str(tmp_path / "none.yaml")])
    err = capsys.readouterr().err
    assert rc != 0 and "none.yaml" in err and err.count("\n") == 1
