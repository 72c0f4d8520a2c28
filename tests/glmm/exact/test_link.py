"""The exact Laplace/AGQ route for one scalar term with a probit or cloglog
link (``link_glmm``).

* the per-row derivatives stay finite in both tails and equal numerical
  derivatives of the log-likelihood and of the Fisher weights;
* the deviance equals the general PIRLS path's at the two-stage optimum;
* the gradient equals central differences of the deviance;
* glmer reaches the two-stage optimum (cbpp with trials, Contraception).
"""

from __future__ import annotations

import numpy as np
import pytest

from multilevel.glmm.exact.link import LinkGLMM, supported
from multilevel.glmm.families import binomial, poisson
from multilevel.glmm.families.discrete import LINK_ROWS as LINKS
from multilevel.glmm.quadrature import agq_deviance

from ...conftest import reference, reference_data
from ..model_checks import (
    assert_gradient_matches_differences,
    assert_same_optimum,
    fit_both_routes,
    quiet_glmer,
)

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
CONTRA = "use ~ age + urban + livch + (1 | district)"


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("y", [0.0, 1.0, 0.3])
def test_row_derivatives_are_finite_and_right(link, y):
    fam = binomial(link)
    eta = np.concatenate([np.linspace(-6, 3, 61), [-40.0, -25.0, 25.0, 40.0]])
    wt = np.full(eta.size, 2.0)
    yy = np.full(eta.size, y)
    lp, obs, W, W1 = LINKS[link](eta, yy, wt)
    assert np.all(np.isfinite(np.concatenate([lp, obs, W, W1])))
    core = np.abs(eta) < 3
    e, yc, wc, h = eta[core], yy[core], wt[core], 1e-5

    def ll(x):
        return fam.loglik_kernel(yc, x, wc)

    np.testing.assert_allclose(lp[core], (ll(e + h) - ll(e - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        obs[core], -(ll(e + h) - 2 * ll(e) + ll(e - h)) / h**2, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(W[core], fam.working_weights(e, wc), rtol=1e-8)
    dW = (fam.working_weights(e + h, wc) - fam.working_weights(e - h, wc)) / (2 * h)
    np.testing.assert_allclose(W1[core], dW, rtol=1e-5, atol=1e-8)


def test_which_models():
    assert supported(binomial("probit"), 1, 1) and supported(binomial("cloglog"), 1, 1)
    assert not supported(binomial("logit"), 1, 1)  # canonical: scalar_glmm
    assert not supported(poisson(), 1, 1)
    assert not supported(binomial("probit"), 2, 1) and not supported(binomial("probit"), 1, 2)


def _data(name: str):
    return reference_data(reference(name))


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("nagq", [1, 7])
def test_deviance_and_gradient(link, nagq, monkeypatch):
    fit = quiet_glmer(CBPP, _data("cbpp_laplace"), family=f"binomial({link})")
    prob = fit._prob
    phi = np.concatenate([fit.theta.to_numpy(), fit.fixef.to_numpy()])
    dev, _ = LinkGLMM(prob, nagq).deviance_grad(phi, grad=False)
    mode = prob.mode(phi[:1], phi[1:], None, joint=False)
    expected = mode.laplace if nagq == 1 else agq_deviance(prob, mode, nagq)
    assert dev == pytest.approx(expected, abs=1e-8)
    monkeypatch.setattr("multilevel.glmm.exact.link.STEP_TOL", 1e-14)
    assert_gradient_matches_differences(LinkGLMM(prob, nagq), fit, shift=0.02)


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize(("case", "nagq"), [("cbpp", 1), ("contra", 1), ("cbpp", 9)])
def test_fit_reaches_the_two_stage_optimum(link, case, nagq, monkeypatch):
    formula, data = (
        (CBPP, _data("cbpp_laplace"))
        if case == "cbpp"
        else (
            CONTRA,
            _data("contra_laplace"),
        )
    )
    fast, slow = fit_both_routes(monkeypatch, formula, data, f"binomial({link})", nagq)
    assert_same_optimum(fast, slow, theta_atol=1e-5)


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("shift", [0.0, 2.5, -2.5])
def test_compiled_laplace_equals_numpy(link, shift, monkeypatch):
    """The compiled Laplace deviance and gradient equal the numpy path's, also
    with the linear predictor pushed into either tail."""
    fit = quiet_glmer(CONTRA, _data("contra_laplace"), family=f"binomial({link})")
    prob = fit._prob
    phi = np.concatenate([fit.theta.to_numpy(), fit.fixef.to_numpy()])
    phi[0] *= 1.5
    phi[1] += shift  # the intercept
    compiled = LinkGLMM(prob)
    if compiled._kernel is None:
        pytest.skip("the compiled kernels were not built")
    d1, g1 = compiled.deviance_grad(phi)
    monkeypatch.setattr("multilevel.glmm.exact.link.KERNEL_DISABLED", True)
    plain = LinkGLMM(prob)
    assert plain._kernel is None
    d2, g2 = plain.deviance_grad(phi)
    assert d1 == pytest.approx(d2, rel=1e-11)
    np.testing.assert_allclose(g1, g2, rtol=1e-7, atol=1e-7 * np.max(np.abs(g2)))
    np.testing.assert_allclose(compiled.u, plain.u, atol=1e-8)
