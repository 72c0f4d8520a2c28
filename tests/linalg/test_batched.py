"""Per-level small factorizations stored level-last (``linalg.batched``)."""

from __future__ import annotations

import numpy as np
import pytest

from multilevel.linalg import batched


@pytest.mark.parametrize("q", [1, 2, 3])
def test_factor_levels_equals_a_loop_over_levels(q):
    rng = np.random.default_rng(q)
    n = 7
    A = rng.normal(size=(n, q, q))
    D = np.moveaxis(A @ np.swapaxes(A, 1, 2), 0, -1)  # (q, q, n), positive semidefinite
    T = np.tril(rng.normal(size=(q, q)))
    L, W = batched.factor_levels(T, D)
    for i in range(n):
        S = T.T @ D[:, :, i] @ T + np.eye(q)
        Li = np.linalg.cholesky(S)
        np.testing.assert_allclose(L[:, :, i], Li, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(W[:, :, i], np.linalg.solve(Li, T.T), rtol=1e-12, atol=1e-12)


def test_factor_levels_refuses_an_indefinite_block():
    D = np.zeros((2, 2, 3))
    D[:, :, 1] = -5.0 * np.eye(2)
    assert batched.factor_levels(np.eye(2), D) is None
