"""Cross-products of the blocks of [Z X y], formed in one pass over the rows.

After this pass nothing in an LMM fit touches the rows again: the profiled
criterion depends on the data only through these blocks.  Random-effects
terms come ordered by number of levels, largest first.  The first term's
block ZᵀZ is kept as a stack of q₁ x q₁ matrices (one per level); the cross
block between it and the other terms ("the rest") and the rest's own block as
sparse matrices; the criterion decides how to factor the rest's Schur
complement (dense or sparse) from its pattern.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from multilevel.compiled import kernel
from multilevel.linalg.affine import affine_parts, apply_affine


def group_sums(codes: np.ndarray, M: np.ndarray, nlevels: int) -> np.ndarray:
    """Per-level column sums of M (n x c) -> (nlevels x c), vectorized."""
    n, c = M.shape
    if n and np.all(codes[1:] >= codes[:-1]):
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        sums = np.add.reduceat(M, starts, axis=0)
        if len(starts) == nlevels:
            return sums
        out = np.zeros((nlevels, c))
        out[codes[starts]] = sums
        return out
    return np.stack(
        [np.bincount(codes, weights=M[:, j], minlength=nlevels) for j in range(c)], axis=1
    )


KERNEL_DISABLED = False  # tests switch the compiled kernel off to check the numpy path


def _kernel():
    """The compiled one-pass per-level cross-product, if it was built."""
    return kernel("_kernels", "level_crossprod")


def _outer_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Row-wise outer products, flattened: (n, a*b)."""
    return (A[:, :, None] * B[:, None, :]).reshape(A.shape[0], -1)


def level_crossprod(codes: np.ndarray, A: np.ndarray, B: np.ndarray, nlevels: int) -> np.ndarray:
    """Σ over the rows of each level of aᵢbᵢᵀ: (nlevels, a, b).

    The compiled kernel (``_kernels.level_crossprod``) accumulates row by row
    in any order.  Without it: sorted levels, one reduceat over the row-wise
    outer products; otherwise one weighted bincount per pair of columns, which
    needs no sort and no n x (a·b) temporary.
    """
    n, a = A.shape
    b = B.shape[1]
    kernel = None if KERNEL_DISABLED else _kernel()
    if kernel is not None:
        out = np.zeros((nlevels, a, b))
        kernel(
            np.ascontiguousarray(codes, dtype=np.int64),
            np.ascontiguousarray(A, dtype=float),
            np.ascontiguousarray(B, dtype=float),
            out,
            a,
            b,
        )
        return out
    if n and np.all(codes[1:] >= codes[:-1]) and n * a * b <= 50_000_000:
        return group_sums(codes, _outer_rows(A, B), nlevels).reshape(nlevels, a, b)
    out = np.empty((nlevels, a, b))
    same = A is B
    for i in range(a):  # columns, not rows or groups
        for j in range(b):
            if same and j < i:
                out[:, i, j] = out[:, j, i]
                continue
            out[:, i, j] = np.bincount(codes, weights=A[:, i] * B[:, j], minlength=nlevels)
    return out


@dataclass
class CrossProducts:
    """Blocks of AᵀA for A = [Z₁ … Z_K X y] (rows already weighted)."""

    q: list[int]  # columns per term
    nlevels: list[int]  # levels per term
    D1: np.ndarray  # (n1, q1, q1) Z₁ᵀZ₁ per level
    B1F: np.ndarray  # (n1, q1, m) Z₁ᵀ[X y] per level
    _A1R: sp.csr_matrix | None  # (n1 q1, Q_r) Z₁ᵀZ_rest (see ``A1R``)
    _ARR: sp.csr_matrix | None  # (Q_r, Q_r) Z_restᵀZ_rest (see ``ARR``)
    ARF: np.ndarray | None  # (Q_r, m) Z_restᵀ[X y]
    AFF: np.ndarray  # (m, m) [X y]ᵀ[X y]
    n: int
    p: int
    # a small model's A_1R and A_RR as dense arrays: the compiled kernels read
    # them so, and the sparse forms are built only if something asks for them
    # (scipy's constructors cost more than a small model's search)
    dense: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def has_rest(self) -> bool:
        """Whether there are terms after the first."""
        return len(self.q) > 1

    @property
    def A1R(self) -> sp.csr_matrix | None:
        """Z₁ᵀZ_rest in CSR (None for one term)."""
        if self._A1R is None and self.dense is not None:
            self._A1R = dense_to_csr(self.dense[0])
        return self._A1R

    @property
    def ARR(self) -> sp.csr_matrix | None:
        """Z_restᵀZ_rest in CSR (None for one term)."""
        if self._ARR is None and self.dense is not None:
            self._ARR = dense_to_csr(self.dense[1])
        return self._ARR

    def ARR_dense(self) -> np.ndarray:
        """Z_restᵀZ_rest as a dense array (a copy only where it was stored sparse)."""
        return self.dense[1] if self.dense is not None else self.ARR.toarray()

    def A1R_dense_or_csr(self) -> np.ndarray | sp.csr_matrix:
        """Z₁ᵀZ_rest as stored: dense for a small model, else CSR (for products)."""
        return self.dense[0] if self.dense is not None else self.A1R

    def __add__(self, other: CrossProducts) -> CrossProducts:
        """Cross-products of two sets of rows with the same levels: their sum."""

        def add(a, b):
            return None if a is None else a + b

        dense = None
        if self.dense is not None and other.dense is not None:
            dense = (self.dense[0] + other.dense[0], self.dense[1] + other.dense[1])
        return CrossProducts(
            self.q,
            self.nlevels,
            self.D1 + other.D1,
            self.B1F + other.B1F,
            None if dense is not None else add(self.A1R, other.A1R),
            None if dense is not None else add(self.ARR, other.ARR),
            add(self.ARF, other.ARF),
            self.AFF + other.AFF,
            self.n + other.n,
            self.p,
            dense,
        )

    def drop_x_columns(self, keep: np.ndarray) -> CrossProducts:
        """The same cross-products without some columns of X (aliased ones)."""
        cols = np.append(np.flatnonzero(keep), self.p)  # y stays last
        return CrossProducts(
            self.q,
            self.nlevels,
            self.D1,
            self.B1F[:, :, cols],
            self._A1R,
            self._ARR,
            None if self.ARF is None else self.ARF[:, cols],
            self.AFF[np.ix_(cols, cols)],
            self.n,
            int(keep.sum()),
            self.dense,
        )

    @property
    def Qr(self) -> int:
        if not self.has_rest:
            return 0
        return self.dense[1].shape[0] if self.dense is not None else self.ARR.shape[0]

    @cached_property
    def rest_offsets(self) -> np.ndarray:
        sizes = [n * q for n, q in zip(self.nlevels[1:], self.q[1:], strict=True)]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @cached_property
    def rest_term(self) -> np.ndarray:
        """The term (1 … K-1) of each rest column (scalar terms: each rest level)."""
        sizes = [n * q for n, q in zip(self.nlevels[1:], self.q[1:], strict=True)]
        return np.repeat(np.arange(1, len(self.q), dtype=np.int64), sizes)

    @cached_property
    def A1R_csr64(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A_1R's indptr, indices (int64, sorted within rows) and values, for
        the compiled kernels."""
        if self.dense is not None:
            return _csr_arrays(self.dense[0])
        return _csr64(self.A1R)

    @cached_property
    def ARR_csr64(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A_RR's indptr, indices (int64, sorted within rows) and values."""
        if self.dense is not None:
            return _csr_arrays(self.dense[1])
        return _csr64(self.ARR)


def _csr64(M: sp.spmatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    M = M.tocsr()
    if not M.has_sorted_indices:
        M = M.sorted_indices()
    return (
        M.indptr.astype(np.int64),
        M.indices.astype(np.int64),
        np.ascontiguousarray(M.data, dtype=float),
    )


def _pair_block(
    ca: np.ndarray, Za: np.ndarray, na: int, cb: np.ndarray, Zb: np.ndarray, nb: int
) -> sp.csr_matrix:
    """Sparse Z_aᵀZ_b for two terms (rows: level*qa + i, cols: level*qb + j)."""
    qa, qb = Za.shape[1], Zb.shape[1]
    key = ca.astype(np.int64) * nb + cb
    uniq, inv = np.unique(key, return_inverse=True)
    vals = group_sums(inv.ravel(), _outer_rows(Za, Zb), len(uniq))  # (npairs, qa*qb)
    la, lb = uniq // nb, uniq % nb
    rows = (la[:, None] * qa + np.arange(qa)[None, :])[:, :, None].repeat(qb, axis=2)
    cols = (lb[:, None] * qb + np.arange(qb)[None, :])[:, None, :].repeat(qa, axis=1)
    return sp.csr_matrix((vals.ravel(), (rows.ravel(), cols.ravel())), shape=(na * qa, nb * qb))


def cross_products(
    Zs: list[np.ndarray],
    codes: list[np.ndarray],
    nlevels: list[int],
    X: np.ndarray,
    y: np.ndarray,
    sqrtw: np.ndarray | None = None,
    maps: tuple[list[np.ndarray], np.ndarray] | None = None,
) -> CrossProducts:
    """One pass over the rows; terms must be ordered by decreasing levels.

    With ``maps`` = (V_k per term, N_F), of the centred and scaled columns
    Z_k V_k⁻¹ and [X y] N_F⁻¹ (:mod:`multilevel.linalg.affine`): for one
    unweighted term the compiled pass maps each row as it reads it, else the
    mapped columns are formed first."""
    n, p = X.shape
    F = np.empty((n, p + 1))
    F[:, :p] = X
    F[:, p] = y
    if maps is not None:
        Vs, NF = maps
        # one unweighted term of at most 64 columns (the kernel's row buffers)
        fast = len(Zs) == 1 and sqrtw is None and max(F.shape[1], Zs[0].shape[1]) <= 64
        if fast and not KERNEL_DISABLED and _affine_kernel() is not None:
            parts = [affine_parts(Vs[0]), affine_parts(NF)]
            if all(parts):
                return _one_term_mapped(Zs[0], codes[0], nlevels[0], F, parts[0], parts[1], p)
        if sqrtw is None and _scalar_kernel_applies(Zs, nlevels, F.shape[1]):
            parts = [affine_parts(V) for V in Vs] + [affine_parts(NF)]
            if all(parts):
                return _scalar_terms_mapped(Zs, codes, nlevels, F, parts, p)
        Zs = [apply_affine(Z, V) for Z, V in zip(Zs, Vs, strict=True)]
        F = apply_affine(F, NF)
    if sqrtw is not None:
        F *= sqrtw[:, None]
        Zs = [Z * sqrtw[:, None] for Z in Zs]
    m = p + 1
    q = [Z.shape[1] for Z in Zs]
    n1 = nlevels[0]
    D1 = level_crossprod(codes[0], Zs[0], Zs[0], n1)
    B1F = level_crossprod(codes[0], Zs[0], F, n1)
    AFF = F.T @ F
    A1R = ARR = ARF = None
    if len(Zs) > 1:
        offs = np.concatenate(
            [[0], np.cumsum([nl * qq for nl, qq in zip(nlevels[1:], q[1:], strict=True)])]
        )
        Qr = int(offs[-1])
        if (n1 * q[0] + Qr) * Qr <= SMALL_BLOCKS:
            A1R, ARR, ARF = _small_blocks(Zs, codes, nlevels, F, offs)
            return CrossProducts(q, list(nlevels), D1, B1F, None, None, ARF, AFF, n, p, (A1R, ARR))
        A1R = sp.hstack(
            [
                _pair_block(codes[0], Zs[0], n1, codes[k], Zs[k], nlevels[k])
                for k in range(1, len(Zs))
            ],
            format="csr",
        )
        blocks: list[list[sp.spmatrix | None]] = [[None] * (len(Zs) - 1) for _ in Zs[1:]]
        ARF = np.zeros((Qr, m))
        for a in range(1, len(Zs)):
            qa, na = q[a], nlevels[a]
            Daa = level_crossprod(codes[a], Zs[a], Zs[a], na)
            blocks[a - 1][a - 1] = sp.bsr_matrix(
                (Daa, np.arange(na), np.arange(na + 1)), shape=(na * qa, na * qa)
            )
            ARF[offs[a - 1] : offs[a]] = level_crossprod(codes[a], Zs[a], F, na).reshape(na * qa, m)
            for b in range(a + 1, len(Zs)):
                blk = _pair_block(codes[a], Zs[a], na, codes[b], Zs[b], nlevels[b])
                blocks[a - 1][b - 1] = blk
                blocks[b - 1][a - 1] = blk.T
        ARR = sp.bmat(blocks, format="csr")
    return CrossProducts(q, list(nlevels), D1, B1F, A1R, ARR, ARF, AFF, n, p)


SMALL_BLOCKS = 1_000_000  # dense entries of the cross blocks below which they are formed dense


def _dense_pair(
    ca: np.ndarray, Za: np.ndarray, na: int, cb: np.ndarray, Zb: np.ndarray, nb: int
) -> np.ndarray:
    """Dense Z_aᵀZ_b (rows level*qa + i, columns level*qb + j): one bincount
    per pair of columns (a sparse assembly's sorting and format conversions
    cost more than the whole fit of a small model)."""
    qa, qb = Za.shape[1], Zb.shape[1]
    key = ca.astype(np.int64) * nb + cb
    out = np.empty((na, qa, nb, qb))
    for i in range(qa):  # columns of the terms, not rows or levels
        for j in range(qb):
            out[:, i, :, j] = np.bincount(
                key, weights=Za[:, i] * Zb[:, j], minlength=na * nb
            ).reshape(na, nb)
    return out.reshape(na * qa, nb * qb)


def _small_blocks(
    Zs: list[np.ndarray],
    codes: list[np.ndarray],
    nlevels: list[int],
    F: np.ndarray,
    offs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A_1R, A_RR and A_RF of a small model, formed dense (and kept so)."""
    Qr = int(offs[-1])
    q = [Z.shape[1] for Z in Zs]
    A1R = np.empty((nlevels[0] * q[0], Qr))
    ARR = np.zeros((Qr, Qr))
    ARF = np.empty((Qr, F.shape[1]))
    for a in range(1, len(Zs)):
        sa = slice(int(offs[a - 1]), int(offs[a]))
        A1R[:, sa] = _dense_pair(codes[0], Zs[0], nlevels[0], codes[a], Zs[a], nlevels[a])
        na, qa = nlevels[a], q[a]
        Daa = level_crossprod(codes[a], Zs[a], Zs[a], na)
        idx = int(offs[a - 1]) + np.arange(na * qa).reshape(na, qa)
        ARR[idx[:, :, None], idx[:, None, :]] = Daa
        ARF[sa] = level_crossprod(codes[a], Zs[a], F, na).reshape(na * qa, -1)
        for b in range(a + 1, len(Zs)):
            sb = slice(int(offs[b - 1]), int(offs[b]))
            blk = _dense_pair(codes[a], Zs[a], na, codes[b], Zs[b], nlevels[b])
            ARR[sa, sb] = blk
            ARR[sb, sa] = blk.T
    return A1R, ARR, ARF


def _csr_arrays(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """indptr, indices (int64, sorted within rows) and values of the nonzeros
    of a dense matrix (``np.nonzero`` is row-major)."""
    r, c = np.nonzero(A)
    # the rows come sorted: each row's first entry by bisection
    indptr = np.searchsorted(r, np.arange(A.shape[0] + 1)).astype(np.int64, copy=False)
    return indptr, np.ascontiguousarray(c, dtype=np.int64), A[r, c]


def dense_to_csr(A: np.ndarray) -> sp.csr_matrix:
    """The nonzeros of a dense matrix in CSR, column indices sorted within
    rows (half the cost of scipy's conversion, which goes through COO)."""
    indptr, indices, values = _csr_arrays(A)
    out = sp.csr_matrix((values, indices, indptr), shape=A.shape)
    out.has_sorted_indices = True
    return out


def _scalar_kernel_applies(Zs: list[np.ndarray], nlevels: list[int], m: int) -> bool:
    """Whether several scalar terms' cross-products are formed dense by the
    compiled one-pass kernel: a small model (dense blocks, see SMALL_BLOCKS)
    of at most 64 terms and columns of [X y]."""
    if len(Zs) < 2 or len(Zs) > 64 or m > 64 or any(Z.shape[1] != 1 for Z in Zs):
        return False
    if KERNEL_DISABLED or kernel("_kernels", "scalar_crossprod") is None:
        return False
    Qr = sum(nlevels[1:])
    return (nlevels[0] + Qr) * Qr <= SMALL_BLOCKS


def _scalar_terms_mapped(
    Zs: list[np.ndarray],
    codes: list[np.ndarray],
    nlevels: list[int],
    F: np.ndarray,
    parts: list[tuple[np.ndarray, np.ndarray]],
    p: int,
) -> CrossProducts:
    """Several scalar terms' blocks of [Z̃ F̃] in one compiled pass, dense (the
    blocks :func:`_small_blocks` forms from mapped copies of the columns)."""
    K, n, m = len(Zs), F.shape[0], F.shape[1]
    n1, Qr = nlevels[0], sum(nlevels[1:])
    starts = np.zeros(K, dtype=np.int64)  # each rest term's first column
    starts[2:] = np.cumsum(nlevels[1:-1])
    d1, B1, AFF = np.zeros(n1), np.zeros((n1, m)), np.zeros((m, m))
    A1R, ARR, ARF = np.zeros((n1, Qr)), np.zeros((Qr, Qr)), np.zeros((Qr, m))
    kernel("_kernels", "scalar_crossprod")(
        np.array(codes, dtype=np.int64),
        np.array([Z[:, 0] for Z in Zs], dtype=float),
        np.ascontiguousarray(F, dtype=float),
        starts,
        np.array([sz[0] for sz, _ in parts[:K]], dtype=float),
        np.array([rz[0] for _, rz in parts[:K]], dtype=float),
        *parts[K],
        d1,
        B1,
        AFF,
        A1R,
        ARR,
        ARF,
        K,
        m,
        n1,
        Qr,
    )
    D1, B1F = d1.reshape(n1, 1, 1), B1.reshape(n1, 1, m)
    return CrossProducts([1] * K, list(nlevels), D1, B1F, None, None, ARF, AFF, n, p, (A1R, ARR))


def _affine_kernel():
    return kernel("_kernels", "one_term_crossprod")


def _one_term_mapped(
    Z: np.ndarray,
    codes: np.ndarray,
    nlev: int,
    F: np.ndarray,
    zmap: tuple[np.ndarray, np.ndarray],
    fmap: tuple[np.ndarray, np.ndarray],
    p: int,
) -> CrossProducts:
    """One term's blocks of [Z̃ F̃] in one compiled pass, each row mapped as it
    is read (no mapped copy of the rows: on a million rows that copy cost
    half as much as the pass)."""
    Z = np.ascontiguousarray(Z, dtype=float)
    q, m = Z.shape[1], F.shape[1]
    D1, B1F, AFF = np.zeros((nlev, q, q)), np.zeros((nlev, q, m)), np.zeros((m, m))
    _affine_kernel()(
        np.ascontiguousarray(codes, dtype=np.int64), Z, F, D1, B1F, AFF, q, m, *zmap, *fmap
    )
    return CrossProducts([q], [nlev], D1, B1F, None, None, None, AFF, F.shape[0], p)
