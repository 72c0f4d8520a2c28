"""The random-effects terms after the first: their Schur complement.

Eliminating the first term (block diagonal, one small block per level) from
ΛᵀZᵀZΛ + I leaves, for the other terms R,

    M_RR = Λ_Rᵀ (A_RR − A_R1 V A_1R) Λ_R + I,     V = blockdiag(T₁ S₁ᵢ⁻¹ T₁ᵀ)
    M_RF = Λ_Rᵀ (A_RF − A_R1 V B_1F)

whose factorization gives the rest of log|L_Z|² and updates the [X y] block
by M_RFᵀ M_RR⁻¹ M_RF.  Its pattern is fixed by the design: crossed factors
fill it in (dense Cholesky, LAPACK), nested ones keep it sparse (sparse LU
with a fill-reducing ordering; for a symmetric positive definite matrix the
pivots are the Cholesky pivots squared, so log|M_RR| = Σ log uᵢᵢ).  Which
one is used is decided once from the pattern.

Dense, with scalar terms throughout, M_RR is written straight into one
Fortran-ordered buffer that LAPACK factors (and the gradient inverts) in
place: either its nonzeros alone (A_RR and the pairs of H) into a zeroed
buffer, or, when the first term's levels each meet many rest levels (a
users x items table), H as one rank-n₁ update (syrk).  A large such block
first has independent sets of its nodes eliminated (:mod:`.staged`), which
leaves a smaller dense factorization.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.sparse.linalg as spla

# LAPACK directly: scipy.linalg's wrappers cost more than small solves
from scipy.linalg.blas import dsyrk
from scipy.linalg.lapack import dpotrf, dpotri, dpotrs, dtrtri, dtrtrs

from multilevel.linalg.blockdiag import BlockDiagonal
from multilevel.linalg.crossprod import CrossProducts
from multilevel.lmm.sparse_rest import SparseRest
from multilevel.lmm.staged import StagedElimination, invert_factor, zero_lower
from multilevel.threads import threads_for_order

DENSE_MAX = 1500  # below this size a dense factorization is always cheapest
SPARSE_DENSITY = 0.05  # above this fill the dense factorization wins
SPARSE_LINKS = 16  # mean links per level in a large block above which the factor fills in
SMALL_DENSE = 250_000  # entries: sparse first × rest maps held dense below this
STAGED_MIN = 1000  # dense rest blocks from this order try eliminating independent sets first
SPARSE_MIN = 200  # rest blocks from this order try a sparse Cholesky factorization
DENSE_KEYS = 16_000_000  # rest orders² up to which pair positions are found by a table


def sparse_pays(pattern: sp.csr_matrix) -> bool:
    """Whether M_RR (this pattern) is better factored sparse than dense.

    What decides is the fill of the factor, not the pattern's density: a
    fill-reducing ordering keeps the factor of nested or banded patterns
    (levels linked within small clusters, or to a few neighbours) sparse,
    but a random crossing links every level to dozens of others and the
    factor fills in.  On 5,000 x 5,000 randomly crossed levels with 30,000
    rows (42 links per level) one factorization took 3.8 s by sparse LU,
    1.2 s by a supernodal sparse Cholesky and 0.49 s dense.  So: sparse when
    the matrix is large and thin, and each connected block of levels is
    small or has few links per level."""
    from scipy.sparse.csgraph import connected_components

    Q = pattern.shape[0]
    if Q <= DENSE_MAX or pattern.nnz / float(Q) ** 2 >= SPARSE_DENSITY:
        return False
    _, labels = connected_components(pattern, directed=False)
    sizes = np.bincount(labels)
    big = int(np.argmax(sizes))
    if sizes[big] <= DENSE_MAX:
        return True
    links = np.diff(pattern.indptr)[labels == big] - 1  # off-diagonal entries per level
    return float(links.mean()) <= SPARSE_LINKS


class PairProducts:
    """H(v) = Aᵀ diag(v) A for a scalar first term, as a linear map of v.

    Each row s of A (a level of the first factor) contributes v_s a_s a_sᵀ; the
    products of its nonzeros are formed once, so each evaluation is one sparse
    matrix-vector product giving the lower-triangle entries (rows, cols).
    """

    def __init__(self, A: sp.csr_matrix):
        n1, Q = A.shape
        cnt = np.diff(A.indptr)
        rows = np.repeat(np.arange(n1), cnt)
        per = cnt[rows]  # every nonzero is paired with every nonzero of its row
        e1 = np.repeat(np.arange(A.nnz), per)
        block_start = np.repeat(np.cumsum(per) - per, per)
        e2 = A.indptr[rows[e1]] + (np.arange(e1.size) - block_start)
        c1, c2 = A.indices[e1], A.indices[e2]
        keep = c1 >= c2
        e1, e2 = e1[keep], e2[keep]
        key = A.indices[e1].astype(np.int64) * Q + A.indices[e2]
        # sorted positions make the per-evaluation scatter into M_RR sequential;
        # for a rest block of modest order a table over Q² finds them in one
        # pass (a hash of ten million pairs costs far more)
        if Q * Q <= DENSE_KEYS:
            present = np.zeros(Q * Q, dtype=bool)
            present[key] = True
            uniq = np.flatnonzero(present)
            codes = (np.cumsum(present, dtype=np.int64) - 1)[key]
        else:
            codes, uniq = pd.factorize(key, sort=True)
        # one column per level, its pairs contiguous (e1 runs level by level)
        # and distinct: built without sorting or summing, then turned by rows
        # (a row-wise product writes M_RR's entries in order)
        per_level = np.bincount(rows[e1], minlength=n1)
        indptr = np.concatenate([[0], np.cumsum(per_level)])
        self.K = sp.csc_matrix(
            (A.data[e1] * A.data[e2], codes, indptr), shape=(len(uniq), n1)
        ).tocsr()
        self.rows = (uniq // Q).astype(np.int64)
        self.cols = (uniq % Q).astype(np.int64)
        self.flat = np.asarray(uniq, dtype=np.int64)  # row-major positions in a Q x Q matrix
        # small maps as dense arrays: a numpy product costs less than scipy's dispatch
        small = self.K.shape[0] * self.K.shape[1] <= SMALL_DENSE
        self._op = self.K.toarray() if small else self.K

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return self._op @ v


class BlockPairProducts:
    """H(V) = Aᵀ blockdiag(V) A for a first term with q₁ columns, as a linear map
    of the per-level blocks V (n1, q1, q1), and its adjoint.

    Rows i·q₁ + a of A belong to level i; every pair of nonzeros of one level,
    (a, r) and (b, s), contributes V_i[a, b]·A[ia, r]·A[ib, s] to H[r, s].  The
    pairs are formed once; H(V) is one sparse matrix-vector product giving the
    entries at ``rows``/``cols``, and ``adjoint(G)`` gives, per level,
    K_i = A_i G A_iᵀ for the same pairs (the gradient's sandwich)."""

    def __init__(self, A: sp.csr_matrix, q1: int):
        nrows, Q = A.shape
        n1 = nrows // q1
        coo = A.tocoo()
        level = coo.row // q1
        order = np.argsort(level, kind="stable")
        lev, a, col, val = level[order], coo.row[order] % q1, coo.col[order], coo.data[order]
        cnt = np.bincount(lev, minlength=n1)
        start = np.cumsum(cnt) - cnt
        per = cnt[lev]  # each nonzero pairs with every nonzero of its level
        e1 = np.repeat(np.arange(lev.size), per)
        block_start = np.repeat(np.cumsum(per) - per, per)
        e2 = start[lev[e1]] + (np.arange(e1.size) - block_start)
        key = col[e1].astype(np.int64) * Q + col[e2]
        codes, uniq = pd.factorize(key, sort=True)
        vidx = (lev[e1].astype(np.int64) * q1 + a[e1]) * q1 + a[e2]
        self.K = sp.csr_matrix((val[e1] * val[e2], (codes, vidx)), shape=(len(uniq), n1 * q1 * q1))
        self.K.sum_duplicates()
        self.KT = self.K.T.tocsr()
        self.rows = (uniq // Q).astype(np.int64)
        self.cols = (uniq % Q).astype(np.int64)
        self.flat = np.asarray(uniq, dtype=np.int64)  # row-major positions in a Q x Q matrix
        self.n1, self.q1 = n1, q1

    def __call__(self, V: np.ndarray) -> np.ndarray:
        """The entries of Aᵀ blockdiag(V) A at (rows, cols)."""
        return self.K @ V.reshape(-1)

    def adjoint(self, G: np.ndarray) -> np.ndarray:
        """Per level A_i G A_iᵀ, (n1, q1, q1)."""
        return (self.KT @ G[self.rows, self.cols]).reshape(self.n1, self.q1, self.q1)


class RestBlock:
    """Builds and factors M_RR for a θ; dense or sparse by the pattern."""

    def __init__(self, cp: CrossProducts):
        assert cp.A1R is not None and cp.ARR is not None
        self.cp = cp
        self.q1 = cp.q[0]
        self.A1R = cp.A1R.tocsr()
        self.AR1 = self.A1R.T.tocsr()
        # operators for products with dense vectors: dense arrays when small
        # (scipy's sparse dispatch costs more than the arithmetic there)
        small = self.A1R.shape[0] * self.A1R.shape[1] <= SMALL_DENSE
        self.A1R_op = self.A1R.toarray() if small else self.A1R
        self.AR1_op = self.A1R_op.T.copy() if small else self.AR1
        self.scalar = all(q == 1 for q in cp.q[1:])
        self.Q = cp.ARR.shape[0]
        self.bpairs = BlockPairProducts(self.A1R, self.q1) if self.q1 > 1 else None
        # products of A_RR with dense vectors (the gradient's residuals)
        small_rr = self.Q * self.Q <= SMALL_DENSE
        self.ARR_op = cp.ARR.toarray() if small_rr else cp.ARR.tocsr()
        # below DENSE_MAX the pattern does not matter (sparse_pays)
        pattern = None
        if self.Q > DENSE_MAX:
            pattern = (abs(cp.ARR) + abs(self.AR1) @ abs(self.A1R)).tocsr()
        self.sparse = pattern is not None and sparse_pays(pattern)
        self._syrk_A: np.ndarray | None = None
        if self.sparse:
            self._init_sparse(pattern)
        else:
            if self.q1 == 1 and self.scalar:
                if self._syrk_pays():
                    self._syrk_A = self.A1R.toarray()
                self._init_scatter()
                if self._syrk_A is None and self.Q >= SPARSE_MIN:
                    self._init_staged()
                self.inverse_by_product = self._product_pays()
            if self.staged is None:
                # Fortran order: LAPACK factors (and inverts) it in place, so one
                # Q x Q array is all the memory an evaluation needs
                self.buf = np.empty((self.Q, self.Q), order="F")
                self._diag = np.diag_indices(self.Q)

    staged: StagedElimination | None = None
    # the gradient's traces from ‖L⁻¹C‖² (True) or from M_RR⁻¹ at H's entries
    inverse_by_product = False

    def _product_pays(self) -> bool:
        """Whether the gradient's traces cost less as ‖L⁻¹C‖²_F, a product of L⁻¹
        with the sparse C = Λ_R A_R1 diag(λ₁/sᵢ) (~0.9 ns per nonzero of A_1R
        per row of L⁻¹), than as Σ (M_RR⁻¹)_ab H_ab, which needs the full
        inverse (potri: L⁻¹ and then L⁻ᵀL⁻¹, ~0.011 ns per flop of its Q³/3)
        and H at other weights (the pair map, ~1.3 ns per pair, or syrk,
        ~0.02 ns per n₁Q²).  Costs measured on one core: a random crossing
        (few nonzeros, large Q) takes the product, InstEval or a users x
        items table the full inverse."""
        Q = float(self.Q)
        n1 = float(self.A1R.shape[0])
        product = 0.9 * self.A1R.nnz * Q
        if self._syrk_A is not None:
            h = 0.02 * n1 * Q * Q
        else:
            c = np.diff(self.A1R.indptr).astype(np.float64)
            h = 1.3 * float((c * (c + 1) / 2).sum())
        return product < 0.011 * Q**3 / 3.0 + h

    def lower_H(self, v: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """Lower triangle of Λ_R A_R1 diag(v) A_1R Λ_R by syrk (a new array; the
        upper triangle is not set)."""
        B = self._syrk_A * np.sqrt(v)[:, None]
        B *= lam[None, :]
        return dsyrk(1.0, B, trans=1, lower=1)

    def _init_staged(self) -> None:
        """A sparse Cholesky factorization where its factor stays sparse
        (:mod:`multilevel.lmm.sparse_rest`), else independent sets of M_RR's
        nodes eliminated before the dense factorization
        (:mod:`multilevel.lmm.staged`), when they are large."""
        Q = self.Q
        r, c = self._m_r, self._m_c
        keys = r * Q + c  # row-major lower-triangle keys of the same entries
        order = np.argsort(keys, kind="stable")
        plan = SparseRest.plan(Q, keys[order])
        if plan is None and Q >= STAGED_MIN:
            plan = StagedElimination.plan(Q, keys[order])
        if plan is None:
            return
        self.staged = plan
        self._staged_order = order
        skeys = plan.keys
        self._staged_diag = np.searchsorted(skeys, np.arange(Q, dtype=np.int64) * (Q + 1))
        pr, pc = self.pairs.rows, self.pairs.cols
        self._staged_pairs = np.searchsorted(skeys, pr * Q + pc)

    def _scatter_values(self, W: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """M_RR's nonzeros in the lower triangle, at ``_m_pos`` (scalar terms)."""
        vals = np.zeros(self._m_pos.size)
        vals[self._m_h] = -self.pairs(W[0, 0] ** 2)
        vals[self._m_a] += self._m_aval  # distinct positions: no repeated index
        vals *= lam[self._m_r] * lam[self._m_c]
        vals[self._m_d] += 1.0
        return vals

    @cached_property
    def pairs(self) -> PairProducts | None:
        """The pair map of a scalar first term, formed on first use (its set-up
        costs about a hundred times one product)."""
        return PairProducts(self.A1R) if self.q1 == 1 else None

    def _syrk_pays(self) -> bool:
        """Whether H = A_R1 diag(v) A_1R is cheaper as a dense rank-n₁ update
        (BLAS syrk, n₁Q²/2 flops, no set-up) than through the pair map (a
        set-up of ~100 ns and a product of ~1.5 ns per pair, Σᵢ cᵢ(cᵢ+1)/2
        pairs for cᵢ nonzeros in row i of A_1R).  Costs measured on one core
        over a fit's ~15 evaluations: syrk ≈ 0.02 ns per n₁Q² per evaluation,
        so syrk when n₁Q² < ~400 x pairs.  Its dense copy of A_1R is capped
        at the Q x Q buffer's size (or 4M entries)."""
        n1, Q = self.A1R.shape
        if n1 * Q > max(Q * Q, 4_000_000):
            return False
        c = np.diff(self.A1R.indptr).astype(np.float64)
        pairs = float((c * (c + 1) / 2).sum())
        return float(n1) * Q * Q < 400.0 * pairs

    @cached_property
    def ARR(self) -> np.ndarray:
        """A_RR as a dense array (the general dense path only)."""
        return self.cp.ARR.toarray()

    @cached_property
    def Hbuf(self) -> np.ndarray:
        # H's entries sit at fixed positions: a buffer that is zero elsewhere
        return np.zeros((self.Q, self.Q))

    def _init_scatter(self) -> None:
        """Scalar terms throughout: M_RR's lower triangle has nonzeros only where
        A_RR or H has them (the pairs), so each evaluation writes those alone
        into a zeroed buffer, scaled by λ_rλ_c there, instead of forming dense
        A_RR − H and scaling all Q² entries.  Positions are column-major."""
        Q = self.Q
        A = sp.tril(self.cp.ARR, format="coo")
        if self._syrk_A is not None:  # H comes dense, from syrk: A_RR and the diagonal only
            pr = pc = np.zeros(0, dtype=np.int64)
        else:
            pr, pc = self.pairs.rows, self.pairs.cols
        h_key = pc * Q + pr
        a_key = A.col.astype(np.int64) * Q + A.row
        d_key = np.arange(Q, dtype=np.int64) * (Q + 1)
        keys, inv = np.unique(np.concatenate([h_key, a_key, d_key]), return_inverse=True)
        nh, na = h_key.size, a_key.size
        self._m_pos = keys
        self._m_h = inv[:nh]
        self._m_a, self._m_aval = inv[nh : nh + na], A.data
        self._m_d = inv[nh + na :]
        self._m_r, self._m_c = keys % Q, keys // Q

    def unscaled_H(self, W: np.ndarray) -> np.ndarray:
        """A_R1 V A_1R as a dense array (dense rest block, q₁ > 1), V = blockdiag(WᵢᵀWᵢ);
        a view of a buffer that the next call overwrites."""
        self.Hbuf.ravel()[self.bpairs.flat] = self.bpairs(self._v(W))
        return self.Hbuf

    @property
    def kind(self) -> str:
        return "sparse" if self.sparse else "dense"

    # -- Λ_R --------------------------------------------------------------------
    def lam(self, T: list[np.ndarray]) -> np.ndarray | sp.csr_matrix:
        cp = self.cp
        if self.scalar:
            return np.concatenate(
                [np.full(nl, t[0, 0]) for nl, t in zip(cp.nlevels[1:], T[1:], strict=True)]
            )
        if self._lam_rest is None:
            self._lam_rest = BlockDiagonal(cp.nlevels[1:], cp.q[1:])
        return self._lam_rest(T[1:])

    _lam_rest: BlockDiagonal | None = None

    def _v(self, W: np.ndarray) -> np.ndarray:
        """V = blockdiag(WᵢᵀWᵢ) as (n1, q1, q1); W level-last (q1, q1, n1)."""
        return np.einsum("kan,kbn->nab", W, W)

    def _H_sparse(self, V: np.ndarray) -> sp.csr_matrix:
        n1 = V.shape[0]
        Vb = sp.bsr_matrix(
            (V, np.arange(n1), np.arange(n1 + 1)), shape=(n1 * self.q1, n1 * self.q1)
        )
        return (self.AR1 @ (Vb @ self.A1R).tocsr()).tocsr()

    def _mrf(self, W: np.ndarray, lam) -> np.ndarray:
        cp = self.cp
        m = cp.p + 1
        if self.q1 == 1:
            VB = (W[0, 0] ** 2)[:, None] * cp.B1F[:, 0, :]
        else:
            VB = (self._v(W) @ cp.B1F).reshape(-1, m)
        MRF = cp.ARF - self.AR1_op @ VB
        return MRF * lam[:, None] if isinstance(lam, np.ndarray) else lam.T @ MRF

    # -- dense ------------------------------------------------------------------
    def _dense(self, W: np.ndarray, lam) -> np.ndarray:
        if self.buf is None:  # handed to a kept factor: a new one
            self.buf = np.empty((self.Q, self.Q), order="F")
        M = self.buf
        if self._syrk_A is not None:
            # lower triangle of −Λ_R A_R1 diag(v) A_1R Λ_R in one rank-n₁ update
            # (beta = 0: the buffer's old contents are not read)
            B = self._syrk_A * W[0, 0, :, None]
            B *= lam[None, :]
            M = dsyrk(-1.0, B, beta=0.0, c=M, trans=1, lower=1, overwrite_c=1)
            vals = np.zeros(self._m_pos.size)
            vals[self._m_a] = self._m_aval
            vals *= lam[self._m_r] * lam[self._m_c]
            vals[self._m_d] += 1.0
            M.reshape(-1, order="F")[self._m_pos] += vals
            return M
        if self.q1 == 1 and self.scalar:
            vals = self._scatter_values(W, lam)
            zero_lower(M)  # potrf reads no more
            M.reshape(-1, order="F")[self._m_pos] = vals
            return M
        if self.q1 == 1:
            # only the lower triangle of H: LAPACK's potrf reads no more
            self.Hbuf.ravel()[self.pairs.flat] = self.pairs(W[0, 0] ** 2)
            np.subtract(self.ARR, self.Hbuf, out=M)
            if not self.scalar:
                upper = np.triu_indices(self.Q, 1)
                M[upper] = M.T[upper]
        else:
            np.subtract(self.ARR, self.unscaled_H(W), out=M)
        if isinstance(lam, np.ndarray):
            M *= lam[:, None]
            M *= lam[None, :]
        else:
            M[:] = (lam.T @ (lam.T @ M).T).T
        M[self._diag] += 1.0
        return M

    # -- sparse -----------------------------------------------------------------
    def _init_sparse(self, pattern: sp.csr_matrix) -> None:
        P = (pattern + sp.identity(self.Q, format="csr")).tocsc()
        P.sort_indices()
        self.indptr, self.indices = P.indptr, P.indices
        col = np.repeat(np.arange(self.Q), np.diff(P.indptr))
        self.prow, self.pcol = self.indices, col
        keys = col.astype(np.int64) * self.Q + self.indices  # sorted: CSC order

        def pos(r: np.ndarray, c: np.ndarray) -> np.ndarray:
            return np.searchsorted(keys, c.astype(np.int64) * self.Q + r)

        A = self.cp.ARR.tocoo()
        self.arr_pos, self.arr_val = pos(A.row, A.col), A.data
        if self.pairs is not None:
            r, c = self.pairs.rows, self.pairs.cols
            self.h_lower = pos(r, c)
            off = r != c
            self.h_upper, self.h_off = pos(c[off], r[off]), off
        self.diag_pos = pos(np.arange(self.Q), np.arange(self.Q))
        self.nnz = len(keys)

    def _sparse_matrix(self, W: np.ndarray, lam) -> sp.csc_matrix:
        data = np.zeros(self.nnz)
        np.add.at(data, self.arr_pos, self.arr_val)
        if self.pairs is not None:
            h = self.pairs(W[0, 0] ** 2)
            data[self.h_lower] -= h
            data[self.h_upper] -= h[self.h_off]
            M = sp.csc_matrix((data, self.indices, self.indptr), shape=(self.Q, self.Q))
        else:
            M = sp.csc_matrix((data, self.indices, self.indptr), shape=(self.Q, self.Q))
            M = (M - self._H_sparse(self._v(W))).tocsc()
        if isinstance(lam, np.ndarray):
            M = (
                sp.csc_matrix(
                    (data * lam[self.prow] * lam[self.pcol], self.indices, self.indptr),
                    shape=(self.Q, self.Q),
                )
                if self.pairs is not None
                else sp.csc_matrix(M.multiply(np.outer(lam, lam)))
            )
        else:
            M = (lam.T @ M @ lam).tocsc()
        return (M + sp.identity(self.Q, format="csc")).tocsc()

    # -- factorization ------------------------------------------------------------
    def factor(self, W: np.ndarray, T: list[np.ndarray], keep: bool) -> RestFactor | None:
        lam = self.lam(T)
        MRF = self._mrf(W, lam)
        if self.sparse:
            M = self._sparse_matrix(W, lam)
            try:
                lu = spla.splu(
                    M,
                    permc_spec="MMD_AT_PLUS_A",
                    diag_pivot_thresh=0.0,
                    options={"SymmetricMode": True},
                )
            except RuntimeError:
                return None
            d = lu.U.diagonal()
            if not (d > 0).all():
                return None
            sol = lu.solve(MRF)
            return RestFactor(lam, MRF, float(np.log(d).sum()), MRF.T @ sol, None, lu)
        if self.staged is not None:
            vals = self._scatter_values(W, lam)[self._staged_order]
            sf = self.staged.factor(vals, MRF, keep)
            if sf is None:
                return None
            return RestFactor(lam, MRF, sf.logdet, sf.quad, None, None, staged=sf)
        M = self._dense(W, lam)
        with threads_for_order(self.Q):
            L, info = dpotrf(M, lower=1, clean=0, overwrite_a=1)  # in place: M is Fortran-ordered
        if info != 0:
            return None
        C, info = dtrtrs(L, MRF, lower=1)
        if info != 0:
            return None
        if keep:
            # the kept factor takes the buffer (usually the fit's last
            # factorization: no copy, and no second Q x Q array held)
            if np.shares_memory(L, self.buf):
                self.buf = None
            zero_upper(L)
        return RestFactor(
            lam,
            MRF,
            float(2.0 * np.log(np.diag(L)).sum()),
            C.T @ C,
            L,
            None,
            work=not keep,
        )


def lower_dot(A: np.ndarray, B: np.ndarray, block: int = 512) -> float:
    """Σ_{a≥b} A_ab B_ab over the lower triangles (diagonal included), by
    column blocks: the upper triangles are not read."""
    Q = A.shape[0]
    total = 0.0
    for lo in range(0, Q, block):
        hi = min(Q, lo + block)
        total += float(np.einsum("ij,ij->", A[hi:, lo:hi], B[hi:, lo:hi]))
        r, c = np.tril_indices(hi - lo)
        total += float(np.dot(A[lo + r, lo + c], B[lo + r, lo + c]))
    return total


def zero_upper(A: np.ndarray, block: int = 512) -> None:
    """Zero A's strict upper triangle in place, by column blocks (no Q x Q
    index or mask arrays)."""
    Q = A.shape[0]
    for lo in range(0, Q, block):
        hi = min(Q, lo + block)
        A[:lo, lo:hi] = 0.0
        r, c = np.triu_indices(hi - lo, 1)
        A[lo + r, lo + c] = 0.0


class RestFactor:
    """M_RR factored at one θ: log-determinant, solves, inverse blocks."""

    def __init__(self, lam, MRF, logdet, schur_FF, L, lu, work=False, staged=None):
        self._lam = lam  # Λ_R, or a callable forming it on first use
        self.MRF = MRF  # Λ_Rᵀ(A_RF − A_R1 V B_1F)
        self.logdet = logdet
        self.schur_FF = schur_FF  # M_RFᵀ M_RR⁻¹ M_RF
        self.L = L  # dense lower Cholesky factor (Fortran order), or None
        self.lu = lu  # sparse LU, or None
        self._work = work  # L is the rest block's work buffer (may be overwritten)
        self.staged = staged  # StagedFactor, or None

    @property
    def lam(self):
        """Λ_R: a vector for scalar terms, else the block-diagonal matrix."""
        if callable(self._lam):
            self._lam = self._lam()
        return self._lam

    def factor_inverse(self) -> np.ndarray:
        """W = L⁻¹ (dense factor only), lower triangular with zeros above, in
        Fortran order.  M_RR⁻¹ = WᵀW: its diagonal is the column sums of
        squares of W, and ‖W B‖²_F = tr(Bᵀ M_RR⁻¹ B).  Half the work of the
        full inverse (one triangular inversion, no product WᵀW).  A factor in
        the work buffer is inverted in place and can no longer solve."""
        L = self.L if self._work else self.L.copy(order="F")
        zero_upper(L)
        W = invert_factor(L, True, dtrtri)
        self.L = None if self._work else self.L
        return W

    def full_inverse(self) -> np.ndarray:
        """M_RR⁻¹ (dense factor only), its lower triangle valid (Fortran order).
        A factor in the work buffer is inverted in place and can no longer solve."""
        Z = invert_factor(self.L, self._work, dpotri)
        self.L = None if self._work else self.L
        return Z

    def solve(self, B: np.ndarray) -> np.ndarray:
        """M_RR⁻¹ B."""
        if self.lu is not None:
            return self.lu.solve(B)
        if self.staged is not None:
            return self.staged.solve(B)
        if self.L is None:  # pragma: no cover - programming error
            raise RuntimeError("the factor was inverted in place")
        X, info = dpotrs(self.L, B, lower=1)
        if info != 0:  # pragma: no cover - L came from a successful potrf
            raise np.linalg.LinAlgError("potrs failed")
        return X

    def inverse_diag_blocks(self, offs: np.ndarray, q: list[int], nlevels: list[int]):
        """Diagonal q_k x q_k blocks of M_RR⁻¹ per rest term: (n_k, q_k, q_k)."""
        Q = self.MRF.shape[0]
        out = []
        for k in range(len(q)):
            lo, hi = int(offs[k]), int(offs[k + 1])
            blocks = np.empty((nlevels[k], q[k], q[k]))
            step = q[k] * max(1, 2048 // q[k])
            for start in range(lo, hi, step):  # column chunks bound the memory
                stop = min(hi, start + step)
                E = np.zeros((Q, stop - start))
                E[np.arange(start, stop), np.arange(stop - start)] = 1.0
                S = self.solve(E)[start:stop]  # rows of this term's own block
                nb = (stop - start) // q[k]
                S = S.reshape(nb, q[k], nb, q[k])
                idx = np.arange(nb)
                first = (start - lo) // q[k]
                blocks[first : first + nb] = S[idx, :, idx, :]
            out.append(blocks)
        return out
