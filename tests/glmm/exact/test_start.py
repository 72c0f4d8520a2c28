"""θ starts of the exact-gradient GLMM searches (``glmm.exact.start``):
working-scale moments of the GLM fit, per term (scalar and vector)."""

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


def test_vector_term_starts_near_its_covariance(monkeypatch):
    """A random intercept and slope (Poisson): the start's standard deviations
    within a factor of 1.6 of the fit's and its correlation's sign the fit's;
    from it the search takes fewer evaluations than from T = I, to the same
    optimum."""
    rng = np.random.default_rng(8)
    J, m = 80, 25
    g = np.repeat(np.arange(J), m)
    x = rng.normal(size=J * m)
    L = np.linalg.cholesky(np.array([[0.36, 0.09], [0.09, 0.16]]))
    b = rng.normal(size=(J, 2)) @ L.T
    eta = 0.5 + 0.3 * x + b[g, 0] + b[g, 1] * x
    data = pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x, "g": g.astype(str)})
    start, fit = _starts("y ~ x + (x | g)", data, "poisson")
    T0 = np.array([[start[0], 0.0], [start[1], start[2]]])
    S0 = T0 @ T0.T
    th = np.asarray(fit.optinfo.internal_theta)
    T = np.array([[th[0], 0.0], [th[1], th[2]]])
    S = T @ T.T
    sd0, sd = np.sqrt(np.diag(S0)), np.sqrt(np.diag(S))
    assert np.all(sd / 1.6 < sd0) and np.all(sd0 < 1.6 * sd)
    assert np.sign(S0[0, 1]) == np.sign(S[0, 1])
    monkeypatch.setattr(fit_mod, "moment_theta", lambda prob, beta: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_identity = ml.glmer("y ~ x + (x | g)", data, "poisson")
    assert fit.optinfo.evals < from_identity.optinfo.evals
    assert fit.deviance <= from_identity.deviance + 1e-8


def test_vector_term_with_few_rows_per_level_starts_at_identity():
    from multilevel.glmm.exact.start import _vector_moment

    rng = np.random.default_rng(2)
    Z = np.column_stack([np.ones(6), rng.normal(size=6)])
    codes = np.arange(6) // 2  # two rows per level: no level has more than q
    w, r = np.ones(6), rng.normal(size=6)
    assert _vector_moment(Z, codes, 3, w, r, 6) is None
