"""Centring and scaling of columns as an exact linear map: M = M̃ N with N
upper triangular (a shift on the all-ones column, a scale on the diagonal),
so that estimates in the centred-scaled basis map back exactly.  Used by the
LMM's basis (:mod:`multilevel.lmm.basis`) and the GLMM's fixed effects."""

from __future__ import annotations

import numpy as np


def rms(v: np.ndarray) -> float:
    """Root mean square without over- or underflow (1e±200 units)."""
    big = float(np.max(np.abs(v))) if v.size else 0.0
    if not np.isfinite(big) or big == 0.0:
        return big
    return big * float(np.sqrt(np.mean((v / big) ** 2)))


def is_ones(col: np.ndarray) -> bool:
    return bool(col.size) and bool(np.all(col == 1.0))


SAMPLE_ROWS = 20_000  # rows the shifts and scales are estimated from


def affine(M: np.ndarray, center: bool) -> np.ndarray:
    """Upper-triangular N with M = M̃ N: non-constant columns centred on the
    first all-ones column (when ``center`` and there is one) and scaled to
    unit root mean square (unit standard deviation when centred).

    Any such N is an exact change of basis, so the shifts and scales need only
    be right in magnitude: they are taken from at most SAMPLE_ROWS evenly
    spaced rows (the same result for the same data, whatever its size)."""
    n, k = M.shape
    S = M[:: max(1, n // SAMPLE_ROWS)] if n else M
    N = np.eye(k)
    ones = [j for j in range(k) if is_ones(S[:, j])]
    base = ones[0] if (center and ones) else None
    for j in range(k):
        col = S[:, j]
        if j == base:
            continue
        shift = float(col.mean()) if base is not None and j > base else 0.0
        scale = rms(col - shift)
        if not np.isfinite(scale) or scale == 0.0 or not np.isfinite(shift):
            continue  # a zero or non-finite column: left as it is
        N[j, j] = scale
        if shift:
            N[base, j] = shift
    return N


def apply_affine(M: np.ndarray, N: np.ndarray) -> np.ndarray:
    """M̃ = M N⁻¹: the shifts (on the base column, which N leaves as it is)
    subtracted, then the scales divided out, in one vectorised pass."""
    d = np.diag(N)
    off = N - np.diag(d)
    with np.errstate(over="ignore", under="ignore"):
        if not off.any():
            return M / d
        return (M - M @ off) / d


def lower_factor(M: np.ndarray) -> np.ndarray:
    """The lower-triangular L with nonnegative diagonal and L Lᵀ = M Mᵀ: the
    transpose of R in a QR factorization of Mᵀ (also for singular M); one
    Givens rotation for the common 2 x 2 case (LAPACK's call overhead would
    dominate the fit's optimisation log)."""
    q = M.shape[0]
    if q == 1:
        return np.abs(M)
    if q == 2:
        r = float(np.hypot(M[0, 0], M[0, 1]))
        c, s = (M[0, 0] / r, M[0, 1] / r) if r > 0 else (1.0, 0.0)
        l21 = M[1, 0] * c + M[1, 1] * s
        l22 = -M[1, 0] * s + M[1, 1] * c
        return np.array([[r, 0.0], [l21, abs(l22)]])
    R = np.linalg.qr(M.T, mode="r")
    L = R.T
    signs = np.where(np.diag(L) < 0, -1.0, 1.0)
    return L * signs[None, :]
