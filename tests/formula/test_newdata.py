"""Predictions with a subset of the random-effects terms (lme4's ``re.form``,
multilevel.formula.newdata.re_form_terms) for LMMs, GLMMs and Dask fits:
Xβ̂ plus exactly the named terms' Zb̂, on the fitting rows and on new data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
from multilevel import ModelError


def _with_terms(fit, frame: pd.DataFrame, groups: list[str]) -> np.ndarray:
    """Population prediction plus the intercepts of the named grouping factors."""
    eta = fit.predict(frame, re_form="~0").to_numpy()
    for g in groups:
        b = fit.ranef[g].iloc[:, 0]
        values = dict(zip(b.index.astype(str), b.values, strict=True))
        eta = eta + frame[g].astype(str).map(values).to_numpy()
    return eta


def test_lmm_subset_of_crossed_terms():
    pen = ml.datasets.load("penicillin")
    fit = ml.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", pen)
    for rf, groups in [("~(1|plate)", ["plate"]), ("~ (1 | sample)", ["sample"])]:
        expected = _with_terms(fit, pen, groups)
        np.testing.assert_allclose(fit.predict(re_form=rf), expected, atol=1e-10)
        np.testing.assert_allclose(fit.predict(pen.head(7), re_form=rf), expected[:7], atol=1e-10)
    both = fit.predict(re_form="~(1 | plate) + (1 | sample)")
    np.testing.assert_allclose(both, fit.predict(), atol=1e-10)


def test_glmm_subset_on_the_response_scale_and_refusals():
    cbpp = ml.datasets.load("cbpp").assign(obs=lambda d: np.arange(len(d)).astype(str))
    fit = ml.glmer(
        "cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)", cbpp, "binomial"
    )
    eta = _with_terms(fit, cbpp, ["herd"])
    got = fit.predict(re_form="~(1 | herd)", type="response")
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-eta)), atol=1e-12)
    with pytest.raises(ModelError, match=r"\(1 \| plate\) is not a random-effects term"):
        fit.predict(re_form="~(1 | plate)")
    with pytest.raises(ModelError, match="re_form must be"):
        fit.predict(re_form="herd")
    with pytest.raises(ModelError, match="type must be"):
        fit.predict(type="probability")


def test_slope_terms_are_named_as_the_model_writes_them():
    sleep = ml.datasets.load("sleepstudy")
    fit = ml.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    np.testing.assert_allclose(fit.predict(re_form="~(Days | Subject)"), fit.predict(), atol=1e-10)
    with pytest.raises(ModelError, match="not a random-effects term"):
        fit.predict(re_form="~(1 | Subject)")
