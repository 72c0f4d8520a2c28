"""GLMM edge cases (issue 4): groups with all 0 or all 1, all-zero Poisson
groups, invalid counts; recovery of known parameters with a vector random
effect by quadrature; the quadrature log-likelihood settling in nAGQ."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel as ml


def binary(G=60, per=25, seed=7, slope=False):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(G), per)
    x = rng.normal(size=g.size)
    b = rng.multivariate_normal([0, 0], [[0.8, 0.2], [0.2, 0.3]], size=G)
    eta = -0.3 + 0.8 * x + b[g, 0] + (b[g, 1] * x if slope else 0)
    y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"y": y, "x": x, "g": g})


def test_groups_with_all_zeros_or_all_ones_fit_finitely():
    df = binary()
    df.loc[df.g < 3, "y"] = 0
    df.loc[df.g == 3, "y"] = 1
    fit = ml.glmer("y ~ x + (1 | g)", df, family="binomial")
    assert fit.converged
    assert np.isfinite(fit.fixef).all() and np.isfinite(fit.se).all()
    re = fit.ranef["g"]["(Intercept)"]
    assert np.isfinite(re).all()
    # shrunk towards 0, not infinite: below (all 0) and above (all 1) the others
    assert (re.iloc[:3] < re.mean()).all()
    assert re.iloc[3] > re.mean()


def test_all_zero_poisson_group_fits_finitely():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(40), 10)
    c = rng.poisson(np.exp(0.5 + rng.normal(0, 0.5, 40)[g]))
    c[g == 5] = 0
    fit = ml.glmer("c ~ 1 + (1 | g)", pd.DataFrame({"c": c, "g": g}), family="poisson")
    assert np.isfinite(fit.loglik)
    assert fit.ranef["g"].iloc[5, 0] == fit.ranef["g"].iloc[:, 0].min()


@pytest.mark.parametrize(
    "formula, data, family, message",
    [
        ("y ~ x + (1 | g)", binary().assign(y=lambda d: d.y * 2), "binomial", "outside"),
        (
            "cbind(s, n - s) ~ 1 + (1 | g)",
            pd.DataFrame({"s": [3, 5] * 10, "n": [4, 4] * 10, "g": np.repeat(np.arange(10), 2)}),
            "binomial",
            "negative counts",
        ),
        (
            "c ~ 1 + (1 | g)",
            pd.DataFrame({"c": [-1, 2] * 10, "g": np.repeat(np.arange(10), 2)}),
            "poisson",
            "negative",
        ),
        (
            "c ~ 1 + (1 | g)",
            pd.DataFrame({"c": [1.5, 2] * 10, "g": np.repeat(np.arange(10), 2)}),
            "poisson",
            "non-integer",
        ),
    ],
)
def test_invalid_responses_are_refused(formula, data, family, message):
    with pytest.raises(ml.DataError, match=message):
        ml.glmer(formula, data, family=family)


@pytest.mark.slow
def test_vector_quadrature_recovers_known_parameters():
    """Random intercept and slope (sd 0.894, 0.548, corr 0.404), 150 groups of
    40: AGQ with 5 nodes per dimension recovers β within 3 SE and the SDs
    within 25%."""
    df = binary(G=150, per=40, seed=11, slope=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ml.glmer("y ~ x + (x | g)", df, family="binomial", nAGQ=5)
    assert abs(fit.fixef["(Intercept)"] + 0.3) < 3 * fit.se["(Intercept)"]
    assert abs(fit.fixef["x"] - 0.8) < 3 * fit.se["x"]
    sd = fit.varcorr.query("var2 != var2")["sdcor"].to_numpy()
    np.testing.assert_allclose(sd, [np.sqrt(0.8), np.sqrt(0.3)], rtol=0.25)


@pytest.mark.slow
def test_vector_quadrature_loglik_settles_in_nagq():
    """contra_slope's model, (urban | district): the log-likelihood over nAGQ
    = 1 (Laplace), 3, 5, 7, 9 changes less and less (sequence in
    docs/glmm.md)."""
    from ..conftest import reference, reference_data

    ref = reference("contra_slope")
    data = reference_data(ref)
    ll = []
    for k in (1, 3, 5, 7, 9):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ll.append(ml.glmer(ref["formula"], data, family="binomial", nAGQ=k).loglik)
    steps = np.abs(np.diff(ll))
    assert steps[-1] < 1e-3
    assert steps[-1] < steps[0]
