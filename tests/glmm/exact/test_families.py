"""The exact-gradient routes for families with a parameter of their own
(negative binomial, Gamma, inverse Gaussian, beta): the deviance of the
scalar, vector and several-term models equals PIRLS's (observed curvature)
at arbitrary (θ, ψ, β), and their gradient, ψ included, equals central
differences — Laplace and (one term) quadrature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multilevel.glmm.exact.laplace import LaplaceGLMM
from multilevel.glmm.exact.scalar import ScalarGLMM
from multilevel.glmm.exact.vector import VectorGLMM
from multilevel.glmm.quadrature import agq_deviance

from ..model_checks import FAMILY_MODELS, family_frame, fd_gradient, quiet_glmer


def _data(seed: int = 9) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(25), 12)
    x = rng.normal(size=g.size)
    b0, b1 = rng.normal(0, 0.4, 25), rng.normal(0, 0.2, 25)
    mu = np.exp(0.8 + 0.3 * x + b0[g] + b1[g] * x)
    return family_frame(rng, mu, x, g, 7, nb=3.0, shape=5.0, wald=6.0, phi=6.0)


DATA = _data()
FAMILIES = FAMILY_MODELS


def _point(fit, shift: float = 0.02) -> np.ndarray:
    """(θ̃, ψ, β̃) near the optimum, in the engine's basis."""
    return np.concatenate([fit.optinfo.internal_theta, fit._mode.beta]) + shift


@pytest.mark.parametrize(("y", "family"), FAMILIES)
@pytest.mark.parametrize("term", ["(1 | g)", "(1 + x | g)"])
@pytest.mark.parametrize("nagq", [1, 3])
def test_deviance_equals_pirls_and_gradient_equals_differences(y, family, term, nagq, monkeypatch):
    fit = quiet_glmer(f"{y} ~ x + {term}", DATA, family=family)
    prob = fit._prob
    vector = term != "(1 | g)"
    monkeypatch.setattr(f"multilevel.glmm.exact.{'vector' if vector else 'scalar'}.STEP_TOL", 1e-14)
    model = VectorGLMM(prob, nagq) if vector else ScalarGLMM.from_problem(prob, nagq)
    phi = _point(fit)
    nt = prob.nre + prob.family.nfree
    dev, g = model.deviance_grad(phi)
    mode = prob.mode(phi[:nt], phi[nt:], None, joint=False)
    expected = mode.laplace if nagq == 1 else agq_deviance(prob, mode, nagq)
    assert dev == pytest.approx(expected, abs=1e-7)
    np.testing.assert_allclose(g, fd_gradient(model, phi), rtol=1e-5, atol=1e-5 * np.max(np.abs(g)))


@pytest.mark.parametrize(("y", "family"), FAMILIES)
def test_crossed_terms_laplace_gradient_equals_differences(y, family, monkeypatch):
    monkeypatch.setattr("multilevel.glmm.pirls.STEP_TOL", 1e-14)
    fit = quiet_glmer(f"{y} ~ x + (1 | g) + (1 | h)", DATA, family=family)
    prob = fit._prob
    model = LaplaceGLMM(prob)
    model._kernel = None  # the numpy path (the compiled one is binomial-logit and Poisson-log)
    phi = _point(fit)
    nt = prob.nre + prob.family.nfree
    dev, g = model.deviance_grad(phi)
    assert dev == pytest.approx(prob.mode(phi[:nt], phi[nt:], None, False).laplace, abs=1e-7)
    np.testing.assert_allclose(g, fd_gradient(model, phi), rtol=1e-5, atol=1e-5 * np.max(np.abs(g)))
