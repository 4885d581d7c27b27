"""Bad input gets a one-line error, never a traceback: property-based (hypothesis) — random bytes, random text,
empty and huge single-line files, and random key=value overrides, fed to the commands and readers that take them.
Every outcome is success or exit 2 with one `error:` line; an exit 1 ("internal error") is a bug and fails."""

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmlab import cli, experiment, inputs
from lmlab.utils import LmlabError

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "lmlab" / "configs"
CONTENTS = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8")),
    st.just(b""),
    st.just(b"x" * 200_000),  # one huge line
    st.just("naïve text\nline two\n".encode("latin-1")),  # valid Latin-1, invalid UTF-8
)
# derandomized: the default suite (and CI) sees the same examples every run; explore more with
# `pytest --hypothesis-seed=random` or a larger max_examples while working on a reader
QUICK = settings(max_examples=12, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def outcome(argv, capsys) -> tuple[int, str]:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    return rc, err


def assert_clean(rc: int, err: str) -> None:
    assert rc in (0, 2), f"exit {rc}: {err}"
    if rc == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]  # progress logs may come before the error
        assert [ln for ln in lines if ln.startswith("error")] == lines[-1:] and lines[-1].startswith("error: ") \
            and "Traceback" not in err, err


@QUICK
@given(content=CONTENTS)
def test_pretrain_on_any_data_file(tmp_path_factory, capsys, content):
    d = tmp_path_factory.mktemp("data")
    (d / "data.txt").write_bytes(content)
    argv = ["pretrain", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(d / "run"),
            f"data.sources=[{{kind: text, path: {d / 'data.txt'}}}]", "train.max_steps=1", "train.save_every=0",
            "train.save_steps=[]", "train.eval_every=0", "model.n_layers=1", "model.d_model=32", "model.n_heads=2",
            "train.batch_size=2", "model.seq_len=16", "train.progress=false", "train.tensorboard=false"]
    assert_clean(*outcome(argv, capsys))


@QUICK
@given(content=CONTENTS)
def test_any_file_as_a_config(tmp_path_factory, capsys, content):
    d = tmp_path_factory.mktemp("cfg")
    (d / "c.yaml").write_bytes(content)
    rc, err = outcome(["pretrain", "--config", str(d / "c.yaml"), "--out", str(d / "run"), "train.max_steps=0"],
                      capsys)
    assert_clean(rc, err)


@QUICK
@given(content=CONTENTS)
@example(content=b"0")  # JSON that is not an object (found by this test)
@example(content=b'{"experiment": "scaling_smoke", "preset": ["tiny"], "runs": [{"numbers": {}}]}')
@example(content=b'{"experiment": "scaling_smoke", "preset": "tiny", "runs": [{"numbers": {}}]}')
@example(content=b'{"experiment": "nosuch"}')
def test_any_results_json_for_decide_and_resume(tmp_path_factory, capsys, content):
    d = tmp_path_factory.mktemp("rep")
    (d / "results.json").write_bytes(content)
    assert_clean(*outcome(["decide", str(d)], capsys))


@QUICK
@given(content=CONTENTS)
def test_the_readers_name_the_file_or_return_text(tmp_path_factory, content):
    d = tmp_path_factory.mktemp("read")
    path = d / "f.txt"
    path.write_bytes(content)
    for read in (inputs.read_text, inputs.read_lines, inputs.read_json, inputs.read_jsonl):
        try:
            read(path, "test file")
        except LmlabError as e:
            assert str(path) in str(e) and "\n" not in str(e)


KEYS = st.sampled_from(["steps", "widths", "lr", "seeds", "vocab", "nonexistent", "batch", ""])
VALUES = st.one_of(st.text(alphabet=string.printable, max_size=20), st.sampled_from(["nan", "inf", "-1", "1e99",
                                                                                      "[1, 2]", "null", "yes"]))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(items=st.lists(st.tuples(KEYS, VALUES), max_size=3))
def test_random_overrides_resolve_or_are_user_errors(items):
    exp = experiment.get("scaling_smoke")
    try:
        experiment.resolve_config(exp, "tiny", dict(items))
    except LmlabError as e:
        assert "\n" not in str(e)


def test_an_internal_error_is_one_line_with_exit_1_and_a_traceback_with_v(monkeypatch, capsys):
    def boom(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_list", boom)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("internal error: ZeroDivisionError: a bug") and err.count("\n") == 1
    with pytest.raises(ZeroDivisionError):
        cli.main(["-v", "list"])


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}) + "\n" + '{"step": 3, "lo')
    assert inputs.read_jsonl(path, "metrics log", drop_torn_last=True) == [{"step": 1}, {"step": 2}]
    assert "torn last line 3" in caplog.text
    with pytest.raises(LmlabError, match="line 3 is not valid JSON"):
        inputs.read_jsonl(path, "metrics log")


# ------------------------------------------------------------------ the commands that read user files
VALID_TEXT = b"the cat sat on the mat\nabc def 123\n" * 6  # encodes with LM_CHARS: exercises the success path


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory):
    """Two tiny lmlab runs whose character vocabulary is printable ASCII without 'x' (so that the huge one-line file,
    b'x' * 200_000, is refused by the tokenizer instead of prefilled as a 200k-token context)."""
    import torch

    from lmlab import checkpoint
    from lmlab.model import GPT, GPTConfig
    from lmlab.tokenizer import CharTokenizer

    tok = CharTokenizer(sorted(set(string.printable) - {"x"}))
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        run = tmp_path_factory.mktemp("lm") / "run"
        checkpoint.save(run, 1, GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=2, n_heads=2, d_model=16,
                                              seq_len=64)))
        tok.save(run / "tokenizer.json")
        runs.append(run)
    return runs


def bad_file(tmp_path_factory, name: str, content: bytes) -> Path:
    d = tmp_path_factory.mktemp("in")
    (d / name).write_bytes(content)
    return d / name


@QUICK
@given(content=CONTENTS)
@example(content=VALID_TEXT)
def test_ttt_on_any_context_file(lm_runs, tmp_path_factory, capsys, content):
    path = bad_file(tmp_path_factory, "ctx.txt", content)
    assert_clean(*outcome(["ttt", str(lm_runs[0]), "--context", str(path), "--question", "a?",
                           "--steps", "1", "--span", "4", "--max-new-tokens", "1", "--device", "cpu"], capsys))


@QUICK
@given(content=CONTENTS)
@example(content=VALID_TEXT)
def test_interference_on_any_task_file(lm_runs, tmp_path_factory, capsys, content):
    path = bad_file(tmp_path_factory, "task.txt", content)
    good = bad_file(tmp_path_factory, "good.txt", VALID_TEXT)
    assert_clean(*outcome(["interference", str(lm_runs[0]), "--task", f"a={path}", "--task", f"b={good}",
                           "--rare", "a", "--max-lines", "4", "--seq-len", "16", "--device", "cpu",
                           "--out", str(path.parent / "out")], capsys))


@QUICK
@given(content=CONTENTS)
@example(content=b'{"prompt": "1+1=", "completion": "2"}\n{"prompt": "2+2=", "completion": "4"}\n')
@example(content=b'{"prompt": 1, "completion": "2"}\n')
def test_compose_on_any_data_file(lm_runs, tmp_path_factory, capsys, content):
    path = bad_file(tmp_path_factory, "pairs.jsonl", content)
    assert_clean(*outcome(["compose", str(lm_runs[0]), str(lm_runs[1]), "--data", str(path),
                           "--steps", "1", "--batch", "2", "--device", "cpu", "--out", str(path.parent / "b")],
                          capsys))


@QUICK
@given(content=CONTENTS)
@example(content=VALID_TEXT)
def test_lmc_and_info_on_any_data_file(lm_runs, tmp_path_factory, capsys, content):
    path = bad_file(tmp_path_factory, "texts.txt", content)
    assert_clean(*outcome(["lmc", *map(str, lm_runs), "--kind", "causal", "--data", str(path), "--points", "2",
                           "--max-length", "16", "--device", "cpu", "--out", str(path.parent / "lmc")], capsys))
    # info reads its data before its (here missing) models: a readable file ends at the model error
    assert_clean(*outcome(["info", str(path.parent / "no-model-a"), str(path.parent / "no-model-b"), "--data",
                           str(path), "--memorization", "heuristic", "--out", str(path.parent / "info")], capsys))


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
@pytest.mark.parametrize("op", ["stats", "retrieve", "add"])
@QUICK
@given(content=CONTENTS)
@example(content=b"")  # an empty KG (retrieve once raised 'empty vocabulary')
@example(content=b"!!\t??\t..\n")  # triples without a word
@example(content=b'{"head": "a", "relation": "r", "tail": "b"}\n7\n{"head": 1, "relation": "r", "tail": "b"}\n')
@example(content=b'{"sub_label": "a", "obj_label": "b", "predicate_id": 5}\n')
def test_kg_commands_on_any_kg_file(tmp_path_factory, capsys, suffix, op, content):
    path = bad_file(tmp_path_factory, f"kg{suffix}", content)
    extra = {"stats": [], "retrieve": ["--query", "trobex was born in"],
             "add": ["--head", "trobex", "--relation", "born_in", "--tail", "vantor"]}[op]
    assert_clean(*outcome(["kg", op, "--kg", str(path), *extra], capsys))


@pytest.mark.parametrize("name", ["pos/train.txt", "ner/train.txt", "named_entities/city_ner.csv"])
@QUICK
@given(content=CONTENTS)
@example(content=b"lugal N\n")  # POS and NER layers no longer hold the same sentences
@example(content=b"Text,NER\nNibru,\n")
def test_sumerian_train_on_any_damaged_data_file(tmp_path_factory, sumerian_data, capsys, name, content):
    root = sumerian_data(tmp_path_factory.mktemp("sumerian"))
    (root / "sumerian" / name).write_bytes(content)
    assert_clean(*outcome(["sumerian", "train", "--data", str(root), "--out", str(root / "models"), "--taggers", "hmm",
                           "--no-mt"], capsys))


@QUICK
@given(content=CONTENTS)
def test_the_method_readers_name_the_file_or_return_data(tmp_path_factory, content):
    from lmlab.loading import read_texts
    from lmlab.methods.calm.cli import read_pairs
    from lmlab.methods.knowledge.kg import KnowledgeGraph
    from lmlab.methods.lmc.cli import read_examples
    from lmlab.methods.sumerian.loaders import load_entity_lists, read_conll

    d = tmp_path_factory.mktemp("read")
    for name, read in (("a.txt", lambda p: read_texts(p, 10)), ("a.jsonl", lambda p: read_texts(p, 10)),
                       ("b.jsonl", read_pairs), ("c.jsonl", lambda p: read_examples(p, 10)),
                       ("d.tsv", KnowledgeGraph.load), ("d.jsonl", KnowledgeGraph.load), ("e.txt", read_conll),
                       ("named_entities/f.csv", lambda p: load_entity_lists(p.parent.parent))):
        path = d / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        try:
            read(path)
        except LmlabError as e:
            assert str(path) in str(e) and "\n" not in str(e), (name, str(e))
