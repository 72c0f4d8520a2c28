"""Monte Carlo integration (multilevel.glmm.montecarlo): reproducibility, calibrated
standard errors, and Monte Carlo maximum likelihood (``method="mc"``) on
cbpp, where AGQ with 25 nodes (equal to lme4's to 1e-8) is the exact answer."""

from __future__ import annotations

import warnings

import numpy as np

from multilevel import glmer
from multilevel.glmm.results import loglik_mc

from ..conftest import reference, reference_data

_fits: dict = {}


def cbpp_fit(**kw):
    key = tuple(sorted(kw.items()))
    if key not in _fits:
        ref = reference("cbpp_agq25")
        _fits[key] = glmer(ref["formula"], reference_data(ref), "binomial", **kw)
    return _fits[key]


def test_reproducible_and_seeded():
    fit = cbpp_fit(nAGQ=25)
    a = loglik_mc(fit, 500, seed=1)
    b = loglik_mc(fit, 500, seed=1)
    c = loglik_mc(fit, 500, seed=2)
    assert a.loglik == b.loglik and a.se == b.se
    assert a.loglik != c.loglik
    assert abs(a.loglik - c.loglik) < 5 * a.se


def test_standard_errors_are_calibrated():
    fit = cbpp_fit(nAGQ=25)  # exact to about 1e-8 here
    z = np.array(
        [(e.loglik - fit.loglik) / e.se for e in (loglik_mc(fit, 300, seed=s) for s in range(30))]
    )
    assert abs(z.mean()) < 0.6
    assert 0.5 < z.std() < 1.6
    e = loglik_mc(fit, 300, seed=0)
    assert e.ess > 250  # t proposal at the Laplace curvature: near-ideal weights


def test_monte_carlo_maximum_likelihood():
    agq = cbpp_fit(nAGQ=25)
    mc = cbpp_fit(method="mc", mc_samples=500, seed=1)
    assert mc.method == "mc" and mc.converged
    assert mc.loglik_se > 0 and mc.mc.samples == 500
    assert abs(mc.loglik - agq.loglik) < 4 * mc.loglik_se
    np.testing.assert_allclose(mc.fixef, agq.fixef, atol=0.01 * agq.se.min())
    np.testing.assert_allclose(mc.theta, agq.theta, rtol=1e-2)
    np.testing.assert_allclose(mc.se, agq.se, rtol=1e-2)
    text = str(mc.summary())
    assert "Monte Carlo" in text and "standard error of logLik" in text
    again = cbpp_fit(method="mc", mc_samples=500, seed=1)
    assert again is mc or again.loglik == mc.loglik


def test_same_seed_same_fit():
    ref = reference("cbpp_agq25")
    data = reference_data(ref)
    a = glmer(ref["formula"], data, method="mc", mc_samples=300, seed=4)
    b = glmer(ref["formula"], data, method="mc", mc_samples=300, seed=4)
    assert a.loglik == b.loglik
    np.testing.assert_array_equal(a.fixef, b.fixef)


def test_laplace_is_checked_by_monte_carlo():
    lap = cbpp_fit()
    est = loglik_mc(lap, 4000, seed=9)
    # cbpp: Laplace is accurate to 0.04 log-likelihood units (AGQ differs by that)
    assert abs(est.loglik - lap.loglik) < 0.04 + 4 * est.se


def test_several_grouping_factors_use_one_joint_proposal():
    ref = reference("grouse_poisson")
    data = reference_data(ref)
    fit = glmer("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", data, "poisson")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = loglik_mc(fit, 2000, seed=1)
    assert np.isfinite(est.loglik) and est.se > 0
    assert est.ess < 2000  # reported: 181 dimensions degrade the weights
    assert abs(est.loglik - fit.loglik) < 1.0
