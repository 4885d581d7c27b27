"""`lmlab lmc --label-map`: 3-way NLI classifiers scored on a 2-way task (entailment vs non-entailment: MNLI models
on HANS), on tiny random 3-label HF classifiers."""

import functools
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

from lmlab.cli import main
from lmlab.methods.lmc import connectivity as C
from lmlab.methods.lmc.cli import label_groups, make_batches, read_examples

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "rug", "big", "small", "red"]  # word_tokenizer's
README = Path(__file__).resolve().parents[3] / "src" / "lmlab" / "methods" / "lmc" / "README.md"
NLI = {0: "entailment", 1: "neutral", 2: "contradiction"}


def _write_jsonl(path, n, seed, n_labels):
    rng = np.random.default_rng(seed)
    rows = [{"text": " ".join(rng.choice(WORDS, 4)), "text_pair": " ".join(rng.choice(WORDS, 3)),
             "label": int(rng.integers(0, n_labels))} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _models(root, word_tokenizer, tiny_bert_config, id2label, name="nli"):
    cfg = tiny_bert_config(16, 1, num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    parent = tf.BertForSequenceClassification(cfg)
    dirs = []
    for i, scale in enumerate([0.0, 0.05, 0.5]):
        m = tf.BertForSequenceClassification(cfg)
        m.load_state_dict(parent.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(scale * torch.randn_like(p))
        d = root / f"{name}{i}"
        m.save_pretrained(d)
        word_tokenizer.save_pretrained(d)
        dirs.append(d)
    return dirs


@pytest.fixture(scope="module")
def nli(tmp_path_factory, word_tokenizer, tiny_bert_config):
    root = tmp_path_factory.mktemp("lmc_nli")
    dirs = _models(root, word_tokenizer, tiny_bert_config, NLI)
    return root, dirs, _write_jsonl(root / "mnli.jsonl", 24, 1, 3), _write_jsonl(root / "hans.jsonl", 20, 2, 2)


def _two_way_accuracy(model_dir, path, entail):
    """HANS scoring as McCoy et al.: the 3-way prediction, neutral and contradiction read as non-entailment."""
    model = tf.BertForSequenceClassification.from_pretrained(model_dir).eval()
    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    right = n = 0
    for x, y in make_batches(tok, read_examples(path, 512), 2, 8, 32, "hans"):
        with torch.no_grad():
            pred = (model(**x).logits.argmax(-1) != entail).long()
        right, n = right + int((pred == y).sum()), n + len(y)
    return right / n


def test_mnli_models_are_scored_on_a_two_way_diagnostic(nli):
    root, dirs, mnli, hans = nli
    out = root / "out"
    args = ["lmc", *map(str, dirs), "--data", str(mnli), "--diagnostic", str(hans), "--points", "3",
            "--batch", "8", "--max-length", "32"]
    assert main([*args, "--label-map", "mnli3to2", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["label_map"] == {"map": "mnli3to2", "on": "diagnostic", "groups": [[0], [1, 2]]}
    for d in dirs:
        assert res["diagnostic_acc"][d.name] == pytest.approx(_two_way_accuracy(d, hans, entail=0))
    # the barriers stay on the 3-way --data
    tok = tf.AutoTokenizer.from_pretrained(dirs[0])
    m0 = tf.BertForSequenceClassification.from_pretrained(dirs[0]).eval()
    batches = C.prepare_batches(make_batches(tok, read_examples(mnli, 512), 3, 8, 32, "mnli"), "cpu")
    assert res["endpoints"][dirs[0].name]["loss"] == pytest.approx(C.evaluate(m0, batches)["loss"], abs=1e-6)
    assert "--label-map mnli3to2" in (out / "report.md").read_text()
    assert main([*args, "--label-map", "0:0,1:1,2:1", "--out", str(root / "explicit")]) == 0
    explicit = json.loads((root / "explicit" / "results.json").read_text())
    assert explicit["diagnostic_acc"] == res["diagnostic_acc"] and explicit["D"] == res["D"]


def test_the_map_on_the_data_moves_the_barriers_to_the_two_way_task(nli):
    root, dirs, _, hans = nli
    out = root / "both"
    assert main(["lmc", *map(str, dirs), "--data", str(hans), "--diagnostic", str(hans), "--label-map", "mnli3to2",
                 "--label-map-on", "both", "--points", "3", "--batch", "8", "--max-length", "32",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    template = tf.BertForSequenceClassification.from_pretrained(dirs[0]).eval()
    tok = tf.AutoTokenizer.from_pretrained(dirs[0])
    batches = make_batches(tok, read_examples(hans, 512), 2, 8, 32, "hans")
    names = [d.name for d in dirs]
    direct = C.barrier_matrix(template, dict(zip(names, dirs)), batches, n_points=3,
                              logit_map=functools.partial(C.three_to_two, entail=0))
    np.testing.assert_allclose(res["D"], direct["D"], atol=1e-6)
    assert res["diagnostic_acc"][names[2]] == pytest.approx(res["endpoints"][names[2]]["acc"])


def test_mnli3to2_finds_the_entailment_class_by_name(tmp_path, word_tokenizer, tiny_bert_config):
    reversed_nli = {0: "contradiction", 1: "neutral", 2: "ENTAILMENT"}
    dirs = _models(tmp_path, word_tokenizer, tiny_bert_config, reversed_nli)[:2]
    hans = _write_jsonl(tmp_path / "hans.jsonl", 12, 3, 2)
    out = tmp_path / "out"
    assert main(["lmc", *map(str, dirs), "--data", str(hans), "--label-map", "mnli3to2", "--points", "3",
                 "--max-length", "32", "--out", str(out)]) == 0  # no --diagnostic: the map is on --data
    res = json.loads((out / "results.json").read_text())
    assert res["label_map"]["on"] == "data" and res["label_map"]["groups"] == [[2], [0, 1]]
    assert res["endpoints"][dirs[1].name]["acc"] == pytest.approx(_two_way_accuracy(dirs[1], hans, entail=2))


def test_label_groups_and_merged_logits():
    assert label_groups("mnli3to2", NLI, 3) == ((0,), (1, 2))
    assert label_groups("2:0,0:1,1:1", None, 3) == ((2,), (0, 1))
    assert label_groups("0:1,1:0,2:2,3:0", None, 4) == ((1, 3), (0,), (2,))
    logits = torch.tensor([[1.0, 5.0, 3.0, -2.0]])
    merged = C.merge_classes(logits, ((1, 3), (0,), (2,)))
    assert torch.equal(merged, torch.tensor([[5.0, 1.0, 3.0]]))
    assert torch.equal(C.merge_classes(logits[:, :3], ((2,), (0, 1))), C.three_to_two(logits[:, :3], entail=2))


@pytest.mark.parametrize("extra, message", [
    (["--label-map", "0:0,1:1"], "map each of the models' 3 classes 0..2 exactly once"),
    (["--label-map", "0:0,1:1,2:3"], "the task's labels must be 0, 1, ..."),
    (["--label-map", "0:0,0:1,2:1"], "class 0 is mapped twice"),
    (["--label-map", "entail"], "'entail' is not CLASS:LABEL"),
    (["--label-map-on", "data"], "--label-map-on needs --label-map"),
    (["--label-map", "mnli3to2", "--label-map-on", "both"], "--label-map-on both needs a --diagnostic file"),
    (["--label-map", "mnli3to2", "--kind", "causal"], "applies to --kind classifier only"),
])
def test_bad_label_maps_are_one_line_errors(nli, tmp_path, capsys, extra, message):
    _, dirs, mnli, _ = nli
    assert main(["lmc", *map(str, dirs[:2]), "--data", str(mnli), *extra, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_mnli3to2_refuses_models_that_do_not_name_entailment(tmp_path, word_tokenizer, tiny_bert_config, capsys):
    dirs = _models(tmp_path, word_tokenizer, tiny_bert_config, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})[:2]
    hans = _write_jsonl(tmp_path / "hans.jsonl", 8, 3, 2)
    assert main(["lmc", *map(str, dirs), "--data", str(hans), "--label-map", "mnli3to2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "give the map by class, e.g. --label-map 0:0,1:1,2:1" in capsys.readouterr().err


def test_the_readme_label_map_command_runs(nli, tmp_path):
    """The copy-paste command of lmc/README.md, with its placeholder paths replaced by the tiny models."""
    _, dirs, mnli, hans = nli
    line = next(ln for ln in README.read_text().splitlines() if ln.startswith("lmlab lmc") and "--label-map" in ln)
    paths = {"MNLI_1": dirs[0], "MNLI_2": dirs[1], "MNLI_3": dirs[2], "mnli_dev.jsonl": mnli, "hans.jsonl": hans,
             "OUT": tmp_path / "out"}
    argv = [str(paths.get(a, a)) for a in shlex.split(line)[1:]]
    assert main([*argv, "--points", "3", "--max-length", "32"]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["label_map"]["map"] == "mnli3to2"
