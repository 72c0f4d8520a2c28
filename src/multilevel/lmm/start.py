"""A starting θ from the cross-products, by the method of moments (no pass
over the rows): for one random-effects term of any size (below), for
several scalar terms (:func:`moment_start_scalar`), and for several terms of
any size, each from its own levels (:func:`moment_start_terms`).

With β̂ the least-squares fit of y on X alone and r = y − Xβ̂, each level's
least-squares coefficients of r on its Z_i are b̂_i = (Z_iᵀZ_i)⁻¹ Z_iᵀr,
with Z_iᵀr = Z_iᵀ[X y] (−β̂, 1) from the cross-products, and σ² is
estimated by what those fits leave, s² = (‖r‖² − Σ_i b̂_iᵀZ_iᵀr)/(n − p − q·m)
over the m levels used (‖r‖²/(n − p) where few rows per level leave too few
degrees of freedom).  Under the model E[b̂_i b̂_iᵀ] ≈ Σ + σ² (Z_iᵀZ_i)⁻¹, so

    Σ/σ² ≈ mean_i(b̂_i b̂_iᵀ)/s² − mean_i (Z_iᵀZ_i)⁻¹,

over the levels whose Z_iᵀZ_i is well conditioned, each level weighted by
tr Z_iᵀZ_i: any fixed weights keep the estimate unbiased, and these let the
levels with many rows (precise b̂_i, small (Z_iᵀZ_i)⁻¹) outweigh the noisy
small ones (the Exam data, schools of 2 to 198 pupils: 28 → 21 evaluations;
HSB 12 → 11; sleepstudy, Oxboys, Orthodont and Early, balanced or nearly,
unchanged).  Its eigenvalues are
raised to a floor (a start inside the bounds) and θ is its Cholesky factor.
Any start is only a start: the search decides the optimum.  From the scaled
identity, a search on data with many rows per level spent a third of its
evaluations finding the scale of θ that this gives directly.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg.lapack import dgesv, dpotrf, dpotrs, dsyev, dtrtrs

from multilevel.compiled import kernel
from multilevel.covariance import Template
from multilevel.linalg.crossprod import CrossProducts

FLOOR = 1e-3  # smallest eigenvalue of the start's Σ/σ² (θ's scale is 1)


def moment_start(cp: CrossProducts, tmpl: Template) -> np.ndarray | None:
    """θ for one term (``cp`` with no other terms), or None where the moments
    do not give one (X rank deficient, no residual, under two usable levels)."""
    if cp.has_rest or len(cp.q) != 1:
        return None
    ols = _ols(cp)
    if ols is None:
        return None
    beta, rss, dof = ols
    moments = _term_moments(cp, np.append(-beta, 1.0), rss, dof, between=True)
    if moments is None:
        return None
    bb, Dinv_sum, wsum, s2 = moments
    return _theta(bb, Dinv_sum, wsum, rss / dof if s2 is None else s2, tmpl)


def moment_start_terms(cp: CrossProducts, tmpl: list[Template]) -> np.ndarray | None:
    """θ for several terms, some of more than one column: each term's
    moments as if it were the only one (its levels' least-squares b̂_i from
    its own diagonal blocks of ZᵀZ), with σ² the least residual variance any
    term's levels leave (the finest grouping's).  Each term's Σ then also
    holds the variation of the terms it is nested in or crossed with, a start
    above the optimum rather than the identity's arbitrary scale (egsingle's
    growth model: 31 → 23 evaluations; Chem97's (1 | school) + (gcsecnt | lea):
    55 → 30, and one more since the polish's last gradient is counted)."""
    if not cp.has_rest:
        return None
    ols = _ols(cp)
    if ols is None:
        return None
    beta, rss, dof = ols
    z = np.append(-beta, 1.0)
    moments = [_term_moments(one, z, rss, dof) for one in _one_term_views(cp)]
    if any(mo is None for mo in moments):
        return None
    s2s = [mo[3] for mo in moments if mo[3] is not None]
    s2 = min(s2s) if s2s else rss / dof
    thetas = [_theta(bb, Dinv, w, s2, t) for (bb, Dinv, w, _), t in zip(moments, tmpl, strict=True)]
    return None if any(t is None for t in thetas) else np.concatenate(thetas)


def _one_term_views(cp: CrossProducts) -> list[CrossProducts]:
    """Each term's levels alone: Z_kᵀZ_k's diagonal blocks and Z_kᵀ[X y]."""
    out = [
        CrossProducts(
            [cp.q[0]], [cp.nlevels[0]], cp.D1, cp.B1F, None, None, None, cp.AFF, cp.n, cp.p
        )
    ]
    m = cp.p + 1
    if cp.dense is not None:
        ARR = cp.dense[1]
    else:
        indptr, cols, vals = cp.ARR_csr64
        rows = np.repeat(np.arange(cp.Qr, dtype=np.int64), np.diff(indptr))
    for k in range(1, len(cp.q)):
        q, nl = cp.q[k], cp.nlevels[k]
        lo = int(cp.rest_offsets[k - 1])
        idx = lo + np.arange(nl * q).reshape(nl, q)
        if cp.dense is not None:
            D = ARR[idx[:, :, None], idx[:, None, :]]
        else:
            # the entries within one level's q columns
            keep = (rows >= lo) & (rows < lo + nl * q) & ((rows - lo) // q == (cols - lo) // q)
            D = np.zeros((nl, q, q))
            r, c = rows[keep] - lo, cols[keep] - lo
            D[r // q, r % q, c % q] = vals[keep]
        B = cp.ARF[lo : lo + nl * q].reshape(nl, q, m)
        out.append(CrossProducts([q], [nl], D, B, None, None, None, cp.AFF, cp.n, cp.p))
    return out


def _term_moments(
    cp: CrossProducts, z: np.ndarray, rss: float, dof: int, between: bool = False
) -> tuple[np.ndarray, np.ndarray, float, float | None] | None:
    """One term's Σ wᵢ b̂_i b̂_iᵀ, Σ wᵢ Dᵢ⁻¹, Σ wᵢ and the residual variance
    its levels leave (None where too few degrees of freedom are left for it);
    None under two usable levels.  ``between``: X's columns constant within
    the levels count as the ANOVA's between-level ones (one term only)."""
    used, bb, Dinv_sum, fitted, wsum = _level_moments(cp, z)
    if used < 2:
        return None
    # σ² from the residual left within the levels (s² also holds Σ's part)
    within = rss - fitted
    dof_within = dof - cp.q[0] * used
    k = _between_columns(cp) if between and cp.q[0] == 1 else 0
    if 0 < k < used:
        # X's columns that are z times a constant in each level fit part of
        # the levels' effects (their residuals' moments keep used - k degrees
        # of freedom, as an ANOVA's between-level mean square) and none of
        # the variation within levels: balanced one-way data then start at
        # the ANOVA estimate, which is REML's (nlme's Rail: 9 → 2 evaluations)
        bb = bb * (used / (used - k))
        dof_within += k
    s2 = within / dof_within if within > 0 and dof_within > 0.1 * dof else None
    return bb, Dinv_sum, wsum, s2


def _theta(
    bb: np.ndarray, Dinv_sum: np.ndarray, wsum: float, s2: float, tmpl: Template
) -> np.ndarray | None:
    """θ of Σ/σ² ≈ Σwᵢb̂ᵢb̂ᵢᵀ/(Σwᵢ s²) − ΣwᵢDᵢ⁻¹/Σwᵢ, its eigenvalues floored."""
    S = bb / (wsum * s2) - Dinv_sum / wsum
    if S.shape == (1, 1):  # Python floats: a scalar term's θ² is S itself
        t2 = float(S[0, 0])
        return np.array([math.sqrt(max(t2, FLOOR))]) if math.isfinite(t2) else None
    lam, U, info = dsyev(0.5 * (S + S.T))
    if info != 0 or not np.all(np.isfinite(lam)):
        return None
    S = (U * np.maximum(lam, FLOOR)) @ U.T
    T, info = dpotrf(0.5 * (S + S.T), lower=1, clean=1)
    return T[tmpl.rows, tmpl.cols] if info == 0 else None


def _between_columns(cp: CrossProducts) -> int:
    """The number of X's columns that are, in every level of one scalar
    term, a constant times its z: their residual sum of squares within the
    levels, Σ x² − Σᵢ (zᵢᵀx)²/zᵢᵀzᵢ, is zero to rounding (from the
    cross-products: X'X's diagonal, Z_iᵀX and Z_iᵀZ_i)."""
    p = cp.p
    if not p:
        return 0
    d = cp.D1[:, 0, 0]
    ok = d > 0
    B = cp.B1F[ok, 0, :p]
    total = np.diagonal(cp.AFF)[:p]
    within = total - (B * B).T @ (1.0 / d[ok])
    return int(np.count_nonzero(within <= 1e-10 * total))


def _level_moments(
    cp: CrossProducts, z: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray, float, float]:
    """Over the levels whose Dᵢ = Z_iᵀZ_i is well conditioned (smallest
    eigenvalue above 1e-8 of its trace), with Z_iᵀr = B_i z and b̂_i = Dᵢ⁻¹Z_iᵀr,
    each level weighted by wᵢ = tr Dᵢ: the number of such levels,
    Σ wᵢ b̂_i b̂_iᵀ, Σ wᵢ Dᵢ⁻¹, Σ b̂_iᵀZ_iᵀr and Σ wᵢ."""
    q, m, nlev = cp.q[0], cp.p + 1, cp.nlevels[0]
    fn = kernel("_kernels", "one_term_moments")
    if fn is not None:
        bb, Dinv = np.zeros((q, q)), np.zeros((q, q))
        D, B = (np.ascontiguousarray(a, dtype=float) for a in (cp.D1, cp.B1F))
        used, fitted, wsum = fn(D, B, np.ascontiguousarray(z, dtype=float), bb, Dinv, q, m, nlev)
        return used, bb, Dinv, fitted, wsum
    zr = cp.B1F @ z  # (levels, q): Z_iᵀ r
    D = cp.D1
    tr = np.einsum("nii->n", D)
    usable = _smallest_eigenvalue(D) > 1e-8 * np.maximum(tr, 1e-300)
    Dinv = _inverse(D[usable])
    b = np.einsum("nij,nj->ni", Dinv, zr[usable])
    fitted = float(np.einsum("ni,ni->", b, zr[usable]))
    w = tr[usable]
    bb = np.einsum("n,ni,nj->ij", w, b, b)
    return int(usable.sum()), bb, np.einsum("n,nij->ij", w, Dinv), fitted, float(w.sum())


def moment_start_scalar(cp: CrossProducts) -> np.ndarray | None:
    """θ for several scalar terms (nested or crossed) by matching moments
    (Henderson's first method, from the cross-products).

    With r = y − Xβ̂ and, per term k, the quadratic form Q_k = Σ_ℓ (z_ℓᵀr)²/d_ℓ
    over its levels (d_ℓ = z_ℓᵀz_ℓ; Q_k = rᵀP_k r, P_k the projection on the
    term's columns), E[rᵀPr] = tr(P(I − H)V(I − H)) with V = Σ_j σ²_j Z_jZ_jᵀ + σ²_e I.
    Taking H as the intercept's projection 11ᵀ/n (exact for intercept terms
    and an intercept-only X, a start otherwise):

        E Q_k = Σ_j σ²_j (Σ_ℓ ‖a_ℓ,j‖²/d_ℓ − ‖1ᵀZ_j‖²/n) + σ²_e (L_k − 1)
        E ‖r‖² = Σ_j σ²_j (tr Z_jᵀZ_j − ‖1ᵀZ_j‖²/n) + σ²_e (n − p)

    (a_ℓ,j the row of Z_kᵀZ_j for level ℓ, 1ᵀZ_j its column sums): K + 1
    linear equations in σ²_1 … σ²_K, σ²_e.  These weight the levels by their
    rows; unweighted means of the levels' coefficients, with the other terms'
    variation counted as noise, started Penicillin's plates at θ 0.2 against an
    optimum of 1.5.  Where the equations give no positive σ²_e, σ²_e is the
    residual variance left within the levels of the first term.  θ_k = σ_k/σ_e,
    at least √FLOOR.  None where X is rank deficient or there is no residual."""
    if not cp.has_rest or any(q != 1 for q in cp.q):
        return None
    ols = _ols(cp)
    if ols is None:
        return None
    beta, rss, dof = ols
    z = np.empty(cp.p + 1)
    z[:-1], z[-1] = -beta, 1.0
    K, n = len(cp.q), cp.n
    fn = kernel("_kernels", "scalar_moments")
    if fn is not None:
        S, rhs = np.zeros((K + 1, K + 1)), np.zeros(K + 1)
        A, R, term = cp.A1R_csr64, cp.ARR_csr64, cp.rest_term
        Q = cp.Qr
        d1 = np.ascontiguousarray(cp.D1[:, 0, 0], dtype=float)
        B1 = np.ascontiguousarray(cp.B1F[:, 0, :], dtype=float)
        ARF = np.ascontiguousarray(cp.ARF, dtype=float)
        fewest = fn(d1, B1, *A, *R, ARF, term, z, S, rhs, cp.nlevels[0], Q, cp.p + 1, K, float(n))
        if fewest < 2:
            return None
        S[K, K], rhs[K] = dof, rss
        _project_out_x(cp, S, K)
        return _variance_ratios(S, rhs, dof, rss, K)
    offs = np.asarray(cp.rest_offsets, dtype=np.int64)  # rest term k: offs[k-1]:offs[k]
    d1 = cp.D1[:, 0, 0]
    rrow, rcol, rval = _entries(cp.ARR)
    dR = np.bincount(rrow[rrow == rcol], weights=rval[rrow == rcol], minlength=cp.ARR.shape[0])
    zr1 = cp.B1F[:, 0, :] @ z
    zrR = cp.ARF @ z
    ok1 = d1 > 1e-12 * max(float(d1.max()), 1e-300)
    okR = dR > 1e-12 * max(float(dR.max()), 1e-300)
    inv1 = np.where(ok1, 1.0 / np.where(ok1, d1, 1.0), 0.0)
    invR = np.where(okR, 1.0 / np.where(okR, dR, 1.0), 0.0)
    termR = np.searchsorted(offs, np.arange(dR.size), side="right")  # 1 … K-1
    # S[k, j] = Σ a_ℓm²/d_ℓ over levels ℓ of k and m of j, from the nonzeros of
    # the first term's cross block and of the rest's block (numpy on their
    # entries: no sparse products, whose fixed cost dominates small models)
    S = np.zeros((K + 1, K + 1))
    S[0, 0] = float(d1[ok1].sum())
    arow, acol, aval = _entries(cp.A1R)
    a2 = aval * aval
    S[0, :K] += np.bincount(termR[acol], weights=a2 * inv1[arow], minlength=K)
    S[:K, 0] += np.bincount(termR[acol], weights=a2 * invR[acol], minlength=K)
    pair = termR[rrow] * K + termR[rcol]
    S[:K, :K] += np.bincount(pair, weights=rval * rval * invR[rrow], minlength=K * K).reshape(K, K)
    # 1ᵀZ_j: Z_jᵀZ₁ summed over the first term's levels (they partition the rows)
    colsum = np.concatenate([d1, np.bincount(acol, weights=aval, minlength=dR.size)])
    bounds = np.concatenate([[0], cp.nlevels[0] + offs])
    d = np.concatenate([d1, dR])
    for j in range(K):
        cj = slice(bounds[j], bounds[j + 1])
        common = float(colsum[cj] @ colsum[cj]) / n
        S[:K, j] -= common
        S[K, j] = float(d[cj].sum()) - common
    rhs = np.empty(K + 1)
    zr = np.concatenate([zr1, zrR])
    dinv = np.concatenate([inv1, invR])
    ok = np.concatenate([ok1, okR])
    for k in range(K):
        ck = slice(bounds[k], bounds[k + 1])
        if ok[ck].sum() < 2:
            return None
        rhs[k] = float(zr[ck] @ (zr[ck] * dinv[ck]))
        S[k, K] = float(ok[ck].sum()) - 1.0
    S[K, K], rhs[K] = dof, rss
    _project_out_x(cp, S, K)
    return _variance_ratios(S, rhs, dof, rss, K)


PROJECT_WORK = 4_000_000  # multiplications up to which X's projection is taken out


def _project_out_x(cp: CrossProducts, S: np.ndarray, K: int) -> None:
    """The moment equations' coefficients with the whole of X's projection H
    taken out, in place of the intercept's alone (for a small model, whose
    cross blocks are dense, and an X of more than one column).  With
    R = Zᵀ(I − H)Z = ZᵀZ − C G Cᵀ (C = ZᵀX, G = (XᵀX)⁻¹) and wₗ = 1/dₗ over
    the usable levels,

        S[k, j] = Σ_{ℓ∈k, m∈j} wₗ R_ℓm²,   S[k, K] = Σ_{ℓ∈k} (1 − wₗ (CGCᵀ)_ℓℓ),
        S[K, j] = Σ_{m∈j} R_mm

    (tr P_k(I − H)Z_jZ_jᵀ(I − H), tr P_k(I − H) and tr Z_jᵀ(I − H)Z_j, P_k the
    projection on term k's columns).  Balanced data with covariates constant
    within levels (nlme's Machines, Oats) then start at the ANOVA estimates,
    REML's when positive."""
    p = cp.p
    if p < 2 or cp.dense is None:
        return
    A1R, ARR = cp.dense
    n1, Qr = cp.nlevels[0], cp.Qr
    Q = float(n1 + Qr)
    fn = kernel("_kernels", "project_moments")
    # compiled: the h² part through each term's Σ WWᵀ (Q p²), the rest over
    # the cross blocks' entries; numpy forms the whole Q x Q matrix R
    work = Q * p * p + (n1 + Qr) * Qr * p if fn is not None else Q * Q * p
    if work > PROJECT_WORK:
        return
    L, info = dpotrf(cp.AFF[:p, :p], lower=1)
    if info != 0:
        return
    if fn is not None:
        starts = np.append(0, n1 + np.asarray(cp.rest_offsets, dtype=np.int64))
        fn(
            np.ascontiguousarray(cp.D1[:, 0, 0]), np.ascontiguousarray(cp.B1F[:, 0, :]),
            A1R, ARR, np.ascontiguousarray(cp.ARF), np.ascontiguousarray(L), starts, S,
            n1, Qr, p + 1, p, K,
        )  # fmt: skip
        return
    C = np.concatenate([cp.B1F[:, 0, :p], cp.ARF[:, :p]])  # ZᵀX, every term's levels
    W, info = dtrtrs(L, C.T, lower=1)  # L⁻¹Cᵀ: C G Cᵀ = WᵀW
    if info != 0:
        return
    R = -(W.T @ W)
    R[:n1, :n1] += np.diag(cp.D1[:, 0, 0])
    R[:n1, n1:] += A1R
    R[n1:, :n1] += A1R.T
    R[n1:, n1:] += ARR
    d = np.concatenate([cp.D1[:, 0, 0], np.diagonal(ARR)])
    starts = np.concatenate([[0], n1 + np.asarray(cp.rest_offsets[:-1], dtype=np.int64)])
    sizes = np.diff(np.append(starts, d.size))
    big = np.repeat(np.maximum.reduceat(d, starts), sizes)
    ok = d > 1e-12 * np.maximum(big, 1e-300)
    w = np.where(ok, 1.0 / np.where(ok, d, 1.0), 0.0)
    per_level = np.add.reduceat(w[:, None] * (R * R), starts, axis=0)
    S[:K, :K] = np.add.reduceat(per_level, starts, axis=1)
    hdiag = d - np.diagonal(R)  # (CGCᵀ)_ℓℓ
    S[:K, K] = np.add.reduceat(ok - w * hdiag, starts)
    S[K, :K] = np.add.reduceat(np.diagonal(R), starts)


def _variance_ratios(S: np.ndarray, rhs: np.ndarray, dof: float, rss: float, K: int) -> np.ndarray:
    """θ_k = σ_k/σ_e from the moment equations S v = rhs (v = σ²_1 … σ²_K, σ²_e)."""
    # LAPACK directly: numpy's wrapper costs several times this small solve
    _, _, v, info = dgesv(S, rhs)
    if info != 0:  # exactly singular
        v = np.full(K + 1, np.nan)
    # Python floats: a handful of numbers, where each numpy call costs more
    if not (all(math.isfinite(x) for x in v.tolist()) and v[K] > 0):
        # σ²_e from the residual within the first term's levels, each term's
        # σ² from its own equation
        free = dof - S[0, K]
        s2e = (rss - rhs[0]) / free if free > 0 and rss > rhs[0] else rss / dof
        own = np.diag(S)[:K]  # positive for a term with two levels carrying rows
        var = (rhs[:K] - s2e * S[:K, K]) / np.where(own > 0, own, np.inf)
        v = np.append(var, s2e)
    return np.sqrt(np.maximum(v[:K] / v[K], FLOOR))


def _entries(M) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and values of a sparse matrix's stored entries (read off
    CSR arrays directly: a COO conversion costs more than a small model's start)."""
    if M.format == "csr":
        rows = np.repeat(np.arange(M.shape[0]), np.diff(M.indptr))
        return rows, M.indices, M.data
    C = M.tocoo()
    return C.row, C.col, C.data


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
