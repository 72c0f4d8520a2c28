"""The centred and scaled basis a GLMM is fitted in, and the maps back.

As for an LMM (:mod:`multilevel.lmm.basis`), X = X̃N and Z_k = Z̃_k V_k with
N and V_k upper triangular (shifts on an intercept column, scales on the
diagonal; :mod:`multilevel.linalg.affine`).  PIRLS and the searches see only
X̃ and Z̃, so a timestamp or a covariate in units of 1e-8 changes nothing
but these small matrices.  The estimates map back exactly:

    β = N⁻¹β̃,   T_k = lower factor of V_k⁻¹T̃_k  (T_kT_kᵀ = V_k⁻¹T̃_kT̃_kᵀV_k⁻ᵀ),
    b_k = V_k⁻¹b̃_k,   Var(b_k | y) = V_k⁻¹ Var(b̃_k | y) V_k⁻ᵀ,

(each times s where the linear predictor has units, ``eta_scale``)

and the covariance of β̂ and the Hessian through the maps' Jacobians.  The
response is not scaled: a GLMM's response has its own units (counts,
proportions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg as sla

from multilevel.linalg.affine import affine, apply_affine, lower_factor, upper_inverse
from multilevel.optimize.record import OptRecord


@dataclass
class GlmmBasis:
    """X = X̃N/s, Z_k = Z̃_k V_k/s: s (``eta_scale``) is 1 unless the link's
    linear predictor has the units of the response (identity, inverse, 1/μ²,
    √μ), where it is a typical |η| so that β̃ and θ̃ are of order one."""

    N: np.ndarray
    Vs: list[np.ndarray]
    eta_scale: float = 1.0

    @classmethod
    def of(
        cls,
        X: np.ndarray,
        Zs: list[np.ndarray],
        ones: tuple[int | None, list[int | None]] | None = None,
        eta_scale: float = 1.0,
    ) -> GlmmBasis:
        """From the rows at hand; ``ones`` names the intercept columns of X and
        of each Z when the rows are only some of the data (a Dask partition's
        first rows), as for :meth:`multilevel.lmm.basis.Basis.of`."""
        x_ones, z_ones = ("detect", ["detect"] * len(Zs)) if ones is None else ones
        N = affine(X, center=True, ones=x_ones)
        Vs = [affine(Z, center=Z.shape[1] > 1, ones=o) for Z, o in zip(Zs, z_ones, strict=True)]
        return cls(N, Vs, float(eta_scale))

    def scaled_X(self, X: np.ndarray) -> np.ndarray:
        return self._times_scale(apply_affine(X, self.N))

    def scaled_Z(self, k: int, Z: np.ndarray) -> np.ndarray:
        return self._times_scale(apply_affine(Z, self.Vs[k]))

    def _times_scale(self, M: np.ndarray) -> np.ndarray:
        return M if self.eta_scale == 1.0 else M * self.eta_scale

    def drop_x_columns(self, keep: np.ndarray) -> GlmmBasis:
        """Without the X columns not in ``keep`` (aliased ones, never the intercept)."""
        keep = np.asarray(keep, dtype=bool)
        return GlmmBasis(self.N[np.ix_(keep, keep)], self.Vs, self.eta_scale)

    # -- estimates ------------------------------------------------------------------------
    def beta(self, beta_s: np.ndarray) -> np.ndarray:
        return sla.solve_triangular(
            self.N, self.eta_scale * beta_s, lower=False, check_finite=False
        )

    def b(self, b_s: list[np.ndarray]) -> list[np.ndarray]:
        """Per term (levels, q) rows b = sV⁻¹b̃."""
        s = self.eta_scale
        return [np.linalg.solve(V, s * bk.T).T for bk, V in zip(b_s, self.Vs, strict=True)]

    def condvar(self, C_s: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for Ck, V in zip(C_s, self.Vs, strict=True):
            Vinv = self.eta_scale * np.linalg.inv(V)
            out.append(np.einsum("ia,nab,jb->nij", Vinv, Ck, Vinv, optimize=True))
        return out

    def theta(self, theta_s: np.ndarray, tmpl: list, to_scaled: bool = False) -> np.ndarray:
        """θ̃ → θ (or θ → θ̃): T = lower factor of sV⁻¹T̃ (T̃ = lower factor of
        VT/s); entries after the templates' (a family's parameter) are unchanged."""
        out = []
        s = self.eta_scale
        for V, t in zip(self.Vs, tmpl, strict=True):
            if t.q == 1:  # a scalar term: |θ̃ s/v| (or |θ v/s|), no factorization
                v = float(V[0, 0])
                x = theta_s[t.offset : t.offset + 1]
                out.append(np.abs((v * x) / s) if to_scaled else np.abs(s * (x / v)))
                continue
            T = t.matrix(theta_s)
            M = (V @ T) / s if to_scaled else s * np.linalg.solve(V, T)
            out.append(lower_factor(M)[t.rows, t.cols])
        out.append(theta_s[sum(t.size for t in tmpl) :])
        return np.concatenate(out)

    def to_original(
        self,
        tmpl: list,
        theta_s: np.ndarray,
        vcov: np.ndarray,
        hess: np.ndarray | None,
        records: tuple[OptRecord | None, ...],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """θ̂, the covariance of β̂ and the Hessian in (θ, β) in the user's
        columns, from the engine's: vcov = N⁻¹ṼN⁻ᵀ; H = JᵀH̃J with J the
        Jacobian of (θ, β) ↦ (θ̃, β̃) (central differences of the θ map for a
        correlated term: a handful of parameters).  The records' estimates and
        gradients are rewritten, θ̃ kept as ``internal_theta``; their logs map
        when read."""
        nt = theta_s.size
        Ninv = upper_inverse(self.N)
        s = self.eta_scale
        vcov = (s * Ninv) @ vcov @ (s * Ninv.T)
        theta = self.theta(np.asarray(theta_s, dtype=float), tmpl)
        Jt = None
        if hess is not None:
            # off-diagonal entries of V all within allclose's absolute tolerance
            if all(V.shape[0] == 1 or np.all(np.abs(np.triu(V, 1)) <= 1e-8) for V in self.Vs):
                scales = [np.diag(V)[t.rows] / s for V, t in zip(self.Vs, tmpl, strict=True)]
                Jt = np.diag(np.concatenate(scales + [np.ones(nt - sum(t.size for t in tmpl))]))
            else:
                Jt = np.empty((nt, nt))
                for j in range(nt):
                    h = 1e-6 * max(1.0, abs(theta[j]))
                    e = np.zeros(nt)
                    e[j] = h
                    fwd = self.theta(theta + e, tmpl, to_scaled=True)
                    Jt[:, j] = (fwd - self.theta(theta - e, tmpl, to_scaled=True)) / (2 * h)
            J = np.eye(hess.shape[0])
            J[:nt, :nt] = Jt
            J[nt:, nt:] = self.N / s
            hess = J.T @ hess @ J
        log_map = _ToOriginal(self, tmpl, s * Ninv, nt)
        for rec in (r for r in records if r is not None):
            x = np.asarray(rec.theta, dtype=float)
            rec.internal_theta = x[:nt].copy()
            rec.theta = log_map(x)
            if x.size > nt:  # (θ, β): the gradient by the chain rule, β̃ = Nβ
                g = np.asarray(rec.gradient, dtype=float)
                gt = g[:nt] if Jt is None else Jt.T @ g[:nt]
                rec.gradient = np.concatenate([gt, self.N.T @ g[nt:] / s])
            rec.log_map = log_map if rec.log_map is None else _Then(rec.log_map, log_map)
        return theta, vcov, hess


@dataclass
class _ToOriginal:
    """A logged point (θ̃[, β̃]) in the user's terms; picklable, applied when
    the log is read (never per evaluation)."""

    basis: GlmmBasis
    tmpl: list
    Ninv: np.ndarray
    nt: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        theta = self.basis.theta(x[: self.nt], self.tmpl)
        if x.size == self.nt:
            return theta
        return np.concatenate([theta, self.Ninv @ x[self.nt :]])


@dataclass
class _Then:
    first: Any
    second: Any

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.second(self.first(x))
