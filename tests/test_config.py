from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.config import RunConfig, load_config
from lmlab.utils import LmlabError

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "lmlab" / "configs"


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
        # model shape holes (audit #8)
        ("model.n_kv_heads=-2", ["model.n_kv_heads", "-2"]),
        ("model.n_kv_heads=0", ["model.n_kv_heads", "got 0"]),
        ("model.n_kv_heads=8", ["model.n_kv_heads", "1..model.n_heads=4"]),
        ("model.pad_vocab_to=0", ["model.pad_vocab_to", "got 0"]),
        ("model.mlp_hidden=0", ["model.mlp_hidden", "got 0"]),
        ("model.norm_eps=0", ["model.norm_eps", "> 0"]),
        ("model.rope_theta=-1", ["model.rope_theta", "> 0"]),
        # attention options are checked at config time (audit #3)
        ("model.attention_options={n_pseudo: 2}", ["attention_options", "mha takes no options"]),
        # silent dtype / grad_clip behaviour (audit #12)
        ("train.grad_clip=-1", ["train.grad_clip", ">= 0"]),
        ("train.dtype=bf16", ["train.dtype=bf16 needs a CUDA device", "train.dtype=auto"]),  # device: cpu
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


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model.attention=iha", "model.attention_options={n_psuedo: 2}"],
         ["unknown IHA option", "n_psuedo"]),
        (["model.attention=iha", "model.n_kv_heads=2"], ["grouped-query", "n_kv_heads"]),
        (["model.attention=iha", "model.attention_options={window: 0}"], ["window"]),
        (["model.layer_attention=[iha, mha]", "model.attention_options={mask: diag}"], ["mask"]),
    ],
)
def test_bad_attention_options_fail_at_load_config(overrides, words):
    with pytest.raises(LmlabError) as e:
        load_config(CONFIGS / "tiny.yaml", overrides)
    msg = str(e.value)
    assert "\n" not in msg and "model.attention_options" in msg
    for w in words:
        assert w in msg


def test_cli_bad_iha_option_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["pretrain", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "model.attention=iha",
               "model.attention_options={n_psuedo: 2}", "train.max_steps=1"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and err.startswith("error:") and "n_psuedo" in err
    assert not out.exists()  # no tokenizer.json / config.yaml left behind


def test_valid_iha_and_custom_attention_options_still_load():
    cfg = load_config(CONFIGS / "tiny.yaml", ["model.attention=iha", "model.attention_options={n_pseudo: 2}"])
    assert cfg.model_config().attention_options == {"n_pseudo": 2}
    hybrid = load_config(CONFIGS / "tiny.yaml", ["model.layer_attention=[iha, mha]",
                                                 "model.attention_options={window: 4}"])
    assert hybrid.model_config().layer_attention == ["iha", "mha"]


def test_eval_on_text_needs_held_out_documents(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(f"doc {i}" for i in range(10)))
    src = f"data.sources=[{{kind: text, path: {f}}}]"
    with pytest.raises(LmlabError, match="data.val_frac"):
        load_config(CONFIGS / "tiny.yaml", [src, "data.val_frac=0"])  # tiny.yaml: eval_every=100
    load_config(CONFIGS / "tiny.yaml", [src, "data.val_frac=0", "train.eval_every=0"])


def test_packaged_configs_are_addressed_by_name_and_paths_still_work(tmp_path):
    from lmlab.config import packaged_configs

    assert {"tiny", "tiny-shakespeare", "gpt2-small"} <= set(packaged_configs())
    assert load_config("tiny").to_dict() == load_config(CONFIGS / "tiny.yaml").to_dict() == load_config(
        "tiny.yaml").to_dict()
    (tmp_path / "tiny.yaml").write_text("train: {max_steps: 7}\n")  # a file of that name is read, not the packaged one
    assert load_config(tmp_path / "tiny.yaml").train.max_steps == 7
    with pytest.raises(LmlabError, match="name of a packaged config \\(gpt2-small, tiny, tiny-shakespeare"):
        load_config("nosuch")
