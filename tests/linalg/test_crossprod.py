"""Per-level cross-products (``crossprod``): the compiled one-pass kernel, the
sorted ``reduceat`` and the unsorted ``bincount`` paths give the same sums as
a plain loop, and ``cross_products`` blocks equal the dense ZᵀZ they stand for."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import multilevel.linalg.crossprod as cpm
from multilevel.linalg.crossprod import cross_products, level_crossprod


def _loop(codes, A, B, nlev):
    out = np.zeros((nlev, A.shape[1], B.shape[1]))
    for i, c in enumerate(codes):
        out[c] += np.outer(A[i], B[i])
    return out


@pytest.fixture(params=["compiled", "numpy"])
def path(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(cpm, "KERNEL_DISABLED", True)
    elif cpm._kernel() is None:
        pytest.skip("the compiled kernel was not built")
    return request.param


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    nlev=st.integers(1, 7),
    a=st.integers(1, 3),
    b=st.integers(1, 4),
    sort=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_level_crossprod_equals_a_loop(n, nlev, a, b, sort, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, nlev, size=n)
    if sort:
        codes = np.sort(codes)
    A, B = rng.normal(size=(n, a)), rng.normal(size=(n, b))
    expected = _loop(codes, A, B, nlev)
    for disabled in (False, True):
        cpm.KERNEL_DISABLED = disabled
        try:
            np.testing.assert_allclose(level_crossprod(codes, A, B, nlev), expected, atol=1e-12)
            np.testing.assert_allclose(
                level_crossprod(codes, A, A, nlev), _loop(codes, A, A, nlev), atol=1e-12
            )
        finally:
            cpm.KERNEL_DISABLED = False


def test_cross_products_equal_dense_blocks(path):
    rng = np.random.default_rng(2)
    n = 200
    c1, c2 = rng.integers(0, 12, n), rng.integers(0, 5, n)
    Z1 = np.column_stack([np.ones(n), rng.normal(size=n)])
    Z2 = np.ones((n, 1))
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.normal(size=n)
    cp = cross_products([Z1, Z2], [c1, c2], [12, 5], X, y)
    Zd1 = np.zeros((n, 24))
    for i in range(n):
        Zd1[i, 2 * c1[i] : 2 * c1[i] + 2] = Z1[i]
    Zd2 = np.zeros((n, 5))
    Zd2[np.arange(n), c2] = 1.0
    F = np.column_stack([X, y])
    D1 = np.stack([Zd1[:, 2 * j : 2 * j + 2].T @ Zd1[:, 2 * j : 2 * j + 2] for j in range(12)])
    np.testing.assert_allclose(cp.D1, D1, atol=1e-12)
    np.testing.assert_allclose(cp.B1F.reshape(24, 3), Zd1.T @ F, atol=1e-12)
    np.testing.assert_allclose(cp.A1R.toarray(), Zd1.T @ Zd2, atol=1e-12)
    np.testing.assert_allclose(cp.ARR.toarray(), Zd2.T @ Zd2, atol=1e-12)
    np.testing.assert_allclose(cp.ARF, Zd2.T @ F, atol=1e-12)
    np.testing.assert_allclose(cp.AFF, F.T @ F, atol=1e-12)


@pytest.mark.parametrize("shift", [0.0, 1.7e9])
@pytest.mark.parametrize("order", ["random", "sorted"])
def test_mapped_cross_products_equal_those_of_the_mapped_columns(path, shift, order, monkeypatch):
    # one term: the compiled pass maps each row as it reads it (blocks of 256
    # rows; runs of one level summed by columns, so sorted rows and block
    # ends inside a run); otherwise the mapped columns are formed first.  Both
    # are the cross-products of [Z V⁻¹, [X y] N_F⁻¹], computed here from the
    # mapped columns directly
    from multilevel.linalg.affine import affine, apply_affine

    rng = np.random.default_rng(5)
    n = 700
    codes = rng.integers(0, 9, n)
    if order == "sorted":
        codes = np.sort(codes)
    t = shift + 86400.0 * rng.normal(size=n)
    X = np.column_stack([np.ones(n), t, rng.normal(size=n)])
    Z = np.column_stack([np.ones(n), t])
    y = 1e3 + rng.normal(size=n)
    V = affine(Z, center=True, ones=0)
    NF = affine(np.column_stack([X, y]), center=True, ones=0)
    with monkeypatch.context() as m:
        if path == "compiled":  # no mapped copy of the rows on this path
            m.setattr(cpm, "apply_affine", None)
        cp = cross_products([Z], [codes], [9], X, y, maps=([V], NF))
    Zt, Ft = apply_affine(Z, V), apply_affine(np.column_stack([X, y]), NF)
    assert np.abs(Zt[:, 1].mean()) < 0.2 and np.abs(Ft[:, 3].mean()) < 0.2  # centred
    ref = cross_products([Zt], [codes], [9], Ft[:, :3], Ft[:, 3])
    for name in ("D1", "B1F", "AFF"):
        np.testing.assert_allclose(getattr(cp, name), getattr(ref, name), rtol=1e-9, atol=1e-9)
    assert cp.n == n and cp.p == 3 and cp.q == [2] and cp.nlevels == [9]


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 80),
    levels=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    shift=st.sampled_from([0.0, 3.0, 1.7e9]),
    seed=st.integers(0, 10_000),
)
def test_scalar_terms_compiled_pass_equals_the_mapped_columns(n, levels, shift, seed):
    """Several scalar terms: the compiled pass, mapping each row as it reads
    it, gives the dense blocks of the mapped columns (crossed and nested
    codes, weighted columns, an intercept shift in [X y]), the columns mapped
    here as the pass maps them, (M − shifts)·(1/scales)."""
    from multilevel.linalg.affine import affine, affine_parts

    def mapped(M, N):
        shifts, r = affine_parts(N)
        return (M - shifts) * r

    if cpm.kernel("_kernels", "scalar_crossprod") is None:
        pytest.skip("the compiled kernel of the pass was not built")
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, k, n) for k in sorted(levels, reverse=True)]
    nlev = [int(c.max()) + 1 for c in codes]
    Zs = [rng.uniform(0.5, 2.0, (n, 1)) * (3.0 if k % 2 else 1.0) for k in range(len(codes))]
    X = np.column_stack([np.ones(n), shift + rng.normal(size=n)])
    y = shift + rng.normal(size=n)
    Vs = [affine(Z, center=False) for Z in Zs]
    NF = affine(np.column_stack([X, y]), center=True, ones=0)
    cp = cross_products(Zs, codes, nlev, X, y, maps=(Vs, NF))
    cpm.KERNEL_DISABLED = True
    try:
        Zt = [mapped(Z, V) for Z, V in zip(Zs, Vs, strict=True)]
        Ft = mapped(np.column_stack([X, y]), NF)
        ref = cross_products(Zt, codes, nlev, Ft[:, :2], Ft[:, 2])
    finally:
        cpm.KERNEL_DISABLED = False
    assert cp.dense is not None and ref.dense is not None
    for a, b in [
        (cp.D1, ref.D1), (cp.B1F, ref.B1F), (cp.AFF, ref.AFF), (cp.ARF, ref.ARF),
        (cp.dense[0], ref.dense[0]), (cp.dense[1], ref.dense[1]),
    ]:  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * max(1.0, np.abs(b).max()))
    assert cp.q == [1] * len(codes) and cp.nlevels == nlev and cp.n == n and cp.p == 2


def test_small_models_dense_blocks_equal_the_sparse_assembly(monkeypatch):
    """The cross blocks of a small model, formed dense, equal the sparse
    assembly's (vector and scalar terms, crossed)."""
    import pandas as pd

    import multilevel as ml

    rng = np.random.default_rng(0)
    n = 300
    d = pd.DataFrame({
        "y": rng.normal(size=n), "x": rng.normal(size=n),
        "a": rng.integers(0, 20, n).astype(str), "b": rng.integers(0, 8, n).astype(str),
        "c": rng.integers(0, 5, n).astype(str),
    })  # fmt: skip
    formula = "y ~ x + (x | a) + (1 | b) + (x | c)"
    monkeypatch.setattr(cpm, "SMALL_BLOCKS", 0)
    sparse = ml.lmer(formula, d).criterion.scaled.cp
    monkeypatch.setattr(cpm, "SMALL_BLOCKS", 1_000_000)
    dense = ml.lmer(formula, d).criterion.scaled.cp
    for name in ("A1R", "ARR"):
        np.testing.assert_allclose(
            getattr(dense, name).toarray(), getattr(sparse, name).toarray(), rtol=1e-13, atol=1e-12
        )
    np.testing.assert_allclose(dense.ARF, sparse.ARF, rtol=1e-13, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 12),
    cols=st.integers(0, 12),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_dense_to_csr_keeps_every_nonzero_in_sorted_rows(rows, cols, density, seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(rows, cols)) * (rng.random((rows, cols)) < density)
    B = cpm.dense_to_csr(A)
    B.check_format(full_check=True)
    assert B.shape == A.shape and B.nnz == np.count_nonzero(A)
    np.testing.assert_array_equal(B.toarray(), A)
    for i in range(rows):  # column indices ascending within each row
        assert np.all(np.diff(B.indices[B.indptr[i] : B.indptr[i + 1]]) > 0)


def test_small_blocks_stay_dense_until_asked_for_sparse():
    """A small crossed fit reads its cross blocks dense (the kernels' CSR
    arrays come from them); the sparse forms, built on first use, and sums of
    chunks agree with them."""
    import multilevel as ml

    cp = ml.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", ml.datasets.load("penicillin"))
    cp = cp.criterion.scaled.cp
    assert cp.dense is not None and cp._A1R is None and cp._ARR is None
    A1R, ARR = cp.dense
    indptr, indices, values = cp.A1R_csr64
    np.testing.assert_array_equal(cpm.dense_to_csr(A1R).indptr, indptr)
    np.testing.assert_array_equal(cp.A1R.toarray(), A1R)  # built now
    np.testing.assert_array_equal(cp.ARR.toarray(), ARR)
    assert cp.Qr == ARR.shape[0] and cp.has_rest
    twice = cp + cp
    np.testing.assert_allclose(twice.ARR_dense(), 2 * ARR)
    np.testing.assert_allclose(twice.A1R.toarray(), 2 * A1R)
