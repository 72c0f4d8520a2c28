"""The exact centring and scaling map (``linalg.affine``): M = M̃N, the
row-by-row form used inside the cross-product pass, and the small closed
forms the θ maps use."""

from __future__ import annotations

import numpy as np
import pytest

from multilevel.linalg.affine import (
    affine,
    affine_parts,
    apply_affine,
    lower_factor,
    solve_small,
)


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (1.7e9, 86400.0), (5.0, 1e-8), (0.0, 1e200)])
def test_the_map_is_exact_and_centres(shift, scale):
    rng = np.random.default_rng(1)
    n = 500
    M = np.column_stack([np.ones(n), shift + scale * rng.normal(size=n), rng.integers(0, 2, n)])
    N = affine(M, center=True, ones=0)
    Mt = apply_affine(M, N)
    big = np.abs(M).max(axis=0)
    # exact up to the rounding of M's own values
    assert np.all(np.abs(Mt @ N - M) <= 1e-12 * big)
    assert np.abs(Mt[:, 1].mean()) < 1e-6 and Mt[:, 1].std() == pytest.approx(1.0, rel=1e-6)
    shifts, inv_scales = affine_parts(N)
    assert np.all(np.abs((M - shifts) * inv_scales - Mt) <= 1e-12 * big / np.diag(N))


def test_few_and_many_columns_give_the_same_shifts_and_scales():
    # up to FEW_COLUMNS a column at a time, beyond that vectorised
    rng = np.random.default_rng(2)
    M = np.column_stack([np.ones(300), 1e3 + rng.normal(size=(300, 12)) * np.arange(1, 13)])
    many = affine(M, center=True, ones=0)
    for j in range(1, 13):
        few = affine(M[:, [0, j]], center=True, ones=0)
        assert few[0, 1] == pytest.approx(many[0, j], rel=1e-12)
        assert few[1, 1] == pytest.approx(many[j, j], rel=1e-12)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_solve_small_and_lower_factor(q):
    rng = np.random.default_rng(q)
    A = np.triu(rng.normal(size=(q, q))) + 3 * np.eye(q)
    B = np.tril(rng.normal(size=(q, q)))
    np.testing.assert_allclose(solve_small(A, B), np.linalg.solve(A, B), rtol=1e-12, atol=1e-14)
    L = lower_factor(B)
    np.testing.assert_allclose(L @ L.T, B @ B.T, rtol=1e-12, atol=1e-14)
    assert np.allclose(L, np.tril(L)) and np.all(np.diag(L) >= 0)
