"""Bounded minimisation of a profiled criterion over θ, with a record.

Where the criterion comes with its exact gradient (one random-effects term), a
bounded quasi-Newton method (BFGS) does the search in a few dozen
evaluations.  Otherwise BOBYQA (Powell's bounded quadratic-model method,
through nlopt) does it; bounded Brent is used for a single parameter, where
BOBYQA's quadratic model is degenerate.  Every evaluation is logged.  Afterwards the
gradient is checked by central differences: an optimum is reported only when
the free parameters' gradient is small, and parameters on their bound (a
variance of zero) are reported as a boundary fit, not as a failure.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.linalg.lapack import dgetrf, dgetri

from multilevel.compiled import kernel
from multilevel.optimize.bobyqa import bobyqa
from multilevel.optimize.bounds import snap_to_bounds
from multilevel.optimize.hessian import (
    clearly_positive_definite,
    fd_hessian_of,
    gradient_hessian,
)
from multilevel.optimize.newton import newton_steps
from multilevel.optimize.record import Logged, OptRecord

GRAD_TOL = 2e-3  # on the deviance scale, as lme4's check
DECREMENT_TOL = 1e-6  # deviance units a Newton step could still gain
POLISH_GTOL = 1e-3  # the polish after a search acts on larger free gradients only
POLISH_HANDOVER = 1e-3  # free gradient at which BFGS hands over to its Newton polish
# smallest over largest eigenvalue of the Hessian in θ below which the optimum
# counts as flat (a variance parameter not identified), as lme4's check
HESSIAN_RTOL = 1e-6
START_INSIDE = 0.1  # a start on a bound moves this far inside (θ ~ 1 is unit scale)
SEARCH_DISABLED = False  # tests switch the compiled BFGS search off to compare with Python


def minimize_theta(
    fun: Callable[[np.ndarray], float],
    x0: np.ndarray,
    lower: np.ndarray,
    *,
    value_and_gradient: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None,
    xtol: float = 1e-8,
    ftol: float = 1e-8,
    maxeval: int = 100_000,
    hessian0: np.ndarray | str | None = None,
    newton_polish: bool = True,
    max_step: float = 1.0,
    check_hessian: bool = True,
) -> OptRecord:
    """Minimise ``fun`` over θ ≥ lower (elementwise) from x0.

    Converged means: the optimiser stopped normally, the free parameters'
    gradient is small and (if ``check_hessian``; callers whose optimum is only
    a start turn it off) their Hessian is clearly positive definite.

    With ``value_and_gradient``: BFGS from the Hessian approximation
    ``hessian0`` (default a scaled identity; "differences": formed at x0 from
    differences of the gradient, for a start near the optimum, where a
    first step of unit length overshoots by orders of magnitude), then, if ``newton_polish``,
    Newton steps with a Hessian from differences of the gradient (callers that
    compute that Hessian themselves turn it off); search directions are cut to
    length ``max_step`` (θ is a ratio of standard deviations: steps of order 1)."""
    logged = Logged(fun, value_and_gradient)
    x0 = np.asarray(x0, dtype=float)
    # A diagonal θ on its bound 0 has zero gradient by symmetry (the criterion
    # is even in it), so a search started there may never leave a point where
    # the criterion falls away from the bound: start a little inside instead
    on_bound = np.isfinite(lower) & (x0 <= lower)
    if on_bound.any():
        x0 = np.where(on_bound, lower + START_INSIDE, x0)
    if value_and_gradient is not None:
        optimizer, status = _bfgs(logged, x0, lower, maxeval, hessian0, newton_polish, max_step)
    elif x0.size == 1:
        optimizer, status = _brent(logged, float(x0[0]), float(lower[0]), xtol)
    else:
        step = np.where(np.isfinite(lower), 0.75, 0.5) * np.maximum(np.abs(x0), 0.5)
        status = bobyqa(logged, x0, lower, step, xtol=xtol, ftol=ftol, maxeval=maxeval)
        optimizer = "bobyqa"
    x = logged.best_x if logged.best_x is not None else x0
    fx = logged.best
    polish = True
    known = logged.known_grad
    if known is not None and known[0] is x:
        # the search's exact gradient at its end: when already below the
        # polish's threshold, the polish would return it as it is
        grad, decrement = known[1].copy(), None
        free, gmax = _free_gradient(x, grad, lower)
        polish = gmax >= POLISH_GTOL
    if polish:
        x, fx, grad, decrement = _polish(logged, x, fx, lower)
        free, gmax = _free_gradient(x, grad, lower)
    messages = []
    converged = status in ("SUCCESS", "FTOL_REACHED", "XTOL_REACHED", "CONVERGED")
    if not converged:
        messages.append(f"optimizer {optimizer} stopped with status {status}")
    if gmax > GRAD_TOL and not (decrement is not None and decrement < DECREMENT_TOL):
        converged = False
        messages.append(
            f"Model failed to converge: largest |gradient| of the free parameters is "
            f"{gmax:.3g} (tolerance {GRAD_TOL}); try rescaling covariates or a simpler "
            "random-effects structure"
        )
    if check_hessian and converged and free.any():
        idx = np.flatnonzero(free)
        # forward differences of the gradient (the search's own Hessian, or
        # one formed here: O(h) errors) settle a clear case; a doubtful one
        # gets central differences
        H = logged.hessian_near(x, idx)
        if H is None and logged.fg is not None:
            H = gradient_hessian(lambda w: logged.value_grad(w)[1], x, idx, g0=grad)
        if H is None or not clearly_positive_definite(H, 1e-3):
            H = _hessian(logged, x, idx)
            clear = clearly_positive_definite(H, HESSIAN_RTOL)
        else:
            clear = True  # the screen's threshold is the stricter one
        if not clear:
            converged = False
            lam = np.linalg.eigvalsh(0.5 * (H + H.T))
            messages.append(
                "Model failed to converge: the Hessian of the criterion in theta is "
                f"indefinite or nearly singular at the optimum (eigenvalues {lam[0]:.3g} "
                f"to {lam[-1]:.3g}): a saddle point, or a direction in which the "
                "likelihood is flat, so some variance parameter is not identified; try "
                "a simpler random-effects structure"
            )
    return logged.record(optimizer, status, converged, x, fx, grad, messages)


def _bfgs(
    logged: Logged,
    x0: np.ndarray,
    lower: np.ndarray,
    maxeval: int,
    hessian0: np.ndarray | str | None = None,
    newton_polish: bool = True,
    max_step: float = 1.0,
) -> tuple[str, str]:
    """Bounded BFGS with backtracking (Armijo) line search.

    A diagonal θ on its bound 0 has zero gradient by symmetry (the criterion is
    even in it), so a step that would reach the bound is cut to a tenth of the
    remaining distance: bounds are approached geometrically and reached only
    by the final snap, when that does not raise the criterion.

    ``multilevel._optim.bfgs_search`` is this whole search compiled (the
    same steps and arithmetic, to rounding); the code below is its fallback.
    """
    search = None if SEARCH_DISABLED else kernel("_optim", "bfgs_search")
    if search is not None:
        x = np.array(x0, dtype=float)
        Hinv0 = None
        if hessian0 is not None and not isinstance(hessian0, str):
            Hinv0 = _inverse(hessian0)
        f, g, code, _, hessian, snapped = search(
            logged.value_grad,
            x,
            np.ascontiguousarray(lower, dtype=float),
            int(maxeval),
            Hinv0,
            isinstance(hessian0, str),
            newton_polish,
            float(max_step),
        )
        if hessian is not None:
            hx, hidx, H = hessian
            logged.hessian = (hx, np.array(hidx, dtype=np.intp), H)
        logged.best, logged.best_x = f, x
        logged.known_grad = None if snapped else (x, g)
        return "bfgs", "CONVERGED" if code == 0 else "MAXEVAL_REACHED"
    x = x0.copy()
    f, g = logged.value_grad(x)
    n = x.size
    bounded = np.isfinite(lower)
    Hinv = np.eye(n) / max(1.0, math.sqrt(g @ g))
    if isinstance(hessian0, str):  # "differences": formed here, at x0
        idx = np.arange(n)
        h = 1e-4 * np.maximum(1.0, np.abs(x))
        H0 = gradient_hessian(lambda w: logged.value_grad(w)[1], x, idx, h, g0=g)
        hessian0 = H0 if clearly_positive_definite(H0, 1e-8) else None
        # the checks after the search reuse it where the search ends near x0
        # (a start at the optimum: balanced data's moment equations)
        logged.hessian = (x.copy(), idx, H0)
    if hessian0 is not None:
        Hinv = np.linalg.inv(hessian0)
    # with the Newton polish below, the iterations hand over once the gradient
    # is small: near the optimum BFGS closes in linearly, the polish (whose
    # Hessian the convergence check needs anyway) quadratically
    gtol = POLISH_HANDOVER if newton_polish else 1e-6
    x, f, g, status = _bfgs_loop(
        logged, x, f, g, Hinv, lower, maxeval, hessian0 is None, max_step, gtol
    )
    # Near the optimum the criterion's differences drown in rounding (its
    # value is known to ~1e-12 relative, so θ only to ~1e-7 from values) while
    # the exact gradient still points the way: Newton steps with a Hessian from
    # differences of the exact gradient, accepted while the gradient shrinks,
    # pin θ down to what the gradient resolves.
    free = ~(bounded & (x <= lower) & (g >= 0))
    idx = np.flatnonzero(free)
    if newton_polish and idx.size and np.abs(g[idx]).max() > 1e-10 * (1 + abs(f)):
        h = 1e-5 * np.maximum(1.0, np.abs(x[idx]))
        H = gradient_hessian(lambda w: logged.value_grad(w)[1], x, idx, h, g0=g)
        logged.hessian = (x.copy(), idx, H)
        for _ in range(4):
            gi = g[idx]
            gnorm = math.sqrt(float(gi @ gi))
            if gnorm < 1e-10 * (1 + abs(f)):
                break
            try:
                step = np.linalg.solve(H, gi)
            except np.linalg.LinAlgError:
                break
            xn = x.copy()
            xn[idx] -= step
            # a step longer than a tenth of θ's scale is not a polish (a
            # flat criterion's steps from the handover's gradient of 1e-3
            # are longer than 1e-3: Rail's optimum is at θ ≈ 6.2)
            scale = max(1.0, float(np.abs(x).max()))
            if np.any(bounded & (xn <= lower)) or math.sqrt(float(step @ step)) > 0.1 * scale:
                break
            fn, gn = logged.value_grad(xn)
            gni = gn[idx]
            if not (math.sqrt(float(gni @ gni)) < 0.5 * gnorm and fn <= f + 1e-11 * (1 + abs(f))):
                break
            x, f, g = xn, fn, gn
    x, f, snapped = snap_to_bounds(lambda z: logged.value_grad(z)[0], x, f, lower)
    logged.best, logged.best_x = f, x
    # the exact gradient there, for the checks after the search
    logged.known_grad = None if snapped.any() else (x, g)
    return "bfgs", status


def _inverse(H: np.ndarray) -> np.ndarray:
    """H⁻¹ by LU (LAPACK directly: numpy's wrapper costs several times this
    small inverse); numpy's, which raises, where H is singular."""
    lu, piv, info = dgetrf(H)
    if info == 0:
        inv, info = dgetri(lu, piv)
        if info == 0:
            return np.ascontiguousarray(inv, dtype=float)
    return np.ascontiguousarray(np.linalg.inv(H), dtype=float)


def _bfgs_loop(
    logged: Logged,
    x: np.ndarray,
    f: float,
    g: np.ndarray,
    Hinv: np.ndarray,
    lower: np.ndarray,
    maxeval: int,
    scale_first: bool,
    max_step: float,
    gtol: float = 1e-6,
) -> tuple[np.ndarray, float, np.ndarray, str]:
    """The search's iterations from (x, f, g) with the inverse Hessian
    approximation Hinv until the free gradient is below ``gtol``;
    ``scale_first``: rescale Hinv at the first update."""
    n = x.size
    bounded = np.isfinite(lower)
    any_bounded = bool(bounded.any())
    status = "MAXEVAL_REACHED"
    restarted = False
    for it in range(maxeval):
        active = bounded & (x <= lower) & (g >= 0)
        pg = np.where(active, 0.0, g)
        if np.abs(pg).max() < gtol:
            status = "CONVERGED"
            break
        d = -Hinv @ pg
        d[active] = 0.0
        if d @ pg >= 0:  # curvature information went bad: restart from steepest descent
            Hinv = np.eye(n) / max(1.0, math.sqrt(pg @ pg))
            d = -Hinv @ pg
            d[active] = 0.0
        length = math.sqrt(d @ d)
        if length > max_step:
            d *= max_step / length
        t = 1.0
        while True:
            xn = x + t * d
            # "reaching" includes landing within rounding of the bound
            if any_bounded:
                hit = bounded & (xn - lower < 0.1 * (x - lower)) & (x > lower)
                if hit.any():
                    xn[hit] = lower[hit] + 0.1 * (x[hit] - lower[hit])
            fn, gn = logged.value_grad(xn)
            if fn <= f + 1e-4 * (g @ (xn - x)) or t < 1e-3:
                break
            if fn - f < 1e-11 * (1 + abs(f)):  # a change below rounding: at the optimum
                break
            # the minimum of the parabola through f, its slope and fn along
            # the step, kept within [0.1, 0.5] of it (a plain halving needed
            # six trials after a unit first step from a start near the optimum)
            slope = g @ (xn - x)
            curv = fn - f - slope
            tq = -slope / (2.0 * curv) if curv > 0 and slope < 0 else 0.5
            t *= min(max(tq, 0.1), 0.5)
        if len(logged.values) >= maxeval:
            status = "MAXEVAL_REACHED"
            break
        if fn > f:
            # no decrease along a short step: either rounding noise at the
            # optimum (the Newton steps below take over) or a stale Hessian
            # approximation (one restart from steepest descent)
            if restarted or fn - f < 1e-11 * (1 + abs(f)):
                status = "CONVERGED"
                break
            restarted = True
            Hinv = np.eye(n) / max(1.0, math.sqrt(pg @ pg))
            continue
        restarted = False
        s, y = xn - x, gn - g
        df = f - fn
        x, f, g = xn, fn, gn
        sy = s @ y
        if sy > 1e-12 * math.sqrt((s @ s) * (y @ y)):
            if it == 0 and scale_first:
                Hinv = np.eye(n) * sy / (y @ y)
            # the BFGS update (I − ρsyᵀ)H(I − ρysᵀ) + ρssᵀ, expanded
            rho = 1.0 / sy
            Hy = Hinv @ y
            sc, Hc = s[:, None], Hy[:, None]
            Hinv = Hinv + (rho * rho * (sy + y @ Hy)) * (sc * s) - rho * (Hc * s + sc * Hy)
        if df < 1e-13 * (1 + abs(f)) and np.abs(s).max() < 1e-8:
            status = "CONVERGED"
            break
    return x, f, g, status


def _brent(logged: Logged, x0: float, lower: float, xtol: float) -> tuple[str, str]:
    from scipy.optimize import minimize_scalar

    # bracket the minimum by doubling the upper end; θ is a ratio of SDs
    hi = max(4.0, 4.0 * x0)
    for _ in range(40):
        if logged(np.array([hi])) < logged(np.array([hi / 2])):
            hi *= 2
        else:
            break
    res = minimize_scalar(
        lambda t: logged(np.array([t])),
        bounds=(lower, hi),
        method="bounded",
        options={"xatol": xtol},
    )
    # the bounded method never evaluates the bound itself: a zero variance is
    # a legitimate optimum (singular fit)
    logged(np.array([lower]))
    return "brent", "CONVERGED" if res.success else "FAILED"


def _free_gradient(x: np.ndarray, grad: np.ndarray, lower: np.ndarray) -> tuple[np.ndarray, float]:
    """The parameters not held at their (finite) bound by the gradient, and
    the largest |gradient| among them; at the bound means within rounding of
    it (np.isclose's tolerances)."""
    # Python floats: a handful of parameters, where each numpy call costs more
    free = [
        not (math.isfinite(lo) and abs(xi - lo) <= 1e-8 + 1e-5 * abs(lo) and gi >= 0)
        for xi, lo, gi in zip(x.tolist(), lower.tolist(), grad.tolist(), strict=True)
    ]
    # a NaN gradient is never small
    gfree = (
        abs(gi) if gi == gi else math.inf for gi, f in zip(grad.tolist(), free, strict=True) if f
    )
    gmax = max(gfree, default=0.0)
    return np.array(free, dtype=bool), float(gmax)


def _hessian(logged: Logged, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The Hessian in the coordinates ``idx`` at x by central differences
    (errors O(h²): a flat direction shows as a near-zero eigenvalue, not as
    the O(h) error of forward differences): of the exact gradient when there
    is one, else of values with steps of 1e-3, where the criterion's rounding
    (~1e-12 relative) stays far below the curvature."""
    if logged.fg is not None:
        return gradient_hessian(lambda w: logged.value_grad(w)[1], x, idx)
    return fd_hessian_of(logged, x, idx, h=1e-3)


def _polish(
    logged: Logged, x: np.ndarray, fx: float, lower: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray, float | None]:
    """Check the optimum by finite differences and take Newton steps from it.

    A derivative-free search stops where its model can no longer tell steps
    apart, which on a flat likelihood can leave gradients that matter.  When
    the gradient is not negligible (above 1e-3), a finite-difference Hessian
    of the free parameters gives Newton steps (kept only when they lower the
    criterion) and the Newton decrement ½ gᵀH⁻¹g: the criterion a further
    step could gain, a scale-free measure of how far from the optimum we are.
    """

    def derivatives(z: np.ndarray, _fz: float):
        if logged.fg is not None:

            def hessian(idx):
                return gradient_hessian(lambda w: logged.value_grad(w)[1], z, idx)

        else:

            def hessian(idx):
                return fd_hessian_of(logged, z, idx)

        return _gradient(logged, z, lower), hessian

    res = newton_steps(
        logged, x, fx, lower, derivatives, maxit=3, tol=1e-10, gtol=POLISH_GTOL, at_bound_tol=1e-8
    )
    grad = _gradient(logged, res.x, lower) if res.moved else res.g
    return res.x, res.f, grad, res.decrement


def _gradient(logged: Logged, x: np.ndarray, lower: np.ndarray, h: float = 1e-5) -> np.ndarray:
    if logged.fg is not None:
        known = logged.known_grad
        if known is not None and np.array_equal(x, known[0]):
            return known[1].copy()  # from the search: the same function at the same point
        return logged.value_grad(x)[1]
    g = np.zeros_like(x)
    for i in range(x.size):  # a few parameters, not rows or groups
        e = np.zeros_like(x)
        e[i] = h
        if np.isfinite(lower[i]) and x[i] - h < lower[i]:
            g[i] = (logged(x + e) - logged(x)) / h
        else:
            g[i] = (logged(x + e) - logged(x - e)) / (2 * h)
    return g
