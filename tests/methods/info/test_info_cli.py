"""`lmlab info` on tiny local HF encoders: its summaries, rankings and Kendall τ are the analysis API's
on the same activations."""

import json

import numpy as np
import pytest
import torch
import transformers as tf

from lmlab.cli import main
from lmlab.methods.info import information as I

WORDS = "the cat dog sat ran on a mat rug big small red".split()  # the word_tokenizer fixture's words


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, word_tokenizer, tiny_bert_config):
    root = tmp_path_factory.mktemp("info")
    cfg = tiny_bert_config(16, 2)
    tok, dirs = word_tokenizer, []
    for i in range(3):
        torch.manual_seed(i)
        d = root / f"enc{i}"
        tf.BertModel(cfg).save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    rng = np.random.default_rng(0)
    (root / "texts.txt").write_text("\n".join(" ".join(rng.choice(WORDS, 6)) for _ in range(120)) + "\n")
    (root / "metric.json").write_text(json.dumps({"enc0": 0.9, "enc1": 0.5, "enc2": 0.7}))
    return root, dirs


def test_info_cli_reports_the_analysis_api_numbers(encoders, capsys):
    root, dirs = encoders
    out = root / "out"
    assert (
        main(
            [
                "info",
                *map(str, dirs),
                "--data",
                str(root / "texts.txt"),
                "--memorization",
                "heuristic",
                "--metric",
                str(root / "metric.json"),
                "--out",
                str(out),
                "--mi-neurons",
                "8",
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    texts = (root / "texts.txt").read_text().split("\n")[:120]
    acts = {f"enc{i}": I.hf_activations(d, texts) for i, d in enumerate(dirs)}
    direct = I.select_models(
        acts, "heuristic", {"enc0": 0.9, "enc1": 0.5, "enc2": 0.7}, mi_neurons_per_layer=8
    )
    assert res["n_texts"] == 120 and res["ranking_entropy"] == direct["ranking_entropy"]
    assert res["ranking_mi"] == direct["ranking_mi"]
    for n, v in direct["summaries"].items():
        assert res["summaries"][n] == pytest.approx(v)
    assert res["tau_entropy"] == pytest.approx(direct["tau_entropy"]) and res["tau_mi"] == pytest.approx(
        direct["tau_mi"]
    )
    assert (out / "entropy.png").stat().st_size > 1000 and (out / "mi_density.png").stat().st_size > 1000
    assert (
        "Kendall τ" in (out / "report.md").read_text() and "least memorizing first" in capsys.readouterr().out
    )


def test_info_cli_errors_name_the_problem(encoders, tmp_path, capsys):
    root, dirs = encoders
    args = ["info", *map(str, dirs[:2]), "--memorization", "example", "--out", str(tmp_path / "o")]
    assert main([*args, "--data", str(tmp_path / "none.txt")]) == 2
    assert "not found" in capsys.readouterr().err
    few = tmp_path / "few.txt"
    few.write_text("the cat\n")
    assert main([*args, "--data", str(few)]) == 2
    assert "holds 1 texts" in capsys.readouterr().err
    (tmp_path / "m.json").write_text(json.dumps({"enc0": 1.0}))
    assert main([*args, "--data", str(root / "texts.txt"), "--metric", str(tmp_path / "m.json")]) == 2
    assert "no value for ['enc1']" in capsys.readouterr().err
    assert main([*args, "--data", str(root / "texts.txt"), "--layers", "0,last"]) == 2
    assert "give comma-separated layer indices" in capsys.readouterr().err


def test_info_reads_lmlab_runs_through_their_hook_points(tmp_path, capsys):
    """Two tiny lmlab runs (and a mixed pair with an HF encoder would work alike): the CLI's summaries are the
    analysis API's on the activations read at blocks.{i}.hook_resid_post."""
    from lmlab.loading import load_policy

    runs = []
    for seed in (0, 1):
        out = tmp_path / f"run{seed}"
        assert main(["pretrain", "--config", "tiny", "--out", str(out), "model.d_model=32", "model.n_heads=2",
                     "model.seq_len=64", "train.max_steps=1", "train.batch_size=4", "train.save_every=1",
                     "train.save_steps=[]", "train.eval_every=1", "train.eval_batches=1", f"train.seed={seed}",
                     "train.progress=false", "train.tensorboard=false"]) == 0
        runs.append(out)
    texts = tmp_path / "texts.txt"
    rng = np.random.default_rng(0)
    texts.write_text("\n".join(" ".join(rng.choice(WORDS, rng.integers(3, 7))) for _ in range(80)) + "\n")
    out = tmp_path / "info"
    assert main(["info", *map(str, runs), "--data", str(texts), "--memorization", "heuristic", "--reduce", "mean",
                 "--out", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["info", str(runs[0]), "--data", str(texts), "--memorization", "heuristic", "--out", str(out)]) == 2
    assert "use --reduce mean" in capsys.readouterr().err  # position 0 of an lmlab run is always <bos>
    res = json.loads((out / "results.json").read_text())
    model, tok, kind = load_policy(str(runs[0]), None, None, "cpu")
    assert kind == "lmlab"
    acts = I.lmlab_activations(model, texts.read_text().splitlines(), tok, reduce="mean")
    assert list(acts.layers) == [str(i) for i in range(len(model.blocks))]
    assert acts.values.shape == (80, 32 * len(model.blocks))
    want = I.select_models({"run0": acts}, "heuristic", keep_arrays=True)["summaries"]["run0"]["mean_entropy"]
    assert res["summaries"]["run0"]["mean_entropy"] == pytest.approx(want)
