"""scaling_smoke's Markov source is determined by its seed alone."""

import torch

from lmlab.methods.scaling.experiment import Config, MarkovSource, training_data


def test_markov_source_ignores_the_global_rng():
    torch.manual_seed(1)
    a = MarkovSource(12, 3, seed=5)
    torch.manual_seed(2)
    b = MarkovSource(12, 3, seed=5)
    assert torch.equal(a.probs, b.probs)
    assert not torch.equal(a.probs, MarkovSource(12, 3, seed=6).probs)
    state = torch.get_rng_state()
    MarkovSource(12, 3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # and does not advance it


def test_markov_source_rows_are_distributions_over_branching_successors():
    src = MarkovSource(10, 3, seed=0)
    assert torch.allclose(src.probs.sum(-1), torch.ones(10, 10), atol=1e-6)
    assert ((src.probs > 0).sum(-1) == 3).all()
    x = src.sample(4, 20, torch.Generator().manual_seed(0))
    assert x.shape == (4, 20) and 0.0 < src.conditional_entropy(x) <= torch.log(torch.tensor(3.0)) + 1e-6


def test_markov_samples_follow_the_transition_probabilities():
    src = MarkovSource(6, 3, seed=1)
    x = src.sample(4000, 30, torch.Generator().manual_seed(0))
    assert (src.probs[x[:, :-2], x[:, 1:-1], x[:, 2:]] > 0).all()  # never a transition outside the support
    ctx = (x[:, :-2] * 6 + x[:, 1:-1]).flatten()
    counts = torch.zeros(36, 6).index_put_((ctx, x[:, 2:].flatten()), torch.ones(ctx.numel()), accumulate=True)
    seen = counts.sum(1) > 2000
    freq = counts[seen] / counts[seen].sum(1, keepdim=True)
    assert seen.sum() > 10 and torch.allclose(freq, src.probs.view(36, 6)[seen], atol=0.04)


def test_markov_sampling_is_determined_by_the_generator():
    src = MarkovSource(8, 2, seed=0)
    a, b = (src.sample(5, 12, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, src.sample(5, 12, torch.Generator().manual_seed(4)))


def test_training_data_is_shared_by_widths_and_has_one_batch_per_step():
    cfg = Config(steps=3, batch=4, seq_len=10)
    src = MarkovSource(8, 2, seed=0)
    d = training_data(cfg, src, seed=7)
    assert d.shape == (3, 4, 10) and torch.equal(d, training_data(cfg, src, seed=7))
    assert not torch.equal(d, training_data(cfg, src, seed=8))
    assert torch.equal(d.long(), src.sample(12, 10, torch.Generator().manual_seed(2007)).view(3, 4, 10))
