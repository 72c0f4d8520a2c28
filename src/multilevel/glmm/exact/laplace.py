"""Exact gradient of the Laplace deviance for several random-effects terms
(nested or crossed, scalar or vector): binomial-logit, Poisson-log, or any
family with the derivatives of its log-density and the observed curvature;
with lme4's (Fisher) curvature and a probit or cloglog link also one vector
term, where M is block diagonal (no rest block).  Scalar terms run the
compiled kernel (``_glmm_kernels.laplace_terms``) for the canonical links and
for probit and cloglog with either curvature.
Scalar terms below; vector terms in :meth:`LaplaceGLMM._gradient_terms` (the
same formula with each θ an entry of a template T_k).

With η = o + Xβ + ZΛu, Λ = diag(θ_k on term k), the conditional modes ũ
(PIRLS, :mod:`multilevel.glmm.pirls`) and M = ΛZᵀWZΛ + I = LLᵀ at them,

    D(θ, β) = −2ℓ(η̃) + ‖ũ‖² + log|M|,     ℓ' = ∂ℓ/∂η, w = −ℓ'', w' = −ℓ'''

The first two terms are stationary in u (envelope theorem); log|M| moves
with θ directly and with η̃ through W.  With hᵢ = z̃ᵢᵀM⁻¹z̃ᵢ (z̃ᵢ = row i of
ZΛ), cᵢ = w'ᵢhᵢ, the implicit derivative M dũ = E_kZᵀℓ' dθ_k − ΛZᵀW dη|_u and
one adjoint solve v = M⁻¹ΛZᵀc:

    ∂D/∂β   = Xᵀ(−2ℓ' + c − w ∘ ZΛv)
    ∂D/∂θ_k = Σᵢ (cᵢ − 2ℓ'ᵢ − wᵢ(ZΛv)ᵢ) z_ik ũ_k(i) + Σᵢ ℓ'ᵢ z_ik v_k(i)
              + 2(n_k − tr_k M⁻¹)/θ_k        (0 at θ_k = 0: D is even in θ_k)

(u_k(i): row i's level of term k), and for a family's parameter ψ (its
logarithm, after θ), with M dũ = ΛZᵀ∂ℓ'/∂ψ dψ,

    ∂D/∂ψ = Σᵢ [−2 ∂ℓᵢ/∂ψ + hᵢ ∂wᵢ/∂ψ + (ZΛv)ᵢ ∂ℓ'ᵢ/∂ψ].

hᵢ and tr_k M⁻¹ need M⁻¹ on the pattern
of ZᵀZ: with L = [[D₀, 0], [C₀ᵣᵀ, L_R]] (D₀ diagonal, the first term) and
K = L_R⁻¹C₀ᵣᵀD₀⁻¹, M⁻¹ = [[D₀⁻² + KᵀK, −KᵀL_R⁻¹], [·, L_R⁻ᵀL_R⁻¹]], dense in
the (small) rest block.  PIRLS' M has the observed weights (for a canonical
link Fisher's are the same), the Hessian the implicit derivative needs.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.lapack import dtrtri

from multilevel.compiled import kernel, lapack_kernel
from multilevel.glmm import pirls
from multilevel.glmm.exact.rows import (
    RowTerms,
    binomial_link_rows,
    canonical_plain,
    fisher_curvature,
    has_derivatives,
)
from multilevel.glmm.exact.search import past_zero_columns, run_search
from multilevel.glmm.families import Binomial, Family
from multilevel.glmm.families.discrete import LINK_ROWS
from multilevel.glmm.pirls import PirlsError, PirlsProblem, back_solve
from multilevel.linalg.affine import triangular_solve

MAX_REST = 1500  # rest-block order up to which M⁻¹'s blocks are formed densely
MAX_CELLS = 4_000_000  # n₀ × rest order: the dense K
MAX_PAIRS = 5_000_000  # pairs of first × rest entries of one first level (compiled kernel)
KERNEL_DISABLED = False  # tests switch the compiled kernel off to check the numpy path


def supported(
    family: Family, qs: list[int], nlevels: list[int], hessian: str = "fisher", nrows: int = 0
) -> bool:
    """Several terms, a rest block small enough for dense inverse blocks (and,
    with vector terms, for one rest-sized vector per row), and binomial-logit
    or Poisson-log (plain classes) or a family with the derivatives of its
    log-density and the observed curvature (or a canonical link); or one
    vector term with lme4's curvature and a probit or cloglog link (the
    vector route, :mod:`multilevel.glmm.exact.vector`, takes the observed
    curvature only)."""
    rest = sum(q * nl for q, nl in zip(qs[1:], nlevels[1:], strict=True))
    fits = (
        canonical_plain(family)
        or (has_derivatives(family) and (hessian == "observed" or family.canonical))
        or fisher_curvature(family, hessian)
    )
    if len(qs) == 1:
        # one vector term with lme4's curvature: the vector route
        # (:mod:`multilevel.glmm.exact.vector`) has the observed one only
        return qs[0] > 1 and fisher_curvature(family, hessian) and nrows > 0
    return (
        fits
        and rest <= MAX_REST
        and nlevels[0] * qs[0] * rest <= MAX_CELLS
        # the general path (vector terms, Fisher curvature) holds a rest vector per row
        and (
            (all(q == 1 for q in qs) and not fisher_curvature(family, hessian))
            or nrows * rest <= MAX_CELLS
        )
    )


class LaplaceGLMM:
    """Laplace deviance and its gradient in φ = (θ₁..θ_K, β), warm-started
    PIRLS modes in ``u``."""

    def __init__(self, prob: PirlsProblem):
        self.prob = prob
        rb = prob.rb
        self.K = rb.K
        self.rows_ = RowTerms(prob.family, prob.resp)
        self.npar = prob.family.nfree
        self.z = [Z[:, 0] for Z in rb.Zs]
        self.pos = [rb.codes[0]] + [
            rb.Q0 + int(rb.rest_offsets[k - 1]) + rb.codes[k] for k in range(1, rb.K)
        ]
        self.rest = [self.pos[k] - rb.Q0 for k in range(1, rb.K)]
        self.u: np.ndarray | None = None
        self.evals = 0
        self.fisher = fisher_curvature(prob.family, prob.hessian)
        # the compiled kernel for scalar terms: binomial-logit, Poisson-log,
        # and probit or cloglog (its rows give l', O and O', or Fisher's W, W')
        compiled = not self.rows_.generic or _link_kind(prob) is not None
        scalar = all(q == 1 for q in rb.q)
        self._kernel = None if KERNEL_DISABLED or not compiled or not scalar else _kernel_args(prob)
        self.vector = not scalar or (self.fisher and self._kernel is None)  # the general path

    def _mode(self, theta: np.ndarray, beta: np.ndarray):
        try:
            return self.prob.mode(theta, beta, self.u, joint=False)
        except PirlsError:
            if self.u is None:
                raise
            return self.prob.mode(theta, beta, None, joint=False)  # cold restart

    def deviance_grad(self, phi: np.ndarray, grad: bool = True):
        self.evals += 1
        if self._kernel is not None:
            return self._compiled(np.ascontiguousarray(phi, dtype=float), grad)
        K, prob, rb = self.K, self.prob, self.prob.rb
        k1 = prob.nre + self.npar  # θ, then the family's log parameter
        theta, beta = np.asarray(phi[: prob.nre], float), np.asarray(phi[k1:], float)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            m = self._mode(np.asarray(phi[:k1], float), beta)
        self.u = m.u
        if not grad:
            return m.laplace, None
        f = m.factor
        self.rows_.family = prob.family  # at this ψ (PIRLS set it)
        if self.fisher:
            r = prob.resp
            lp, obs, w, w3 = LINK_ROWS[prob.family.link.name](m.eta, r.y, r.weights)
            return m.laplace, self._gradient_terms(phi, m, lp, w, w3, obs)
        _, lp, w, w3 = self.rows_.at(m.eta, 2)
        if self.vector:
            return m.laplace, self._gradient_terms(phi, m, lp, w, w3)
        # M⁻¹ on the pattern only: first-term diagonal, first × rest and
        # rest × rest at the pairs of levels rows meet, each a dot product of
        # columns of L_R⁻¹ and Kᵀ = D₀⁻¹C₀ᵣL_R⁻ᵀ (C₀ᵣ sparse)
        l0 = f.L0[0, 0]
        LRinv, info = dtrtri(f.LR, lower=1)
        if info != 0:  # pragma: no cover - L_R came from a successful potrf
            raise PirlsError("the rest block's factor is singular")
        # rows of LiT are the columns of L_R⁻¹ (dpotrf cleaned the upper triangle,
        # which dtrtri leaves alone)
        LiT = np.ascontiguousarray(LRinv.T)
        KmT = np.asarray(f.C0R @ LiT) / l0[:, None]  # (n₀, Qr)
        d00 = 1.0 / (l0 * l0) + np.einsum("nr,nr->n", KmT, KmT)
        dMRR = np.einsum("rj,rj->r", LiT, LiT)
        zt = [theta[k] * self.z[k] for k in range(K)]
        c0 = rb.codes[0]
        h = zt[0] * zt[0] * d00[c0]
        K0 = KmT[c0]  # (n, Qr): row i's level of the first term
        cols = [LiT[ra] for ra in self.rest]  # (n, Qr) each
        for a in range(1, K):  # terms, not rows or levels
            ra, Ca = self.rest[a - 1], cols[a - 1]
            h -= 2.0 * zt[0] * zt[a] * np.einsum("nj,nj->n", K0, Ca)
            h += zt[a] * zt[a] * dMRR[ra]
            for b in range(a + 1, K):
                h += 2.0 * zt[a] * zt[b] * np.einsum("nj,nj->n", Ca, cols[b - 1])
        c = w3 * h
        rhs = np.zeros(rb.Q)
        for k in range(K):
            rhs += np.bincount(self.pos[k], weights=zt[k] * c, minlength=rb.Q)
        vsol = self._solve(f, rhs)
        zlv = rb.zb(vsol, f.T)
        common = c - 2.0 * lp - w * zlv
        g = np.empty(phi.size)
        g[k1:] = prob.X.T @ common
        if self.npar:
            p0, p1, pw = self.rows_.param(m.eta)
            g[K:k1] = -2.0 * np.sum(p0, axis=0) + h @ pw + zlv @ p1
        for k in range(K):
            if theta[k] == 0.0:
                g[k] = 0.0
                continue
            zk = self.z[k]
            n_k = rb.nlevels[k]
            if k == 0:
                tr = float(d00.sum())
            else:
                lo = int(rb.rest_offsets[k - 1])
                tr = float(dMRR[lo : lo + n_k].sum())
            g[k] = (
                float(np.dot(common, zk * m.u[self.pos[k]]))
                + float(np.dot(lp, zk * vsol[self.pos[k]]))
                + 2.0 * (n_k - tr) / theta[k]
            )
        return m.laplace, g

    def _gradient_terms(self, phi, m, lp, w, w3, obs=None) -> np.ndarray:
        """The gradient for terms of any size (module docstring, with E the
        derivative of Λ in one entry (r, c) of T_k):

            ∂D/∂T_k[r, c] = Σᵢ z_ik[r] (commonᵢ ũ_kℓ[c] + ℓ'ᵢ v_kℓ[c] + 2wᵢ x_iℓ[c]),

        ℓ = ℓ_k(i), x_i = M⁻¹z̃ᵢ (z̃ᵢ = row i of ZΛ).  With L⁻¹z̃ᵢ = (y₀ᵢ, y_Rᵢ),
        y₀ᵢ = L₀ᵢ⁻¹z̃ᵢ₀ and y_Rᵢ = L_R⁻¹(z̃ᵢ_R − C₀ᵣᵀy₀ᵢ): hᵢ = ‖y₀ᵢ‖² + ‖y_Rᵢ‖²,
        x_Rᵢ = L_R⁻ᵀy_Rᵢ and x₀ᵢ = L₀ᵢ⁻ᵀ(y₀ᵢ − C₀ᵣ x_Rᵢ), each needed only at
        row i's own levels.

        With lme4's Fisher curvature (``obs`` the observed weights −ℓ'', w and w'
        the Fisher weights and their η-derivative), M and so h and x are
        Fisher's, while the modes move with the observed curvature: the adjoint
        v solves with ΛᵀZᵀOZΛ + I, and ``common`` has O in place of w."""
        K, prob, rb = self.K, self.prob, self.prob.rb
        k1 = prob.nre + self.npar
        f = m.factor
        T = f.T
        q, Q0 = rb.q, rb.Q0
        c0 = rb.codes[0]
        ZT = [Z @ Tk for Z, Tk in zip(rb.Zs, T, strict=True)]  # rows z̃ᵢₖᵀ
        L0inv = np.linalg.inv(np.moveaxis(f.L0, -1, 0))  # (n0, q0, q0)
        y0 = np.einsum("nab,nb->na", L0inv[c0], ZT[0])
        if f.LR is None:  # one term: M is block diagonal, no rest block
            GT = HC = None
        else:
            G, info = dtrtri(f.LR, lower=1)
            if info != 0:  # pragma: no cover - L_R came from a successful potrf
                raise PirlsError("the rest block's factor is singular")
            GT = np.ascontiguousarray(G.T)  # row p: column p of L_R⁻¹
            HC = np.asarray(f.C0R @ GT)  # (Q0, Qr): rows of C₀ᵣ L_R⁻ᵀ
        pos = [c0 * q[0]] + [
            int(rb.rest_offsets[a - 1]) + rb.codes[a] * q[a] for a in range(1, K)
        ]  # start of row i's level block (first term in u₀, others in u_R)
        yR = np.zeros((rb.n, rb.Qr))
        for a in range(1, K):
            for j in range(q[a]):
                yR += ZT[a][:, j, None] * GT[pos[a] + j]
        for j in range(q[0] if HC is not None else 0):
            yR -= y0[:, j, None] * HC[pos[0] + j]
        h = np.einsum("na,na->n", y0, y0) + np.einsum("nr,nr->n", yR, yR)
        c = w3 * h
        rhs = np.zeros(rb.Q)
        for k in range(K):
            base = pos[k] + (0 if k == 0 else Q0)
            for j in range(q[k]):
                rhs += np.bincount(base + j, weights=ZT[k][:, j] * c, minlength=rb.Q)
        if obs is None:
            vsol = self._solve_any(f, L0inv, rhs)
        else:
            fo = pirls.factor(rb, rb.crossprods(obs, np.zeros((rb.n, 1))), T, joint=False)
            if fo is None:
                raise PirlsError("the observed curvature is not positive definite at the modes")
            vsol = self._solve_any(fo, np.linalg.inv(np.moveaxis(fo.L0, -1, 0)), rhs)
        zlv = rb.zb(vsol, T)
        common = c - 2.0 * lp - (w if obs is None else obs) * zlv
        g = np.empty(phi.size)
        g[k1:] = prob.X.T @ common
        if self.npar:
            p0, p1, pw = self.rows_.param(m.eta)
            g[prob.nre : k1] = -2.0 * np.sum(p0, axis=0) + h @ pw + zlv @ p1
        # x at each row's own levels
        xR = [np.stack([np.einsum("nr,nr->n", GT[pos[a] + j], yR) for j in range(q[a])], 1)
              for a in range(1, K)]  # fmt: skip
        if HC is None:
            x0 = np.einsum("nba,nb->na", L0inv[c0], y0)
        else:
            cx = np.stack([np.einsum("nr,nr->n", HC[pos[0] + j], yR) for j in range(q[0])], 1)
            x0 = np.einsum("nba,nb->na", L0inv[c0], y0 - cx)
        xs = [x0] + xR
        off = 0
        for k in range(K):
            base = pos[k] + (0 if k == 0 else Q0)
            idx = base[:, None] + np.arange(q[k])[None, :]
            uk, vk = m.u[idx], vsol[idx]
            B = common[:, None] * uk + lp[:, None] * vk + 2.0 * w[:, None] * xs[k]
            A = rb.Zs[k].T @ B  # (q_k, q_k): A[r, c]
            t = prob.tmpl[k]
            g[off : off + t.size] = A[t.rows, t.cols]
            off += t.size
        return g

    def _solve_any(self, f, L0inv: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        """M⁻¹ rhs for a first term of any size: forward through the blocks, then Lᵀ."""
        rb = self.prob.rb
        n0, q0 = rb.nlevels[0], rb.q[0]
        y0 = np.einsum("nab,nb->na", L0inv, rhs[: rb.Q0].reshape(n0, q0)).ravel()
        if f.LR is None:  # one term
            return back_solve(rb, f, y0, None)
        yR = triangular_solve(f.LR, rhs[rb.Q0 :] - f.C0R.T @ y0)
        return back_solve(rb, f, y0, yR)

    def _compiled(self, phi: np.ndarray, grad: bool):
        fn, args, work, const, Q = self._kernel
        g = np.zeros(phi.size)
        for cold in (False, True):  # a failed warm start is retried from u = 0
            u = np.zeros(Q) if cold or self.u is None else self.u.copy()
            try:
                dev = fn(*args[:12], phi, u, g, work, *args[12:], int(grad), pirls.STEP_TOL)
                break
            except ArithmeticError as exc:
                if cold or self.u is None:
                    raise PirlsError(str(exc)) from None
        self.u = u
        return dev - 2.0 * const, (g if grad else None)

    def _solve(self, f, rhs: np.ndarray) -> np.ndarray:
        """M⁻¹ rhs through L: forward with [[D₀, 0], [C₀ᵣᵀ, L_R]], then Lᵀ."""
        rb = self.prob.rb
        y0 = rhs[: rb.Q0] / f.L0[0, 0]
        yR = triangular_solve(f.LR, rhs[rb.Q0 :] - f.C0R.T @ y0)
        return back_solve(rb, f, y0, yR)


def _kernel_args(prob: PirlsProblem):
    """The compiled kernel (``_glmm_kernels.laplace_terms``) and its index
    arrays, or None (not built, or the pairs of the first × rest block too
    many).  Entries of that block are the distinct (first level, rest level)
    pairs rows meet, sorted; pairs of entries of one first level (rest index
    descending-or-equal) update the Schur complement."""
    terms = kernel("_glmm_kernels", "laplace_terms")
    if terms is None or not lapack_kernel("_glmm_kernels"):
        return None
    rb, r = prob.rb, prob.resp
    n, K, Qr, n0 = rb.n, rb.K, rb.Qr, rb.nlevels[0]
    pos = np.stack(
        [rb.codes[0]] + [int(rb.rest_offsets[k - 1]) + rb.codes[k] for k in range(1, K)]
    ).astype(np.int64)
    keys = (pos[0][None, :] * Qr + pos[1:]).ravel()
    uniq, inv = np.unique(keys, return_inverse=True)
    erow, ecol = (uniq // Qr).astype(np.int64), (uniq % Qr).astype(np.int64)
    slot = inv.reshape(K - 1, n).astype(np.int64)
    if K > 64:  # the kernel's fixed per-term arrays
        return None
    cnt = np.bincount(erow, minlength=n0)
    npairs = int((cnt * (cnt + 1) // 2).sum())
    if npairs > MAX_PAIRS:
        return None
    start = np.r_[0, np.cumsum(cnt)[:-1]]
    # entries e1 ≥ e2 of one first level: e1 = start + i, e2 = start + j, j ≤ i
    rows_e = np.arange(uniq.size) - start[erow]  # position within its level
    e1 = np.repeat(np.arange(uniq.size), rows_e + 1)
    offs = np.arange(e1.size) - np.repeat(np.cumsum(rows_e + 1) - (rows_e + 1), rows_e + 1)
    e2 = start[erow[e1]] + offs
    term = np.concatenate([np.full(rb.nlevels[k], k, dtype=np.int64) for k in range(1, K)])
    z = np.ascontiguousarray(np.stack([Z[:, 0] for Z in rb.Zs]), dtype=float)
    Q = n0 + Qr
    # the last n + n0 + entries + Qr²: M at Fisher's weights and its factor
    work = np.empty(10 * n + 2 * (n0 + uniq.size) + 3 * Qr * Qr + 4 * Q + n0 * Qr)
    args = (
        np.ascontiguousarray(prob.X, dtype=float),
        np.ascontiguousarray(r.y, dtype=float),
        np.ascontiguousarray(r.weights, dtype=float),
        np.ascontiguousarray(prob.offset, dtype=float),
        z,
        pos,
        slot,
        erow,
        ecol,
        e1.astype(np.int64),
        e2.astype(np.int64),
        term,
        n0,
        Qr,
        _link_kind(prob) or int(isinstance(prob.family, Binomial)),
    )
    return terms, args, work, float(r.const.sum()), Q


def _link_kind(prob: PirlsProblem) -> int | None:
    """The kernel's kind for the binomial with a probit or cloglog link: 2, 3
    with lme4's (Fisher's) curvature, 4, 5 with the observed one; None for
    other families."""
    if not binomial_link_rows(prob.family):
        return None
    cloglog = prob.family.link.name == "cloglog"
    return (3 if cloglog else 2) + (2 if prob.hessian == "observed" else 0)


def optimize_laplace(prob: PirlsProblem, beta0: np.ndarray, theta0: np.ndarray, lower_theta=None):
    """Minimise the Laplace deviance of several terms (or one vector term with
    lme4's curvature) over (θ[, ψ], δ) with its exact gradient
    (:func:`multilevel.glmm.exact.search.run_search`)."""
    after = past_zero_columns(prob.tmpl) if any(q > 1 for q in prob.rb.q) else None
    return run_search(
        prob, beta0, theta0, lambda nagq: LaplaceGLMM(prob), lower_theta=lower_theta, after=after
    )
