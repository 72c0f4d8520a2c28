"""The exact Hessian of one scalar term's Laplace deviance
(:mod:`multilevel.glmm.exact.scalar_hessian`) and the Newton search it drives.

* the Hessian equals central differences of the exact gradient (binomial
  with trials, Poisson with an offset, a slope-only term), anywhere in (θ, β);
* the compiled kernel equals the numpy reference;
* a fit by Newton steps with it reaches the BFGS search's optimum, with the
  same estimates and standard errors, in fewer evaluations.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multilevel.glmm.exact.scalar import ScalarGLMM
from multilevel.glmm.exact.scalar_hessian import laplace_hessian

from ...conftest import reference, reference_data
from ..model_checks import quiet_glmer
from .test_scalar import FITS


def _hessian_by_differences(model: ScalarGLMM, phi: np.ndarray, h: float = 1e-5) -> np.ndarray:
    out = np.empty((phi.size, phi.size))
    for a in range(phi.size):
        e = np.zeros_like(phi)
        e[a] = h
        out[a] = (model.deviance_grad(phi + e)[1] - model.deviance_grad(phi - e)[1]) / (2 * h)
    return out


@pytest.fixture
def tight_modes(monkeypatch):
    monkeypatch.setattr("multilevel.glmm.exact.scalar.STEP_TOL", 1e-14)


@pytest.mark.parametrize("kind", sorted(FITS))
def test_hessian_equals_differences_of_the_gradient(kind, tight_modes):
    fit = FITS[kind]
    model = ScalarGLMM.from_problem(fit._prob)
    phi = np.concatenate([fit.theta, fit.fixef.values]) + 0.05
    dev, g, H = laplace_hessian(model, phi)
    d0, g0 = model.deviance_grad(phi)
    assert dev == pytest.approx(d0, abs=1e-9)
    np.testing.assert_allclose(g, g0, rtol=1e-9, atol=1e-9)
    fd = _hessian_by_differences(model, phi)
    np.testing.assert_allclose(H, fd, rtol=1e-5, atol=1e-5 * np.abs(H).max())
    np.testing.assert_array_equal(H, H.T)


@settings(max_examples=15, deadline=None)
@given(
    theta=st.floats(-2.0, 2.5),
    shift=st.lists(st.floats(-0.5, 0.5), min_size=2, max_size=2),
    kind=st.sampled_from(sorted(FITS)),
)
def test_hessian_property_over_parameters(theta, shift, kind):
    """Anywhere in (θ, β), negative θ and θ = 0 included."""
    fit = FITS[kind]
    model = ScalarGLMM.from_problem(fit._prob)
    phi = np.concatenate([[theta], fit.fixef.values + np.array(shift)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("multilevel.glmm.exact.scalar.STEP_TOL", 1e-14)
        H = laplace_hessian(model, phi)[2]
        fd = _hessian_by_differences(model, phi)
    np.testing.assert_allclose(H, fd, atol=1e-5 * (1 + np.abs(H).max()))


@pytest.mark.parametrize("kind", sorted(FITS))
def test_compiled_hessian_equals_numpy(kind):
    fit = FITS[kind]
    model = ScalarGLMM.from_problem(fit._prob)
    if model._hess_kernel is None:
        pytest.skip("the compiled kernel was not built")
    phi = np.concatenate([fit.theta, fit.fixef.values]) + np.linspace(-0.2, 0.2, fit._prob.p + 1)
    for _ in range(2):  # cold, then warm-started modes
        u0 = model.u.copy()
        d1, g1, H1 = model.deviance_grad_hess(phi)
        u1, model.u = model.u.copy(), u0
        d2, g2, H2 = laplace_hessian(model, phi)
        assert d1 == pytest.approx(d2, rel=1e-12, abs=1e-8)
        np.testing.assert_allclose(g1, g2, rtol=1e-8, atol=1e-8 * (1 + np.abs(g2).max()))
        np.testing.assert_allclose(H1, H2, rtol=1e-8, atol=1e-9 * np.abs(H2).max())
        np.testing.assert_allclose(u1, model.u, atol=1e-9)
        phi = phi - 0.03


def test_hessian_models_are_laplace_with_a_canonical_link():
    fit = FITS["poisson"]
    assert ScalarGLMM.from_problem(fit._prob).exact_hessian
    assert not ScalarGLMM.from_problem(fit._prob, 5).exact_hessian


@pytest.mark.parametrize("case", ["cbpp_laplace", "contra_laplace"])
def test_newton_reaches_the_bfgs_optimum(case, monkeypatch):
    ref = reference(case)
    data = reference_data(ref)
    newton = quiet_glmer(ref["formula"], data, family=ref["family"])
    monkeypatch.setattr("multilevel.glmm.exact.scalar.HESSIAN_DISABLED", True)
    bfgs = quiet_glmer(ref["formula"], data, family=ref["family"])
    assert newton.optinfo.optimizer == "newton (exact Hessian)"
    assert bfgs.optinfo.optimizer == "bfgs (exact gradient)"
    assert newton.converged and bfgs.converged
    assert newton.deviance <= bfgs.deviance + 1e-9
    assert newton.optinfo.evals < bfgs.optinfo.evals
    np.testing.assert_allclose(newton.fixef, bfgs.fixef, atol=1e-5 * bfgs.se.max())
    np.testing.assert_allclose(newton.theta, bfgs.theta, rtol=1e-5)
    # BFGS's standard errors come from forward differences of the gradient
    np.testing.assert_allclose(newton.se, bfgs.se, rtol=1e-3)


@pytest.mark.parametrize("theta0", [0.01, 2.0, 20.0])
def test_far_starts_reach_the_optimum(theta0, monkeypatch):
    """From a θ far from the optimum the Hessian is not positive definite
    and BFGS goes on from where the Newton steps stopped: the same optimum,
    by the exact-gradient route (not the two-stage fallback)."""
    ref = reference("cbpp_laplace")
    data = reference_data(ref)
    best = quiet_glmer(ref["formula"], data, family=ref["family"])
    monkeypatch.setattr("multilevel.glmm.fit.moment_theta", lambda prob, beta: np.array([theta0]))
    fit = quiet_glmer(ref["formula"], data, family=ref["family"])
    assert "exact" in fit.optinfo.optimizer and fit.converged
    assert fit.deviance == pytest.approx(best.deviance, abs=1e-9)
    np.testing.assert_allclose(fit.se, best.se, rtol=1e-4)
