"""`lmlab pretrain --config tiny` then `lmlab export RUN --to H`: transformers loads H with equal logits and the
same greedy tokens, and its tokenizer encodes like lmlab (BOS first, model_max_length set). Run from a folder
outside the repository (issue 24, Done when 3): by default in-process against the installed package; the slow
test builds a wheel from the sources, unpacks it as a fresh install and runs the same round trip in a new
interpreter that imports lmlab from there."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import transformers as tf

from lmlab import checkpoint
from lmlab.cli import main
from lmlab.generate import generate
from lmlab.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]


def round_trip(work: Path) -> None:
    """Pretrain the packaged tiny config for a few steps in `work` (the current folder), export it and check
    transformers' reading of it."""
    run, hf_dir = Path("run"), Path("hf")  # relative: written in the current folder
    assert main(["pretrain", "--config", "tiny", "--out", str(run), "train.max_steps=3", "train.save_steps=[]",
                 "train.eval_every=0", "model.n_layers=1", "model.d_model=32", "model.n_heads=2",
                 "train.batch_size=2", "train.progress=false", "train.tensorboard=false"]) == 0
    assert main(["export", str(run), "--to", str(hf_dir)]) == 0
    assert (work / "run").is_dir() and (work / "hf" / "config.json").is_file()
    model, _ = checkpoint.load(run)
    tok = Tokenizer.load(run / "tokenizer.json")
    hf = tf.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hft = tf.AutoTokenizer.from_pretrained(hf_dir)
    text = "the cats near the dog run"
    ids = hft(text).input_ids
    assert ids == tok.encode(text, bos=True) and hft.model_max_length == model.cfg.seq_len
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max() < 1e-4
    ours = generate(model, [ids], 8, temperature=0).tokens[0]
    theirs = hf.generate(x, max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.pad_id)[0, len(ids):].tolist()
    assert ours == theirs


def test_pretrain_export_and_load_with_transformers_outside_the_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no repository file is reachable by a relative path
    round_trip(tmp_path)
    assert main(["export", "hf", "--to", str(tmp_path / "again")]) == 2  # an HF folder is refused
    assert "already a Hugging Face model folder" in capsys.readouterr().err


@pytest.mark.slow
def test_the_round_trip_from_a_fresh_install_of_a_built_wheel(tmp_path):
    src = tmp_path / "sources"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    site = tmp_path / "site"
    with zipfile.ZipFile(next((tmp_path / "dist").glob("lmlab-*.whl"))) as whl:  # a pure-Python wheel: unpacked
        whl.extractall(site)                                                    # is installed
    assert (site / "lmlab" / "configs" / "tiny.yaml").is_file()
    work = tmp_path / "work"
    work.mkdir()
    code = (f"import sys; sys.path.insert(1, {str(Path(__file__).parent)!r}); import lmlab; "
            f"assert lmlab.__file__.startswith({str(site)!r}), lmlab.__file__; "
            "from test_export import round_trip; from pathlib import Path; round_trip(Path.cwd())")
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
