"""Every linear mixed model in tests/reference against our fits.

Tolerances (issue 2): log-likelihood / REML criterion within 1e-4 of the
reference or better; fixed effects within 1e-3 of their standard errors;
standard errors within 1e-3 relative; random-effect SDs within 1e-2 relative,
correlations within 0.01; conditional modes within 1e-2 relative (per column,
relative to the column's largest value).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multilevel import lmer

from ..conftest import reference, reference_data

CASES = [
    "hsb_lmer_reml",
    "hsb_lmer_ml",
    "hsb_lmer_intercept",
    "hsb_lmer_uncorr",
    "hsb_nlme_reml",
    "hsb_nlme_ml",
    "sleep_reml",
    "sleep_ml",
    "sleep_uncorr",
    "dyestuff_reml",
    "dyestuff2_reml",
    "penicillin_reml",
    "pastes_reml",
]

_fits: dict = {}


def _none(x):
    return None if pd.isna(x) else x


def fitted(case: str):
    if case not in _fits:
        ref = reference(case)
        data = reference_data(ref)
        with np.errstate(all="raise"):
            _fits[case] = (lmer(ref["formula"], data, REML=ref["method"] == "REML"), ref)
    return _fits[case]


@pytest.mark.filterwarnings("ignore::multilevel.SingularFitWarning")
@pytest.mark.parametrize("case", CASES)
def test_loglik_at_least_reference(case):
    fit, ref = fitted(case)
    # our optimum may be better (higher) than R's, never worse by more than 1e-4
    assert fit.loglik >= ref["loglik"] - 1e-4
    assert fit.loglik - ref["loglik"] < 1e-2, "far above R: different likelihood?"
    assert fit.nobs == ref["nobs"]
    assert fit.converged


@pytest.mark.filterwarnings("ignore::multilevel.SingularFitWarning")
@pytest.mark.parametrize("case", CASES)
def test_fixed_effects(case):
    fit, ref = fitted(case)
    assert list(fit.fixef.index) == ref["fixef_names"]
    for name in ref["fixef_names"]:
        se = ref["se"][name]
        assert abs(fit.fixef[name] - ref["fixef"][name]) <= 1e-3 * se, name
        assert fit.se[name] == pytest.approx(se, rel=1e-3), name


@pytest.mark.filterwarnings("ignore::multilevel.SingularFitWarning")
@pytest.mark.parametrize("case", CASES)
def test_variance_components(case):
    fit, ref = fitted(case)
    ours = fit.varcorr
    assert len(ours) == len(ref["varcorr"])
    for row, theirs in zip(ours.itertuples(), ref["varcorr"], strict=True):
        assert row.grp == theirs["group"]
        assert _none(row.var1) == theirs["var1"]
        assert _none(row.var2) == theirs["var2"]
        if theirs["var2"] is None:
            assert row.sdcor == pytest.approx(theirs["sdcor"], rel=1e-2, abs=1e-4)
        else:
            assert abs(row.sdcor - theirs["sdcor"]) <= 0.01
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-2)


@pytest.mark.filterwarnings("ignore::multilevel.SingularFitWarning")
@pytest.mark.parametrize("case", CASES)
def test_random_effects(case):
    fit, ref = fitted(case)
    for group, levels in ref["ranef"].items():
        ours = fit.ranef[group]
        for term in next(iter(levels.values())):
            theirs = np.array([levels[lev][term] for lev in levels])
            mine = ours.loc[list(levels), term].to_numpy()
            scale = max(np.abs(theirs).max(), 1e-8)
            assert np.abs(mine - theirs).max() <= 1e-2 * scale, (group, term)
    if "ranef_condsd" in ref:
        for group, levels in ref["ranef_condsd"].items():
            ours = fit.ranef_condsd[group]
            for term in next(iter(levels.values())):
                theirs = np.array([levels[lev][term] for lev in levels])
                mine = ours.loc[list(levels), term].to_numpy()
                np.testing.assert_allclose(mine, theirs, rtol=1e-2, atol=1e-6)


@pytest.mark.filterwarnings("ignore::multilevel.SingularFitWarning")
@pytest.mark.parametrize("case", CASES)
def test_fitted_and_residuals(case):
    fit, ref = fitted(case)
    scale = np.abs(ref["fitted_head"]).max()
    np.testing.assert_allclose(fit.fitted.to_numpy()[:20], ref["fitted_head"], atol=1e-3 * scale)
    q = np.quantile(
        fit.residuals(type="pearson", scaled="lme4" in ref["engine"]).to_numpy(),
        [0, 0.25, 0.5, 0.75, 1],
    )
    if "nlme" in ref["engine"]:
        q = q / fit.sigma
    np.testing.assert_allclose(q, ref["std_resid_quantiles"], atol=2e-3)


@pytest.mark.filterwarnings("ignore::multilevel.SingularFitWarning")
@pytest.mark.parametrize("case", CASES)
def test_information_criteria(case):
    fit, ref = fitted(case)
    assert fit.df_model == ref["df_model"]
    assert fit.aic == pytest.approx(ref["aic"], abs=2e-4)
    # nlme's REML BIC uses log(n - p) as the number of observations
    nlme_reml = "nlme" in ref["engine"] and fit.REML
    n_bic = fit.nobs - len(fit.fixef) if nlme_reml else fit.nobs
    bic = -2 * fit.loglik + np.log(n_bic) * fit.df_model
    assert bic == pytest.approx(ref["bic"], abs=2e-4)
    if not nlme_reml:
        assert fit.bic == pytest.approx(ref["bic"], abs=2e-4)
    if "theta" in ref:
        assert list(fit.theta.index) == list(ref["theta"])


@pytest.mark.filterwarnings("ignore::multilevel.SingularFitWarning")
@pytest.mark.parametrize("case", CASES)
def test_singular_flag(case):
    fit, ref = fitted(case)
    if "singular" in ref:
        assert fit.singular == ref["singular"]
