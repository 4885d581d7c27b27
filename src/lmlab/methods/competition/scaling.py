"""Power-law fits L(N, D) = E + A·N^−α + B·D^−β and the "unreachable band" (spec 02 §3).

With D → ∞ a model of size N reaches E + A·N^−α at best, so for N_s < N_l the band of losses
between E + A·N_l^−α and E + A·N_s^−α is reachable only by the larger model, however much data.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from lmlab.utils import LmlabError


@dataclass
class ScalingFit:
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    r2: float  # on log loss
    n_points: int

    def predict(self, N, D):
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A * N ** -self.alpha + self.B * D ** -self.beta

    def infinite_data_loss(self, N):
        return self.E + self.A * np.asarray(N, dtype=float) ** -self.alpha

    def to_dict(self) -> dict:
        return asdict(self)


def fit_scaling_law(N, D, L, alpha_max: float = 4.0, beta_max: float = 4.0) -> ScalingFit:
    """Least squares on log L (scipy `least_squares`, soft-L1 loss) from a grid of starts.

    Parameters are fitted as E = e^e, A = e^a, B = e^b so that all stay positive."""
    from scipy.optimize import least_squares  # heavy: imported only when a law is fitted

    N, D, L = (np.asarray(v, dtype=float).ravel() for v in (N, D, L))
    if not len(N) == len(D) == len(L) or len(L) < 5:
        raise LmlabError(f"need ≥ 5 matching (N, D, L) points to fit 5 parameters, got {len(N)}, {len(D)}, {len(L)}")
    if (N <= 0).any() or (D <= 0).any() or (L <= 0).any():
        raise LmlabError("N, D and L must all be positive for a power-law fit")
    logL = np.log(L)
    lN, lD = np.log(N), np.log(D)

    def pred(t):
        e, a, al, b, be = t
        return np.logaddexp(np.logaddexp(e, a - al * lN), b - be * lD)

    lo = [np.log(L.min()) - 30, -30, 0.0, -30, 0.0]
    hi = [np.log(L.min()) + 1e-9, 60, alpha_max, 60, beta_max]
    best = None
    for ef, al, be in itertools.product((0.5, 0.9, 0.999), (0.3, 1.0), (0.3, 1.0)):
        e0 = np.log(L.min() * ef)
        t0 = [e0, np.log(max(L.max() - L.min(), 1e-12)) + al * lN.min(), al,
              np.log(max(L.max() - L.min(), 1e-12)) + be * lD.min(), be]
        t0 = np.clip(t0, np.array(lo) + 1e-6, np.array(hi) - 1e-6)
        r = least_squares(lambda t: pred(t) - logL, t0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05,
                          x_scale="jac", max_nfev=5000)
        if best is None or r.cost < best.cost:
            best = r
    e, a, al, b, be = best.x
    resid = pred(best.x) - logL
    ss_tot = float(((logL - logL.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return ScalingFit(float(np.exp(e)), float(np.exp(a)), float(al), float(np.exp(b)), float(be), r2, len(L))


def unreachable_band(fit: ScalingFit, n_small: float, n_large: float) -> dict:
    """The loss band only the larger model can reach, and the data D* at which the larger model
    already beats the smaller model's infinite-data loss: B·D*^−β = A·(N_s^−α − N_l^−α)."""
    if not n_small < n_large:
        raise LmlabError(f"need n_small < n_large, got {n_small} and {n_large}")
    low, high = float(fit.infinite_data_loss(n_large)), float(fit.infinite_data_loss(n_small))
    gap = high - low
    d_star = float((fit.B / gap) ** (1.0 / fit.beta)) if gap > 0 and fit.beta > 0 else float("inf")
    return {"band_low": low, "band_high": high, "band_width": gap, "d_star": d_star}
