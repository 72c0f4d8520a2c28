r"""Pictures of multilevel models (matplotlib; ``pip install multilevel[plot]``).

Every function returns a :class:`matplotlib.figure.Figure`.  Without ``ax=``
the figure is a standalone ``Figure`` (no pyplot state, no GUI: it renders
headless and shows once when returned in a notebook; save it with
``fig.savefig``).  To draw into your own figure, e.g. one from
``plt.subplots``, pass ``ax=`` (one Axes, or a sequence with one Axes per
panel); the figure of those axes is returned.  Importing this module does not
import matplotlib; the first plot does, and raises
:class:`MissingDependencyError` (an ``ImportError``) when it is missing.

Fits: :class:`~multilevel.LmerFit`, and the objects that wrap one in
``.lmer`` (:class:`~multilevel.LmeFit`, :class:`~multilevel.MultilevelFit`);
generalized fits from :func:`multilevel.glmm.fit.glmer` where noted.

What is drawn
-------------
* ``caterpillar``: conditional modes b̂_j of each random-effects column with
  intervals b̂_j ± z_{(1+level)/2}·sd(b_j | y), sd from the conditional
  covariance at θ̂ (lme4's ``dotplot(ranef(fit, condVar = TRUE))``).
* ``lmlist_intervals``: per-group OLS coefficients with their t intervals,
  one panel per coefficient (nlme's ``plot(intervals(lmList))``).
* ``residuals_fitted``, ``qq_residuals``, ``qq_ranef``,
  ``residuals_by_group`` and the composite ``diagnostics``: standardized
  residuals (y − ŷ)/σ̂ (Pearson residuals for GLMMs) against fitted values,
  normal quantile plots at R's plotting positions p_i = (i − a)/(n + 1 − 2a)
  (a = 3/8 for n ≤ 10, else 1/2) with the line through the quartiles, and
  per-group boxplots.
* ``trajectories``: for a sample of groups, the data with the group-level
  fit x_ijᵀβ̂ + z_ijᵀb̂_j and the population-level fit x_ijᵀβ̂ (nlme's
  ``plot(augPred(fit, level = 0:1))``).
* ``profile_zeta``: likelihood profiles ζ(v) = sign(v − v̂)√(d(v) − d̂) from
  :func:`multilevel.inference.profile`, with the ±z cut-offs and the profile
  interval.
* ``effect_plot``: the population-level prediction η(x) = x₀(x)ᵀβ̂ across a
  covariate with other variables held fixed, and the band
  g⁻¹(η ± z·√(x₀ᵀ V x₀)), V = vcov(β̂); g⁻¹ is the identity for LMMs and the
  inverse link for GLMMs on the response scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from multilevel.errors import DataError, ModelError, MultilevelError
from multilevel.formula.design import to_pandas

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from multilevel.inference.profile import Profile
    from multilevel.workflow.lmlist import LmList

AxesArg = Any  # an Axes or a sequence of Axes (matplotlib is optional at import)

INSTALL_HINT = "pip install multilevel[plot]"
MAX_LABELS = 50  # more group labels than this are not printed on an axis


class MissingDependencyError(MultilevelError, ImportError):
    """An optional dependency (here matplotlib) is not installed."""


# --------------------------------------------------------------------------- matplotlib


def _matplotlib() -> Any:
    """Import matplotlib on first use (it is an optional extra)."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from exc
    return matplotlib


def _panels(
    ax: AxesArg, n: int, ncols: int | None = None, panel_size: tuple[float, float] = (3.4, 3.0)
) -> tuple[Figure, list[Axes]]:
    """n panels: the caller's axes, or a new standalone figure with a grid of them."""
    _matplotlib()
    if ax is not None:
        axes = [ax] if not isinstance(ax, (Sequence, np.ndarray)) else list(np.ravel(ax))
        if len(axes) != n:
            raise ModelError(f"this plot has {n} panel(s) but ax= gives {len(axes)} Axes")
        return axes[0].figure, axes
    from matplotlib.figure import Figure

    ncols = min(n, ncols or n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = list(grid.ravel())
    for extra in axes[n:]:
        extra.remove()
    return fig, axes[:n]


def _group_height(ngroups: int) -> float:
    return float(np.clip(1.2 + 0.045 * ngroups, 3.0, 9.0))


def _label_groups(ax: Axes, labels: Sequence[str], show: bool | None, axis: str = "y") -> None:
    show = len(labels) <= MAX_LABELS if show is None else show
    setter = ax.set_yticks if axis == "y" else ax.set_xticks
    if show:
        setter(np.arange(len(labels)), [str(v) for v in labels], fontsize="x-small")
    else:
        setter([])


# --------------------------------------------------------------------------- models


def _model(fit: Any) -> Any:
    """The fitted engine object: LmeFit and MultilevelFit carry an LmerFit in ``.lmer``."""
    inner = getattr(fit, "__dict__", {}).get("lmer")
    model = inner if inner is not None else fit
    if not hasattr(model, "design") or not hasattr(model, "ranef"):
        raise ModelError(f"expected a fitted mixed model, not {type(fit).__name__}")
    return model


def _is_glmm(m: Any) -> bool:
    return hasattr(m, "family")


def _groups(m: Any, group: str | None) -> list[str]:
    names = list(m.ranef)
    if group is None:
        return names
    if group not in names:
        raise ModelError(f"no random effects for {group!r}; the grouping factors are {names}")
    return [group]


def _structure(m: Any, group: str | None) -> Any:
    """The first random-effects structure of ``group`` (default: the first factor)."""
    name = _groups(m, group)[0]
    return next(r for r in m.design.random if r.name == name)


def _std_residuals(m: Any) -> tuple[np.ndarray, str]:
    if _is_glmm(m):
        return m.residuals(type="pearson").to_numpy(), "Pearson residuals"
    return m.residuals(type="pearson", scaled=True).to_numpy(), "standardized residuals"


def _fitted(m: Any) -> tuple[np.ndarray, str]:
    if _is_glmm(m):
        return m.linear_predictor.to_numpy(), "linear predictor"
    return m.fitted.to_numpy(), "fitted values"


def _response_name(m: Any) -> str:
    resp = m.design.formula.response
    return getattr(resp, "label", None) or str(resp)


def ppoints(n: int) -> np.ndarray:
    """R's plotting positions (i − a)/(n + 1 − 2a), a = 3/8 for n ≤ 10 else 1/2."""
    a = 3.0 / 8.0 if n <= 10 else 0.5
    return (np.arange(1, n + 1) - a) / (n + 1 - 2 * a)


def _z(level: float) -> float:
    from scipy import stats  # scipy.stats costs 0.5 s to import: when used

    if not 0 < level < 1:
        raise ModelError(f"level must be between 0 and 1, not {level}")
    return float(stats.norm.ppf(0.5 + level / 2))


# --------------------------------------------------------------------------- caterpillar


def caterpillar(
    fit: Any,
    group: str | None = None,
    terms: Sequence[str] | str | None = None,
    level: float = 0.95,
    sort: bool = True,
    labels: bool | None = None,
    ax: AxesArg = None,
) -> Figure:
    """Caterpillar plot: one panel per random-effects column (of ``group``, or of
    every grouping factor), each group's conditional mode b̂_j with the interval
    b̂_j ± z·sd(b_j | y), z = Φ⁻¹((1 + level)/2) (1.96 for 95%).

    ``sort`` orders each panel by its modes; ``terms`` picks columns;
    ``labels`` prints group labels (default: up to 50 groups).  Points are the
    line labelled ``"conditional mode"``, intervals the collection labelled
    ``"interval"``.
    """
    _matplotlib()  # before any numerical work
    m = _model(fit)
    z = _z(level)
    panels = []
    for g in _groups(m, group):
        modes, sds = m.ranef[g], m.ranef_condsd[g]
        cols = list(modes.columns)
        want = cols if terms is None else ([terms] if isinstance(terms, str) else list(terms))
        for t in want:
            if t not in cols and terms is not None and group is None:
                continue  # another grouping factor may have it
            if t not in cols:
                raise ModelError(f"{g!r} has no random effect {t!r}; it has {cols}")
            panels.append((g, t, modes[t].to_numpy(), sds[t].to_numpy(), list(modes.index)))
    if not panels:
        raise ModelError(f"no random-effects column among {terms!r}")
    height = _group_height(max(len(p[2]) for p in panels))
    fig, axes = _panels(ax, len(panels), panel_size=(3.6, height))
    for a, (g, t, b, sd, levels) in zip(axes, panels, strict=True):
        order = np.argsort(b, kind="stable") if sort else np.arange(len(b))
        y = np.arange(len(b))
        a.axvline(0.0, color="0.6", lw=0.8, ls=":", zorder=0)
        a.hlines(y, (b - z * sd)[order], (b + z * sd)[order], color="C0", lw=1.0, label="interval")
        a.plot(b[order], y, "o", color="C3", ms=2.5, label="conditional mode")
        a.set_xlabel(t)
        a.set_ylabel(f"{g} (sorted)" if sort else g)
        a.set_title(f"{t} | {g}", fontsize="medium")
        a.set_ylim(-1, len(b))
        _label_groups(a, [levels[i] for i in order], labels)
    return fig


# --------------------------------------------------------------------------- lmList


def lmlist_intervals(
    lmlist: LmList,
    level: float = 0.95,
    pool: bool | None = None,
    sort_by: str | int | None = 0,
    labels: bool | None = None,
    ax: AxesArg = None,
) -> Figure:
    """Per-group coefficient intervals of an :class:`~multilevel.LmList`, one
    panel per coefficient, groups on a common vertical axis (nlme's
    ``plot(intervals(lmList))``): the estimate β̂_jk and β̂_jk ± t·se from
    :meth:`LmList.confint` (pooled SD by default).

    ``sort_by``: a coefficient (name or position) whose estimates order the
    groups in every panel, or ``None`` for the groups' own order.  A dashed
    vertical line marks the mean of the groups' estimates.  Groups whose
    coefficient is not estimable (NaN) get no interval.  Intervals are the
    collection labelled ``"interval"``, estimates the line ``"estimate"``.
    """
    _matplotlib()  # before any numerical work
    ci = lmlist.confint(level=level, pool=pool)
    names = list(lmlist.coef.columns)
    groups = list(lmlist.coef.index)
    if sort_by is None:
        order = np.arange(len(groups))
    else:
        key = names[sort_by] if isinstance(sort_by, int) else sort_by
        if key not in names:
            raise ModelError(f"sort_by {sort_by!r} is not a coefficient; they are {names}")
        order = np.argsort(lmlist.coef[key].to_numpy(), kind="stable")  # NaN last
    fig, axes = _panels(ax, len(names), panel_size=(3.4, _group_height(len(groups))))
    y = np.arange(len(groups))
    for a, name in zip(axes, names, strict=True):
        lo, est, hi = (ci[(name, k)].to_numpy()[order] for k in ("lower", "est.", "upper"))
        ok = np.isfinite(lo) & np.isfinite(hi)
        a.hlines(y[ok], lo[ok], hi[ok], color="C0", lw=1.0, label="interval")
        a.plot(est, y, "o", color="C3", ms=2.5, label="estimate")
        a.axvline(np.nanmean(est), color="0.4", lw=0.8, ls="--", label="mean")
        a.set_xlabel(name)
        a.set_title(name, fontsize="medium")
        a.set_ylim(-1, len(groups))
        _label_groups(a, [groups[i] for i in order], labels)
    axes[0].set_ylabel(lmlist.group_name)
    pct = f"{100 * level:g}%"
    fig.suptitle(f"{lmlist.formula}: {pct} intervals per {lmlist.group_name}", fontsize="medium")
    return fig


# --------------------------------------------------------------------------- diagnostics


def residuals_fitted(fit: Any, ax: Axes | None = None) -> Figure:
    """Standardized residuals (Pearson residuals for GLMMs) against the fitted
    values (the linear predictor for GLMMs), with a zero line."""
    _matplotlib()  # before any numerical work
    m = _model(fit)
    r, rlab = _std_residuals(m)
    f, flab = _fitted(m)
    fig, (a,) = _panels(ax, 1, panel_size=(4.5, 3.6))
    a.plot(f, r, "o", ms=2, alpha=0.35, color="C0", mec="none", label="residuals")
    a.axhline(0.0, color="C3", lw=1.0)
    a.set_xlabel(flab)
    a.set_ylabel(rlab)
    a.set_title("Residuals vs fitted", fontsize="medium")
    return fig


def _qq(a: Axes, values: np.ndarray, ylabel: str, title: str) -> None:
    from scipy import stats  # scipy.stats costs 0.5 s to import: when used

    v = np.sort(values[np.isfinite(values)])
    q = stats.norm.ppf(ppoints(len(v)))
    a.plot(q, v, "o", ms=2.5, color="C0", mec="none", alpha=0.7, label="sample")
    # R's qqline: the line through the first and third quartiles
    yq = np.quantile(v, [0.25, 0.75])
    xq = stats.norm.ppf([0.25, 0.75])
    slope = (yq[1] - yq[0]) / (xq[1] - xq[0])
    a.axline((xq[0], yq[0]), slope=slope, color="C3", lw=1.0, label="quartile line")
    a.set_xlabel("standard normal quantiles")
    a.set_ylabel(ylabel)
    a.set_title(title, fontsize="medium")


def qq_residuals(fit: Any, ax: Axes | None = None) -> Figure:
    """Normal quantile plot of the standardized residuals."""
    _matplotlib()  # before any numerical work
    m = _model(fit)
    r, rlab = _std_residuals(m)
    fig, (a,) = _panels(ax, 1, panel_size=(4.0, 3.6))
    _qq(a, r, rlab, "Normal Q-Q: residuals")
    return fig


def qq_ranef(
    fit: Any, group: str | None = None, terms: Sequence[str] | None = None, ax: AxesArg = None
) -> Figure:
    """Normal quantile plots of the conditional modes, one panel per
    random-effects column (of ``group`` or of every grouping factor)."""
    _matplotlib()  # before any numerical work
    m = _model(fit)
    panels = []
    for g in _groups(m, group):
        re = m.ranef[g]
        for t in re.columns if terms is None else [c for c in terms if c in re.columns]:
            panels.append((g, t, re[t].to_numpy()))
    if not panels:
        raise ModelError(f"no random-effects column among {terms!r}")
    fig, axes = _panels(ax, len(panels), panel_size=(3.4, 3.2))
    for a, (g, t, b) in zip(axes, panels, strict=True):
        _qq(a, b, f"{t} | {g}", f"Normal Q-Q: {t} | {g}")
    return fig


def residuals_by_group(
    fit: Any,
    group: str | None = None,
    sort: bool = True,
    labels: bool | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Boxplots of the standardized residuals in every group (ordered by their
    medians when ``sort``).  Each box's line has gid ``"box"``."""
    _matplotlib()  # before any numerical work
    m = _model(fit)
    r = _structure(m, group)
    res, rlab = _std_residuals(m)
    codes = r.codes
    # rows of each group, split once (no loop over rows)
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=r.nlevels))[:-1]
    per_group = np.split(res[order], bounds)
    medians = pd.Series(res).groupby(codes).median().reindex(range(r.nlevels)).to_numpy()
    pos = np.argsort(medians, kind="stable") if sort else np.arange(r.nlevels)
    width = float(np.clip(2.0 + 0.06 * r.nlevels, 4.5, 12.0))
    fig, (a,) = _panels(ax, 1, panel_size=(width, 3.6))
    bp = a.boxplot(
        [per_group[i] for i in pos],
        positions=np.arange(r.nlevels),
        widths=0.6,
        sym=".",
        flierprops={"markersize": 2, "alpha": 0.5},
        medianprops={"color": "C3"},
        boxprops={"linewidth": 0.7},
        whiskerprops={"linewidth": 0.7},
        capprops={"linewidth": 0.7},
        manage_ticks=False,
    )
    for box in bp["boxes"]:  # artists, one per group: matplotlib draws them one by one
        box.set_gid("box")
    for med in bp["medians"]:
        med.set_gid("median")
    a.axhline(0.0, color="0.5", lw=0.8, ls=":")
    a.set_xlim(-1, r.nlevels)
    _label_groups(a, [r.levels[i] for i in pos], labels, axis="x")
    a.set_xlabel(f"{r.name} (sorted by median)" if sort else r.name)
    a.set_ylabel(rlab)
    a.set_title(f"Residuals by {r.name}", fontsize="medium")
    return fig


def diagnostics(fit: Any, group: str | None = None) -> Figure:
    """Residuals vs fitted, normal Q-Q of the residuals, normal Q-Q of every
    random-effects column of ``group`` (default: the first grouping factor)
    and residuals by group, in one figure."""
    _matplotlib()
    from matplotlib.figure import Figure

    m = _model(fit)
    g = _structure(m, group).name
    cols = list(m.ranef[g].columns)
    ntop = 2 + len(cols)
    fig = Figure(figsize=(3.3 * ntop, 7.0), layout="constrained")
    grid = fig.add_gridspec(2, ntop)
    residuals_fitted(m, ax=fig.add_subplot(grid[0, 0]))
    qq_residuals(m, ax=fig.add_subplot(grid[0, 1]))
    qq_ranef(m, group=g, ax=[fig.add_subplot(grid[0, 2 + k]) for k in range(len(cols))])
    residuals_by_group(m, group=g, ax=fig.add_subplot(grid[1, :]))
    return fig


# --------------------------------------------------------------------------- trajectories


def _covariate(m: Any, x: str, data: Any) -> np.ndarray:
    """Values of covariate ``x`` on the rows the model used."""
    if data is not None:
        frame = to_pandas(data)
        if x not in frame.columns:
            raise DataError(f"column {x!r} is not in the data")
        return frame.loc[m.design.row_index, x].to_numpy(dtype=float)
    names = list(m.design.fixef_names)
    if x not in names:
        raise DataError(
            f"{x!r} is not a column of the fixed-effects matrix ({names}); pass data= "
            "to take it from the data"
        )
    return m.design.X[:, names.index(x)]


def trajectories(
    fit: Any,
    x: str,
    data: Any = None,
    group: str | None = None,
    groups: Sequence[Any] | None = None,
    n: int = 9,
    seed: int | None = 0,
    ncols: int = 3,
    ax: AxesArg = None,
) -> Figure:
    """The data against covariate ``x`` for a sample of groups, with the
    group-level fitted line (random effects included, label ``"group fit"``)
    and the population-level line (b = 0, label ``"population fit"``), one
    panel per group (nlme's ``augPred`` plot).

    ``x`` is a data column (give ``data=``, the data the model was fitted to)
    or a column of the fixed-effects matrix.  ``groups`` lists group labels;
    otherwise ``n`` groups are drawn at random (``seed``) and shown in level
    order.  Lines join the fitted values at the observed x, sorted.  For GLMMs
    the fits are on the response scale.
    """
    _matplotlib()  # before any numerical work
    m = _model(fit)
    r = _structure(m, group)
    xv = _covariate(m, x, data)
    if _is_glmm(m):
        y = m.y.to_numpy()
        unit = m.fitted.to_numpy()
        pop = m.predict(re_form="~0", type="response").to_numpy()
    else:
        y = m.design.y
        unit = m.fitted.to_numpy()
        pop = m.predict(re_form="~0").to_numpy()
    labels = [str(v) for v in r.levels]
    if groups is None:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(r.nlevels, size=min(n, r.nlevels), replace=False))
    else:
        lookup = {lab: i for i, lab in enumerate(labels)}
        missing = [g for g in groups if str(g) not in lookup]
        if missing:
            raise DataError(f"{r.name!r} has no level(s) {missing[:5]}")
        pick = np.array([lookup[str(g)] for g in groups])
    fig, axes = _panels(ax, len(pick), ncols=ncols, panel_size=(3.0, 2.6))
    for a, j in zip(axes, pick, strict=True):
        rows = np.flatnonzero(r.codes == j)
        rows = rows[np.argsort(xv[rows], kind="stable")]
        a.plot(xv[rows], y[rows], "o", ms=3, color="0.35", alpha=0.6, mec="none", label="data")
        a.plot(xv[rows], unit[rows], "-", color="C0", lw=1.6, label="group fit")
        a.plot(xv[rows], pop[rows], "--", color="C3", lw=1.2, label="population fit")
        a.set_title(f"{r.name} {labels[j]}", fontsize="small")
        a.set_xlabel(x)
        a.set_ylabel(_response_name(m))
    if ax is None:
        for a in axes[1:]:
            a.sharex(axes[0])
            a.sharey(axes[0])
        for a in axes:  # limits over all panels' data, now that they are shared
            a.autoscale_view()
        axes[0].legend(fontsize="x-small", loc="best")
    return fig


# --------------------------------------------------------------------------- profiles


def profile_zeta(
    prof: Profile | Any,
    which: Sequence[str] | str | None = None,
    absolute: bool = False,
    ncols: int = 3,
    ax: AxesArg = None,
) -> Figure:
    """ζ against each profiled parameter (a fitted model is profiled first).

    The trace is the line labelled ``"zeta"``; dotted horizontal lines at
    ±z_{(1+level)/2}; vertical segments (label ``"interval"``) from ζ = 0 to
    the trace at the profile interval's finite endpoints (an endpoint at a
    bound, e.g. an SD of 0, ends below the cut-off).  A straight trace means the likelihood is
    quadratic in that parameter, so Wald intervals would do.  ``absolute``
    plots |ζ| (lme4's ``absVal``).
    """
    _matplotlib()  # before any numerical work
    if not hasattr(prof, "traces"):
        from multilevel.inference.profile import profile

        prof = profile(_model(prof))
    names = list(prof.traces)
    if which is not None:
        want = [which] if isinstance(which, str) else list(which)
        unknown = [w for w in want if w not in names]
        if unknown:
            raise ModelError(f"no profile for {unknown}; profiled: {names}")
        names = want
    z = _z(prof.level)
    fig, axes = _panels(ax, len(names), ncols=ncols, panel_size=(3.2, 2.8))
    for a, name in zip(axes, names, strict=True):
        tr = prof.traces[name]
        v = tr[name].to_numpy()
        zeta = tr["zeta"].to_numpy()
        a.plot(v, np.abs(zeta) if absolute else zeta, "-o", ms=2.5, color="C0", label="zeta")
        for h in (z,) if absolute else (-z, z):
            a.axhline(h, color="0.5", lw=0.8, ls=":")
        ends = np.asarray(prof.ci.loc[name], dtype=float)
        ends = ends[np.isfinite(ends)]
        if ends.size:
            # from ζ = 0 up to the trace at the endpoint: |ζ| = z, or less at a bound
            top = np.interp(ends, v, zeta)
            a.vlines(ends, 0.0, np.abs(top) if absolute else top, color="C3", label="interval")
        a.set_xlabel(name)
        a.set_ylabel("|ζ|" if absolute else "ζ")
        a.set_title(name, fontsize="small")
    return fig


# --------------------------------------------------------------------------- effects


def _fixed_rows(m: Any, frame: pd.DataFrame) -> np.ndarray:
    """Fixed-effects model matrix rows of new data, coded as in the fit."""
    from multilevel.formula.newdata import fixed_rows

    return fixed_rows(m.design, frame)


def _model_variables(m: Any, frame: pd.DataFrame) -> dict[str, Any]:
    """Data columns the fixed part uses, with the FactorSpec of each."""
    response = _response_name(m)
    grouping = {g for r in m.design.random for g in r.term.group}
    out = {}
    for label, spec in m.design.factor_specs.items():
        if label in frame.columns and label != response and label not in grouping:
            out[label] = spec
    return out


def _typical(value_col: pd.Series, spec: Any) -> Any:
    if spec is not None and spec.categorical:
        return spec.values[0]  # the reference level
    if pd.api.types.is_numeric_dtype(value_col.dtype) and not pd.api.types.is_bool_dtype(
        value_col.dtype
    ):
        return float(value_col.mean())
    return value_col.iloc[0]


def _show(v: Any) -> str:
    if isinstance(v, float):
        # a centred variable's mean is 0 up to rounding: print 0, not 3.7e-17
        return f"{0.0 if abs(v) < 1e-10 else v:.3g}"
    return str(v)


def effect_grid(
    fit: Any,
    x: str,
    data: Any,
    by: str | None = None,
    at: Mapping[str, Any] | None = None,
    n: int = 101,
    level: float = 0.95,
    scale: str = "response",
) -> pd.DataFrame:
    """The numbers behind :func:`effect_plot`: one row per grid point (and
    level of ``by``) with the held values, ``eta``, its standard error
    ``se_eta`` = √(x₀ᵀVx₀), and ``fit``, ``lower``, ``upper`` on the chosen
    scale (``"response"`` or ``"link"``)."""
    m = _model(fit)
    if scale not in ("response", "link"):
        raise ModelError(f"scale must be 'response' or 'link', not {scale!r}")
    z = _z(level)
    frame = to_pandas(data)
    if x not in frame.columns:
        raise DataError(f"column {x!r} is not in the data")
    try:
        used = frame.loc[m.design.row_index]
    except KeyError:
        raise DataError("data= must be the data the model was fitted to") from None
    xs = used[x]
    if not pd.api.types.is_numeric_dtype(xs.dtype) or pd.api.types.is_bool_dtype(xs.dtype):
        raise DataError(f"{x!r} must be numeric for an effect plot (use by= for a factor)")
    variables = _model_variables(m, frame)
    if x not in variables:
        raise ModelError(f"{x!r} is not a variable of the fixed part of the model")
    at = dict(at or {})
    for k in at:
        if k not in frame.columns:
            raise DataError(f"at= names {k!r}, which is not in the data")
    held = {c: at.get(c, _typical(used[c], s)) for c, s in variables.items() if c not in (x, by)}
    if by is None:
        by_levels: list[Any] = [None]
    else:
        if by not in variables:
            raise ModelError(f"by={by!r} is not a variable of the fixed part of the model")
        spec = variables[by]
        by_levels = list(spec.values) if spec.categorical else sorted(used[by].unique())
    grid = np.linspace(float(xs.min()), float(xs.max()), n)
    pieces = []
    for lev in by_levels:  # a handful of levels
        part = pd.DataFrame({x: grid})
        if by is not None:
            part[by] = lev
        for c, v in held.items():
            part[c] = v
        pieces.append(part)
    new = pd.concat(pieces, ignore_index=True)
    for c in variables:
        if isinstance(frame[c].dtype, pd.CategoricalDtype):
            new[c] = pd.Categorical(new[c], categories=frame[c].cat.categories)
    X = _fixed_rows(m, new)
    eta = m.predict(new, re_form="~0").to_numpy()  # offsets included
    V = m.vcov.to_numpy()
    se = np.sqrt(np.einsum("ij,jk,ik->i", X, V, X))
    lo, hi = eta - z * se, eta + z * se
    if scale == "response" and _is_glmm(m):
        inv = m.family.linkinv
        out_fit, out_lo, out_hi = inv(eta), inv(lo), inv(hi)
    else:
        out_fit, out_lo, out_hi = eta, lo, hi
    new["eta"] = eta
    new["se_eta"] = se
    new["fit"] = out_fit
    new["lower"] = out_lo
    new["upper"] = out_hi
    new.attrs["held"] = held
    return new


def effect_plot(
    fit: Any,
    x: str,
    data: Any,
    by: str | None = None,
    at: Mapping[str, Any] | None = None,
    n: int = 101,
    level: float = 0.95,
    scale: str = "response",
    ax: Axes | None = None,
) -> Figure:
    """Predicted response across covariate ``x`` with a confidence band, one
    curve per level of ``by``.

    The other variables of the fixed part are held at ``at`` or else at their
    mean over the fitted rows (numeric) or reference level (factors); the
    prediction is at the population level (b = 0: a typical group, not the
    average over groups, which differ for a GLMM).  The band is
    g⁻¹(η ± z·√(x₀ᵀVx₀)) with V = vcov(β̂): for a GLMM with
    ``scale="response"`` it is on the probability (mean) scale.  Curves are
    the lines labelled with ``by``'s levels (or ``"prediction"``), bands the
    filled collections with the same labels plus ``" band"``.
    """
    _matplotlib()  # before any numerical work
    m = _model(fit)
    grid = effect_grid(m, x, data, by=by, at=at, n=n, level=level, scale=scale)
    fig, (a,) = _panels(ax, 1, panel_size=(4.8, 3.8))
    levels = [None] if by is None else list(dict.fromkeys(grid[by]))
    for k, lev in enumerate(levels):  # a handful of levels
        part = grid if by is None else grid[grid[by] == lev]
        name = "prediction" if by is None else f"{by} = {lev}"
        color = f"C{k}"
        band = f"{name} band"
        a.fill_between(
            part[x], part["lower"], part["upper"], color=color, alpha=0.2, lw=0, label=band
        )
        a.plot(part[x], part["fit"], "-", color=color, lw=1.8, label=name)
    resp = _response_name(m)
    if _is_glmm(m):
        if scale == "link":
            ylab = f"{m.family.link.name}({resp})"
        else:
            ylab = f"P({resp})" if m.family.name == "binomial" else f"mean of {resp}"
    else:
        ylab = resp
    a.set_xlabel(x)
    a.set_ylabel(ylab)
    held = grid.attrs["held"]
    if held:
        text = ", ".join(f"{k} = {_show(v)}" for k, v in held.items())
        a.set_title(f"at {text}", fontsize="small")
    handles, labs = a.get_legend_handles_labels()
    keep = [i for i, lab in enumerate(labs) if not lab.endswith(" band")]
    if by is not None:
        a.legend([handles[i] for i in keep], [labs[i] for i in keep], fontsize="small")
    return fig


__all__ = [
    "MissingDependencyError",
    "caterpillar",
    "diagnostics",
    "effect_grid",
    "effect_plot",
    "lmlist_intervals",
    "ppoints",
    "profile_zeta",
    "qq_ranef",
    "qq_residuals",
    "residuals_by_group",
    "residuals_fitted",
    "trajectories",
]
