"""`lmlab compose ANCHOR AUGMENT --out DIR` on Hugging Face folders: a pair of one family, and an HF anchor with an
lmlab augment (the same character vocabulary); differing tokenizers are refused in one line naming both. The old
spellings (--anchor/--augment, --out FILE.pt) still work with a deprecation note. Nothing lost, nothing
overwritten: a second writer of one --out is refused, a NaN step keeps the last good bridges, unusable learning
rates are refused."""

import json
import re

import pytest
import torch
from conftest import save_char_run

from lmlab.cli import main
from lmlab.tokenizer import CharTokenizer

CHARS = sorted(set("0123456789+=abcdefghij: "))


def save_hf(path, chars=CHARS, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.hf import hf_tokenizer

    tok = hf_tokenizer(CharTokenizer(chars))
    torch.manual_seed(len(chars) + layers)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_lmlab(path):
    return save_char_run(path, CHARS, step=0, seed=1, n_layers=2, d_model=32)


def data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n"
                            for a in range(5) for b in range(5)))
    return path


def test_compose_hf_anchor_with_hf_or_lmlab_augment(tmp_path, capsys):
    anchor = save_hf(tmp_path / "anchor")
    for augment in (save_hf(tmp_path / "hf_aug", layers=3), save_lmlab(tmp_path / "lm_aug")):
        out = tmp_path / f"bridge_{augment.name}"
        assert main(["compose", str(anchor), str(augment), "--data", str(data(tmp_path)),
                     "--steps", "3", "--batch", "4", "--device", "cpu", "--out", str(out)]) == 0, capsys.readouterr()
        assert {p.name for p in out.iterdir()} >= {"bridges.pt", "metrics.jsonl"}


def test_compose_refuses_tokenizers_that_differ(tmp_path, capsys):
    anchor, augment = save_hf(tmp_path / "a"), save_hf(tmp_path / "b", chars=sorted(set("0123456789+=xyz ")))
    pairs = data(tmp_path)
    capsys.readouterr()  # transformers' saving progress
    assert main(["compose", str(anchor), str(augment), "--data", str(pairs),
                 "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "o")]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "tokenizers differ" in errors[0]
    # both named (class and vocabulary size) and one token they disagree on: ':' is in the anchor's only
    n_a, n_b = len(CHARS) + 3, len(set("0123456789+=xyz ")) + 3  # + <pad> <bos> <eos>
    assert re.search(rf"anchor \w+ \({n_a} tokens\), augment \w+ \({n_b} tokens\); e\.g\. token ':' is id \d+ in "
                     "the anchor's and absent in the augment's", errors[0]), errors[0]


def test_the_tokenizer_refusal_names_the_first_token_they_disagree_on():
    from lmlab.errors import LmlabError
    from lmlab.methods.calm.compose import check_same_tokenizer

    a, b = CharTokenizer(list("abc")), CharTokenizer(list("abd"))
    check_same_tokenizer(a, CharTokenizer(list("abc")))  # the same vocabulary: no refusal
    with pytest.raises(LmlabError) as e:
        check_same_tokenizer(a, b)
    assert f"anchor CharTokenizer ({a.vocab_size} tokens), augment CharTokenizer ({b.vocab_size} tokens)" in str(e.value)
    assert f"token 'c' is id {a.stoi['c']} in the anchor's and absent in the augment's" in str(e.value)


def _compose(tmp_path, out, *extra):
    run = tmp_path / "lm" if (tmp_path / "lm").exists() else save_lmlab(tmp_path / "lm")
    return main(["compose", str(run), str(run), "--data", str(data(tmp_path)),
                 "--batch", "4", "--device", "cpu", "--out", str(out), *extra])


def test_a_second_writer_of_the_same_out_is_refused_before_touching_it(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    from lmlab.runlock import LOCK_FILE

    out = tmp_path / "bridge"
    lock = out / LOCK_FILE
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "started": 0,
                                    "command": "lmlab compose"}))
        assert _compose(tmp_path, out, "--steps", "1") == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by lmlab compose (pid {live.pid}" in err and err.count("\n") == 1
        assert not (out / "bridges.pt").exists() and lock.exists()
        assert _compose(tmp_path, tmp_path / "other", "--steps", "1") == 0  # another folder: free
    finally:
        live.kill()
        live.wait()
    assert _compose(tmp_path, out, "--steps", "1") == 0  # the owner is gone: its stale lock is taken over
    assert (out / "bridges.pt").is_file() and not lock.exists()


def test_a_finished_composition_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "done"
    assert _compose(tmp_path, out, "--steps", "1") == 0
    before = (out / "bridges.pt").read_bytes()
    capsys.readouterr()
    assert _compose(tmp_path, out, "--steps", "2", "-q") == 2
    assert capsys.readouterr().err == f"error: --out {out} is not empty: pass a new folder (results are never " \
        "overwritten)\n"
    assert (out / "bridges.pt").read_bytes() == before


def test_the_old_spellings_still_work_with_a_deprecation_note_each(tmp_path, caplog):
    """--anchor/--augment and --out FILE.pt: the files beside FILE.pt as before (FILE.pt.metrics.jsonl, the lock
    .FILE.pt.lmlab.lock), one warning per old spelling; the new spelling gives the same bridges in OUT/."""
    run = save_lmlab(tmp_path / "lm")
    old, new = tmp_path / "bridge.pt", tmp_path / "new"
    common = ["--data", str(data(tmp_path)), "--steps", "2", "--batch", "4", "--device", "cpu"]
    with caplog.at_level("WARNING", logger="lmlab.methods.calm.cli"):
        assert main(["compose", "--anchor", str(run), "--augment", str(run), *common, "--out", str(old)]) == 0
    notes = [r.message for r in caplog.records if "deprecated" in r.message]
    assert len(notes) == 3 and any(n.startswith("--anchor is deprecated") for n in notes) \
        and any(n.startswith(f"--out {old}: a file for --out is deprecated") for n in notes)
    assert old.is_file() and (tmp_path / "bridge.pt.metrics.jsonl").is_file() and not (tmp_path / "bridges.pt").exists()
    assert main(["compose", str(run), str(run), *common, "--out", str(new)]) == 0
    a, b = (torch.load(p, weights_only=True)["bridges"] for p in (old, new / "bridges.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["compose", str(run), "--anchor", str(run), *common, "--out", str(new)]) == 2  # given twice


def test_a_nan_step_stops_composition_with_the_last_good_bridges_saved(tmp_path, monkeypatch, capsys):
    from lmlab.methods.calm.compose import ComposedModel

    real, calls = ComposedModel.forward, []

    def poisoned(self, *a, **k):  # the third step's loss is NaN
        loss = real(self, *a, **k)
        calls.append(1)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(ComposedModel, "forward", poisoned)
    out = tmp_path / "bridge"
    assert _compose(tmp_path, out, "--steps", "20", "-q") == 2
    err = capsys.readouterr().err  # -q: the error line alone, no progress
    assert err.startswith("error: composition training diverged after 2 good step(s)") and err.count("\n") == 1
    blob = torch.load(out / "bridges.pt", weights_only=True)
    assert blob["extra"]["steps"] == 2 and "loss is nan" in blob["extra"]["diverged"]
    assert all(torch.isfinite(v).all() for v in blob["bridges"].values())


@pytest.mark.parametrize("lr", ["nan", "inf", "1e38", "0"])
def test_non_finite_or_overflowing_learning_rates_are_refused_up_front(tmp_path, capsys, lr):
    assert _compose(tmp_path, tmp_path / "b", "--steps", "1", "--lr", lr) == 2
    assert "--lr must be a finite number > 0" in capsys.readouterr().err and not (tmp_path / "b").exists()
