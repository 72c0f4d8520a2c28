"""Fast paths of glmer: they must give the numbers of the plain formulas.

* ``Family.irls_terms`` (one transcendental per row for canonical links)
  equals ``linkinv``, ``mu_eta`` and ``working_weights``;
* ``cumulant`` reproduces ``loglik_kernel`` = w(yη − b(η)) and the logit
  softplus agrees with ``logaddexp`` over the whole range of η;
* the quadrature's per-level sufficient statistics (canonical families) give
  the per-row evaluation's log-likelihoods (binomial, Poisson, vector effect);
* ``fd_hessian`` (d² + d + 1 evaluations) is exact for quadratics;
* ``optimize_stage2`` when BOBYQA is cut short: Newton steps finish at the
  same optimum (cbpp, R reference), and a start where Newton fails falls back
  to BOBYQA.
"""

from __future__ import annotations

import numpy as np
import pytest

from multilevel import glmer
from multilevel.glmm.families import Binomial, Poisson, binomial, poisson
from multilevel.glmm.families import softplus as _softplus
from multilevel.glmm.quadrature import gauss_hermite_grid, level_logliks
from multilevel.optimize import stage2
from multilevel.optimize.hessian import fd_hessian, hessian_stencil
from multilevel.optimize.stage2 import optimize_stage2

from ..conftest import reference, reference_data

ETA = np.concatenate([np.linspace(-40, 40, 2001), [-700.0, -300.0, 300.0, 0.0]])


@pytest.mark.parametrize(
    "fam", [binomial("logit"), binomial("probit"), binomial("cloglog"), poisson()]
)
def test_irls_terms_equal_the_link_formulas(fam):
    eta = ETA if fam.name == "binomial" else np.linspace(-30, 30, 2001)
    wt = np.linspace(0.5, 3.0, eta.size)
    with np.errstate(over="ignore"):
        mu, d, w = fam.irls_terms(eta, wt)
        mu0 = fam.linkinv(eta)
        d0 = fam.mu_eta(eta)
        w0 = fam.working_weights(eta, wt)
    np.testing.assert_allclose(mu, mu0, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(d, d0, rtol=1e-13)
    inner = np.abs(eta) < 30  # outside, 1 − μ rounds and both use the same rounded V
    np.testing.assert_allclose(w[inner], w0[inner], rtol=1e-12)


@pytest.mark.parametrize("fam", [binomial(), poisson()])
def test_cumulant_gives_the_kernel(fam):
    rng = np.random.default_rng(3)
    eta = rng.normal(scale=3, size=500)
    y = rng.integers(0, 2, size=500) if fam.name == "binomial" else rng.poisson(2, size=500)
    y = y.astype(float)
    wt = rng.uniform(0.5, 2, size=500)
    np.testing.assert_allclose(
        wt * (y * eta - fam.cumulant(eta)), fam.loglik_kernel(y, eta, wt), rtol=1e-14, atol=1e-14
    )


def test_softplus_matches_logaddexp():
    x = np.concatenate([np.linspace(-800, 800, 100_001), [0.0, -1e-300, 1e-10]])
    np.testing.assert_allclose(_softplus(x), np.logaddexp(0.0, x), rtol=1e-15, atol=3e-16)


class _PerRow(Binomial):
    """The binomial evaluated row by row in the quadrature (no sufficient statistics)."""

    canonical = property(lambda self: False)


class _PerRowPoisson(Poisson):
    canonical = property(lambda self: False)


@pytest.mark.parametrize(
    "case,formula,nagq",
    [
        ("cbpp_laplace", None, 9),
        ("grouse_poisson", "TICKS ~ YEAR + cHEIGHT + (1 | BROOD)", 9),
        ("contra_slope", None, 5),
    ],
)
def test_quadrature_sufficient_statistics(case, formula, nagq):
    ref = reference(case)
    fit = glmer(formula or ref["formula"], reference_data(ref), ref["family"], nAGQ=1)
    prob, mode = fit._prob, fit._mode
    nodes, logw = gauss_hermite_grid(nagq, prob.rb.q[0])
    fast = level_logliks(prob, mode, nodes, logw)
    fam = prob.family
    prob.family = _PerRow(fam.link) if fam.name == "binomial" else _PerRowPoisson()
    try:
        slow = level_logliks(prob, mode, nodes, logw)
    finally:
        prob.family = fam
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-10)


def test_fd_hessian_is_exact_for_quadratics():
    rng = np.random.default_rng(7)
    A = rng.normal(size=(5, 5))
    H = A @ A.T + np.eye(5)
    b = rng.normal(size=5)
    x = rng.normal(size=5)
    calls = []

    def f(v):
        calls.append(v)
        return 0.5 * v @ H @ v + b @ v

    Hh, g = fd_hessian(f, x, np.array([1e-3, 2e-3, 1e-3, 5e-3, 1e-2]))
    np.testing.assert_allclose(Hh, H, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g, H @ x + b, rtol=1e-8, atol=1e-8)
    assert len(calls) == 5 * 5 + 5 + 1
    assert len(hessian_stencil(x)) == 5 * 5 + 5


def test_newton_after_truncated_bobyqa_reaches_the_optimum(monkeypatch):
    ref = reference("cbpp_laplace")
    data = reference_data(ref)
    full = glmer(ref["formula"], data, ref["family"])
    monkeypatch.setattr(stage2, "BOBYQA_BUDGET", 1)  # Newton from the stage-1 estimate
    cut = glmer(ref["formula"], data, ref["family"])
    assert cut.converged
    assert cut.loglik == pytest.approx(full.loglik, abs=1e-8)
    assert cut.loglik == pytest.approx(ref["loglik"], abs=1e-3)
    np.testing.assert_allclose(cut.fixef, full.fixef, rtol=1e-5)
    np.testing.assert_allclose(cut.se, full.se, rtol=1e-4)


def test_failed_newton_falls_back_to_bobyqa(monkeypatch):
    # (x² − 1)² + 3y²: at x = 0.2 the Hessian is not positive definite
    monkeypatch.setattr(stage2, "BOBYQA_BUDGET", 1)

    def f(v):
        return (v[0] ** 2 - 1.0) ** 2 + 3.0 * v[1] ** 2

    rec, H = optimize_stage2(f, np.array([0.2, 0.3]), np.full(2, -np.inf), 0, lambda v: v)
    assert rec.converged
    assert abs(abs(rec.theta[0]) - 1.0) < 1e-5 and abs(rec.theta[1]) < 1e-5
    np.testing.assert_allclose(H, [[8.0, 0.0], [0.0, 6.0]], atol=1e-3)
