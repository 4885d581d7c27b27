"""`lmlab lmc` on tiny local HF classifiers: the barrier matrix, endpoints, diagnostic accuracies and
basins it reports equal the analysis API's own numbers on the same tokenized data."""

import json

import numpy as np
import pytest
import torch
import transformers as tf

from lmlab.methods.lmc import connectivity as C
from lmlab.cli import main
from lmlab.methods.lmc.cli import make_batches, read_examples

WORDS = "the cat dog sat ran on a mat rug big small red".split()  # the word_tokenizer fixture's words


def _write_jsonl(path, n, seed):
    rng = np.random.default_rng(seed)
    rows = [{"text": " ".join(rng.choice(WORDS, 5)), "label": int(rng.integers(0, 2))} for _ in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def three_models(tmp_path_factory, word_tokenizer, tiny_bert_config):
    root = tmp_path_factory.mktemp("lmc")
    cfg = tiny_bert_config(32, 2, num_labels=2)
    tok = word_tokenizer
    torch.manual_seed(0)
    parent = tf.BertForSequenceClassification(cfg)
    dirs = []
    for i, scale in enumerate([0.0, 0.02, 0.5]):  # two near the parent, one far from it
        m = tf.BertForSequenceClassification(cfg)
        m.load_state_dict(parent.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(scale * torch.randn_like(p))
        d = root / f"ft{i}"
        m.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    return root, dirs


def test_lmc_cli_reports_the_analysis_api_numbers(three_models, capsys):
    root, dirs = three_models
    data, diag = _write_jsonl(root / "data.jsonl", 40, 1), _write_jsonl(root / "diag.jsonl", 24, 2)
    out = root / "out"
    args = [
        "lmc",
        *map(str, dirs),
        "--data",
        str(data),
        "--diagnostic",
        str(diag),
        "--out",
        str(out),
        "--points",
        "5",
        "--batch",
        "16",
        "--max-length",
        "16",
    ]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    names = ["ft0", "ft1", "ft2"]
    assert list(res["models"]) == names and res["n_examples"] == 40

    template = tf.BertForSequenceClassification.from_pretrained(dirs[0]).eval()
    tok = tf.AutoTokenizer.from_pretrained(dirs[0])
    batches = make_batches(tok, read_examples(data, 512), 2, 16, 16, "data")
    direct = C.barrier_matrix(template, dict(zip(names, dirs)), batches, n_points=5)
    np.testing.assert_allclose(res["D"], direct["D"], atol=1e-6)
    D = np.asarray(res["D"])
    assert np.allclose(D, D.T) and np.all(np.diag(D) == 0) and D.max() > 0
    for n, d in zip(names, dirs):
        m = tf.BertForSequenceClassification.from_pretrained(d).eval()
        assert res["endpoints"][n]["loss"] == pytest.approx(
            C.evaluate(m, C.prepare_batches(batches, "cpu"))["loss"], abs=1e-6
        )
        dbatches = C.prepare_batches(make_batches(tok, read_examples(diag, 512), 2, 16, 16, "diag"), "cpu")
        assert res["diagnostic_acc"][n] == pytest.approx(C.evaluate(m, dbatches)["acc"])
    assert res["basins"] == [int(b) for b in C.cluster_basins(D, 2)]
    assert res["axis_correlation"] == pytest.approx(
        C.axis_correlation(D, [res["diagnostic_acc"][n] for n in names])
    )
    assert (out / "barrier_heatmap.png").stat().st_size > 1000 and "| ft2 |" in (
        out / "report.md"
    ).read_text()
    assert "within basins" in capsys.readouterr().out
    assert main(args) == 0  # a second run reads every path from out/curves.json
    assert json.loads((out / "results.json").read_text())["D"] == res["D"]
    assert (
        main(["lmc", *map(str, dirs[:2]), "--data", str(data), "--out", str(root / "two"), "--points", "3"])
        == 0
    )
    two = json.loads((root / "two" / "results.json").read_text())  # one pair: two basins of one model each
    assert two["within_barrier"] is None and two["between_barrier"] == pytest.approx(two["D"][0][1])
    assert "within basins n/a" in capsys.readouterr().out


def test_lmc_cli_errors_name_the_problem(three_models, tmp_path, capsys, tiny_bert_config):
    root, dirs = three_models
    data = _write_jsonl(tmp_path / "data.jsonl", 8, 3)
    assert main(["lmc", str(dirs[0]), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "two or more model folders" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the cat", "label": 5}\n')
    assert main(["lmc", *map(str, dirs[:2]), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "outside the models' 2 classes" in capsys.readouterr().err
    bad.write_text('{"sentence": "the cat"}\n')
    assert main(["lmc", *map(str, dirs[:2]), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:1: expected a JSON object with 'text'" in capsys.readouterr().err
    assert (
        main(["lmc", *map(str, dirs[:2]), "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)])
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert (
        main(["lmc", *map(str, dirs[:2]), str(tmp_path), "--data", str(data), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "not a Hugging Face model directory" in capsys.readouterr().err
    other = tmp_path / "other"
    cfg = tiny_bert_config(16, 1, num_labels=2)
    tf.BertForSequenceClassification(cfg).save_pretrained(other)
    assert (
        main(["lmc", *map(str, dirs[:2]), str(other), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert "has another architecture" in err and "hidden_size: 16 vs 32" in err


def test_lmc_cli_on_lmlab_language_model_checkpoints(tmp_path, capsys):
    """--kind causal: three lmlab GPT runs (two near one parent, one far), next-token loss on text lines; the
    reported matrix and endpoints are the API's on the same batches."""
    import copy

    from lmlab import checkpoint
    from lmlab.loading import lm_batch
    from lmlab.model import GPT, GPTConfig
    from lmlab.tokenizer import CharTokenizer

    tok = CharTokenizer("abcd ")
    torch.manual_seed(0)
    parent = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=16, seq_len=64))
    runs = []
    for i, scale in enumerate([0.0, 0.02, 0.5]):
        m = copy.deepcopy(parent)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(scale * torch.randn_like(p))
        checkpoint.save(tmp_path / f"run{i}", 1, m)
        tok.save(tmp_path / f"run{i}" / "tokenizer.json")
        runs.append(tmp_path / f"run{i}")
    rng = np.random.default_rng(0)
    lines = ["".join(rng.choice(list("abcd "), 12)) for _ in range(30)]
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "lmc",
                *map(str, runs),
                "--kind",
                "causal",
                "--data",
                str(tmp_path / "text.txt"),
                "--diagnostic",
                str(tmp_path / "text.txt"),
                "--out",
                str(out),
                "--points",
                "4",
                "--batch",
                "8",
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    models = [checkpoint.load(r)[0].eval() for r in runs]
    ids, tgt = lm_batch(tok, lines, 512, 128, "cpu")
    batches = [(ids[i : i + 8], tgt[i : i + 8]) for i in range(0, len(ids), 8)]
    direct = C.barrier_matrix(
        copy.deepcopy(models[0]),
        {n: m.state_dict() for n, m in zip(["run0", "run1", "run2"], models)},
        batches,
        n_points=4,
    )
    np.testing.assert_allclose(res["D"], direct["D"], atol=1e-6)
    with torch.no_grad():
        assert res["endpoints"]["run2"]["loss"] == pytest.approx(float(models[2](ids, tgt)), abs=1e-5)
    assert res["kind"] == "causal" and res["diagnostic_acc"]["run1"] == pytest.approx(
        res["endpoints"]["run1"]["acc"]
    )
    other = tmp_path / "wide"
    wide = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=32, seq_len=64))
    checkpoint.save(other, 1, wide)
    tok.save(other / "tokenizer.json")
    for second, message in ((tmp_path / "missing", "missing"), (other, "has another architecture")):
        capsys.readouterr()
        args = ["lmc", str(runs[0]), str(second), "--kind", "causal", "--data", str(tmp_path / "text.txt")]
        assert main([*args, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
