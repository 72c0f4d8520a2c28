"""A fitted GLMM's deviance as a function of its parameters (lme4's ``devfun``).

    d(θ, β) = −2 log ∫ p(y | b; β) p(b; θ) db,

approximated as the fit was (Laplace or adaptive Gauss–Hermite quadrature) at
the conditional mode ũ(θ, β) found by PIRLS with β held fixed.  θ and β are in
the user's coordinates (the covariance factors and columns of the summary);
each evaluation maps them to the engine's centred and scaled basis.  The
family's free parameters (a negative binomial's θ, an ordinal model's
thresholds) are extra coordinates on their unconstrained scale.

Profiles, likelihood-ratio tests of constrained models and other inference
on a fitted GLMM evaluate this function; the fit itself is left untouched
(the problem is copied, PIRLS warm-starts from the last mode).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import numpy as np

from multilevel.errors import ModelError
from multilevel.glmm.pirls import PirlsError
from multilevel.glmm.quadrature import agq_deviance
from multilevel.optimize.stage2 import optimize_stage2

if TYPE_CHECKING:
    from multilevel.glmm.results import GlmerFit


class GlmmDevfun:
    """``devfun(theta, beta, free=None)`` → the approximate deviance (module
    docstring); ``free`` defaults to the fitted family parameters."""

    def __init__(self, fit: GlmerFit):
        if fit.method == "mc":
            raise ModelError(
                "a Monte Carlo fit's deviance is random; profiles and constrained refits "
                "need method='laplace' or nAGQ > 1"
            )
        self.prob = copy.copy(fit._prob)  # set_params replaces prob.family: not the fit's
        self.basis = fit._basis
        self.tmpl = self.prob.tmpl
        self.method = fit.method
        self.nagq = fit.nAGQ
        self.ntheta = self.prob.nre
        self.free0 = np.asarray(self.prob.family.free_values(), dtype=float)
        self.u: np.ndarray | None = fit._mode.u.copy()
        self.theta_hat = np.asarray(fit._theta, dtype=float)
        self.beta_hat = np.asarray(fit._beta, dtype=float)
        self.vcov = np.asarray(fit._vcov, dtype=float)

    def scaled(self, theta: np.ndarray, beta: np.ndarray, free: np.ndarray | None = None):
        """(θ, β[, free]) → the engine's (θ̃ with the free values, β̃ = Nβ/s)."""
        th = np.concatenate([np.asarray(theta, float), self.free0 if free is None else free])
        beta = np.asarray(beta, dtype=float)
        if self.basis is None:
            return th, beta
        b = self.basis
        return b.theta(th, self.tmpl, to_scaled=True), b.N @ beta / b.eta_scale

    def __call__(
        self, theta: np.ndarray, beta: np.ndarray, free: np.ndarray | None = None
    ) -> float:
        return self.at_scaled(*self.scaled(theta, beta, free))

    def at_scaled(self, th_s: np.ndarray, beta_s: np.ndarray) -> float:
        """The deviance at the engine's (θ̃ with the free values, β̃)."""
        if not np.all(np.isfinite(th_s)) or not np.all(np.isfinite(beta_s)):
            return math.inf
        try:
            try:
                m = self.prob.mode(th_s, beta_s, self.u, joint=False)
            except PirlsError:
                m = self.prob.mode(th_s, beta_s, None, joint=False)  # cold start from u = 0
        except PirlsError:
            return math.inf
        self.u = m.u
        with np.errstate(over="ignore", under="ignore"):
            d = m.laplace if self.method == "laplace" else agq_deviance(self.prob, m, self.nagq)
        return float(d) if np.isfinite(d) else math.inf

    def constrained(self, fixed_zero: np.ndarray) -> tuple[float, bool]:
        """min d over all parameters with the θ entries ``fixed_zero`` (a mask
        over θ) held at 0 — the deviance of the reduced model — and whether
        that search converged.  Searched as the fit was: θ̃ in the engine's
        basis, β̃ = β̃̂ + Lδ with LLᵀ the estimates' covariance (δ of unit
        scale), by the shared BOBYQA + Newton polish."""
        nt, nf = self.ntheta, self.free0.size
        th_s, beta_s = self.scaled(self.theta_hat, self.beta_hat)
        L = _unit_scale(self.vcov_scaled())
        keep = ~np.asarray(fixed_zero, dtype=bool)
        lower_t = np.concatenate([t.lower_bounds() for t in self.tmpl])
        k = int(keep.sum())
        x0 = np.concatenate([th_s[:nt][keep], th_s[nt:], np.zeros(beta_s.size)])
        lower = np.concatenate([lower_t[keep], np.full(nf + beta_s.size, -np.inf)])

        def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            th = np.zeros(nt + nf)
            th[:nt][keep] = x[:k]
            th[nt:] = x[k : k + nf]
            return th, beta_s + L @ x[k + nf :]

        def f(x: np.ndarray) -> float:
            return self.at_scaled(*unpack(np.asarray(x, dtype=float)))

        with np.errstate(over="ignore", under="ignore"):
            rec, _ = optimize_stage2(f, x0, lower, k + nf, lambda x: x)
        return float(rec.criterion), bool(rec.converged)

    def vcov_scaled(self) -> np.ndarray:
        """The covariance of β̃ = Nβ/s."""
        if self.basis is None:
            return self.vcov
        N = self.basis.N / self.basis.eta_scale
        return N @ self.vcov @ N.T


def _unit_scale(V: np.ndarray) -> np.ndarray:
    """A factor L with LLᵀ = V (V's diagonal square roots where V is not
    positive definite)."""
    try:
        return np.linalg.cholesky(V)
    except np.linalg.LinAlgError:
        return np.diag(np.sqrt(np.maximum(np.abs(np.diag(V)), 1e-12)))


__all__ = ["GlmmDevfun"]
