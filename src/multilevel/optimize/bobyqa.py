"""BOBYQA (Powell's bounded quadratic-model method, through nlopt), called
in one place for every derivative-free search."""

from __future__ import annotations

import numpy as np

from multilevel.optimize.record import Logged


def bobyqa(
    logged: Logged,
    x0: np.ndarray,
    lower: np.ndarray,
    step: np.ndarray,
    *,
    xtol: float,
    ftol: float,
    maxeval: int,
) -> str:
    """Minimise from x0 over x ≥ lower; the best point is kept by ``logged``.
    Returns nlopt's status name (a search stopped by rounding reports
    XTOL_REACHED: at machine precision it is as good as it gets)."""
    import nlopt

    opt = nlopt.opt(nlopt.LN_BOBYQA, x0.size)
    opt.set_min_objective(logged)
    opt.set_lower_bounds(lower)
    opt.set_initial_step(step)
    opt.set_xtol_abs(xtol)
    opt.set_ftol_abs(ftol)
    opt.set_maxeval(maxeval)
    names = {v: k for k, v in vars(nlopt).items() if k.isupper() and isinstance(v, int)}
    try:
        opt.optimize(x0)
        code = opt.last_optimize_result()
    except nlopt.RoundoffLimited:
        code = nlopt.ROUNDOFF_LIMITED
    except (RuntimeError, ValueError):
        return "FAILURE"
    return {
        nlopt.SUCCESS: "SUCCESS",
        nlopt.FTOL_REACHED: "FTOL_REACHED",
        nlopt.XTOL_REACHED: "XTOL_REACHED",
        nlopt.MAXEVAL_REACHED: "MAXEVAL_REACHED",
        nlopt.ROUNDOFF_LIMITED: "XTOL_REACHED",
    }.get(code, names.get(code, str(code)))
