import os
from pathlib import Path

import pytest

from lmlab.cli import main

RAW = [
    "&P100001 = test tablet",
    "@obverse",
    "1. 3(disz) udu ur-{d}nansze",
    "2. kiszib3 lu2-gi-na dumu ab-ba",
    "3'. mu {d}szul-gi lugal",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = Path(os.environ.get("LMLAB_DATA", ""))
    if not (root / "sumerian").is_dir():
        pytest.skip("real data folder sumerian/ is absent (set LMLAB_DATA)")
    out = tmp_path_factory.mktemp("sumerian_models")
    rc = main(
        [
            "sumerian",
            "train",
            "--data",
            str(root),
            "--out",
            str(out),
            "--taggers",
            "crf,hmm",
            "--limit",
            "300",
            "--crf-iters",
            "15",
            "--mt-steps",
            "15",
            "--mt-d-model",
            "32",
            "--mt-vocab",
            "300",
        ]
    )
    assert rc == 0
    return out


def conll_blocks(text):
    return [b for b in text.strip().split("\n\n") if b.strip()]


def test_tag_and_translate_raw_lines(trained, tmp_path, capsys):
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join(RAW) + "\n")
    assert main(["sumerian", "tag", str(raw), "--models", str(trained)]) == 0
    blocks = conll_blocks(capsys.readouterr().out)
    assert len(blocks) == 3
    rows = [line.split("\t") for line in blocks[1].splitlines() if not line.startswith("#")]
    assert [r[1] for r in rows] == ["kiszib3", "lu2-gi-na", "dumu", "ab-ba"]
    assert all(len(r) == 4 and r[0] == str(i + 1) for i, r in enumerate(rows))
    assert rows[0][2] == "N"  # kiszib3 "seal" is a noun throughout the corpus
    assert (
        main(
            [
                "sumerian",
                "tag",
                str(raw),
                "--models",
                str(trained),
                "--tagger",
                "hmm",
                "--out",
                str(tmp_path / "o.conll"),
            ]
        )
        == 0
    )
    assert len(conll_blocks((tmp_path / "o.conll").read_text())) == 3

    assert main(["sumerian", "translate", str(raw), "--models", str(trained), "--beam", "2"]) == 0
    blocks = conll_blocks(capsys.readouterr().out)
    assert len(blocks) == 3 and all("# translation = " in b for b in blocks)
    assert main(["sumerian", "translate", str(raw), "--models", str(trained), "--format", "text"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_explain_writes_views(trained, tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("sze-ba geme2 usz-bar\n")
    ref = tmp_path / "ref.txt"
    ref.write_text("barley rations of the female weavers\n")
    assert (
        main(
            [
                "sumerian",
                "explain",
                str(raw),
                "--models",
                str(trained),
                "--reference",
                str(ref),
                "--out",
                str(tmp_path / "ex"),
                "--steps",
                "4",
            ]
        )
        == 0
    )
    assert (tmp_path / "ex" / "line1.html").exists()
    assert (tmp_path / "ex" / "line1_integrated_gradients.png").exists()


def test_user_errors(tmp_path, capsys):
    raw = tmp_path / "raw.txt"
    raw.write_text("lugal\n")
    assert main(["sumerian", "tag", str(raw), "--models", str(tmp_path / "none")]) == 2
    assert "lmlab sumerian train" in capsys.readouterr().err
    assert main(["sumerian", "tag", str(tmp_path / "missing.txt"), "--models", str(tmp_path)]) == 2
    assert main(["sumerian", "train", "--data", str(tmp_path), "--taggers", "svm"]) == 2
    assert "unknown tagger" in capsys.readouterr().err


def test_download_without_network(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    from lmlab.sumerian import loaders

    monkeypatch.setattr(loaders.download, "__defaults__", (False, 30.0, offline, print))
    assert main(["sumerian", "download", "--to", str(tmp_path)]) == 2
    assert "needs internet access" in capsys.readouterr().err


def test_experiment_without_data_runs_the_synthetic_claim(tmp_path, monkeypatch):
    from lmlab.experiments import run_experiment

    monkeypatch.setenv("LMLAB_DATA", str(tmp_path))  # a data root without sumerian/
    rep = run_experiment(
        "sumerian_pipeline",
        "tiny",
        tmp_path / "out",
        quiet=True,
        raise_errors=True,
        overrides={"synth_steps": 40, "synth_eval": 2, "ig_steps": 4},
    )
    assert rep.claims["taggers_beat_majority"].held is None
    assert "needs real data" in rep.claims["mt_beats_baseline"].evidence
    assert rep.claims["trained_attributions_align"].held is not None
    assert "synthetic.mean_ap_gain" in rep.metrics
    assert (tmp_path / "out" / "synthetic_attributions.png").exists()


def test_train_and_translate_with_a_local_hf_model(tmp_path, capsys):
    from test_sumerian_translate import hf_t5

    root = Path(os.environ.get("LMLAB_DATA", ""))
    if not (root / "sumerian").is_dir():
        pytest.skip("real data folder sumerian/ is absent (set LMLAB_DATA)")
    t5 = hf_t5(tmp_path / "t5")
    out = tmp_path / "models"
    assert (
        main(
            [
                "sumerian",
                "train",
                "--data",
                str(root),
                "--out",
                str(out),
                "--taggers",
                "hmm",
                "--limit",
                "50",
                "--no-mt",
                "--hf-model",
                str(t5),
                "--hf-steps",
                "3",
            ]
        )
        == 0
    )
    assert (out / "hf_mt" / "config.json").exists()
    raw = tmp_path / "raw.txt"
    raw.write_text("3(disz) udu\n")
    assert (
        main(
            [
                "sumerian",
                "translate",
                str(raw),
                "--models",
                str(out),
                "--hf-model",
                str(out / "hf_mt"),
                "--beam",
                "1",
            ]
        )
        == 0
    )
    assert "# translation = " in capsys.readouterr().out
