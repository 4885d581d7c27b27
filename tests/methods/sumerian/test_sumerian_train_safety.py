"""`lmlab sumerian train` loses nothing and overwrites nothing (issue 23), on a tiny data folder: a second writer of
a models folder is refused before it touches anything; a NaN/Inf step of the translator or the BiLSTM-CRF is not
applied, stops training with a named error and exit 2, and leaves the last good weights on disk; damaged or
empty data files and an unknown --mt-corpus are refused up front, before any tagger trains."""

import json
import socket
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from lmlab.checkpoint import load_snapshot
from lmlab.cli import main
from lmlab.runlock import LOCK_FILE

TINY = ["--taggers", "hmm", "--crf-iters", "2", "--mt-steps", "6", "--mt-d-model", "16", "--mt-vocab", "100"]


def train(data, out, *extra):
    return main(["sumerian", "train", "--data", str(data), "--out", str(out), *TINY, *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]  # progress logs may come before the error
    assert [ln for ln in lines if ln.startswith("error")] == lines[-1:] and lines[-1].startswith("error: "), err
    return lines[-1]


def test_a_second_writer_of_a_models_folder_is_refused_before_touching_it(tmp_path, sumerian_data, capsys):
    data = sumerian_data(tmp_path / "data")
    out = tmp_path / "models"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(),
                                                 "started": 0, "command": "lmlab sumerian train"}))
        assert train(data, out) == 2
        assert "in use by lmlab sumerian train" in one_line_error(capsys)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written, the owner's lock kept
    finally:
        live.kill()
        live.wait()
    assert train(data, out) == 0  # the owner is gone: its stale lock is taken over
    assert (out / "manifest.json").is_file() and not (out / LOCK_FILE).exists()


def test_a_nan_translator_step_is_not_applied_and_the_last_good_step_is_saved(tmp_path, sumerian_data, monkeypatch,
                                                                             capsys):
    from lmlab.methods.sumerian import translate

    data = sumerian_data(tmp_path / "data")
    real, calls = translate.Seq2SeqTransformer.forward, []

    def poisoned(self, *a, **k):  # the fourth training step's loss is NaN
        out = real(self, *a, **k)
        calls.append(1)
        return out * float("nan") if len(calls) == 4 else out

    monkeypatch.setattr(translate.Seq2SeqTransformer, "forward", poisoned)
    assert train(data, tmp_path / "m") == 2
    err = one_line_error(capsys)
    assert "the translator diverged after 3 good step(s)" in err and "loss is nan" in err and "mt.resume" in err
    snap = torch.load(tmp_path / "m" / "mt.resume", weights_only=True)
    assert snap["step"] == 3 and all(torch.isfinite(v).all() for v in snap["model"].values())
    assert (tmp_path / "m" / "pos" / "hmm").is_dir()  # the taggers finished before it are kept
    progress = json.loads((tmp_path / "m" / "progress.json").read_text())
    assert "pos/hmm" in progress["done"] and "mt" not in progress["done"]
    assert load_snapshot(tmp_path / "m" / "mt.resume", progress["run"], "")["step"] == 3  # a --resume takes it up


def test_a_nan_bilstm_crf_step_is_not_applied_and_its_last_good_weights_are_saved(tmp_path, sumerian_data,
                                                                                 monkeypatch, capsys):
    from lmlab.methods.sumerian import taggers

    data = sumerian_data(tmp_path / "data")
    real, calls = taggers.CRFLayer.nll, []

    def poisoned(self, *a, **k):
        calls.append(1)
        loss = real(self, *a, **k)
        return loss * float("inf") if len(calls) == 2 else loss

    monkeypatch.setattr(taggers.CRFLayer, "nll", poisoned)
    assert main(["sumerian", "train", "--data", str(data), "--out", str(tmp_path / "m"), "--taggers", "bilstm_crf",
                 "--bilstm-epochs", "2", "--no-mt"]) == 2
    err = one_line_error(capsys)
    assert "pos/bilstm_crf diverged" in err and "last good weights" in err
    weights = safetensors.torch.load_file(tmp_path / "m" / "pos" / "bilstm_crf" / "bilstm_crf.safetensors")
    assert weights and all(torch.isfinite(v).all() for v in weights.values())


def test_an_unknown_mt_corpus_is_refused_before_any_tagger_trains(tmp_path, sumerian_data, capsys):
    data = sumerian_data(tmp_path / "data")
    assert train(data, tmp_path / "m", "--mt-corpus", "bogus") == 2
    assert "unknown --mt-corpus 'bogus'" in one_line_error(capsys)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("damage, message", [
    (("ner/train.txt", b""), "is empty"),
    (("pos/train.txt", b"lugal N\n\xff\xfe V\n"), "is not UTF-8 text (byte 0xff"),
    (("pos/train.txt", b"lugal N\n"), "must hold the same sentences"),
    (("named_entities/city_ner.csv", b"\x00garbage"), "is binary"),
    (("named_entities/city_ner.csv", b"Text,NER\n" + b'"' + b"x" * 200_000 + b'",QN\n'), "not a valid CSV row"),
    (("parallel/ur3_line/dev.eng", b"one line\n"), "must be line-aligned"),
])
def test_damaged_data_is_refused_before_any_tagger_trains(tmp_path, sumerian_data, capsys, damage, message):
    data = sumerian_data(tmp_path / "data")
    name, content = damage
    (data / "sumerian" / name).write_bytes(content)
    assert train(data, tmp_path / "m") == 2
    err = one_line_error(capsys)
    assert message in err and name.split("/")[-1] in err
    assert not (tmp_path / "m").exists()  # nothing written: a fixed file trains without --resume
