"""The profiled REML / ML criterion of a linear mixed model as a function of θ.

For fixed θ, with Λ(θ) block diagonal, the blocked Cholesky factor of

    [ΛᵀZᵀZΛ + I   ΛᵀZᵀX   ΛᵀZᵀy]
    [    ·          XᵀX      Xᵀy  ]  =  L Lᵀ
    [    ·           ·       yᵀy  ]

gives log|L_Z|², log|R_X|² and r² (the penalized residual sum of squares, the
square of L's last diagonal element), so that

    ML deviance    = log|L_Z|² + n (1 + log(2π r²/n))
    REML criterion = log|L_Z|² + log|R_X|² + (n-p)(1 + log(2π r²/(n-p)))

(minus Σ log wᵢ with prior weights).  The factorization is blocked over the
random-effects terms (Bates et al. 2015, J. Stat. Softw. 67(1)):

* term 1 (most levels): a batch of q₁ x q₁ factorizations, one per level;
* the other terms: one dense factorization of their Schur complement
  Λ_Rᵀ(A_RR − A_R1 V A_1R)Λ_R + I, where V = blockdiag(T₁ S₁ᵢ⁻¹ T₁ᵀ);
* [X y]: a (p+1) x (p+1) factorization of its Schur complement.

No step depends on the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

# LAPACK directly: scipy.linalg's wrappers cost more than the work on small matrices
from scipy.linalg.lapack import dpotrf, dtrtri

from . import batched
from .covariance import Template
from .crossprod import CrossProducts

_LOG2PI = np.log(2 * np.pi)


@dataclass
class Factorization:
    """Everything at one θ needed for estimates after the optimum."""

    theta: np.ndarray
    T: list[np.ndarray]
    # first term, level-last (see multilevel.batched)
    L1: np.ndarray  # (q1, q1, n1)
    W: np.ndarray  # (q1, q1, n1) L1⁻¹ T₁ᵀ
    C1F: np.ndarray  # (q1, m, n1)
    LR: np.ndarray | None  # (Q_r, Q_r) lower
    CRF: np.ndarray | None  # (Q_r, m)
    LambdaR: sp.csr_matrix | None
    LFF: np.ndarray  # (m, m) lower
    logdet_Z: float
    logdet_X: float
    r2: float


class ProfiledCriterion:
    """Evaluates the profiled deviance from precomputed cross-products."""

    def __init__(self, cp: CrossProducts, tmpl: list[Template], reml: bool, sum_log_w: float = 0.0):
        self.cp = cp
        self.tmpl = tmpl
        self.reml = reml
        self.sum_log_w = sum_log_w
        self.n = cp.n
        self.p = cp.p
        self._q1 = cp.q[0]
        self._tidx = [(t.rows, t.cols, t.offset, t.size) for t in tmpl]
        # level-last layout for the batched kernels
        self._D1 = np.ascontiguousarray(np.moveaxis(cp.D1, 0, -1))  # (q1, q1, n1)
        self._B1F = np.ascontiguousarray(np.moveaxis(cp.B1F, 0, -1))  # (q1, m, n1)
        self._pairs = None
        if cp.A1R is not None:
            self._A1R = cp.A1R.tocsr()
            self._AR1 = self._A1R.T.tocsr()
            self._rest_scalar = all(q == 1 for q in cp.q[1:])
            if self._q1 == 1:
                self._pairs = _pair_products(self._A1R)
            self._MRR = np.empty_like(cp.ARR)

    def templates(self, theta: np.ndarray) -> list[np.ndarray]:
        out = []
        for rows, cols, off, size in self._tidx:
            q = int(rows.max()) + 1
            T = np.zeros((q, q))
            T[rows, cols] = theta[off : off + size]
            out.append(T)
        return out

    # -- Λ of the terms after the first --------------------------------------
    def _lambda_rest(self, T: list[np.ndarray]) -> sp.csr_matrix | np.ndarray:
        cp = self.cp
        if self._rest_scalar:
            return np.concatenate(
                [np.full(nl, t[0, 0]) for nl, t in zip(cp.nlevels[1:], T[1:], strict=True)]
            )
        return sp.block_diag(
            [sp.kron(sp.identity(nl), t) for nl, t in zip(cp.nlevels[1:], T[1:], strict=True)],
            format="csr",
        )

    def factor(self, theta: np.ndarray, keep: bool = False) -> Factorization | None:
        """Blocked Cholesky at θ; None where a block is not positive definite.

        Work buffers are reused between evaluations; ``keep=True`` copies them
        so that the factorization stays valid after further evaluations."""
        cp = self.cp
        T = self.templates(theta)
        T1 = T[0]
        m = self.p + 1
        if self._q1 == 1:
            t = T1[0, 0]
            l1 = np.sqrt(t * t * self._D1[0, 0] + 1.0)
            w = t / l1
            L1 = l1[None, None, :]
            W = w[None, None, :]
            C1F = (w * self._B1F[0])[None]
            logdet = 2.0 * np.log(l1).sum()
        else:
            S = np.einsum("ai,ijn,jb->abn", T1.T, self._D1, T1)
            S[np.diag_indices(self._q1)] += 1.0
            L1 = batched.cholesky(S)
            if L1 is None:
                return None
            W = batched.solve_lower(L1, T1.T)
            C1F = np.einsum("abn,bmn->amn", W, self._B1F)
            logdet = 2.0 * np.log(np.diagonal(L1)).sum()
        flat = C1F.transpose(1, 0, 2).reshape(m, -1)
        MFF = cp.AFF - flat @ flat.T
        LR = CRF = LamR = None
        if cp.ARR is not None:
            LamR = self._lambda_rest(T)
            MRR, MRF = self._rest_schur(W, LamR)
            LR, info = dpotrf(MRR, lower=1, clean=0, overwrite_a=1)
            if info != 0:
                return None
            logdet += 2.0 * np.log(np.diag(LR)).sum()
            if keep:
                LR = np.tril(LR)
            CRF = sla.solve_triangular(LR, MRF, lower=True, check_finite=False)
            MFF = MFF - CRF.T @ CRF
        try:
            LFF = np.linalg.cholesky(MFF)
        except np.linalg.LinAlgError:
            return None
        d = np.diag(LFF)
        r2 = float(d[-1] ** 2)
        logdet_X = float(2.0 * np.log(d[:-1]).sum())
        return Factorization(
            theta,
            T,
            L1,
            W,
            C1F,
            LR,
            CRF,
            LamR,
            LFF,
            float(logdet),
            logdet_X,
            r2,
        )

    def _rest_schur(self, W: np.ndarray, LamR) -> tuple[np.ndarray, np.ndarray]:
        """Λ_Rᵀ(A_RR − A_R1 V A_1R)Λ_R + I and Λ_Rᵀ(A_RF − A_R1 V B_1F),
        V = blockdiag(WᵢᵀWᵢ) = blockdiag(T₁ S₁ᵢ⁻¹ T₁ᵀ)."""
        cp = self.cp
        m = self.p + 1
        MRR = self._MRR
        if self._q1 == 1:
            v = W[0, 0] ** 2
            # only the lower triangle: LAPACK's potrf reads no more
            np.subtract(cp.ARR, self._pairs(v), out=MRR)
            if not self._rest_scalar:  # Λ_R mixes columns: needs both triangles
                upper = np.triu_indices(MRR.shape[0], 1)
                MRR[upper] = MRR.T[upper]
            VB = (v * self._B1F[0]).T
        else:
            V = np.einsum("kan,kbn->nab", W, W)
            n1 = V.shape[0]
            Vb = sp.bsr_matrix(
                (V, np.arange(n1), np.arange(n1 + 1)), shape=(n1 * self._q1, n1 * self._q1)
            )
            H = (self._AR1 @ (Vb @ self._A1R).tocsr()).toarray()
            np.subtract(cp.ARR, H, out=MRR)
            VB = np.einsum("abn,bmn->nam", V.transpose(1, 2, 0), self._B1F).reshape(-1, m)
        MRF = cp.ARF - self._AR1 @ VB
        if isinstance(LamR, np.ndarray):
            MRR *= LamR[:, None]
            MRR *= LamR[None, :]
            MRF = MRF * LamR[:, None]
        else:
            MRR[:] = (LamR.T @ (LamR.T @ MRR).T).T
            MRF = LamR.T @ MRF
        MRR[np.diag_indices_from(MRR)] += 1.0
        return MRR, MRF

    def value(self, f: Factorization) -> float:
        if f.r2 <= 0:
            return np.inf
        if self.reml:
            dof = self.n - self.p
            return (
                f.logdet_Z
                + f.logdet_X
                + dof * (1.0 + _LOG2PI + np.log(f.r2 / dof))
                - self.sum_log_w
            )
        n = self.n
        return f.logdet_Z + n * (1.0 + _LOG2PI + np.log(f.r2 / n)) - self.sum_log_w

    def __call__(self, theta: np.ndarray) -> float:
        f = self.factor(np.asarray(theta, dtype=float))
        return np.inf if f is None else self.value(f)

    @property
    def has_gradient(self) -> bool:
        """Analytic gradients are implemented for one random-effects term."""
        return self.cp.ARR is None

    def value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Criterion and its exact gradient in θ (one random-effects term).

        With Sᵢ = TᵀDᵢT + I, R = Sᵢ⁻¹Tᵀ, the conditional modes uᵢ = R Zᵢᵀ(y − Xβ̂)
        and the residual cross-products Zᵢᵀr = Zᵢᵀ(y − Xβ̂) − DᵢTuᵢ, for the
        entry (r, c) of T:
          ∂ log|L_Z|² = 2 [Σᵢ R Dᵢ]_{c,r}
          ∂ log|R_X|² = −2 [Σᵢ R Qᵢ − R Qᵢ Rᵀ Tᵀ Dᵢ]_{c,r},  Qᵢ = B_Xᵢ (R_XᵀR_X)⁻¹ B_Xᵢᵀ
          ∂ r²        = −2 [Σᵢ uᵢ (Zᵢᵀr)ᵀ]_{c,r}
        (envelope theorem for r²: β̂ and u minimise the penalized sum of squares).
        """
        theta = np.asarray(theta, dtype=float)
        f = self.factor(theta)
        g = np.zeros(theta.size)
        if f is None:
            return np.inf, g
        val = self.value(f)
        p = self.p
        T = f.T[0]
        q = T.shape[0]
        D, B = self._D1, self._B1F
        LXinv, _ = dtrtri(f.LFF[:p, :p], lower=1)
        beta = LXinv.T @ f.LFF[p, :p]
        P = LXinv.T @ LXinv
        if q == 1:
            l1 = f.L1[0, 0]
            R = (f.W[0, 0] / l1)[None, None]
        else:
            Linv = batched.solve_lower(f.L1, np.eye(q))
            R = np.einsum("kan,kbn->abn", Linv, f.W)
        z = np.append(-beta, 1.0)
        c = np.einsum("amn,m->an", B, z)
        u = np.einsum("abn,bn->an", R, c)
        Zr = c - np.einsum("abn,bn->an", D, T @ u)
        A1 = np.einsum("abn,bcn->ac", R, D)
        A3 = u @ Zr.T
        BXP = np.einsum("apn,pr->arn", B[:, :p], P)
        Q = np.einsum("arn,brn->abn", BXP, B[:, :p])
        RQ = np.einsum("abn,bcn->acn", R, Q)
        Y = np.einsum("acn,dcn->adn", RQ, R)
        YT = np.einsum("adn,ed->aen", Y, T)
        A2 = RQ.sum(axis=-1) - np.einsum("aen,efn->af", YT, D)
        rows, cols, _, _ = self._tidx[0]
        dZ = 2.0 * A1[cols, rows]
        dr2 = -2.0 * A3[cols, rows]
        if self.reml:
            dX = -2.0 * A2[cols, rows]
            g[:] = dZ + dX + (self.n - p) * dr2 / f.r2
        else:
            g[:] = dZ + self.n * dr2 / f.r2
        return val, g

    # -- estimates at a θ ---------------------------------------------------------
    def solve(self, f: Factorization) -> tuple[np.ndarray, list[np.ndarray]]:
        """β̂ and the spherical conditional modes u (per term, (n_k, q_k))."""
        p = self.p
        cp = self.cp
        LFF = f.LFF
        LXinv, _ = dtrtri(LFF[:p, :p], lower=1)
        W = batched.to_levels_first(f.W)
        C1F = batched.to_levels_first(f.C1F)
        L1 = batched.to_levels_first(f.L1)
        beta = LXinv.T @ LFF[p, :p]
        us: list[np.ndarray] = []
        rhs1 = C1F[:, :, p] - C1F[:, :, :p] @ beta
        if f.LR is not None:
            cR = f.CRF[:, p] - f.CRF[:, :p] @ beta
            uR = sla.solve_triangular(f.LR.T, cR, lower=False, check_finite=False)
            LamU = f.LambdaR * uR if isinstance(f.LambdaR, np.ndarray) else f.LambdaR @ uR
            AU = (self._A1R @ LamU).reshape(-1, self._q1)
            rhs1 = rhs1 - np.einsum("iab,ib->ia", W, AU)
        u1 = np.linalg.solve(np.swapaxes(L1, 1, 2), rhs1[:, :, None])[:, :, 0]
        us.append(u1)
        if f.LR is not None:
            offs = cp.rest_offsets
            for k in range(1, len(cp.q)):
                us.append(uR[offs[k - 1] : offs[k]].reshape(cp.nlevels[k], cp.q[k]))
        return beta, us

    def conditional_variances(self, f: Factorization) -> list[np.ndarray]:
        """Diagonal blocks of Λ (ΛᵀZᵀZΛ + I)⁻¹ Λᵀ per term: (n_k, q_k, q_k), to be
        multiplied by σ²."""
        cp = self.cp
        W = batched.to_levels_first(f.W)
        L1inv = np.linalg.inv(batched.to_levels_first(f.L1))
        M1 = np.swapaxes(L1inv, 1, 2) @ L1inv  # (L1 L1ᵀ)⁻¹ per level
        out = []
        if f.LR is not None:
            # Y = L_R⁻¹ C1Rᵀ L1⁻ᵀ-free form: C1R = W A1R Λ_R, so the correction to
            # block i is L1ᵢ⁻ᵀ (C1R L_R⁻ᵀ)(·)ᵀ L1ᵢ⁻¹
            Lam = f.LambdaR
            C1R = (
                sp.bsr_matrix(
                    (W, np.arange(len(W)), np.arange(len(W) + 1)),
                    shape=(W.shape[0] * self._q1,) * 2,
                )
                @ self._A1R
            )
            C1R = C1R.multiply(Lam[None, :]).tocsr() if isinstance(Lam, np.ndarray) else C1R @ Lam
            Y = sla.solve_triangular(f.LR, C1R.T.toarray(), lower=True, check_finite=False)
            Yb = Y.T.reshape(-1, self._q1, Y.shape[0])  # (n1, q1, Q_r)
            G = Yb @ np.swapaxes(Yb, 1, 2)
            M1 = M1 + np.swapaxes(L1inv, 1, 2) @ G @ L1inv
        T1 = f.T[0]
        out.append(T1 @ M1 @ T1.T)
        if f.LR is not None:
            LRinv = sla.solve_triangular(f.LR, np.eye(f.LR.shape[0]), lower=True)
            offs = cp.rest_offsets
            for k in range(1, len(cp.q)):
                qk, nk = cp.q[k], cp.nlevels[k]
                cols = LRinv[:, offs[k - 1] : offs[k]].reshape(-1, nk, qk)
                Mk = np.einsum("rna,rnb->nab", cols, cols)
                Tk = f.T[k]
                out.append(Tk @ Mk @ Tk.T)
        return out


def _pair_products(A: sp.csr_matrix):
    """For a scalar first term: H(v) = Aᵀ diag(v) A as a linear map of v.

    Every row of A (a level of the first factor) contributes v_s a_s a_sᵀ;
    the products of its nonzeros are formed once, so that each evaluation is a
    single sparse matrix-vector product.  Only the lower triangle is kept.
    """
    n1, Q = A.shape
    cnt = np.diff(A.indptr)
    rows = np.repeat(np.arange(n1), cnt)
    # every nonzero e paired with every nonzero of its row
    per = cnt[rows]
    e1 = np.repeat(np.arange(A.nnz), per)
    block_start = np.repeat(np.cumsum(per) - per, per)
    e2 = A.indptr[rows[e1]] + (np.arange(e1.size) - block_start)
    c1, c2 = A.indices[e1], A.indices[e2]
    keep = c1 >= c2
    key = c1[keep].astype(np.int64) * Q + c2[keep]
    K = sp.csr_matrix(
        (A.data[e1[keep]] * A.data[e2[keep]], (key, rows[e1[keep]])), shape=(Q * Q, n1)
    )
    K.sum_duplicates()
    nonempty = np.flatnonzero(np.diff(K.indptr))
    K = K[nonempty]
    out = np.zeros(Q * Q)

    def apply(v: np.ndarray) -> np.ndarray:
        out[nonempty] = K @ v
        return out.reshape(Q, Q)

    return apply
