"""GLMM inference with lme4's semantics: profile intervals, the parametric
bootstrap, refit, simulate and ranova, on cbpp (lme4 1.1-31 with
``tolPwrss = 1e-12``, ``tests/reference/inference/cbpp_laplace.json``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, special

import multilevel as ml

from .rtables import reference, table

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def cbpp():
    return ml.datasets.load("cbpp")


@pytest.fixture(scope="module")
def g1(cbpp):
    return ml.glmer(CBPP, cbpp, "binomial")


def test_profile_intervals_match_lme4(g1):
    ours = ml.confint(g1, method="profile")
    theirs = table("cbpp_laplace", "confint_profile").rename(
        index={".sig01": "sd_(Intercept)|herd"}
    )
    assert list(ours.index) == list(theirs.index)
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), atol=2e-3)
    # the deviance at our optimum is at least as low as lme4's at its own
    assert g1.loglik >= reference("cbpp_laplace")["loglik"] - 1e-6


def test_profile_trace_passes_through_the_estimate(g1):
    prof = ml.profile(g1, which="sd_(Intercept)|herd")
    tr = prof.traces["sd_(Intercept)|herd"]
    at = tr.loc[tr["zeta"] == 0.0]
    assert at.iloc[0, 0] == pytest.approx(g1.theta.iloc[0])
    assert (np.diff(tr["zeta"]) > 0).all()  # ζ increases with the parameter


def test_anova_of_nested_glmms_matches_lme4(cbpp, g1):
    g0 = ml.glmer("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", cbpp, "binomial")
    out = ml.anova(g0, g1)
    ref = table("cbpp_laplace", "anova_g0_g1")
    assert out["Chisq"].iloc[1] == pytest.approx(ref["Chisq"].iloc[1], abs=2e-3)
    assert out["Df"].iloc[1] == 3


def test_refit_to_the_same_response_reproduces_the_fit(g1):
    again = g1.refit(g1.y)
    np.testing.assert_allclose(again.fixef, g1.fixef, rtol=1e-6)
    assert again.loglik == pytest.approx(g1.loglik, abs=1e-8)
    with pytest.raises(ml.ModelError, match="newresp needs 56 values"):
        g1.refit(g1.y[:5])


def test_simulated_moments_match_the_model(g1):
    """E yᵢ = E_b g⁻¹(ηᵢ + b) and Var yᵢ = E μ(1 − μ)/nᵢ + Var μ, b ~ N(0, σ²),
    by Gauss–Hermite quadrature; 4,000 simulations agree within 5 SE."""
    nsim = 4000
    sims = g1.simulate(nsim, seed=11).to_numpy()
    eta = g1.design.X @ g1.fixef.to_numpy()
    sd = g1.theta.iloc[0]
    x, w = np.polynomial.hermite_e.hermegauss(40)
    w = w / w.sum()
    mu = special.expit(eta[:, None] + sd * x[None, :])
    n = g1.design.response.values.sum(axis=1)
    mean = mu @ w
    var = (mu * (1 - mu) / n[:, None]) @ w + (mu**2) @ w - mean**2
    se_mean = np.sqrt(var / nsim)
    assert np.all(np.abs(sims.mean(axis=1) - mean) < 5 * se_mean)
    rel = sims.var(axis=1) / var
    assert np.all(np.abs(rel - 1) < 5 * np.sqrt(2 / nsim) * 2)  # heavy tails: twice the normal SE


def test_bootstrap_is_reproducible_and_independent_of_workers(g1):
    a = ml.bootstrap(g1, nsim=12, seed=5, progress=False)
    b = ml.bootstrap(g1, nsim=12, seed=5, progress=False, workers=2)
    np.testing.assert_array_equal(a.samples.to_numpy(), b.samples.to_numpy())
    assert list(a.samples.columns) == ["sd_(Intercept)|herd", "(Intercept)", "period2", "period3",
                                       "period4"]  # fmt: skip
    c = ml.bootstrap(g1, nsim=12, seed=6, progress=False)
    assert not np.array_equal(a.samples.to_numpy(), c.samples.to_numpy())


def test_bootstrap_intervals_cover_the_profile_ones_roughly(g1):
    ci = ml.confint(g1, method="boot", nsim=150, seed=1, progress=False)
    prof = table("cbpp_laplace", "confint_profile").to_numpy()
    # percentile intervals of 150 replicates: same scale as the profile intervals
    width_b = ci.iloc[1:, 1].to_numpy() - ci.iloc[1:, 0].to_numpy()
    width_p = prof[1:, 1] - prof[1:, 0]
    assert np.all((width_b > 0.6 * width_p) & (width_b < 1.6 * width_p))


def test_ranova_of_a_glmm_equals_refitting_the_reduced_model():
    c = ml.datasets.load("contraception")
    full = ml.glmer("use ~ age + urban + (urban | district)", c, "binomial")
    reduced = ml.glmer("use ~ age + urban + (1 | district)", c, "binomial")
    out = ml.ranova(full)
    assert list(out.index) == ["<none>", "urbanY in (1 + urban | district)"]
    assert out["logLik"].iloc[1] == pytest.approx(reduced.loglik, abs=1e-5)
    assert out["Df"].iloc[1] == 2
    assert out["LRT"].iloc[1] == pytest.approx(2 * (full.loglik - reduced.loglik), abs=2e-5)


def test_dropping_the_only_term_leaves_the_glm(cbpp, g1):
    """The reduced model of ranova on one scalar term is the binomial GLM;
    its log-likelihood by direct maximisation agrees."""
    out = ml.ranova(g1)
    X = g1.design.X
    k, n = g1.design.response.values[:, 0], g1.design.response.values.sum(axis=1)
    const = special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)

    def negll(b):
        eta = X @ b
        return -np.sum(k * eta - n * np.logaddexp(0, eta) + const)

    res = optimize.minimize(negll, np.zeros(X.shape[1]), method="BFGS", options={"gtol": 1e-9})
    assert out["logLik"].iloc[1] == pytest.approx(-res.fun, abs=1e-6)
    assert out["npar"].iloc[1] == 4


def test_monte_carlo_fit_has_no_deviance_function(cbpp):
    f = ml.glmer(CBPP, cbpp, "binomial", method="mc", mc_samples=200)
    with pytest.raises(ml.ModelError, match="Monte Carlo"):
        ml.confint(f, method="profile")
