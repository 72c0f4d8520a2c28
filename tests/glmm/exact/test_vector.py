"""The groupwise Laplace path for one vector random-effects term (``vector_glmm``).

* its deviance equals the general PIRLS path's at arbitrary (θ, β);
* its gradient equals central differences of the deviance (binomial with a
  correlated intercept and slope, Poisson with three correlated effects and
  an offset);
* glmer with it reaches the two-stage search's optimum on contra_slope;
* the compiled kernel (Laplace, binomial-logit and Poisson-log) and the numpy
  path give the same deviance, gradient and modes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel.glmm.exact.vector as vector_mod
import multilevel.glmm.fit as glmm_mod
from multilevel.compiled import kernel
from multilevel.glmm.exact.vector import VectorGLMM, supported
from multilevel.glmm.families import binomial, poisson
from multilevel.glmm.quadrature import agq_deviance

from ...conftest import TESTDATA, reference, reference_data
from ..model_checks import (
    assert_gradient_matches_differences,
    assert_same_optimum,
    fit_both_routes,
    quiet_glmer,
    reference_fit,
)


def _poisson3():
    rng = np.random.default_rng(5)
    J, m = 40, 15
    g = np.repeat(np.arange(J), m)
    x1, x2 = rng.normal(size=J * m), rng.normal(size=J * m)
    off = rng.normal(scale=0.2, size=J * m)
    L = np.array([[0.6, 0, 0], [0.2, 0.3, 0], [-0.1, 0.1, 0.25]])
    b = rng.normal(size=(J, 3)) @ L.T
    eta = 0.4 + 0.3 * x1 - 0.2 * x2 + off + b[g, 0] + b[g, 1] * x1 + b[g, 2] * x2
    d = pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x1": x1, "x2": x2, "off": off})
    d["g"] = g.astype(str)
    return quiet_glmer("y ~ x1 + x2 + offset(off) + (1 + x1 + x2 | g)", d, family="poisson")


FITS = {"poisson3": _poisson3(), "contra_slope": reference_fit("contra_slope")}
COMPILED = kernel("_glmm_kernels", "vector_glmm") is not None


@pytest.fixture(params=["compiled", "numpy"])
def path(request, monkeypatch):
    """Both implementations of the Laplace deviance (the compiled one where built)."""
    if request.param == "numpy":
        monkeypatch.setattr(vector_mod, "KERNEL_DISABLED", True)
    elif not COMPILED:
        pytest.skip("the compiled kernel was not built")
    return request.param


@pytest.mark.parametrize("kind", sorted(FITS))
@pytest.mark.parametrize("nagq", [1, 3])
def test_deviance_equals_the_general_path(kind, nagq, path):
    fit = FITS[kind]
    prob = fit._prob
    nt = fit.theta.size
    phi = np.concatenate([fit.theta.values, fit.fixef.values]) + 0.02
    dev, _ = VectorGLMM(prob, nagq).deviance_grad(phi, grad=False)
    mode = prob.mode(phi[:nt], phi[nt:], None, joint=False)
    expected = mode.laplace if nagq == 1 else agq_deviance(prob, mode, nagq)
    assert dev == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("kind", sorted(FITS))
@pytest.mark.parametrize("nagq", [1, 3])
def test_gradient_equals_differences(kind, nagq, monkeypatch, path):
    """Quadrature included: the nodes move with the modes and with the
    Cholesky factor of the curvature (dL = LΦ(L⁻¹dH L⁻ᵀ))."""
    monkeypatch.setattr("multilevel.glmm.exact.vector.STEP_TOL", 1e-14)
    fit = FITS[kind]
    assert_gradient_matches_differences(VectorGLMM(fit._prob, nagq), fit, atol=1e-6)


@pytest.mark.skipif(not COMPILED, reason="the compiled kernel was not built")
@pytest.mark.parametrize("kind", sorted(FITS))
@pytest.mark.parametrize("shift", [0.0, 0.3, -0.4])
def test_compiled_equals_numpy(kind, shift, monkeypatch):
    """Same deviance, gradient and modes, from cold and from warm modes."""
    prob = FITS[kind]._prob
    fit = FITS[kind]
    phi = np.concatenate([fit.theta.values, fit.fixef.values]) + shift * np.linspace(
        1, -1, len(fit.theta) + prob.p
    )
    fast = VectorGLMM(prob)
    assert fast._kernel is not None
    monkeypatch.setattr(vector_mod, "KERNEL_DISABLED", True)
    slow = VectorGLMM(prob)
    assert slow._kernel is None
    for start in (None, 0.5):
        if start is not None:
            fast.u = slow.u = np.full_like(fast.u, start)
        d1, g1 = fast.deviance_grad(phi)
        d2, g2 = slow.deviance_grad(phi)
        assert d1 == pytest.approx(d2, abs=1e-8)
        np.testing.assert_allclose(g1, g2, rtol=1e-7, atol=1e-7 * np.max(np.abs(g2)))
        np.testing.assert_allclose(fast.u, slow.u, atol=1e-8)
        d3, g3 = fast.deviance_grad(phi, grad=False)
        assert g3 is None and d3 == pytest.approx(d1, abs=1e-9)


@pytest.mark.skipif(not COMPILED, reason="the compiled kernel was not built")
@pytest.mark.parametrize("kind", sorted(FITS))
def test_predicted_modes_along_a_search(kind, monkeypatch):
    """A sequence of nearby and distant points, as a search asks for them: the
    kernel starts each from the prediction of the last modes (none after the
    modes were set from outside, or after a value without gradient) and
    agrees with the numpy path, which starts from the last modes."""
    fit = FITS[kind]
    prob = fit._prob
    phi0 = np.concatenate([fit.theta.values, fit.fixef.values])
    rng = np.random.default_rng(3)
    steps = [1e-4, 1e-4, 0.05, 0.3, 1e-4, 0.0, 0.02]
    fast = VectorGLMM(prob)
    monkeypatch.setattr(vector_mod, "KERNEL_DISABLED", True)
    slow = VectorGLMM(prob)
    phi = phi0.copy()
    for k, h in enumerate(steps):
        phi = phi + h * rng.normal(size=phi.size)
        grad = k != 4
        d1, g1 = fast.deviance_grad(phi, grad)
        d2, g2 = slow.deviance_grad(phi, grad)
        assert d1 == pytest.approx(d2, abs=1e-8)
        if grad:
            np.testing.assert_allclose(g1, g2, rtol=1e-7, atol=1e-7 * np.max(np.abs(g2)))
        np.testing.assert_allclose(fast.u, slow.u, atol=1e-8)
        if k == 5:
            fast.u = slow.u = slow.u + 0.01


def test_which_models():
    assert supported(binomial(), 1, 2) and supported(poisson(), 1, 3)
    assert not supported(binomial(), 1, 1)  # scalar: scalar_glmm
    assert not supported(binomial(), 2, 2)
    # lme4's curvature with probit or cloglog: by Laplace, and only compiled
    assert supported(binomial("cloglog"), 1, 2) == (vector_mod._fisher_kernel(2) is not None)
    assert not supported(binomial("cloglog"), 1, 2, laplace=False)


def _assert_same_deviance_and_gradient(a, b, fit, seed: int) -> None:
    """Two implementations of one deviance: equal values (1e-8) and gradients
    at the optimum and at two random points around it."""
    phi0 = np.concatenate([np.asarray(fit.optinfo.internal_theta), fit._mode.beta])
    rng = np.random.default_rng(seed)
    for shift in (0.0, 0.1, 0.25):
        phi = phi0 + shift * rng.standard_normal(phi0.size)
        d1, g1 = a.deviance_grad(phi.copy())
        d2, g2 = b.deviance_grad(phi.copy())
        assert d1 == pytest.approx(d2, abs=1e-8)
        np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-6 * (1 + np.abs(g2).max()))


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_fisher_curvature_kernel_equals_the_general_path(link):
    """One vector term with lme4's curvature and a probit or cloglog link: the
    compiled vector kernel (modes by the observed curvature, the Laplace
    determinant and its derivative by Fisher's) gives the deviance and
    gradient of the several-terms route's numpy code."""
    from multilevel.glmm.exact.laplace import LaplaceGLMM

    ref = reference("contra_slope")
    fit = quiet_glmer(ref["formula"], reference_data(ref), family=f"binomial({link})")
    prob = fit._prob
    compiled = VectorGLMM(prob)
    if compiled._kernel is None:
        pytest.skip("the compiled kernel was not built")
    _assert_same_deviance_and_gradient(compiled, LaplaceGLMM(prob), fit, seed=3)


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_observed_curvature_kernel_equals_numpy(link, monkeypatch):
    """One vector term, probit or cloglog with the observed curvature
    (glmm's approximation): the compiled kernel (kinds 4, 5: O' from the
    rows in place of W') gives the deviance and gradient of the numpy code,
    and the fit the same optimum."""
    ref = reference("contra_slope")
    data = reference_data(ref)
    fam = f"binomial({link})"
    fit = quiet_glmer(ref["formula"], data, family=fam, hessian="observed")
    prob = fit._prob
    compiled = VectorGLMM(prob)
    if compiled._kernel is None:
        pytest.skip("the compiled kernel was not built")
    assert compiled._kind == vector_mod.KINDS[link] + 2
    monkeypatch.setattr(vector_mod, "KERNEL_DISABLED", True)
    numpy_route = VectorGLMM(prob)
    assert numpy_route._kernel is None
    _assert_same_deviance_and_gradient(compiled, numpy_route, fit, seed=5)
    slow = quiet_glmer(ref["formula"], data, family=fam, hessian="observed")
    assert fit.converged and slow.converged
    assert fit.deviance <= slow.deviance + 1e-8
    np.testing.assert_allclose(fit.fixef, slow.fixef, atol=1e-5 * slow.se.max())
    np.testing.assert_allclose(fit.theta, slow.theta, rtol=1e-5, atol=1e-7)


def test_fisher_curvature_fit_reaches_the_general_optimum(monkeypatch):
    ref = reference("contra_slope")
    data = reference_data(ref)
    fast = quiet_glmer(ref["formula"], data, family="binomial(probit)")
    if vector_mod._fisher_kernel(2) is None:
        pytest.skip("the compiled kernel was not built")
    assert fast.optinfo.optimizer.startswith("bfgs")
    monkeypatch.setattr(vector_mod, "KERNEL_DISABLED", True)  # the several-terms route
    slow = quiet_glmer(ref["formula"], data, family="binomial(probit)")
    assert fast.converged and slow.converged
    assert fast.deviance <= slow.deviance + 1e-8
    np.testing.assert_allclose(fast.fixef, slow.fixef, atol=1e-5 * slow.se.max())
    np.testing.assert_allclose(fast.se, slow.se, rtol=1e-4)
    np.testing.assert_allclose(fast.theta, slow.theta, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("nagq", [1, 5])
def test_fit_reaches_the_two_stage_optimum(nagq, monkeypatch):
    ref = reference("contra_slope")
    fast, slow = fit_both_routes(
        monkeypatch, ref["formula"], reference_data(ref), ref["family"], nagq
    )
    assert_same_optimum(fast, slow, theta_atol=1e-5)


def test_zero_diagonal_with_a_column_below_is_searched_past(monkeypatch):
    """Simulated Poisson data with a nearly zero random-intercept variance:
    the search reaches T₁₁ = 0 with T₂₁ > 0, a bound of the parametrisation
    only (negating T's first column gives the same model), where the deviance
    falls as T₁₁ grows from the negated column.  The fit continues from there
    and reaches the two-stage optimum (T₂₁ < 0), 0.0185 below the bound."""

    import multilevel.glmm.exact.search as vg

    d = pd.read_csv(TESTDATA / "poisson_slope_flip.csv", dtype={"g": str})
    f = "y ~ x + (1 + x | g)"
    fit = quiet_glmer(f, d, family="poisson")
    monkeypatch.setattr(glmm_mod, "EXACT_GRADIENT", False)
    slow = quiet_glmer(f, d, family="poisson")
    assert fit.optinfo.optimizer.startswith("bfgs")
    assert fit.deviance <= slow.deviance + 1e-8
    np.testing.assert_allclose(fit.theta, slow.theta, atol=1e-5)
    assert fit.theta.iloc[1] < 0
    # In the engine's centred basis this search never meets the bound; in the
    # raw columns it does: there it ran twice, to the bound, then on from the
    # negated column
    import multilevel.glmm.basis as basis_mod

    monkeypatch.setattr(basis_mod, "affine", lambda M, center, ones=None: np.eye(M.shape[1]))
    real_minimize = vg.Search.minimize
    ends = []

    def recorded(self, x0, H0, chord=False):
        rec, H = real_minimize(self, x0, H0, chord)
        ends.append((rec.theta[:3].copy(), rec.criterion))
        return rec, H

    monkeypatch.setattr(vg.Search, "minimize", recorded)
    monkeypatch.setattr(glmm_mod, "EXACT_GRADIENT", True)
    again = quiet_glmer(f, d, family="poisson")
    assert len(ends) == 2
    (t1, c1), (t2, c2) = ends
    assert t1[0] == 0.0 and t1[1] > 0 and t2[1] < 0
    assert c1 > c2 + 0.018
    assert again.deviance == pytest.approx(fit.deviance, abs=1e-9)


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_one_scalar_term_observed_curvature_takes_the_vector_kernel(link, monkeypatch):
    """One scalar term, probit or cloglog with the observed curvature: the
    vector route's compiled kernel (q = 1) in place of the groupwise numpy
    route, with the same optimum, estimates and modes."""
    import multilevel as ml

    d = ml.datasets.load("contraception")
    f = "use ~ age + age2 + urban + livch + (1 | district)"
    fam = f"binomial({link})"
    if not vector_mod.observed_link_kernel(binomial(link), "observed", True):
        pytest.skip("the compiled kernel was not built")
    routes = []
    real = glmm_mod._exact_route
    monkeypatch.setattr(glmm_mod, "_exact_route", lambda *a: routes.append(real(*a)) or routes[-1])
    fast = quiet_glmer(f, d, family=fam, hessian="observed")
    monkeypatch.setattr(vector_mod, "KERNEL_DISABLED", True)
    slow = quiet_glmer(f, d, family=fam, hessian="observed")
    assert routes == ["vector", "groupwise"]
    assert fast.converged and slow.converged
    assert fast.deviance == pytest.approx(slow.deviance, abs=1e-8)
    np.testing.assert_allclose(fast.fixef, slow.fixef, atol=1e-7 * slow.se.max())
    np.testing.assert_allclose(fast.se, slow.se, rtol=1e-4)
    np.testing.assert_allclose(fast.theta, slow.theta, atol=1e-8)
    np.testing.assert_allclose(fast.ranef["district"], slow.ranef["district"], atol=1e-8)
