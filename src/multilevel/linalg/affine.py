"""Centring and scaling of columns as an exact linear map: M = M̃ N with N
upper triangular (a shift on the all-ones column, a scale on the diagonal),
so that estimates in the centred-scaled basis map back exactly.  Used by the
LMM's basis (:mod:`multilevel.lmm.basis`) and the GLMM's fixed effects."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla
from scipy.linalg.blas import dnrm2
from scipy.linalg.lapack import dgeqrf, dtrtri, dtrtrs


def rms(v: np.ndarray) -> float:
    """Root mean square without over- or underflow (1e±200 units): BLAS's
    scaled Euclidean norm over √n (a sum of squares would overflow there,
    and guarding it costs more than the norm on a small model)."""
    if not v.size:
        return 0.0
    if v.ndim != 1 or v.dtype != np.float64:
        v = np.asarray(v, dtype=float).reshape(-1)
    return float(dnrm2(v)) / math.sqrt(v.size)


def is_ones(col: np.ndarray) -> bool:
    return bool(col.size) and bool(np.all(col == 1.0))


SAMPLE_ROWS = 20_000  # rows the shifts and scales are estimated from
MATMUL_COLUMNS = 32  # up to this many columns the map is applied as a product
FEW_COLUMNS = 8  # up to this many, shifts and scales are found column by column


def _column_rms(S: np.ndarray) -> np.ndarray:
    """Root mean square of each column without over- or underflow: directly
    where the sums of squares are comfortably representable, else after
    dividing each column by its largest magnitude."""
    n = S.shape[0]
    if not n:
        return np.zeros(S.shape[1])
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        ss = np.einsum("ij,ij->j", S, S)
        if np.all((ss > 1e-250) & (ss < 1e250)):
            return np.sqrt(ss / n)
        big = np.max(np.abs(S), axis=0)
        safe = np.where(np.isfinite(big) & (big > 0), big, 1.0)
        return big * np.sqrt(np.mean((S / safe) ** 2, axis=0))


def _sample(M: np.ndarray) -> np.ndarray:
    """At most SAMPLE_ROWS evenly spaced rows, column-major (columnwise
    reductions are several times faster so)."""
    n = M.shape[0]
    return np.asfortranarray(M[:: max(1, n // SAMPLE_ROWS)] if n else M)


def ones_column(M: np.ndarray, S: np.ndarray | None = None) -> int | None:
    """The first column of M that is 1 on every row (candidates from the
    sampled rows S, confirmed on all), or None."""
    if not M.shape[0] or not M.shape[1]:
        return None
    S = _sample(M) if S is None else S
    for j in np.flatnonzero((S == 1.0).all(axis=0)):
        if is_ones(M[:, j]):
            return int(j)
    return None


def affine(M: np.ndarray, center: bool, ones: int | None | str = "detect") -> np.ndarray:
    """Upper-triangular N with M = M̃ N: non-constant columns centred on the
    first all-ones column (when ``center`` and there is one) and scaled to
    unit root mean square (unit standard deviation when centred).
    ``ones`` names that column when the caller knows it (an intercept, for
    rows seen in part: data in chunks); by default it is found.

    Any such N is an exact change of basis, so the shifts and scales need only
    be right in magnitude: they are taken from at most SAMPLE_ROWS evenly
    spaced rows (the same result for the same data, whatever its size).  The
    all-ones column is confirmed on every row, so that :func:`apply_affine`
    subtracts the shifts as constants."""
    k = M.shape[1]
    N = np.eye(k)
    if k == 0:
        return N
    if k <= FEW_COLUMNS and ones != "detect" and M.shape[0]:
        return _affine_few(M, N, ones if center else None, ones)
    S = _sample(M)
    base = (ones_column(M, S) if ones == "detect" else ones) if center else None
    shift = np.zeros(k)
    with np.errstate(invalid="ignore", over="ignore"):
        if base is not None and S.shape[0]:
            shift[base + 1 :] = S[:, base + 1 :].mean(axis=0)
        scale = _column_rms(S - shift if base is not None else S)
    # a zero or non-finite column (and the base itself) is left as it is
    ok = np.isfinite(scale) & (scale > 0) & np.isfinite(shift)
    if base is not None:
        ok[base] = False
    idx = np.flatnonzero(ok)
    N[idx, idx] = scale[idx]
    if base is not None:
        N[base, idx] = shift[idx]
    return N


def _affine_few(M: np.ndarray, N: np.ndarray, base: int | None, ones: int | None) -> np.ndarray:
    """:func:`affine` for a few columns, one at a time: a column's sum and sum
    of squares are single BLAS calls, where the vectorised form's fixed costs
    dominate a small model's fit.  The all-ones column ``ones`` keeps scale 1
    (its root mean square): an intercept-only term needs no look at its rows."""
    cols = [j for j in range(M.shape[1]) if j != ones]
    if not cols:
        return N
    S = _sample(M)
    m = S.shape[0]
    for j in cols:
        col = S[:, j]
        shift = 0.0
        if base is not None and j > base:
            shift = float(col.sum()) / m
            if not math.isfinite(shift):
                continue
            col = col - shift
        scale = rms(col)
        if math.isfinite(scale) and scale > 0:
            N[j, j] = scale
            if shift:
                N[base, j] = shift
    return N


def affine_parts(N: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For N from :func:`affine`: the shifts and reciprocal scales with
    M̃ = (M − shifts)·(1/scales) column by column, or None where a reciprocal
    is not finite (then :func:`apply_affine` is the way)."""
    d = N.diagonal()
    with np.errstate(divide="ignore", over="ignore"):
        r = 1.0 / d
    if not np.all(np.isfinite(r)):
        return None
    return (N - np.diag(d)).sum(axis=0), r


def apply_affine(M: np.ndarray, N: np.ndarray) -> np.ndarray:
    """M̃ = M N⁻¹ for N from :func:`affine` (M): its shifts sit in the row of a
    column of ones, so M̃ is (M − shifts)/scales.  M itself when N = I."""
    k = M.shape[1]
    if k == 1:  # a scalar term's column: a scale only (the product below, written out)
        s = float(N[0, 0])
        if s == 1.0:
            return M
        r = 1.0 / s if s != 0.0 else math.inf
        with np.errstate(over="ignore", under="ignore"):
            return M * r if math.isfinite(r) else M / s
    d = N.diagonal()
    offdiag = N - np.diag(d)
    if not offdiag.any() and np.all(d == 1.0):
        return M
    shifts = offdiag.sum(axis=0)
    if k <= MATMUL_COLUMNS:
        # N⁻¹ = diag(1/d) with −shift/d in the row of ones: one product with
        # a small matrix (BLAS) is several times faster than any elementwise
        # form on a row-major array of a few columns; its rounding,
        # ~1e-16·|shift|/scale, is what subtracting the shift leaves too
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            Ninv = np.diag(1.0 / d) - offdiag / d
            if np.all(np.isfinite(Ninv)):
                return M @ Ninv
    out = np.empty(M.shape, dtype=float)
    # column by column: a row-broadcast over a few columns runs numpy's inner
    # loop a few elements long (several times slower on a million rows)
    with np.errstate(over="ignore", under="ignore"):
        for j in range(k):
            col = out[:, j]
            if shifts[j]:
                np.subtract(M[:, j], shifts[j], out=col)
                col /= d[j]
            else:
                np.divide(M[:, j], d[j], out=col)
    return out


def triangular_solve(
    A: np.ndarray, B: np.ndarray, lower: bool = True, trans: bool = False
) -> np.ndarray:
    """A⁻¹B (``trans``: A⁻ᵀB) for a triangular A: LAPACK's ``dtrtrs``
    directly (scipy's and numpy's wrappers cost more than the small solves of
    a PIRLS iteration); scipy's solver, which says what is wrong, where it
    fails."""
    X, info = dtrtrs(A, B, lower=int(lower), trans=int(trans))
    if info == 0:
        return X
    return sla.solve_triangular(A, B, lower=lower, trans="T" if trans else "N")


def solve_small(A: np.ndarray, B: np.ndarray, lower: bool | None = None) -> np.ndarray:
    """A⁻¹B for a nonsingular A; 1 x 1 and 2 x 2 in closed form (Cramer's
    rule: the θ maps and random-effect maps of the common one- and two-column
    terms, where LAPACK's call overhead would dominate).  ``lower``: A is
    lower (True) or upper (False) triangular, solved as such by LAPACK
    directly (numpy's general solve costs several times more here)."""
    if A.shape == (1, 1):
        return B / A[0, 0]
    if A.shape == (2, 2):
        (a, b), (c, d) = A.tolist()  # Python floats: numpy scalars cost µs here
        det = a * d - b * c
        if det != 0.0 and math.isfinite(det):
            if B.shape == (2, 2):  # the θ maps: the product written out
                (e, f), (g, h) = B.tolist()
                return np.array(
                    [
                        [(d * e + -b * g) / det, (d * f + -b * h) / det],
                        [(-c * e + a * g) / det, (-c * f + a * h) / det],
                    ]
                )
            return np.array([[d, -b], [-c, a]]) @ B / det
    if lower is not None and A.shape[0] > 2:
        return triangular_solve(A, B, lower=lower)
    return np.linalg.solve(A, B)


def upper_inverse(A: np.ndarray) -> np.ndarray:
    """A⁻¹ for an upper-triangular A (the whitening and basis maps): LAPACK's
    triangular inverse directly, numpy's general inverse where that fails."""
    if not A.size:
        return A.copy()
    inv, info = dtrtri(A, lower=0)
    if info == 0 and np.isfinite(inv).all():
        return inv
    return np.linalg.inv(A)


def lower_factor(M: np.ndarray) -> np.ndarray:
    """The lower-triangular L with nonnegative diagonal and L Lᵀ = M Mᵀ: the
    transpose of R in a QR factorization of Mᵀ (also for singular M); one
    Givens rotation for the common 2 x 2 case (LAPACK's call overhead would
    dominate the fit's optimisation log)."""
    q = M.shape[0]
    if q == 1:
        return np.abs(M)
    if q == 2:
        (m00, m01), (m10, m11) = M.tolist()  # Python floats: numpy scalars cost µs here
        r = math.hypot(m00, m01)
        c, s = (m00 / r, m01 / r) if r > 0 else (1.0, 0.0)
        l21 = m10 * c + m11 * s
        l22 = -m10 * s + m11 * c
        return np.array([[r, 0.0], [l21, abs(l22)]])
    # LAPACK's QR directly (numpy's wrapper costs several times more here)
    qr, _, _, info = dgeqrf(np.array(M.T, order="F"))
    R = np.triu(qr) if info == 0 else np.linalg.qr(M.T, mode="r")
    L = R.T
    signs = np.where(np.diag(L) < 0, -1.0, 1.0)
    return L * signs[None, :]
