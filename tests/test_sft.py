import random

import pytest
import torch

from lmlab.model import GPT, IGNORE_INDEX, GPTConfig
from lmlab.sft import SFTConfig, SFTExample, completion_batch, sft_backward, sft_examples, train_sft
from lmlab.methods.posttrain.tasks import DigitSumTask, make_split
from lmlab.tokenizer import CharTokenizer
from lmlab.utils import LmlabError


def tiny_model(vocab=24, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, n_layers=1, n_heads=2, d_model=16, seq_len=64))


def ragged_examples(seed=0, n=7):
    rng = random.Random(seed)
    return [SFTExample([1] + [rng.randrange(3, 24) for _ in range(rng.randint(1, 6))],
                       [rng.randrange(3, 24) for _ in range(rng.randint(1, 9))] + [2]) for _ in range(n)]


def grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def test_completion_batch_targets_only_completion_tokens():
    ex = [SFTExample([1, 5, 6], [7, 8, 2]), SFTExample([1, 9], [10, 2])]
    ids, targets, mask = completion_batch(ex, pad_id=0)
    assert ids.tolist() == [[1, 5, 6, 7, 8], [1, 9, 10, 2, 0]]
    assert targets.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 8, 2], [IGNORE_INDEX, 10, 2, IGNORE_INDEX, IGNORE_INDEX]]
    assert mask.tolist() == [[True] * 5, [True] * 4 + [False]]


def test_loss_is_token_mean_over_the_whole_batch():
    model = tiny_model()
    ex = ragged_examples()
    model.zero_grad()
    value = sft_backward(model, ex, pad_id=0)
    # naive reference: every example alone, no padding, summed token losses / total completion tokens
    total, count = 0.0, 0
    for e in ex:
        seq = torch.tensor([e.prompt_ids + e.completion_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(seq[:, :-1]).float(), -1)[0]
        p = len(e.prompt_ids)
        for j, tok in enumerate(e.completion_ids):
            total -= float(logp[p - 1 + j, tok])
            count += 1
    assert value == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("micro", [1, 2, 3])
def test_gradient_accumulation_equals_full_batch(micro):
    ex = ragged_examples(seed=1)
    full = tiny_model()
    full.zero_grad()
    v_full = sft_backward(full, ex, pad_id=0)
    acc = tiny_model()
    acc.zero_grad()
    v_acc = sft_backward(acc, ex, pad_id=0, micro_batch_size=micro)
    assert v_acc == pytest.approx(v_full, rel=1e-5)
    for a, b in zip(grads(acc), grads(full)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_naive_accumulation_would_differ_so_the_test_above_can_fail():
    """Averaging per-micro-batch means re-weights tokens when lengths differ (the known bug)."""
    ex = ragged_examples(seed=1)
    full = tiny_model()
    full.zero_grad()
    sft_backward(full, ex, pad_id=0)
    naive = tiny_model()
    naive.zero_grad()
    for i in range(0, len(ex), 2):
        sft_backward(naive, ex[i:i + 2], pad_id=0, scale=2 / len(ex))
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(grads(naive), grads(full)))


def test_sft_and_sft_gold_data():
    task = DigitSumTask()
    tok = CharTokenizer(task.alphabet)
    probs = make_split(task, 10, 4, seed=0)
    one = sft_examples(task, probs, tok, "one", seed=0)
    gold = sft_examples(task, probs, tok, "gold", gold_limit=8, seed=0)
    assert len(one) == len(probs)
    assert len(gold) == sum(min(8, task.num_solutions(p)) for p in probs)
    for e in gold:
        assert e.prompt_ids[0] == tok.bos_id and e.completion_ids[-1] == tok.eos_id
        text = tok.decode(e.completion_ids, skip_special=True)
        prompt = tok.decode(e.prompt_ids, skip_special=True)
        assert task.verify(next(p for p in probs if p.prompt == prompt), text)
    assert [e.completion_ids for e in one] == [e.completion_ids for e in sft_examples(task, probs, tok, "one", seed=0)]
    with pytest.raises(LmlabError):
        sft_examples(task, probs, tok, "all")


def test_train_sft_fits_a_small_set():
    task = DigitSumTask()
    tok = CharTokenizer(task.alphabet)
    data = sft_examples(task, make_split(task, 4, 3, seed=0), tok, "one")
    model = tiny_model(tok.vocab_size)
    hist = train_sft(model, data, tok.pad_id, SFTConfig(steps=60, batch_size=4, micro_batch_size=2, lr=1e-2))
    assert hist[-1]["sft_loss"] < 0.5 * hist[0]["sft_loss"]


@pytest.mark.parametrize("kw, flag", [({"batch_size": 0}, "--sft-batch-size"), ({"steps": -1}, "--sft-steps"),
                                      ({"micro_batch_size": 0}, "--sft-micro-batch-size"), ({"lr": 0.0}, "--sft-lr")])
def test_sft_config_errors_name_the_flag(kw, flag):
    """Audit L-3: --sft-batch-size 0 failed with a misleading 'every example needs a non-empty solution'."""
    task = DigitSumTask()
    tok = CharTokenizer(task.alphabet)
    data = sft_examples(task, make_split(task, 4, 2, seed=0), tok)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layers=1, n_heads=2, d_model=16, seq_len=64))
    with pytest.raises(LmlabError, match=flag):
        train_sft(model, data, tok.pad_id, SFTConfig(**kw))
