"""The groupwise path for one scalar random effect (``scalar_glmm``).

* its deviance equals the general PIRLS path's (Laplace and quadrature) at
  arbitrary (θ, β), binomial and Poisson, intercept and slope-only terms,
  with offsets and binomial trials;
* its gradient equals central differences of the deviance;
* a glmer fit by it reaches the general two-stage search's optimum (no
  higher deviance, the same estimates and standard errors).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multilevel import glmer
from multilevel.glmm.exact.scalar import ScalarGLMM, supported
from multilevel.glmm.quadrature import agq_deviance

from ...conftest import reference, reference_data
from ..model_checks import (
    assert_compiled_equals_numpy,
    assert_same_optimum,
    fd_gradient,
    fit_both_routes,
)


def _problem(kind: str, seed: int = 3):
    rng = np.random.default_rng(seed)
    J, m = 30, 12
    g = np.repeat(np.arange(J), m)
    x = rng.normal(size=J * m)
    off = rng.normal(scale=0.3, size=J * m)
    u = rng.normal(size=J)
    d = pd.DataFrame({"x": x, "g": g.astype(str), "off": off})
    if kind == "poisson":
        d["y"] = rng.poisson(np.exp(0.3 + 0.5 * x + off + 0.7 * u[g]))
        f, fam = "y ~ x + offset(off) + (1 | g)", "poisson"
    elif kind == "trials":
        n = rng.integers(1, 8, size=J * m)
        d["k"] = rng.binomial(n, 1 / (1 + np.exp(-(0.2 - 0.8 * x + u[g]))))
        d["nk"] = n - d["k"]
        f, fam = "cbind(k, nk) ~ x + (1 | g)", "binomial"
    else:  # random slope only, 0/1 response
        d["y"] = rng.binomial(1, 1 / (1 + np.exp(-(-0.3 + 0.6 * x + 0.9 * x * u[g]))))
        f, fam = "y ~ x + (0 + x | g)", "binomial"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = glmer(f, d, family=fam)
    return fit


def _model(fit, nagq: int) -> ScalarGLMM:
    return ScalarGLMM.from_problem(fit._prob, nagq)


FITS = {k: _problem(k) for k in ("poisson", "trials", "slope")}


@pytest.fixture(params=["compiled", "numpy"])
def path(request, monkeypatch):
    """Both implementations of the deviance (the compiled one where built)."""
    if request.param == "numpy":
        monkeypatch.setattr("multilevel.glmm.exact.scalar.KERNEL_DISABLED", True)
    return request.param


@pytest.mark.parametrize("kind", sorted(FITS))
@pytest.mark.parametrize("nagq", [1, 7])
def test_deviance_equals_the_general_path(kind, nagq, path):
    fit = FITS[kind]
    prob = fit._prob
    phi = np.concatenate([fit.theta, fit.fixef.values]) + np.linspace(0.1, -0.1, prob.p + 1)
    dev, _ = _model(fit, nagq).deviance_grad(phi, grad=False)
    mode = prob.mode(phi[:1], phi[1:], None, joint=False)
    ref = mode.laplace if nagq == 1 else agq_deviance(prob, mode, nagq)
    assert dev == pytest.approx(ref, abs=1e-8)


@pytest.fixture
def tight_modes(monkeypatch):
    # the Laplace value moves with û at first order (through log h): differences
    # of values need the modes to rounding, not to the default step tolerance
    monkeypatch.setattr("multilevel.glmm.exact.scalar.STEP_TOL", 1e-14)


@pytest.mark.parametrize("kind", sorted(FITS))
@pytest.mark.parametrize("nagq", [1, 5])
def test_gradient_equals_differences(kind, nagq, tight_modes, path):
    fit = FITS[kind]
    model = _model(fit, nagq)
    phi = np.concatenate([fit.theta, fit.fixef.values]) + 0.05
    _, g = model.deviance_grad(phi)
    fd = fd_gradient(model, phi)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * np.max(np.abs(g)))


@settings(max_examples=15, deadline=None)
@given(
    theta=st.floats(-2.0, 2.5),
    shift=st.lists(st.floats(-0.5, 0.5), min_size=2, max_size=2),
    nagq=st.sampled_from([1, 3]),
)
def test_gradient_property_over_parameters(theta, shift, nagq):
    """Anywhere in (θ, β), negative θ included (the deviance is even in θ)."""
    fit = FITS["poisson"]
    model = _model(fit, nagq)
    phi = np.concatenate([[theta], fit.fixef.values + np.array(shift)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("multilevel.glmm.exact.scalar.STEP_TOL", 1e-14)
        _, g = model.deviance_grad(phi)
        fd = fd_gradient(model, phi)
        mirrored = model.deviance_grad(phi * np.r_[-1.0, np.ones(phi.size - 1)], False)[0]
    assert mirrored == pytest.approx(model.deviance_grad(phi, False)[0], abs=1e-8)
    np.testing.assert_allclose(g, fd, atol=1e-5 * (1 + np.max(np.abs(g))))


def test_only_one_scalar_term_with_a_canonical_link():
    from multilevel.glmm.families import binomial, poisson

    assert supported(binomial(), 1, 1) and supported(poisson(), 1, 1)
    assert not supported(binomial("probit"), 1, 1)
    assert not supported(binomial(), 2, 1) and not supported(binomial(), 1, 2)


@pytest.mark.parametrize("case", ["cbpp_laplace", "cbpp_agq25", "contra_laplace", "contra_agq"])
def test_fit_reaches_the_two_stage_optimum(case, monkeypatch):
    ref = reference(case)
    fast, slow = fit_both_routes(
        monkeypatch, ref["formula"], reference_data(ref), ref["family"], ref["nAGQ"]
    )
    assert_same_optimum(fast, slow)


@pytest.mark.parametrize("kind", sorted(FITS))
@pytest.mark.parametrize("nagq", [1, 9])
def test_compiled_kernel_equals_numpy(kind, nagq, monkeypatch):
    """The C kernel (when built) and the numpy path: same modes, deviance and
    gradient to rounding."""
    fit = FITS[kind]
    compiled = _model(fit, nagq)
    if compiled._kernel is None:
        pytest.skip("the compiled kernel was not built")
    monkeypatch.setattr("multilevel.glmm.exact.scalar.KERNEL_DISABLED", True)
    plain = _model(fit, nagq)
    assert plain._kernel is None
    phi = np.concatenate([fit.theta, fit.fixef.values]) + np.linspace(-0.2, 0.2, fit._prob.p + 1)
    assert_compiled_equals_numpy(compiled, plain, phi, shift=0.0)


@pytest.mark.parametrize("kind", sorted(FITS))
def test_scalar_curvature_equals_the_blocked_factor(kind):
    """The start Hessian's β-curvature for one scalar term (diagonal M) equals
    the one the blocked PIRLS factor gives (rows taken as unsorted there)."""
    from multilevel.glmm.exact.search import conditional_curvature

    fit = FITS[kind]
    prob = fit._prob
    theta = np.array([0.8 * float(np.asarray(fit.theta)[0]) + 0.1])
    beta = fit.fixef.values * 0.9
    u = np.linspace(-1.0, 1.0, prob.rb.Q)
    fast = conditional_curvature(prob, theta, beta, u)
    starts, prob.rb._starts0 = prob.rb._starts0, None
    try:
        general = conditional_curvature(prob, theta, beta, u)
    finally:
        prob.rb._starts0 = starts
    assert starts is not None and fast is not None
    np.testing.assert_allclose(fast, general, rtol=1e-11, atol=1e-11 * np.abs(general).max())


@pytest.mark.parametrize("kind", ["poisson", "trials"])
@pytest.mark.parametrize("nagq", [1, 5])
def test_whitened_model_equals_the_mapped_one(kind, nagq, path):
    """The model the search evaluates in x = (θ, δ) (design X R⁻¹, offset
    o + Xβ₀) gives the natural model's deviance at β = β₀ + R⁻¹δ and its
    gradient times diag(I, R⁻¹), compiled and in numpy."""
    fit = FITS[kind]
    prob = fit._prob
    rng = np.random.default_rng(2)
    beta0 = fit.fixef.values * 0.8
    Rinv = np.triu(rng.normal(scale=0.3, size=(prob.p, prob.p))) + np.eye(prob.p)
    x = np.concatenate([[0.7], rng.normal(scale=0.2, size=prob.p)])
    natural = ScalarGLMM.from_problem(prob, nagq)
    whitened = ScalarGLMM.from_problem(prob, nagq, beta0, Rinv)
    d1, g1 = natural.deviance_grad(np.concatenate([x[:1], beta0 + Rinv @ x[1:]]))
    d2, g2 = whitened.deviance_grad(x)
    assert d2 == pytest.approx(d1, rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(g2, np.concatenate([g1[:1], g1[1:] @ Rinv]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(whitened.u, natural.u, atol=1e-9)


@pytest.mark.parametrize("kind", ["poisson", "trials"])
def test_search_in_whitened_coordinates_reaches_the_same_optimum(kind):
    """The search with the model in x (no map per evaluation) ends where the
    search mapping each point ends, to rounding, with the same evaluations."""
    from multilevel.glmm.exact.search import run_search

    prob = FITS[kind]._prob
    beta0 = prob.initial_beta()
    rec1, H1, *_ = run_search(prob, beta0, 1.0, lambda n: ScalarGLMM.from_problem(prob, n))
    rec2, H2, *_ = run_search(
        prob, beta0, 1.0, lambda n, b, R: ScalarGLMM.from_problem(prob, n, b, R), whitened=True
    )
    assert rec2.evals == rec1.evals
    np.testing.assert_allclose(rec2.theta, rec1.theta, rtol=1e-8, atol=1e-9)
    assert rec2.criterion == pytest.approx(rec1.criterion, abs=1e-9)
    np.testing.assert_allclose(H2, H1, rtol=1e-6, atol=1e-6 * np.abs(H1).max())
