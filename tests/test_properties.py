"""Invariances of the fit (hypothesis): row order, level labels, scale of y,
shifts of covariates."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import multilevel as ml

FORMULA = "y ~ x + (x | g)"


def simulate(seed: int, n_groups: int, per: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=g.size)
    b0 = rng.normal(scale=1.0, size=n_groups)
    b1 = rng.normal(scale=0.5, size=n_groups)
    y = 2 + 0.7 * x + b0[g] + b1[g] * x + rng.normal(scale=0.8, size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"s{v:03d}" for v in g]})


def fit(df: pd.DataFrame, formula: str = FORMULA):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ml.lmer(formula, df)


common = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 10_000)


@common
@given(seed=seeds, perm_seed=seeds)
def test_row_order_does_not_matter(seed, perm_seed):
    df = simulate(seed, 12, 8)
    perm = np.random.default_rng(perm_seed).permutation(len(df))
    a, b = fit(df), fit(df.iloc[perm])
    assert b.loglik == pytest.approx(a.loglik, abs=1e-6)
    np.testing.assert_allclose(b.fixef, a.fixef, rtol=1e-5, atol=1e-7)
    pd.testing.assert_frame_equal(
        b.ranef["g"].sort_index(), a.ranef["g"].sort_index(), rtol=1e-4, atol=1e-6
    )


@common
@given(seed=seeds)
def test_relabelling_levels_does_not_matter(seed):
    df = simulate(seed, 10, 6)
    mapping = {lev: f"z{999 - i}" for i, lev in enumerate(sorted(df.g.unique()))}
    a, b = fit(df), fit(df.assign(g=df.g.map(mapping)))
    assert b.loglik == pytest.approx(a.loglik, abs=1e-6)
    renamed = a.ranef["g"].rename(index=mapping).sort_index()
    pd.testing.assert_frame_equal(
        b.ranef["g"].sort_index(), renamed, rtol=1e-4, atol=1e-6, check_names=False
    )


@common
@given(seed=seeds, log_c=st.floats(-4, 4))
def test_scaling_y(seed, log_c):
    c = 10.0**log_c
    df = simulate(seed, 10, 6)
    a, b = fit(df), fit(df.assign(y=c * df.y))
    np.testing.assert_allclose(b.fixef, c * a.fixef, rtol=1e-4, atol=1e-6 * c)
    assert b.sigma == pytest.approx(c * a.sigma, rel=1e-4)
    va, vb = a.varcorr, b.varcorr
    var = va["var2"].isna()
    np.testing.assert_allclose(vb["sdcor"][var], c * va["sdcor"][var], rtol=1e-3, atol=1e-6 * c)
    np.testing.assert_allclose(vb["sdcor"][~var], va["sdcor"][~var], atol=1e-3)
    # the density of c·y is that of y divided by c in each of its coordinates:
    # n of them for ML, n - p residual contrasts for REML
    dim = len(df) - len(a.fixef)
    assert b.loglik == pytest.approx(a.loglik - dim * np.log(c), abs=1e-5)


@common
@given(seed=seeds, shift=st.floats(-50, 50))
def test_shifting_a_covariate_changes_only_the_intercept(seed, shift):
    df = simulate(seed, 10, 6)
    a = fit(df, "y ~ x + (1 | g)")
    b = fit(df.assign(x=df.x + shift), "y ~ x + (1 | g)")
    assert b.fixef["x"] == pytest.approx(a.fixef["x"], rel=1e-5)
    assert b.fixef["(Intercept)"] == pytest.approx(
        a.fixef["(Intercept)"] - shift * a.fixef["x"], abs=1e-5 * (1 + abs(shift))
    )
    assert b.loglik == pytest.approx(a.loglik, abs=1e-6)
