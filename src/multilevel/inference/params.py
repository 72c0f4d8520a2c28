"""The variance parameters on the scale users read them: per random-effects
term the standard deviations and correlations (lme4's ``sd_x|g``,
``cor_x.y|g``), then the residual σ; ψ ↔ θ, and the ML deviance in ψ,

    d(ψ) = log|L_Z|²(θ) + n log(2πσ²) + r²(θ)/σ²,  T_k = diag(sd_k/σ) chol(R_k).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from multilevel.covariance import sd_corr, templates

if TYPE_CHECKING:
    from multilevel.lmm.results import LmerFit

_LOG2PI = np.log(2 * np.pi)


class VarianceParams:
    """ψ = (per term: sd and cor in θ order; σ) ↔ θ, and the ML deviance in ψ.

    A GLMM has no residual σ: its ψ ends with the last correlation, and its
    θ is the covariance factor itself (σ = 1 in the maps)."""

    def __init__(self, fit: LmerFit):
        glmm = hasattr(fit, "family")
        self.with_sigma = not glmm
        self.crit = None if glmm else fit.criterion
        self.n = fit.nobs
        self.slw = float(getattr(self.crit, "sum_log_w", 0.0))
        self.terms = []  # (q, theta rows, theta cols, offset in psi)
        names: list[str] = []
        kinds: list[str] = []
        off = 0
        tmpl = templates([r.q for r in fit.design.random]) if glmm else self.crit.tmpl
        for r, t in zip(fit.design.random, tmpl, strict=True):
            rows, cols = t.rows, t.cols
            for i, j in zip(rows, cols, strict=True):
                # lme4's names; (x || g) terms share the group name without a suffix
                if i == j:
                    name = f"sd_{r.cnames[i]}|{r.name}"
                    kinds.append("sd")
                else:
                    name = f"cor_{r.cnames[i]}.{r.cnames[j]}|{r.name}"
                    kinds.append("cor")
                while name in names:
                    name += "'"
                names.append(name)
            self.terms.append((t.q, rows, cols, off))
            off += t.size
        if self.with_sigma:
            names.append("sigma")
            kinds.append("sigma")
        self.names = names
        self.kinds = np.array(kinds)
        self.lower = np.where(self.kinds == "cor", -1.0, 0.0)
        self.upper = np.where(self.kinds == "cor", 1.0, np.inf)

    def theta(self, psi: np.ndarray) -> np.ndarray | None:
        sigma = psi[-1] if self.with_sigma else 1.0
        out = np.empty(len(psi) - self.with_sigma)
        for q, rows, cols, off in self.terms:
            vals = psi[off : off + len(rows)]
            sd = np.zeros(q)
            R = np.eye(q)
            for v, i, j in zip(vals, rows, cols, strict=True):
                if i == j:
                    sd[i] = v
                else:
                    R[i, j] = R[j, i] = v
            C = corr_chol(R)
            if C is None:
                return None
            T = (sd / sigma)[:, None] * C
            out[off : off + len(rows)] = T[rows, cols]
        return out

    def psi(self, theta: np.ndarray, sigma: float = 1.0) -> np.ndarray:
        out = np.empty(len(theta) + self.with_sigma)
        for q, rows, cols, off in self.terms:
            T = np.zeros((q, q))
            T[rows, cols] = theta[off : off + len(rows)]
            sd, corr = sd_corr(sigma**2 * (T @ T.T))
            # a correlation with a zero SD is undefined: 0 keeps ψ feasible
            out[off : off + len(rows)] = np.where(rows == cols, sd[rows], corr[rows, cols])
        if self.with_sigma:
            out[-1] = sigma
        return np.nan_to_num(out, nan=0.0)

    def deviance(self, psi: np.ndarray) -> float:
        sigma = psi[-1]
        if not sigma > 0:
            return np.inf
        th = self.theta(psi)
        if th is None:
            return np.inf
        f = self.crit.factor(th)
        if f is None:
            return np.inf
        return f.logdet_Z + self.n * (_LOG2PI + 2 * np.log(sigma)) + f.r2 / sigma**2 - self.slw


def corr_chol(R: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of a correlation matrix, allowing semidefinite
    ones (|ρ| = 1); None when R is not positive semidefinite."""
    q = R.shape[0]
    if q == 1:
        return np.ones((1, 1))
    if q == 2:
        r = R[1, 0]
        if abs(r) > 1:
            return None
        return np.array([[1.0, 0.0], [r, np.sqrt(max(1 - r * r, 0.0))]])
    L = np.zeros_like(R)
    for j in range(q):  # q columns of one term
        d = R[j, j] - L[j, :j] @ L[j, :j]
        if d < -1e-12:
            return None
        L[j, j] = np.sqrt(max(d, 0.0))
        for i in range(j + 1, q):
            s = R[i, j] - L[i, :j] @ L[j, :j]
            L[i, j] = s / L[j, j] if L[j, j] > 0 else 0.0
    return L
