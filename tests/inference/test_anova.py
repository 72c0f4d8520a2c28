"""Likelihood-ratio tests: anova() against lme4's anova table (hsb_anova), and
ranova()'s reduced models against the same models fitted directly."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from multilevel import ModelError, lmer
from multilevel.inference.anova import anova, boundary_pvalue, ranova, refit_ml

from ..conftest import reference, reference_data

FIXED = "mathach ~ meanses*cses + sector*cses"


@pytest.fixture(scope="module")
def hsb_fits():
    ref = reference("hsb_anova")
    data = reference_data(ref)
    m0 = lmer(FIXED + " + (1 | school)", data)
    m1 = lmer(FIXED + " + (cses | school)", data)
    return ref, data, m0, m1


def test_anova_matches_lme4(hsb_fits):
    ref, _, m0, m1 = hsb_fits
    # REML fits are refit by ML, as lme4's anova does; the order of the
    # arguments does not matter (rows are sorted by npar)
    tab = anova(m1, m0, names=["m1", "m0"])
    assert list(tab.index) == ["m0", "m1"]
    for row, expect in zip(tab.itertuples(), ref["extra"]["table"], strict=True):
        assert row.npar == expect["npar"]
        for col in ("AIC", "BIC", "logLik", "deviance"):
            assert getattr(row, col) == pytest.approx(expect[col], abs=1e-4)
    assert tab["Chisq"].iloc[1] == pytest.approx(ref["extra"]["chisq"], abs=1e-4)
    assert tab["Df"].iloc[1] == ref["extra"]["df"]
    assert tab["Pr(>Chisq)"].iloc[1] == pytest.approx(ref["extra"]["p"], abs=1e-5)
    # one more random-effect column (cses), same fixed effects: ½χ²₁ + ½χ²₂
    x = tab["Chisq"].iloc[1]
    mix = 0.5 * math.erfc(math.sqrt(x / 2)) + 0.5 * math.exp(-x / 2)
    assert tab["Pr(>Chisq) boundary"].iloc[1] == pytest.approx(mix, rel=1e-12)
    assert tab["Pr(>Chisq) boundary"].iloc[1] < tab["Pr(>Chisq)"].iloc[1]


def test_refit_ml_reaches_ml_reference(hsb_fits):
    _, _, _, m1 = hsb_fits
    ml = refit_ml(m1)
    assert not ml.REML and m1.REML
    assert ml.loglik >= reference("hsb_lmer_ml")["loglik"] - 1e-4
    assert refit_ml(ml) is ml


def test_anova_keywords_and_refit_false(hsb_fits):
    _, _, m0, m1 = hsb_fits
    tab = anova(small=m0, large=m1, refit=False)
    assert list(tab.index) == ["small", "large"]
    # REML criteria compared as they are (same fixed effects)
    assert tab["logLik"].to_list() == pytest.approx([m0.loglik, m1.loglik], abs=1e-9)


def test_anova_refuses_incomparable(hsb_fits):
    _, data, m0, m1 = hsb_fits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = lmer("mathach ~ cses + (1 | school)", data)
        sub = lmer(FIXED + " + (1 | school)", data.iloc[:3000])
    with pytest.raises(ModelError, match="fixed effects"):
        anova(other, m1, refit=False)
    with pytest.raises(ModelError, match="same data"):
        anova(sub, m0)
    with pytest.raises(ModelError, match="at least two"):
        anova()
    assert anova(m0).attrs["heading"].startswith("Type III")  # one model: its own table


def test_boundary_pvalue_mixture():
    # ½χ²₀ + ½χ²₁: half the naive p-value
    assert boundary_pvalue(3.0, 1) == pytest.approx(0.5 * math.erfc(math.sqrt(1.5)), rel=1e-12)
    assert boundary_pvalue(0.0, 1) == pytest.approx(1.0)
    assert math.isnan(boundary_pvalue(1.0, 0))


def _lm_reml_loglik(X: np.ndarray, y: np.ndarray) -> float:
    n, p = X.shape
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    rss = float(np.sum((y - X @ beta) ** 2))
    _, logdet = np.linalg.slogdet(X.T @ X)
    return -0.5 * (logdet + (n - p) * (1 + np.log(2 * np.pi * rss / (n - p))))


def test_ranova_sleep():
    ref = reference("sleep_reml")
    data = reference_data(ref)
    fit = lmer(ref["formula"], data)
    tab = ranova(fit)
    assert list(tab.index) == ["<none>", "Days in (1 + Days | Subject)"]
    reduced = lmer("Reaction ~ Days + (1 | Subject)", data)
    assert tab["logLik"].iloc[1] == pytest.approx(reduced.loglik, abs=1e-6)
    assert tab["npar"].to_list() == [6, 4]
    assert tab["Df"].iloc[1] == 2
    assert tab["LRT"].iloc[1] == pytest.approx(2 * (fit.loglik - reduced.loglik), abs=1e-5)
    # dropping the only term leaves the linear model (its REML log-likelihood)
    r2 = ranova(reduced)
    lm = _lm_reml_loglik(reduced.design.X, reduced.design.y)
    assert r2.loc["(1 | Subject)", "logLik"] == pytest.approx(lm, abs=1e-8)
    assert r2.loc["(1 | Subject)", "Pr(>Chisq) boundary"] == pytest.approx(
        0.5 * r2.loc["(1 | Subject)", "Pr(>Chisq)"], rel=1e-12
    )


def test_ranova_crossed_terms():
    ref = reference("penicillin_reml")
    data = reference_data(ref)
    fit = lmer(ref["formula"], data)
    tab = ranova(fit)
    assert list(tab.index) == ["<none>", "(1 | plate)", "(1 | sample)"]
    for dropped, kept in (("plate", "sample"), ("sample", "plate")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alone = lmer(f"diameter ~ 1 + (1 | {kept})", data)
        # the one-parameter optimum by a bounded scalar search on its criterion
        crit = alone.criterion
        best = minimize_scalar(
            lambda t, c=crit: c(np.array([t])), bounds=(0.0, 10.0), method="bounded"
        )
        expect = -0.5 * min(best.fun, crit(np.zeros(1)))
        assert tab.loc[f"(1 | {dropped})", "logLik"] == pytest.approx(expect, abs=1e-6)
    assert (tab["npar"].iloc[1:] == 3).all()


def test_ranova_groups_columns_by_term():
    ref = reference("sleep_reml")
    data = reference_data(ref)
    data["Days2"] = (data["Days"] - 4.5) ** 2 / 10
    fit = lmer("Reaction ~ Days + (Days + Days2 | Subject)", data)
    tab = ranova(fit)
    assert list(tab.index) == [
        "<none>",
        "Days in (1 + Days + Days2 | Subject)",
        "Days2 in (1 + Days + Days2 | Subject)",
    ]
    # removing Days2 (its variance and two covariances) leaves the sleepstudy model
    assert tab["Df"].iloc[2] == 3
    assert tab["logLik"].iloc[2] == pytest.approx(ref["loglik"], abs=1e-4)


def test_anova_of_glmms_matches_lme4_on_cbpp():
    """lme4: anova(glmer(... ~ 1 + (1|herd)), glmer(... ~ period + (1|herd)))
    gives Chisq 25.61006 on 3 Df (Laplace)."""
    import multilevel as ml

    cbpp = ml.datasets.load("cbpp")
    lhs = "cbind(incidence, size - incidence)"
    g0 = ml.glmer(f"{lhs} ~ 1 + (1 | herd)", cbpp, "binomial")
    g1 = ml.glmer(f"{lhs} ~ period + (1 | herd)", cbpp, "binomial")
    tab = anova(g0, g1)
    assert tab["Chisq"].iloc[1] == pytest.approx(25.61006, abs=1e-4)
    assert int(tab["Df"].iloc[1]) == 3
    assert list(tab["npar"]) == [2, 5]
    # a negative binomial against its Poisson limit: one more parameter
    nb = ml.glmer("incidence ~ period + (1 | herd)", cbpp, "negative_binomial")
    po = ml.glmer("incidence ~ period + (1 | herd)", cbpp, "poisson")
    tab = anova(po, nb)
    assert int(tab["Df"].iloc[1]) == 1 and tab["Chisq"].iloc[1] == pytest.approx(
        2 * (nb.loglik - po.loglik)
    )
    with pytest.raises(ModelError, match="same response"):
        anova(g1, ml.glmer("cbind(size - incidence, incidence) ~ period + (1 | herd)", cbpp))
    with pytest.raises(ModelError, match="not one with the other"):
        anova(g1, ml.lmer("incidence ~ period + (1 | herd)", cbpp))
