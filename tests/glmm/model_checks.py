"""Checks shared by the tests of the GLMM deviance models (anything with
``deviance_grad(phi, grad) -> (deviance, gradient | None)`` and modes ``u``)."""

from __future__ import annotations

import numpy as np
import pytest


def fd_gradient(model, phi: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central differences of the deviance."""
    out = np.empty_like(phi)
    for a in range(phi.size):
        e = np.zeros_like(phi)
        e[a] = h
        out[a] = (
            model.deviance_grad(phi + e, False)[0] - model.deviance_grad(phi - e, False)[0]
        ) / (2 * h)
    return out


def assert_compiled_equals_numpy(compiled, plain, phi: np.ndarray, shift: float = 0.02) -> None:
    """Same deviance, gradient and modes from both implementations, cold and
    then warm started (at a second point)."""
    for _ in range(2):
        d1, g1 = compiled.deviance_grad(phi)
        d2, g2 = plain.deviance_grad(phi)
        assert d1 == pytest.approx(d2, rel=1e-12, abs=1e-8)
        np.testing.assert_allclose(g1, g2, rtol=1e-7, atol=1e-8 * (1 + np.abs(g2).max()))
        np.testing.assert_allclose(compiled.u, plain.u, atol=1e-9)
        assert compiled.deviance_grad(phi, grad=False)[0] == pytest.approx(d1, abs=1e-9)
        phi = phi - shift


def quiet_glmer(*args, **kw):
    """glmer with its warnings silenced (the fits here are compared, not read)."""
    import warnings

    from multilevel import glmer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return glmer(*args, **kw)


def fit_both_routes(monkeypatch, formula: str, data, family: str, nAGQ: int = 1):
    """The exact-gradient fit and lme4's two-stage fit of one model."""
    import multilevel.glmm.fit as glmm_mod

    fast = quiet_glmer(formula, data, family=family, nAGQ=nAGQ)
    monkeypatch.setattr(glmm_mod, "EXACT_GRADIENT", False)
    slow = quiet_glmer(formula, data, family=family, nAGQ=nAGQ)
    monkeypatch.setattr(glmm_mod, "EXACT_GRADIENT", True)
    return fast, slow


def assert_same_optimum(fast, slow, theta_atol: float = 1e-6) -> None:
    """The exact-gradient fit reached the two-stage optimum: converged, no
    higher deviance, a vanishing gradient (in units of each parameter's
    scale), the same estimates, standard errors and random effects."""
    assert "exact" in fast.optinfo.optimizer  # BFGS, or Newton with the exact Hessian
    assert slow.optinfo.optimizer == "bobyqa+newton"
    assert fast.converged and slow.converged
    assert fast.deviance <= slow.deviance + 1e-8
    nt = fast.theta.size
    g = fast.optinfo.gradient
    assert np.max(np.abs(g[:nt])) < 1e-4
    assert np.max(np.abs(g[nt:] * fast.se.to_numpy())) < 1e-4
    # each coefficient within 1e-4 of its own standard error
    assert np.all(np.abs(fast.fixef - slow.fixef) <= 1e-4 * slow.se)
    np.testing.assert_allclose(fast.se, slow.se, rtol=1e-3)
    np.testing.assert_allclose(fast.theta, slow.theta, rtol=1e-4, atol=theta_atol)
    for grp in slow.ranef:
        np.testing.assert_allclose(fast.ranef[grp], slow.ranef[grp], atol=1e-4)


def reference_fit(case: str):
    """glmer on a reference case's formula, family and data."""
    from ..conftest import reference, reference_data

    ref = reference(case)
    return quiet_glmer(ref["formula"], reference_data(ref), family=ref["family"])


def assert_gradient_matches_differences(model, fit, shift: float = 0.03, atol: float = 1e-5):
    """The model's gradient near a fit's optimum against central differences
    (the caller pins the modes to rounding: the Laplace value moves with them
    at first order)."""
    phi = np.concatenate([fit.theta.to_numpy(), fit.fixef.to_numpy()]) + shift
    _, g = model.deviance_grad(phi)
    np.testing.assert_allclose(g, fd_gradient(model, phi), rtol=1e-5, atol=atol * np.max(np.abs(g)))


# the families with a parameter of their own, as their tests fit them
FAMILY_MODELS = [
    ("nb", "negative_binomial"),
    ("gam", "Gamma(log)"),
    ("gam", "Gamma"),
    ("ig", "inverse.gaussian(log)"),
    ("prop", "beta"),
]


def family_frame(rng, mu, x, g, crossed: int, nb: float, shape: float, wald: float, phi: float):
    """Responses of each family at means μ (NB θ ``nb``, Gamma ``shape``,
    inverse Gaussian shape ``wald``, beta precision ``phi`` of μ/(1 + μ)), the
    covariate, the grouping factor g and a factor h crossed with it."""
    import pandas as pd

    return pd.DataFrame(
        {
            "nb": rng.poisson(rng.gamma(nb, mu / nb)),
            "gam": rng.gamma(shape, mu / shape),
            "ig": rng.wald(mu, wald),
            "prop": rng.beta(phi * mu / (1 + mu), phi / (1 + mu)),
            "x": x,
            "g": g.astype(str),
            "h": (np.arange(g.size) % crossed).astype(str),
        }
    )
