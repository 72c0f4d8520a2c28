"""The fitted-model object: accessors, predictions, summary text."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import multilevel as ml
from multilevel import DataError

from ..conftest import reference, reference_data

HSB = "mathach ~ meanses*cses + sector*cses + (cses | school)"


@pytest.fixture(scope="module")
def fit(hsb):
    return ml.lmer(HSB, hsb)


def test_predict_on_fitting_data_equals_fitted(fit, hsb):
    np.testing.assert_allclose(fit.predict(hsb).to_numpy(), fit.fitted.to_numpy(), atol=1e-10)


def test_population_predictions_are_x_beta(fit, hsb):
    pop = fit.predict(hsb, re_form="~0").to_numpy()
    np.testing.assert_allclose(pop, fit.design.X @ fit.fixef.to_numpy(), atol=1e-10)
    np.testing.assert_allclose(fit.predict(re_form="~0").to_numpy(), pop, atol=1e-10)


def test_new_levels(fit, hsb):
    new = hsb.iloc[:3].copy()
    new["school"] = [99999, 99999, 1224]
    with pytest.raises(DataError, match="new levels"):
        fit.predict(new)
    p = fit.predict(new, allow_new_levels=True).to_numpy()
    pop = fit.predict(new, re_form="~0").to_numpy()
    assert p[0] == pytest.approx(pop[0])
    assert p[2] != pytest.approx(pop[2])


def test_coef_is_fixef_plus_ranef(fit):
    coef = fit.coef["school"]
    re = fit.ranef["school"]
    np.testing.assert_allclose(coef["cses"], fit.fixef["cses"] + re["cses"])
    np.testing.assert_allclose(coef["meanses"], fit.fixef["meanses"])


def test_residual_types(fit):
    r = fit.residuals()
    np.testing.assert_allclose(r + fit.fitted, fit.design.y)
    np.testing.assert_allclose(fit.residuals(type="pearson", scaled=True), r / fit.sigma)
    with pytest.raises(ValueError):
        fit.residuals(type="deviance-ish")


def test_varcorr_layout(fit):
    vc = fit.varcorr
    assert list(vc.columns) == ["grp", "var1", "var2", "vcov", "sdcor"]
    assert list(vc["grp"]) == ["school"] * 3 + ["Residual"]
    assert vc["vcov"].iloc[-1] == pytest.approx(fit.sigma**2)


def test_optimization_record(fit):
    info = fit.optinfo
    assert info.evals == len(info.log) > 0
    assert info.log["criterion"].min() == pytest.approx(info.criterion)
    assert info.converged and info.status == "CONVERGED"
    assert fit.reml_criterion == pytest.approx(info.criterion)


def test_summary_matches_lme4_layout(fit):
    ref = reference("hsb_lmer_reml")
    ours = str(fit.summary()).splitlines()
    theirs = ref["printed_summary"].splitlines()
    # identical apart from the formula spacing, the data name and last-digit
    # differences where R stopped short of the optimum
    same = sum(a == b for a, b in zip(ours, theirs, strict=False))
    assert len(ours) == len(theirs)
    assert same >= len(theirs) - 8
    for line in (
        "Fixed effects:",
        "Correlation of Fixed Effects:",
        "REML criterion at convergence: 46503.7",
    ):
        assert line in ours


def test_singular_fit_is_reported():
    ref = reference("dyestuff2_reml")
    data = reference_data(ref)
    with pytest.warns(ml.SingularFitWarning, match="Batch"):
        fit = ml.lmer("Yield ~ 1 + (1 | Batch)", data)
    assert fit.singular
    assert "boundary (singular) fit" in str(fit.summary())
    assert fit.theta.iloc[0] == 0.0


def test_fit_is_reproducible(hsb):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = ml.lmer(HSB, hsb)
        b = ml.lmer(HSB, hsb)
    assert a.loglik == b.loglik
    np.testing.assert_array_equal(a.fixef, b.fixef)


def test_summary_with_denominator_df(fit):
    ref = reference("hsb_lmer_reml")
    text = str(fit.summary(ddf="Satterthwaite"))
    assert "Fixed effects (Satterthwaite df):" in text and "Signif. codes" in text
    sat = fit.summary(ddf="Satterthwaite").coefficients
    for name, df in ref["satterthwaite_df"].items():
        assert sat.loc[name, "df"] == pytest.approx(df, rel=1e-3)
    nlme = fit.summary(ddf="nlme").coefficients
    assert nlme["df"].to_dict() == reference("hsb_nlme_reml")["df"]


def test_inference_methods_are_on_the_fit(fit):
    ci = fit.confint(method="wald")
    assert ci.shape[1] == 2
    assert fit.refit_ml().REML is False


def test_predict_when_a_grouping_column_is_also_a_fixed_effect():
    # once a bug: labels used in a grouping factor were never evaluated on new data
    d = ml.datasets.load("sleepstudy").assign(half=lambda x: x.Days >= 5)
    fit = ml.lmer("Reaction ~ Days + half + (1 | Subject:half)", d)
    np.testing.assert_allclose(fit.predict(d.iloc[:7]), fit.fitted.iloc[:7], atol=1e-9)


def test_refit_equals_a_fresh_fit():
    s = ml.datasets.load("sleepstudy")
    fit = ml.lmer("Reaction ~ Days + (Days | Subject)", s)
    y2 = s["Reaction"].to_numpy() * 1.1 + 3.0
    fresh = ml.lmer("Reaction ~ Days + (Days | Subject)", s.assign(Reaction=y2))
    again = fit.refit(y2)
    assert again.reml_criterion == pytest.approx(fresh.reml_criterion, abs=1e-8)
    np.testing.assert_allclose(again.fixef, fresh.fixef, rtol=1e-7)
    ml_fit = fit.refit(REML=False)
    assert not ml_fit.REML and ml_fit.loglik == pytest.approx(
        ml.lmer("Reaction ~ Days + (Days | Subject)", s, REML=False).loglik, abs=1e-8
    )
    assert fit.refit_ml().loglik == pytest.approx(ml_fit.loglik, abs=1e-12)
    with pytest.raises(ml.ModelError, match="180 values"):
        fit.refit(y2[:10])
