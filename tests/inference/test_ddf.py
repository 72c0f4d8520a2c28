"""Satterthwaite and Kenward-Roger denominator DF against lmerTest / pbkrtest.

Tolerances: DF, SEs within 1e-3 relative of R at our own optimum (θ̂ agrees
with lme4's to about 1e-3 on HSB's flat likelihood, which moves the DF by up
to 9e-4); p-values compared on the log scale (a p of 1e-115 moves by a few
tenths of a percent when t moves by 1e-6).  At lme4's θ the implementation
itself is checked tighter: DF within 1e-5 (lmerTest's numerical derivatives),
Kenward-Roger within 1e-8.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from multilevel import ModelError, lmer
from multilevel.inference.ddf import coef_table, contrast, kenward_roger, satterthwaite_df, vcov_kr
from multilevel.lmm.results import LmerFit

from ..conftest import reference, reference_data

SATT_CASES = [
    "hsb_lmer_reml",
    "hsb_lmer_ml",
    "hsb_lmer_intercept",
    "hsb_lmer_uncorr",
    "sleep_reml",
    "sleep_ml",
    "sleep_uncorr",
    "dyestuff_reml",
    "dyestuff2_reml",
    "penicillin_reml",
    "pastes_reml",
]
KR_CASES = [
    "hsb_lmer_reml",
    "hsb_lmer_intercept",
    "hsb_lmer_uncorr",
    "sleep_reml",
    "sleep_uncorr",
    "dyestuff_reml",
    "dyestuff2_reml",
    "penicillin_reml",
    "pastes_reml",
]

_fits: dict = {}


def fitted(case: str) -> tuple[LmerFit, dict]:
    if case not in _fits:
        ref = reference(case)
        data = reference_data(ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _fits[case] = (lmer(ref["formula"], data, REML=ref["method"] == "REML"), ref)
    return _fits[case]


def at_reference_theta(case: str) -> tuple[LmerFit, dict]:
    """The same model evaluated at lme4's θ (no optimisation)."""
    fit, ref = fitted(case)
    theta = np.array([ref["theta"][k] for k in fit.theta.index])
    rec = dataclasses.replace(fit.optinfo, theta=theta)
    return LmerFit(fit.design, fit.criterion, rec, REML=fit.REML), ref


def _rel(ours: pd.Series, ref: dict) -> float:
    return max(abs(ours[k] / v - 1) for k, v in ref.items())


def _rel_log(ours: pd.Series, ref: dict) -> float:
    return max(abs(np.log(ours[k]) / np.log(v) - 1) for k, v in ref.items())


def _p_through_t_and_df(tab: pd.DataFrame, ref_df: dict, ref_p: dict) -> float:
    """p-values checked through what they come from: ours must be 2 P(T_df > |t|)
    of our own t and DF, and that formula at R's DF must give R's p (log scale).
    Comparing p directly would magnify the DF tolerance: a tail p of 1e-41
    moves by ~1e-4 relative when the DF moves by 1e-5."""
    t, df = tab["t value"].abs(), tab["df"]
    np.testing.assert_allclose(tab["Pr(>|t|)"], 2 * stats.t.sf(t, df), rtol=1e-12, atol=1e-300)
    at_ref_df = pd.Series({k: 2 * stats.t.sf(t[k], ref_df[k]) for k in ref_p})
    return _rel_log(at_ref_df, ref_p)


@pytest.mark.parametrize("case", SATT_CASES)
def test_satterthwaite_matches_lmertest(case):
    fit, ref = fitted(case)
    tab = coef_table(fit, ddf="Satterthwaite")
    assert list(tab.columns) == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    assert _rel(tab["df"], ref["satterthwaite_df"]) < 1e-3
    assert _rel_log(tab["Pr(>|t|)"], ref["satterthwaite_p"]) < 1e-3


@pytest.mark.parametrize("case", SATT_CASES)
def test_satterthwaite_at_reference_theta(case):
    fit, ref = at_reference_theta(case)
    tab = coef_table(fit, ddf="Satterthwaite")
    assert _rel(tab["df"], ref["satterthwaite_df"]) < 1e-5
    assert _p_through_t_and_df(tab, ref["satterthwaite_df"], ref["satterthwaite_p"]) < 1e-7


@pytest.mark.parametrize("case", KR_CASES)
def test_kenward_roger_matches_pbkrtest(case):
    fit, ref = fitted(case)
    tab = coef_table(fit, ddf="Kenward-Roger")
    assert _rel(tab["df"], ref["kr_df"]) < 1e-3
    assert _rel(tab["Std. Error"], ref["kr_se"]) < 1e-3
    assert _rel_log(tab["Pr(>|t|)"], ref["kr_p"]) < 1e-3


@pytest.mark.parametrize("case", KR_CASES)
def test_kenward_roger_at_reference_theta(case):
    fit, ref = at_reference_theta(case)
    tab = coef_table(fit, ddf="KR")
    assert _rel(tab["df"], ref["kr_df"]) < 1e-8
    assert _rel(tab["Std. Error"], ref["kr_se"]) < 1e-8
    assert _p_through_t_and_df(tab, ref["kr_df"], ref["kr_p"]) < 1e-7


def test_kenward_roger_vcov_is_inflated():
    fit, _ = fitted("hsb_lmer_reml")
    V, VA = fit.vcov.to_numpy(), vcov_kr(fit).to_numpy()
    # Φ_A − Φ = 2ΦUΦ: positive semidefinite here, and symmetric
    assert np.allclose(VA, VA.T)
    assert np.linalg.eigvalsh(VA - V).min() > -1e-12
    assert (np.diag(VA) > np.diag(V)).all()


def test_no_ddf_is_lme4_table():
    fit, ref = fitted("sleep_reml")
    tab = coef_table(fit, ddf="none")
    assert list(tab.columns) == ["Estimate", "Std. Error", "t value"]
    assert np.allclose(tab["Std. Error"], [ref["se"][k] for k in tab.index], rtol=1e-4)


def test_contrast_by_names_matches_matrix():
    fit, _ = fitted("hsb_lmer_reml")
    names = list(fit.fixef.index)
    L = np.zeros(len(names))
    L[names.index("cses")] = 1.0
    L[names.index("cses:sectorCatholic")] = 1.0
    by_name = contrast(fit, {"catholic slope": {"cses": 1, "cses:sectorCatholic": 1}})
    by_vec = contrast(fit, L)
    assert by_name.index == ["catholic slope"]
    assert np.allclose(by_name.to_numpy(), by_vec.to_numpy())
    V = fit.vcov.to_numpy()
    assert by_name["Estimate"].iloc[0] == pytest.approx(L @ fit.fixef.to_numpy())
    assert by_name["Std. Error"].iloc[0] == pytest.approx(np.sqrt(L @ V @ L))
    # a single coefficient reproduces its row of the table
    one = contrast(fit, "meanses")
    assert np.allclose(one.to_numpy(), coef_table(fit).loc[["meanses"]].to_numpy())


@pytest.mark.parametrize("ddf", ["Satterthwaite", "Kenward-Roger"])
def test_joint_test_one_row_is_t_squared(ddf):
    fit, _ = fitted("hsb_lmer_reml")
    row = contrast(fit, "sectorCatholic", ddf=ddf)
    joint = contrast(fit, "sectorCatholic", ddf=ddf, joint=True)
    assert joint["F value"].iloc[0] == pytest.approx(row["t value"].iloc[0] ** 2, rel=1e-10)
    assert joint["DenDF"].iloc[0] == pytest.approx(row["df"].iloc[0], rel=1e-8)
    assert joint["Pr(>F)"].iloc[0] == pytest.approx(row["Pr(>|t|)"].iloc[0], rel=1e-6)


@pytest.mark.parametrize("ddf", ["Satterthwaite", "Kenward-Roger"])
def test_joint_test_invariant_to_row_basis(ddf):
    fit, _ = fitted("hsb_lmer_reml")
    L = np.zeros((2, 6))
    L[0, 1] = L[1, 4] = 1.0  # meanses, meanses:cses
    M = np.array([[1.0, 2.0], [-0.5, 3.0]])
    a = contrast(fit, L, ddf=ddf, joint=True)
    b = contrast(fit, M @ L, ddf=ddf, joint=True)
    assert a["NumDF"].iloc[0] == 2
    assert a["F value"].iloc[0] == pytest.approx(b["F value"].iloc[0], rel=1e-9)
    if ddf == "Kenward-Roger":  # KR's moment matching depends only on the row space
        assert a["DenDF"].iloc[0] == pytest.approx(b["DenDF"].iloc[0], rel=1e-8)
    assert 2 < a["DenDF"].iloc[0] < fit.nobs


def test_satterthwaite_df_scale_free():
    fit, _ = fitted("sleep_reml")
    d1 = satterthwaite_df(fit, np.array([[1.0, 3.0]]))
    d2 = satterthwaite_df(fit, np.array([[10.0, 30.0]]))
    assert d1 == pytest.approx(d2, rel=1e-10)


def test_errors():
    fit, _ = fitted("sleep_reml")
    with pytest.raises(ModelError, match="not a fixed effect"):
        contrast(fit, {"a": {"Dayz": 1}})
    with pytest.raises(ModelError, match="columns"):
        contrast(fit, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="ddf"):
        coef_table(fit, ddf="Welch")
    ml, _ = fitted("sleep_ml")
    with pytest.raises(ModelError, match="REML"):
        kenward_roger(ml)
