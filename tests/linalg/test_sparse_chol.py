"""Sparse Cholesky with a fixed pattern and its selected inverse, against
dense linear algebra."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from multilevel.linalg.sparse_chol import SparseCholesky, available, lower_gram_entries

pytestmark = pytest.mark.skipif(not available(), reason="the compiled kernel was not built")


def _spd(n: int, density: float, seed: int, blocks: list[int] | None = None) -> sp.csc_matrix:
    rng = np.random.default_rng(seed)
    if blocks:  # nested: small clusters joined by a few bordering levels
        A = sp.block_diag([sp.random(b, b, density=0.5, random_state=rng) for b in blocks])
        B = sp.random(A.shape[0], 4, density=0.3, random_state=rng)
        A = sp.bmat([[A, B], [B.T, sp.random(4, 4, density=0.5, random_state=rng)]])
    else:
        A = sp.random(n, n, density=density, random_state=rng)
    A = (A + A.T).tocsr()
    return (A @ A.T + 2.0 * sp.identity(A.shape[0])).tocsc()


def _build(M: sp.spmatrix) -> tuple[SparseCholesky, np.ndarray, np.ndarray, np.ndarray]:
    ch, rows, cols = SparseCholesky.of_pattern(M)
    return ch, M.toarray()[rows, cols], rows, cols


@given(
    n=st.integers(1, 60),
    density=st.floats(0.0, 0.3),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=40, deadline=None)
def test_factor_solve_and_selected_inverse_equal_dense(n, density, seed):
    M = _spd(n, density, seed)
    ch, data, rows, cols = _build(M)
    Md = M.toarray()
    assert ch.factor(data)
    Minv = np.linalg.inv(Md)
    scale = np.abs(Minv).max()
    assert ch.logdet() == pytest.approx(np.linalg.slogdet(Md)[1], rel=1e-12, abs=1e-10)
    B = np.random.default_rng(seed).normal(size=(n, 3))
    np.testing.assert_allclose(ch.solve(B), Minv @ B, atol=1e-12 * scale * np.abs(B).max() * n)
    Z = ch.selected_inverse()
    np.testing.assert_allclose(
        Z[ch.positions(rows, cols)], Minv[rows, cols], atol=1e-13 * scale * n
    )
    diag = np.arange(n)
    np.testing.assert_allclose(Z[ch.positions(diag, diag)], np.diag(Minv), atol=1e-13 * scale * n)


def test_a_nested_pattern_keeps_the_factor_sparse():
    """Clusters joined through a few shared levels: the ordering eliminates
    the clusters first, so the factor holds little more than the matrix."""
    M = _spd(0, 0.0, 3, blocks=[6, 8, 5, 7] * 25)
    ch, data, rows, cols = _build(M)
    assert ch.nnz <= 1.5 * (M.nnz + M.shape[0]) / 2
    assert ch.factor(data)
    np.testing.assert_allclose(
        ch.selected_inverse()[ch.positions(rows, cols)], np.linalg.inv(M.toarray())[rows, cols],
        atol=1e-12,
    )  # fmt: skip


def test_an_indefinite_matrix_is_reported():
    M = sp.csc_matrix(np.array([[1.0, 2.0], [2.0, 1.0]]))
    ch, data, _, _ = _build(M)
    assert not ch.factor(data)


def test_entries_off_the_pattern_are_refused():
    M = sp.csc_matrix(np.diag([1.0, 2.0, 3.0]))
    ch, _, _, _ = _build(M)
    with pytest.raises(ValueError):
        ch.positions(np.array([0]), np.array([2]))


@given(n=st.integers(1, 150), npairs=st.integers(0, 400), seed=st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_entries_of_the_gram_matrix_of_a_triangle(n, npairs, seed):
    """(WᵀW)_ab from the columns' products, strips of 32 rows and their ends;
    the upper triangle (garbage in a factor inverted in place) is not read."""
    rng = np.random.default_rng(seed)
    W = np.asfortranarray(rng.normal(size=(n, n)))
    a, b = rng.integers(0, n, npairs), rng.integers(0, n, npairs)
    a, b = np.maximum(a, b), np.minimum(a, b)
    a, b = np.append(a, n - 1), np.append(b, 0)  # the longest and shortest products
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    low = np.tril(W)
    expect = (low.T @ low)[a, b]
    np.testing.assert_allclose(lower_gram_entries(W, a, b), expect, rtol=1e-12, atol=1e-12)


def test_gram_entries_outside_the_triangle_are_refused():
    W = np.asfortranarray(np.eye(4))
    for a, b in [([1], [2]), ([4], [0]), ([2, 1], [0, 0])]:
        with pytest.raises(ValueError):
            lower_gram_entries(W, np.array(a), np.array(b))
