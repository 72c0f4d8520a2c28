"""Correlation structures, variance functions and whitening
(:mod:`multilevel.longitudinal`): the algebra against dense matrices, the
level-wise specification, and bad input refused before fitting."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import multilevel as ml
from multilevel.errors import DataError, ModelError
from multilevel.longitudinal.whiten import ResidualStructure

from .nlme_cases import load


def _frame(n_groups=3, m=5, seed=0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), m)
    t = np.tile(np.arange(m, dtype=float), n_groups) + rng.uniform(0, 0.5, n_groups * m)
    return pd.DataFrame({"g": g.astype(str), "t": t, "y": rng.normal(size=g.size),
                         "x": rng.uniform(1, 3, g.size)})  # fmt: skip


@pytest.mark.parametrize(
    "cor",
    [
        ml.corAR1(0.4),
        ml.corCAR1(0.6, form="~ t | g"),
        ml.corCompSymm(0.3),
        ml.corARMA([0.5, -0.3], p=1, q=1),
        ml.corExp(1.5, form="~ t | g", nugget=False),
        ml.corSpher([3.0, 0.2], form="~ t | g", nugget=True),
    ],
)
def test_whitening_matches_the_dense_covariance(cor):
    """L⁻¹ whitens: ‖L⁻¹r‖² = rᵀV⁻¹r and log|V| per group, against numpy on
    each group's dense matrix (with a variance function too)."""
    d = _frame()
    var = ml.varPower(0.7, form="~ x")
    s = ResidualStructure(cor, var, d, ("g",))
    x = s.start()
    r = d["y"].to_numpy()
    w, logdet = s.whiten(x, r[:, None])
    sd = var.sd(s.split(x)[1])
    quad, ld = 0.0, 0.0
    gm = np.exp(np.log(sd).mean())
    for grp in d["g"].unique():
        idx = np.flatnonzero(d["g"].to_numpy() == grp)
        pos = d["t"].to_numpy()[idx] if cor.form.covariates else np.arange(1.0, idx.size + 1)
        C = cor.group_matrix(s.split(x)[0], pos if not cor.spatial else pos[:, None])
        S = np.diag(sd[idx] / gm)
        V = S @ C @ S
        quad += r[idx] @ np.linalg.solve(V, r[idx])
        ld += np.linalg.slogdet(V)[1]
    assert float(w[:, 0] @ w[:, 0]) == pytest.approx(quad, rel=1e-10)
    assert logdet == pytest.approx(ld, rel=1e-10, abs=1e-10)


@settings(max_examples=40, deadline=None)
@given(st.floats(-0.95, 0.95), st.integers(2, 6))
def test_arma_acf_of_an_ar1_is_a_power(phi, lag):
    c = ml.corARMA(p=1, q=0)
    x = c.to_free(np.array([phi]))
    assert c.acf(x, lag)[lag] == pytest.approx(phi**lag, abs=1e-12)


def test_unconstrained_scales_round_trip():
    for c, v in [
        (ml.corAR1(), [-0.7]),
        (ml.corCAR1(), [0.3]),
        (ml.corARMA(p=2, q=1), [0.5, 0.2, 0.4]),
    ]:
        c.m = 5
        np.testing.assert_allclose(c.from_free(c.to_free(np.array(v))), v, atol=1e-12)
    c = ml.corSymm()
    c.m = 3
    v = np.array([0.5, 0.2, -0.1])
    np.testing.assert_allclose(c.from_free(c.to_free(v)), v, atol=1e-12)


def test_gls_without_structure_is_least_squares():
    d = _frame(6, 8)
    f = ml.gls("y ~ x", d)
    X = np.column_stack([np.ones(len(d)), d["x"]])
    beta, res, *_ = np.linalg.lstsq(X, d["y"], rcond=None)
    np.testing.assert_allclose(f.coef, beta, atol=1e-10)
    assert f.sigma == pytest.approx(np.sqrt(res[0] / (len(d) - 2)), rel=1e-10)
    new = pd.DataFrame({"x": [1.5, 2.5]})
    np.testing.assert_allclose(f.predict(new), beta[0] + beta[1] * new["x"], atol=1e-10)


def test_level_wise_specification_takes_the_structures():
    ref, data = load("ovary_lme_ar1")
    spec = ml.Multilevel("follicles ~ sin2pt + cos2pt", group="Mare")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = spec.fit(data, correlation=ml.corAR1())
    assert m.loglik == pytest.approx(ref["loglik"], abs=1e-4)
    assert m.corstruct["Phi"] == pytest.approx(ref["corStruct"]["Phi"], rel=1e-3)
    assert m.df_model == ref["df_model"]


def test_bad_input_is_refused_before_fitting():
    d = _frame()
    with pytest.raises(DataError, match="'tt' is not a column"):
        ml.gls("y ~ x", d, correlation=ml.corCAR1(form="~ tt | g"))
    with pytest.raises(DataError, match="must be numeric"):
        ml.gls("y ~ x", d, correlation=ml.corCAR1(form="~ g | g"))
    dup = d.assign(k=np.tile([1.0, 1.0, 2.0, 3.0, 4.0], 3))
    with pytest.raises(DataError, match="same position"):
        ml.gls("y ~ x", dup, correlation=ml.corAR1(form="~ k | g"))
    with pytest.raises(DataError, match="integer positions"):
        ml.gls("y ~ x", d, correlation=ml.corAR1(form="~ t | g"))
    with pytest.raises(DataError, match="corSymm's positions"):
        ml.gls("y ~ x", d.assign(k=np.tile([0.0, 1, 2, 3, 4], 3)),
               correlation=ml.corSymm(form="~ k | g"))  # fmt: skip
    with pytest.raises(DataError, match="is 0 in some rows"):
        ml.gls("y ~ x", d.assign(v=0.0), weights=ml.varPower(form="~ v"))
    with pytest.raises(DataError, match="must be positive"):
        ml.gls("y ~ x", d.assign(v=-1.0), weights=ml.varFixed("~ v"))
    with pytest.raises(ModelError, match="varIdent needs strata"):
        ml.gls("y ~ x", d, weights=ml.varIdent())
    with pytest.raises(ModelError, match="Phi must be in"):
        ml.gls("y ~ x", d, correlation=ml.corAR1(1.5))
    with pytest.raises(ModelError, match="correlation must be"):
        ml.gls("y ~ x", d, correlation="AR1")
    with pytest.raises(ModelError, match="not nested"):
        crossed = d.assign(h=np.tile(["a", "b", "c", "d", "e"], 3))
        ml.lme("y ~ x", "~ 1 | h", crossed, correlation=ml.corAR1(form="~ 1 | g"))
    with pytest.raises(ModelError, match="corARMA needs"):
        ml.corARMA(p=0, q=0)
