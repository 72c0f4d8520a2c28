"""Adaptive Gauss–Hermite quadrature (multilevel.glmm.quadrature).

* the rule integrates Gaussian moments exactly;
* one node is exactly the Laplace approximation (scalar and vector effects);
* a scalar random effect: AGQ against per-level numerical integration;
* a vector random effect (contra_slope's intercept + urban slope by
  district; lme4 has no AGQ for this, so no R reference): the AGQ fit's
  log-likelihood agrees with an importance-sampling estimate at the same
  parameters within 3 Monte Carlo standard errors, while the Laplace value
  there is more than 5 standard errors away; and the quadrature has
  converged in nAGQ.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from multilevel import glmer
from multilevel.glmm.montecarlo import Draws, mc_loglik
from multilevel.glmm.quadrature import agq_deviance, gauss_hermite_grid, level_logliks
from multilevel.glmm.results import loglik_mc

from ..conftest import reference, reference_data

_fits: dict = {}


def fit_of(case: str, nagq: int = 1, formula: str | None = None):
    key = (case, nagq, formula)
    if key not in _fits:
        ref = reference(case)
        data = reference_data(ref)
        _fits[key] = glmer(formula or ref["formula"], data, ref["family"], nAGQ=nagq)
    return _fits[key]


@pytest.mark.parametrize("q", [1, 2, 3])
def test_rule_integrates_gaussian_moments(q):
    nodes, logw = gauss_hermite_grid(5, q)
    w = np.exp(logw)
    assert nodes.shape == (5**q, q)
    assert w.sum() == pytest.approx((2 * np.pi) ** (q / 2), rel=1e-13)
    norm = (2 * np.pi) ** (q / 2)
    assert (w * nodes[:, 0] ** 4).sum() / norm == pytest.approx(3.0, rel=1e-12)
    if q > 1:
        assert (w * nodes[:, 0] ** 2 * nodes[:, 1] ** 2).sum() / norm == pytest.approx(1.0)


@pytest.mark.parametrize(
    "case", ["cbpp_laplace", "contra_slope"]
)  # scalar and vector-valued random effects
def test_one_node_is_laplace(case):
    fit = fit_of(case)
    prob = fit._prob
    m = prob.mode(fit._theta * 0.8, fit._mode.beta - 0.03)
    assert agq_deviance(prob, m, 1) == pytest.approx(m.laplace, abs=1e-9)


def test_scalar_agq_equals_numerical_integration():
    fit = fit_of("cbpp_agq25", 25)
    prob, m = fit._prob, fit._mode
    rb, r, fam = prob.rb, prob.resp, prob.family
    t = fit._theta[0]
    eta_fixed = m.eta - rb.zb(m.u, m.factor.T)
    agq = level_logliks(prob, m, *gauss_hermite_grid(25, 1))
    for lev in range(rb.nlevels[0]):  # an oracle: one quad() per herd
        rows = rb.codes[0] == lev

        def integrand(u, rows=rows):
            eta = eta_fixed[rows] + t * u
            ll = (fam.loglik_kernel(r.y[rows], eta, r.weights[rows]) + r.const[rows]).sum()
            return np.exp(ll - 0.5 * u * u) / np.sqrt(2 * np.pi)

        val, _ = integrate.quad(integrand, -12, 12, epsabs=0, epsrel=1e-12, limit=200)
        assert agq[lev] == pytest.approx(np.log(val), abs=1e-9)


def test_agq_on_a_vector_random_effect_agrees_with_monte_carlo():
    agq = fit_of("contra_slope", 5)
    lap = fit_of("contra_slope")
    assert agq.method == "agq" and agq.converged
    assert "nAGQ = 5" in str(agq.summary())
    est = loglik_mc(agq, samples=4000, seed=11)
    assert abs(agq.loglik - est.loglik) < 3 * est.se
    # the check has power: Laplace at the same (θ, β) is far outside the MC error
    laplace_there = -0.5 * agq._mode.laplace
    assert abs(laplace_there - est.loglik) > 5 * est.se
    # quadrature converged in the number of nodes (at fixed parameters)
    prob, m = agq._prob, agq._mode
    ll = {k: level_logliks(prob, m, *gauss_hermite_grid(k, 2)).sum() for k in (5, 9, 15)}
    assert abs(ll[5] - ll[15]) < 2e-3 and abs(ll[9] - ll[15]) < 1e-4
    # AGQ beats Laplace by 0.3 log-likelihood units here, and its estimates move
    assert agq.loglik - lap.loglik == pytest.approx(0.297, abs=0.01)
    assert agq.loglik == pytest.approx(-1180.0083, abs=1e-3)


def test_monte_carlo_draws_are_common_random_numbers():
    fit = fit_of("cbpp_laplace")
    prob = fit._prob
    draws = Draws(prob, 400, seed=3)
    m1 = prob.mode(fit._theta, fit._mode.beta)
    m2 = prob.mode(fit._theta + 1e-4, fit._mode.beta)
    a, b = mc_loglik(prob, m1, draws), mc_loglik(prob, m2, draws)
    # the same draws: a tiny parameter change moves the estimate smoothly
    assert abs(a.loglik - b.loglik) < 1e-3
    assert a.loglik == mc_loglik(prob, m1, draws).loglik


@pytest.mark.slow
def test_vector_agq_high_order_fit():
    f9 = fit_of("contra_slope", 9)
    f5 = fit_of("contra_slope", 5)
    assert f9.loglik == pytest.approx(f5.loglik, abs=2e-3)
    np.testing.assert_allclose(f9.fixef, f5.fixef, atol=0.02 * f5.se.min())
    est = loglik_mc(f9, samples=20000, seed=5)
    assert abs(f9.loglik - est.loglik) < 3 * est.se
