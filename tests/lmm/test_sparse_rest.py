"""The rest block by a sparse Cholesky factorization (nested clusters of
levels) against the dense one: the same criterion, gradient and fit."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
import multilevel.lmm.schur as schur
from multilevel.linalg.sparse_chol import available
from multilevel.lmm.sparse_rest import SparseRest

pytestmark = pytest.mark.skipif(not available(), reason="the compiled kernel was not built")


def _students_teachers_schools(seed: int = 4) -> pd.DataFrame:
    """Students seen by two or three teachers of their school (star's shape):
    after the students are eliminated, teachers link only within schools."""
    rng = np.random.default_rng(seed)
    n_school, per_school, n_student = 40, 8, 1500
    school_of_student = rng.integers(0, n_school, n_student)
    rows = []
    for s in range(n_student):
        sch = school_of_student[s]
        for t in rng.choice(per_school, size=rng.integers(2, 4), replace=False):
            rows.append((s, sch * per_school + t, sch))
    st, te, sc = (np.array(c) for c in zip(*rows, strict=True))
    y = (rng.normal(0, 1.0, n_student)[st] + rng.normal(0, 0.6, n_school * per_school)[te]
         + rng.normal(0, 0.4, n_school)[sc] + rng.normal(size=st.size))  # fmt: skip
    return pd.DataFrame(
        {"y": y, "id": st.astype(str), "tch": te.astype(str), "sch": sc.astype(str)}
    )


def _fit(d: pd.DataFrame) -> ml.LmerFit:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ml.lmer("y ~ 1 + (1 | id) + (1 | tch) + (1 | sch)", d)


def test_nested_rest_block_takes_the_sparse_factorization_and_fits_as_dense(monkeypatch):
    d = _students_teachers_schools()
    fit = _fit(d)
    rb = fit.criterion.scaled._rest
    assert isinstance(rb.staged, SparseRest)
    monkeypatch.setattr(SparseRest, "plan", classmethod(lambda cls, Q, keys: None))
    monkeypatch.setattr(schur, "STAGED_MIN", 10**9)  # the plain dense factorization
    dense = _fit(d)
    assert dense.criterion.scaled._rest.staged is None
    assert fit.optinfo.criterion == pytest.approx(dense.optinfo.criterion, abs=1e-8)
    np.testing.assert_allclose(fit.optinfo.theta, dense.optinfo.theta, rtol=1e-6)
    crit_s, crit_d = fit.criterion.scaled, dense.criterion.scaled
    for theta in (fit.optinfo.internal_theta, np.array([0.8, 0.5, 0.3])):
        v1, g1 = crit_s.value_and_gradient(theta)
        v0, g0 = crit_d.value_and_gradient(theta)
        assert v1 == pytest.approx(v0, rel=1e-12)
        np.testing.assert_allclose(g1, g0, rtol=1e-7, atol=1e-9 * crit_s.n)
    np.testing.assert_allclose(fit.fixef, dense.fixef, rtol=1e-7)
    for cs, cd in zip(fit.condvar, dense.condvar, strict=True):
        np.testing.assert_allclose(cs, cd, rtol=1e-6)
    for name, frame in fit.ranef.items():
        np.testing.assert_allclose(
            frame.to_numpy(), dense.ranef[name].to_numpy(), rtol=1e-6, atol=1e-9
        )
