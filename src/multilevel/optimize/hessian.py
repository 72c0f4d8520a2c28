"""Finite-difference Hessians, written once: from values of a scalar
function (:func:`fd_hessian`) or from differences of its exact gradient
(:func:`gradient_hessian`).  The parameters are a handful (θ, β), never rows
or groups, so the loops below are over parameters."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.linalg.lapack import dsyev


def hessian_stencil(x: np.ndarray, h: np.ndarray | float = 1e-3) -> list[np.ndarray]:
    """The points :func:`fd_hessian` evaluates around x, in its order: x ± hₐeₐ for
    every a, then x ± (hₐeₐ + h_b e_b) for every pair a < b (d² + d points)."""
    d = x.size
    h = np.broadcast_to(np.asarray(h, dtype=float), (d,))
    pts = []
    for a in range(d):
        e = np.zeros(d)
        e[a] = h[a]
        pts += [x + e, x - e]
    for a in range(d):
        for b in range(a + 1, d):
            e = np.zeros(d)
            e[a], e[b] = h[a], h[b]
            pts += [x + e, x - e]
    return pts


def fd_hessian(
    fun: Callable[[np.ndarray], float],
    x: np.ndarray,
    h: np.ndarray | float = 1e-3,
    f0: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference Hessian and gradient of a scalar function from d² + d + 1
    evaluations (:func:`hessian_stencil`): with Sₐ± = f(x ± hₐeₐ),

        Hₐₐ = (Sₐ₊ − 2f₀ + Sₐ₋)/hₐ²,   gₐ = (Sₐ₊ − Sₐ₋)/(2hₐ),
        Hₐ_b = [f(x + hₐeₐ + h_b e_b) + f(x − hₐeₐ − h_b e_b) − 2f₀
                − hₐ²Hₐₐ − h_b²H_bb] / (2hₐh_b),

    each with O(h²) error (the second-order expansion along eₐ + e_b less its
    diagonal parts), half the evaluations of the four-point cross formula."""
    d = x.size
    h = np.broadcast_to(np.asarray(h, dtype=float), (d,))
    f0 = fun(x) if f0 is None else f0
    vals = iter([fun(pt) for pt in hessian_stencil(x, h)])
    H = np.zeros((d, d))
    g = np.zeros(d)
    for a in range(d):
        fp, fm = next(vals), next(vals)
        H[a, a] = (fp - 2 * f0 + fm) / h[a] ** 2
        g[a] = (fp - fm) / (2 * h[a])
    for a in range(d):
        for b in range(a + 1, d):
            fp, fm = next(vals), next(vals)
            curv = fp + fm - 2 * f0 - h[a] ** 2 * H[a, a] - h[b] ** 2 * H[b, b]
            H[a, b] = H[b, a] = curv / (2 * h[a] * h[b])
    return H, g


def richardson_gradient(
    fun: Callable[[np.ndarray], float],
    x: np.ndarray,
    h: np.ndarray | float = 1e-3,
    g_h: np.ndarray | None = None,
) -> np.ndarray:
    """The gradient (4 g_{h/2} − g_h)/3 from central differences with steps h and
    h/2 (``g_h`` if already known): the O(h²) errors cancel, leaving O(h⁴).
    Where the criterion is strongly curved on the step's scale (a precisely
    estimated dispersion or variance), the error h²f₃/6 of one central
    difference (f₃ the third derivative) exceeds a gradient tolerance at an
    optimum."""
    d = x.size
    h = np.broadcast_to(np.asarray(h, dtype=float), (d,))

    def central(step: np.ndarray) -> np.ndarray:
        g = np.empty(d)
        for a in range(d):
            e = np.zeros(d)
            e[a] = step[a]
            g[a] = (fun(x + e) - fun(x - e)) / (2 * step[a])
        return g

    g_h = central(h) if g_h is None else g_h
    return (4.0 * central(h / 2) - g_h) / 3.0


def fd_hessian_of(
    fun: Callable[[np.ndarray], float], x: np.ndarray, idx: np.ndarray, h: float = 1e-4
) -> np.ndarray:
    """:func:`fd_hessian` in the coordinates ``idx`` only, the others held at x."""

    def sub(z: np.ndarray) -> float:
        full = x.copy()
        full[idx] = z
        return fun(full)

    return fd_hessian(sub, x[idx], h)[0]


def gradient_hessian(
    grad: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    idx: np.ndarray | None = None,
    h: np.ndarray | float = 1e-4,
    g0: np.ndarray | None = None,
) -> np.ndarray:
    """The Hessian from differences of an exact gradient in the coordinates
    ``idx`` (default all), symmetrised: forward differences from ``g0`` (the
    gradient at x) when given, central otherwise.  A forward difference has an
    O(h) error, which only slows Newton's convergence by that factor per step."""
    idx = np.arange(x.size) if idx is None else np.asarray(idx)
    k = idx.size
    hs = np.full(k, float(h)) if np.ndim(h) == 0 else np.asarray(h, dtype=float).reshape(k)
    g0i = None if g0 is None else g0[idx]
    H = np.empty((k, k))
    for a in range(k):
        e = np.zeros(x.size)
        e[idx[a]] = hs[a]
        if g0i is not None:
            H[a] = (grad(x + e)[idx] - g0i) / hs[a]
        else:
            H[a] = (grad(x + e)[idx] - grad(x - e)[idx]) / (2 * hs[a])
    return 0.5 * (H + H.T)


def clearly_positive_definite(H: np.ndarray | None, rtol: float = 1e-8) -> bool:
    """Whether a symmetric H is clearly positive definite: its smallest
    eigenvalue above ``rtol`` of its largest (a criterion flat to rounding in
    some direction is not).  An empty H is; a missing one is not."""
    if H is None:
        return False
    if H.size == 0:
        return True
    if H.shape == (1, 1):  # most θ searches are over one or three parameters
        h = float(H[0, 0])
        return math.isfinite(h) and h > 0.0
    S = 0.5 * (H + H.T)
    if not np.isfinite(S).all():
        return False
    # LAPACK directly: numpy's wrapper costs several times these small problems
    lam, _, info = dsyev(S, compute_v=0)
    return bool(info == 0 and lam[0] > rtol * max(lam[-1], 0.0))
