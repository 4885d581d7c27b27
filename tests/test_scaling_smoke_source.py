"""scaling_smoke's Markov source is determined by its seed alone."""

import torch

from lmlab.experiments.scaling_smoke import MarkovSource


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
