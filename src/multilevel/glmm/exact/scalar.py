"""Laplace and AGQ deviance, with its exact gradient, for a GLMM with one
scalar random-effects term: any family whose log-density has its derivatives
(:mod:`multilevel.glmm.families.base`), with the observed curvature (or a
canonical link, where it is Fisher's too).

With one grouping factor and one column z (``(1 | g)`` or ``(0 + x | g)``),
ηᵢ = oᵢ + xᵢᵀβ + θ zᵢ u_j for row i of group j, u_j ~ N(0, 1), and the
marginal likelihood is a product of one-dimensional integrals.  Per group,

    f_j(u) = −Σᵢ ℓᵢ(ηᵢ(u)) + u²/2,      h_j = f_j''(û_j) = 1 + θ² Σᵢ zᵢ² wᵢ,

with ℓᵢ the full log-density of row i, ℓ' = ∂ℓ/∂η, w = −ℓ'', w' = −ℓ'''
(for a canonical link ℓ = wt(yη − b(η)) + c: ℓ' = wt(y − μ), w = wt b'',
w' = wt b''').  The conditional modes û_j solve f_j'(u) = 0
(vectorized Newton steps over all groups, halved per group while f_j rises).
With s_j = h_j^(−1/2) and Gauss–Hermite nodes t_k, weights W_k (for the weight
e^(−t²/2); one node t = 0 is the Laplace approximation),

    D(θ, β) = −2 Σ_j [−½ log 2π − ½ log h_j
                       + log Σ_k W_k exp(−f_j(û_j + s_j t_k) + t_k²/2)].

Its exact gradient (every quantity a per-row expression and a per-group
sum): with P_jk the softmax weights of the nodes, F_jk = f_j'(u_jk),
E_j = Σ_k P_jk F_jk t_k, D_j = Σ_k P_jk F_jk,

    dD = 2 Σ_j Σ_k P_jk ∂f_j/∂φ(u_jk) + Σ_j (1 − s_j E_j)/h_j · dh_j + 2 Σ_j D_j dû_j,

where dû_j = −(∂f_j'/∂φ)/h_j (implicit function theorem) and
dh_j = ∂h_j/∂φ + θ³ Σᵢ zᵢ³ w'ᵢ dû_j.  For Laplace E_j = D_j = 0.  A family's
parameter ψ (its logarithm: the negative binomial θ, the Gamma shape...)
enters φ after θ: ∂f_j/∂ψ = −Σᵢ ∂ℓᵢ/∂ψ, ∂f_j'/∂ψ = −θ Σᵢ zᵢ ∂ℓ'ᵢ/∂ψ and
∂h_j/∂ψ = θ² Σᵢ zᵢ² ∂wᵢ/∂ψ.  Nothing loops over groups or rows in numpy; the
compiled kernel (``_glmm_kernels.c``, used when it was built) does the same
group by group for binomial-logit and Poisson-log.
"""

from __future__ import annotations

import numpy as np

from multilevel.compiled import kernel
from multilevel.glmm.exact.rows import RowTerms, canonical_plain, has_derivatives
from multilevel.glmm.exact.scalar_hessian import laplace_hessian
from multilevel.glmm.exact.search import run_search
from multilevel.glmm.families import Family, GlmResponse
from multilevel.glmm.pirls import PirlsError, halve_where_rising
from multilevel.glmm.quadrature import gauss_hermite_grid

_LOG2PI = float(np.log(2.0 * np.pi))
MAX_NEWTON = 100
STEP_TOL = 1e-10
CHUNK_CELLS = 400_000  # rows × nodes per block of the quadrature
KERNEL_DISABLED = False  # tests switch the compiled kernel off to check the numpy path
HESSIAN_DISABLED = False  # tests switch the exact Hessian off to compare the searches


def _load_kernel(name: str = "scalar_glmm"):
    """A compiled kernel of ``multilevel._glmm_kernels`` if it was built."""
    return kernel("_glmm_kernels", name)


def supported(family: Family, nterms: int, q: int, hessian: str = "fisher") -> bool:
    """Whether the groupwise path applies: one scalar term, and binomial-logit
    or Poisson-log (plain classes: a user's subclass keeps the general path),
    or a family with the derivatives of its log-density whose Laplace
    curvature is the observed one (or its link canonical)."""
    if nterms != 1 or q != 1:
        return False
    if canonical_plain(family):
        return True
    return has_derivatives(family) and (hessian == "observed" or family.canonical)


def compiled_deviance_grad(model, data: tuple, phi: np.ndarray, flags: tuple, grad: bool):
    """D(φ) (less 2·const) and dD/dφ by a one-term compiled kernel called as
    ``kernel(*data, φ, u, g, scratch, *flags)``: the modes u start from the
    model's and are kept; a kernel's arithmetic failure is a PIRLS failure."""
    u = model.u.copy()
    g = np.zeros(phi.size)
    try:
        dev = model._kernel(
            *data, np.ascontiguousarray(phi, dtype=float), u, g, model._scratch, *flags
        )
    except ArithmeticError as exc:
        raise PirlsError(str(exc)) from None
    model.u = u
    return dev - 2.0 * model.const, (g if grad else None)


class ScalarGLMM:
    """Deviance and gradient in φ = (θ, β) for rows sorted by group."""

    def __init__(
        self,
        family: Family,
        resp: GlmResponse,
        X: np.ndarray,
        z: np.ndarray,
        offset: np.ndarray,
        codes: np.ndarray,
        nlevels: int,
        nagq: int = 1,
        starts: np.ndarray | None = None,
    ):
        """``starts``: the first row of each group, when the caller knows the
        rows sorted with every group present (else found and checked here)."""
        self.rows = RowTerms(family, resp)
        self.generic = self.rows.generic
        self.npar = family.nfree
        self.logit = self.rows.logit
        self.const = float(resp.const.sum())
        self.X = np.ascontiguousarray(X, dtype=float)
        self.z = np.asarray(z, dtype=float)
        self.unit_z = bool(np.all(self.z == 1.0))
        self.offset = offset
        self.codes = codes
        self.J = nlevels
        if starts is None:
            starts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
            starts = np.concatenate([np.zeros(min(1, codes.size), dtype=starts.dtype), starts])
            if starts.size != nlevels or np.any(codes[starts] != np.arange(nlevels)):
                raise ValueError("rows must be sorted by group, every group present")
        self.starts = starts
        self.z2 = self.z * self.z
        self.z3 = self.z2 * self.z
        nodes, logw = gauss_hermite_grid(max(1, nagq), 1)
        self.t = nodes[:, 0]
        self.logw = logw
        self.u = np.zeros(nlevels)
        self.evals = 0
        self._kernel = None if KERNEL_DISABLED or self.generic else _load_kernel()
        # the exact Hessian: Laplace with a canonical link (scalar_hessian)
        self.exact_hessian = not (self.generic or HESSIAN_DISABLED) and self.t.size == 1
        self._hess_kernel = (
            _load_kernel("scalar_laplace_hessian") if self._kernel is not None else None
        )
        if self._kernel is not None:
            self._starts64 = np.empty(starts.size + 1, dtype=np.int64)
            self._starts64[:-1] = starts
            self._starts64[-1] = codes.size
            largest = int(np.diff(self._starts64).max(initial=1))
            self._scratch = np.empty(largest * (self.t.size + 4))
            self._cargs = [
                np.ascontiguousarray(a, dtype=float)
                for a in (self.X, self.z, offset, resp.y, resp.weights)
            ]
            self._t = np.ascontiguousarray(self.t, dtype=float)
            self._logw = np.ascontiguousarray(self.logw, dtype=float)
            self._data = (*self._cargs, self._starts64, self._t, self._logw)
        self._block_cache: dict[int, list] = {}

    def _blocks(self, K: int) -> list[tuple[int, int, int, int, np.ndarray]]:
        """Row blocks of whole groups, about CHUNK_CELLS/K rows each: (first row,
        end row, first group, end group, group starts within the block)."""
        if K not in self._block_cache:
            n, starts = self.codes.size, self.starts
            target = max(1, CHUNK_CELLS // K)
            bounds = [0]
            while bounds[-1] < self.J:
                row = starts[bounds[-1]] + target
                bounds.append(
                    max(bounds[-1] + 1, int(np.searchsorted(starts, row, "right")) - 1)
                    if row < n
                    else self.J
                )
            ends = np.r_[starts, n]
            self._block_cache[K] = [
                (int(ends[a]), int(ends[b]), a, b, starts[a:b] - starts[a])
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
        return self._block_cache[K]

    @classmethod
    def from_problem(cls, prob, nagq: int = 1, beta0=None, Rinv=None) -> ScalarGLMM:
        """The model of a PIRLS problem (:class:`multilevel.glmm.pirls.PirlsProblem`)
        with one scalar term, rows sorted by its levels; with ``beta0`` and
        ``Rinv``, in φ = (θ[, ψ], δ), β = β₀ + R⁻¹δ (the search's coordinates:
        design X R⁻¹, offset o + Xβ₀, so the gradient comes in δ)."""
        rb = prob.rb
        X, offset = prob.X, prob.offset
        if Rinv is not None:
            X, offset = X @ Rinv, offset + X @ beta0
        return cls(
            prob.family,
            prob.resp,
            X,
            rb.Zs[0][:, 0],
            offset,
            rb.codes[0],
            rb.nlevels[0],
            nagq,
            rb._starts0,
        )

    # -- per-row pieces of the log-density
    def _gsum(self, v: np.ndarray) -> np.ndarray:
        return np.add.reduceat(v, self.starts, axis=0)

    def _rows(self, eta: np.ndarray, order: int):
        return self.rows.at(eta, order)

    def _curvature(self, theta: float, eta: np.ndarray, Sz2w: np.ndarray) -> np.ndarray:
        """Newton's curvature per group, 1 + θ² Σ z²w; where the observed
        information of a family that is not log-concave leaves it below 1/2,
        the Fisher information's (a scoring step) instead."""
        h = 1.0 + theta * theta * Sz2w
        if self.generic and np.any(h < 0.5):
            wf = self.rows.fisher(eta)
            hf = 1.0 + theta * theta * self._gsum(self.z2 * wf)
            h = np.where(h < 0.5, hf, h)
        return h

    def _mode(self, theta: float, base: np.ndarray):
        """Newton steps over all groups at once from the last mode."""
        u = self.u.copy()
        codes, z = self.codes, self.z
        tz = theta * z
        eta = base + tz * u[codes]
        ll, lp, w, _ = self._rows(eta, 1)
        f = u * u / 2 - self._gsum(ll)
        if self.generic and not np.all(np.isfinite(f)):
            # the last modes put a mean outside the family's range here: from 0
            u = np.zeros_like(u)
            eta = base.copy()
            ll, lp, w, _ = self._rows(eta, 1)
            f = -self._gsum(ll)
            if not np.all(np.isfinite(f)):
                raise PirlsError("the fixed effects put a mean outside the family's range")
        for _ in range(MAX_NEWTON):  # Newton iterations (all groups at once)
            if self.unit_z:  # (1 | g): two reductions, no stacked copy
                s1, s2 = self._gsum(lp), self._gsum(w)
            else:
                s1, s2 = self._gsum(z * lp), self._gsum(self.z2 * w)
            g = u - theta * s1
            step = g / self._curvature(theta, eta, s2)
            if not np.all(np.isfinite(step)):
                raise PirlsError("the conditional modes diverged")
            if np.max(np.abs(step), initial=0.0) < STEP_TOL:
                # the last step taken without evaluating it (f moves by
                # O(step²)): log h, not stationary in u, then has the modes'
                # error squared, as the compiled kernel's
                u = u - step
                return u, base + tz * u[codes]

            def state(un):
                eta_n = base + tz * un[codes]
                ll_n, lp_n, w_n, _ = self._rows(eta_n, 1)
                return eta_n, lp_n, w_n, un * un / 2 - self._gsum(ll_n)

            u, (eta, lp, w, f) = halve_where_rising(u, step, f, state)
        raise PirlsError(f"the conditional modes did not converge in {MAX_NEWTON} steps")

    def deviance_grad(self, phi: np.ndarray, grad: bool = True):
        """D(φ) and, if asked, dD/dφ, φ = (θ, β₁..β_p)."""
        self.evals += 1
        if self._kernel is not None:
            return compiled_deviance_grad(
                self,
                self._data,
                phi,
                (self.X.shape[1], int(self.logit), int(grad), STEP_TOL),
                grad,
            )
        # a trial point far out (μ → 0 or ∞) gives an infinite deviance, refused by the search
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            return self._deviance_grad(phi, grad)

    def deviance_grad_hess(self, phi: np.ndarray):
        """D(φ), dD/dφ and d²D/dφ² (``exact_hessian`` models only)."""
        self.evals += 1
        if self._hess_kernel is None:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
                return laplace_hessian(self, phi)
        d = phi.size
        u, g, H = self.u.copy(), np.empty(d), np.empty((d, d))
        c = self._cargs
        try:
            dev = self._hess_kernel(
                c[0], c[1], c[2], c[3], c[4], self._starts64,
                np.ascontiguousarray(phi, dtype=float), u, g, H, self._scratch,
                d - 1, int(self.logit), STEP_TOL,
            )  # fmt: skip
        except ArithmeticError as exc:
            raise PirlsError(str(exc)) from None
        self.u = u
        return dev - 2.0 * self.const, g, H

    def _deviance_grad(self, phi: np.ndarray, grad: bool):
        theta = float(phi[0])
        k = 1 + self.npar
        if self.npar:
            self.rows.family = self.rows.family.with_free(phi[1:k])
        beta = phi[k:]
        base = self.offset + self.X @ beta
        u, eta = self._mode(theta, base)
        self.u = u
        codes, z = self.codes, self.z
        ll, lp, w, w3 = self._rows(eta, 2)
        sums = self._gsum(np.stack([self.z2 * w, self.z3 * w3, z * lp], 1))
        Sz2w, Sz3w3, Szlp = sums[:, 0], sums[:, 1], sums[:, 2]
        h = 1.0 + theta * theta * Sz2w
        if not np.all(h > 0):
            raise PirlsError(
                "the observed information of the conditional density is not positive at a mode"
            )
        if len(self.t) == 1:
            fhat = u * u / 2 - self._gsum(ll)
            dev = float(np.sum(2.0 * fhat + np.log(h))) - 2.0 * self.const
            if not grad:
                return dev, None
            alpha = 1.0 / h
            gamma = alpha * theta**3 * Sz3w3
            direct_b = lp  # Σ_k P ℓ' = ℓ' at the mode
            direct_t = float(np.sum(lp * z * u[codes]))
            direct_p = None
        else:
            dev, alpha, gamma, direct_b, direct_t, direct_p = self._agq(theta, base, u, h, grad)
            if not grad:
                return dev, None
            gamma = gamma + alpha * theta**3 * Sz3w3
        # dû/dβ = −θ Σ z w x / h,  dû/dθ = (Σ z ℓ' − θ u Σ z² w)/h
        ag = alpha[codes]
        gh = (gamma / h)[codes]
        r = -2.0 * direct_b + theta * theta * ag * self.z2 * w3 - theta * gh * z * w
        g_beta = self.X.T @ r
        g_theta = (
            -2.0 * direct_t
            + float(np.sum(alpha * (2.0 * theta * Sz2w + theta * theta * u * Sz3w3)))
            + float(np.sum(gamma * (Szlp - theta * u * Sz2w) / h))
        )
        if not self.npar:
            return dev, np.concatenate([[g_theta], g_beta])
        # the family's parameter: ∂ℓ/∂ψ (node-weighted), ∂ℓ'/∂ψ and ∂w/∂ψ at the mode
        p0, p1, pw = self.rows.param(eta)  # (n, npar)
        ps0 = self._gsum(self.z2[:, None] * pw)
        ps1 = self._gsum(z[:, None] * p1)
        g_psi = (
            -2.0 * np.sum(p0 if direct_p is None else direct_p, axis=0)
            + theta * theta * (alpha @ ps0)
            + theta * ((gamma / h) @ ps1)
        )
        return dev, np.concatenate([[g_theta], g_psi, g_beta])

    def _agq(self, theta: float, base: np.ndarray, u: np.ndarray, h: np.ndarray, grad: bool):
        """Quadrature deviance and the node-weighted pieces of its gradient."""
        codes, z = self.codes, self.z
        t, logw = self.t, self.logw
        K = t.size
        s = 1.0 / np.sqrt(h)
        ujk = u[:, None] + s[:, None] * t[None, :]  # (J, K)
        fjk = np.empty((self.J, K))
        Fsum = np.empty((self.J, K)) if grad else None
        lp_all = np.empty((codes.size, K)) if grad else None
        p_all = np.empty((codes.size, K, self.npar)) if grad and self.npar else None
        for lo, hi, g0, g1, st in self._blocks(K):  # whole groups per block
            zc = z[lo:hi, None]
            eta = base[lo:hi, None] + theta * zc * ujk[codes[lo:hi]]
            ll, lp, _, _ = self.rows.at(eta, 1 if grad else 0, slice(lo, hi))
            fjk[g0:g1] = np.add.reduceat(ll, st, axis=0)
            if grad:
                lp_all[lo:hi] = lp
                Fsum[g0:g1] = np.add.reduceat(zc * lp, st, axis=0)
                if p_all is not None:
                    p_all[lo:hi] = self.rows.param(eta, slice(lo, hi))[0]
        fjk = ujk * ujk / 2 - fjk
        if grad and self.generic:
            # nodes where a mean leaves the family's range (an inverse link's
            # η ≤ 0) have weight exp(−∞) = 0: their derivatives are not used
            for arr in (Fsum, lp_all, p_all):
                if arr is not None:
                    arr[~np.isfinite(arr)] = 0.0
        a = logw[None, :] - fjk + 0.5 * t[None, :] ** 2
        amax = a.max(axis=1)
        lse = amax + np.log(np.exp(a - amax[:, None]).sum(axis=1))
        dev = float(np.sum(0.5 * _LOG2PI + 0.5 * np.log(h) - lse)) * 2.0 - 2.0 * self.const
        if not grad:
            return dev, None, None, None, None, None
        P = np.exp(a - lse[:, None])
        F = ujk - theta * Fsum  # f_j'(u_jk)
        E = np.sum(P * F * t[None, :], axis=1)
        Dj = np.sum(P * F, axis=1)
        alpha = (1.0 - s * E) / h
        gamma = 2.0 * Dj
        Pr = P[codes]
        direct_b = np.einsum("nk,nk->n", Pr, lp_all)
        direct_t = float(np.sum(z * np.einsum("nk,nk->n", Pr * ujk[codes], lp_all)))
        direct_p = None if p_all is None else np.einsum("nk,nkp->np", Pr, p_all)
        return dev, alpha, gamma, direct_b, direct_t, direct_p


def optimize_groupwise(prob, nagq: int, beta0: np.ndarray, theta0=1.0, lower_theta=None):
    """Minimise the deviance of one scalar term over (θ[, ψ], δ) with its
    exact gradient, Laplace then quadrature
    (:func:`multilevel.glmm.exact.search.run_search`)."""
    # binomial-logit and Poisson-log evaluate in the search's coordinates (no
    # map per evaluation); the other families' searches, whose paths are more
    # sensitive to rounding, keep the design as it is
    if canonical_plain(prob.family):
        return run_search(
            prob,
            beta0,
            theta0,
            lambda n, b0, Rinv: ScalarGLMM.from_problem(prob, n, b0, Rinv),
            nagq,
            lower_theta=lower_theta,
            whitened=True,
        )
    return run_search(
        prob,
        beta0,
        theta0,
        lambda n: ScalarGLMM.from_problem(prob, n),
        nagq,
        lower_theta=lower_theta,
    )
