"""Sparse Cholesky factorization with a fixed pattern, and the entries of the
inverse on the factor's pattern (the selected inverse).

For a symmetric positive definite M whose pattern is known in advance (the
random effects' Schur complement: its pattern is set by the design, its
values change with θ), a fill-reducing ordering P and the pattern of the
factor of PMPᵀ = LLᵀ are found once; each factorization is then numeric only.
M⁻¹ on the pattern of L + Lᵀ (which contains M's) follows from L by the
recurrence of Takahashi et al. (1973), column by column from the last:

    Z_ij = −(1/L_jj) Σ_{k∈S_j} L_kj Z_ik     (i ∈ S_j)
    Z_jj = 1/L_jj² − (1/L_jj) Σ_{k∈S_j} L_kj Z_kj

(S_j the rows below the diagonal in column j), at a cost of the order of the
factorization's.  The arithmetic is compiled (``multilevel._sparse_chol``);
without it :func:`available` is False and callers factor another way.  The
same extension gives entries of a dense factor's inverse at a sparse set of
positions (:func:`lower_gram_entries`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from multilevel.compiled import kernel


def available() -> bool:
    return kernel("_sparse_chol", "numeric") is not None


GRAM_BLOCK = 32  # rows of W per pass of the compiled loop (the kernel's fast path)


def gram_available() -> bool:
    return kernel("_sparse_chol", "gram_entries") is not None


def lower_gram_entries(W: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(WᵀW)_ab = Σ_{k ≥ a} W_ka W_kb for a lower triangular W (Fortran order;
    its upper triangle is not read) at pairs a ≥ b (int64, sorted by a): with
    W = L⁻¹ these are entries of (LLᵀ)⁻¹ at Σ (n − a) multiply-adds, where
    the whole product costs n³/6.  The compiled loop passes over W in strips
    of rows that stay in cache."""
    if not W.flags.f_contiguous or W.shape[0] != W.shape[1]:
        raise ValueError("W must be square and in Fortran order")
    a = np.ascontiguousarray(a, dtype=np.int64)
    b = np.ascontiguousarray(b, dtype=np.int64)
    out = np.empty(a.size)
    # W.T is C-ordered: its rows are W's columns
    kernel("_sparse_chol", "gram_entries")(W.T, a, b, out, GRAM_BLOCK)
    return out


def fill_reducing_order(pattern: sp.spmatrix) -> np.ndarray:
    """A symmetric fill-reducing ordering of ``pattern`` (old indices in new
    order): SuperLU's minimum degree on AᵀA + A, read off a factorization of a
    diagonally dominant matrix with that pattern."""
    P = sp.csc_matrix(abs(pattern), dtype=float)
    P = P + P.T
    n = P.shape[0]
    dom = np.asarray(P.sum(axis=1)).ravel() + 1.0
    M = (P + sp.diags(dom)).tocsc()
    lu = spla.splu(
        M, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
    )
    return np.argsort(lu.perm_c) if n else np.zeros(0, dtype=np.int64)


class SparseCholesky:
    """LLᵀ of PMPᵀ for matrices with a fixed pattern.

    Built from M's lower-triangle entries (``rows`` ≥ ``cols``, the diagonal
    included, each once): ``factor(vals)`` takes the values in that order and
    returns whether M was positive definite."""

    def __init__(self, n: int, rows: np.ndarray, cols: np.ndarray, order: np.ndarray | None = None):
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        self.n = n
        if order is None:
            pattern = sp.csc_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
            order = fill_reducing_order(pattern)
        self.order = np.asarray(order, dtype=np.int64)
        inv = np.empty(n, dtype=np.int64)
        inv[self.order] = np.arange(n)
        self.inv = inv  # new index of each old one
        # the upper triangle of PMPᵀ in CSC: entry (r, c) of M goes to
        # (min, max) of its new indices; _src says where each value comes from
        r_new, c_new = inv[rows], inv[cols]
        top, col = np.minimum(r_new, c_new), np.maximum(r_new, c_new)
        self._src = np.lexsort((top, col))
        self.Ai = np.ascontiguousarray(top[self._src])
        counts = np.bincount(col, minlength=n)
        self.Ap = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=self.Ap[1:])
        lp, li = kernel("_sparse_chol", "symbolic")(self.Ap, self.Ai, n)
        self.Lp = np.frombuffer(lp, dtype=np.int64)
        self.Li = np.frombuffer(li, dtype=np.int64)
        self.Lx = np.zeros(self.Li.size)
        self._keys = None

    @classmethod
    def of_pattern(cls, pattern: sp.spmatrix) -> tuple[SparseCholesky, np.ndarray, np.ndarray]:
        """For a symmetric pattern: the factorization object and the (rows,
        cols) of the lower-triangle entries whose values ``factor`` takes."""
        P = sp.coo_matrix(abs(sp.csc_matrix(pattern, dtype=float)))
        P = (P + P.T + sp.identity(P.shape[0])).tocoo()
        low = P.row >= P.col
        rows, cols = P.row[low].astype(np.int64), P.col[low].astype(np.int64)
        return cls(P.shape[0], rows, cols), rows, cols

    @property
    def nnz(self) -> int:
        """Entries of L (diagonal included)."""
        return int(self.Li.size)

    @property
    def flops(self) -> float:
        """Multiplications of one factorization, Σ_j c_j² over L's column counts
        (the selected inverse costs about as much)."""
        c = np.diff(self.Lp).astype(np.float64)
        return float((c * c).sum())

    def factor(self, vals: np.ndarray) -> bool:
        Ax = np.ascontiguousarray(np.asarray(vals, dtype=float)[self._src])
        return bool(
            kernel("_sparse_chol", "numeric")(self.Ap, self.Ai, Ax, self.Lp, self.Li, self.Lx)
        )

    def logdet(self) -> float:
        """log|M| from the last factorization."""
        return float(2.0 * np.log(self.Lx[self.Lp[:-1]]).sum())

    def solve(self, B: np.ndarray, Lx: np.ndarray | None = None) -> np.ndarray:
        """M⁻¹B for B with n rows (one or more columns); ``Lx`` a kept
        factor's values (default the last factorization's)."""
        B = np.asarray(B, dtype=float)
        X = np.ascontiguousarray(B[self.order].reshape(self.n, -1))
        kernel("_sparse_chol", "solve")(self.Lp, self.Li, self.Lx if Lx is None else Lx, X)
        return X[self.inv].reshape(B.shape)

    def positions(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Slots in the selected inverse of the entries (rows, cols) of M⁻¹
        (each must lie on M's pattern or the factor's)."""
        if self._keys is None:
            col = np.repeat(np.arange(self.n), np.diff(self.Lp))
            self._keys = col * self.n + self.Li  # sorted: columns, then rows
        r, c = self.inv[np.asarray(rows)], self.inv[np.asarray(cols)]
        lo, hi = np.minimum(r, c), np.maximum(r, c)
        key = lo * self.n + hi
        pos = np.searchsorted(self._keys, key)
        if pos.size and (pos.max() >= self._keys.size or np.any(self._keys[pos] != key)):
            raise ValueError("an entry outside the pattern of the factor")
        return pos

    def selected_inverse(self, Lx: np.ndarray | None = None) -> np.ndarray:
        """M⁻¹ on the factor's pattern (index with :meth:`positions`)."""
        Z = np.empty_like(self.Lx)
        kernel("_sparse_chol", "selinv")(self.Lp, self.Li, self.Lx if Lx is None else Lx, Z)
        return Z
