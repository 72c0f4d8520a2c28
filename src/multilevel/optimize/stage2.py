"""The joint search over (θ, δ) that ends every GLMM fit not handled by an
exact-gradient route (lme4's second stage), and what its Hessian gives:
BOBYQA, then projected Newton steps with a central-difference Hessian, then
the covariance 2H⁻¹ of the estimates."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.linalg.lapack import dpotrf, dpotrs

from multilevel.optimize.bobyqa import bobyqa
from multilevel.optimize.bounds import snap_to_bounds
from multilevel.optimize.hessian import (
    clearly_positive_definite,
    fd_hessian,
    richardson_gradient,
)
from multilevel.optimize.newton import NewtonResult, newton_steps
from multilevel.optimize.record import Logged, OptRecord
from multilevel.optimize.theta import DECREMENT_TOL, GRAD_TOL

NOT_PD_MESSAGE = (
    "the Hessian of the deviance is not positive definite at the optimum: the "
    "likelihood is flat or unbounded in some direction (complete separation of a "
    "binary response, or an unidentifiable fixed effect?)"
)
BOBYQA_BUDGET = 10  # × (parameters + 1): BOBYQA evaluations before Newton steps take over


STEEP = 200.0  # a curvature beyond which a coordinate's difference steps shrink


def _newton(
    logged: Logged, x, fx, lower, hessian_step, maxit: int, steep_steps: bool = True
) -> NewtonResult:
    """Newton steps with central-difference Hessians (full H kept in ``res.H``;
    the steps last used in ``res.steps``).  A coordinate whose curvature Hₐₐ
    exceeds STEEP (a precisely estimated parameter: its standard error is
    below 0.1 on the search's scale) gets steps shrunk by √(STEEP/Hₐₐ) from the
    next Hessian on, so that the O(h²f₃) error of the central differences
    stays below the gradient tolerance."""
    full: list[np.ndarray] = []
    steps = np.broadcast_to(np.asarray(hessian_step, dtype=float), x.shape).copy()

    def derivatives(z: np.ndarray, fz: float):
        H, g = fd_hessian(logged, z, steps, fz)
        full[:] = [H]
        curv = np.diag(H)
        steep = np.isfinite(curv) & (curv > STEEP) & steep_steps
        steps[steep] = np.minimum(steps[steep], hessian_step * np.sqrt(STEEP / curv[steep]))
        return g, lambda idx: H[np.ix_(idx, idx)]

    res = newton_steps(logged, x, fx, lower, derivatives, maxit=maxit, tol=1e-9)
    res.H = full[0] if full else None
    res.steps = steps
    return res


def _bobyqa(logged: Logged, x0, lower, step, maxeval: int = 50_000) -> np.ndarray:
    bobyqa(logged, x0, lower, step, xtol=1e-8, ftol=1e-7, maxeval=maxeval)
    return x0 if logged.best_x is None else logged.best_x.copy()


def optimize_stage2(
    fun: Callable[[np.ndarray], float],
    x0: np.ndarray,
    lower: np.ndarray,
    ntheta: int,
    to_natural: Callable[[np.ndarray], np.ndarray],
    hessian_step: np.ndarray | float = 1e-3,
    steep_steps: bool = True,
    near_bound: np.ndarray | None = None,
) -> tuple[OptRecord, np.ndarray | None]:
    """Minimise the stage-2 deviance over (θ, δ): BOBYQA to about 1e-6 deviance
    units (or at most BOBYQA_BUDGET·(d + 1) evaluations), then Newton steps with
    a central-difference Hessian (steps ``hessian_step``, the parameters being on
    unit scales; shrunk on steep coordinates unless ``steep_steps`` is False, see
    :func:`_newton`) until the Newton decrement is below 1e-9; when BOBYQA was cut
    short and the Newton steps fail, BOBYQA to its end and Newton again.
    Returns the record and the last Hessian (at the optimum, or where the
    Newton steps stopped).  ``near_bound`` marks coordinates that start just
    off their bound on purpose: BOBYQA's first step there is half the distance
    (a longer one would move the start onto the bound)."""
    logged = Logged(fun, to_natural=to_natural)
    step = np.concatenate(
        [0.25 * np.maximum(np.abs(x0[:ntheta]), 0.5), np.full(x0.size - ntheta, 0.5)]
    )
    if near_bound is not None:
        step = np.where(near_bound, 0.5 * (x0 - lower), step)
    # BOBYQA's last digits cost many evaluations when stage 1 ends far from the
    # optimum (large data); a few Newton steps (d² + d + 1 evaluations each) finish
    # faster.  If they do not reach the optimum, BOBYQA runs to its end after all.
    budget = BOBYQA_BUDGET * (x0.size + 1)
    x = _bobyqa(logged, x0, lower, step, budget)
    truncated = len(logged.values) >= budget
    res = _newton(logged, x, logged.best, lower, hessian_step, 4 if truncated else 6, steep_steps)
    if truncated and not res.done:
        x = _bobyqa(logged, res.x, lower, step)
        res = _newton(logged, x, logged.best, lower, hessian_step, 6, steep_steps)
    x, fx, g, H, status = res.x, res.f, res.g, res.H, res.status
    x, fx, snapped = snap_to_bounds(logged, x, fx, lower, slack=1e-10)
    g = np.where(snapped, 0.0, g)
    free = ~((x <= lower) & (g >= 0))
    gmax = float(np.max(np.abs(g[free]))) if free.any() else 0.0
    if gmax > GRAD_TOL and status == "CONVERGED":
        # the central differences' own error, not the optimum, may be what is large
        g_h = None if (res.moved or snapped.any()) else g
        g = richardson_gradient(logged, x, res.steps, g_h)
        g = np.where(snapped, 0.0, g)
        free = ~((x <= lower) & (g >= 0))
        gmax = float(np.max(np.abs(g[free]))) if free.any() else 0.0
        if gmax > GRAD_TOL and _decrement(H, g, free) < DECREMENT_TOL:
            # a steep criterion (a precisely estimated parameter): what a Newton
            # step could still gain is the measure, as for θ of an LMM
            gmax = 0.0
    messages = []
    converged = status == "CONVERGED"
    if not converged:
        messages.append(NOT_PD_MESSAGE)
    if gmax > GRAD_TOL:
        converged = False
        messages.append(
            f"Model failed to converge: largest |gradient| of the free parameters is "
            f"{gmax:.3g} (tolerance {GRAD_TOL}); try rescaling covariates or a simpler "
            "random-effects structure"
        )
    return logged.record("bobyqa+newton", status, converged, x, fx, g, messages), H


def _decrement(H: np.ndarray | None, g: np.ndarray, free: np.ndarray) -> float:
    """½ g_fᵀ H_ff⁻¹ g_f, or infinity without a positive definite H."""
    if H is None or not free.any():
        return np.inf
    Hf = H[np.ix_(free, free)]
    try:
        c = np.linalg.cholesky(0.5 * (Hf + Hf.T))
    except np.linalg.LinAlgError:
        return np.inf
    z = np.linalg.solve(c, g[free])
    return 0.5 * float(z @ z)


def positive_definite(H: np.ndarray | None, x: np.ndarray, lower_t: np.ndarray) -> bool:
    """Whether H is clearly positive definite over the parameters off their
    bounds: its smallest eigenvalue above 1e-8 of the largest (a likelihood
    flat to rounding in some direction, as under separation, is not)."""
    if H is None:
        return False
    free = np.ones(x.size, dtype=bool)
    free[: lower_t.size] = x[: lower_t.size] > lower_t
    return clearly_positive_definite(H if free.all() else H[np.ix_(free, free)])


def _spd_inverse(H: np.ndarray) -> np.ndarray | None:
    """H⁻¹ from its Cholesky factor, or None where H is not positive definite
    (LAPACK directly: numpy's wrappers cost several times these small problems)."""
    c, info = dpotrf(H, lower=1)
    if info != 0:
        return None
    inv, info = dpotrs(c, np.eye(H.shape[0]), lower=1)  # every entry, as numpy's inverse
    return inv if info == 0 else None


def vcov_from_hessian(H: np.ndarray | None, ntheta: int) -> tuple[np.ndarray | None, str]:
    """2 H⁻¹ in the stage-2 coordinates (θ, δ); its δ block alone when H is not
    positive definite (e.g. a variance on its boundary)."""
    if H is None:
        return None, "none"
    H = 0.5 * (H + H.T)
    if not np.isfinite(H).all():
        return None, "none"
    inv = _spd_inverse(H)
    if inv is not None:
        return 2.0 * inv, "hessian"
    inv = _spd_inverse(np.ascontiguousarray(H[ntheta:, ntheta:]))
    if inv is None:
        return None, "none"
    V = np.full_like(H, np.nan)
    V[ntheta:, ntheta:] = 2.0 * inv
    return V, "hessian-beta"
