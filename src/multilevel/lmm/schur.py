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
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.sparse.linalg as spla

# LAPACK directly: scipy.linalg's wrappers cost more than small solves
from scipy.linalg.lapack import dpotrf, dpotrs, dtrtrs

from multilevel.linalg.blockdiag import BlockDiagonal
from multilevel.linalg.crossprod import CrossProducts
from multilevel.threads import threads_for_order

DENSE_MAX = 1500  # below this size a dense factorization is always cheapest
SPARSE_DENSITY = 0.05  # above this fill the dense factorization wins
SPARSE_LINKS = 16  # mean links per level in a large block above which the factor fills in
SMALL_DENSE = 250_000  # entries: sparse first × rest maps held dense below this
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
        self.pairs = PairProducts(self.A1R) if self.q1 == 1 else None
        self.bpairs = BlockPairProducts(self.A1R, self.q1) if self.q1 > 1 else None
        pattern = (abs(cp.ARR) + abs(self.AR1) @ abs(self.A1R)).tocsr()
        self.sparse = sparse_pays(pattern)
        if self.sparse:
            self._init_sparse(pattern)
        else:
            self.ARR = cp.ARR.toarray()
            self.buf = np.empty((self.Q, self.Q))
            self._diag = np.diag_indices(self.Q)
            # H's entries sit at fixed positions: a buffer that is zero elsewhere
            self.Hbuf = np.zeros((self.Q, self.Q))

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
        M = self.buf
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
        M = self._dense(W, lam)
        with threads_for_order(self.Q):
            L, info = dpotrf(M, lower=1, clean=0, overwrite_a=1)
        if info != 0:
            return None
        C, info = dtrtrs(L, MRF, lower=1)
        if info != 0:
            return None
        return RestFactor(
            lam,
            MRF,
            float(2.0 * np.log(np.diag(L)).sum()),
            C.T @ C,
            np.tril(L) if keep else L,
            None,
        )


class RestFactor:
    """M_RR factored at one θ: log-determinant, solves, inverse blocks."""

    def __init__(self, lam, MRF, logdet, schur_FF, L, lu):
        self.lam = lam
        self.MRF = MRF  # Λ_Rᵀ(A_RF − A_R1 V B_1F)
        self.logdet = logdet
        self.schur_FF = schur_FF  # M_RFᵀ M_RR⁻¹ M_RF
        self.L = L  # dense lower Cholesky factor, or None
        self.lu = lu  # sparse LU, or None

    def solve(self, B: np.ndarray) -> np.ndarray:
        """M_RR⁻¹ B."""
        if self.lu is not None:
            return self.lu.solve(B)
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
