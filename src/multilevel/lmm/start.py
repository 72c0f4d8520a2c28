"""A starting θ from the cross-products, by the method of moments (no pass
over the rows): for one random-effects term of any size (below), and for
several scalar terms (:func:`moment_start_scalar`).

With β̂ the least-squares fit of y on X alone and r = y − Xβ̂, each level's
least-squares coefficients of r on its Z_i are b̂_i = (Z_iᵀZ_i)⁻¹ Z_iᵀr,
with Z_iᵀr = Z_iᵀ[X y] (−β̂, 1) from the cross-products, and σ² is
estimated by what those fits leave, s² = (‖r‖² − Σ_i b̂_iᵀZ_iᵀr)/(n − p − q·m)
over the m levels used (‖r‖²/(n − p) where few rows per level leave too few
degrees of freedom).  Under the model E[b̂_i b̂_iᵀ] ≈ Σ + σ² (Z_iᵀZ_i)⁻¹, so

    Σ/σ² ≈ mean_i(b̂_i b̂_iᵀ)/s² − mean_i (Z_iᵀZ_i)⁻¹,

over the levels whose Z_iᵀZ_i is well conditioned; its eigenvalues are
raised to a floor (a start inside the bounds) and θ is its Cholesky factor.
Any start is only a start: the search decides the optimum.  From the scaled
identity, a search on data with many rows per level spent a third of its
evaluations finding the scale of θ that this gives directly.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.lapack import dpotrf, dpotrs

from multilevel.covariance import Template
from multilevel.linalg.crossprod import CrossProducts

FLOOR = 1e-3  # smallest eigenvalue of the start's Σ/σ² (θ's scale is 1)


def moment_start(cp: CrossProducts, tmpl: Template) -> np.ndarray | None:
    """θ for one term (``cp`` with no other terms), or None where the moments
    do not give one (X rank deficient, no residual, under two usable levels)."""
    if cp.A1R is not None or len(cp.q) != 1:
        return None
    ols = _ols(cp)
    if ols is None:
        return None
    beta, rss, dof = ols
    s2 = rss / dof
    zr = cp.B1F @ np.append(-beta, 1.0)  # (levels, q): Z_iᵀ r
    D = cp.D1
    usable = _smallest_eigenvalue(D) > 1e-8 * np.maximum(np.einsum("nii->n", D), 1e-300)
    if usable.sum() < 2:
        return None
    Dinv = _inverse(D[usable])
    b = np.einsum("nij,nj->ni", Dinv, zr[usable])
    # σ² from the residual left within the levels (s² also holds Σ's part)
    within = rss - float(np.einsum("ni,ni->", b, zr[usable]))
    dof_within = dof - cp.q[0] * int(usable.sum())
    if within > 0 and dof_within > 0.1 * dof:
        s2 = within / dof_within
    S = (b.T @ b) / (b.shape[0] * s2) - Dinv.mean(axis=0)
    lam, U = np.linalg.eigh(0.5 * (S + S.T))
    if not np.all(np.isfinite(lam)):
        return None
    S = (U * np.maximum(lam, FLOOR)) @ U.T
    T, info = dpotrf(0.5 * (S + S.T), lower=1, clean=1)
    return T[tmpl.rows, tmpl.cols] if info == 0 else None


def moment_start_scalar(cp: CrossProducts) -> np.ndarray | None:
    """θ for several scalar terms (nested or crossed), each by the one-term
    moments with the others' variation left in the noise: b̂_ℓ = z_ℓᵀr / z_ℓᵀz_ℓ
    per level, σ²_k ≈ mean(b̂²) − s²·mean(1/z_ℓᵀz_ℓ) with s² = ‖r‖²/(n − p), then
    σ²_e = s² − Σσ²_k (at least 5% of s²) and θ_k = σ_k/σ_e (at least √FLOOR).
    None where X is rank deficient or there is no residual."""
    if cp.A1R is None or any(q != 1 for q in cp.q):
        return None
    ols = _ols(cp)
    if ols is None:
        return None
    beta, rss, dof = ols
    s2 = rss / dof
    z = np.append(-beta, 1.0)
    zz = [cp.D1[:, 0, 0]]
    zr = [cp.B1F[:, 0, :] @ z]
    diag = cp.ARR.diagonal()
    rzr = cp.ARF @ z
    offs = cp.rest_offsets
    for k in range(1, len(cp.q)):
        lo, hi = int(offs[k - 1]), int(offs[k])
        zz.append(diag[lo:hi])
        zr.append(rzr[lo:hi])
    var = []
    for d, r in zip(zz, zr, strict=True):
        ok = d > 1e-12 * max(float(d.max()), 1e-300)
        if ok.sum() < 2:
            return None
        b = r[ok] / d[ok]
        var.append(max(float(np.mean(b * b)) - s2 * float(np.mean(1.0 / d[ok])), 0.0))
    s2e = max(s2 - sum(var), 0.05 * s2)
    return np.sqrt(np.maximum(np.array(var) / s2e, FLOOR))


def _ols(cp: CrossProducts) -> tuple[np.ndarray, float, int] | None:
    """β̂, ‖r‖² and n − p of the least-squares fit of y on X alone, from the
    cross-products; None when X is rank deficient or nothing is left."""
    p = cp.p
    A = cp.AFF
    beta = np.zeros(0)
    if p:  # LAPACK directly: numpy's wrappers cost more than these small solves
        c, info = dpotrf(A[:p, :p], lower=1)
        if info != 0:
            return None
        beta, info = dpotrs(c, A[:p, p], lower=1)
    rss = float(A[p, p] - A[:p, p] @ beta)
    dof = cp.n - p
    if not (np.isfinite(rss) and rss > 0 and dof > 0):
        return None
    return beta, rss, dof


def _smallest_eigenvalue(D: np.ndarray) -> np.ndarray:
    """Per level; closed form for the common q ≤ 2 (LAPACK's per-call cost
    would be most of a small model's start)."""
    q = D.shape[1]
    if q == 1:
        return D[:, 0, 0]
    if q == 2:
        a, b, d = D[:, 0, 0], D[:, 0, 1], D[:, 1, 1]
        return 0.5 * (a + d) - np.sqrt(0.25 * (a - d) ** 2 + b * b)
    return np.linalg.eigvalsh(D)[:, 0]


def _inverse(D: np.ndarray) -> np.ndarray:
    q = D.shape[1]
    if q == 1:
        return 1.0 / D
    if q == 2:
        out = np.empty_like(D)
        out[:, 0, 0], out[:, 1, 1] = D[:, 1, 1], D[:, 0, 0]
        out[:, 0, 1], out[:, 1, 0] = -D[:, 0, 1], -D[:, 1, 0]
        out /= (D[:, 0, 0] * D[:, 1, 1] - D[:, 0, 1] * D[:, 1, 0])[:, None, None]
        return out
    return np.linalg.inv(D)
