"""Denominator degrees of freedom for tests of fixed effects in an LMM.

Satterthwaite (as lmerTest).  With φ = (θ, σ) the variance parameters and
V(φ) = σ² (R_XᵀR_X)⁻¹(θ) the covariance of β̂, a contrast Lᵀβ has

    ν = 2 (LᵀVL)² / (gᵀ A g),   g = ∂(LᵀV(φ)L)/∂φ,   A = 2 H⁻¹,

where H is the Hessian at φ̂ of the deviance −2ℓ(θ, σ) with β profiled out
but σ kept as a parameter:

    ML:    log|L_Z|² + n log(2πσ²) + r²(θ)/σ²
    REML:  log|L_Z|² + log|R_X|² + (n−p) log(2πσ²) + r²(θ)/σ²

The θ-derivatives are central differences of the blocked Cholesky factor
(Richardson-extrapolated); the σ-derivatives are exact.  A joint test of
several contrasts (rows of L) uses lmerTest's rule: the F statistic is split
along the eigenvectors of LVLᵀ, each gets its own ν_m, and
ν = 2E/(E − k) with E = Σ ν_m/(ν_m − 2).

Kenward–Roger (as pbkrtest, REML fits).  The marginal covariance is linear
in the variance parameters γ (every variance and covariance of every term,
and σ²): Σ = Σᵢ γᵢ Gᵢ with Gᵢ = Z (I ⊗ Eᵢ) Zᵀ and G_resid = I.  With
Φ = (XᵀΣ⁻¹X)⁻¹,

    Pᵢ  = XᵀΣ⁻¹GᵢΣ⁻¹X,    Qᵢⱼ = XᵀΣ⁻¹GᵢΣ⁻¹GⱼΣ⁻¹X,
    Iᵢⱼ = tr(Σ⁻¹GᵢΣ⁻¹Gⱼ) − 2 tr(ΦQᵢⱼ) + tr(ΦPᵢΦPⱼ),   W = 2 I⁻¹,
    Φ_A = Φ + 2 Φ [Σᵢⱼ Wᵢⱼ (Qᵢⱼ − PᵢΦPⱼ)] Φ,

and for a k-row L, with Θ = Lᵀ(LΦLᵀ)⁻¹L, A₁ = Σ Wᵢⱼ tr(ΘΦPᵢΦ) tr(ΘΦPⱼΦ),
A₂ = Σ Wᵢⱼ tr(ΘΦPᵢΦΘΦPⱼΦ), the Kenward–Roger (1997) moment matching gives
the denominator DF m and the scale λ of the F statistic.  No n x n matrix:
with V₀ = I + ZΨZᵀ (Σ = σ²V₀, Ψ = ΛΛᵀ) and the push-through identity
ZᵀV₀⁻¹ = (I − AN)Zᵀ, A = ZᵀZ, N = ΛM⁻¹Λᵀ, M = ΛᵀAΛ + I, every term above
is a product of cross-products ZᵀZ, ZᵀX, XᵀX with Q x Q matrices
(Q = number of random effects).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp

from multilevel.errors import ModelError
from multilevel.threads import one_blas_thread

if TYPE_CHECKING:
    from multilevel.lmm.results import LmerFit

DDF_METHODS = ("Satterthwaite", "Kenward-Roger", "none")

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(fit: LmerFit, key: str, make: Callable[[], Any]) -> Any:
    per_fit = _cache.setdefault(fit, {})
    if key not in per_fit:
        per_fit[key] = make()
    return per_fit[key]


# -- numerical derivatives --------------------------------------------------------------
def derivatives(
    fun: Callable[[np.ndarray], np.ndarray], x: np.ndarray, h: np.ndarray, hessian_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Jacobian of the vector function ``fun`` at x and the Hessians of its first
    ``hessian_rows`` components, by central differences with one Richardson step
    (truncation error O(h⁴))."""
    x = np.asarray(x, dtype=float)
    k = x.size
    f0 = np.asarray(fun(x), dtype=float)

    def at(step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        J = np.empty((f0.size, k))
        H = np.empty((hessian_rows, k, k))
        E = np.diag(step)
        plus = [np.asarray(fun(x + E[i])) for i in range(k)]
        minus = [np.asarray(fun(x - E[i])) for i in range(k)]
        for i in range(k):  # a handful of variance parameters
            J[:, i] = (plus[i] - minus[i]) / (2 * step[i])
            H[:, i, i] = (
                plus[i][:hessian_rows] - 2 * f0[:hessian_rows] + minus[i][:hessian_rows]
            ) / (step[i] ** 2)
            for j in range(i):
                d = (
                    fun(x + E[i] + E[j])[:hessian_rows]
                    - fun(x + E[i] - E[j])[:hessian_rows]
                    - fun(x - E[i] + E[j])[:hessian_rows]
                    + fun(x - E[i] - E[j])[:hessian_rows]
                ) / (4 * step[i] * step[j])
                H[:, i, j] = H[:, j, i] = d
        return J, H

    J1, H1 = at(h)
    J2, H2 = at(h / 2)
    return (4 * J2 - J1) / 3, (4 * H2 - H1) / 3


# -- Satterthwaite -----------------------------------------------------------------------
@dataclass
class VarparCovariance:
    """Derivatives of vcov(β̂) in φ = (θ, s) and the asymptotic covariance of φ̂,
    with σ measured in units of σ̂ (s = σ/σ̂, so s = 1 at the estimate and V is
    vcov(β̂)/σ̂²): the Satterthwaite DF are the same in any units, and these
    stay finite for responses of any magnitude (1e-200 or 1e200)."""

    phi: np.ndarray  # (θ, σ̂): the estimates in the user's units
    vcov: np.ndarray  # (p, p): vcov(β̂)/σ̂²
    jacobian: np.ndarray  # (k+1, p, p): ∂V/∂(θ, s)
    hessian: np.ndarray  # (k+1, k+1) of the deviance in (θ, s)
    A: np.ndarray  # 2 H⁻¹


def _theta_steps(theta: np.ndarray) -> np.ndarray:
    # second differences of a deviance of order n lose ε·n/h² to rounding: steps of
    # 1% keep that below 1e-8 while the Richardson step keeps truncation at O(h⁴)
    # (measured: DFs stable to 1e-7 for steps between 0.5% and 3%)
    return 1e-2 * np.maximum(np.abs(theta), 0.05)


def varpar_covariance(fit: LmerFit) -> VarparCovariance:
    """H, A = 2H⁻¹ and ∂V/∂φ at the estimates (see the module docstring)."""
    return _cached(fit, "varpar", lambda: _varpar_covariance(fit))


def _varpar_covariance(fit: LmerFit) -> VarparCovariance:
    crit = fit.criterion
    theta = np.asarray(fit.optinfo.theta, dtype=float)
    n, p = fit.nobs, len(fit.fixef)
    sigma = fit.sigma
    reml = fit.REML
    dof = n - p if reml else n

    log_s2 = 2.0 * np.log(sigma)

    def pieces(th: np.ndarray) -> np.ndarray:
        f = crit.factor(th)
        if f is None:
            raise ModelError("the variance parameters are not positive definite near the estimate")
        a = f.logdet_Z + (f.logdet_X if reml else 0.0)
        Linv = sla.solve_triangular(f.LFF[:p, :p], np.eye(p), lower=True, check_finite=False)
        # r²/σ̂² from its logarithm: r² itself overflows for responses in huge units
        return np.concatenate([[a, np.exp(f.log_r2 - log_s2)], (Linv.T @ Linv).ravel()])

    k = theta.size
    J, Hs = derivatives(pieces, theta, _theta_steps(theta), 2)
    base = pieces(theta)
    r2 = base[1]  # r²/σ̂²
    C = base[2:].reshape(p, p)
    g_r2 = J[1]
    # the deviance d(θ, σ) = a(θ) + dof·log σ² + r²(θ)/σ², in s = σ/σ̂ at s = 1
    H = np.empty((k + 1, k + 1))
    H[:k, :k] = Hs[0] + Hs[1]
    H[:k, k] = H[k, :k] = -2.0 * g_r2
    H[k, k] = -2.0 * dof + 6.0 * r2
    jac = np.empty((k + 1, p, p))
    jac[:k] = np.moveaxis(J[2:].reshape(p, p, k), -1, 0)
    jac[k] = 2.0 * C
    A = 2.0 * _pos_inverse(H)
    return VarparCovariance(np.append(theta, sigma), C, jac, H, A)


def _pos_inverse(H: np.ndarray) -> np.ndarray:
    """H⁻¹, or the inverse on the positive-curvature subspace when H is singular
    (a variance parameter on its boundary with a flat deviance)."""
    H = 0.5 * (H + H.T)
    w, U = np.linalg.eigh(H)
    tol = 1e-8 * max(np.abs(w).max(), 1.0)
    keep = w > tol
    return (U[:, keep] / w[keep]) @ U[:, keep].T


@one_blas_thread
def satterthwaite_df(fit: LmerFit, L: np.ndarray) -> np.ndarray:
    """Satterthwaite DF of each row of L (one contrast per row)."""
    vc = varpar_covariance(fit)
    L = np.atleast_2d(np.asarray(L, dtype=float))
    var = np.einsum("ri,ij,rj->r", L, vc.vcov, L)
    g = np.einsum("ri,kij,rj->rk", L, vc.jacobian, L)
    denom = np.einsum("rk,kl,rl->r", g, vc.A, g)
    with np.errstate(divide="ignore"):
        return 2.0 * var**2 / denom


def _joint_df(nu: np.ndarray) -> float:
    """lmerTest's combination of per-eigen-direction DFs into one F DF."""
    k = nu.size
    if k == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < 1e-8):
        return float(nu.mean())
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2)))
    return 2 * E / (E - k)


# -- Kenward-Roger -----------------------------------------------------------------------
@dataclass
class KenwardRoger:
    """Ingredients of the Kenward–Roger adjustment (absolute scale)."""

    vcov: np.ndarray  # Φ
    vcov_adj: np.ndarray  # Φ_A
    P: list[np.ndarray]
    W: np.ndarray
    names: list[str]  # the variance parameters γ


@one_blas_thread
def kenward_roger(fit: LmerFit) -> KenwardRoger:
    """Φ_A, Pᵢ and W at the REML estimates (see the module docstring)."""
    if not fit.REML:
        raise ModelError("the Kenward-Roger method needs a REML fit; refit with REML=True")
    return _cached(fit, "kr", lambda: _kenward_roger(fit))


def _full_ztz(cp) -> tuple[np.ndarray, np.ndarray]:
    """Dense ZᵀZ (Q x Q) and ZᵀX (Q x p) from the engine's blocked cross-products."""
    p = cp.p
    n1, q1 = cp.D1.shape[0], cp.D1.shape[1]
    Q1 = n1 * q1
    Qr = 0 if cp.ARR is None else cp.ARR.shape[0]
    Q = Q1 + Qr
    A = np.zeros((Q, Q))
    idx = np.arange(n1)[:, None, None] * q1
    rows = idx + np.arange(q1)[None, :, None]
    cols = idx + np.arange(q1)[None, None, :]
    A[rows, cols] = cp.D1
    AX = np.empty((Q, p))
    AX[:Q1] = cp.B1F[:, :, :p].reshape(Q1, p)
    if Qr:
        A1R = sp.csr_matrix(cp.A1R).toarray()
        A[:Q1, Q1:] = A1R
        A[Q1:, :Q1] = A1R.T
        A[Q1:, Q1:] = cp.ARR.toarray() if sp.issparse(cp.ARR) else cp.ARR
        AX[Q1:] = cp.ARF[:, :p]
    return A, AX


KR_MAX_Q = 6000  # several terms: dense Q x Q work beyond this is refused


class _LevelBlocks:
    """One random-effects term: every Q x Q matrix is block diagonal, one q x q
    block per level, so the blocks are stacked (n₁, q, q) and Gᵢ's pattern
    I ⊗ Eᵢ acts on each block as Eᵢ."""

    def __init__(self, E: list[np.ndarray]):
        self.E = E

    def dmul(self, i: int, M: np.ndarray) -> np.ndarray:
        return self.E[i] @ M

    def tr_pair(self, i: int, j: int, K: np.ndarray) -> float:
        # Σ_levels tr(Eᵢ K Eⱼ K)
        return float(np.sum((self.E[i] @ K) * np.swapaxes(self.E[j] @ K, 1, 2)))

    def tr_single(self, i: int, K2: np.ndarray) -> float:
        return float(np.sum(self.E[i][None] * np.swapaxes(K2, 1, 2)))


class _DenseBlock:
    """Several terms: one dense Q x Q block; Dᵢ = Σ e_x e_yᵀ over index pairs."""

    def __init__(self, sel: list[tuple[np.ndarray, np.ndarray]]):
        self.sel = sel

    def dmul(self, i: int, M: np.ndarray) -> np.ndarray:
        x, y = self.sel[i]
        out = np.zeros_like(M)
        out[:, x] = M[:, y]  # x has no repeats
        return out

    def tr_pair(self, i: int, j: int, K: np.ndarray) -> float:
        # tr(Dᵢ K Dⱼ K) = Σ K[yᵢ, xⱼ] K[yⱼ, xᵢ]
        (xi, yi), (xj, yj) = self.sel[i], self.sel[j]
        return float(np.sum(K[0][np.ix_(yi, xj)] * K[0][np.ix_(yj, xi)].T))

    def tr_single(self, i: int, K2: np.ndarray) -> float:
        x, y = self.sel[i]
        return float(np.sum(K2[0][y, x]))


def _kr_blocks(fit: LmerFit, fac) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, list[str]]:
    """(A, AX, Λ) as stacks of blocks (nb, s, ·), the Gᵢ operations and names."""
    cp = fit.criterion.cp
    p = cp.p
    names: list[str] = []
    pairs: list[tuple[int, int, int, int]] = []  # (term, offset, a, b)
    offset = 0
    for k, (r, nl, q) in enumerate(zip(fit.design.random, cp.nlevels, cp.q, strict=True)):
        for b in range(q):
            for a in range(b, q):
                pairs.append((k, offset, a, b))
                names.append(
                    f"var({r.cnames[a]}|{r.name})"
                    if a == b
                    else f"cov({r.cnames[a]},{r.cnames[b]}|{r.name})"
                )
        offset += nl * q
    if len(cp.q) == 1:
        q = cp.q[0]
        E = []
        for _, _, a, b in pairs:
            Ei = np.zeros((q, q))
            Ei[a, b] = Ei[b, a] = 1.0
            E.append(Ei)
        T = fac.T[0][None]
        return cp.D1, cp.B1F[:, :, :p], T, _LevelBlocks(E), names
    Q = offset
    if Q > KR_MAX_Q:
        raise ModelError(
            f"Kenward-Roger with several random-effects terms needs dense {Q} x {Q} "
            f"matrices (limit {KR_MAX_Q}); use ddf='Satterthwaite'"
        )
    A, AX = _full_ztz(cp)
    Lam = sp.block_diag(
        [sp.kron(sp.identity(nl), T) for nl, T in zip(cp.nlevels, fac.T, strict=True)],
        format="csr",
    ).toarray()
    sel = []
    for k, off, a, b in pairs:
        base = off + np.arange(cp.nlevels[k]) * cp.q[k]
        ia, ib = base + a, base + b
        sel.append((ia, ib) if a == b else (np.r_[ia, ib], np.r_[ib, ia]))
    return A[None], AX[None], Lam[None], _DenseBlock(sel), names


def _kenward_roger(fit: LmerFit) -> KenwardRoger:
    crit = fit.criterion
    cp = crit.cp
    n, p = fit.nobs, len(fit.fixef)
    fac = crit.factor(np.asarray(fit.optinfo.theta, dtype=float))
    s2 = fit.sigma**2
    A, AX, Lam, ops, names = _kr_blocks(fit, fac)
    XX = cp.AFF[:p, :p]

    def t(M: np.ndarray) -> np.ndarray:
        return np.swapaxes(M, -1, -2)

    def total(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Σ over blocks of XᵀY."""
        return np.einsum("bsp,bsr->pr", X, Y)

    s = A.shape[1]
    eye = np.eye(s)
    M = t(Lam) @ A @ Lam + eye
    N = Lam @ np.linalg.solve(M, np.broadcast_to(t(Lam), M.shape))  # ΛM⁻¹Λᵀ
    B = eye - A @ N  # (I + AΨ)⁻¹:  ZᵀV₀⁻¹ = B Zᵀ
    K = B @ A  # ZᵀV₀⁻¹Z
    K = 0.5 * (K + t(K))
    KX = B @ AX  # ZᵀV₀⁻¹X
    K2 = K @ t(B)  # ZᵀV₀⁻²Z
    K2X = B @ KX  # ZᵀV₀⁻²X
    c = N @ AX  # V₀⁻¹X = X − Zc
    XV1X = XX - total(AX, c)
    cAc = total(c, A @ c)
    XV2X = XV1X - total(c, AX) + cAc
    u = AX - A @ c  # Zᵀ V₀⁻¹X
    XV3X = XV2X - total(u, N @ u)
    NA = N @ A
    trV2 = n - 2 * np.trace(NA, axis1=1, axis2=2).sum() + np.sum(NA * t(NA))

    m = len(names)
    DKX = [ops.dmul(i, KX) for i in range(m)]
    tr = np.empty((m + 1, m + 1))
    P = [total(KX, DKX[i]) for i in range(m)] + [XV2X]
    Qm: dict[tuple[int, int], np.ndarray] = {}
    KDKX = [K @ d for d in DKX]
    for i in range(m):  # variance parameters: a handful
        for j in range(m):
            tr[i, j] = ops.tr_pair(i, j, K)
            Qm[i, j] = total(DKX[i], KDKX[j])
        tr[i, m] = tr[m, i] = ops.tr_single(i, K2)
        Qm[i, m] = total(DKX[i], K2X)
        Qm[m, i] = Qm[i, m].T
    tr[m, m] = trV2
    Qm[m, m] = XV3X
    # to the absolute scale: Σ⁻¹ = V₀⁻¹/σ²
    Phi = s2 * np.linalg.inv(XV1X)
    P = [Pi / s2**2 for Pi in P]
    Qm = {key: val / s2**3 for key, val in Qm.items()}
    tr = tr / s2**2
    I2 = np.empty((m + 1, m + 1))
    for i in range(m + 1):
        for j in range(m + 1):
            I2[i, j] = (
                tr[i, j] - 2 * np.sum(Phi * Qm[i, j].T) + np.sum((Phi @ P[i]) * (Phi @ P[j]).T)
            )
    I2 = 0.5 * (I2 + I2.T)
    W = 2.0 * np.linalg.inv(I2)
    U = np.zeros((p, p))
    for i in range(m + 1):
        for j in range(m + 1):
            U += W[i, j] * (Qm[i, j] - P[i] @ Phi @ P[j])
    Phi_A = Phi + 2 * Phi @ U @ Phi
    return KenwardRoger(Phi, 0.5 * (Phi_A + Phi_A.T), P, W, names + ["sigma2"])


def kr_ddf(kr: KenwardRoger, L: np.ndarray) -> tuple[float, float]:
    """Kenward–Roger denominator DF m and F scale λ for the rows of L (rank k)."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    Phi = kr.vcov
    k = np.linalg.matrix_rank(L)
    Theta = L.T @ np.linalg.pinv(L @ Phi @ L.T) @ L
    Ui = [Theta @ Phi @ Pi @ Phi for Pi in kr.P]
    t = np.array([np.trace(u) for u in Ui])
    A1 = float(t @ kr.W @ t)
    A2 = float(
        sum(kr.W[i, j] * np.sum(Ui[i] * Ui[j].T) for i in range(len(Ui)) for j in range(len(Ui)))
    )
    B = (A1 + 6 * A2) / (2 * k)
    g = ((k + 1) * A1 - (k + 4) * A2) / ((k + 2) * A2)
    den = 3 * k + 2 * (1 - g)
    c1, c2, c3 = g / den, (k - g) / den, (k + 2 - g) / den
    E = 1 / (1 - A2 / k)
    V = 2 / k * (1 + c1 * B) / ((1 - c2 * B) ** 2 * (1 - c3 * B))
    rho = V / (2 * E**2)
    m = 4 + (k + 2) / (k * rho - 1)
    lam = m / (E * (m - 2))
    return float(m), float(lam)


# -- tables -----------------------------------------------------------------------------
def _check_ddf(ddf: str) -> str:
    for method in DDF_METHODS:
        if ddf.lower().replace("_", "-") == method.lower():
            return method
    if ddf.lower() in ("kr", "kenward_roger", "kenwardroger"):
        return "Kenward-Roger"
    raise ModelError(f"ddf must be one of {DDF_METHODS}, not {ddf!r}")


def _contrast_matrix(fit: LmerFit, L: Any) -> tuple[np.ndarray, list[str]]:
    names = list(fit.fixef.index)
    p = len(names)

    def row(spec: Any) -> np.ndarray:
        if isinstance(spec, Mapping):
            out = np.zeros(p)
            for coef, w in spec.items():
                if coef not in names:
                    raise ModelError(f"{coef!r} is not a fixed effect; they are {names}")
                out[names.index(coef)] = float(w)
            return out
        if isinstance(spec, str):
            return row({spec: 1.0})
        v = np.asarray(spec, dtype=float).ravel()
        if v.size != p:
            raise ModelError(f"a contrast needs {p} weights (one per fixed effect), not {v.size}")
        return v

    if isinstance(L, Mapping):
        labels = [str(k) for k in L]
        return np.vstack([row(v) for v in L.values()]), labels
    if isinstance(L, pd.DataFrame):
        cols = list(L.columns)
        if set(cols) <= set(names):
            rows = [row(dict(zip(cols, r, strict=True))) for r in L.to_numpy()]
            return np.vstack(rows), [str(i) for i in L.index]
    if isinstance(L, pd.Series):
        return row(L.to_dict())[None], [str(L.name) if L.name is not None else "1"]
    if isinstance(L, str):
        return row(L)[None], [L]
    arr = np.asarray(L, dtype=float)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != p:
        raise ModelError(f"L must have {p} columns (one per fixed effect), not shape {arr.shape}")
    return arr, [str(i + 1) for i in range(arr.shape[0])]


@one_blas_thread
def contrast(
    fit: LmerFit,
    L: Any,
    ddf: str = "Satterthwaite",
    joint: bool = False,
) -> pd.DataFrame:
    """Tests of linear combinations Lβ of the fixed effects.

    ``L`` is a p-vector, a k x p matrix, a DataFrame whose columns are
    coefficient names, or a dict ``{label: {coef: weight}}`` (or
    ``{label: p-vector}``).  Each row gives Estimate, Std. Error, df, t value
    and Pr(>|t|) (``ddf="none"``: no df, no p).  ``joint=True`` gives one
    F test of all rows: F value, NumDF, DenDF, Pr(>F) (Kenward–Roger: the
    scaled statistic λF on the adjusted covariance Φ_A).
    """
    from scipy import stats  # scipy.stats costs 0.5 s to import: when used

    method = _check_ddf(ddf)
    Lm, labels = _contrast_matrix(fit, L)
    beta = fit.fixef.to_numpy()
    est = Lm @ beta
    if joint:
        return _joint_test(fit, Lm, est, method)
    if method == "Kenward-Roger":
        kr = kenward_roger(fit)
        V = kr.vcov_adj
        df = np.array([kr_ddf(kr, r)[0] for r in Lm])
    else:
        V = fit.vcov.to_numpy()
        df = satterthwaite_df(fit, Lm) if method == "Satterthwaite" else None
    se = np.sqrt(np.einsum("ri,ij,rj->r", Lm, V, Lm))
    t = est / se
    out = pd.DataFrame({"Estimate": est, "Std. Error": se}, index=labels)
    if df is not None:
        out["df"] = df
    out["t value"] = t
    if df is not None:
        out["Pr(>|t|)"] = 2 * stats.t.sf(np.abs(t), df)
    return out


def _joint_test(fit: LmerFit, Lm: np.ndarray, est: np.ndarray, method: str) -> pd.DataFrame:
    if method == "Kenward-Roger":
        kr = kenward_roger(fit)
        k = np.linalg.matrix_rank(Lm)
        m, lam = kr_ddf(kr, Lm)
        F = lam * float(est @ np.linalg.pinv(Lm @ kr.vcov_adj @ Lm.T) @ est) / k
        return _ftable(F, k, m)
    V = fit.vcov.to_numpy()
    VL = Lm @ V @ Lm.T
    w, U = np.linalg.eigh(VL)
    keep = w > 1e-10 * max(w.max(), 0.0)
    w, U = w[keep], U[:, keep]
    k = int(keep.sum())
    PL = U.T @ Lm  # rows: independent directions, LVLᵀ diagonal on them
    F = float(np.sum((PL @ fit.fixef.to_numpy()) ** 2 / w)) / k
    if method == "none":
        return _ftable(F, k, np.inf)
    nu = satterthwaite_df(fit, PL)
    return _ftable(F, k, _joint_df(nu))


def _ftable(F: float, k: int, den: float) -> pd.DataFrame:
    from scipy import stats  # scipy.stats costs 0.5 s to import: when used

    pval = stats.f.sf(F, k, den) if np.isfinite(den) else stats.chi2.sf(F * k, k)
    return pd.DataFrame(
        {"F value": [F], "NumDF": [k], "DenDF": [den], "Pr(>F)": [pval]}, index=["Lβ = 0"]
    )


@one_blas_thread
def coef_table(fit: LmerFit, ddf: str = "Satterthwaite") -> pd.DataFrame:
    """The fixed-effects table of ``summary`` with denominator DF and p-values.

    ``ddf="Satterthwaite"`` (lmerTest's default), ``"Kenward-Roger"`` (REML
    fits; standard errors from the adjusted covariance Φ_A) or ``"none"``
    (lme4: Estimate, Std. Error, t value).
    """
    names = list(fit.fixef.index)
    out = contrast(fit, np.eye(len(names)), ddf=ddf)
    out.index = names
    return out


def vcov_kr(fit: LmerFit) -> pd.DataFrame:
    """Kenward–Roger adjusted covariance Φ_A of β̂ (pbkrtest's ``vcovAdj``)."""
    names = list(fit.fixef.index)
    return pd.DataFrame(kenward_roger(fit).vcov_adj, index=names, columns=names)


__all__ = [
    "DDF_METHODS",
    "coef_table",
    "contrast",
    "kenward_roger",
    "kr_ddf",
    "satterthwaite_df",
    "varpar_covariance",
    "vcov_kr",
]
