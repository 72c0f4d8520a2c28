"""Laplace and AGQ deviance, with its exact gradient, for a binomial GLMM
with one scalar random effect and a non-canonical link (probit, cloglog).

As in :mod:`multilevel.glmm.exact.scalar`, per group f_j(u) = −Σᵢ ℓᵢ + u²/2 with
ηᵢ = oᵢ + xᵢᵀβ + θzᵢu.  lme4's Laplace approximation takes the curvature
from the Fisher weights Wᵢ = wtᵢ (dμ/dη)²/V(μ) (what PIRLS uses), which for a
non-canonical link differ from the observed ones Oᵢ = −ℓ''ᵢ:

    D(θ, β) = Σ_j [2 f_j(û_j) + log h_j],    h_j = 1 + θ² Σᵢ zᵢ² Wᵢ.

The mode solves f_j'(û) = 0 (Fisher scoring steps, halved while f_j rises);
its derivative comes from the observed curvature h°_j = 1 + θ²Σᵢ zᵢ²Oᵢ.  With
W' = dW/dη, α_j = 1/h_j, γ_j = α_j θ³ Σᵢ zᵢ³W'ᵢ:

    ∂D/∂β = Xᵀ(−2ℓ' + θ²α zᵢ²W' − θ(γ/h°) zᵢ Oᵢ)
    ∂D/∂θ = −2Σ ℓ'zu + Σ_j α_j(2θΣz²W + θ²u Σz³W') + Σ_j γ_j(Σzℓ' − θuΣz²O)/h°_j.

The per-row derivatives are written through ratios that stay finite in both
tails: for probit the inverse Mills ratio A(x) = φ(x)/Φ(x) (ℓ' = wt[yA(η) −
(1 − y)A(−η)], W = wt A(η)A(−η), A' = −A(x + A)); for cloglog t = e^η and
B = t/(eᵗ − 1) (ℓ' = wt[yB − (1 − y)t], W = wt tB, B' = B(1 − t − B)).
Quadrature (nodes scaled by the Fisher curvature, as PIRLS scales them) adds
the node terms of :mod:`multilevel.glmm.exact.scalar`: α_j = (1 − s_jE_j)/h_j and
2D_j in γ_j, the node-weighted ℓ' in the direct terms.  The Laplace deviance
is also compiled (``_glmm_kernels.link_glmm``: the same steps group by group,
log Φ from erfc and its tail series); the numpy code stays the fallback and
for quadrature.
"""

from __future__ import annotations

import numpy as np

from multilevel.compiled import kernel
from multilevel.glmm.exact.rows import binomial_link_rows
from multilevel.glmm.exact.scalar import compiled_deviance_grad
from multilevel.glmm.exact.search import run_search
from multilevel.glmm.families import Family
from multilevel.glmm.families.discrete import LINK_ROWS
from multilevel.glmm.pirls import PirlsError, halve_where_rising
from multilevel.glmm.quadrature import gauss_hermite_grid
from multilevel.linalg.crossprod import group_sums

MAX_ITER = 200
KERNEL_DISABLED = False  # tests switch the compiled Laplace kernel off to check the numpy path
STEP_TOL = 1e-10
_LOG2PI = float(np.log(2.0 * np.pi))


def supported(family: Family, nterms: int, q: int) -> bool:
    """One scalar term, the plain binomial family with a probit or cloglog link."""
    return nterms == 1 and q == 1 and binomial_link_rows(family)


class LinkGLMM:
    """Laplace deviance and gradient in φ = (θ, β), rows sorted by group."""

    def __init__(self, prob, nagq: int = 1):
        rb, r = prob.rb, prob.resp
        self.family = prob.family
        self.derivs = LINK_ROWS[prob.family.link.name]
        self.y, self.wt, self.const = r.y, r.weights, float(r.const.sum())
        self.X, self.off = prob.X, prob.offset
        self.z = rb.Zs[0][:, 0]
        self.z2, self.z3 = self.z**2, self.z**3
        self.codes, self.J = rb.codes[0], rb.nlevels[0]
        self.u = np.zeros(self.J)
        self.evals = 0
        nodes, self.logw = gauss_hermite_grid(max(1, nagq), 1)
        self.t = nodes[:, 0]
        self._kernel = None
        codes = self.codes
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        if (
            self.t.size == 1
            and not KERNEL_DISABLED
            and starts.size == self.J
            and not np.any(np.diff(codes) < 0)
        ):
            self._kernel = kernel("_glmm_kernels", "link_glmm")
        if self._kernel is not None:
            bounds = np.r_[starts, codes.size].astype(np.int64)
            self._starts = bounds
            self._scratch = np.empty(5 * int(np.diff(bounds).max(initial=1)))
            self._cargs = [
                np.ascontiguousarray(a, dtype=float)
                for a in (self.X, self.z, self.off, self.y, self.wt)
            ]
            self._cloglog = int(prob.family.link.name == "cloglog")

    def _gsum(self, M: np.ndarray) -> np.ndarray:
        return group_sums(self.codes, M, self.J)

    def _f(self, eta: np.ndarray, u: np.ndarray) -> np.ndarray:
        ll = self.family.loglik_kernel(self.y, eta, self.wt)
        return 0.5 * u * u - self._gsum(ll[:, None])[:, 0]

    def deviance_grad(self, phi: np.ndarray, grad: bool = True):
        self.evals += 1
        if self._kernel is not None:
            return compiled_deviance_grad(
                self,
                (*self._cargs, self._starts),
                phi,
                (self.X.shape[1], self._cloglog, int(grad), STEP_TOL),
                grad,
            )
        theta, beta = float(phi[0]), phi[1:]
        base = self.off + self.X @ beta
        tz = theta * self.z
        u = self.u.copy()
        eta = base + tz * u[self.codes]
        f = self._f(eta, u)
        for _ in range(MAX_ITER):  # Fisher scoring over all groups at once
            lp, obs, W, W1 = self.derivs(eta, self.y, self.wt)
            S = self._gsum(np.stack([self.z * lp, self.z2 * W], 1))
            h = 1.0 + theta * theta * S[:, 1]
            step = (u - theta * S[:, 0]) / h
            if not np.all(np.isfinite(step)):
                raise PirlsError("the conditional modes diverged")
            if np.max(np.abs(step), initial=0.0) < STEP_TOL:
                break

            def state(un):
                eta_n = base + tz * un[self.codes]
                return eta_n, self._f(eta_n, un)

            u, (eta, f) = halve_where_rising(u, step, f, state)
        else:
            raise PirlsError(f"the conditional modes did not converge in {MAX_ITER} steps")
        self.u = u
        z, codes = self.z, self.codes
        if self.t.size == 1:
            dev = float(np.sum(2.0 * f + np.log(h))) - 2.0 * self.const
            if not grad:
                return dev, None
            alpha, gamma = 1.0 / h, np.zeros(self.J)
            lbar, direct_t = lp, float(np.sum(lp * z * u[codes]))
        else:
            dev, alpha, gamma, lbar, direct_t = self._agq(base, theta, u, h, grad)
            if not grad:
                return dev, None
        S = self._gsum(np.stack([self.z2 * W, self.z3 * W1, z * lp, self.z2 * obs], 1))
        Sz2W, Sz3W1, Szlp, Sz2O = S.T
        hO = 1.0 + theta * theta * Sz2O
        gamma = gamma + alpha * theta**3 * Sz3W1
        r = (
            -2.0 * lbar
            + theta * theta * alpha[codes] * self.z2 * W1
            - theta * (gamma / hO)[codes] * z * obs
        )
        g_theta = (
            -2.0 * direct_t
            + float(np.sum(alpha * (2.0 * theta * Sz2W + theta * theta * u * Sz3W1)))
            + float(np.sum(gamma * (Szlp - theta * u * Sz2O) / hO))
        )
        return dev, np.concatenate([[g_theta], self.X.T @ r])

    def _agq(self, base, theta, u, h, grad):
        """Quadrature deviance (nodes û + s t_k, s = h^(−1/2) from the Fisher
        curvature, as PIRLS scales them) and its gradient's node pieces, as in
        :mod:`multilevel.glmm.exact.scalar`: α = (1 − sE)/h, 2D, ℓ̄' and Σ zuℓ'."""
        t, logw, z, codes = self.t, self.logw, self.z, self.codes
        s = 1.0 / np.sqrt(h)
        ujk = u[:, None] + s[:, None] * t[None, :]  # (J, K)
        eta = base[:, None] + theta * z[:, None] * ujk[codes]  # (n, K)
        ll = self.family.loglik_kernel(self.y[:, None], eta, self.wt[:, None])
        fjk = 0.5 * ujk * ujk - self._gsum(ll)
        a = logw[None, :] - fjk + 0.5 * t[None, :] ** 2
        amax = a.max(axis=1)
        lse = amax + np.log(np.exp(a - amax[:, None]).sum(axis=1))
        dev = float(np.sum(_LOG2PI + np.log(h) - 2.0 * lse)) - 2.0 * self.const
        if not grad:
            return dev, None, None, None, None
        P = np.exp(a - lse[:, None])
        lpk = self.derivs(eta, self.y[:, None], self.wt[:, None])[0]  # ℓ' at the nodes
        F = ujk - theta * self._gsum(z[:, None] * lpk)  # f'(u_jk)
        E = np.sum(P * F * t[None, :], axis=1)
        Dj = np.sum(P * F, axis=1)
        Pr = P[codes]
        lbar = np.einsum("nk,nk->n", Pr, lpk)
        direct_t = float(np.sum(z * np.einsum("nk,nk->n", Pr * ujk[codes], lpk)))
        return dev, (1.0 - s * E) / h, 2.0 * Dj, lbar, direct_t


def optimize_link(prob, beta0: np.ndarray, theta0: float = 1.0, nagq: int = 1):
    """Minimise the deviance of one scalar term with a probit or cloglog link
    over (θ, δ) with its exact gradient, Laplace then quadrature
    (:func:`multilevel.glmm.exact.search.run_search`)."""
    return run_search(prob, beta0, theta0, lambda n: LinkGLMM(prob, n), nagq)
