"""L(N, D) = E + A·N^−α + B·D^−β fits recover planted parameters; the unreachable band."""

import numpy as np
import pytest

from lmlab.methods.competition.scaling import ScalingFit, fit_scaling_law, unreachable_band
from lmlab.utils import LmlabError

PLANTED = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}


def _grid(noise=0.0, seed=0):
    N, D = np.meshgrid([1e3, 3e3, 1e4, 3e4, 1e5, 3e5], [1e6, 3e6, 1e7, 3e7, 1e8])
    L = PLANTED["E"] + PLANTED["A"] * N ** -PLANTED["alpha"] + PLANTED["B"] * D ** -PLANTED["beta"]
    if noise:
        L = L * np.exp(np.random.default_rng(seed).normal(0, noise, L.shape))
    return N, D, L


def test_fit_recovers_planted_parameters_exactly():
    fit = fit_scaling_law(*_grid())
    for k, v in PLANTED.items():
        assert getattr(fit, k) == pytest.approx(v, rel=1e-3)
    assert fit.r2 > 0.9999 and fit.n_points == 30


def test_fit_is_close_under_noise():
    fit = fit_scaling_law(*_grid(noise=0.003, seed=1))
    assert fit.alpha == pytest.approx(PLANTED["alpha"], rel=0.1)
    assert fit.beta == pytest.approx(PLANTED["beta"], rel=0.1)
    assert fit.E == pytest.approx(PLANTED["E"], rel=0.25)


def test_unreachable_band_by_hand():
    fit = ScalingFit(E=1.0, A=8.0, alpha=1.0, B=4.0, beta=0.5, r2=1.0, n_points=0)
    band = unreachable_band(fit, n_small=2.0, n_large=8.0)
    assert band["band_high"] == pytest.approx(5.0) and band["band_low"] == pytest.approx(2.0)
    # B·D*^-β = 3 → D* = (4/3)^2
    assert band["d_star"] == pytest.approx((4 / 3) ** 2)
    assert float(fit.predict(8.0, band["d_star"])) == pytest.approx(float(fit.infinite_data_loss(2.0)))


def test_bad_fit_inputs():
    with pytest.raises(LmlabError):
        fit_scaling_law([1, 2], [1, 2], [1, 2])
    with pytest.raises(LmlabError):
        fit_scaling_law([1, 2, 3, 4, 0], [1] * 5, [1] * 5)
    with pytest.raises(LmlabError):
        unreachable_band(ScalingFit(1, 1, 1, 1, 1, 1, 0), 10, 5)
