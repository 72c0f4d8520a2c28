"""Numerical robustness (issue 7): extreme scales, large covariate offsets,
tiny and dominant groups, near-singular covariances — each checked against a
brute-force dense likelihood on small data; persistence; memory bounds."""

from __future__ import annotations

import json
import pickle
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

import multilevel as ml


def dense_ml_loglik(fit) -> float:
    """−½[log|V| + rᵀV⁻¹r + n log 2π] with V = σ²(ZΛΛᵀZᵀ + I) built densely:
    an independent check of the engine on small data."""
    d = fit.design
    n = d.nobs
    Z = _dense_z(d)
    Lam = _block_lambda(d, fit._fac.T)
    V = fit.sigma**2 * (Z @ Lam @ Lam.T @ Z.T + np.eye(n))
    resid = d.y - d.X @ fit.fixef.to_numpy()
    sign, logdet = np.linalg.slogdet(V)
    return -0.5 * (logdet + resid @ np.linalg.solve(V, resid) + n * np.log(2 * np.pi))


def brute_force_ml_optimum(fit) -> float:
    """Maximise the dense likelihood over (θ, log σ, β) from our estimate."""
    d = fit.design
    theta0 = fit.optinfo.theta
    x0 = np.concatenate([theta0, [np.log(fit.sigma)], fit.fixef.to_numpy()])
    k = theta0.size

    def negll(x):
        fit_theta = x[:k]
        T = fit.criterion.templates(fit_theta)
        sigma = np.exp(x[k])
        beta = x[k + 1 :]
        n = d.nobs
        Z = _dense_z(d)
        Lam = _block_lambda(d, T)
        V = sigma**2 * (Z @ Lam @ Lam.T @ Z.T + np.eye(n))
        r = d.y - d.X @ beta
        sign, logdet = np.linalg.slogdet(V)
        return 0.5 * (logdet + r @ np.linalg.solve(V, r) + n * np.log(2 * np.pi))

    res = minimize(
        negll, x0, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000}
    )
    return -res.fun


def _dense_z(d):
    n = d.nobs
    return np.hstack(
        [
            (np.eye(r.nlevels)[r.codes][:, :, None] * r.Z[:, None, :]).reshape(n, -1)
            for r in d.random
        ]
    )


def _block_lambda(d, T):
    from scipy.linalg import block_diag

    return block_diag(*[np.kron(np.eye(r.nlevels), t) for r, t in zip(d.random, T, strict=True)])


def sim(n_groups=15, per=6, seed=0, corr=0.3, scale=1.0, offset=0.0, sizes=None):
    rng = np.random.default_rng(seed)
    sizes = np.full(n_groups, per) if sizes is None else np.asarray(sizes)
    g = np.repeat(np.arange(len(sizes)), sizes)
    x = rng.normal(size=g.size) + offset
    cov = np.array([[1.0, corr * 0.5], [corr * 0.5, 0.25]])
    b = rng.multivariate_normal([0, 0], cov, size=len(sizes))
    y = 2 + 0.7 * (x - offset) + b[g, 0] + b[g, 1] * (x - offset) + rng.normal(size=g.size)
    return pd.DataFrame({"y": scale * y, "x": x, "g": g})


def quiet_fit(formula, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ml.lmer(formula, data, **kw)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_extreme_response_scales(scale):
    """y on scales 1e-6 and 1e6: estimates scale, the criterion shifts by n log c."""
    df = sim()
    a = quiet_fit("y ~ x + (x | g)", df, REML=False)
    b = quiet_fit("y ~ x + (x | g)", df.assign(y=df.y * scale), REML=False)
    np.testing.assert_allclose(b.fixef, scale * a.fixef, rtol=1e-5)
    assert b.sigma == pytest.approx(scale * a.sigma, rel=1e-5)
    assert b.loglik == pytest.approx(a.loglik - len(df) * np.log(scale), abs=1e-5)
    assert b.converged


def test_engine_equals_dense_likelihood():
    """Our log-likelihood at our estimates equals the dense formula, and no
    direction improves the dense likelihood (an independent optimiser)."""
    fit = quiet_fit("y ~ x + (x | g)", sim(n_groups=8, per=5), REML=False)
    assert dense_ml_loglik(fit) == pytest.approx(fit.loglik, abs=1e-8)
    assert brute_force_ml_optimum(fit) <= fit.loglik + 1e-6


def test_large_covariate_offsets():
    """Raw age and age² (offset 50): same ML fit as the centred covariate."""
    df = sim(offset=50.0)
    raw = quiet_fit("y ~ x + I(x^2) + (1 | g)", df, REML=False)
    cen = quiet_fit("y ~ xc + I(xc^2) + (1 | g)", df.assign(xc=df.x - 50), REML=False)
    assert raw.loglik == pytest.approx(cen.loglik, abs=1e-6)
    np.testing.assert_allclose(raw.fitted, cen.fitted, atol=1e-6)
    assert raw.converged


def test_groups_of_size_one_and_a_dominant_group():
    sizes = [1] * 20 + [2] * 10 + [300]
    fit = quiet_fit("y ~ x + (1 | g)", sim(sizes=sizes), REML=False)
    assert fit.converged
    assert dense_ml_loglik(fit) == pytest.approx(fit.loglik, abs=1e-7)
    assert np.isfinite(fit.ranef["g"].to_numpy()).all()


def test_near_singular_covariance_is_reported_or_fitted():
    df = sim(n_groups=30, per=8, corr=0.9999, seed=4)
    fit = quiet_fit("y ~ x + (x | g)", df, REML=False)
    assert fit.converged
    corr = fit.varcorr.query("var2 == var2")["sdcor"].iloc[0]
    assert fit.singular or abs(corr) < 1
    assert dense_ml_loglik(fit) == pytest.approx(fit.loglik, abs=1e-7)


def test_pickle_round_trip_reproduces_predictions():
    df = sim()
    fit = quiet_fit("y ~ x + (x | g)", df)
    back = pickle.loads(pickle.dumps(fit))
    np.testing.assert_array_equal(back.predict(df), fit.predict(df))
    np.testing.assert_array_equal(back.fixef, fit.fixef)


def test_json_round_trip_of_results():
    fit = quiet_fit("y ~ x + (x | g)", sim())
    data = json.loads(fit.to_json())
    assert data == json.loads(json.dumps(fit.to_dict()))
    assert data["fixef"]["x"] == fit.fixef["x"]
    assert data["loglik"] == fit.loglik


def test_memory_of_predictions_with_100k_levels():
    """Budget: predict/residuals on n rows allocate O(n·(p+q)) floats, never
    n x n or n x levels: here under 64 MB for 200,000 rows and 100,000 levels."""
    rng = np.random.default_rng(1)
    n, L = 200_000, 100_000
    g = rng.integers(0, L, n)
    df = pd.DataFrame(
        {"y": rng.normal(size=n) + rng.normal(size=L)[g], "x": rng.normal(size=n), "g": g}
    )
    fit = quiet_fit("y ~ x + (1 | g)", df)
    tracemalloc.start()
    fit.predict(df)
    fit.residuals()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20


def test_memory_of_a_two_million_row_fit():
    """Budget: a fit allocates the data's columns a few times over plus the
    cross-products; 2,000,000 rows, random intercept and slope in 20,000
    groups stay under 600 MB of Python-level allocations."""
    rng = np.random.default_rng(2)
    n, L = 2_000_000, 20_000
    g = rng.integers(0, L, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=L)[g] + 0.3 * rng.normal(size=L)[g] * x + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "g": g})
    tracemalloc.start()
    fit = quiet_fit("y ~ x + (x | g)", df)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert fit.converged
    assert peak < 600 * 2**20


def test_hundreds_of_thousands_of_levels():
    rng = np.random.default_rng(3)
    L = 300_000
    g = np.repeat(np.arange(L), 3)
    y = rng.normal(size=L)[g] * 0.8 + rng.normal(size=g.size)
    fit = quiet_fit("y ~ 1 + (1 | g)", pd.DataFrame({"y": y, "g": g}))
    assert fit.converged
    assert fit.varcorr["sdcor"].iloc[0] == pytest.approx(0.8, rel=0.05)
