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
* the other terms: one factorization of their Schur complement
  Λ_Rᵀ(A_RR − A_R1 V A_1R)Λ_R + I, where V = blockdiag(T₁ S₁ᵢ⁻¹ T₁ᵀ), dense or
  sparse by its pattern (:mod:`multilevel.lmm.schur`), a large dense one after
  eliminating independent sets of its levels (:mod:`multilevel.lmm.staged`);
* [X y]: a (p+1) x (p+1) factorization of its Schur complement.

No step depends on the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, partial

import numpy as np
import scipy.sparse as sp

# LAPACK directly: scipy.linalg's wrappers cost more than the work on small matrices
from scipy.linalg.lapack import dpotrf, dtrtri

from multilevel.compiled import kernel, lapack_kernel
from multilevel.covariance import Template
from multilevel.linalg import batched
from multilevel.linalg.crossprod import CrossProducts
from multilevel.lmm.blocked import level_pattern, rest_order, row_ranges
from multilevel.lmm.schur import RestBlock, RestFactor, lower_dot

_LOG2PI = np.log(2 * np.pi)


@dataclass
class Factorization:
    """Everything at one θ needed for estimates after the optimum."""

    theta: np.ndarray
    T: list[np.ndarray]
    # first term, level-last (see multilevel.linalg.batched)
    L1: np.ndarray  # (q1, q1, n1)
    W: np.ndarray  # (q1, q1, n1) L1⁻¹ T₁ᵀ
    C1F: np.ndarray  # (q1, m, n1)
    rest: RestFactor | None  # the terms after the first
    LFF: np.ndarray  # (m, m) lower
    logdet_Z: float
    logdet_X: float
    r2: float  # may under- or overflow for responses in extreme units
    log_r2: float  # 2 log|d|, d the last diagonal element of the factor: always finite
    # (β̂, u per term) where the compiled pass that factored also solved
    solution: tuple[np.ndarray, list[np.ndarray]] | None = None


def _ff_parts(LFF: np.ndarray) -> tuple[float, float, float]:
    """log|R_X|², r² and 2 log|d| from [X y]'s factor (d its last pivot)."""
    d = LFF.diagonal()
    log_r2 = float(2.0 * np.log(abs(d[-1]))) if d[-1] != 0 else -np.inf
    return float(2.0 * np.log(d[:-1]).sum()), float(d[-1] ** 2), log_r2


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
        self._kernel = (
            (_scalar_terms_kernel(cp) or _blocked_terms_kernel(cp))
            if cp.has_rest
            else _one_term_kernel(cp)
        )
        # the scalar terms' kernel also forms the estimates' factor
        self._scalar_kernel = self._kernel is not None and cp.has_rest and max(cp.q) == 1
        self._rest_block: RestBlock | None = None
        self._levels_first: tuple[np.ndarray, np.ndarray] | None = None  # D₁, B₁F for kernels
        self._last: tuple[np.ndarray, float, np.ndarray] | None = None  # (θ, value, gradient)

    @cached_property
    def _D1(self) -> np.ndarray:
        """D₁ level-last (q1, q1, n1), the layout the numpy code reads."""
        return np.ascontiguousarray(self.cp.D1.transpose(1, 2, 0))

    @cached_property
    def _B1F(self) -> np.ndarray:
        """B₁F level-last (q1, m, n1)."""
        return np.ascontiguousarray(self.cp.B1F.transpose(1, 2, 0))

    @property
    def _rest(self) -> RestBlock | None:
        """The terms after the first (None for one term); built on first use:
        with a compiled criterion only the estimates at the optimum need it."""
        if self._rest_block is None and self.cp.has_rest:
            self._rest_block = RestBlock(self.cp)
        return self._rest_block

    def templates(self, theta: np.ndarray) -> list[np.ndarray]:
        out = []
        for (rows, cols, off, size), t in zip(self._tidx, self.tmpl, strict=True):
            T = np.zeros((t.q, t.q))
            T[rows, cols] = theta[off : off + size]
            out.append(T)
        return out

    def _level_factors(self, T1: np.ndarray, theta: np.ndarray, m: int):
        """The first term's L₁ᵢ, Wᵢ = L₁ᵢ⁻¹T₁ᵀ and C₁ᵢ = Wᵢ(Z₁ᵀ[X y])ᵢ, level-last,
        and Σ log|Sᵢ| (None where some Sᵢ is not positive definite)."""
        q, n1 = self._q1, self.cp.nlevels[0]
        fn = None if _KERNEL_DISABLED else kernel("_kernels", "level_factors")
        if fn is None:
            blocks = batched.factor_levels(T1, self._D1)
            if blocks is None:
                return None
            L1, W = blocks
            C1F = np.einsum("abn,bmn->amn", W, self._B1F)
            return L1, W, C1F, 2.0 * np.log(np.diagonal(L1)).sum()
        # level-first buffers, seen level-last (the layout the numpy code reads)
        L1, W, C1F = np.empty((n1, q, q)), np.empty((n1, q, q)), np.empty((n1, q, m))
        if self._levels_first is None:
            self._levels_first = tuple(
                np.ascontiguousarray(a, dtype=float) for a in (self.cp.D1, self.cp.B1F)
            )
        theta1 = np.ascontiguousarray(theta[: self._tidx[0][3]], dtype=float)
        logdet = fn(*self._levels_first, theta1, L1, W, C1F, q, m, n1)
        if logdet is None:
            return None
        return L1.transpose(1, 2, 0), W.transpose(1, 2, 0), C1F.transpose(1, 2, 0), logdet

    def _a1r_times(self, v: np.ndarray) -> np.ndarray:
        """A_1R v, through the rest block's operator when it exists."""
        rb = self._rest_block
        return (rb.A1R_op if rb is not None else self.cp.A1R_dense_or_csr()) @ v

    def factor(self, theta: np.ndarray, keep: bool = False) -> Factorization | None:
        """Blocked Cholesky at θ; None where a block is not positive definite.

        Work buffers are reused between evaluations; ``keep=True`` copies them
        so that the factorization stays valid after further evaluations."""
        cp = self.cp
        T = self.templates(theta)
        if keep and self._kernel is not None:
            if not cp.has_rest:
                return self._one_term_kept(theta, T)
            if self._scalar_kernel:
                return self._scalar_terms_kept(kernel("_kernels", "scalar_terms_factor"), theta, T)
            return self._blocked_terms_kept(theta, T)
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
            blocks = self._level_factors(T1, theta, m)
            if blocks is None:
                return None
            L1, W, C1F, logdet = blocks
        flat = C1F.transpose(1, 0, 2).reshape(m, -1)
        MFF = cp.AFF - flat @ flat.T
        rest = None
        if cp.has_rest:
            rest = self._rest.factor(W, T, keep)
            if rest is None:
                return None
            logdet += rest.logdet
            MFF = MFF - rest.schur_FF
        # LAPACK directly: numpy's wrapper costs several times the factorization
        # of these small blocks, once per evaluation
        LFF, info = dpotrf(MFF, lower=1, clean=1)
        if info != 0:
            return None
        return Factorization(theta, T, L1, W, C1F, rest, LFF, float(logdet), *_ff_parts(LFF))

    def _compiled_kept(self, theta, T, first, rest, LFF, logdet_Z, beta, u) -> Factorization:
        """A kept factorization from a compiled pass: the first term's blocks
        (L1, W, C1F level-last), the rest's factor, [X y]'s factor LFF and the
        solution (β̂, the modes u of all terms in one vector)."""
        cp = self.cp
        n1 = cp.nlevels[0] * cp.q[0]
        us = [u[:n1].reshape(cp.nlevels[0], cp.q[0])]
        offs = cp.rest_offsets
        for k in range(1, len(cp.q)):
            us.append(u[n1 + offs[k - 1] : n1 + offs[k]].reshape(cp.nlevels[k], cp.q[k]))
        return Factorization(
            theta,
            T,
            *first,
            rest,
            LFF,
            float(logdet_Z),
            *_ff_parts(LFF),
            solution=(beta, us),
        )

    def _one_term_kept(self, theta: np.ndarray, T: list[np.ndarray]) -> Factorization | None:
        """One term's kept factorization and its solution (β̂, u) in one
        compiled pass (see :meth:`_scalar_terms_kept`)."""
        fn = kernel("_kernels", "one_term_factor")
        _, (D, B, AFF), (q, m, nl) = self._kernel
        L, W, C = np.empty((nl, q, q)), np.empty((nl, q, q)), np.empty((nl, q, m))
        LFF, beta, u = np.empty((m, m)), np.empty(m - 1), np.empty((nl, q))
        theta = np.ascontiguousarray(theta, dtype=float)
        logdet = fn(D, B, AFF, theta, L, W, C, LFF, beta, u, q, m, nl)
        if logdet is None:
            return None
        first = (L.transpose(1, 2, 0), W.transpose(1, 2, 0), C.transpose(1, 2, 0))
        return self._compiled_kept(theta, T, first, None, LFF, logdet, beta, u.reshape(-1))

    def _scalar_terms_kept(
        self, fn, theta: np.ndarray, T: list[np.ndarray]
    ) -> Factorization | None:
        """The kept factorization of several scalar terms with the compiled
        criterion, and its solution (β̂, u) from the same compiled pass: the
        estimates at the optimum are a small model's last step, and numpy's
        per-call costs on its many small blocks were more than its search."""
        _, data, (n1, Q, m, _) = self._kernel
        d, B, Ap, Ai, Ax, ARR, ARF, AFF, term = data
        l1, C1F, Lt = np.empty(n1), np.empty((m, n1)), np.empty((Q, Q))
        G, schur, LFF = np.empty((Q, m)), np.empty((m, m)), np.empty((m, m))
        beta, u = np.empty(m - 1), np.empty(n1 + Q)
        theta = np.ascontiguousarray(theta, dtype=float)
        out = fn(
            d, B, Ap, Ai, Ax, ARR, ARF, AFF, term, theta,
            l1, C1F, Lt, G, schur, LFF, beta, u, n1, Q, m,
        )  # fmt: skip
        if out is None:
            return None
        logdet1, logdetR = out
        rest = RestFactor(theta[term], G, logdetR, schur, Lt.T, None, work=False)
        first = (l1.reshape(1, 1, n1), (theta[0] / l1).reshape(1, 1, n1), C1F.reshape(1, m, n1))
        return self._compiled_kept(theta, T, first, rest, LFF, logdet1 + logdetR, beta, u)

    def _blocked_terms_kept(self, theta: np.ndarray, T: list[np.ndarray]) -> Factorization | None:
        """The kept factorization of several terms with the blocked compiled
        criterion and its solution (β̂, u) from the same compiled pass (see
        :meth:`_scalar_terms_kept`); Λ_R is formed on first use."""
        fn = kernel("_kernels", "blocked_terms_factor")
        _, data, (nl1, q1, Qr, m, K) = self._kernel
        L1, W, C1F = np.empty((nl1, q1, q1)), np.empty((nl1, q1, q1)), np.empty((nl1, q1, m))
        LRt, MRF = np.empty((Qr, Qr)), np.empty((Qr, m))
        schur, LFF = np.empty((m, m)), np.empty((m, m))
        n1 = q1 * nl1
        beta, u = np.empty(m - 1), np.empty(n1 + Qr)
        theta = np.ascontiguousarray(theta, dtype=float)
        out = fn(
            *data, theta, L1, W, C1F, LRt, MRF, schur, LFF, beta, u, nl1, q1, Qr, m, K
        )  # fmt: skip
        if out is None:
            return None
        logdet1, logdetR = out
        rest = RestFactor(partial(_rest_lam, self, T), MRF, logdetR, schur, LRt.T, None)
        first = (L1.transpose(1, 2, 0), W.transpose(1, 2, 0), C1F.transpose(1, 2, 0))
        return self._compiled_kept(theta, T, first, rest, LFF, logdet1 + logdetR, beta, u)

    def value(self, f: Factorization) -> float:
        if not np.isfinite(f.log_r2):
            return np.inf
        if self.reml:
            dof = self.n - self.p
            return (
                f.logdet_Z
                + f.logdet_X
                + dof * (1.0 + _LOG2PI + f.log_r2 - np.log(dof))
                - self.sum_log_w
            )
        n = self.n
        return f.logdet_Z + n * (1.0 + _LOG2PI + f.log_r2 - np.log(n)) - self.sum_log_w

    def _kernel_call(self, theta: np.ndarray, grad: np.ndarray | None) -> float:
        call, tail = self._kernel_bound
        out = np.zeros(theta.size) if grad is None else grad
        val = call(np.ascontiguousarray(theta, dtype=float), out, *tail, int(grad is not None))
        return val - self.sum_log_w

    @cached_property
    def _kernel_bound(self) -> tuple:
        """The compiled criterion with its data bound: the search calls it
        a dozen times or more, and unpacking its arguments each time costs a
        fifth of a small model's evaluation."""
        fn, data, dims = self._kernel
        return partial(fn, *data), (*dims, float(self.n), int(self.reml))

    def __call__(self, theta: np.ndarray) -> float:
        if self._kernel is not None:
            return self._kernel_call(np.asarray(theta, dtype=float), None)
        f = self.factor(np.asarray(theta, dtype=float))
        return np.inf if f is None else self.value(f)

    @property
    def has_gradient(self) -> bool:
        """Exact gradients: one random-effects term, or several whose rest
        block is factored densely (crossed or nested terms of any size q)."""
        if self._kernel is not None or not self.cp.has_rest:
            return True
        return not self._rest.sparse

    def value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Criterion and its exact gradient in θ (see :meth:`has_gradient`)."""
        if self._kernel is not None:
            g = np.zeros(len(theta))
            return self._kernel_call(theta, g), g
        theta = np.asarray(theta, dtype=float)
        # optimisers ask again for the point they stopped at; with a large rest
        # block one evaluation costs seconds
        last = self._last
        if last is not None and np.array_equal(last[0], theta):
            return last[1], last[2].copy()
        g = np.zeros(theta.size)
        f = self.factor(theta)
        if f is None:
            return np.inf, g
        p = self.p
        LXinv, _ = dtrtri(f.LFF[:p, :p], lower=1)
        beta = LXinv.T @ f.LFF[p, :p]
        P = LXinv.T @ LXinv  # (R_XᵀR_X)⁻¹
        if self._rest is None:
            self._gradient_one_term(f, beta, P, g)
        elif all(q == 1 for q in self.cp.q):
            self._gradient_scalar_terms(f, beta, P, g)
        else:
            self._gradient_terms(f, beta, P, g)
        value = self.value(f)
        self._last = (theta.copy(), value, g.copy())
        return value, g

    def _gradient_scalar_terms(self, f: Factorization, beta, P, g: np.ndarray) -> None:
        """Scalar terms k with Λ = diag(λ), A = ZᵀZ, M = ΛAΛ + I, G = ΛZᵀX,
        B = M⁻¹G, P = (R_XᵀR_X)⁻¹, u the conditional modes and Zᵀr = Zᵀ(y − Xβ̂) − AΛu:

          ∂ log|M|     = 2 (n_k − tr_k M⁻¹) / λ_k      (ΛAΛ = M − I)
          ∂ log|R_X|²  = −2 Σ_{j∈k} (ZᵀX − AΛB)_j · (BP)_j
          ∂ r²         = −2 Σ_{j∈k} (Zᵀr)_j u_j

        tr M⁻¹ over the first term needs M⁻¹'s diagonal there: 1/sᵢ plus
        Σ_i (λ₁²/sᵢ²) (A_1R Λ_R M_RR⁻¹ Λ_R A_R1)_ii = ‖W C‖²_F, with W = L⁻¹ of
        M_RR = LLᵀ and C = Λ_R A_R1 diag(λ₁/sᵢ) (sparse); tr M⁻¹ over a rest
        term is the sum of its columns' squares in W.  One triangular inversion
        in place of L: no full inverse.
        """
        cp, rb, rf, p = self.cp, self._rest, f.rest, self.p
        lam1 = f.T[0][0, 0]
        lamR = rf.lam
        d = cp.D1[:, 0, 0]
        s = lam1 * lam1 * d + 1.0
        # U = M⁻¹ Λ Zᵀ[X y] through the two blocks (before L is inverted in place)
        UR = rf.solve(rf.MRF)
        U1 = (lam1 * cp.B1F[:, 0, :] - lam1 * (rb.A1R_op @ (lamR[:, None] * UR))) / s[:, None]
        if rf.staged is not None:
            diagR, tr_cross = self._traces_staged(rf, rb, lam1, lamR, s)
        else:
            diagR, tr_cross = self._traces_dense(rf, rb, lam1, lamR, s)

        def a_lam(v1: np.ndarray, vR: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            lv1, lvR = lam1 * v1, lamR[:, None] * vR
            return d[:, None] * lv1 + rb.A1R_op @ lvR, rb.AR1_op @ lv1 + rb.ARR_op @ lvR

        z = np.append(-beta, 1.0)
        u1, uR = U1 @ z, UR @ z
        au1, auR = a_lam(u1[:, None], uR[:, None])
        zr1 = cp.B1F[:, 0, :] @ z - au1[:, 0]
        zrR = cp.ARF @ z - auR[:, 0]
        B1, BR = U1[:, :p], UR[:, :p]
        ab1, abR = a_lam(B1, BR)
        e1 = np.einsum("jc,jc->j", (cp.B1F[:, 0, :p] - ab1) @ P, B1)
        eR = np.einsum("jc,jc->j", (cp.ARF[:, :p] - abR) @ P, BR)
        # traces of M⁻¹ per term
        tr1 = (1.0 / s).sum() + tr_cross
        offs = cp.rest_offsets
        terms = [(slice(0, cp.nlevels[0]), None)] + [
            (slice(int(offs[k - 1]), int(offs[k])), k) for k in range(1, len(cp.q))
        ]
        for k, (sl, rk) in enumerate(terms):
            lam_k = f.theta[k]
            if rk is None:
                trk, zr, uu, ee = tr1, zr1, u1, e1
            else:
                trk, zr, uu, ee = diagR[sl].sum(), zrR[sl], uR[sl], eR[sl]
            nk = sl.stop - sl.start
            dZ = 2.0 * (nk - trk) / lam_k if lam_k != 0 else 0.0
            dr2 = -2.0 * float(zr @ uu)
            if self.reml:
                g[k] = dZ - 2.0 * float(ee.sum()) + (self.n - p) * dr2 / f.r2
            else:
                g[k] = dZ + self.n * dr2 / f.r2

    @staticmethod
    def _traces_dense(rf, rb, lam1, lamR, s) -> tuple[np.ndarray, float]:
        """diag(M_RR⁻¹) and ‖W C‖²_F from W = L⁻¹ (in place of L), or, where
        that product costs more (:meth:`RestBlock._product_pays`), from the
        full inverse Z: Σ_ab Z_ab (Λ_R A_R1 diag(λ₁²/sᵢ²) A_1R Λ_R)_ab."""
        if not rb.inverse_by_product:
            Z = rf.full_inverse()
            diagR = np.diagonal(Z).copy()
            v = lam1 * lam1 / (s * s)
            if rb._syrk_A is not None:
                H = rb.lower_H(v, lamR)
                tr_cross = 2.0 * lower_dot(Z, H) - float(diagR @ np.diagonal(H))
            else:
                pr, pc = rb.pairs.rows, rb.pairs.cols
                w = Z[pr, pc] * lamR[pr] * lamR[pc] * rb.pairs(v)
                tr_cross = float(2.0 * w.sum() - w[pr == pc].sum())
            return diagR, tr_cross
        W = rf.factor_inverse()
        diagR = np.einsum("ij,ij->j", W, W)  # diag(M_RR⁻¹) = diag(WᵀW)
        CT = rb.A1R.multiply((lam1 / s)[:, None]).multiply(lamR[None, :]).tocsr()
        tr_cross = 0.0
        step = max(1, (1 << 21) // W.shape[0])  # rows of (W C)ᵀ at a time: ~16 MB
        WT = W.T  # C-ordered: the sparse product reads its rows
        for lo in range(0, CT.shape[0], step):
            B = CT[lo : lo + step] @ WT
            tr_cross += float(np.einsum("ij,ij->", B, B))
        return diagR, tr_cross

    @staticmethod
    def _traces_staged(rf, rb, lam1, lamR, s) -> tuple[np.ndarray, float]:
        """The same from M_RR⁻¹ on its own pattern (a selected inverse): ‖W C‖²_F
        = Σ_ab (Λ_R M_RR⁻¹ Λ_R)_ab [A_R1 diag(λ₁²/sᵢ²) A_1R]_ab, whose second
        factor is nonzero only at the pairs."""
        z = rf.staged.selected_inverse()
        diagR = z[rb._staged_diag]
        pr, pc = rb.pairs.rows, rb.pairs.cols
        h = rb.pairs(lam1 * lam1 / (s * s))
        w = z[rb._staged_pairs] * lamR[pr] * lamR[pc] * h
        # the pairs hold the lower triangle: off-diagonal entries count twice
        tr_cross = float(2.0 * w.sum() - w[pr == pc].sum())
        return diagR, tr_cross

    def _gradient_one_term(self, f: Factorization, beta, P, g: np.ndarray) -> None:
        """Criterion and its exact gradient in θ (one random-effects term).

        With Sᵢ = TᵀDᵢT + I, R = Sᵢ⁻¹Tᵀ, the conditional modes uᵢ = R Zᵢᵀ(y − Xβ̂)
        and the residual cross-products Zᵢᵀr = Zᵢᵀ(y − Xβ̂) − DᵢTuᵢ, for the
        entry (r, c) of T:
          ∂ log|L_Z|² = 2 [Σᵢ R Dᵢ]_{c,r}
          ∂ log|R_X|² = −2 [Σᵢ R Qᵢ − R Qᵢ Rᵀ Tᵀ Dᵢ]_{c,r},  Qᵢ = B_Xᵢ (R_XᵀR_X)⁻¹ B_Xᵢᵀ
          ∂ r²        = −2 [Σᵢ uᵢ (Zᵢᵀr)ᵀ]_{c,r}
        (envelope theorem for r²: β̂ and u minimise the penalized sum of squares).
        """
        p = self.p
        T = f.T[0]
        q = T.shape[0]
        D, B = self._D1, self._B1F
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

    def _gradient_terms(self, f: Factorization, beta, P, g: np.ndarray) -> None:
        """Criterion and exact gradient for several terms of any size, the rest
        block dense.  With M = ΛᵀAΛ + I (A = ZᵀZ), U = M⁻¹ΛᵀZᵀ[X y], the modes
        u = U(−β̂, 1), F = Zᵀ[X y] − AΛU and P = (R_XᵀR_X)⁻¹, for the entry
        (r, c) of T_k (E_k its derivative of Λ):

          ∂ log|M|     = 2 Σ_i [(M⁻¹ΛᵀA)_ii]_{c,r}            (levels i of term k)
          ∂ log|R_X|²  = −2 Σ_i [U_X,i P F_X,iᵀ]_{c,r}
          ∂ r²         = −2 Σ_i [u_i (F_i z)ᵀ]_{c,r}

        The diagonal blocks of M⁻¹ΛᵀA come from block elimination of the first
        term (Sᵢ = T₁ᵀDᵢT₁ + I, S the rest's Schur complement, Λ_R its Λ):

          first term:  Sᵢ⁻¹T₁ᵀDᵢ + Hᵢ(T₁Sᵢ⁻¹T₁ᵀDᵢ − I),
                       Hᵢ = Sᵢ⁻¹T₁ᵀ (A_1R)ᵢ Λ_R S⁻¹ Λ_Rᵀ (A_R1)ᵢ
          rest:        the diagonal blocks of S⁻¹Λ_Rᵀ(A_RR − A_R1 V A_1R).
        """
        cp, rb, rf, p = self.cp, self._rest, f.rest, self.p
        q1, n1 = self._q1, cp.nlevels[0]
        T1 = f.T[0]
        lam = rf.lam
        LamR = np.diag(lam) if isinstance(lam, np.ndarray) else lam.toarray()
        QR = LamR.shape[0]
        z = np.append(-beta, 1.0)
        L1 = batched.to_levels_first(f.L1)  # (n1, q1, q1)
        L1inv = np.linalg.inv(L1)
        Sinv1 = np.swapaxes(L1inv, 1, 2) @ L1inv  # Sᵢ⁻¹
        D = cp.D1  # (n1, q1, q1)
        # U = M⁻¹ΛᵀZᵀ[X y] by the two blocks (as solve(), for every column)
        UR = rf.solve(rf.MRF)  # (QR, m)
        C1F = batched.to_levels_first(f.C1F)  # (n1, q1, m) = L1⁻¹T₁ᵀZ₁ᵀ[X y]
        W = batched.to_levels_first(f.W)  # (n1, q1, q1) = L1⁻¹T₁ᵀ
        AR = (rb.A1R_op @ (LamR @ UR)).reshape(n1, q1, -1)  # (A_1R Λ_R U_R)ᵢ
        U1 = np.swapaxes(L1inv, 1, 2) @ (C1F - W @ AR)  # (n1, q1, m)
        # F = Zᵀ[X y] − AΛU
        LU1 = np.einsum("ab,ibm->iam", T1, U1)
        F1 = cp.B1F - D @ LU1 - AR
        FR = cp.ARF - rb.AR1_op @ LU1.reshape(n1 * q1, -1) - rb.ARR_op @ (LamR @ UR)
        # diagonal blocks of M⁻¹ΛᵀA, first term: Kᵢ = (A_1R Λ_R)ᵢ S⁻¹ (A_1R Λ_R)ᵢᵀ
        # through the sparse rows of A_1R Λ_R (each level meets few rest levels)
        Sinv = rf.solve(np.eye(QR))
        G = LamR @ Sinv @ LamR.T
        if q1 == 1:
            K = (rb.pairs.K.T @ _pair_weights(G, rb.pairs)).reshape(n1, 1, 1)
        else:
            K = rb.bpairs.adjoint(G)
        SinvT = Sinv1 @ T1.T  # Sᵢ⁻¹T₁ᵀ
        H = SinvT @ K
        Pd1 = SinvT @ D + H @ (T1 @ SinvT @ D - np.eye(q1))
        # rest: the diagonal blocks of S⁻¹Λ_Rᵀ B, B = A_RR − A_R1 V A_1R
        if q1 == 1:
            Hd = np.zeros((QR, QR))
            h = rb.pairs(W[:, 0, 0] ** 2)
            Hd[rb.pairs.rows, rb.pairs.cols] = h
            Hd[rb.pairs.cols, rb.pairs.rows] = h
        else:
            Hd = rb.unscaled_H(f.W)
        LB = LamR.T @ (rb.ARR - Hd)
        blocks = [(U1, F1, Pd1)]
        offs = cp.rest_offsets
        for k in range(1, len(cp.q)):
            qk, nk = cp.q[k], cp.nlevels[k]
            lo, hi = int(offs[k - 1]), int(offs[k])
            idx = np.arange(lo, hi).reshape(nk, qk)
            Pdk = np.einsum("iar,rib->iab", Sinv[idx], LB[:, idx])  # (nk, qk, qk)
            blocks.append((UR[lo:hi].reshape(nk, qk, -1), FR[lo:hi].reshape(nk, qk, -1), Pdk))
        for k, (Uk, Fk, Pdk) in enumerate(blocks):
            rows, cols, off, size = self._tidx[k]
            A1 = Pdk.sum(axis=0)
            u = Uk @ z
            A3 = np.einsum("ia,ib->ab", u, Fk @ z)
            dZ = 2.0 * A1[cols, rows]
            dr2 = -2.0 * A3[cols, rows]
            if self.reml:
                A2 = np.einsum("iap,pq,ibq->ab", Uk[:, :, :p], P, Fk[:, :, :p])
                g[off : off + size] = dZ - 2.0 * A2[cols, rows] + (self.n - p) * dr2 / f.r2
            else:
                g[off : off + size] = dZ + self.n * dr2 / f.r2

    # -- estimates at a θ ---------------------------------------------------------
    def solve(self, f: Factorization) -> tuple[np.ndarray, list[np.ndarray]]:
        """β̂ and the spherical conditional modes u (per term, (n_k, q_k))."""
        if f.solution is not None:
            beta, us = f.solution
            return beta.copy(), [u.copy() for u in us]
        p = self.p
        cp = self.cp
        LFF = f.LFF
        LXinv, _ = dtrtri(LFF[:p, :p], lower=1)
        C1F = batched.to_levels_first(f.C1F)
        beta = LXinv.T @ LFF[p, :p]
        us: list[np.ndarray] = []
        rhs1 = C1F[:, :, p] - C1F[:, :, :p] @ beta
        if f.rest is not None:
            # u_R = M_RR⁻¹(M_Ry − M_RX β): back-substitution through both factors
            uR = f.rest.solve(f.rest.MRF[:, p] - f.rest.MRF[:, :p] @ beta)
            lam = f.rest.lam
            LamU = lam * uR if isinstance(lam, np.ndarray) else lam @ uR
            AU = self._a1r_times(LamU).reshape(-1, self._q1)
            # per level W_i (A Λ u)_i, as a batched product (einsum parses its
            # subscripts on every call)
            rhs1 = rhs1 - (batched.to_levels_first(f.W) @ AU[:, :, None])[:, :, 0]
        u1 = _solve_t(batched.to_levels_first(f.L1), rhs1)
        us.append(u1)
        if f.rest is not None:
            offs = cp.rest_offsets
            for k in range(1, len(cp.q)):
                us.append(uR[offs[k - 1] : offs[k]].reshape(cp.nlevels[k], cp.q[k]))
        return beta, us

    def conditional_variances(self, f: Factorization) -> list[np.ndarray]:
        """Diagonal blocks of Λ (ΛᵀZᵀZΛ + I)⁻¹ Λᵀ per term: (n_k, q_k, q_k), to be
        multiplied by σ².

        Block i of the first term is L1ᵢ⁻ᵀ(I + [C1R M_RR⁻¹ C1Rᵀ]ᵢᵢ)L1ᵢ⁻¹ with
        C1R = W A_1R Λ_R; the rest's blocks are those of M_RR⁻¹."""
        rf = f.rest
        if rf is not None and rf.lu is None and all(q == 1 for q in self.cp.q):
            return self._conditional_variances_scalar(f)
        return self._conditional_variances_general(f)

    def _conditional_variances_general(self, f: Factorization) -> list[np.ndarray]:
        cp = self.cp
        q1 = self._q1
        W = batched.to_levels_first(f.W)
        L1inv = np.linalg.inv(batched.to_levels_first(f.L1))
        M1 = np.swapaxes(L1inv, 1, 2) @ L1inv  # (L1 L1ᵀ)⁻¹ per level
        out = []
        if f.rest is not None:
            n1 = W.shape[0]
            lam = f.rest.lam
            Wb = sp.bsr_matrix((W, np.arange(n1), np.arange(n1 + 1)), shape=(n1 * q1,) * 2)
            C1R = (Wb @ self._rest.A1R).tocsr()
            C1R = C1R.multiply(lam[None, :]).tocsr() if isinstance(lam, np.ndarray) else C1R @ lam
            CT = C1R.T.tocsc()
            G = np.empty((n1, q1, q1))
            step = max(1, 2048 // q1)
            for lo in range(0, n1, step):  # chunks of levels bound the memory
                hi = min(n1, lo + step)
                B = CT[:, lo * q1 : hi * q1].toarray()
                S = f.rest.solve(B)
                G[lo:hi] = np.einsum(
                    "ria,rib->iab", B.reshape(-1, hi - lo, q1), S.reshape(-1, hi - lo, q1)
                )
            M1 = M1 + np.swapaxes(L1inv, 1, 2) @ G @ L1inv
        T1 = f.T[0]
        out.append(T1 @ M1 @ T1.T)
        if f.rest is not None:
            blocks = f.rest.inverse_diag_blocks(cp.rest_offsets, cp.q[1:], cp.nlevels[1:])
            for k, Mk in enumerate(blocks, start=1):
                Tk = f.T[k]
                out.append(Tk @ Mk @ Tk.T)
        return out

    def _conditional_variances_scalar(self, f: Factorization) -> list[np.ndarray]:
        """Scalar terms, the rest block dense: the first term's λ₁²(1 + Gᵢ)/sᵢ with
        Gᵢ = cᵢᵀ M_RR⁻¹ cᵢ, cᵢ = (λ₁/√sᵢ) Λ_R A_R1 eᵢ, and the rest's λ_k² (M_RR⁻¹)_jj,
        from one inversion: ‖L⁻¹cᵢ‖² and the column sums of squares of L⁻¹, or
        M_RR⁻¹ on its pattern for a staged factor (instead of a solve per level:
        Q²(n₁ + Q) flops)."""
        cp, rb, rf = self.cp, self._rest, f.rest
        lam1 = f.T[0][0, 0]
        lamR = rf.lam
        s = lam1 * lam1 * cp.D1[:, 0, 0] + 1.0
        if rf.staged is not None:
            z = rf.staged.selected_inverse()  # a kept factor is inverted on a copy
            diagR = z[rb._staged_diag]
            pr, pc = rb.pairs.rows, rb.pairs.cols
            w = z[rb._staged_pairs] * lamR[pr] * lamR[pc]
            w = np.where(pr == pc, w, 2.0 * w)  # the pairs hold the lower triangle
            G = (lam1 * lam1 / s) * (rb.pairs.K.T @ w)
        else:
            W = rf.factor_inverse()  # a kept factor is inverted on a copy
            diagR = np.einsum("ij,ij->j", W, W)
            CT = rb.A1R.multiply((lam1 / np.sqrt(s))[:, None]).multiply(lamR[None, :]).tocsr()
            G = np.empty(CT.shape[0])
            step = max(1, (1 << 21) // W.shape[0])
            for lo in range(0, CT.shape[0], step):
                B = CT[lo : lo + step] @ W.T
                G[lo : lo + step] = np.einsum("ij,ij->i", B, B)
        out = [(lam1 * lam1 * (1.0 + G) / s)[:, None, None]]
        offs = cp.rest_offsets
        for k in range(1, len(cp.q)):
            lk = f.T[k][0, 0]
            out.append((lk * lk * diagR[offs[k - 1] : offs[k]])[:, None, None])
        return out


def _solve_t(L1: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """uᵢ with L₁ᵢᵀuᵢ = rhsᵢ per level (L1 (n1, q, q) level-first, rhs (n1, q))."""
    n1, q = rhs.shape
    fn = None if _KERNEL_DISABLED else kernel("_kernels", "level_solve_t")
    if q == 1:
        return rhs / L1[:, :, 0]
    if fn is None:
        return np.linalg.solve(np.swapaxes(L1, 1, 2), rhs[:, :, None])[:, :, 0]
    u = np.array(rhs, dtype=float, order="C")
    fn(np.ascontiguousarray(L1, dtype=float), u, q, 1, n1)
    return u


def _pair_weights(G: np.ndarray, pairs) -> np.ndarray:
    """G at the pair positions, off-diagonal pairs counted in both orders
    (the pair map holds the lower triangle only)."""
    w = G[pairs.rows, pairs.cols]
    off = pairs.rows != pairs.cols
    return np.where(off, w + G[pairs.cols, pairs.rows], w)


def _one_term_kernel(cp: CrossProducts):
    """The compiled criterion for one random-effects term, if it was built
    (``multilevel._kernels``); None falls back to numpy."""
    fn = kernel("_kernels", "one_term")
    if fn is None or _KERNEL_DISABLED:
        return None
    q, m = cp.q[0], cp.p + 1
    data = tuple(np.ascontiguousarray(a, dtype=float) for a in (cp.D1, cp.B1F, cp.AFF))
    return fn, data, (q, m, cp.nlevels[0])


SCALAR_KERNEL_WORK = 2_000_000  # multiplications per evaluation up to which compiled loops win


def _scalar_terms_kernel(cp: CrossProducts):
    """The compiled criterion for several scalar terms with a small rest
    block (``_kernels.scalar_terms``: Σᵢ nnzᵢ² + 4Q³/3 + (n₁ + Q²)m
    multiplications per evaluation in plain loops, where numpy's per-call
    costs dominate), or None."""
    fn = kernel("_kernels", "scalar_terms")
    if fn is None or _KERNEL_DISABLED or any(q != 1 for q in cp.q):
        return None
    Q, m = cp.Qr, cp.p + 1
    n1 = cp.nlevels[0] * cp.q[0]
    # a cheap bound first: the dense Q x Q work alone may rule the kernel out
    if 4.0 * Q**3 / 3.0 + (n1 + Q * Q) * m * (m + 2) > SCALAR_KERNEL_WORK:
        return None
    indptr, indices, values = cp.A1R_csr64
    nnz = np.diff(indptr)
    work = float(nnz @ nnz) + 4.0 * Q**3 / 3.0 + (n1 + Q * Q) * m * (m + 2)
    if work > SCALAR_KERNEL_WORK:
        return None
    data = (
        np.ascontiguousarray(cp.D1[:, 0, 0], dtype=float),
        np.ascontiguousarray(cp.B1F[:, 0, :], dtype=float),
        indptr,
        indices,
        values,
        np.ascontiguousarray(cp.ARR_dense(), dtype=float),
        np.ascontiguousarray(cp.ARF, dtype=float),
        np.ascontiguousarray(cp.AFF, dtype=float),
        cp.rest_term,
    )
    return fn, data, (cp.nlevels[0], Q, cp.p + 1, len(cp.q))


def _rest_lam(crit: ProfiledCriterion, T: list[np.ndarray]):
    """Λ_R at T, through the criterion's rest block (a module function: a
    kept factorization holding it stays picklable)."""
    return crit._rest.lam(T)


BLOCKED_KERNEL_WORK = 3_000_000  # multiplications per evaluation up to which its loops win
BLOCKED_MAX_REST = 1000  # rest columns up to which its dense Q_R x Q_R buffers are kept


def _blocked_terms_kernel(cp: CrossProducts):
    """The compiled criterion for several terms, some of more than one
    column (``_kernels.blocked_terms``: the first term per level, each level
    on the rest columns it meets, the rest's Schur complement dense and
    factored within its envelope, :mod:`multilevel.lmm.blocked`; about
    3q₁Σᵢnzᵢ² + 3Σ_a w_a(q + m) multiplications per evaluation, w_a the
    width of A_RR's row a, plus the envelope's, in plain loops, where the
    blockwise numpy path's per-call costs are many times that), or None."""
    fn = kernel("_kernels", "blocked_terms")
    if fn is None or _KERNEL_DISABLED or max(cp.q) == 1 or cp.q[0] > 64:
        return None
    n1, q1, Qr, m = cp.nlevels[0], cp.q[0], cp.Qr, cp.p + 1
    # its Q_R x Q_R buffers (A_RR, Λ_R, S, S⁻¹, A_RR Λ_R) are dense and zeroed
    # at every evaluation: a rest block of at most a thousand columns
    if float(Qr) * Qr > BLOCKED_MAX_REST**2:
        return None
    if n1 * q1 * q1 * (q1 + m) + 3.0 * Qr * (max(cp.q) + m) > BLOCKED_KERNEL_WORK:
        return None
    Ap, Ai, Ax = level_pattern(cp)
    nz = np.diff(Ap).astype(float)
    work = n1 * q1 * q1 * (q1 + m) + 3.0 * q1 * float(nz @ nz) + 4.0 * q1 * (q1 + m) * nz.sum()
    if work > BLOCKED_KERNEL_WORK:
        return None
    ARR = np.ascontiguousarray(cp.ARR_dense(), dtype=float)
    ranges = row_ranges(ARR, cp)
    work += 3.0 * float((ranges[1] - ranges[0]).sum()) * (max(cp.q) + m)
    if work > BLOCKED_KERNEL_WORK:
        return None
    pos, rest = rest_order(cp, ARR, Ap, Ai, lapack=lapack_kernel("_kernels"))
    if work + rest > BLOCKED_KERNEL_WORK:
        return None
    data = (
        np.ascontiguousarray(cp.D1, dtype=float),
        np.ascontiguousarray(cp.B1F, dtype=float),
        Ap,
        Ai,
        Ax,
        ARR,
        ranges,
        pos,
        np.ascontiguousarray(cp.ARF, dtype=float),
        np.ascontiguousarray(cp.AFF, dtype=float),
        np.array(cp.q, dtype=np.int64),
        np.array(cp.nlevels, dtype=np.int64),
    )
    return fn, data, (n1, q1, Qr, m, len(cp.q))


_KERNEL_DISABLED = False  # tests switch the kernel off to compare with numpy
