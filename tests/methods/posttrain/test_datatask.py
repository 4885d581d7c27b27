"""Your own post-training task (`--data FILE.jsonl --reward ...`): verifiers, the file's checks, user reward functions,
the split, the tokenizer-coverage check, and post-training on it end to end with exact resume."""

import json
import random

import pytest
import torch
from conftest import save_char_run

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.methods.posttrain.datatask import DataTask, load_task, make_problem, read_problems, split_problems
from lmlab.methods.posttrain.general import GeneralSuite
from lmlab.methods.posttrain.tasks import DigitSumTask, ReasoningTask
from lmlab.sft import sft_examples
from lmlab.tokenizer import CharTokenizer, missing_chars

CHARS = sorted(set(DigitSumTask.alphabet + GeneralSuite.alphabet))  # as tests/methods/posttrain/test_posttrain_cli


def _tiny_run(tmp_path):
    return save_char_run(tmp_path / "run", CHARS)


def _save_tiny_hf_llama(path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.hf import hf_tokenizer

    tok = hf_tokenizer(CharTokenizer(CHARS))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(path)
    tok.save_pretrained(path)


def _ctrl_c_after(steps: int):
    """run_pipeline with a Ctrl-C while the `steps`-th step logs (that step itself is complete)."""
    import signal

    from lmlab.methods.posttrain import pipelines as posttrain

    real, seen = posttrain.run_pipeline, []

    def run_pipeline(*a, callback=None, **kw):
        def cb(phase, step, log):
            seen.append(step)
            if len(seen) == steps:
                signal.raise_signal(signal.SIGINT)
            callback(phase, step, log)

        return real(*a, callback=cb, **kw)

    return run_pipeline


def task_of(rows, reward="exact"):
    verifier = reward.split(":")[0] if reward.split(":")[0] in ("exact", "normalised", "numeric", "regex",
                                                                "choice") else "function"
    problems = [make_problem(r, f"row {i}", verifier) for i, r in enumerate(rows)]
    return DataTask(problems, reward), problems


@pytest.mark.parametrize("reward, answer, right, wrong", [
    ("exact", "Paris", [" Paris ", "Paris"], ["paris", "Paris.", ""]),
    ("normalised", "The Eiffel Tower", ["eiffel tower", "the  Eiffel, tower!"], ["Eiffel", "tower eiffel"]),
    ("numeric", "1,000", ["1000", "so it is 1,000", "x=999 then 1000.0"], ["1000.1", "no number", "1000 or 7"]),
    ("numeric:0.5", "3", ["3.4", "2.6"], ["3.6"]),
    ("regex", r"4\d", ["42", " 47 "], ["4", "142", "42 apples"]),
    ("choice", "b", ["B", "(B)", "B. because", "I think (B)"], ["A", "C is right", "", "(E)"]),
])
def test_named_verifiers(reward, answer, right, wrong):
    task, [p] = task_of([{"prompt": "q?", "answer": answer}], reward)
    assert all(task.verify(p, c) and task.score(p, c) == (1.0, True) for c in right), right
    assert not any(task.verify(p, c) for c in wrong), wrong
    assert task.score(p, wrong[0]) == (0.0, False)


def test_several_answers_and_the_gold_text():
    task, [a, b] = task_of([{"prompt": "2+2=", "answers": ["4", "four"]},
                            {"prompt": "3+3=", "answer": 6, "solution": ["3+3=6", "6"], "topic": "sums"}])
    assert task.verify(a, "four") and task.verify(a, "4") and task.verify(b, "6")
    assert task.solutions(a, 16, random.Random(0)) == ["4", "four"]  # the answers when there is no solution
    assert task.solutions(b, 16, random.Random(0)) == ["3+3=6", "6"]
    assert len(task.solutions(b, 1, random.Random(0))) == 1 and task.num_solutions(b) == 2
    assert task.max_completion_chars(0) == 5 and task.alphabet == "".join(sorted(set("2+=4four3+3=66")))
    assert isinstance(task, ReasoningTask) and b.data[1]["topic"] == "sums"


def test_sft_trains_on_the_gold_solutions():
    task, problems = task_of([{"prompt": "ab", "answer": "c", "solution": "cc"}, {"prompt": "b", "answer": "a"}])
    tok = CharTokenizer("abc")
    data = sft_examples(task, problems, tok, "one", seed=0)
    assert [tok.decode(e.completion_ids) for e in data] == ["cc<eos>", "a<eos>"]
    assert [tok.decode(e.prompt_ids) for e in data] == ["<bos>ab", "<bos>b"]


@pytest.mark.parametrize("row, reward, message", [
    ({"answer": "x"}, "exact", "non-empty string 'prompt'"),
    ({"prompt": "q", "answer": "x", "answers": ["y"]}, "exact", "not both"),
    ({"prompt": "q"}, "exact", "no 'answer' or 'answers'"),
    ({"prompt": "q", "answers": []}, "exact", "non-empty list"),
    ({"prompt": "q", "answer": True}, "exact", "string or number"),
    ({"prompt": "q", "answer": "AB"}, "choice", "answer letters"),
    ({"prompt": "q", "answer": "many"}, "numeric", "numeric answers"),
    ({"prompt": "q", "answer": "(a"}, "regex", "not a valid regular expression"),
])
def test_bad_lines_are_named(tmp_path, row, reward, message):
    path = tmp_path / "d.jsonl"
    good = {"prompt": "ok", "answer": "B" if reward == "choice" else "1"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(LmlabError, match=message) as e:
        read_problems(path, reward)
    assert f"{path} line 2" in str(e.value)


def test_split_holds_out_whole_prompts_and_is_seeded():
    problems = [make_problem({"prompt": f"p{i % 15}", "answer": "a"}, "", "exact") for i in range(30)]
    train, test = split_problems(problems, 0.2, seed=3)
    assert len({p.prompt for p in test}) == 3 and not {p.prompt for p in train} & {p.prompt for p in test}
    assert len(train) + len(test) == 30 and split_problems(problems, 0.2, seed=3) == (train, test)
    assert split_problems(problems, 0.2, seed=4) != (train, test)
    with pytest.raises(LmlabError, match="too few"):
        split_problems(problems[:1], 0.5, seed=0)
    with pytest.raises(LmlabError, match="--test-frac"):
        split_problems(problems, 1.0, seed=0)


def test_a_test_file_replaces_the_split(tmp_path):
    data, test = tmp_path / "d.jsonl", tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "answer": "1"}) + "\n" for i in range(4)))
    test.write_text(json.dumps({"prompt": "q", "answer": "2"}) + "\n")
    task, train, held = load_task(data, "numeric", test)
    assert [p.prompt for p in train] == ["p0", "p1", "p2", "p3"] and [p.prompt for p in held] == ["q"]
    assert task.verify(held[0], "2.0")


def test_missing_chars_of_lmlab_and_hf_tokenizers(tmp_path):
    from lmlab.hf import HFCodec, hf_tokenizer

    assert missing_chars(CharTokenizer("abc"), "a?b:c") == [":", "?"]
    assert missing_chars(HFCodec(hf_tokenizer(CharTokenizer("abc"))), "a?b:c") == [":", "?"]  # dropped
    assert missing_chars(CharTokenizer("abc "), "a b") == []


# ---------------------------------------------------------------------------------------------- the commands
REWARD_MODULE = '''
def score(prompt, completion, example):
    """Even-length completions earn 1, plus the line's own bonus field: a signal even an untrained model gets."""
    return float(len(completion) % 2 == 0) + example["bonus"]
'''


def write_task(tmp_path, n=12):
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        s = (a + b) % 10
        rows.append({"prompt": f"S{a}{b}:", "answer": str(s), "solution": f"+{a}={a}+{b}={s}A{s}",
                     "bonus": 0.1 * (i % 3)})
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A user's reward function in a module of its own, importable as `<name>:score`."""
    name = f"user_reward_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:score"


EVAL = ["--eval-samples", "2", "--device", "cpu"]
SMALL = [*EVAL, "--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "8", "--temperature", "1.5"]


@pytest.mark.parametrize("pipeline, cut", [("sft_rl", 2), ("sft_rl", 4), ("parallel_avg", 2)])
def test_post_train_on_a_user_jsonl_with_a_user_reward_resumes_exactly(tmp_path, monkeypatch, reward_module,
                                                                       pipeline, cut):
    """Issue 24, done-when 2: interrupted (Ctrl-C) and resumed, the weights equal an uninterrupted run's."""
    from lmlab import checkpoint
    from lmlab.methods.posttrain import pipelines as posttrain

    run, data = _tiny_run(tmp_path), write_task(tmp_path)
    args = ["post-train", str(run), "--pipeline", pipeline, "--data", str(data), "--reward", reward_module,
            "--test-frac", "0.25", "--sft-steps", "3", "--rl-steps", "3", "--sft-batch-size", "4", *SMALL]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as mp:
        mp.setattr(posttrain, "run_pipeline", _ctrl_c_after(cut))
        assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    a, _ = checkpoint.load(tmp_path / "whole")
    b, _ = checkpoint.load(tmp_path / "cut")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    history = [json.loads(x) for x in (tmp_path / "whole" / "history.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in history if "reward" in r]
    assert rewards and any(r % 1 for r in rewards)  # the user function scored (its bonus field is fractional)
    whole, cut_m = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "cut"))
    assert whole["after"] == cut_m["after"] and whole["n_train"] == 9 and whole["n_test"] == 3
    assert whole["task"] == "data" and whole["data"]["reward"] == reward_module


def test_resume_refuses_a_changed_data_file(tmp_path, monkeypatch, capsys):
    from lmlab.methods.posttrain import pipelines as posttrain

    run, data = _tiny_run(tmp_path), write_task(tmp_path)
    args = ["sft", str(run), "--data", str(data), "--steps", "3", "--batch-size", "4", *EVAL,
            "--out", str(tmp_path / "o")]
    with monkeypatch.context() as mp:
        mp.setattr(posttrain, "run_pipeline", _ctrl_c_after(1))
        assert main(args) == 130
    data.write_text(data.read_text().replace("S", "S1", 1))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert "was written with other settings {'data'" in capsys.readouterr().err  # the file's content changed


def test_sft_and_rl_on_a_hf_model_with_a_test_file_and_a_named_verifier(tmp_path):
    src, data, test = tmp_path / "hf", write_task(tmp_path), tmp_path / "test.jsonl"
    _save_tiny_hf_llama(src)
    test.write_text(json.dumps({"prompt": "S12:", "answers": ["3", "+1=1+2=3A3"]}) + "\n")
    assert main(["sft", str(src), "--data", str(data), "--test", str(test), "--steps", "2", "--batch-size", "4",
                 "--gold", *EVAL, "--out", str(tmp_path / "sft")]) == 0
    m = json.loads((tmp_path / "sft" / "metrics.json").read_text())
    assert m["n_train"] == 12 and m["n_test"] == 1 and m["data"]["test"] == str(test) and "pass@2" in m["after"]
    assert main(["rl", str(tmp_path / "sft"), "--data", str(data), "--reward", "numeric:0.5", "--steps", "1",
                 *SMALL, "--out", str(tmp_path / "rl")]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--reward", "missing_module_xyz:score"], "no module named 'missing_module_xyz'"),
    (["--reward", "json:no_such_function"], "module json has no 'no_such_function'"),
    (["--reward", "json:dumps"], "cannot be called as dumps(prompt, completion, example)"),
    (["--reward", "exakt"], "unknown verifier"),
    (["--reward", "numeric:-1"], "tolerance must be a number >= 0"),
    (["--difficulty", "3"], "--difficulty applies to the built-in --task"),
])
def test_bad_rewards_and_flags_are_one_line_errors(tmp_path, capsys, extra, message):
    run, data = _tiny_run(tmp_path), write_task(tmp_path)
    assert main(["rl", str(run), "--data", str(data), *extra, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_a_wrong_reward_value_is_named(tmp_path, capsys, monkeypatch):
    (tmp_path / "bad_reward_value.py").write_text("def score(prompt, completion, example):\n    return 'yes'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run, data = _tiny_run(tmp_path), write_task(tmp_path)
    assert main(["rl", str(run), "--data", str(data), "--reward", "bad_reward_value:score", *SMALL,
                 "--steps", "1", "--out", str(tmp_path / "o")]) == 2
    assert "reward function bad_reward_value:score returned 'yes'" in capsys.readouterr().err


def test_reward_without_data_and_sft_without_gold_are_refused(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    assert main(["rl", str(run), "--reward", "exact", "--out", str(tmp_path / "o")]) == 2
    assert "--reward applies to your own task" in capsys.readouterr().err
    data = tmp_path / "re.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"S{i}:", "answer": f"{i}+"}) + "\n" for i in range(4)))
    assert main(["sft", str(run), "--data", str(data), "--reward", "regex", "--out", str(tmp_path / "o")]) == 2
    assert "no gold text for SFT" in capsys.readouterr().err


def test_uncovered_characters_are_named_with_the_fix(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "what is 2+2?", "answer": "4"}) + "\n"
                    + json.dumps({"prompt": "S1:", "answer": "1"}) + "\n")
    assert main(["-q", "rl", str(run), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err  # -q: the error line alone, no "loading ..." before it
    assert set(CHARS) >= set("what2+?S1:4") - set(" stw")
    assert "cannot encode 4 character(s) of --data" in err and "' ' 's' 't' 'w';" in err
    assert "remove them from the file" in err and err.count("\n") == 1


def test_the_readme_reward_function_loads_by_file_path(tmp_path):
    """posttrain/README.md's example reward function, saved to a file and given as path/to/file.py:score."""
    import re
    from pathlib import Path

    from lmlab.methods.posttrain.datatask import load_function

    readme = (Path(__file__).resolve().parents[3] / "src/lmlab/methods/posttrain/README.md").read_text()
    code = re.search(r"```python\n(# my_rewards\.py.*?)```", readme, re.DOTALL).group(1)
    (tmp_path / "my_rewards.py").write_text(code)
    task, [p] = task_of([{"prompt": "1+2=", "answer": "3"}], f"{tmp_path / 'my_rewards.py'}:score")
    assert task.score(p, " 3") == (1.0, True) and task.score(p, "33") == (pytest.approx(0.1), False)
    assert callable(load_function(f"{tmp_path / 'my_rewards.py'}:score"))
