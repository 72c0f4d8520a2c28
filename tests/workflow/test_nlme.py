"""nlme's lme() interface against the nlme reference results.

Two kinds of comparison:

* our fit (its own optimum) against nlme's: fixed effects within 1e-3 of their
  SEs, SEs 1e-3 relative, logLik within 1e-4 (ours may be higher), AIC/BIC
  within 1e-3, DF exactly, p-values 1e-3 relative (5e-2 where p < 1e-6: such
  p-values amplify the t differences of the two optima), random-effect SDs
  1e-2 relative, correlations 0.01.  The printed summary has nlme's layout
  line for line; lines printing 7-digit estimates differ in the last digits
  because nlme's optimum is slightly off (ours has the higher likelihood).
* the same model evaluated at nlme's own θ (from its reported VarCorr):
  everything that is a function of θ (estimates, SEs, DF, p-values, fixed-effect
  intervals, the printed summary) must then agree with nlme to rounding, which
  checks the formulas and the text formatting exactly.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from multilevel.errors import FormulaError, ModelError
from multilevel.inference.nlme_df import between_within_df
from multilevel.lmm.results import LmerFit
from multilevel.optimize.record import OptRecord
from multilevel.workflow.nlme import (
    LmeFit,
    lme,
    lme4_formula,
    lme_from_formula,
    nlme_random,
)
from multilevel.workflow.nlme_report import deparse_formula, format_real, zapsmall

from ..conftest import reference, reference_data

FIXED = "mathach ~ meanses*cses + sector*cses"
CASES = ["hsb_nlme_reml", "hsb_nlme_ml"]
_fits: dict = {}


def fitted(case: str) -> tuple[LmeFit, dict]:
    if case not in _fits:
        ref = reference(case)
        data = reference_data(ref)
        data.attrs["name"] = "Bryk"
        _fits[case] = (lme(FIXED, "~ cses | school", data, method=ref["method"]), ref)
    return _fits[case]


def at_reference_theta(case: str) -> tuple[LmeFit, dict]:
    """The model at nlme's estimates: θ from nlme's VarCorr and σ."""
    key = case + "@R"
    if key not in _fits:
        fit, ref = fitted(case)
        vc = {(r["var1"], r["var2"]): r["vcov"] for r in ref["varcorr"]}
        S = np.array(
            [
                [vc[("(Intercept)", None)], vc[("(Intercept)", "cses")]],
                [vc[("(Intercept)", "cses")], vc[("cses", None)]],
            ]
        )
        T = np.linalg.cholesky(S / ref["sigma"] ** 2)
        theta = np.array([T[0, 0], T[1, 0], T[1, 1]])  # lme4's order: by columns
        record = OptRecord("none", "FIXED", True, 0, float("nan"), theta, np.zeros(3))
        lm = LmerFit(
            fit.lmer.design, fit.lmer.criterion, record, REML=fit.lmer.REML, data_name="Bryk"
        )
        _fits[key] = (LmeFit(lm, fit.levels, fixed=FIXED, random="~ cses | school"), ref)
    return _fits[key]


def _series(d: dict) -> pd.Series:
    return pd.Series(d, dtype=float)


# --------------------------------------------------------------------------- our fit vs nlme


@pytest.mark.parametrize("case", CASES)
def test_fixed_effects_and_tests(case):
    fit, ref = fitted(case)
    tt = fit.tTable
    assert list(tt.index) == ref["fixef_names"]
    assert list(tt.columns) == ["Value", "Std.Error", "DF", "t-value", "p-value"]
    se_ref = _series(ref["se"])
    np.testing.assert_allclose((tt["Value"] - _series(ref["fixef"])) / se_ref, 0, atol=1e-3)
    np.testing.assert_allclose(tt["Std.Error"], se_ref, rtol=1e-3)
    assert tt["DF"].to_dict() == ref["df"]
    p_ref = _series(ref["p"])
    p = tt["p-value"]
    moderate = p_ref > 1e-6
    np.testing.assert_allclose(p[moderate], p_ref[moderate], rtol=1e-3)
    tiny = (p_ref > 0) & ~moderate
    np.testing.assert_allclose(p[tiny], p_ref[tiny], rtol=5e-2)
    assert (p[p_ref == 0] < 1e-300).all()
    vref = np.array(ref["vcov"])
    np.testing.assert_allclose(fit.vcov.to_numpy(), vref, rtol=2e-3, atol=1e-3 * np.abs(vref).max())


@pytest.mark.parametrize("case", CASES)
def test_likelihood_and_information_criteria(case):
    fit, ref = fitted(case)
    assert fit.loglik >= ref["loglik"] - 1e-4
    assert fit.loglik - ref["loglik"] < 1e-2
    assert fit.aic == pytest.approx(ref["aic"], abs=1e-3)
    assert fit.bic == pytest.approx(ref["bic"], abs=1e-3)
    assert fit.df_model == ref["df_model"]
    assert fit.nobs == ref["nobs"]
    assert fit.ngroups == ref["ngroups"]
    # nlme's REML BIC uses n - p, ML uses n
    n_eff = fit.nobs - (len(fit.fixef) if ref["method"] == "REML" else 0)
    assert fit.bic - fit.aic == pytest.approx(fit.df_model * (np.log(n_eff) - 2), rel=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_variance_components(case):
    fit, ref = fitted(case)
    vc = fit.lmer.varcorr
    for row in ref["varcorr"]:
        grp, v1, v2 = row["group"], row["var1"], row["var2"]
        if grp == "Residual":
            ours = fit.sigma
        else:
            sel = (vc.grp == grp) & (vc.var1 == v1)
            sel &= vc.var2.isna() if v2 is None else (vc.var2 == v2)
            ours = float(vc.loc[sel, "sdcor"].iloc[0])
        if v2 is None:
            assert ours == pytest.approx(row["sdcor"], rel=1e-2)
        else:
            assert ours == pytest.approx(row["sdcor"], abs=0.01)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_random_effects_residuals_fitted(case):
    fit, ref = fitted(case)
    re = fit.ranef["school"]
    ref_re = pd.DataFrame(ref["ranef"]["school"]).T
    assert list(re.index) == list(ref_re.index)
    for col in re.columns:
        scale = np.abs(ref_re[col]).max()
        np.testing.assert_allclose(re[col], ref_re[col], atol=1e-2 * scale)
    np.testing.assert_allclose(fit.fitted().iloc[:20], ref["fitted_head"], atol=1e-3)
    np.testing.assert_allclose(fit.residuals().iloc[:20], ref["resid_head"], atol=1e-3)
    q = np.quantile(fit.residuals(type="pearson"), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(q, ref["std_resid_quantiles"], atol=1e-4)
    # level 0: population predictions; the delegated lme4 accessors still work
    pop = fit.fitted(level=0).to_numpy()
    np.testing.assert_allclose(pop, fit.lmer.design.X @ fit.fixef.to_numpy())
    assert fit.theta.equals(fit.lmer.theta)
    coef = fit.coef["school"]
    np.testing.assert_allclose(coef["cses"], fit.fixef["cses"] + re["cses"])


@pytest.mark.parametrize("case", CASES)
def test_intervals(case):
    fit, ref = fitted(case)
    iv = fit.intervals()
    fixed_ref = pd.DataFrame(ref["intervals"]["fixed"], index=["lower", "est.", "upper"]).T
    se = _series(ref["se"])
    np.testing.assert_allclose(
        (iv["fixed"] - fixed_ref.to_numpy()).to_numpy() / se.to_numpy()[:, None], 0, atol=1e-3
    )
    np.testing.assert_allclose(iv["sigma"], ref["intervals"]["sigma"], rtol=1e-3)
    ours = iv["reStruct"]["school"]
    theirs = ref["intervals"]["reStruct"]["school"]
    assert list(ours.index) == list(theirs)
    # the well-determined SD agrees; for sd(cses) and the correlation nlme's
    # finite-difference Hessian (step ~6e-6) is dominated by rounding, so only
    # the estimates and the ordering are compared
    np.testing.assert_allclose(ours.loc["sd((Intercept))"], theirs["sd((Intercept))"], rtol=2e-3)
    for name in ("sd(cses)", "cor((Intercept),cses)"):
        lo, est, hi = ours.loc[name]
        assert lo < est < hi
        assert est == pytest.approx(theirs[name][1], abs=1e-2)
    assert (ours.loc["cor((Intercept),cses)"].abs() < 1).all()


# --------------------------------------------------------------------------- at nlme's θ


@pytest.mark.parametrize("case", CASES)
def test_exact_at_reference_theta(case):
    fit, ref = at_reference_theta(case)
    assert fit.loglik == pytest.approx(ref["loglik"], abs=1e-8)
    tt = fit.tTable
    np.testing.assert_allclose(tt["Value"], _series(ref["fixef"]), rtol=1e-9)
    np.testing.assert_allclose(tt["Std.Error"], _series(ref["se"]), rtol=1e-9)
    np.testing.assert_allclose(tt["t-value"], _series(ref["t"]), rtol=1e-9)
    np.testing.assert_allclose(tt["p-value"], _series(ref["p"]), rtol=1e-6, atol=1e-300)
    assert fit.aic == pytest.approx(ref["aic"], abs=1e-7)
    assert fit.bic == pytest.approx(ref["bic"], abs=1e-7)
    fixed_ref = pd.DataFrame(ref["intervals"]["fixed"], index=["lower", "est.", "upper"]).T
    np.testing.assert_allclose(fit.intervals(which="fixed")["fixed"], fixed_ref, rtol=1e-9)
    np.testing.assert_allclose(
        fit.intervals()["reStruct"]["school"].loc["sd((Intercept))"],
        ref["intervals"]["reStruct"]["school"]["sd((Intercept))"],
        rtol=1e-3,
    )
    np.testing.assert_allclose(fit.intervals()["sigma"], ref["intervals"]["sigma"], rtol=2e-4)


@pytest.mark.parametrize("case", CASES)
def test_summary_text_exact_at_reference_theta(case):
    fit, ref = at_reference_theta(case)
    assert str(fit.summary()) == ref["printed_summary"]


_NUMBER = re.compile(r"-?\d+\.?\d*(?:e[+-]\d+)?")


@pytest.mark.parametrize("case", CASES)
def test_summary_text_of_our_fit(case):
    fit, ref = fitted(case)
    ours = str(fit.summary()).split("\n")
    theirs = ref["printed_summary"].split("\n")
    assert len(ours) == len(theirs)
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    # measured: 24 of 35 (REML) and 25 of 35 (ML) lines identical; the others
    # print 7-8 significant digits of estimates, SEs, t-values or residual
    # quantiles, where the two optima differ
    assert same >= 24
    for a, b in zip(ours, theirs, strict=True):
        if a == b:
            continue
        assert _NUMBER.sub("#", a).replace(" ", "") == _NUMBER.sub("#", b).replace(" ", "")
        na = [float(x) for x in _NUMBER.findall(a)]
        nb = [float(x) for x in _NUMBER.findall(b)]
        np.testing.assert_allclose(na, nb, rtol=2e-3, atol=1e-4)
    structure = [
        "Random effects:",
        " Formula: ~cses | school",
        " Structure: General positive-definite, Log-Cholesky parametrization",
        "            StdDev    Corr  ",
        "Fixed effects:  mathach ~ meanses * cses + sector * cses ",
        "                        Value Std.Error   DF  t-value p-value",
        " Correlation: ",
        "Standardized Within-Group Residuals:",
        "Number of Observations: 7185",
        "Number of Groups: 160 ",
    ]
    for line in structure:
        assert line in ours


# --------------------------------------------------------------------------- other models


def test_nested_random_effects_match_lmer_pastes():
    ref = reference("pastes_reml")
    data = reference_data(ref)
    data.attrs["name"] = "Pastes"
    fit = lme("strength ~ 1", "~ 1 | batch/cask", data)
    assert lme4_formula("strength ~ 1", "~ 1 | batch/cask") == (
        "strength ~ 1 + (1 | batch) + (1 | cask:batch)"
    )
    assert fit.loglik >= ref["loglik"] - 1e-6
    assert fit.loglik - ref["loglik"] < 1e-4
    assert fit.aic == pytest.approx(ref["aic"], abs=1e-4)
    assert fit.bic == pytest.approx(ref["reml_criterion"] + 4 * np.log(60 - 1), abs=1e-4)
    sd = {r["group"]: r["sdcor"] for r in ref["varcorr"]}
    vc = fit.lmer.varcorr.set_index("grp")["sdcor"]
    assert vc["cask:batch"] == pytest.approx(sd["cask:batch"], rel=1e-3)
    assert vc["batch"] == pytest.approx(sd["batch"], rel=1e-3)
    assert fit.sigma == pytest.approx(sd["Residual"], rel=1e-3)
    assert fit.fixef["(Intercept)"] == pytest.approx(ref["fixef"]["(Intercept)"], rel=1e-6)
    # nlme names: levels by their innermost factor, inner groups "batch/cask"
    assert fit.ngroups == {"batch": 10, "cask": 30}
    assert list(fit.ranef) == ["batch", "cask"]
    cask = fit.ranef["cask"]
    assert list(cask.index[:4]) == ["A/a", "A/b", "A/c", "B/a"]
    lme4_cask = fit.lmer.ranef["cask:batch"]["(Intercept)"]
    assert cask.loc["B/c", "(Intercept)"] == pytest.approx(lme4_cask["c:B"])
    coef = fit.coef["cask"]["(Intercept)"]
    expected = (
        fit.fixef["(Intercept)"]
        + fit.ranef["batch"].loc["D", "(Intercept)"]
        + cask.loc["D/b", "(Intercept)"]
    )
    assert coef["D/b"] == pytest.approx(expected)
    np.testing.assert_allclose(fit.fitted().iloc[:20], ref["fitted_head"], atol=1e-4)
    # within-cask DF: 60 observations - 30 casks - 0 within-cask terms
    assert fit.df.to_dict() == {"(Intercept)": 30}
    text = str(fit.summary()).split("\n")
    assert text[-3:] == [
        "Number of Groups: ",
        "          batch cask %in% batch ",
        "             10              30 ",
    ]
    assert " Formula: ~1 | batch" in text
    assert " Formula: ~1 | cask %in% batch" in text
    assert "        (Intercept)  Residual" in text
    assert " Correlation: " not in text
    # the dict form (nlme's list(batch = ~1, cask = ~1)) is the same model
    fit2 = lme("strength ~ 1", {"batch": "~ 1", "cask": "~ 1"}, data)
    assert fit2.loglik == pytest.approx(fit.loglik, abs=1e-8)


def _check_anova_row(fit, row):
    assert fit.loglik >= row["logLik"] - 1e-4
    assert fit.loglik - row["logLik"] < 1e-2
    assert fit.df_model == row["df"]
    assert fit.aic == pytest.approx(row["AIC"], abs=1e-3)
    assert fit.bic == pytest.approx(row["BIC"], abs=1e-3)


def test_explicit_intercept_and_slope_match_nlme_anova(hsb):
    ref = reference("hsb_anova")["extra"]["nlme"]["table"]
    _check_anova_row(lme(FIXED, "~ 1 + cses | school", hsb, method="ML"), ref[1])


def test_random_intercept_matches_nlme_anova(hsb):
    # once a bug: the first BFGS step landed at θ = 1e-16, a stationary point
    ref = reference("hsb_anova")["extra"]["nlme"]["table"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m0 = lme(FIXED, "~ 1 | school", hsb, method="ML")
    _check_anova_row(m0, ref[0])


def test_random_intercept_summary_layout(hsb):
    m0 = lme(FIXED, "~ 1 | school", hsb, method="REML")
    lines = str(m0.summary()).split("\n")
    i = lines.index(" Formula: ~1 | school")
    assert lines[i + 1] == "        (Intercept) Residual"
    assert re.fullmatch(r"StdDev:    \d\.\d{6} \d\.\d{6}", lines[i + 2])
    assert lines[i - 1] == "Random effects:"
    assert lines[i + 3] == ""
    assert m0.df.to_dict() == reference("hsb_nlme_reml")["df"]


def test_lme_from_lme4_formula(hsb):
    fit, _ = fitted("hsb_nlme_reml")
    other = lme_from_formula("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb)
    assert other.loglik == pytest.approx(fit.loglik, abs=1e-8)
    assert nlme_random("y ~ x - 1 + (1 | a) + (x | b:a)") == ("y ~ x - 1", {"a": "~ 1", "b": "~ x"})
    assert nlme_random("y ~ (1 | a/b)") == ("y ~ 1", "~ 1 | a/b")
    with pytest.raises(ModelError, match="nest"):
        nlme_random("y ~ x + (1 | a) + (1 | b)")
    d = fit.to_dict()
    assert d["model"] == "lme"
    assert d["df"]["meanses"] == 157
    assert d["bic"] == fit.bic


@pytest.mark.filterwarnings("ignore::multilevel.SingularFitWarning")  # y is pure noise
def test_between_within_df_three_levels():
    """Students in schools in districts: terms classified by the first level
    within whose groups they are constant."""
    rng = np.random.default_rng(1)
    n_d, n_s, n_i = 5, 4, 10  # 5 districts x 4 schools x 10 students
    district = np.repeat(np.arange(n_d), n_s * n_i)
    school = np.repeat(np.arange(n_d * n_s), n_i)
    d_x = rng.normal(size=n_d)[district]
    s_x = rng.normal(size=n_d * n_s)[school]
    s_f = rng.integers(0, 3, size=n_d * n_s)[school]  # a school-level factor
    x = rng.normal(size=n_d * n_s * n_i)
    data = pd.DataFrame(
        {
            "y": rng.normal(size=x.size),
            "district": district,
            "school": school,
            "d_x": d_x,
            "s_x": s_x,
            "s_f": pd.Categorical(np.array(["a", "b", "c"])[s_f]),
            "x": x,
        }
    )
    fit = lme("y ~ d_x + s_x + s_f + x + d_x:x", "~ 1 | district/school", data)
    df = fit.df
    # level 1 (districts): d_x -> 5 - (1 + 1); level 2 (schools): s_x, s_f (2 columns)
    # -> 20 - (5 + 3); within schools: x, d_x:x and the intercept -> 200 - (20 + 2)
    assert df.to_dict() == {
        "(Intercept)": 178,
        "d_x": 3,
        "s_x": 12,
        "s_fb": 12,
        "s_fc": 12,
        "x": 178,
        "d_x:x": 178,
    }
    assert fit.fixef_level.to_dict() == {
        "(Intercept)": 3,
        "d_x": 1,
        "s_x": 2,
        "s_fb": 2,
        "s_fc": 2,
        "x": 3,
        "d_x:x": 3,
    }
    # the function itself, on a single level: within DF n - groups - within columns
    X = np.column_stack([np.ones(200), d_x, x])
    dfs, lv = between_within_df(X, np.array([0, 1, 2]), [school], intercept=True)
    assert dfs.tolist() == [200 - 20 - 1, 20 - 1 - 1, 200 - 20 - 1]
    assert lv.tolist() == [2, 1, 2]


# --------------------------------------------------------------------------- errors


def test_random_formula_errors_have_positions(hsb):
    with pytest.raises(FormulaError) as e:
        lme(FIXED, "~ cses", hsb)
    assert e.value.position == len("~ cses")
    assert "|" in str(e.value)
    with pytest.raises(FormulaError) as e:
        lme(FIXED, "cses | school", hsb)
    assert e.value.position == 0
    with pytest.raises(FormulaError) as e:
        lme(FIXED, "~ cses || school", hsb)
    assert e.value.position == len("~ cses ")
    with pytest.raises(FormulaError) as e:
        lme(FIXED, "~ cses + | school", hsb)
    assert e.value.position == len("~ cses ")
    with pytest.raises(FormulaError) as e:
        lme(FIXED, "~ cses | school + sector", hsb)
    assert e.value.position == len("~ cses | school ")
    with pytest.raises(FormulaError) as e:
        lme(FIXED + " + (1 | school)", "~ 1 | school", hsb)
    assert e.value.position == len(FIXED + " + (1 ")
    with pytest.raises(FormulaError):
        lme(FIXED, {"school": "~ 1 | school"}, hsb)
    with pytest.raises(ModelError):
        lme(FIXED, "~ 1 | school", hsb, method="OLS")


def test_boundary_fit_refuses_variance_intervals():
    ref = reference("dyestuff2_reml")
    data = reference_data(ref)
    with pytest.warns(UserWarning):
        fit = lme("Yield ~ 1", "~ 1 | Batch", data)
    assert "fixed" in fit.intervals(which="fixed")
    with pytest.raises(ModelError, match="boundary"):
        fit.intervals()


# --------------------------------------------------------------------------- formatting


def test_format_real_follows_r():
    # values checked against R 4.2's format()
    assert format_real([0, 0, 1e-4, 5e-4]) == ["0e+00", "0e+00", "1e-04", "5e-04"]
    assert format_real([0.0, 0.0]) == ["0", "0"]
    assert format_real([0.2345, 0.0]) == ["0.2345", "0.0000"]
    assert format_real([252.2431529829732, 10.467011984286362]) == ["252.24315", " 10.46701"]
    assert format_real([1760.4604]) == ["1760.46"]
    assert format_real([-862.09351]) == ["-862.0935"]
    assert format_real([123456789.0]) == ["123456789"]
    assert format_real([1e-20, 1.0]) == ["1e-20", "1e+00"]
    assert format_real([-0.0]) == ["0"]
    assert format_real([np.nan, 1.5]) == [" NA", "1.5"]
    assert zapsmall(np.array([60.853889, 4.0047637])).tolist() == [60.85389, 4.00476]


def test_deparse_formula_follows_r():
    assert deparse_formula(FIXED) == "mathach ~ meanses * cses + sector * cses"
    assert deparse_formula("~ cses") == "~cses"
    assert deparse_formula("y~a:b+I(x^2) - 1") == "y ~ a:b + I(x^2) - 1"
    assert deparse_formula("y ~ log(x+1) + a/b + c %in% d") == ("y ~ log(x + 1) + a/b + c %in% d")
    assert deparse_formula("y ~ poly(x,2)") == "y ~ poly(x, 2)"
