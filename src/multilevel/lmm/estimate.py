"""The estimation stage of an LMM: from a design to the profiled criterion and
its optimum in θ (lme4's ``mkLmerDevfun`` and ``optimizeLmer``).  Building the
design comes before (:mod:`multilevel.formula.design`), the fitted-model
object after (:mod:`multilevel.lmm.results`)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from scipy.linalg.lapack import dpotrf

from multilevel.covariance import templates
from multilevel.errors import ModelError
from multilevel.formula.design import Design
from multilevel.linalg.crossprod import CrossProducts, cross_products
from multilevel.lmm.basis import Basis, ScaledCriterion
from multilevel.lmm.criterion import ProfiledCriterion
from multilevel.lmm.start import moment_start, moment_start_scalar, moment_start_terms
from multilevel.optimize.record import OptRecord
from multilevel.optimize.theta import minimize_theta


def estimate(design: Design, *, REML: bool, start: Any = None) -> tuple[ScaledCriterion, OptRecord]:
    """Order the random terms by decreasing number of levels (lme4's order,
    stable; ``design.random`` is reordered in place), form the cross-products
    of [Z X y] once, in the centred and scaled basis of
    :mod:`multilevel.lmm.basis`, and optimise θ there.

    Returns the criterion of the original problem (its cross-products mapped
    from the scaled ones) and the record in original θ: ``theta`` and the log
    mapped, the criterion values shifted by the known constant between the
    two problems (2n log c for ML, 2(n − p) log c + 2 log|det N_X| for REML;
    c the response's scale).  The gradient and the convergence judgement are
    those of the scaled problem, where tolerances mean the same for any units;
    ``internal_theta`` keeps θ there for the boundary judgement."""
    order = sorted(range(len(design.random)), key=lambda k: -design.random[k].nlevels)
    design.random = [design.random[k] for k in order]
    rs = design.random
    qs = [r.q for r in rs]
    y = design.y if design.offset is None else design.y - design.offset
    sqrtw = None if design.weights is None else np.sqrt(design.weights)
    Zs = [r.Z for r in rs]
    basis = Basis.of(Zs, design.X, y, ones=design.intercept_columns())
    if y.size and np.all(y == y[0]):
        raise ModelError("the response is constant: there is no variation to describe")
    codes, nlevels = [r.codes for r in rs], [r.nlevels for r in rs]
    cp_s = cross_products(Zs, codes, nlevels, design.X, y, sqrtw, maps=(basis.V, basis.NF))
    if _fitted_exactly(cp_s.AFF):
        raise ModelError(
            "the fixed effects reproduce the response exactly (residual variance 0): "
            "there is no variation left for a mixed model to describe"
        )
    sum_log_w = 0.0 if design.weights is None else float(np.log(design.weights).sum())
    return optimize_in_basis(cp_s, basis, qs, REML, sum_log_w, start)


def optimize_in_basis(
    cp_s: CrossProducts, basis: Basis, qs: list[int], REML: bool, sum_log_w: float, start: Any
) -> tuple[ScaledCriterion, OptRecord]:
    """θ optimised on the scaled cross-products ``cp_s``, returned as the
    original problem's criterion and record (see :func:`estimate`)."""
    tmpl = templates(qs)
    start_s = None
    if start is not None:
        start = check_start(start, tmpl)
        start_s = _flatten(basis.theta_to_scaled([t.matrix(start) for t in tmpl]), tmpl)
    crit_s, rec = optimize_cross_products(cp_s, qs, REML, sum_log_w, start_s)
    crit = ScaledCriterion(crit_s, basis, tmpl)
    shift = crit.criterion_shift(REML)

    original = partial(_to_original, basis, tmpl)  # picklable: the record travels with the fit
    rec.internal_theta = np.asarray(rec.theta, dtype=float)
    rec.theta = original(rec.internal_theta)
    crit.optimum = (rec.theta, rec.internal_theta)
    rec.criterion = rec.criterion + shift
    rec.log_map = original
    rec._values = [v + shift for v in rec._values]
    return crit, rec


def _fitted_exactly(AFF: np.ndarray) -> bool:
    """Whether y lies in the span of X (residual below 1e-7 of ỹ's length),
    from [X̃ ỹ]ᵀ[X̃ ỹ] in the centred basis, where that test is well conditioned:
    the last diagonal entry of its Cholesky factor is that residual."""
    p = AFF.shape[0] - 1
    # LAPACK directly: numpy's wrapper costs more than this small factorization
    L, info = dpotrf(AFF, lower=1)
    if info == 0:
        return bool(L[p, p] ** 2 <= 1e-14 * AFF[p, p])
    if dpotrf(AFF[:p, :p], lower=1)[1] != 0:
        return False  # X itself is singular here: left to the criterion
    return True  # X is not singular but [X y] is: y in the span of X


def _to_original(basis: Basis, tmpl: list, theta_s: np.ndarray) -> np.ndarray:
    return _flatten(basis.theta_to_original([t.matrix(theta_s) for t in tmpl]), tmpl)


def _flatten(T: list[np.ndarray], tmpl: list) -> np.ndarray:
    return np.concatenate([Tk[t.rows, t.cols] for Tk, t in zip(T, tmpl, strict=True)])


def check_start(start: Any, tmpl: list) -> np.ndarray:
    """A user's starting θ: as many finite values as θ has, diagonal entries ≥ 0."""
    size = sum(t.size for t in tmpl)
    try:
        x = np.asarray(start, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ModelError(f"start must be {size} numbers (theta), not {start!r}") from None
    if x.size != size:
        raise ModelError(f"start has {x.size} values; theta has {size}")
    if not np.all(np.isfinite(x)):
        raise ModelError("start must be finite (it is an initial theta)")
    lower = np.concatenate([t.lower_bounds() for t in tmpl])
    if np.any(x < lower):
        raise ModelError(
            "start has a negative diagonal entry of a relative covariance factor; "
            "theta's diagonal entries are >= 0"
        )
    return x


def optimize_cross_products(
    cp: Any, qs: list[int], REML: bool, sum_log_w: float, start: Any = None
) -> tuple[ProfiledCriterion, OptRecord]:
    """The profiled criterion of summed cross-products and its optimum in θ,
    from ``start``, else for one term the moment estimate of
    :mod:`multilevel.lmm.start`, else identity templates."""
    tmpl = templates(qs)
    crit = ProfiledCriterion(cp, tmpl, REML, sum_log_w)
    hessian0 = None
    if start is not None:
        x0 = np.asarray(start, float)
    else:
        if len(tmpl) == 1:
            x0 = moment_start(cp, tmpl[0])
        elif max(qs) == 1:
            x0 = moment_start_scalar(cp)
        else:
            x0 = moment_start_terms(cp, tmpl)
        if x0 is None:
            x0 = np.concatenate([t.initial() for t in tmpl])
        elif crit.has_gradient:
            hessian0 = "differences"
    lower = np.concatenate([t.lower_bounds() for t in tmpl])
    record = minimize_theta(
        crit,
        x0,
        lower,
        value_and_gradient=crit.value_and_gradient if crit.has_gradient else None,
        hessian0=hessian0,
    )
    return crit, record
