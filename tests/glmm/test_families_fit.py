"""Fitting the families with estimated parameters (multilevel.glmm.fit):
the exact-gradient route against the two-stage one, lme4's Fisher curvature
against the observed one, glmer_nb, a fixed negative binomial θ, parameters
running off to a limit, results (sigma, nb_theta, summary, simulate,
predictions) and the refusals.  (Dask data: tests/partitioned/test_glmm.py.)"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
from multilevel import ConvergenceWarning, DataError, ModelError
from multilevel.glmm import fit as glmm_fit

from .model_checks import FAMILY_MODELS, family_frame


def _data(seed: int = 3, groups: int = 30, size: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), size)
    x = rng.normal(size=g.size)
    b = rng.normal(0.0, 0.5, groups)
    mu = np.exp(1.0 + 0.3 * x + b[g])
    return family_frame(rng, mu, x, g, 9, nb=2.0, shape=4.0, wald=8.0, phi=8.0)


DATA = _data()
MODELS = FAMILY_MODELS


@pytest.mark.parametrize(("y", "family"), MODELS)
def test_exact_route_equals_the_two_stage_route(y, family, monkeypatch):
    fast = ml.glmer(f"{y} ~ x + (1 | g)", DATA, family=family)
    assert fast.optinfo.optimizer == "bfgs (exact gradient)" and fast.converged
    monkeypatch.setattr(glmm_fit, "EXACT_GRADIENT", False)
    slow = ml.glmer(f"{y} ~ x + (1 | g)", DATA, family=family)
    assert slow.optinfo.optimizer == "bobyqa+newton" and slow.converged
    assert fast.loglik >= slow.loglik - 1e-7
    assert fast.loglik == pytest.approx(slow.loglik, abs=1e-6)
    np.testing.assert_allclose(fast.fixef, slow.fixef, atol=1e-4 * fast.se.max())
    np.testing.assert_allclose(fast.se, slow.se, rtol=2e-3)
    assert fast.family.value == pytest.approx(slow.family.value, rel=1e-4)


@pytest.mark.parametrize(("y", "family"), MODELS[:2] + MODELS[3:])
def test_quadrature_moves_little_from_laplace_and_settles(y, family):
    lap = ml.glmer(f"{y} ~ x + (1 | g)", DATA, family=family)
    q15 = ml.glmer(f"{y} ~ x + (1 | g)", DATA, family=family, nAGQ=15)
    q25 = ml.glmer(f"{y} ~ x + (1 | g)", DATA, family=family, nAGQ=25)
    assert q15.converged and q25.converged
    assert q25.loglik == pytest.approx(q15.loglik, abs=1e-4)
    assert abs(q25.loglik - lap.loglik) < 0.5


def test_fisher_curvature_differs_for_a_non_canonical_link_only():
    obs = ml.glmer("gam ~ x + (1 | g)", DATA, family="Gamma(log)")
    fis = ml.glmer("gam ~ x + (1 | g)", DATA, family="Gamma(log)", hessian="fisher")
    assert fis.converged and abs(obs.loglik - fis.loglik) > 1e-4
    inv_obs = ml.glmer("gam ~ x + (1 | g)", DATA, family="Gamma")  # canonical
    inv_fis = ml.glmer("gam ~ x + (1 | g)", DATA, family="Gamma", hessian="fisher")
    assert inv_obs.loglik == pytest.approx(inv_fis.loglik, abs=1e-7)
    with pytest.raises(ModelError, match="hessian must be"):
        ml.glmer("gam ~ x + (1 | g)", DATA, family="Gamma", hessian="exact")


def test_glmer_nb_is_lme4s_and_a_fixed_theta_estimates_nothing():
    nb = ml.glmer_nb("nb ~ x + (1 | g)", DATA)
    tmb = ml.glmer("nb ~ x + (1 | g)", DATA, family=ml.negative_binomial())
    assert nb.converged and nb.nb_theta == pytest.approx(tmb.nb_theta, rel=0.05)
    assert "Negative Binomial(" in str(nb.summary())
    fixed = ml.glmer("nb ~ x + (1 | g)", DATA, family=ml.negative_binomial(theta=nb.nb_theta))
    assert fixed.df_model == nb.df_model - 1
    assert fixed.nb_theta == nb.nb_theta
    with pytest.raises(ModelError, match="nb_theta"):
        _ = ml.glmer("gam ~ x + (1 | g)", DATA, family="Gamma(log)").nb_theta


def test_results_sigma_summary_simulate_predict():
    fit = ml.glmer("gam ~ x + (1 | g)", DATA, family="Gamma(log)")
    assert fit.sigma == pytest.approx(1 / np.sqrt(fit.family.value))
    assert fit.family_param.index.tolist() == ["shape"]
    text = str(fit.summary())
    assert "Family: Gamma  ( log )" in text and "Dispersion estimate for Gamma family" in text
    # the random-effect SD is not scaled by sigma (a GLMM's templates are its factors)
    assert fit.varcorr.sdcor.iloc[0] == pytest.approx(fit.theta.iloc[0] * 1.0)
    sims = fit.simulate(300, seed=1, use_u=True)
    assert sims.shape == (len(DATA), 300)
    ratio = sims.mean(axis=1) / fit.fitted
    assert abs(float(ratio.mean()) - 1.0) < 0.01
    assert fit.simulate(2, seed=4).equals(fit.simulate(2, seed=4))
    resp = fit.predict(DATA.head(5), type="response")
    np.testing.assert_allclose(resp, fit.fitted.head(5), rtol=1e-10)


def test_a_theta_running_off_to_infinity_is_reported():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(40), 25)
    x = rng.normal(size=g.size)
    mu = np.exp(1.5 + 0.3 * x + rng.normal(0, 0.4, 40)[g])
    d = pd.DataFrame({"y": rng.binomial(20, mu / (mu.max() + 1)), "x": x, "g": g})  # underdispersed
    with pytest.warns(ConvergenceWarning, match="theta runs off to infinity"):
        fit = ml.glmer("y ~ x + (1 | g)", d, family="negative_binomial")
    assert not fit.converged
    assert "family='poisson'" in fit.optinfo.messages[0]


@pytest.mark.parametrize(
    ("frame", "family", "error", "message"),
    [
        (DATA.assign(gam=DATA.gam - 1.0), "Gamma(log)", DataError, "not positive"),
        (DATA.assign(nb=DATA.nb + 0.5), "negative_binomial", DataError, "non-integer"),
        (DATA.assign(prop=(DATA.prop > 0.5).astype(float)), "beta", DataError, "outside the open"),
        (DATA, "Gamma(logit)", ModelError, "not available for the Gamma family"),
    ],
)
def test_bad_responses_and_links_are_refused_before_fitting(frame, family, error, message):
    y = {"G": "gam", "n": "nb", "b": "prop"}[family[0]]
    with pytest.raises(error, match=message):
        ml.glmer(f"{y} ~ x + (1 | g)", frame, family=family)


def test_no_warning_on_the_reference_like_fits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for y, family in MODELS:
            ml.glmer(f"{y} ~ x + (1 | g)", DATA, family=family)


@pytest.mark.parametrize(("y", "family"), [("gam", "Gamma(log)"), ("nb", "negative_binomial")])
@pytest.mark.parametrize("nagq", [1, 3])
def test_vector_term_exact_route_equals_the_two_stage_route(y, family, nagq, monkeypatch):
    formula = f"{y} ~ x + (1 + x | g)"
    fast = ml.glmer(formula, DATA, family=family, nAGQ=nagq)
    assert fast.optinfo.optimizer == "bfgs (exact gradient)"
    monkeypatch.setattr(glmm_fit, "EXACT_GRADIENT", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = ml.glmer(formula, DATA, family=family, nAGQ=nagq)
    assert fast.loglik >= slow.loglik - 1e-7
    assert fast.loglik == pytest.approx(slow.loglik, abs=1e-5)
    np.testing.assert_allclose(fast.fixef, slow.fixef, atol=1e-3 * fast.se.max())
    assert fast.family.value == pytest.approx(slow.family.value, rel=1e-3)


@pytest.mark.parametrize(("y", "family"), [("nb", "negative_binomial"), ("prop", "beta")])
def test_crossed_terms_exact_route_equals_the_two_stage_route(y, family, monkeypatch):
    formula = f"{y} ~ x + (1 | g) + (1 | h)"
    fast = ml.glmer(formula, DATA, family=family)
    assert fast.optinfo.optimizer == "bfgs (exact gradient)"
    monkeypatch.setattr(glmm_fit, "EXACT_GRADIENT", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = ml.glmer(formula, DATA, family=family)
    assert fast.loglik >= slow.loglik - 1e-7
    assert fast.loglik == pytest.approx(slow.loglik, abs=1e-5)
    np.testing.assert_allclose(fast.fixef, slow.fixef, atol=1e-3 * fast.se.max())
    assert fast.family.value == pytest.approx(slow.family.value, rel=1e-3)


def test_simulate_moments_match_the_model():
    """Poisson with new random effects: E[y] = exp(xβ + σ²/2) for a random
    intercept; ml.simulate dispatches to the GLMM's simulate."""
    fit = ml.glmer("nb ~ x + (1 | g)", DATA, family="poisson")
    sims = ml.simulate(fit, 4000, seed=11)
    assert sims.equals(ml.simulate(fit, 4000, seed=11))
    sd = float(fit.varcorr.sdcor.iloc[0])
    expected = np.exp(fit.design.X @ fit.fixef.to_numpy() + sd**2 / 2)
    ratio = sims.mean(axis=1).to_numpy() / expected
    assert abs(float(np.mean(ratio)) - 1.0) < 0.02


@pytest.mark.parametrize("link", ["log", "identity", "inverse"])
def test_units_of_the_response_and_covariates_change_nothing_but_the_units(link):
    """Gamma with the response in units 1e6 times larger and the covariate in
    units 1e8 times smaller: the same log-likelihood up to the Jacobian, the
    same shape, the estimates in the new units."""
    base = DATA.assign(gam=DATA.gam + 1.0)  # away from 0: an identity link's mean stays positive
    a = ml.glmer("gam ~ x + (1 | g)", base, family=f"Gamma({link})")
    b = ml.glmer(
        "gam ~ x + (1 | g)",
        base.assign(gam=base.gam * 1e6, x=base.x * 1e-8),
        family=f"Gamma({link})",
    )
    assert a.converged and b.converged
    assert b.loglik == pytest.approx(a.loglik - len(base) * np.log(1e6), abs=1e-5)
    assert b.family.value == pytest.approx(a.family.value, rel=1e-5)
    scale = {"log": None, "identity": 1e6, "inverse": 1e-6}[link]
    if scale is None:
        assert b.fixef.iloc[0] == pytest.approx(a.fixef.iloc[0] + np.log(1e6), rel=1e-6)
        assert b.fixef.iloc[1] == pytest.approx(a.fixef.iloc[1] * 1e8, rel=1e-5)
        assert b.varcorr.sdcor.iloc[0] == pytest.approx(a.varcorr.sdcor.iloc[0], rel=1e-5)
    else:
        np.testing.assert_allclose(b.fixef * [1.0, 1e-8], a.fixef * scale, rtol=1e-5)
        assert b.varcorr.sdcor.iloc[0] == pytest.approx(a.varcorr.sdcor.iloc[0] * scale, rel=1e-4)
