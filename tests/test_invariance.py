"""Estimates do not depend on the origin or units of a covariate or of the
response (hypothesis, at the extremes real data reach).

For y' = c·y + d and x' = a·x + b the model is the same: back-transformed
estimates agree to 1e-6 relative and the criterion moves by its Jacobian
constant (REML: 2(n − p) log c + 2 log a; ML: 2n log c).  A shift is bounded
by 1e6 times the column's spread: beyond that the data themselves no longer
hold the covariate's digits in double precision (a timestamp of 1.7e9 s with a
spread of hours is at 1e5).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import multilevel as ml

SLEEP = ml.datasets.load("sleepstudy")
CONTRA = ml.datasets.load("contraception")
F = "Reaction ~ Days + (Days | Subject)"
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


REF = {reml: quiet(ml.lmer, F, SLEEP, REML=reml) for reml in (True, False)}


def slope_sd(fit) -> float:
    vc = fit.varcorr
    row = (vc["grp"] == "Subject") & (vc["var1"] == "Days") & vc["var2"].isna()
    return float(vc.loc[row, "sdcor"].iloc[0])


log_scale = st.floats(-8, 8)
rel_shift = st.floats(-1e6, 1e6)


@SETTINGS
@given(log_a=log_scale, shift=rel_shift, log_c=st.floats(-200, 200), yshift=rel_shift,
       reml=st.booleans())  # fmt: skip
def test_lmm_correlated_slopes_invariant_to_units_and_origin(log_a, shift, log_c, yshift, reml):
    a, c = 10.0**log_a, 10.0**log_c
    b = shift * a * 9.0  # Days spans 0..9
    d = yshift * c * float(np.ptp(SLEEP["Reaction"]))
    data = SLEEP.assign(Days=a * SLEEP["Days"] + b, Reaction=c * SLEEP["Reaction"] + d)
    fit, ref = quiet(ml.lmer, F, data, REML=reml), REF[reml]
    assert fit.converged and not fit.singular
    assert fit.fixef["Days"] * a / c == pytest.approx(ref.fixef["Days"], rel=1e-6)
    assert fit.se["Days"] * a / c == pytest.approx(ref.se["Days"], rel=1e-6)
    assert fit.sigma / c == pytest.approx(ref.sigma, rel=1e-6)
    assert slope_sd(fit) * a / c == pytest.approx(slope_sd(ref), rel=1e-6)
    n, p = ref.nobs, 2
    log_c_e = math.log(10.0) * log_c
    if reml:
        jac = 2 * (n - p) * log_c_e + 2 * math.log(10.0) * log_a
        assert fit.reml_criterion == pytest.approx(ref.reml_criterion + jac, abs=1e-6)
    else:
        assert fit.deviance == pytest.approx(ref.deviance + 2 * n * log_c_e, abs=1e-6)


GLMM_REF = quiet(ml.glmer, "use ~ age + urban + (1 | district)", CONTRA, "binomial")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_a=log_scale, shift=rel_shift)
def test_glmm_invariant_to_a_covariates_units_and_origin(log_a, shift):
    a = 10.0**log_a
    b = shift * a * float(np.ptp(CONTRA["age"]))
    fit = quiet(ml.glmer, "use ~ age + urban + (1 | district)",
                CONTRA.assign(age=a * CONTRA["age"] + b), "binomial")  # fmt: skip
    assert fit.converged
    assert fit.fixef["age"] * a == pytest.approx(GLMM_REF.fixef["age"], rel=1e-6)
    assert fit.se["age"] * a == pytest.approx(GLMM_REF.se["age"], rel=1e-6)
    assert fit.loglik == pytest.approx(GLMM_REF.loglik, abs=1e-6)
    assert fit.theta.iloc[0] == pytest.approx(GLMM_REF.theta.iloc[0], rel=1e-6)


def test_timestamps_are_ordinary_covariates():
    ref = quiet(ml.lmer, "Reaction ~ Days + (1 | Subject)", SLEEP)
    fit = quiet(ml.lmer, "Reaction ~ t + (1 | Subject)",
                SLEEP.assign(t=1.7e9 + SLEEP["Days"] * 3600.0))  # fmt: skip
    assert list(fit.fixef.index) == ["(Intercept)", "t"]
    assert fit.fixef["t"] * 3600 == pytest.approx(ref.fixef["Days"], rel=1e-8)


SLOPE = "use ~ age + urban + (age | district)"
SLOPE_REF = quiet(ml.glmer, SLOPE, CONTRA, "binomial")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_a=st.floats(-6, 6), shift=st.floats(-1e4, 1e4))
def test_glmm_random_slope_invariant_to_its_covariates_units_and_origin(log_a, shift):
    a = 10.0**log_a
    b = shift * a * float(np.ptp(CONTRA["age"]))
    fit = quiet(ml.glmer, SLOPE, CONTRA.assign(age=a * CONTRA["age"] + b), "binomial")
    assert fit.converged and not fit.singular
    assert fit.loglik == pytest.approx(SLOPE_REF.loglik, abs=1e-6)
    assert fit.fixef["age"] * a == pytest.approx(SLOPE_REF.fixef["age"], rel=1e-6)
    vc = fit.varcorr
    row = (vc["var1"] == "age") & vc["var2"].isna()
    ref_vc = SLOPE_REF.varcorr
    ref_row = (ref_vc["var1"] == "age") & ref_vc["var2"].isna()
    assert float(vc.loc[row, "sdcor"].iloc[0]) * a == pytest.approx(
        float(ref_vc.loc[ref_row, "sdcor"].iloc[0]), rel=1e-6
    )
