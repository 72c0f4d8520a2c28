"""The centred and scaled basis an LMM is optimised in.

The model is unchanged by a change of origin or units of a covariate or of
the response, but its numbers are not: a timestamp column (mean/sd ~ 1e5) or
a covariate in units of 1e-8 makes XᵀX and ZᵀZ ill-conditioned and θ tiny or
huge, and an optimiser with absolute tolerances stops in the wrong place.  So
the engine works on

    X = X̃ N_X,   y = c ỹ + a,   Z_k = Z̃_k V_k,

where X̃'s non-intercept columns are centred (when X has an intercept) and
scaled to unit standard deviation, ỹ is centred and scaled likewise, and each
random-effects term's columns are scaled to unit root mean square and, in a
correlated term with an intercept column, centred (a shift of a slope's origin
then moves the intercept's variance and covariance, not the model).  N_X and
V_k are upper triangular.  With Λ̃_k = V_k Λ_k the criterion and the fitted
values are the same; θ maps by re-triangularising T_k T_kᵀ = V_k⁻¹ T̃_k T̃_kᵀ V_k⁻ᵀ
(θ is relative to σ, so c does not enter).  Cross-products are accumulated
once, in the centred basis (no cancellation), and mapped to the original
basis by these small triangular matrices.

Uncorrelated terms (``(x || g)``: one scalar term per column) and terms
without an intercept column are scaled but not centred: there a shift of the
covariate's origin changes the model itself (as in lme4), and only a change of
units is invariant.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg.lapack import dtrtrs

from multilevel.linalg.affine import affine, lower_factor, ones_column, rms, solve_small
from multilevel.linalg.crossprod import CrossProducts
from multilevel.lmm.criterion import Factorization, ProfiledCriterion


@dataclass
class Basis:
    """The maps between the original and the centred-scaled problem."""

    NF: np.ndarray  # (p+1, p+1): [X y] = [X̃ ỹ] NF
    V: list[np.ndarray]  # per term (q_k, q_k): Z_k = Z̃_k V_k

    @classmethod
    def of(
        cls,
        Zs: list[np.ndarray],
        X: np.ndarray,
        y: np.ndarray,
        ones: tuple[int | None, list[int | None]] | None = None,
    ) -> Basis:
        """The basis from the rows at hand.  ``ones`` gives the intercept
        columns of X and of each Z (None: found in the rows), for data seen a
        chunk at a time, where a column that is 1 on the first chunk's rows
        need not be 1 on every row."""
        x_ones, z_ones = ("detect", ["detect"] * len(Zs)) if ones is None else ones
        NX = affine(X, center=True, ones=x_ones)
        base = ones_column(X) if x_ones == "detect" else x_ones
        p = X.shape[1]
        NF = np.zeros((p + 1, p + 1))
        NF[:p, :p] = NX
        with np.errstate(invalid="ignore"):
            yshift = float(y.sum()) / y.size if base is not None and y.size else 0.0
            yscale = rms(y - yshift)
        if not np.isfinite(yscale) or yscale == 0.0 or not np.isfinite(yshift):
            yshift, yscale = 0.0, 1.0
        NF[p, p] = yscale
        if yshift:
            NF[base, p] = yshift
        V = [affine(Z, center=Z.shape[1] > 1, ones=o) for Z, o in zip(Zs, z_ones, strict=True)]
        return cls(NF, V)

    def drop_x_columns(self, keep: np.ndarray) -> Basis:
        """The basis without the X columns not in ``keep`` (aliased ones; the
        intercept, first, is never among them)."""
        k = np.append(np.asarray(keep, dtype=bool), True)
        return Basis(self.NF[np.ix_(k, k)], self.V)

    # -- θ ------------------------------------------------------------------------------
    def theta_to_original(self, T_scaled: list[np.ndarray]) -> list[np.ndarray]:
        return [
            lower_factor(solve_small(V, T, lower=False))
            for V, T in zip(self.V, T_scaled, strict=True)
        ]

    def theta_to_scaled(self, T: list[np.ndarray]) -> list[np.ndarray]:
        return [lower_factor(V @ Tk) for V, Tk in zip(self.V, T, strict=True)]

    # -- cross-products -----------------------------------------------------------------
    def original_cross_products(self, cp: CrossProducts) -> CrossProducts:
        """The cross-products of [Z X y] from those of [Z̃ X̃ ỹ]: blocks
        multiplied by the per-term V_k and by N_F (no pass over the rows)."""
        return _map_cross_products(cp, self.V, self.NF)


def _map_cross_products(cp: CrossProducts, Vs: list[np.ndarray], NF: np.ndarray) -> CrossProducts:
    """Cross-products of [Z₁V₁ … Z_K V_K, [X y] N_F] from those of [Z X y]."""
    V1 = Vs[0]
    D1 = np.einsum("ai,nab,bj->nij", V1, cp.D1, V1, optimize=True)
    B1F = np.einsum("ai,nab,bj->nij", V1, cp.B1F, NF, optimize=True)
    AFF = NF.T @ cp.AFF @ NF
    A1R = ARR = ARF = None
    if cp.A1R is not None:
        K1 = sp.kron(sp.identity(cp.nlevels[0]), V1, format="csr")
        KR = sp.block_diag(
            [
                sp.kron(sp.identity(n), V, format="csr")
                for n, V in zip(cp.nlevels[1:], Vs[1:], strict=True)
            ],
            format="csr",
        )
        A1R = (K1.T @ cp.A1R @ KR).tocsr()
        ARR = (KR.T @ cp.ARR @ KR).tocsr()
        ARF = KR.T @ cp.ARF @ NF
    return CrossProducts(cp.q, cp.nlevels, D1, B1F, A1R, ARR, ARF, AFF, cp.n, cp.p)


class ScaledCriterion:
    """The profiled criterion of the original problem, evaluated in the
    centred and scaled basis and mapped back (same interface as
    :class:`multilevel.lmm.criterion.ProfiledCriterion`, θ in original terms).

    factor(θ) factors the scaled problem at the θ̃ that gives the same model,
    then maps: log|L_Z|² is unchanged, log|R_X|² gains 2 log|det N_X|, log r²
    gains 2 log c, the [X y] factor is N_Fᵀ L̃_FF; β = N_X⁻¹(c β̃ + a e₀); the
    random effects b/σ = V⁻¹ b̃/σ̃ and their conditional covariances
    V⁻¹ C̃ V⁻ᵀ.  No step loses digits to a covariate's or the response's origin
    or units."""

    def __init__(self, scaled: Any, basis: Basis, tmpl: list):
        self.scaled = scaled
        self.basis = basis
        self.tmpl = tmpl
        self.reml = scaled.reml
        self.sum_log_w = scaled.sum_log_w
        self.n, self.p = scaled.n, scaled.p
        self._tidx = [(t.rows, t.cols, t.offset, t.size) for t in tmpl]
        # (θ, θ̃) at the optimum, set by the estimation that found it
        self.optimum: tuple[np.ndarray, np.ndarray] | None = None
        NF = basis.NF
        p = self.p
        self._log_c = float(np.log(NF[p, p]))
        self._c2 = float(NF[p, p]) * float(NF[p, p])
        self._logdet_NX = float(2.0 * np.log(NF.diagonal()[:p]).sum())

    templates = ProfiledCriterion.templates
    value = ProfiledCriterion.value

    def criterion_shift(self, reml: bool) -> float:
        """The original problem's criterion less the scaled one's: 2(n − p) log c
        + log|det N_X|² for REML, 2n log c for ML."""
        if reml:
            return 2.0 * (self.n - self.p) * self._log_c + self._logdet_NX
        return 2.0 * self.n * self._log_c

    @property
    def has_gradient(self) -> bool:
        return False

    @cached_property
    def cp(self) -> CrossProducts:
        """The original problem's cross-products (for Kenward-Roger)."""
        return self.basis.original_cross_products(self.scaled.cp)

    def to_scaled(self, theta: np.ndarray) -> np.ndarray:
        known = self.optimum
        if known is not None and np.array_equal(theta, known[0]):
            return known[1]  # the search's own θ̃: no round trip through the maps
        T = self.basis.theta_to_scaled(self.templates(theta))
        return np.concatenate([Tk[t.rows, t.cols] for Tk, t in zip(T, self.tmpl, strict=True)])

    def factor(self, theta: np.ndarray, keep: bool = False) -> Factorization | None:
        theta = np.asarray(theta, dtype=float)
        fs = self.scaled.factor(self.to_scaled(theta), keep)
        if fs is None:
            return None
        LFF = self.basis.NF.T @ fs.LFF
        # Python floats: r² itself may not be representable, and their
        # products overflow to inf or underflow to 0 without a warning
        r2 = float(fs.r2) * self._c2
        f = Factorization(
            theta,
            self.templates(theta),
            fs.L1,
            fs.W,
            fs.C1F,
            fs.rest,
            LFF,
            fs.logdet_Z,
            fs.logdet_X + self._logdet_NX,
            r2,
            fs.log_r2 + 2.0 * self._log_c,
        )
        f.scaled = fs  # the scaled factorization behind it
        return f

    def __call__(self, theta: np.ndarray) -> float:
        f = self.factor(np.asarray(theta, dtype=float))
        return np.inf if f is None else self.value(f)

    def value_and_gradient(self, theta: np.ndarray):  # pragma: no cover - has_gradient False
        raise NotImplementedError("optimise in the scaled basis (multilevel.lmm.estimate)")

    def _relative_maps(self, f: Factorization) -> list[np.ndarray]:
        """Per term, the q x q map M from ũ to the u of the original templates,
        up to the response's scale: T M ũ = V⁻¹ T̃ ũ (least squares where T is
        singular: the same b)."""
        out = []
        for T, V, Ts in zip(f.T, self.basis.V, f.scaled.T, strict=True):
            VTs = solve_small(V, Ts, lower=False)  # V is upper triangular
            if (T.diagonal() > 0).all():
                out.append(solve_small(T, VTs, lower=True))
            else:
                out.append(np.linalg.pinv(T) @ VTs)
        return out

    def solve(self, f: Factorization) -> tuple[np.ndarray, list[np.ndarray]]:
        beta_s, us = self.scaled.solve(f.scaled)
        p, NF = self.p, self.basis.NF
        c = NF[p, p]
        rhs = c * beta_s + NF[:p, p]  # a e₀ sits in the intercept's row
        # N_X is upper triangular: LAPACK's triangular solve directly
        beta, info = dtrtrs(NF[:p, :p], rhs, lower=0)
        if info != 0:
            beta = np.linalg.solve(NF[:p, :p], rhs)
        # u is in the response's units: ũ in ỹ's, so c converts
        return beta, [c * u @ M.T for u, M in zip(us, self._relative_maps(f), strict=True)]

    def conditional_variances(self, f: Factorization) -> list[np.ndarray]:
        out = []
        for C, V in zip(self.scaled.conditional_variances(f.scaled), self.basis.V, strict=True):
            Vinv = np.linalg.inv(V)
            out.append(np.einsum("ia,nab,jb->nij", Vinv, C, Vinv, optimize=True))
        return out
