"""Every method folder has a README whose claim table matches its experiments and whose one `own-model`
example really runs.

The `own-model` block of a README is either a one-line `lmlab ...` shell command (```bash own-model), run here
in-process through `lmlab.cli.main`, or a short Python snippet (```python own-model), exec'd. Commands name
their paths with placeholders, replaced here by real ones:

    RUN    an lmlab run folder made by `lmlab pretrain` (the packaged `tiny` config, 2 steps)
    HF     a local Hugging Face causal-LM folder (a tiny random Llama) saved with its tokenizer
    OUT    a new output folder
    DATA   the real-data root ($LMLAB_DATA: sumerian/, knowledge/, lmc/, text/); skipped when absent
    FILE   a plain text file, one example per line
    PAIRS  a JSONL file of {"prompt": ..., "completion": ...} rows (`lmlab compose --data`)
    QA     a JSONL file of {"prompt": ..., "answer": ...} rows (`lmlab post-train --data`)
"""

import json
import re
import shlex
import string
from pathlib import Path

import pytest
import torch

from lmlab import experiment as experiments
from lmlab.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
METHODS_DIR = REPO / "src" / "lmlab" / "methods"
METHODS = ["calm", "competition", "iha", "info", "knowledge", "lmc", "posttrain", "qttt", "scaling",
           "sumerian"]

OWN_MODEL = re.compile(r"^```(\w+) own-model[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
OWN_MODEL_FENCES = re.compile(r"^```.*\bown-model\b", re.MULTILINE)
EXAMPLE = re.compile(r"^```python example[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NO_EXAMPLE_YET: set[str] = set()  # methods whose README may lack the Python example for now
PLACEHOLDER = re.compile(r"\b(RUN|HF|OUT|DATA|FILE|PAIRS|QA)\b")

# examples in the toy English and arithmetic of the `tiny` config: the RUN fixture's character vocabulary
# encodes them (it has no 'j' or 'z'), and so does HF's
LINES = [
    "the cat on the mat is big", "the dogs near the rug are small", "a red cat sat on a mat",
    "the small dog ran to the cat", "12+34=46", "the big dogs sat on the red rug", "a cat is on the mat",
    "the dog by the cats was red", "7+8=15", "the cats on the mat were small", "a dog sat by a rug",
    "the red dogs ran on the mat",
]
PAIRS = [("1+2=", "3"), ("4+5=", "9"), ("12+30=", "42"), ("7+8=", "15"), ("20+21=", "41"), ("3+3=", "6")]


def readme(method: str) -> str:
    path = METHODS_DIR / method / "README.md"
    assert path.is_file(), f"{path} is missing"
    return path.read_text(encoding="utf-8")


def own_model_block(method: str) -> tuple[str, str]:
    """(language, code) of the README's one own-model block."""
    blocks = OWN_MODEL.findall(readme(method))
    assert len(blocks) == 1, f"{method}/README.md: expected one ```bash or ```python own-model block"
    return blocks[0]


def command_lines(code: str) -> list[str]:
    return [ln.strip() for ln in code.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def experiments_of(method: str) -> list:
    return [e for e in experiments.registry().values()
            if e.fn.__module__.startswith(f"lmlab.methods.{method}.")]


# ------------------------------------------------------------------------------------------- the README text
def test_every_method_folder_is_covered():
    folders = sorted(p.name for p in METHODS_DIR.iterdir()
                     if (p / "__init__.py").is_file() and not p.name.startswith("_"))
    assert folders == sorted(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_readme_has_one_own_model_block_and_every_claim(method):
    text = readme(method)
    assert len(OWN_MODEL_FENCES.findall(text)) == 1, f"{method}/README.md: more than one own-model block"
    lang, code = own_model_block(method)
    assert lang in ("bash", "python")
    if lang == "bash":
        lines = command_lines(code)
        assert len(lines) == 1 and lines[0].startswith("lmlab "), f"{method}: one `lmlab` command"
    exps = experiments_of(method)
    assert exps, f"no registered experiment lives in lmlab.methods.{method}"
    table = " ".join(text.replace("\\|", "|").split())  # the table escapes '|'; compare whitespace-normalised
    for exp in exps:
        assert f"lmlab run {exp.name} --preset tiny" in text
        for cid, statement in exp.claims.items():
            assert f"`{cid}`" in text, f"{method}/README.md lacks claim {cid} of {exp.name}"
            assert " ".join(statement.split()) in table, f"{method}/README.md: claim {cid} differs"


@pytest.mark.parametrize("method", METHODS)
def test_own_model_command_parses(method):
    """Fast, and also where DATA is absent: the command's arguments are valid for its subcommand."""
    lang, code = own_model_block(method)
    if lang != "bash":
        compile(code, f"{method}/README.md", "exec")
        return
    argv = shlex.split(command_lines(code)[0])[1:]
    args, extra = build_parser().parse_known_args(argv)
    # as `lmlab.cli.main`: only key=value preset overrides may follow the options
    assert all("=" in e and not e.startswith("-") for e in extra)
    assert not extra or hasattr(args, "overrides")
    assert callable(args.func)


# ------------------------------------------------------------------------------------------- running them
@pytest.fixture(scope="session")
def lmlab_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("readme") / "run"
    rc = main(["pretrain", "--config", "tiny", "--out", str(out),
               "model.d_model=32", "model.n_heads=2", "model.seq_len=64", "train.max_steps=2",
               "train.batch_size=4", "train.save_every=2", "train.save_steps=[]", "train.eval_every=2",
               "train.eval_batches=1", "train.progress=false", "train.tensorboard=false"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a character-level tokenizer over printable ASCII."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.hf import hf_tokenizer
    from lmlab.tokenizer import CharTokenizer

    path = tmp_path_factory.mktemp("readme") / "hf"
    tok = hf_tokenizer(CharTokenizer(set(string.printable) - set("\t\r\x0b\x0c")))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("readme") / "examples.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("readme") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    return path


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("readme") / "qa.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": c}) + "\n" for p, c in PAIRS))
    return path


FIXTURES = {"RUN": "lmlab_run", "HF": "hf_model", "DATA": "shared_data", "FILE": "text_file",
            "PAIRS": "pairs_file", "QA": "qa_file"}


def substitute(code: str, request, out: Path):
    """A function replacing every placeholder in a string; fixtures are made only for those `code` uses."""
    paths = {"OUT": out}
    for name in set(PLACEHOLDER.findall(code)) - {"OUT"}:
        paths[name] = request.getfixturevalue(FIXTURES[name])
    return lambda text: PLACEHOLDER.sub(lambda m: str(paths[m.group(1)]), text)


@pytest.mark.parametrize("method", METHODS)
def test_own_model_example_runs(method, request, tmp_path):
    lang, code = own_model_block(method)
    out = tmp_path / "out"
    sub = substitute(code, request, out)
    if lang == "python":
        snippet = compile(sub(code), f"{method}/README.md", "exec")
        exec(snippet, {"__name__": f"readme_{method}"})  # noqa: S102
        return
    argv = [sub(arg) for arg in shlex.split(command_lines(code)[0])]  # split first: paths may hold spaces
    assert main(argv[1:]) == 0, f"{method}: `{shlex.join(argv)}` failed"
    if "OUT" in PLACEHOLDER.findall(code):
        assert out.is_dir() and any(out.iterdir()), f"{method}: the command wrote nothing to OUT"


@pytest.mark.parametrize("method", METHODS)
def test_python_example_runs(method, request, tmp_path, monkeypatch):
    """Every README's five-line Python example (import, load, call the method, print) runs as written."""
    blocks = EXAMPLE.findall(readme(method))
    if method in NO_EXAMPLE_YET and not blocks:
        pytest.skip(f"{method}/README.md has no ```python example block yet")
    assert len(blocks) == 1, f"{method}/README.md: expected one ```python example block"
    code = blocks[0]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 6, f"{method}: the example is short"
    monkeypatch.chdir(tmp_path)
    sub = substitute(code, request, tmp_path / "out")
    exec(compile(sub(code), f"{method}/README.md", "exec"), {"__name__": f"example_{method}"})  # noqa: S102
