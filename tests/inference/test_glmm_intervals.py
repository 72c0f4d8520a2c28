"""Wald intervals of GLMMs and ordinal models (lme4's ``confint(method =
"Wald")``, ordinal's ``confint``); an ordinal model refuses profiles and the
bootstrap.  GLMM profiles and the bootstrap: ``test_glmm_inference.py``."""

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
    pd.testing.assert_frame_equal(cbpp_fit.confint("Wald", level=0.9), ci)


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
        (lambda f: ml.profile(f), "ordinal model"),
        (lambda f: ml.bootstrap(f, nsim=2), "ordinal model"),
        (lambda f: ml.ranova(f), "ordinal model"),
    ],
)
def test_ordinal_model_refuses_profiles_and_bootstrap(call, message):
    wine = ml.datasets.load("wine")
    wine["rating"] = pd.Categorical(wine["rating"], ordered=True)
    f = ml.clmm("rating ~ temp + (1 | judge)", wine)
    with pytest.raises(ml.ModelError, match=message):
        call(f)
