"""The estimation stage of an LMM: from a design to the profiled criterion and
its optimum in θ (lme4's ``mkLmerDevfun`` and ``optimizeLmer``).  Building the
design comes before (:mod:`multilevel.formula.design`), the fitted-model
object after (:mod:`multilevel.lmm.results`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from multilevel.covariance import templates
from multilevel.formula.design import Design
from multilevel.linalg.crossprod import cross_products
from multilevel.lmm.criterion import ProfiledCriterion
from multilevel.optimize.record import OptRecord
from multilevel.optimize.theta import minimize_theta


def estimate(
    design: Design, *, REML: bool, start: Any = None
) -> tuple[ProfiledCriterion, OptRecord]:
    """Order the random terms by decreasing number of levels (lme4's order,
    stable; ``design.random`` is reordered in place), form the cross-products
    of [Z X y] once and optimise θ."""
    order = sorted(range(len(design.random)), key=lambda k: -design.random[k].nlevels)
    design.random = [design.random[k] for k in order]
    rs = design.random
    y = design.y if design.offset is None else design.y - design.offset
    sqrtw = None if design.weights is None else np.sqrt(design.weights)
    cp = cross_products(
        [r.Z for r in rs], [r.codes for r in rs], [r.nlevels for r in rs], design.X, y, sqrtw
    )
    sum_log_w = 0.0 if design.weights is None else float(np.log(design.weights).sum())
    return optimize_cross_products(cp, [r.q for r in rs], REML, sum_log_w, start)


def optimize_cross_products(
    cp: Any, qs: list[int], REML: bool, sum_log_w: float, start: Any = None
) -> tuple[ProfiledCriterion, OptRecord]:
    """The profiled criterion of summed cross-products and its optimum in θ
    (from identity templates unless ``start``)."""
    tmpl = templates(qs)
    crit = ProfiledCriterion(cp, tmpl, REML, sum_log_w)
    x0 = np.concatenate([t.initial() for t in tmpl]) if start is None else np.asarray(start, float)
    lower = np.concatenate([t.lower_bounds() for t in tmpl])
    record = minimize_theta(
        crit,
        x0,
        lower,
        value_and_gradient=crit.value_and_gradient if crit.has_gradient else None,
    )
    return crit, record
