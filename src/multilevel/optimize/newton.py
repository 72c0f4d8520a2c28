"""Projected Newton steps with step halving, written once for every
optimiser that polishes an optimum (θ of an LMM, the GLMM's stage 2, the
exact-gradient GLMM searches).

From x, with gradient g and Hessian H: the free parameters are those not held
at their lower bound by a gradient pushing outwards; the step is
s = −H_ff⁻¹ g_f and the Newton decrement ½ g_fᵀ H_ff⁻¹ g_f is what a full
step could still gain.  The step is tried at lengths t ∈ ``shrinks``
(projected onto the bounds) and the first that lowers the criterion is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg.lapack import dpotrf, dpotrs

# derivatives(x, f) -> (g, hessian), hessian(idx) -> H[idx][:, idx]
Derivatives = Callable[[np.ndarray, float], tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]]


@dataclass
class NewtonResult:
    x: np.ndarray
    f: float
    g: np.ndarray  # at the start of the last iteration (``moved``: x changed since)
    H: np.ndarray | None  # the last free-parameter Hessian
    status: str  # "CONVERGED", or "HESSIAN_NOT_PD" when H_ff had no Cholesky factor
    done: bool  # the gradient or the decrement fell below its tolerance
    decrement: float | None
    moved: bool


def newton_steps(
    fun: Callable[[np.ndarray], float],
    x: np.ndarray,
    f: float,
    lower: np.ndarray,
    derivatives: Derivatives,
    *,
    maxit: int,
    tol: float,
    gtol: float = 0.0,
    at_bound_tol: float = 0.0,
    shrinks: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1),
    slack: float = 0.0,
) -> NewtonResult:
    """Newton steps from (x, f) until the free gradient is below ``gtol`` or the
    decrement below ``tol`` (done), H_ff is not positive definite, no trial
    length lowers f by more than ``slack``·(1 + |f|) below f, or ``maxit``
    iterations.  A parameter within ``at_bound_tol`` of its bound counts as on it."""
    g, H, decrement = None, None, None
    moved = False
    # the bounded coordinates, found once: a search's few θ among many β
    bounded = np.flatnonzero(np.isfinite(lower)).tolist()
    every = np.arange(x.size)
    for _ in range(maxit):
        g, hessian = derivatives(x, f)
        moved = False
        held = [i for i in bounded if x[i] - lower[i] <= at_bound_tol and g[i] >= 0]
        idx = np.setdiff1d(every, held, assume_unique=True) if held else every
        if idx.size == 0 or (gtol > 0 and np.max(np.abs(g[idx])) < gtol):
            return NewtonResult(x, f, g, H, "CONVERGED", True, decrement, False)
        H = hessian(idx)
        gi = g[idx] if held else g
        # LAPACK directly: numpy's wrappers cost several times these small solves
        c, info = dpotrf(H, lower=1)
        # a non-finite entry of H's lower triangle reaches the factor's diagonal
        if info != 0 or not np.isfinite(c.trace()):
            return NewtonResult(x, f, g, H, "HESSIAN_NOT_PD", False, decrement, False)
        step = -dpotrs(c, gi, lower=1)[0]
        decrement = float(-0.5 * (gi @ step))
        if not decrement >= tol:
            return NewtonResult(x, f, g, H, "CONVERGED", True, decrement, False)
        lo = lower[idx] if held else lower
        for t in shrinks:
            trial = x.copy()
            trial[idx] = np.maximum(x[idx] + t * step, lo)
            ft = fun(trial)
            if ft < f + slack * (1 + abs(f)):
                x, f, moved = trial, ft, True
                break
        else:
            return NewtonResult(x, f, g, H, "CONVERGED", False, decrement, False)
    return NewtonResult(x, f, g, H, "CONVERGED", False, decrement, moved)
