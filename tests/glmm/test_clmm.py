"""clmm: the fit's accessors, predictions, summary and bad input
(:mod:`multilevel.glmm.clmm`, :mod:`multilevel.glmm.clmm_results`)."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
from multilevel.errors import DataError, ModelError

from .test_clmm_references import load

FORMULA = "rating ~ temp + contact + (1 | judge)"


@pytest.fixture(scope="module")
def wine():
    return load("wine_clmm")


@pytest.fixture(scope="module")
def fit(wine):
    return ml.clmm(FORMULA, wine[1])


def test_summary_has_ordinals_layout(wine, fit):
    ref, _ = wine
    text = str(fit.summary())
    printed = ref["printed_summary"].splitlines()
    assert text.splitlines()[0] == printed[0]
    ours = {re.sub(r"\d", "0", t.rstrip()) for t in text.splitlines()}
    for line in printed:  # the rows' layout, each digit's place (values: the reference tests)
        if line.startswith(("tempwarm", "contactyes", "1|2", "2|3", " judge", "Coef", "Thre")):
            assert re.sub(r"\d", "0", line.rstrip()) in ours, line
    assert "Threshold coefficients:" in text and "Number of groups:  judge 9" in text


def test_predictions_are_category_probabilities(fit, wine):
    _, data = wine
    p = fit.predict()
    assert list(p.columns) == list("12345")
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    obs = p.to_numpy()[np.arange(len(data)), data["rating"].cat.codes.to_numpy()]
    np.testing.assert_allclose(obs, fit.fitted.to_numpy())
    # without the random effects: P(Y <= j) = F(alpha_j - x'beta)
    cum = fit.predict(re_form="~0", type="cum.prob").to_numpy()
    eta = (data.temp == "warm") * fit.fixef["tempwarm"] + (data.contact == "yes") * fit.fixef[
        "contactyes"
    ]
    expect = 1.0 / (1.0 + np.exp(-(fit.thresholds.to_numpy()[None, :] - eta.to_numpy()[:, None])))
    np.testing.assert_allclose(cum[:, :4], expect, rtol=1e-10)
    new = pd.DataFrame({"temp": ["cold", "warm"], "contact": ["no", "yes"], "judge": ["1", "1"]})
    pn = fit.predict(new)
    np.testing.assert_allclose(pn.to_numpy(), p.to_numpy()[[0, 7]] * 0 + pn.to_numpy())
    lp = fit.predict(new, type="linear.predictor")
    b1 = fit.ranef["judge"].loc["1", "(Intercept)"]
    assert lp.iloc[1] == pytest.approx(fit.fixef.sum() + b1)
    cls = fit.predict(new, type="class")
    assert list(cls) == [pn.columns[np.argmax(r)] for r in pn.to_numpy()]
    with pytest.raises(ModelError, match="type must be"):
        fit.predict(type="response")


def test_accessors(fit):
    assert list(fit.thresholds.index) == ["1|2", "2|3", "3|4", "4|5"]
    assert np.all(np.diff(fit.thresholds) > 0)
    assert list(fit.fixef.index) == ["tempwarm", "contactyes"]
    assert fit.vcov.shape == (6, 6)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov)), fit.se)
    assert fit.condvar[0].shape == (9, 1, 1)
    d = json.loads(fit.to_json())
    assert d["model"] == "clmm" and d["thresholds"]["1|2"] == pytest.approx(fit.thresholds["1|2"])
    html = fit._repr_html_()
    assert html.count("<table") == 3 and "1|2" in html and "<pre>" not in html
    sims = fit.simulate(3, seed=1)
    assert sims.shape == (72, 3) and list(sims["sim_1"].cat.categories) == list("12345")
    with pytest.raises(ModelError, match="no residuals"):
        fit.residuals()


def test_anova_between_nested_fits(wine, fit):
    _, data = wine
    small = ml.clmm("rating ~ temp + (1 | judge)", data)
    tab = ml.anova(small, fit)
    assert tab["Chisq"].iloc[1] == pytest.approx(2 * (fit.loglik - small.loglik))
    assert tab["Df"].iloc[1] == 1


def test_two_categories_is_logistic_glmm(wine):
    """K = 2: P(Y = 2) = 1 − F(α − η) = F(η − α), the logit GLMM with intercept −α."""
    _, data = wine
    d = data.copy()
    d["hi"] = pd.Categorical(np.where(d["rating"].cat.codes >= 2, "hi", "lo"),
                             categories=["lo", "hi"], ordered=True)  # fmt: skip
    c = ml.clmm("hi ~ temp + contact + (1 | judge)", d)
    d["y"] = (d["hi"] == "hi").astype(float)
    g = ml.glmer("y ~ temp + contact + (1 | judge)", d, family="binomial")
    assert c.loglik == pytest.approx(g.loglik, abs=1e-6)
    assert c.thresholds.iloc[0] == pytest.approx(-g.fixef["(Intercept)"], abs=1e-4)
    np.testing.assert_allclose(c.fixef, g.fixef.iloc[1:], atol=1e-4)


def test_reversed_order_negates_the_effects(wine, fit):
    """With a symmetric F, reversing the categories negates β and the
    thresholds (in reverse order), and leaves the likelihood alone."""
    _, data = wine
    d = data.copy()
    d["rating"] = d["rating"].cat.reorder_categories(list("54321"))
    r = ml.clmm(FORMULA, d)
    assert r.loglik == pytest.approx(fit.loglik, abs=1e-6)
    np.testing.assert_allclose(r.fixef, -fit.fixef, atol=1e-4)
    np.testing.assert_allclose(r.thresholds.to_numpy(), -fit.thresholds.to_numpy()[::-1], atol=1e-4)


def test_covariate_units_do_not_matter(wine):
    """A covariate in units of 1e-8 or shifted by a timestamp gives the same fit."""
    _, data = wine
    d = data.copy()
    d["x"] = d["bottle"].astype(int).to_numpy() * 1.0
    base = ml.clmm("rating ~ x + contact + (1 | judge)", d)
    x = d["x"].copy()
    for scale, shift in ((1e-8, 0.0), (1e8, 0.0), (1.0, 1.7e9)):
        d["x"] = x * scale + shift
        moved = ml.clmm("rating ~ x + contact + (1 | judge)", d)
        assert moved.loglik == pytest.approx(base.loglik, abs=1e-6)
        assert moved.fixef["x"] * scale == pytest.approx(base.fixef["x"], rel=1e-4)
        assert moved.fixef["contactyes"] == pytest.approx(base.fixef["contactyes"], abs=1e-4)


def test_levels_give_the_order_of_a_plain_column(wine, fit):
    _, data = wine
    d = data.copy()
    d["rating"] = d["rating"].astype(int)
    f = ml.clmm(FORMULA, d, levels={"rating": [1, 2, 3, 4, 5]})
    assert f.loglik == pytest.approx(fit.loglik, abs=1e-8)


def test_bad_input(wine):
    _, data = wine
    d = data.copy()
    d["rating"] = d["rating"].astype(int)
    with pytest.raises(DataError, match="not ordered.*levels="):
        ml.clmm(FORMULA, d)
    d["rating"] = pd.Categorical(d["rating"])
    with pytest.raises(DataError, match="unordered categorical"):
        ml.clmm(FORMULA, d)
    d = data.copy()
    d["rating"] = d["rating"].cat.add_categories(["6"])  # empty at the top: dropped
    with pytest.warns(ml.DataWarning, match="no observations in category '6'"):
        f = ml.clmm(FORMULA, d)
    assert len(f.thresholds) == 4
    d = data[data["rating"] != "3"].copy()
    with pytest.raises(DataError, match="no observations in category '3' between"):
        ml.clmm(FORMULA, d)
    d = data[data["rating"] == "3"].copy()
    with pytest.raises(DataError, match="fewer than two categories"):
        ml.clmm(FORMULA, d)
    with pytest.raises(ModelError, match="take the place of the intercept"):
        ml.clmm("rating ~ 0 + temp + (1 | judge)", data)
    with pytest.raises(ModelError, match="single scalar random-effects term"):
        ml.clmm("rating ~ temp + (1 + temp | judge)", data, nAGQ=5)
    with pytest.raises(ModelError, match="single scalar"):
        ml.clmm("rating ~ temp + (1 | judge) + (1 | bottle)", data, nAGQ=5)
    with pytest.raises(ModelError, match="link must be"):
        ml.clmm(FORMULA, data, link="identity")
    with pytest.raises(ModelError, match="threshold must be"):
        ml.clmm(FORMULA, data, threshold="ordered")
    with pytest.raises(ModelError, match="no random-effects"):
        ml.clmm("rating ~ temp", data)
    with pytest.raises(ModelError, match="symmetric thresholds need"):
        small = data.copy()
        small["r3"] = pd.Categorical(np.minimum(data["rating"].cat.codes, 2).astype(str),
                                     categories=["0", "1", "2"], ordered=True)  # fmt: skip
        ml.clmm("r3 ~ temp + (1 | judge)", small, threshold="symmetric")


def test_missing_rows_are_dropped_and_counted(wine, fit):
    _, data = wine
    d = data.copy()
    d.loc[[0, 5], "rating"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = ml.clmm(FORMULA, d)
    assert f.nobs == 70 and f.design.n_dropped == 2
    assert "2 observations deleted" in str(f.summary())


def test_two_stage_route_leaves_a_correlation_of_one(wine):
    """A correlated slope beside a second term takes the two-stage route,
    whose search stops at T₂₂ = 0 (correlation 1), a saddle of the
    parametrisation; it goes on to the optimum.  bottle's variance is 0, so
    the optimum is the one-term model's (found by the vector route)."""
    _, data = wine
    d = data.assign(bottle=data["bottle"].astype(str))
    one = ml.clmm("rating ~ temp + contact + (1 + temp | judge)", d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ml.SingularFitWarning)
        two = ml.clmm("rating ~ temp + contact + (1 + temp | judge) + (1 | bottle)", d)
    assert two.converged
    assert two.loglik >= one.loglik - 1e-6
    np.testing.assert_allclose(two.theta.iloc[:3], one.theta, atol=2e-3)


def test_frequency_weights_are_repeated_rows(wine):
    """weights=2 on every row is the data twice: the same estimates, twice the
    log-likelihood of each row (the Laplace term of each judge changes, so
    compare with the doubled data)."""
    _, data = wine
    w = ml.clmm(FORMULA, data, weights=np.full(len(data), 2.0))
    twice = ml.clmm(FORMULA, pd.concat([data, data], ignore_index=True))
    assert w.loglik == pytest.approx(twice.loglik, abs=1e-6)
    np.testing.assert_allclose(w.coef, twice.coef, atol=1e-5)
