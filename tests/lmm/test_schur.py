"""The Schur complement of the terms after the first: dense and sparse
factorizations agree, and the choice follows the pattern."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
from multilevel.lmm import schur as rest

from ..conftest import reference, reference_data


def fit_case(case: str):
    ref = reference(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ml.lmer(ref["formula"], reference_data(ref)), ref


@pytest.mark.parametrize("case", ["penicillin_reml", "pastes_reml"])
def test_sparse_path_gives_the_dense_answer(case, monkeypatch):
    dense, ref = fit_case(case)
    assert dense.criterion.scaled._rest.kind == "dense"
    monkeypatch.setattr(rest, "DENSE_MAX", 0)
    monkeypatch.setattr(rest, "SPARSE_DENSITY", 1.1)
    sparse, _ = fit_case(case)
    assert sparse.criterion.scaled._rest.kind == "sparse"
    # the sparse path optimises without gradients (BOBYQA), the dense one with
    # them (BFGS): the same optimum up to the optimisers' tolerances
    assert sparse.loglik == pytest.approx(dense.loglik, abs=1e-6)
    assert sparse.loglik >= ref["loglik"] - 1e-4
    np.testing.assert_allclose(sparse.fixef, dense.fixef, rtol=1e-6)
    for g in dense.ranef:
        np.testing.assert_allclose(sparse.ranef[g], dense.ranef[g], rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(sparse.ranef_condsd[g], dense.ranef_condsd[g], rtol=1e-3)
    # at the same θ both factorizations give the same criterion and conditional variances
    th = dense.optinfo.theta
    assert sparse.criterion(th) == pytest.approx(dense.criterion(th), rel=1e-12)


def nested(n_districts: int, schools_per: int, students_per: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ns = n_districts * schools_per
    school = np.repeat(np.arange(ns), students_per)
    district = school // schools_per
    x = rng.normal(size=school.size)
    y = (
        1
        + 0.3 * x
        + rng.normal(0, 0.5, n_districts)[district]
        + rng.normal(0, 0.8, ns)[school]
        + rng.normal(size=school.size)
    )
    return pd.DataFrame({"y": y, "x": x, "school": school, "district": district})


def test_nested_factors_with_many_levels_use_the_sparse_path():
    df = nested(2000, 3, 4)
    fit = ml.lmer("y ~ x + (1 | district/school)", df)
    assert fit.criterion.scaled._rest.kind == "sparse"
    assert fit.converged
    sd = fit.varcorr.set_index("grp")["sdcor"]
    assert sd["school:district"] == pytest.approx(0.8, rel=0.15)
    assert sd["district"] == pytest.approx(0.5, rel=0.25)


def test_randomly_crossed_levels_are_factored_dense():
    """Thin but fill-prone: 3,000 x 3,000 levels crossed at random (about 30
    links per level) fill the factor in; a nested pattern of the same size
    and a chain of neighbours stay sparse."""
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    n, q = 18000, 3000
    a, b = rng.integers(0, q, n), rng.integers(0, q, n)
    Z1 = sp.csr_matrix((np.ones(n), (a, np.arange(n))), shape=(q, n))
    Z2 = sp.csr_matrix((np.ones(n), (b, np.arange(n))), shape=(q, n))
    links = (Z2 @ Z1.T) @ (Z1 @ Z2.T) + sp.identity(q)
    assert links.nnz / q**2 < rest.SPARSE_DENSITY  # thin ...
    assert not rest.sparse_pays(links.tocsr())  # ... but dense is cheaper
    blocks = sp.block_diag([np.ones((3, 3))] * (q // 3), format="csr")
    assert rest.sparse_pays(blocks)
    chain = sp.diags([1.0, 1.0, 1.0], [-1, 0, 1], shape=(q, q), format="csr")
    assert rest.sparse_pays(chain)
