"""lmList against nlme's lmList (hsb_lmlist reference) and per-group least squares."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import multilevel as ml
from multilevel import DataError, FormulaError
from multilevel.workflow.lmlist import lmList, split_group_formula

from ..conftest import reference, reference_data

FORMULA = "mathach ~ ses | school"
RTOL = 1e-8  # measured agreement is about 3e-14 (coef) and 1e-15 (se)


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference("hsb_lmlist")


@pytest.fixture(scope="module")
def data(ref) -> pd.DataFrame:
    return reference_data(ref)


def _table(block: dict, key: str) -> pd.DataFrame:
    return pd.DataFrame(block[key]).T[block["coef_names"]]


def _check(fit, block: dict) -> None:
    coef, se = _table(block, "coef"), _table(block, "se")
    assert list(fit.coef.index) == list(coef.index)
    assert list(fit.coef.columns) == block["coef_names"] == ["(Intercept)", "ses"]
    np.testing.assert_allclose(fit.coef.to_numpy(), coef.to_numpy(), rtol=RTOL, atol=0)
    np.testing.assert_allclose(fit.se.to_numpy(), se.to_numpy(), rtol=RTOL, atol=0)
    assert fit.pooled_sd == pytest.approx(block["pooled_sd"], rel=1e-12)
    assert fit.pooled_df == block["pooled_sd_df"]
    assert fit.ngroups == block["ngroups"]
    assert fit.nobs == block["nobs"]


def test_all_schools_match_nlme(ref, data):
    fit = lmList(FORMULA, data)
    _check(fit, ref["lmlist"])
    assert fit.coef.index.name == "school"
    assert fit.group_nobs.sum() == 7185 and (fit.rank == 2).all()


def test_bundled_data_with_integer_ids_gives_the_same(ref):
    fit = lmList(FORMULA, ml.datasets.load("hsb"))
    _check(fit, ref["lmlist"])


@pytest.mark.parametrize("sector", ["Catholic", "Public"])
def test_sector_subsets_match_nlme(ref, data, sector):
    block = ref["extra"][sector]
    _check(lmList(FORMULA, data, subset=f'sector == "{sector}"'), block)
    _check(lmList(FORMULA, data, subset=data["sector"] == sector), block)
    _check(lmList(FORMULA, data, subset=(data["sector"] == sector).to_numpy()), block)


def test_confint_uses_pooled_sd_and_t_quantiles(ref, data):
    fit = lmList(FORMULA, data)
    block = ref["lmlist"]
    se = _table(block, "se")
    coef = _table(block, "coef")
    for level in (0.95, 0.8):
        q = stats.t.ppf((1 + level) / 2, block["pooled_sd_df"])
        ci = fit.confint(level)
        for name in block["coef_names"]:
            np.testing.assert_allclose(ci[(name, "est.")], coef[name], rtol=RTOL)
            np.testing.assert_allclose(ci[(name, "lower")], coef[name] - q * se[name], rtol=RTOL)
            np.testing.assert_allclose(ci[(name, "upper")], coef[name] + q * se[name], rtol=RTOL)
    # school 1224, 95%: 10.805132 -+ 1.960... * 1.0789238
    q95 = stats.t.ppf(0.975, 6865)
    assert ci.shape == (160, 6)
    lo = fit.confint()[("(Intercept)", "lower")].loc["1224"]
    assert lo == pytest.approx(10.805132001165145 - q95 * 1.0789238241228933, rel=1e-10)


def _per_group_ols(df: pd.DataFrame, x: list[str], y: str, g: str) -> dict:
    """Reference computed group by group with numpy's SVD least squares."""
    out = {}
    for label, sub in df.groupby(g, observed=True):
        X = np.column_stack([np.ones(len(sub))] + [sub[c].to_numpy(float) for c in x])
        beta, _, rank, _ = np.linalg.lstsq(X, sub[y].to_numpy(float), rcond=None)
        resid = sub[y].to_numpy(float) - X @ beta
        out[str(label)] = (beta, rank, resid @ resid, len(sub), np.linalg.pinv(X.T @ X))
    return out


def test_pool_false_uses_each_groups_own_sigma(data):
    fit = lmList(FORMULA, data, pool=False)
    ols = _per_group_ols(data, ["ses"], "mathach", "school")
    for label in ["1224", "4292", "9586"]:
        beta, rank, rss, n, unscaled = ols[label]
        s = np.sqrt(rss / (n - rank))
        np.testing.assert_allclose(fit.coef.loc[label], beta, rtol=1e-10)
        np.testing.assert_allclose(fit.se.loc[label], s * np.sqrt(np.diag(unscaled)), rtol=1e-10)
        assert fit.sigma.loc[label] == pytest.approx(s, rel=1e-10)
        t = fit.coef.loc[label] / fit.se.loc[label]
        np.testing.assert_allclose(fit.pvalue.loc[label], 2 * stats.t.sf(np.abs(t), n - rank))
        q = stats.t.ppf(0.975, n - rank)
        ci = fit.confint()
        assert ci[("ses", "upper")].loc[label] == pytest.approx(
            beta[1] + q * s * np.sqrt(unscaled[1, 1]), rel=1e-10
        )
    # the pooled variance is the df-weighted mean of the group variances
    df = fit.df_resid
    assert fit.pooled_sd**2 == pytest.approx((fit.sigma**2 * df).sum() / df.sum(), rel=1e-12)
    # pool only changes the standard errors
    pooled = lmList(FORMULA, data)
    pd.testing.assert_frame_equal(fit.coef, pooled.coef)
    assert not np.allclose(fit.se.to_numpy(), pooled.se.to_numpy())
    np.testing.assert_allclose(fit.std_errors(pool=True), pooled.se, rtol=1e-14)


@pytest.fixture(scope="module")
def awkward() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 400
    df = pd.DataFrame({"g": rng.integers(0, 30, n), "x": rng.normal(size=n)})
    df["z"] = rng.normal(size=n)
    df["y"] = 1 + 2 * df["x"] - df["z"] + rng.normal(size=n)
    special = pd.DataFrame(
        {
            "g": [30, 31, 31, 31, 32, 32, 32, 32],  # one row; constant x; x = z - 1
            "x": [1.0, 2.0, 2.0, 2.0, 0.0, 1.0, 2.0, 3.0],
            "z": [0.5, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0],
            "y": [3.0, 1.0, 2.0, 4.0, 1.0, 5.0, 2.0, 2.5],
        }
    )
    return pd.concat([df, special], ignore_index=True)


def test_rank_deficient_groups_get_nan_like_lm(awkward):
    fit = lmList("y ~ x + z | g", awkward)
    ols = _per_group_ols(awkward, ["x", "z"], "y", "g")
    for label in map(str, range(30)):
        beta, rank, rss, n, _ = ols[label]
        assert rank == 3
        np.testing.assert_allclose(fit.coef.loc[label], beta, rtol=1e-10, atol=1e-12)
        assert fit.rss.loc[label] == pytest.approx(rss, rel=1e-10)
    # lm() with one row: intercept = y, slopes NA
    np.testing.assert_array_equal(fit.coef.loc["30"], [3.0, np.nan, np.nan])
    assert fit.df_resid.loc["30"] == 0 and np.isnan(fit.sigma.loc["30"])
    # constant x within the group: x is aliased with the intercept
    c31 = fit.coef.loc["31"].to_numpy()
    assert np.isnan(c31[1])
    np.testing.assert_allclose(c31[[0, 2]], [-2 / 3, 1.5], rtol=1e-12)
    # z = x + 1: the later column (z) is the aliased one, as R's pivoting QR
    c32 = fit.coef.loc["32"].to_numpy()
    assert np.isnan(c32[2])
    np.testing.assert_allclose(c32[:2], [2.4, 0.15], rtol=1e-12)
    assert list(fit.rank.loc[["30", "31", "32"]]) == [1, 2, 2]
    se = fit.se.loc["32"].to_numpy()
    assert np.isfinite(se[:2]).all() and np.isnan(se[2])
    # pooled variance: sum of RSS over sum of n_j - rank_j
    total_rss = sum(v[2] for v in ols.values())
    total_df = sum(v[3] - v[1] for v in ols.values())
    assert fit.pooled_df == total_df
    assert fit.pooled_sd == pytest.approx(np.sqrt(total_rss / total_df), rel=1e-10)
    assert "3 group(s) have aliased coefficients" in fit.summary()


def test_ill_conditioned_groups_keep_accuracy():
    # x near 1e5 makes X_j'X_j condition numbers around 1e11; refinement recovers lm's accuracy
    rng = np.random.default_rng(3)
    n = 200
    df = pd.DataFrame({"g": np.repeat(np.arange(10), 20), "x": 1e5 + rng.normal(size=n)})
    df["y"] = 3 + 0.5 * (df["x"] - 1e5) + rng.normal(size=n)
    fit = lmList("y ~ x | g", df)
    centred = df.assign(xc=df["x"] - 1e5)  # exact in floating point here
    exact = lmList("y ~ xc | g", centred)
    np.testing.assert_allclose(fit.coef["x"], exact.coef["xc"], rtol=1e-8)
    np.testing.assert_allclose(
        fit.coef["(Intercept)"], exact.coef["(Intercept)"] - 1e5 * exact.coef["xc"], rtol=1e-8
    )
    np.testing.assert_allclose(fit.residuals, exact.residuals, atol=1e-8)


def test_missing_values_offset_and_fitted():
    s = ml.datasets.load("sleepstudy")
    s2 = s.copy()
    s2.loc[3, "Reaction"] = np.nan
    s2.loc[15, "Subject"] = np.nan
    fit = lmList("Reaction ~ Days | Subject", s2)
    assert fit.n_dropped == 2 and fit.nobs == 178
    assert 3 not in fit.residuals.index and 15 not in fit.residuals.index
    np.testing.assert_allclose(fit.fitted + fit.residuals, s2["Reaction"].dropna().drop(15))
    with pytest.raises(DataError, match="na_action='raise'"):
        lmList("Reaction ~ Days | Subject", s2, na_action="raise")
    # an offset is subtracted from the response; fitted values include it
    off = lmList("log(Reaction) ~ Days + offset(Days) | Subject", s)
    plain = lmList("I(log(Reaction) - Days) ~ Days | Subject", s)
    np.testing.assert_allclose(off.coef, plain.coef, atol=1e-12)
    np.testing.assert_allclose(off.fitted + off.residuals, np.log(s["Reaction"]), atol=1e-12)


def test_nested_and_interaction_groups():
    pastes = ml.datasets.load("pastes")
    nested = lmList("strength ~ 1 | batch/cask", pastes)
    means = pastes.groupby(["batch", "cask"])["strength"].mean()
    assert nested.ngroups == 30 and nested.coef.index[0] == "A/a"
    np.testing.assert_allclose(nested.coef["(Intercept)"].to_numpy(), means.to_numpy())
    inter = lmList("strength ~ 1 | batch:cask", pastes)
    assert list(inter.coef.index[:2]) == ["A:a", "A:b"]
    np.testing.assert_allclose(inter.coef.to_numpy(), nested.coef.to_numpy())


def test_subset_query_sees_callers_variables(data, ref):
    sector = "Catholic"  # noqa: F841 (read by the query through @sector)
    _check(lmList(FORMULA, data, subset="sector == @sector"), ref["extra"]["Catholic"])


def test_formula_errors_name_the_position():
    assert split_group_formula("y ~ a + b | g") == ("y ~ a + b ", " g", 10)
    cases = {
        "mathach ~ ses": ("'| group' is missing", 13),
        "mathach ~ ses || school": ("single '|'", 14),
        "mathach ~ ses | school | ses": ("only one '|'", 23),
        "mathach ~ (ses | school)": ("no random effects", 15),
        "mathach ~ ses |": ("nothing after '|'", 14),
        "mathach ~ ses | a + b": ("grouping factor must be", 16),
        "mathach ~ ses + | school": ("right-hand operand", 14),
    }
    data = ml.datasets.load("hsb")
    for text, (msg, pos) in cases.items():
        with pytest.raises(FormulaError, match=msg) as info:
            lmList(text, data)
        assert info.value.position == pos, text
        assert info.value.formula == text


def test_data_errors(data):
    with pytest.raises(DataError, match="'schol' is not in the data"):
        lmList("mathach ~ ses | schol", data)
    with pytest.raises(DataError, match="cannot evaluate subset"):
        lmList(FORMULA, data, subset="sectr == 'Public'")
    with pytest.raises(DataError, match="one TRUE/FALSE per row"):
        lmList(FORMULA, data, subset="ses + 1")
    with pytest.raises(DataError, match="3 values for 7185 rows"):
        lmList(FORMULA, data, subset=np.ones(3, dtype=bool))
    with pytest.raises(DataError, match="must be boolean"):
        lmList(FORMULA, data, subset=np.ones(len(data)))
    with pytest.raises(DataError, match="no rows are left"):
        lmList(FORMULA, data, subset="ses > 100")
    with pytest.raises(DataError, match="pool must be"):
        lmList(FORMULA, data, pool="yes")


def test_text_output(data):
    fit = lmList(FORMULA, data)
    text = repr(fit)
    assert "Model: mathach ~ ses | school" in text
    assert "1224   10.805132" in text
    assert "Degrees of freedom: 7185 total; 6865 residual" in text
    assert "Residual standard error: 6.059724" in text
    summ = fit.summary()
    assert summ.count("Estimate Std. Error") == 2 and "   ses " in summ
    assert "1224 10.805132  1.0789238" in summ
    assert "on 6865 degrees of freedom" in summ
