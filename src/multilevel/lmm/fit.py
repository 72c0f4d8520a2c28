"""``lmer``: from an lme4 formula and data to a fitted linear mixed model."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from multilevel.covariance import templates
from multilevel.errors import ConvergenceWarning, SingularFitWarning
from multilevel.formula.design import Design, build_design
from multilevel.formula.parser import parse_formula
from multilevel.linalg.crossprod import cross_products
from multilevel.lmm.criterion import ProfiledCriterion
from multilevel.lmm.results import LmerFit
from multilevel.optimize.theta import BOUNDARY_TOL, minimize_theta
from multilevel.threads import single_threaded_blas


def lmer(
    formula: str,
    data: Any,
    REML: bool = True,
    *,
    weights: Any = None,
    offset: Any = None,
    levels: dict[str, list] | None = None,
    na_action: str = "omit",
    namespace: dict | None = None,
    start: Any = None,
) -> LmerFit:
    """Fit a linear mixed model by REML (default) or maximum likelihood.

    ``formula`` uses lme4's syntax, e.g.
    ``"mathach ~ meanses*cses + sector*cses + (cses | school)"``.
    ``data`` is a pandas or polars DataFrame, or a Dask DataFrame or Parquet
    path (fitted in two passes over its partitions,
    :mod:`multilevel.partitioned.lmm`).  ``weights`` and ``offset`` are
    column names or arrays (prior weights: residual variance σ²/wᵢ).
    ``levels`` maps categorical columns to their level order, the first level
    being the reference.  Rows with missing values in used columns are dropped
    and counted (``na_action="raise"`` refuses them instead).  ``start`` is an
    initial θ.

    The model is y = Xβ + Zb + ε with b = Λ(θ)u, u ~ N(0, σ²I), ε ~ N(0, σ²I);
    θ minimises the profiled REML/ML criterion (see :mod:`multilevel.lmm.criterion`).
    """
    from multilevel.partitioned.lmm import is_partitioned

    if is_partitioned(data):
        from multilevel.partitioned.lmm import lmer_partitioned

        return lmer_partitioned(
            formula,
            data,
            REML,
            weights=weights,
            offset=offset,
            levels=levels,
            na_action=na_action,
            start=start,
        )
    parsed = parse_formula(formula)
    if not parsed.random:
        raise_no_random(formula)
    design = build_design(
        parsed,
        data,
        weights=weights,
        offset=offset,
        levels=levels,
        na_action=na_action,
        namespace=namespace,
    )
    return fit_design(design, REML=REML, start=start, data_name=_data_name(data))


def raise_no_random(formula: str) -> None:
    from multilevel.errors import ModelError

    raise ModelError(
        f"no random-effects terms in {formula!r}; add e.g. (1 | group), or use a linear model"
    )


def _data_name(data: Any) -> str:
    return getattr(data, "attrs", {}).get("name", "data") if hasattr(data, "attrs") else "data"


def fit_design(
    design: Design, *, REML: bool = True, start: Any = None, data_name: str = "data"
) -> LmerFit:
    """Order terms by levels, form cross-products once, optimise θ."""
    # One BLAS thread: after the pass over the rows every factorization is
    # small or medium, and a threaded BLAS whose cores are shared with other
    # work spins instead of computing (measured here with another process on
    # one core: a 6 x 6 Cholesky plus solve took 4 ms with two threads and
    # 1.2 µs with one; the InstEval-shaped fit 63 s against 2.6 s).
    with single_threaded_blas():
        return _fit_design(design, REML=REML, start=start, data_name=data_name)


def _fit_design(design: Design, *, REML: bool, start: Any, data_name: str) -> LmerFit:
    # lme4's order: terms by decreasing number of levels (stable)
    order = sorted(range(len(design.random)), key=lambda k: -design.random[k].nlevels)
    design.random = [design.random[k] for k in order]
    rs = design.random
    y = design.y if design.offset is None else design.y - design.offset
    sqrtw = None if design.weights is None else np.sqrt(design.weights)
    cp = cross_products(
        [r.Z for r in rs], [r.codes for r in rs], [r.nlevels for r in rs], design.X, y, sqrtw
    )
    sum_log_w = 0.0 if design.weights is None else float(np.log(design.weights).sum())
    crit, record = optimize_cross_products(cp, [r.q for r in rs], REML, sum_log_w, start)
    fit = LmerFit(design, crit, record, REML=REML, data_name=data_name)
    warn_about(fit)
    return fit


def optimize_cross_products(
    cp: Any, qs: list[int], REML: bool, sum_log_w: float, start: Any = None
) -> tuple[ProfiledCriterion, Any]:
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


def warn_about(fit: LmerFit) -> None:
    """Convergence problems and boundary fits as Python warnings (they are also
    kept on the fit and printed in its summary)."""
    for msg in fit.optinfo.messages:
        warnings.warn(msg, ConvergenceWarning, stacklevel=4)
    if fit.singular:
        warnings.warn(fit.singular_message, SingularFitWarning, stacklevel=4)


__all__ = ["lmer", "fit_design", "optimize_cross_products", "warn_about", "BOUNDARY_TOL"]
