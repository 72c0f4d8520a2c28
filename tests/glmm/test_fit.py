"""glmer against every GLMM reference case in tests/reference.

Tolerances (issue 4) and what is measured:

* log-likelihood: within 1e-3 of R's *full* log-likelihood (``loglik`` for
  Laplace, ``loglik_full_density`` for AGQ), and never lower than it by more
  than 1e-6.  For the Laplace cases ours is higher than lme4's by 2.8e-4
  (cbpp), 6.2e-5 (contra), 2.3e-4 (contra_slope), 2.3e-5 (grouse): lme4's own
  Laplace value is slightly low — our Laplace function evaluated at lme4's
  estimates already exceeds lme4's number by the same amounts, and at
  glmmTMB's estimates it equals glmmTMB's value to 1e-8
  (``test_laplace_value_matches_glmmtmb_and_lme4_is_low``).  AGQ cases agree to
  about 1e-8.
* fixed effects within 1e-3 standard errors (measured: AGQ ≤ 1.1e-4, contra
  5.6e-4, contra_slope 8e-4, grouse 4e-5) except cbpp_laplace vs lme4 (1.4e-3:
  lme4's estimates are not quite at the optimum of the Laplace deviance, see
  above; vs glmmTMB 2e-6, tested at 2e-4).
* standard errors (Hessian of the Laplace/AGQ deviance in (θ, β), as lme4)
  within 1e-2 relative (measured: AGQ ≤ 7e-6, contra 1.1e-3, contra_slope
  1.9e-3, grouse 5e-5); cbpp_laplace vs lme4 1.3e-2 (tested at 1.5e-2), vs
  glmmTMB 5e-7 (tested at 1e-4).
* random-effect SDs within 1e-2 relative, correlations within 1e-2; conditional
  modes and their conditional SDs within 1e-2 relative to the column's
  largest value.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from multilevel import DataError, ModelError, SingularFitWarning, glmer
from multilevel.glmm.results import format_pvalues

from ..conftest import reference, reference_data

# without threadpoolctl a threaded BLAS on the 181 x 181 block of grouse can
# take a minute on a busy machine (0.6 s single-threaded)
_SLOW_BLAS = [] if importlib.util.find_spec("threadpoolctl") else [pytest.mark.slow]

CASES = [
    "cbpp_laplace",
    "cbpp_agq25",
    "cbpp_glmmtmb",
    "contra_laplace",
    "contra_agq",
    "contra_slope",
    pytest.param("grouse_poisson", marks=_SLOW_BLAS),
]
FIXEF_TOL = {"cbpp_laplace": 2e-3, "cbpp_glmmtmb": 2e-4}
SE_TOL = {"cbpp_laplace": 1.5e-2, "cbpp_glmmtmb": 1e-4}

_fits: dict = {}


def fitted(case: str):
    if case not in _fits:
        ref = reference(case)
        data = reference_data(ref)
        _fits[case] = (glmer(ref["formula"], data, ref["family"], nAGQ=ref.get("nAGQ", 1)), ref)
    return _fits[case]


def _full_loglik(ref: dict) -> float:
    return ref.get("loglik_full_density", ref["loglik"])


@pytest.mark.parametrize("case", CASES)
def test_loglik(case):
    fit, ref = fitted(case)
    assert fit.nobs == ref["nobs"]
    assert fit.converged
    assert fit.loglik >= _full_loglik(ref) - 1e-6
    assert fit.loglik - _full_loglik(ref) < 1e-3
    assert fit.df_model == ref["df_model"]
    assert fit.df_resid == ref["df_resid"]
    assert fit.ngroups == ref["ngroups"]
    full_dev = -2 * _full_loglik(ref)
    assert fit.aic - (full_dev + 2 * ref["df_model"]) == pytest.approx(0, abs=2e-3)


@pytest.mark.parametrize("case", CASES)
def test_fixed_effects(case):
    fit, ref = fitted(case)
    assert list(fit.fixef.index) == ref["fixef_names"]
    est = pd.Series(ref["fixef"])[ref["fixef_names"]]
    se = pd.Series(ref["se"])[ref["fixef_names"]]
    dev = ((fit.fixef - est) / se).abs().max()
    assert dev < FIXEF_TOL.get(case, 1e-3)
    rel = ((fit.se - se) / se).abs().max()
    assert rel < SE_TOL.get(case, 1e-2)
    np.testing.assert_allclose(fit.zvalues, pd.Series(ref["z"])[ref["fixef_names"]], rtol=2e-2)
    # Wald p-values: 2Φ(−|z|); on the log scale within 3 % (they follow z)
    p_ref = pd.Series(ref["p"])[ref["fixef_names"]]
    np.testing.assert_allclose(np.log(fit.pvalues), np.log(p_ref), rtol=3e-2)


@pytest.mark.parametrize("case", CASES)
def test_variance_components(case):
    fit, ref = fitted(case)
    vc = fit.varcorr
    assert list(vc.columns) == ["grp", "var1", "var2", "vcov", "sdcor"]
    assert len(vc) == len(ref["varcorr"])
    for row, r in zip(vc.itertuples(index=False), ref["varcorr"], strict=True):
        assert row.grp == r["group"] and row.var1 == r["var1"]
        assert (row.var2 if isinstance(row.var2, str) else None) == r["var2"]
        if r["var2"] is None:
            assert row.sdcor == pytest.approx(r["sdcor"], rel=1e-2)
        else:
            assert row.sdcor == pytest.approx(r["sdcor"], abs=1e-2)
    if "theta" in ref:
        assert list(fit.theta.index) == list(ref["theta"])
        np.testing.assert_allclose(fit.theta, list(ref["theta"].values()), rtol=1e-2, atol=1e-3)


def _ref_frame(block: dict, columns) -> pd.DataFrame:
    return pd.DataFrame.from_dict(block, orient="index")[list(columns)]


@pytest.mark.parametrize("case", CASES)
def test_random_effects(case):
    fit, ref = fitted(case)
    for group, levels in ref["ranef"].items():
        ours = fit.ranef[group]
        theirs = _ref_frame(levels, ours.columns)
        ours = ours.loc[theirs.index]
        scale = theirs.abs().max()
        assert (((ours - theirs).abs()) / scale).max().max() < 1e-2
        if ref["engine"].startswith("glmmTMB"):
            continue  # glmmTMB's conditional SDs also carry the uncertainty of β̂
        sd_ours = fit.ranef_condsd[group].loc[theirs.index]
        sd_theirs = _ref_frame(ref["ranef_condsd"][group], ours.columns)
        assert (((sd_ours - sd_theirs).abs()) / sd_theirs.abs().max()).max().max() < 1e-2


@pytest.mark.parametrize("case", CASES)
def test_fitted_residuals(case):
    fit, ref = fitted(case)
    head = len(ref["fitted_head"])
    np.testing.assert_allclose(fit.fitted.iloc[:head], ref["fitted_head"], atol=2e-3)
    np.testing.assert_allclose(fit.residuals("response").iloc[:head], ref["resid_head"], atol=2e-3)
    q = np.quantile(fit.residuals("pearson"), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(q, ref["std_resid_quantiles"], atol=1e-2)


def test_laplace_value_matches_glmmtmb_and_lme4_is_low():
    """Our Laplace deviance as a function of (θ, β): at glmmTMB's estimates it
    gives glmmTMB's log-likelihood; at lme4's estimates it is higher than the
    number lme4 reports (lme4's value carries a small bias), by as much as our
    optimum is higher than lme4's."""
    fit, _ = fitted("cbpp_laplace")
    prob = fit._prob
    for case, tol in (("cbpp_glmmtmb", 1e-7), ("cbpp_laplace", None)):
        ref = reference(case)
        beta = np.array([ref["fixef"][k] for k in ref["fixef_names"]])
        sd = np.array([ref["varcorr"][0]["sdcor"]])
        # the engine's X̃ = X N⁻¹ (centred, scaled columns): β̃ = Nβ
        ll = -0.5 * prob.mode(sd, fit._basis.N @ beta).laplace
        if tol is not None:
            assert ll == pytest.approx(ref["loglik"], abs=tol)
        else:
            assert 1e-4 < ll - ref["loglik"] < 5e-4
            assert ll <= fit.loglik + 1e-9


def test_agq_loglik_relates_to_lme4_by_the_saturated_constant():
    """cbpp: lme4 prints −2 logLik 184.05 (nAGQ=1) and 100.01 (nAGQ=25).  The
    difference is not the integration: lme4's AGQ logLik leaves out
    Σ log f(y | μ = y) = −41.978.  Ours reports the full log-likelihood for
    both; they differ by 0.04."""
    lap, rl = fitted("cbpp_laplace")
    agq, ra = fitted("cbpp_agq25")
    assert agq.saturated_loglik == pytest.approx(-41.97835377, abs=1e-7)
    assert agq.loglik - agq.saturated_loglik == pytest.approx(ra["loglik"], abs=1e-6)
    assert agq.loglik_lme4 == pytest.approx(ra["loglik"], abs=1e-6)
    assert lap.loglik_lme4 == lap.loglik
    assert rl["deviance"] - ra["deviance"] == pytest.approx(
        -2 * agq.saturated_loglik + 2 * (agq.loglik - lap.loglik), abs=1e-3
    )
    assert 0 < agq.loglik - lap.loglik < 0.05
    assert fitted("contra_agq")[0].saturated_loglik == 0.0  # 0/1 response


@pytest.mark.parametrize("case", ["cbpp_laplace", "cbpp_agq25", "contra_slope"])
def test_summary_layout(case):
    fit, ref = fitted(case)
    theirs = ref["printed_summary"].splitlines()
    ours = str(fit.summary()).splitlines()
    assert ours[:2] == theirs[:2]  # title, wrapped as R does
    assert ours[2] == theirs[2]  # Family line
    start = theirs.index("Random effects:")
    assert ours[ours.index("Random effects:") + 1] == theirs[start + 1]  # header
    i, j = ours.index("Fixed effects:"), theirs.index("Fixed effects:")
    assert ours[i + 1] == theirs[j + 1]
    assert len(ours[i + 2]) == len(theirs[j + 2])
    assert "Signif. codes:" in ours[i + len(ref["fixef_names"]) + 3]
    assert "Correlation of Fixed Effects:" in ours


def test_summary_numbers_cbpp_agq():
    fit, ref = fitted("cbpp_agq25")
    text = str(fit.summary())
    for line in ref["printed_summary"].splitlines()[14:28]:
        assert line in text  # random effects, fixed-effects table, legend
    # AIC etc. are from the full log-likelihood (lme4 prints 110.0 ... 100.0)
    assert "   194.0    204.1    -92.0    184.0       51 " in text


def test_format_pvalues_as_r():
    p = np.array([1.4681e-09, 0.0010677, 0.00047448, 0.00018181])
    assert format_pvalues(p) == ["1.47e-09", "0.001068", "0.000474", "0.000182"]
    assert format_pvalues(np.array([0.74380, 1e-20])) == ["0.744", "< 2e-16"]
    assert format_pvalues(np.array([0.057647, 7.1518e-07, 0.00019576, 4.8287e-12])) == [
        "0.057647",
        "7.15e-07",
        "0.000196",
        "4.83e-12",
    ]


# -- the API -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cbpp():
    return reference_data(reference("cbpp_laplace"))


@pytest.fixture(scope="module")
def contra():
    return reference_data(reference("contra_laplace"))


def test_response_forms_give_one_fit(cbpp, contra):
    lap, _ = fitted("cbpp_laplace")
    d = cbpp.assign(prop=cbpp.incidence / cbpp["size"])
    alt = glmer("prop ~ period + (1 | herd)", d, "binomial", weights=d["size"].to_numpy())
    assert alt.loglik == pytest.approx(lap.loglik, abs=1e-8)
    np.testing.assert_allclose(alt.fixef, lap.fixef, atol=1e-6)
    np.testing.assert_allclose(alt.se, lap.se, rtol=1e-5)
    f = "use ~ age + urban + (1 | district)"
    a = glmer(f, contra, "binomial")
    b = glmer(f.replace("use", "y01"), contra.assign(y01=(contra["use"] == "Y") * 1.0))
    c = glmer(f.replace("use", "yb"), contra.assign(yb=contra["use"] == "Y"))
    for other in (b, c):
        assert other.loglik == pytest.approx(a.loglik, abs=1e-8)
        np.testing.assert_allclose(other.fixef, a.fixef, atol=1e-6)


def test_poisson_offset_shifts_the_intercept():
    ref = reference("grouse_poisson")
    data = reference_data(ref)
    f = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)"
    a = glmer(f, data, "poisson")
    b = glmer(f, data, "poisson", offset=np.full(len(data), np.log(2.0)))
    c = glmer(f.replace("~", "~ offset(lt) +"), data.assign(lt=np.log(2.0)), "poisson")
    for other in (b, c):
        assert other.loglik == pytest.approx(a.loglik, abs=1e-6)
        assert other.fixef["(Intercept)"] == pytest.approx(
            a.fixef["(Intercept)"] - np.log(2.0), abs=1e-5
        )
        np.testing.assert_allclose(other.fitted, a.fitted, rtol=1e-5)


def test_predictions_and_residual_types(cbpp):
    fit, _ = fitted("cbpp_laplace")
    np.testing.assert_allclose(fit.predict(cbpp), fit.linear_predictor, atol=1e-12)
    np.testing.assert_allclose(fit.predict(cbpp, type="response"), fit.fitted, atol=1e-12)
    pop = fit.predict(cbpp, re_form="~0")
    np.testing.assert_allclose(pop, fit.design.X @ fit.fixef.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(fit.predict(re_form="~0"), pop, atol=1e-12)
    new = cbpp.iloc[:2].copy()
    new["herd"] = pd.Categorical(["99", "1"])
    with pytest.raises(DataError, match="new levels"):
        fit.predict(new)
    p = fit.predict(new, allow_new_levels=True)
    assert p.iloc[0] == pytest.approx(fit.predict(new, re_form="~0").iloc[0])
    assert p.iloc[1] == pytest.approx(fit.linear_predictor.iloc[1])
    r = fit._prob.resp  # rows in the fitting order: sums are order-free
    mu_fit = fit.family.linkinv(fit._mode.eta)
    dev = fit.residuals("deviance")
    assert (dev**2).sum() == pytest.approx(fit.family.dev_resids(r.y, mu_fit, r.weights).sum())
    y = fit.y
    np.testing.assert_allclose(fit.residuals("response"), y - fit.fitted)
    mu = fit.fitted
    np.testing.assert_allclose(
        fit.residuals("pearson"), (y - mu) * np.sqrt(cbpp["size"]) / np.sqrt(mu * (1 - mu))
    )
    np.testing.assert_allclose(fit.residuals("working"), (y - mu) / (mu * (1 - mu)), rtol=1e-10)
    coef = fit.coef["herd"]
    np.testing.assert_allclose(
        coef["(Intercept)"], fit.fixef["(Intercept)"] + fit.ranef["herd"]["(Intercept)"]
    )


def test_nagq0_is_the_first_stage(cbpp):
    lap, _ = fitted("cbpp_laplace")
    f0 = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, nAGQ=0)
    assert f0.loglik <= lap.loglik + 1e-9
    assert f0.loglik == pytest.approx(lap.loglik, abs=0.05)
    assert "nAGQ = 0" in str(f0.summary())


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_other_links(contra, link):
    fit = glmer("use ~ age + urban + (1 | district)", contra, f"binomial({link})")
    assert fit.converged
    assert fit.family.link.name == link
    logit = glmer("use ~ age + urban + (1 | district)", contra)
    assert fit.loglik == pytest.approx(logit.loglik, abs=2.0)  # same data, similar fits
    assert f"( {link} )" in str(fit.summary())


def test_errors_before_fitting(cbpp, contra):
    f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    with pytest.raises(ModelError, match="no random-effects"):
        glmer("cbind(incidence, size - incidence) ~ period", cbpp)
    with pytest.raises(ModelError, match="nAGQ"):
        glmer(f, cbpp, nAGQ=-1)
    with pytest.raises(ModelError, match="single random-effects term"):
        glmer(f.replace("(1 | herd)", "(1 | herd) + (1 | period)"), cbpp, nAGQ=5)
    with pytest.raises(ModelError, match="needs nAGQ"):
        glmer(f, cbpp, method="agq")
    with pytest.raises(ModelError, match="unknown family"):
        glmer(f, cbpp, "gaussianish")
    with pytest.raises(DataError, match="4 levels"):
        glmer("livch ~ age + (1 | district)", contra)
    with pytest.raises(DataError, match="negative"):
        glmer("y ~ age + (1 | district)", contra.assign(y=-1.0), "poisson")
    with pytest.raises(DataError, match="non-integer"):
        glmer("cbind(s, f) ~ 1 + (1 | district)", contra.assign(s=0.5, f=2.0))


def test_nested_factors_and_singular_fit(contra):
    """(1 | district/urban): the district variance goes to its bound; the fit is
    reported singular, with the variance printed as 0 and its θ exactly 0."""
    with pytest.warns(SingularFitWarning):
        fit = glmer("use ~ age + urban + (1 | district/urban)", contra)
    assert fit.ngroups == {"urban:district": 102, "district": 60}
    assert fit.theta["district.(Intercept)"] == 0.0
    assert fit.singular and fit.converged
    assert " district       (Intercept) 0.0000   0.0000  " in str(fit.summary())


def test_one_scalar_term_starts_from_working_scale_moments():
    """One scalar term's θ starts from moments of the GLM fit's working
    residuals (each level's weighted mean, less its sampling variance): on
    cbpp within 10% of lme4's θ̂ 0.6423 (the fixed start 1 was 56% off), and
    the search from there needs at most 13 evaluations with the same optimum."""
    import multilevel.glmm.fit as fit_mod

    seen = {}
    original = fit_mod.moment_theta

    def spy(prob, beta):
        seen["theta0"] = original(prob, beta)[0]
        return original(prob, beta)

    import warnings

    import multilevel as ml

    d = ml.datasets.load("cbpp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_mod.moment_theta = spy
        try:
            m = ml.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", d, "binomial")
        finally:
            fit_mod.moment_theta = original
    assert seen["theta0"] == pytest.approx(0.6423, rel=0.1)
    assert m.theta.iloc[0] == pytest.approx(0.642260, rel=1e-4)
    assert m.optinfo.converged and m.optinfo.evals <= 13
