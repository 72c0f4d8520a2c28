"""Intervals of GLMMs and ordinal models: Wald (lme4's ``confint(method =
"Wald")``, ordinal's ``confint``); profiles and the bootstrap are for LMMs
and say so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import multilevel as ml


@pytest.fixture(scope="module")
def cbpp_fit():
    cbpp = ml.datasets.load("cbpp")
    return ml.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial")


def test_wald_intervals(cbpp_fit):
    ci = ml.confint(cbpp_fit, method="Wald", level=0.9)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(ci.iloc[:, 0], cbpp_fit.fixef - z * cbpp_fit.se)
    np.testing.assert_allclose(ci.iloc[:, 1], cbpp_fit.fixef + z * cbpp_fit.se)
    pd.testing.assert_frame_equal(cbpp_fit.confint(level=0.9), ci)


def test_ordinal_wald_intervals_include_thresholds():
    wine = ml.datasets.load("wine")
    wine["rating"] = pd.Categorical(wine["rating"], ordered=True)
    f = ml.clmm("rating ~ temp + contact + (1 | judge)", wine)
    ci = ml.confint(f, method="wald")
    assert list(ci.index) == ["1|2", "2|3", "3|4", "4|5", "tempwarm", "contactyes"]
    with pytest.raises(ml.ModelError, match="Wald intervals only"):
        f.confint(method="profile")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f: ml.confint(f), "use method='Wald'"),
        (lambda f: ml.profile(f), "linear mixed models"),
        (lambda f: ml.bootstrap(f, nsim=2), "linear mixed models"),
    ],
)
def test_lmm_only_methods_say_so(cbpp_fit, call, message):
    with pytest.raises(ml.ModelError, match=message):
        call(cbpp_fit)
