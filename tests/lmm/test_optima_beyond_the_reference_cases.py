"""Optima on R data sets beyond the reference cases, against lme4 1.1.31
(R 4.2.2; values stored here, R is not called): where lme4's default
optimizer stops short, the fit reaches what lme4's other optimizers reach."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

import multilevel as ml

from ..conftest import TESTDATA


def _fit(formula: str, data: pd.DataFrame, reml: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ml.lmer(formula, data, REML=reml)


def test_flat_criterion_reaches_lme4s_optimum():
    """nlme's Rail: one scalar term whose θ̂ ≈ 6.17 sits where the criterion
    is flat, so the Newton polish's steps from the search's handover (free
    gradient 1e-3) are longer than 1e-3; they must still be taken.
    lme4: REMLcrit 122.177000808598 at θ 6.16931776649064."""
    rail = pd.read_csv(TESTDATA / "rail.csv")
    rail["Rail"] = pd.Categorical(rail["Rail"].astype(str))
    fit = _fit("travel ~ 1 + (1 | Rail)", rail, True)
    assert fit.optinfo.converged
    assert -2.0 * fit.loglik <= 122.177000808598 + 1e-9
    assert fit.theta.iloc[0] == pytest.approx(6.16931776649064, rel=1e-5)


def test_optimum_below_lme4s_default_where_it_stops_short():
    """mlmRev's bdf by ML, (IQ.verb | schoolNR): lme4's default optimizer
    stops at deviance 15014.79657969 with max|grad| 0.077 (its convergence
    warning); its bobyqa, Nelder_Mead and nloptwrap with tight tolerances
    reach 15014.775318311 at θ (1.235295, -0.06679796, 0.01783021)."""
    bdf = pd.read_csv(TESTDATA / "bdf_lang.csv")
    bdf["schoolNR"] = pd.Categorical(bdf["schoolNR"].astype(str))
    bdf["sex"] = pd.Categorical(bdf["sex"].astype(str), categories=["0", "1"])
    fit = _fit("langPOST ~ IQ.verb + sex + ses + (IQ.verb | schoolNR)", bdf, False)
    assert fit.optinfo.converged
    assert -2.0 * fit.loglik <= 15014.775318312
    assert list(fit.theta) == pytest.approx([1.235295, -0.06679796, 0.01783021], rel=1e-4)
