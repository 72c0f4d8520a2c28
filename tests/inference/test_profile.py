"""Profile-likelihood intervals against lme4's confint(method = "profile").

lme4 interpolates a spline through its profile trace; we solve ζ = ±1.96 by
root finding, so we agree to the accuracy of lme4's interpolation: 1e-3
relative (measured: up to 2e-4, on sd_cses|school next to its boundary).
Endpoints at a parameter's bound (0 for an SD, ±1 for a correlation) must be
exactly the bound.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from multilevel import ModelError, lmer
from multilevel.inference.profile import confint, profile

from ..conftest import reference, reference_data

FAST = ["dyestuff_reml", "dyestuff2_reml", "sleep_reml", "pastes_reml", "penicillin_reml"]
FAST += ["hsb_lmer_reml"]
SLOW = ["sleep_ml", "sleep_uncorr", "hsb_lmer_ml", "hsb_lmer_uncorr", "hsb_lmer_intercept"]

_fits: dict = {}


def fitted(case: str):
    if case not in _fits:
        ref = reference(case)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _fits[case] = (
                lmer(ref["formula"], reference_data(ref), REML=ref["method"] == "REML"),
                ref,
            )
    return _fits[case]


def _check(case: str):
    fit, ref = fitted(case)
    ci = confint(fit, method="profile")
    assert list(ci.index) == list(ref["profile_ci"])
    for name, (lo, hi) in ref["profile_ci"].items():
        for ours, theirs in zip(ci.loc[name], (lo, hi), strict=True):
            if theirs in (0, 1, -1) and not name.startswith("(") and "|" in name:
                assert ours == theirs, name  # the bound itself
            else:
                assert ours == pytest.approx(theirs, rel=1e-3), name


@pytest.mark.parametrize("case", FAST)
def test_profile_ci_matches_lme4(case):
    _check(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW)
def test_profile_ci_matches_lme4_slow(case):
    _check(case)


def test_profile_traces():
    fit, _ = fitted("sleep_reml")
    pr = profile(fit, which=["sigma", "Days"])
    assert list(pr.ci.index) == ["sigma", "Days"]
    for name, tr in pr.traces.items():
        v, z = tr[name].to_numpy(), tr["zeta"].to_numpy()
        assert np.all(np.diff(v) > 0)
        # ζ increases through 0 at the estimate and spans the 99% range
        assert np.all(np.diff(z) > 0)
        assert z.min() < -2.5 and z.max() > 2.5
        # the trace interpolates to the interval endpoints
        lo, hi = pr.ci.loc[name]
        assert np.interp(lo, v, z) == pytest.approx(-1.959964, abs=0.02)
        assert np.interp(hi, v, z) == pytest.approx(1.959964, abs=0.02)
    # the fixed-effect trace carries θ at its conditional optimum
    assert list(pr.traces["Days"].columns[2:]) == list(fit.theta.index)


def test_profile_of_ml_fit_equals_profile_of_reml_fit():
    # lme4 profiles the ML deviance: REML and ML fits give the same intervals
    reml, _ = fitted("dyestuff_reml")
    ml = lmer(reml.formula, reference_data(reference("dyestuff_reml")), REML=False)
    a = confint(reml, which="sigma")
    b = confint(ml, which="sigma")
    assert np.allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6)


def test_level_and_which():
    fit, _ = fitted("dyestuff_reml")
    c95 = confint(fit, which="(Intercept)")
    c80 = confint(fit, which="(Intercept)", level=0.8)
    assert list(c80.columns) == ["10 %", "90 %"]
    assert c95.iloc[0, 0] < c80.iloc[0, 0] < fit.fixef.iloc[0] < c80.iloc[0, 1] < c95.iloc[0, 1]
    with pytest.raises(ModelError, match="no parameter"):
        profile(fit, which="tau")
    with pytest.raises(ValueError, match="method"):
        confint(fit, method="bayes")


@pytest.mark.parametrize("case", ["sleep_reml", "hsb_lmer_reml"])
def test_wald_ci_matches_lme4(case):
    fit, ref = fitted(case)
    ci = confint(fit, method="wald")
    for name, (lo, hi) in ref["wald_ci"].items():
        assert ci.loc[name].to_list() == pytest.approx([lo, hi], rel=1e-3)
