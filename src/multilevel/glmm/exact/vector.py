"""Laplace and AGQ deviance, with its exact gradient, for a GLMM with one
vector-valued random-effects term (e.g. ``(1 + x | g)``): any family whose
log-density has its derivatives, with the observed curvature (or a canonical
link, where it is Fisher's too).

Row i of group j: ηᵢ = oᵢ + xᵢᵀβ + zᵢᵀT u_j, u_j ~ N(0, I_q), T the
lower-triangular relative covariance factor (θ = its lower triangle by
columns).  Per group, with ℓᵢ the log-density of row i, ℓ' = ∂ℓ/∂η,
w = −ℓ'', w' = −ℓ''' (:mod:`multilevel.glmm.exact.rows`):

    f_j(u) = −Σᵢ ℓᵢ + ½‖u‖²,    A_j = Σᵢ wᵢ zᵢzᵢᵀ,    H_j = I + TᵀA_jT,
    D(θ, β) = Σ_j [2 f_j(û_j) + log|H_j|].

The modes are Newton iterations over all groups at once (batched q × q
solves, a group's step halved while its f_j rises).  The gradient (implicit
differentiation of û_j, one adjoint q-vector per group): with P_j = H_j⁻¹,
hᵢ = zᵢᵀTP_jTᵀzᵢ, c_j = Σᵢ w'ᵢhᵢzᵢ, v_j = P_jTᵀc_j, g_j = Σᵢ ℓ'ᵢzᵢ,

    ∂D/∂β   = Xᵀ(−2ℓ' + w'∘h − w∘(zᵢᵀTv_j))
    ∂D/∂T   = Σ_j [(c_j − 2g_j − A_jTv_j) û_jᵀ + 2A_jTP_j + g_j v_jᵀ]

(the entries of ∂D/∂T on T's lower triangle are ∂D/∂θ).  A family's
parameter ψ (its logarithm) enters φ after θ:

    ∂D/∂ψ = Σᵢ [−2 ∂ℓᵢ/∂ψ + hᵢ ∂wᵢ/∂ψ + (zᵢᵀTv_j) ∂ℓ'ᵢ/∂ψ].

For q = 1 these are :mod:`multilevel.glmm.exact.scalar`'s formulas.  The
compiled kernel (``_glmm_kernels.c``, used when it was built) does the
Laplace deviance and gradient of binomial-logit and Poisson-log group by
group, each group's Newton iterations in cache; also of the binomial with a
probit or cloglog link and lme4's curvature, where the modes' Newton steps
and the adjoint v take the observed curvature O and the determinant
Fisher's W: P = H_W⁻¹ in h and in 2A_WTP, v = H_O⁻¹Tᵀc, w = O in ∂D/∂β's
last term and in A_OTv (that variant is compiled only).  With the
observed curvature H_j is f_j'' (the modes' Newton matrix) and the Laplace
approximation's; where a family that is not log-concave makes it indefinite
at a trial point, the Newton step takes Fisher's weights instead.
"""

from __future__ import annotations

import numpy as np

from multilevel.compiled import kernel
from multilevel.glmm.exact.rows import (
    RowTerms,
    binomial_link_rows,
    canonical_plain,
    fisher_curvature,
    has_derivatives,
)
from multilevel.glmm.exact.search import past_zero_columns, run_search
from multilevel.glmm.families import Family
from multilevel.glmm.pirls import PirlsError, halve_where_rising
from multilevel.glmm.quadrature import gauss_hermite_grid
from multilevel.linalg.crossprod import group_sums

MAX_NEWTON = 100
CHUNK_CELLS = 400_000  # rows × nodes per block of the quadrature
_LOG2PI = float(np.log(2.0 * np.pi))
STEP_TOL = 1e-10
KERNEL_DISABLED = False  # tests switch the compiled kernel off to check the numpy path
KERNEL_MAX_Q = 16  # random effects per level the compiled kernel takes


def supported(
    family: Family, nterms: int, q: int, hessian: str = "fisher", laplace: bool = True
) -> bool:
    """One vector term (q ≥ 2): binomial-logit or Poisson-log (plain classes),
    or a family with the derivatives of its log-density and the observed
    curvature (or a canonical link); or, by Laplace, the binomial with a
    probit or cloglog link and lme4's (Fisher's) curvature, compiled only
    (without the kernel :mod:`multilevel.glmm.exact.laplace` takes it).  One
    scalar term with :func:`observed_link_kernel`."""
    if nterms != 1 or q < 1:
        return False
    if q == 1:  # one scalar term: the groupwise route, except where this kernel is faster
        return observed_link_kernel(family, hessian, laplace)
    if canonical_plain(family):
        return True
    if fisher_curvature(family, hessian):
        return laplace and _fisher_kernel(q) is not None
    return has_derivatives(family) and (hessian == "observed" or family.canonical)


def observed_link_kernel(family: Family, hessian: str, laplace: bool) -> bool:
    """Probit or cloglog with the observed curvature, by Laplace, and the
    compiled kernel built: one scalar term takes this route too (the
    groupwise route has no compiled kernel for these links; Contraception's
    `(1 | district)` evaluates in a third of its time)."""
    return (
        laplace
        and hessian == "observed"
        and binomial_link_rows(family)
        and not KERNEL_DISABLED
        and kernel("_glmm_kernels", "vector_glmm") is not None
    )


def _fisher_kernel(q: int):
    """The compiled kernel for lme4's curvature with probit or cloglog (its
    only implementation: the numpy code here has the observed curvature)."""
    if KERNEL_DISABLED or q > KERNEL_MAX_Q:
        return None
    return kernel("_glmm_kernels", "vector_glmm")


# the kernel's families; probit and cloglog with lme4's (Fisher's) curvature,
# + 2 with the observed one
KINDS = {"log": 0, "logit": 1, "probit": 2, "cloglog": 3}


def _lower(q: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate([np.arange(j, q) for j in range(q)])
    cols = np.concatenate([np.full(q - j, j) for j in range(q)])
    return rows, cols


class VectorGLMM:
    """Laplace deviance and gradient in φ = (θ, β) for rows sorted by group."""

    def __init__(self, prob, nagq: int = 1):
        rb = prob.rb
        r = prob.resp
        self.rows_ = RowTerms(prob.family, r)
        self.generic = self.rows_.generic
        self.npar = prob.family.nfree
        self.const = float(r.const.sum())
        self.X, self.off = prob.X, prob.offset
        self.Z = np.ascontiguousarray(rb.Zs[0], dtype=float)
        self.codes, self.J, self.q = rb.codes[0], rb.nlevels[0], rb.q[0]
        self.rows, self.cols = _lower(self.q)
        self.nt = self.rows.size
        self.ZZ = (self.Z[:, :, None] * self.Z[:, None, :]).reshape(-1, self.q * self.q)
        self.u = np.zeros((self.J, self.q))
        self.evals = 0
        self.nagq = nagq
        if nagq > 1:
            self.nodes, self.logw = gauss_hermite_grid(nagq, self.q)
        self._kernel = None
        # lme4's curvature with probit or cloglog: the modes' Newton curvature
        # is the observed one, the Laplace approximation's Fisher's
        self.fisher = fisher_curvature(prob.family, prob.hessian)
        # probit or cloglog with the observed curvature: the kernel's rows
        # give O' in place of W' (kinds 4, 5)
        observed_link = binomial_link_rows(prob.family)
        if self.fisher:
            self._kernel = _fisher_kernel(self.q) if nagq == 1 else None
            if self._kernel is None:
                raise ValueError("lme4's curvature with this link needs the compiled kernel")
        elif not (
            KERNEL_DISABLED
            or (self.generic and not observed_link)
            or nagq > 1
            or self.q > KERNEL_MAX_Q
        ):
            self._kernel = kernel("_glmm_kernels", "vector_glmm")
        self._kind = -1
        if self._kernel is not None:
            self._kind = KINDS[prob.family.link.name] + (
                2 if observed_link and not self.fisher else 0
            )
        if self._kernel is not None:
            starts = np.searchsorted(self.codes, np.arange(self.J + 1)).astype(np.int64)
            if np.any(np.diff(self.codes) < 0):
                raise ValueError("rows must be sorted by group")
            self._starts = starts
            self._scratch = np.empty(12 * max(1, int(np.diff(starts).max(initial=1))))
            self._cargs = [np.ascontiguousarray(a, dtype=float) for a in (self.Z, r.y, r.weights)]
            zmax = np.zeros((self.J, self.q))  # bounds the rows' |zᵀTs| per group
            np.maximum.at(zmax, self.codes, np.abs(self.Z))
            self._zmax = zmax
            n = self.codes.size
            # per group H⁻¹, A and g, per row w, at the last modes, and the θ and
            # Xβ + o they belong to: the kernel predicts the next modes from them
            self._pstate = np.empty((self.J, 2 * self.q * self.q + self.q))
            self._wrow = np.zeros(n)
            self._prev_theta = np.zeros(self.nt)
            self._prev_base = np.zeros(n)
            self._r = np.zeros(n)

    @property
    def u(self) -> np.ndarray:
        """The conditional modes (J, q) the next evaluation starts from."""
        return self._u

    @u.setter
    def u(self, value: np.ndarray) -> None:
        # modes set from outside (a search's remembered point) are not those the
        # kernel's prediction state belongs to
        self._u = value
        self._predict = False

    def _gsum(self, M: np.ndarray) -> np.ndarray:
        return group_sums(self.codes, M, self.J)

    def _state(self, base: np.ndarray, T: np.ndarray, u: np.ndarray):
        """η, ℓ' and w per row and f_j at the modes u (J, q)."""
        eta = base + np.einsum("nq,nq->n", self.Z, (u @ T.T)[self.codes])
        ll, lp, w, _ = self.rows_.at(eta, 1)
        f = 0.5 * np.einsum("jq,jq->j", u, u) - self._gsum(ll[:, None])[:, 0]
        return eta, lp, w, f

    def _newton_step(self, T: np.ndarray, eta, lp, w, u):
        """The Newton step H⁻¹∇f per group; Fisher's weights where the observed
        curvature gives no descent direction (a family that is not log-concave)."""
        g = u - self._gsum(self.Z * lp[:, None]) @ T
        _, H = self._curvature(T, w)
        try:
            step = _solve(H, g)
            bad = ~(np.einsum("ja,ja->j", g, step) > 0) if self.generic else None
        except PirlsError:
            if not self.generic:
                raise
            step, bad = np.zeros_like(g), np.ones(g.shape[0], dtype=bool)
        if bad is not None and bad.any():
            _, Hf = self._curvature(T, self.rows_.fisher(eta))
            step = np.where(bad[:, None], _solve(Hf, g), step)
        return step

    def _curvature(self, T: np.ndarray, w: np.ndarray):
        q = self.q
        A = self._gsum(self.ZZ * w[:, None]).reshape(self.J, q, q)
        H = np.einsum("ab,jbc,cd->jad", T.T, A, T)
        H[:, np.arange(q), np.arange(q)] += 1.0
        return A, H

    def deviance_grad(self, phi: np.ndarray, grad: bool = True):
        self.evals += 1
        if self._kernel is not None:
            return self._compiled(phi, grad)
        # a trial point far out (μ → 0 or ∞) gives an infinite deviance, refused by the search
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            return self._deviance_grad(phi, grad)

    def _compiled(self, phi: np.ndarray, grad: bool):
        """The Laplace deviance and gradient by the compiled kernel (the modes
        are kept only when every group converged)."""
        u = self.u.copy()
        nt = self.nt
        theta = np.ascontiguousarray(phi[:nt], dtype=float)
        base = self.off + self.X @ phi[nt:]
        g_theta = np.zeros(nt)
        predict = self._predict
        self._predict = False  # the state is rewritten (or left half-written) below
        try:
            dev = self._kernel(
                base,
                *self._cargs,
                self._starts,
                self._zmax,
                theta,
                u,
                self._scratch,
                self._pstate,
                self._wrow,
                base - self._prev_base,
                self._prev_theta,
                self._r,
                g_theta,
                self.q,
                self._kind,
                int(grad),
                STEP_TOL,
                int(predict),
            )
        except ArithmeticError as exc:
            raise PirlsError(str(exc)) from None
        self._u = u
        if not grad:
            return dev - 2.0 * self.const, None
        # the kernel wrote the state at these modes
        self._prev_theta[:] = theta
        self._prev_base = base
        self._predict = True
        return dev - 2.0 * self.const, np.concatenate([g_theta, self.X.T @ self._r])

    def _deviance_grad(self, phi: np.ndarray, grad: bool):
        q, nt = self.q, self.nt
        T = np.zeros((q, q))
        T[self.rows, self.cols] = phi[:nt]
        if self.npar:
            self.rows_.family = self.rows_.family.with_free(phi[nt : nt + self.npar])
        beta = phi[nt + self.npar :]
        base = self.off + self.X @ beta
        u = self.u.copy()
        eta, lp, w, f = self._state(base, T, u)
        if self.generic and not np.all(np.isfinite(f)):
            # the last modes put a mean outside the family's range here: from 0
            u = np.zeros_like(u)
            eta, lp, w, f = self._state(base, T, u)
            if not np.all(np.isfinite(f)):
                raise PirlsError("the fixed effects put a mean outside the family's range")
        for _ in range(MAX_NEWTON):  # Newton iterations over all groups at once
            step = self._newton_step(T, eta, lp, w, u)
            if not np.all(np.isfinite(step)):
                raise PirlsError("the conditional modes diverged")
            if np.max(np.abs(step), initial=0.0) < STEP_TOL:
                break
            u, (eta, lp, w, f) = halve_where_rising(u, step, f, lambda un: self._state(base, T, un))
        else:
            raise PirlsError(f"the conditional modes did not converge in {MAX_NEWTON} steps")
        self.u = u
        _, lp, w, w3 = self.rows_.at(eta, 2)
        A, H = self._curvature(T, w)
        if not np.all(np.isfinite(H)):
            raise PirlsError("the weights overflowed")
        sign, logdet = np.linalg.slogdet(H)
        if np.any(sign <= 0):
            raise PirlsError("a group's curvature is not positive definite")
        gz = self._gsum(self.Z * lp[:, None])  # (J, q)
        P = np.linalg.inv(H)
        pbar = None
        if self.nagq > 1:
            dev, Q, Dj, lbar, Gn, pbar = self._quadrature(base, T, u, H, P, logdet, grad)
            if not grad:
                return dev, None
        else:
            dev = float(np.sum(2.0 * f + logdet)) - 2.0 * self.const
            if not grad:
                return dev, None
            Q, Dj, lbar = P, np.zeros_like(u), lp
            Gn = np.einsum("ja,jb->ab", gz, u)
        Mj = np.einsum("ab,jbc,dc->jad", T, Q, T)  # T Q Tᵀ
        h = np.einsum("na,nab,nb->n", self.Z, Mj[self.codes], self.Z)
        c = self._gsum(self.Z * (w3 * h)[:, None])
        vj = np.einsum("jab,jb->ja", P, c @ T + 2.0 * Dj)  # H⁻¹(Tᵀc + 2D)
        Tv = vj @ T.T
        r = -2.0 * lbar + w3 * h - w * np.einsum("nq,nq->n", self.Z, Tv[self.codes])
        g_beta = self.X.T @ r
        ATv = np.einsum("jab,jb->ja", A, Tv)
        GT = np.einsum("ja,jb->ab", c - ATv, u) + np.einsum("ja,jb->ab", gz, vj) - 2.0 * Gn
        GT += 2.0 * np.einsum("jab,bc,jcd->ad", A, T, Q)
        if not self.npar:
            return dev, np.concatenate([GT[self.rows, self.cols], g_beta])
        p0, p1, pw = self.rows_.param(eta)
        zTv = np.einsum("nq,nq->n", self.Z, Tv[self.codes])
        g_psi = -2.0 * np.sum(p0 if pbar is None else pbar, axis=0) + h @ pw + zTv @ p1
        return dev, np.concatenate([GT[self.rows, self.cols], g_psi, g_beta])

    def _node_pass(self, base, T, ujk, lo, hi, want_lp, want_p=False):
        """Rows' η at nodes lo:hi (n, k), their Σℓ per group and, if asked, ℓ'
        (and ∂ℓ/∂ψ) per row and node; where a node puts a mean outside the
        family's range (weight 0) those are 0."""
        bj = np.einsum("jka,ba->jkb", ujk[:, lo:hi], T)  # T u_jk
        eta = base[:, None] + np.einsum("nq,nkq->nk", self.Z, bj[self.codes])
        ll_rows, lpk, _, _ = self.rows_.at(eta, 1 if want_lp else 0)
        ll = self._gsum(ll_rows)
        pk = self.rows_.param(eta)[0] if want_p else None
        if self.generic:
            for arr in (lpk, pk):
                if arr is not None:
                    arr[~np.isfinite(arr)] = 0.0
        return ll, lpk, pk

    def _quadrature(self, base, T, u, H, P, logdet, grad):
        """AGQ deviance with nodes u_jk = û_j + L_j⁻ᵀt_k (H_j = L_jL_jᵀ) and the
        pieces of its gradient: Q = H⁻¹ − 2K̃ (K̃ from the derivative of L⁻ᵀ
        through dH: dL = LΦ(L⁻¹dH L⁻ᵀ), Φ the lower triangle with half the
        diagonal), D_j = Σ_k P_jk ∇f_j(u_jk), ℓ̄' = Σ_k P_jk ℓ'_k per row and
        Σ_jk P_jk g_jk u_jkᵀ (g_jk = Σᵢ ℓ'ᵢₖzᵢ)."""
        q, J = self.q, self.J
        t, logw = self.nodes, self.logw
        Kn = t.shape[0]
        L = np.linalg.cholesky(H)
        C = np.swapaxes(np.linalg.inv(L), 1, 2)  # L⁻ᵀ
        ujk = u[:, None, :] + np.einsum("jab,kb->jka", C, t)  # (J, Kn, q)
        step = max(1, CHUNK_CELLS // max(1, self.codes.size))
        ll = np.empty((J, Kn))
        gk = np.empty((J, Kn, q)) if grad else None
        for lo in range(0, Kn, step):  # blocks of nodes bound the memory
            hi = min(Kn, lo + step)
            ll[:, lo:hi], lpk, _ = self._node_pass(base, T, ujk, lo, hi, grad)
            if grad:
                zl = self.Z[:, :, None] * lpk[:, None, :]  # (n, q, k)
                gk[:, lo:hi] = np.swapaxes(
                    self._gsum(zl.reshape(zl.shape[0], -1)).reshape(J, q, hi - lo), 1, 2
                )
        fjk = 0.5 * np.einsum("jka,jka->jk", ujk, ujk) - ll
        a = logw[None, :] - fjk + 0.5 * np.einsum("ka,ka->k", t, t)[None, :]
        amax = a.max(axis=1)
        lse = amax + np.log(np.exp(a - amax[:, None]).sum(axis=1))
        dev = float(np.sum(q * _LOG2PI + logdet - 2.0 * lse)) - 2.0 * self.const
        if not grad:
            return dev, None, None, None, None, None
        Pk = np.exp(a - lse[:, None])  # (J, Kn)
        F = ujk - gk @ T  # ∇f_j(u_jk) = u − Tᵀg
        Dj = np.einsum("jk,jka->ja", Pk, F)
        G = np.einsum("jk,ka,jkb->jab", Pk, t, F)
        M = np.einsum("jab,jbc,jcd->jad", C, G, C)  # C G C, C = L⁻ᵀ
        N = np.einsum("jba,jbc->jac", L, M)  # Lᵀ M
        Psi = np.tril(N)
        Psi[:, np.arange(q), np.arange(q)] *= 0.5
        Kt = np.einsum("jab,jcb,jdc->jad", C, Psi, C)  # C Ψᵀ Cᵀ
        Q = P - (Kt + np.swapaxes(Kt, 1, 2))
        lbar = np.zeros(self.codes.size)
        pbar = np.zeros((self.codes.size, self.npar)) if self.npar else None
        for lo in range(0, Kn, step):  # ℓ' again, weighted by the nodes' P
            hi = min(Kn, lo + step)
            _, lpk, pk = self._node_pass(base, T, ujk, lo, hi, True, self.npar > 0)
            Pr = Pk[self.codes, lo:hi]
            lbar += np.einsum("nk,nk->n", Pr, lpk)
            if pbar is not None:
                pbar += np.einsum("nk,nkp->np", Pr, pk)
        Gn = np.einsum("jk,jka,jkb->ab", Pk, gk, ujk)
        return dev, Q, Dj, lbar, Gn, pbar


def _solve(H: np.ndarray, g: np.ndarray) -> np.ndarray:
    """H_j⁻¹g_j for every group; a non-finite or singular H (weights that
    overflowed at a wild trial point) is a failed evaluation."""
    if not np.all(np.isfinite(H)):
        raise PirlsError("the weights overflowed")
    try:
        return np.linalg.solve(H, g[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        raise PirlsError("a group's curvature is singular") from None


def optimize_vector(
    prob, beta0: np.ndarray, theta0: np.ndarray, lower_theta: np.ndarray, nagq: int = 1
):
    """Minimise the deviance of one vector term over (θ, δ) with its exact
    gradient, Laplace then quadrature (:func:`multilevel.glmm.exact.search.run_search`),
    each search continued past zero columns of T
    (:func:`multilevel.glmm.exact.search.past_zero_columns`)."""
    return run_search(
        prob, beta0, theta0, lambda n: VectorGLMM(prob, n), nagq, lower_theta,
        after=past_zero_columns(prob.tmpl),
    )  # fmt: skip
