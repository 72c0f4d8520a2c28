"""Estimated marginal means and pairwise contrasts against emmeans 1.8.4-1
(``tests/reference/inference``): an LMM with Satterthwaite and Kenward–Roger
DF (covariates at their means, a factor in an interaction), binomial and
Poisson GLMMs on the link and response scales, Tukey and Holm adjustments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel as ml

from .reference_fits import fit
from .rtables import reference, table

DDF = {"satterthwaite": "Satterthwaite", "kenward_roger": "Kenward-Roger"}


def _compare(ours: pd.DataFrame, ref: pd.DataFrame, rtol: float = 1e-3) -> None:
    assert list(ours.columns) == list(ref.columns)
    for c in ref.columns:
        if not pd.api.types.is_numeric_dtype(ref[c]):
            assert [str(v) for v in ours[c]] == [str(v) for v in ref[c]]
        elif c == "df":
            np.testing.assert_allclose(ours[c], ref[c], rtol=1e-2)
        elif c == "p.value":
            # below 1e-10 ptukey's digits are gone (R's floor is about 1e-14)
            big = ref[c].to_numpy() > 1e-10
            np.testing.assert_allclose(np.log(ours[c][big]), np.log(ref[c][big]), rtol=1e-3)
            assert (ours[c][~big] < 1e-10).all()
        else:
            np.testing.assert_allclose(ours[c], ref[c], rtol=rtol, atol=1e-8)


@pytest.mark.parametrize("case", ["hsb_reml", "hsb_intercept_reml"])
@pytest.mark.parametrize("method", list(DDF))
def test_lmm_means_and_pairs(case, method):
    em = ml.emmeans(fit(case), "sector", ddf=DDF[method])
    _compare(em.frame, table(case, f"emmeans_sector_{method}"))
    _compare(em.pairs(), table(case, f"pairs_sector_{method}_tukey"))


def test_reference_grid_has_covariates_at_their_means():
    em = ml.emmeans(fit("hsb_reml"), "sector")
    grid = table("hsb_reml", "ref_grid")
    np.testing.assert_allclose(em.grid.points["meanses"], grid["meanses"], rtol=1e-9)
    np.testing.assert_allclose(em.grid.points["cses"], grid["cses"], atol=1e-15)
    assert "involvement in interactions" in repr(em)


def test_binomial_means_on_both_scales_and_pairs():
    em = ml.emmeans(fit("cbpp_laplace"), "period")
    _compare(em.frame, table("cbpp_laplace", "emmeans_period_link"))
    resp = ml.emmeans(fit("cbpp_laplace"), "period", type="response")
    _compare(resp.frame, table("cbpp_laplace", "emmeans_period_response"))
    _compare(em.pairs(), table("cbpp_laplace", "pairs_period_tukey"))
    _compare(em.pairs(adjust="holm"), table("cbpp_laplace", "pairs_period_holm"))
    _compare(em.pairs(type="response"), table("cbpp_laplace", "pairs_period_response_tukey"))
    assert reference("cbpp_laplace")["pairs_period_tukey"]["adjust"] == "tukey"


def test_poisson_means_and_pairs():
    em = ml.emmeans(fit("grouse_poisson"), "YEAR")
    _compare(em.frame, table("grouse_poisson", "emmeans_year_link"))
    resp = ml.emmeans(fit("grouse_poisson"), "YEAR", type="response")
    _compare(resp.frame, table("grouse_poisson", "emmeans_year_response"))
    _compare(em.pairs(), table("grouse_poisson", "pairs_year_tukey"))


def test_at_values_and_equal_weights():
    """Two factors, unbalanced: the marginal mean of a level of one averages
    the other's levels with equal weights (not their frequencies)."""
    rng = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame(
        {
            "a": rng.choice(["x", "y"], n, p=[0.8, 0.2]),
            "b": rng.choice(["u", "v"], n, p=[0.3, 0.7]),
            "z": rng.normal(5, 2, n),
            "g": rng.integers(0, 15, n),
        }
    )
    df["y"] = 1 + (df.a == "y") + 2 * (df.b == "v") + 0.3 * df.z + rng.normal(size=n)
    f = ml.lmer("y ~ a + b + z + (1 | g)", df)
    beta = f.fixef
    em = ml.emmeans(f, "a", ddf="Satterthwaite").frame
    zbar = df.z.mean()
    want_x = beta["(Intercept)"] + 0.5 * beta["bv"] + beta["z"] * zbar
    assert em["emmean"].iloc[0] == pytest.approx(want_x)
    at2 = ml.emmeans(f, "a", at={"z": 2.0}, ddf="Satterthwaite").frame
    assert at2["emmean"].iloc[1] - at2["emmean"].iloc[0] == pytest.approx(beta["ay"])
    assert at2["emmean"].iloc[0] == pytest.approx(want_x + beta["z"] * (2.0 - zbar))


def test_bad_requests_are_refused():
    f = fit("hsb_reml")
    with pytest.raises(ml.ModelError, match="not a variable of the fixed effects"):
        ml.emmeans(f, "school")
    with pytest.raises(ml.ModelError, match="at= names"):
        ml.emmeans(f, "sector", at={"nonesuch": 1})
    with pytest.raises(ml.ModelError, match="adjust must be"):
        ml.emmeans(f, "sector").pairs(adjust="scheffe")
    with pytest.raises(ml.ModelError, match="at least two"):
        ml.emmeans(f, "sector", at={"sector": "Public"}).pairs()
