"""docs/tutorial.md runs end to end: its python blocks execute in order (in a
temporary folder), print what the markdown records, save the figures the
markdown shows, and the objects they build carry R's numbers.

Agreement checked against R (tolerances): lmList (hsb_lmlist) coefficients,
SEs and pooled SD 1e-9 relative; the lme fit (hsb_nlme_reml) fixed effects
within 1e-3 SE, SEs 1e-3 relative, DF exact, logLik within 1e-4 and not
below nlme's, sigma 1e-4 relative; the level-wise fit against lme4
(hsb_lmer_reml) the same, plus profile intervals of the variance parameters
2e-3 relative (the correlation's interval is [-1, 1] in both); the
likelihood-ratio test (hsb_anova) chi-square within 1e-3, logLiks within 1e-4,
p within 1e-4.  Every section runs: the runner's ``requires`` markers are
for optional extras, and the tutorial has none.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import reference

pytest.importorskip("matplotlib")

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIAL = DOCS / "tutorial.md"


def _runner():
    name = "multilevel_docs_run_tutorial"
    spec = importlib.util.spec_from_file_location(name, DOCS / "run_tutorial.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


runner = _runner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runner.run(TUTORIAL, workdir=tmp_path_factory.mktemp("tutorial"))


@pytest.fixture(scope="module")
def ns(run) -> dict:
    return run.namespace


def _series(d: dict) -> pd.Series:
    return pd.Series(d, dtype=float)


# --------------------------------------------------------------------------- the runner


def test_runner_pairs_blocks_and_compares_numbers():
    md = (
        "text\n```python\nprint(1)\n```\n\n```text\n1\n```\n"
        "<!-- tutorial: requires nonexistent_pkg.thing -->\n```python\nx = 1\n```\n"
        "<!-- tutorial: end -->\n```python\ny = 2\n```\n"
    )
    steps = runner.steps(md)
    assert [s.block.code for s in steps] == ["print(1)\n", "x = 1\n", "y = 2\n"]
    assert steps[0].recorded is not None and steps[0].recorded.code == "1\n"
    assert steps[1].recorded is None
    assert [s.block.requires for s in steps] == [None, "nonexistent_pkg.thing", None]
    assert not runner.available("nonexistent_pkg.thing")
    assert runner.same_output("a  1.00001 b\n", "a 1.00002  b")
    assert not runner.same_output("a 1.0 b", "a 1.1 b")
    assert not runner.same_output("a 1.0 b", "a 1.0 c")
    assert not runner.same_output("a 1.0", "a 1.0 2")


def test_tutorial_prints_what_it_records(run):
    ran = [s for s in run.steps if s.output is not None]
    assert len(ran) >= 15
    assert run.skipped == []
    bad = runner.mismatches(run)
    assert not bad, "\n\n".join(bad) + "\n(rerun: python docs/run_tutorial.py --update)"


def test_figures_are_produced_and_shown(run):
    text = TUTORIAL.read_text()
    shown = runner.images(text)
    assert len(shown) >= 7
    produced = {p.relative_to(run.workdir).as_posix() for p in run.workdir.rglob("*.png")}
    assert set(shown) <= produced
    assert produced <= set(shown), f"saved but not shown: {produced - set(shown)}"
    for rel in shown:
        committed = DOCS / rel
        assert committed.exists(), f"{committed} missing: python docs/run_tutorial.py --update"
        assert committed.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for rel in produced:
        assert (run.workdir / rel).stat().st_size > 10_000  # a picture, not an empty canvas


# --------------------------------------------------------------------------- numbers vs R


def test_data_built_from_raw_tables_is_rs(ns):
    ref = reference("hsb_lmer_reml")
    hsb = ns["hsb"]
    assert len(hsb) == ref["nobs"] == 7185
    assert hsb["school"].nunique() == ref["ngroups"]["school"] == 160
    from .conftest import reference_data

    rdata = reference_data(ref)
    assert (hsb["school"].astype(str) == rdata["school"].astype(str)).all()
    np.testing.assert_allclose(hsb["meanses"], rdata["meanses"], atol=1e-12)
    np.testing.assert_allclose(hsb["cses"], rdata["cses"], atol=1e-12)
    assert (hsb["sector"].astype(str) == rdata["sector"].astype(str)).all()


def test_lmlist_is_nlmes(ns):
    ref = reference("hsb_lmlist")["lmlist"]
    ols = ns["ols"]
    coef = pd.DataFrame(ref["coef"]).T[ref["coef_names"]]
    se = pd.DataFrame(ref["se"]).T[ref["coef_names"]]
    assert list(ols.coef.index) == list(coef.index)
    np.testing.assert_allclose(ols.coef, coef, rtol=1e-9)
    np.testing.assert_allclose(ols.se, se, rtol=1e-9)
    assert ols.pooled_sd == pytest.approx(ref["pooled_sd"], rel=1e-9)
    assert ols.pooled_df == ref["pooled_sd_df"]


def test_lme_summary_is_nlmes(ns):
    ref = reference("hsb_nlme_reml")
    nl = ns["nl"]
    tt = nl.summary().tTable
    se_ref = _series(ref["se"])
    np.testing.assert_allclose((tt["Value"] - _series(ref["fixef"])) / se_ref, 0, atol=1e-3)
    np.testing.assert_allclose(tt["Std.Error"], se_ref, rtol=1e-3)
    np.testing.assert_array_equal(tt["DF"], _series(ref["df"]))
    assert nl.loglik == pytest.approx(ref["loglik"], abs=1e-4)
    assert nl.loglik >= ref["loglik"] - 1e-8
    assert nl.sigma == pytest.approx(ref["sigma"], rel=1e-4)


def test_level_wise_fit_is_lme4s(ns):
    ref = reference("hsb_lmer_reml")
    fit = ns["fit"]
    assert fit.formula == "mathach ~ meanses * cses + sector * cses + (cses | school)"
    se_ref = _series(ref["se"])
    np.testing.assert_allclose((fit.fixef - _series(ref["fixef"])) / se_ref, 0, atol=1e-3)
    np.testing.assert_allclose(fit.se, se_ref, rtol=1e-3)
    assert fit.loglik == pytest.approx(ref["loglik"], abs=1e-4)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-4)
    gam = fit.coefficients.set_index("fixef")["estimate"]
    np.testing.assert_allclose(gam[list(ref["fixef"])], fit.fixef[list(ref["fixef"])])
    # the profile intervals printed in section 8
    ci = ns["prof"].ci
    for name in ["sd_(Intercept)|school", "sd_cses|school", "sigma"]:
        np.testing.assert_allclose(ci.loc[name], ref["profile_ci"][name], rtol=2e-3, atol=1e-6)
    np.testing.assert_array_equal(ci.loc["cor_cses.(Intercept)|school"], [-1.0, 1.0])
    assert ref["profile_ci"]["cor_cses.(Intercept)|school"] == [-1, 1]


def test_likelihood_ratio_test_is_lme4s(ns):
    ref = reference("hsb_anova")["extra"]
    lrt = ns["lrt"]
    assert list(lrt["npar"]) == [row["npar"] for row in ref["table"]]
    np.testing.assert_allclose(lrt["logLik"], [ref["m0_loglik"], ref["m1_loglik"]], atol=1e-4)
    row = lrt.iloc[1]
    assert row["Chisq"] == pytest.approx(ref["chisq"], abs=1e-3)
    assert row["Df"] == ref["df"]
    assert row["Pr(>Chisq)"] == pytest.approx(ref["p"], abs=1e-4)
    # 50:50 mixture of chi2_1 and chi2_2 at the same statistic
    from scipy import stats

    mix = 0.5 * stats.chi2.sf(ref["chisq"], 1) + 0.5 * stats.chi2.sf(ref["chisq"], 2)
    assert row["Pr(>Chisq) boundary"] == pytest.approx(mix, abs=1e-4)


def test_logistic_section(run, ns):
    logit, hsb = ns["logit"], ns["hsb"]
    assert logit.nobs == 7185
    assert list(logit.fixef.index) == ["(Intercept)", "meanses", "cses", "sectorCatholic"]
    assert hsb["passed"].sum() == int((hsb["mathach"] >= 12).sum())
    # the Laplace fit of a binary response: fitted probabilities, random-intercept SD > 0
    p = logit.fitted.to_numpy()
    assert np.all((p > 0) & (p < 1))
    assert logit.varcorr["sdcor"].iloc[0] > 0.1
    # signs as in the linear model: SES helps within and between schools, Catholic helps
    assert (logit.fixef[["meanses", "cses", "sectorCatholic"]] > 0).all()
    assert (run.workdir / "figures" / "effect_passing.png").exists()
