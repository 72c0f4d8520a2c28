"""θ starts of the exact-gradient GLMM searches (``glmm.exact.start``):
working-scale moments of the GLM fit, per scalar term."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

import multilevel as ml
import multilevel.glmm.fit as fit_mod


def _starts(formula: str, data: pd.DataFrame, family: str) -> tuple[np.ndarray, object]:
    seen = {}
    original = fit_mod.moment_theta

    def spy(prob, beta):
        seen["start"] = original(prob, beta)
        return seen["start"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_mod.moment_theta = spy
        try:
            fit = ml.glmer(formula, data, family)
        finally:
            fit_mod.moment_theta = original
    return seen["start"], fit


def test_crossed_terms_start_near_their_standard_deviations():
    """Two crossed scalar terms of a Poisson model: each term's start within a
    factor of 1.6 of the fit's θ (the other term's variation counts as noise),
    a term with one row per level keeps the start 1, and the fit is at its
    optimum all the same."""
    rng = np.random.default_rng(5)
    n, na, nb = 3000, 60, 40
    a, b = rng.integers(0, na, n), rng.integers(0, nb, n)
    eta = 1.0 + rng.normal(0, 0.6, na)[a] + rng.normal(0, 0.3, nb)[b]
    data = pd.DataFrame(
        {"y": rng.poisson(np.exp(eta)), "a": a.astype(str), "b": b.astype(str),
         "row": np.arange(n).astype(str)}
    )  # fmt: skip
    start, fit = _starts("y ~ 1 + (1 | a) + (1 | b)", data, "poisson")
    assert fit.optinfo.converged
    for s, t in zip(start, fit.theta, strict=True):
        assert t / 1.6 < s < 1.6 * t
    # one row per level: that term's levels hold all of their rows' residuals
    start2, fit2 = _starts("y ~ 1 + (1 | row) + (1 | a)", data.iloc[:600], "poisson")
    assert start2[0] == 1.0 and fit2.optinfo.converged
    assert 0.1 <= start2[1] <= 10.0


def test_no_moment_start_for_a_vector_term():
    from multilevel.glmm.exact.start import moment_theta

    class _Blocks:
        q = [2]

    class _Problem:
        rb = _Blocks()

    assert moment_theta(_Problem(), np.zeros(1)) is None
