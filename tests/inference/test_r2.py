"""Nakagawa's R² and the ICC against performance 0.10.2 / insight 0.19.0
(``tests/reference/inference``): LMMs with random intercepts, a random slope
and crossed terms; binomial and Poisson GLMMs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import multilevel as ml
from multilevel.inference.r2 import variance_components

from .reference_fits import FORMULAS, fit
from .rtables import reference, table

CASES = list(FORMULAS)


@pytest.mark.parametrize("case", CASES)
def test_variance_components_match_insight(case):
    ours = variance_components(fit(case))
    ref = reference(case)["get_variance"]["values"]
    for k in ("var.fixed", "var.random", "var.residual"):
        assert ours[k] == pytest.approx(ref[k], rel=1e-3, abs=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_r2_and_icc_match_performance(case):
    r2 = ml.r2_nakagawa(fit(case))
    ref = reference(case)["r2_nakagawa"]["values"]
    assert list(r2.index) == ["conditional", "marginal"]
    assert r2["conditional"] == pytest.approx(ref["R2_conditional"], rel=1e-3)
    assert r2["marginal"] == pytest.approx(ref["R2_marginal"], rel=1e-3, abs=1e-12)
    icc = ml.icc(fit(case))
    ref_icc = table(case, "icc").iloc[0]
    assert list(icc.index) == ["adjusted", "unadjusted"]
    assert icc["adjusted"] == pytest.approx(ref_icc["ICC_adjusted"], rel=1e-3)
    assert icc["unadjusted"] == pytest.approx(ref_icc["ICC_unadjusted"], rel=1e-3)


def test_poisson_distribution_variance_uses_the_null_model():
    f = fit("grouse_poisson")
    null = f.null_model()
    assert list(null.fixef.index) == ["(Intercept)"]
    assert null.fixef.iloc[0] == pytest.approx(0.52331, abs=1e-4)  # insight's null model
    v = variance_components(f)["var.residual"]
    assert v == pytest.approx(math.log1p(math.exp(-null.fixef.iloc[0])))


def test_families_without_a_distribution_variance_say_so():
    cbpp = ml.datasets.load("cbpp")
    g = ml.glmer("incidence ~ period + (1 | herd)", cbpp, "negative_binomial")
    with pytest.raises(ml.ModelError, match="R² and ICC are implemented for"):
        ml.r2_nakagawa(g)


def test_r2_is_invariant_to_rescaling_the_response():
    d = ml.datasets.load("sleepstudy")
    a = ml.r2_nakagawa(ml.lmer("Reaction ~ Days + (Days | Subject)", d))
    d2 = d.assign(Reaction=d.Reaction * 1e-6 + 5.0)
    b = ml.r2_nakagawa(ml.lmer("Reaction ~ Days + (Days | Subject)", d2))
    np.testing.assert_allclose(a, b, rtol=1e-5)
