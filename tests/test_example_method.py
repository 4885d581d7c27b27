"""Adding a method touches only its own folder: `tests/example_methods/nope/` adds an attention variant, an
experiment and a command, and the core finds all three once the folder is on the methods path."""

import json
from pathlib import Path

import pytest

from lmlab import cli, experiment
from lmlab.model import GPT, GPTConfig, MultiHeadAttention, stack_attention_flops

EXAMPLES = Path(__file__).parent / "example_methods"


def test_the_example_method_is_not_known_without_its_folder():
    with pytest.raises(ValueError, match="unknown attention 'nope'"):
        GPTConfig(vocab_size=8, n_layers=1, n_heads=2, d_model=16, attention="nope")
    assert "nope_periodic" not in experiment.registry()


def test_an_attention_experiment_and_command_from_one_new_folder(extra_methods, tmp_path, capsys):
    extra_methods(EXAMPLES)
    cfg = GPTConfig(vocab_size=8, n_layers=1, n_heads=2, d_model=16, seq_len=16, attention="nope")
    block = GPT(cfg).blocks[0]
    assert isinstance(block.attn, MultiHeadAttention) and type(block.attn).registry_name == "nope"
    assert stack_attention_flops(cfg) == 12 * 2 * 8 * 16  # asked of the class: 12·heads·head_dim·T

    assert cli.main(["list"]) == 0
    assert "nope_periodic" in capsys.readouterr().out
    out = tmp_path / "report"
    assert cli.main(["run", "nope_periodic", "--preset", "tiny", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["experiment"] == "nope_periodic" and result["error"] is None
    claims = {c["id"]: c for c in result["claims"]}
    assert claims["learns_periodic"]["held"] is True  # the periodic sequence is easy to learn
    capsys.readouterr()

    assert cli.main(["nope-flops", "--layers", "3", "--seq-len", "16"]) == 0
    assert float(capsys.readouterr().out) == 3 * 12 * 2 * 16 * 16  # layers × 12·heads·head_dim·T


def test_a_method_whose_experiment_fails_to_import_is_reported_not_fatal(extra_methods, tmp_path):
    broken = tmp_path / "methods" / "zz_broken"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    (broken / "experiment.py").write_text("raise RuntimeError('this experiment module is broken')\n")
    extra_methods(broken.parent)
    reg = experiment.registry()
    assert "zz_broken" in reg and "scaling_smoke" in reg
    with pytest.raises(ImportError, match="lmlab.methods.zz_broken.experiment failed to import"):
        reg["zz_broken"].fn(None)


def test_building_the_parser_imports_no_torch():
    """`lmlab --help` stays fast: no method's cli.py imports torch at import time (a fresh interpreter)."""
    import subprocess
    import sys

    code = "import sys, lmlab.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
