"""Single-model type-III tables: lmerTest's F tests (Satterthwaite and
Kenward–Roger) and car::Anova's Wald χ² for a GLMM, against
``tests/reference/inference``; the hypotheses do not depend on the coding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
from multilevel.inference.type3 import type3_hypotheses

from .reference_fits import fit
from .rtables import reference, table

BLOCKS = {
    "Satterthwaite": "anova_type3_satterthwaite",
    "Kenward-Roger": "anova_type3_kenward_roger",
}


@pytest.mark.parametrize("case", ["hsb_reml", "hsb_intercept_reml", "sleep_reml"])
@pytest.mark.parametrize("ddf", list(BLOCKS))
def test_type3_f_table_matches_lmertest(case, ddf):
    ours = ml.anova(fit(case), ddf=ddf)
    ref = table(case, BLOCKS[ddf])
    assert list(ours.index) == list(ref.index)
    assert list(ours.columns) == list(ref.columns)
    for col in ("Sum Sq", "Mean Sq", "F value"):
        np.testing.assert_allclose(ours[col], ref[col], rtol=1e-3)
    np.testing.assert_allclose(ours["DenDF"], ref["DenDF"], rtol=1e-2)
    assert (ours["NumDF"] == ref["NumDF"]).all()
    # p-values near 1e-40 amplify the statistics' last digits: compared on the log scale
    np.testing.assert_allclose(np.log(ours["Pr(>F)"]), np.log(ref["Pr(>F)"]), rtol=1e-3)
    assert ours.attrs["heading"] == reference(case)[BLOCKS[ddf]]["heading"][0]


def test_type3_hypotheses_are_lmertest_s():
    f = fit("hsb_reml")
    ours = type3_hypotheses(f.design, list(f.fixef.index))
    hyp = reference("hsb_reml")[BLOCKS["Satterthwaite"]]["hypotheses"]
    for term, t in hyp.items():
        np.testing.assert_allclose(ours[term], np.array(t["data"], dtype=float), atol=1e-12)


def test_glmm_wald_chisq_table_matches_car():
    ours = ml.anova(fit("cbpp_laplace"))
    ref = table("cbpp_laplace", "car_anova_type3")
    assert list(ours.index) == ["(Intercept)", "period"]
    np.testing.assert_allclose(ours["Chisq"], ref["Chisq"], rtol=1e-3)
    assert list(ours["Df"]) == [1, 3]
    ref_p = table("grouse_poisson", "car_anova_type3")
    ours_p = ml.anova(fit("grouse_poisson"))
    np.testing.assert_allclose(ours_p["Chisq"], ref_p["Chisq"], rtol=1e-3)


def test_type3_f_does_not_depend_on_the_reference_level():
    """Two crossed factors with their interaction: type-III F of each term is
    the same whichever level is the reference (hypotheses averaged over the
    other factor, not at its reference level)."""
    rng = np.random.default_rng(3)
    n = 240
    df = pd.DataFrame(
        {
            "a": rng.choice(["a1", "a2", "a3"], n),
            "b": rng.choice(["b1", "b2"], n),
            "g": rng.integers(0, 20, n),
        }
    )
    df["y"] = (df.a == "a2") * 1.0 + (df.b == "b2") * 0.5 + rng.normal(size=n)
    df["y"] += rng.normal(size=20)[df.g]
    one = ml.anova(ml.lmer("y ~ a*b + (1 | g)", df))
    other = ml.anova(ml.lmer("y ~ a*b + (1 | g)", df, levels={"a": ["a3", "a1", "a2"],
                                                              "b": ["b2", "b1"]}))  # fmt: skip
    np.testing.assert_allclose(one["F value"], other["F value"], rtol=1e-6)
    np.testing.assert_allclose(one["DenDF"], other["DenDF"], rtol=1e-4)
    assert list(one["NumDF"]) == [2, 1, 2]


def test_single_model_anova_refuses_other_types():
    with pytest.raises(ml.ModelError, match="type-III"):
        ml.anova(fit("sleep_reml"), type=1)
    with pytest.raises(ml.ModelError, match="ddf"):
        ml.anova(fit("sleep_reml"), ddf="none")
