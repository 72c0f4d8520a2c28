"""Parameters on their lower bound (a variance of zero: a singular fit)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BOUNDARY_TOL = 1e-4  # θ diagonal below this is a boundary (singular) fit


def snap_to_bounds(
    fun: Callable[[np.ndarray], float],
    x: np.ndarray,
    f: float,
    lower: np.ndarray,
    *,
    slack: float = 0.0,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Parameters an optimiser left within BOUNDARY_TOL above their bound are
    put on it when that does not raise the criterion by more than
    ``slack``·(1 + |f|): on the bound the criterion is flat to rounding, and a
    singular fit is then reported as such.  Returns (x, f, which moved)."""
    near = np.isfinite(lower) & (x > lower) & (x - lower < BOUNDARY_TOL)
    if near.any():
        trial = np.where(near, lower, x)
        ft = fun(trial)
        if ft <= f + slack * (1 + abs(f)):
            return trial, ft, near
    return x, f, np.zeros_like(near)
