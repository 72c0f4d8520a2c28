"""The exact Laplace gradient for several terms (``laplace_gradient``).

* it equals central differences of the Laplace deviance (Poisson with three
  crossed and nested terms, binomial with crossed terms and a slope-only
  term, vector terms first, after the first, or both), the PIRLS modes
  pinned to rounding;
* glmer with it reaches the two-stage search's optimum on grouseticks (no
  higher deviance, the same estimates and standard errors), and with lme4's
  curvature (probit, cloglog) for several terms or one vector term.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel.glmm.fit as glmm_mod
from multilevel.glmm.exact.laplace import LaplaceGLMM, supported
from multilevel.glmm.families import binomial, poisson

from ...conftest import TESTDATA, reference, reference_data
from ..model_checks import (
    assert_compiled_equals_numpy,
    assert_gradient_matches_differences,
    assert_same_optimum,
    fit_both_routes,
    quiet_glmer,
    reference_fit,
)


def _crossed_binomial():
    rng = np.random.default_rng(11)
    n = 600
    a = rng.integers(0, 25, n)
    b = rng.integers(0, 12, n)
    x = rng.normal(size=n)
    ua, ub, sb = rng.normal(size=25), rng.normal(size=12), rng.normal(size=12)
    eta = -0.2 + 0.5 * x + 0.8 * ua[a] + 0.6 * ub[b] + 0.4 * x * sb[b]
    d = pd.DataFrame(
        {"y": rng.binomial(1, 1 / (1 + np.exp(-eta))), "x": x, "a": a.astype(str), "b": b}
    )
    d["b"] = d["b"].astype(str)
    return quiet_glmer("y ~ x + (1 | a) + (1 | b) + (0 + x | b)", d, family="binomial")


def _contraception(formula: str):
    import multilevel as ml

    d = ml.datasets.load("contraception")
    d["grp"] = np.random.default_rng(1).integers(0, 12, len(d)).astype(str)
    return quiet_glmer(formula, d, family="binomial"), d


VECTOR = {
    "vector_first": "use ~ age + urban + (urban | district) + (1 | livch)",
    "vector_rest": "use ~ age + (1 | district) + (urban | livch)",
    "vector_both": "use ~ age + urban + (urban | district) + (age | grp)",
}


def _probit_terms():
    import multilevel as ml

    d = ml.datasets.load("contraception")
    return quiet_glmer("use ~ age + urban + (1 | district) + (1 | livch)", d,
                       family="binomial(probit)")  # fmt: skip


def _observed_link(link: str):
    """Crossed scalar terms, probit or cloglog with the observed curvature
    (glmm's approximation): the compiled kernel's kinds 4 and 5."""
    import multilevel as ml

    d = ml.datasets.load("contraception")
    return quiet_glmer("use ~ age + urban + (1 | district) + (1 | livch)", d,
                       family=f"binomial({link})", hessian="observed")  # fmt: skip


def _probit_vector():
    import multilevel as ml

    d = ml.datasets.load("contraception")
    return quiet_glmer("use ~ age + urban + (urban | district)", d, family="binomial(probit)")


FITS = {
    "grouse": reference_fit("grouse_poisson"),
    "probit_fisher": _probit_terms(),
    "probit_vector": _probit_vector(),
    "crossed_binomial": _crossed_binomial(),
    "probit_observed": _observed_link("probit"),
    "cloglog_observed": _observed_link("cloglog"),
    **{k: _contraception(f)[0] for k, f in VECTOR.items()},
}


@pytest.mark.parametrize("kind", sorted(FITS))
def test_gradient_equals_differences(kind, monkeypatch):
    monkeypatch.setattr("multilevel.glmm.pirls.STEP_TOL", 1e-13)
    assert_gradient_matches_differences(LaplaceGLMM(FITS[kind]._prob), FITS[kind])


def test_zero_variance_has_zero_derivative():
    fit = FITS["grouse"]
    model = LaplaceGLMM(fit._prob)
    phi = np.concatenate([fit.theta.values, fit.fixef.values])
    phi[1] = 0.0
    _, g = model.deviance_grad(phi)
    assert g[1] == 0.0
    assert np.all(np.isfinite(g))


def test_which_models():
    assert supported(poisson(), [1, 1, 1], [403, 118, 63])
    assert not supported(poisson(), [1], [403])  # one term: the groupwise path
    assert supported(binomial("probit"), [1, 1], [50, 10])  # lme4's (Fisher) curvature
    assert supported(binomial(), [2, 1], [50, 10], nrows=500)
    assert not supported(binomial(), [2, 2], [50, 1000], nrows=5000)  # a rest vector per row
    assert not supported(binomial(), [1, 1], [50, 5000])
    # one vector term: here only with lme4's curvature (probit, cloglog); a
    # canonical link or one scalar term has a route of its own
    assert supported(binomial("probit"), [2], [60], nrows=1934)
    assert supported(binomial("cloglog"), [2], [60], nrows=1934)
    assert not supported(binomial(), [2], [60], nrows=1934)
    assert not supported(binomial("probit"), [1], [60], nrows=1934)
    assert not supported(binomial("probit"), [2], [60], "observed", nrows=1934)


def test_fit_reaches_the_two_stage_optimum(monkeypatch):
    ref = reference("grouse_poisson")
    fast, slow = fit_both_routes(monkeypatch, ref["formula"], reference_data(ref), ref["family"])
    assert_same_optimum(fast, slow)


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_fisher_curvature_several_terms_reach_the_two_stage_optimum(link, monkeypatch):
    """lme4's curvature with a non-canonical link: the log-determinant's weights
    are Fisher's, the modes move with the observed curvature."""
    import multilevel as ml

    d = ml.datasets.load("contraception")
    formula = "use ~ age + urban + (1 | district) + (1 | livch)"
    fast, slow = fit_both_routes(monkeypatch, formula, d, f"binomial({link})")
    assert_same_optimum(fast, slow, theta_atol=1e-4)


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_fisher_curvature_one_vector_term_reaches_the_two_stage_optimum(link, monkeypatch):
    """One vector term with lme4's curvature (no rest block: M is block
    diagonal) on the exact-gradient search, not lme4's two stages."""
    import multilevel as ml

    d = ml.datasets.load("contraception")
    formula = "use ~ age + urban + (urban | district)"
    fast, slow = fit_both_routes(monkeypatch, formula, d, f"binomial({link})")
    assert_same_optimum(fast, slow, theta_atol=1e-4)


@pytest.mark.parametrize("kind", sorted(VECTOR))
def test_vector_terms_beside_others_reach_the_two_stage_optimum(kind, monkeypatch):
    _, d = _contraception(VECTOR[kind])
    fast, slow = fit_both_routes(monkeypatch, VECTOR[kind], d, "binomial")
    assert_same_optimum(fast, slow, theta_atol=1e-4)


def test_variance_stuck_at_zero_falls_back_to_the_two_stage_search(monkeypatch):
    """θ = 0 is a stationary point of the deviance (it is even in θ), so a
    search that reaches it stops there even where it is a saddle.  Started at
    θ = (0, 0) on crossed binary data whose optimum has θ_g ≈ 0.27, the exact
    search stops at the saddle, 0.9 above the optimum; glmer sees that the
    deviance curves down in θ_g there, hands the fit to lme4's two-stage
    route and reports its optimum.  (A search started on the bound now starts
    a little inside; here it is made to start on it, to reach the saddle.)"""

    import multilevel.glmm.exact.laplace as lg
    import multilevel.optimize.theta as theta_mod

    monkeypatch.setattr(theta_mod, "START_INSIDE", 0.0)

    d = pd.read_csv(TESTDATA / "crossed_binary_saddle.csv", dtype={"g": str, "h": str})
    f = "y ~ x + (1 | g) + (1 | h)"
    monkeypatch.setattr(glmm_mod, "EXACT_GRADIENT", False)
    slow = quiet_glmer(f, d, family="binomial")
    monkeypatch.setattr(glmm_mod, "EXACT_GRADIENT", True)
    real = lg.optimize_laplace

    def from_zero(prob, beta0, theta0, lower_theta=None):
        return real(prob, beta0, np.zeros_like(theta0), lower_theta)

    monkeypatch.setattr(lg, "optimize_laplace", from_zero)
    with np.errstate(over="ignore", invalid="ignore"):
        rec, H, *_ = from_zero(slow._prob, slow._prob.initial_beta(), np.ones(2))
    assert np.all(rec.theta[:2] == 0.0) and H[0, 0] < 0
    assert rec.criterion > slow.deviance + 0.5
    fit = quiet_glmer(f, d, family="binomial")
    assert fit.converged
    assert fit.optinfo.optimizer == slow.optinfo.optimizer == "bobyqa+newton"
    assert fit.deviance == pytest.approx(slow.deviance, abs=1e-8)
    assert fit.theta.iloc[0] == pytest.approx(0.2703, abs=1e-3)


# scalar terms only: vector terms have no compiled kernel here
@pytest.mark.parametrize("kind", sorted(set(FITS) - set(VECTOR) - {"probit_vector"}))
def test_compiled_kernel_equals_numpy(kind, monkeypatch):
    """The C kernel (when built) and the numpy path: same modes, deviance and
    gradient to rounding, cold and warm started."""
    import multilevel.glmm.exact.laplace as lg

    prob = FITS[kind]._prob
    compiled = LaplaceGLMM(prob)
    if compiled._kernel is None:
        pytest.skip("the compiled kernel was not built")
    monkeypatch.setattr(lg, "KERNEL_DISABLED", True)
    plain = LaplaceGLMM(prob)
    assert plain._kernel is None
    fit = FITS[kind]
    phi = np.concatenate([fit.theta.values, fit.fixef.values]) + 0.05
    assert_compiled_equals_numpy(compiled, plain, phi)
