"""Separate least-squares fits in every group: nlme's ``lmList``.

``lmList("mathach ~ ses | school", data)`` fits y_j = X_j β_j + e_j by
ordinary least squares in each group j, all groups at once:

* per-group cross-products  G_j = X_jᵀX_j  and  c_j = X_jᵀy_j  (``np.bincount``
  over rows, one pass per pair of columns),
* a batched Cholesky factorization of the column-scaled G_j that skips pivots
  whose squared ratio to the column's norm is below 1e-14: such a column is
  (numerically) a combination of earlier columns *within that group*, as R's
  QR with ``tol = 1e-7`` would find, and its coefficient is NaN (R's NA), the
  others being estimated on the remaining columns (a group with one
  observation gets its intercept and NaN slopes, as ``lm`` gives),
* β̂_j = G_j⁻¹ c_j, then two steps of iterative refinement with residuals
  computed row by row (β̂_j += G_j⁻¹ X_jᵀ(y_j − X_j β̂_j)), which recovers the
  accuracy the normal equations lose on ill-conditioned groups; RSS_j is the
  sum of the squared row residuals, not yᵀy − β̂ᵀc.

With r_j the rank of X_j and n_j its rows, the pooled residual variance is
s² = Σ_j RSS_j / Σ_j (n_j − r_j) (nlme's ``pooledSD``, with Σ (n_j − r_j)
degrees of freedom).  Standard errors are s·sqrt(diag G_j⁻¹) when ``pool`` is
true (as ``summary(lmList)``), otherwise s_j·sqrt(diag G_j⁻¹) with the group's
own s_j² = RSS_j / (n_j − r_j); t tests and intervals use the matching
degrees of freedom.

No loop runs over groups or rows: only over the p columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from multilevel import report
from multilevel.errors import DataError, FormulaError
from multilevel.formula.design import (
    Categorical,
    Numeric,
    build_design,
    categorize,
    evaluate_factor,
    group_codes,
    subset_rows,
    to_pandas,
    to_value,
)
from multilevel.formula.evaluate import Evaluator
from multilevel.formula.parser import (
    Expander,
    Factor,
    Parser,
    group_specs,
    parse_formula,
    tokenize,
)

# R's lm() declares a column aliased when less than 1e-7 of its norm is left
# after projecting out the earlier columns; on the scaled cross-product that
# is a Cholesky pivot below (1e-7)^2.
_ALIAS_TOL = 1e-14
_REFINEMENT_STEPS = 2


# --------------------------------------------------------------------------- formula


def split_group_formula(text: str) -> tuple[str, str, int]:
    """Split ``"y ~ x | g"`` at its top-level ``|``.

    Returns the model part ``"y ~ x"``, the grouping part ``"g"`` and the
    position of the ``|``.  ``|`` binds loosest after ``~`` (as in R), so
    ``y ~ a + b | g`` groups the whole ``a + b``.
    """
    if not isinstance(text, str):
        raise FormulaError(f"a formula must be a string, not {type(text).__name__}")
    tokens = tokenize(text)
    depth = 0
    tilde = False
    bars = []
    inner_bar = None
    for tok in tokens:  # formula tokens, not data rows
        if tok.kind != "op":
            continue
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
        elif tok.text == "~":
            tilde = True
        elif tok.text in ("|", "||"):
            if depth == 0 and tilde:
                bars.append(tok)
            elif inner_bar is None:
                inner_bar = tok
    if inner_bar is not None:
        raise FormulaError(
            "lmList fits no random effects: write 'response ~ predictors | group' "
            "without parentheses around the grouping",
            text,
            inner_bar.pos,
        )
    if not bars:
        raise FormulaError(
            "lmList needs a grouping factor: 'response ~ predictors | group'; '| group' is missing",
            text,
            len(text.rstrip()),
        )
    if bars[0].text == "||":
        raise FormulaError("use a single '|' before the grouping factor", text, bars[0].pos)
    if len(bars) > 1:
        raise FormulaError(
            "only one '|' (before the grouping factor) is allowed", text, bars[1].pos
        )
    bar = bars[0]
    return text[: bar.pos], text[bar.end :], bar.pos


def _relocate(exc: FormulaError, text: str) -> FormulaError:
    """The same error shown against the whole formula (positions already match)."""
    return FormulaError(exc.reason, text, exc.position)


def _parse_group(text: str, bar_end: int) -> tuple[list[tuple[str, ...]], dict[str, Factor]]:
    """Grouping factors of the part after ``|``: ``g``, ``a:b`` or nested ``a/b``.

    The part is parsed padded with blanks so that error positions refer to
    the whole formula.
    """
    src = " " * bar_end + text[bar_end:]
    factors: dict[str, Factor] = {}
    try:
        parser = Parser(src)
        if parser.peek().kind == "end":
            raise FormulaError("nothing after '|': give the grouping factor", text, bar_end - 1)
        node = parser.expression(0)
        if parser.peek().kind != "end":
            tok = parser.peek()
            raise FormulaError(f"unexpected '{tok.text}'", text, tok.pos)
        specs = group_specs(Expander(text, factors), node)
    except FormulaError as exc:
        raise _relocate(exc, text) from None
    return specs, factors


# --------------------------------------------------------------------------- numerics


def _group_crossprod(
    A: np.ndarray, B: np.ndarray, codes: np.ndarray, ngroups: int, symmetric: bool = False
) -> np.ndarray:
    """Stack of per-group A_jᵀB_j, shape (ngroups, a, b)."""
    a, b = A.shape[1], B.shape[1]
    out = np.empty((ngroups, a, b))
    for j in range(a):  # columns, not groups
        for k in range(j if symmetric else 0, b):
            out[:, j, k] = np.bincount(codes, weights=A[:, j] * B[:, k], minlength=ngroups)
            if symmetric:
                out[:, k, j] = out[:, j, k]
    return out


def _batched_cholesky(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factors of a stack of scaled Gram matrices, skipping
    aliased columns.

    Returns (L, alias).  An aliased column j gets row and column e_j in L, so
    L Lᵀ is the Gram matrix of the kept columns with an identity block for the
    aliased ones: solving with it leaves the aliased coordinates decoupled.
    """
    ng, p, _ = S.shape
    L = np.zeros_like(S)
    alias = np.zeros((ng, p), dtype=bool)
    for j in range(p):  # columns, vectorized over groups
        lj = L[:, j, :j]
        pivot = S[:, j, j] - np.einsum("gk,gk->g", lj, lj)
        bad = ~(pivot >= _ALIAS_TOL)  # NaN pivots count as aliased too
        alias[:, j] = bad
        L[bad, j, :j] = 0.0
        ljj = np.sqrt(np.where(bad, 1.0, pivot))
        L[:, j, j] = ljj
        if j + 1 < p:
            below = S[:, j + 1 :, j] - np.einsum("gik,gk->gi", L[:, j + 1 :, :j], L[:, j, :j])
            L[:, j + 1 :, j] = np.where(bad[:, None], 0.0, below / ljj[:, None])
    return L, alias


def _fit_groups(
    X: np.ndarray, y: np.ndarray, codes: np.ndarray, ngroups: int
) -> dict[str, np.ndarray]:
    """OLS in every group; see the module docstring for the method."""
    p = X.shape[1]
    G = _group_crossprod(X, X, codes, ngroups, symmetric=True)
    d = np.sqrt(np.einsum("gjj->gj", G))
    zero = ~(d > 0)
    d = np.where(zero, 1.0, d)
    S = G / d[:, :, None] / d[:, None, :]
    S[zero] = 0.0
    L, alias = _batched_cholesky(S)
    eye = np.broadcast_to(np.eye(p), L.shape)
    Linv = np.linalg.solve(L, eye)
    Sinv = np.einsum("gkj,gkl->gjl", Linv, Linv)  # (L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹

    def solve(rhs: np.ndarray) -> np.ndarray:
        scaled = np.where(alias, 0.0, rhs / d)
        return np.einsum("gjk,gk->gj", Sinv, scaled) / d

    def residuals(beta: np.ndarray) -> np.ndarray:
        return y - np.einsum("ij,ij->i", X, beta[codes])

    beta = solve(_group_crossprod(X, y[:, None], codes, ngroups)[:, :, 0])
    resid = residuals(beta)
    for _ in range(_REFINEMENT_STEPS):
        beta = beta + solve(_group_crossprod(X, resid[:, None], codes, ngroups)[:, :, 0])
        resid = residuals(beta)
    nobs = np.bincount(codes, minlength=ngroups)
    rank = p - alias.sum(axis=1)
    unscaled = Sinv / d[:, :, None] / d[:, None, :]
    unscaled[np.broadcast_to(alias[:, :, None], unscaled.shape)] = np.nan
    unscaled[np.broadcast_to(alias[:, None, :], unscaled.shape)] = np.nan
    beta[alias] = np.nan
    return {
        "coef": beta,
        "unscaled": unscaled,
        "rss": np.bincount(codes, weights=resid * resid, minlength=ngroups),
        "nobs": nobs,
        "rank": rank,
        "alias": alias,
        "resid": resid,
    }


# --------------------------------------------------------------------------- data


def _apply_subset(frame: pd.DataFrame, subset: Any) -> pd.DataFrame:
    if subset is None:
        return frame
    if isinstance(subset, str):
        try:
            mask = frame.eval(subset, level=2)  # '@name' refers to lmList's caller
        except Exception as exc:  # pandas raises many types for a bad expression
            raise DataError(f"cannot evaluate subset {subset!r}: {exc}") from None
        if not isinstance(mask, pd.Series) or not pd.api.types.is_bool_dtype(mask.dtype):
            raise DataError(f"subset {subset!r} must give one TRUE/FALSE per row")
        return frame[mask.fillna(False).to_numpy(dtype=bool)]
    if isinstance(subset, pd.Series):
        if not subset.index.equals(frame.index):
            raise DataError("a subset Series must have the same index as the data")
        values = subset
    else:
        values = pd.Series(np.asarray(subset))
    if not pd.api.types.is_bool_dtype(values.dtype):
        raise DataError(f"subset must be boolean (one TRUE/FALSE per row), not {values.dtype}")
    if len(values) != len(frame):
        raise DataError(f"subset has {len(values)} values for {len(frame)} rows")
    # as R's subset=, missing counts as FALSE
    return frame[values.fillna(False).to_numpy(dtype=bool)]


def _group_value(
    factor: Factor, frame: pd.DataFrame, evaluator: Evaluator, levels: dict | None
) -> Categorical:
    columns = [str(c) for c in frame.columns]
    raw = evaluate_factor(factor, frame, evaluator, columns)
    value = to_value(raw, factor.label, levels)
    if isinstance(value, Numeric):
        if value.values.shape[1] != 1 or value.values.shape[0] != len(frame):
            raise DataError(f"grouping factor {factor.label!r} must be one value per row")
        value = categorize(pd.Series(value.values[:, 0]), factor.label, None)
    return value


# --------------------------------------------------------------------------- result


class LmList:
    """Per-group OLS fits (nlme's ``lmList``).

    Attributes: ``coef`` (groups x coefficients; NaN where a coefficient is
    aliased within the group), ``se``, ``tvalue``, ``pvalue`` (with the pooled
    or per-group residual SD according to ``pool``), ``pooled_sd`` and
    ``pooled_df``, per group ``sigma``, ``df_resid``, ``rss``, ``group_nobs``,
    ``rank``; ``nobs``, ``ngroups``, ``n_dropped``, ``cov_unscaled`` ((G_j)⁻¹
    stacked, shape (ngroups, p, p)), ``fitted`` and ``residuals`` (Series on
    the rows used).
    """

    def __init__(
        self,
        formula: str,
        group_name: str,
        labels: list[str],
        names: list[str],
        fit: dict[str, np.ndarray],
        y: np.ndarray,  # the response as observed (offset included)
        row_index: pd.Index,
        pool: bool,
        n_dropped: int,
        data_name: str | None,
    ):
        self.formula = formula
        self.group_name = group_name
        self.pool = pool
        self.n_dropped = n_dropped
        self.data_name = data_name
        index = pd.Index(labels, name=group_name)
        cols = pd.Index(names)
        self.coef = pd.DataFrame(fit["coef"], index=index, columns=cols)
        self.cov_unscaled = fit["unscaled"]
        self.group_nobs = pd.Series(fit["nobs"], index=index, name="nobs")
        self.rank = pd.Series(fit["rank"], index=index, name="rank")
        self.df_resid = self.group_nobs - self.rank
        self.rss = pd.Series(fit["rss"], index=index, name="rss")
        with np.errstate(invalid="ignore", divide="ignore"):
            self.sigma = np.sqrt(self.rss / self.df_resid.where(self.df_resid > 0)).rename("sigma")
        self.pooled_df = int(self.df_resid.sum())
        self.pooled_sd = (
            float(np.sqrt(self.rss.sum() / self.pooled_df)) if self.pooled_df > 0 else np.nan
        )
        self.residuals = pd.Series(fit["resid"], index=row_index, name="residuals")
        self.fitted = pd.Series(y - fit["resid"], index=row_index, name="fitted")
        self.nobs = int(len(y))
        self.ngroups = len(labels)

    # ---- inference

    def _scale(self, pool: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """Residual SD and its degrees of freedom, per group."""
        pool = self.pool if pool is None else pool
        if pool:
            return (
                np.full(self.ngroups, self.pooled_sd),
                np.full(self.ngroups, float(self.pooled_df)),
            )
        return self.sigma.to_numpy(), self.df_resid.to_numpy(dtype=float)

    def std_errors(self, pool: bool | None = None) -> pd.DataFrame:
        """s·sqrt(diag (X_jᵀX_j)⁻¹); s pooled or per group (default: ``self.pool``)."""
        s, _ = self._scale(pool)
        diag = np.einsum("gjj->gj", self.cov_unscaled)
        return pd.DataFrame(
            s[:, None] * np.sqrt(diag), index=self.coef.index, columns=self.coef.columns
        )

    @property
    def se(self) -> pd.DataFrame:
        return self.std_errors()

    @property
    def tvalue(self) -> pd.DataFrame:
        return self.coef / self.se

    @property
    def pvalue(self) -> pd.DataFrame:
        """Two-sided p-values of the t statistics (pooled or per-group df)."""
        from scipy import stats  # scipy.stats costs 0.5 s to import: when used

        _, df = self._scale(None)
        with np.errstate(invalid="ignore"):
            p = 2.0 * stats.t.sf(np.abs(self.tvalue.to_numpy()), df[:, None])
        return pd.DataFrame(p, index=self.coef.index, columns=self.coef.columns)

    def confint(self, level: float = 0.95, pool: bool | None = None) -> pd.DataFrame:
        """Intervals β̂ ± t_{(1+level)/2, df}·se per group and coefficient (nlme's
        ``intervals(lmList)``): columns (coefficient, "lower"/"est."/"upper")."""
        from scipy import stats  # scipy.stats costs 0.5 s to import: when used

        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), not {level}")
        _, df = self._scale(pool)
        se = self.std_errors(pool).to_numpy()
        with np.errstate(invalid="ignore"):
            q = stats.t.ppf((1 + level) / 2, df)[:, None]
        est = self.coef.to_numpy()
        blocks = {}
        for j, name in enumerate(self.coef.columns):  # coefficients, not groups
            blocks[(name, "lower")] = est[:, j] - q[:, 0] * se[:, j]
            blocks[(name, "est.")] = est[:, j]
            blocks[(name, "upper")] = est[:, j] + q[:, 0] * se[:, j]
        return pd.DataFrame(blocks, index=self.coef.index)

    # ---- text

    def _header(self) -> list[str]:
        out = ["Call:", f"  Model: {self.formula} "]
        if self.data_name:
            out.append(f"   Data: {self.data_name} ")
        return out

    def _notes(self) -> list[str]:
        out = []
        aliased = int((self.rank < self.coef.shape[1]).sum())
        if aliased:
            out.append(f"{aliased} group(s) have aliased coefficients (NA)")
        if self.n_dropped:
            out.append(f"{self.n_dropped} rows with missing values were dropped")
        return out

    def __repr__(self) -> str:
        rows = [[str(g)] for g in self.coef.index]
        header = [""]
        for name in self.coef.columns:
            header.append(name)
            for row, cell in zip(rows, report.format_r(self.coef[name], 7), strict=True):
                row.append(cell)
        out = self._header() + ["", "Coefficients:", report.table(rows, header), ""]
        out.append(f"Degrees of freedom: {self.nobs} total; {self.pooled_df} residual")
        out.append(f"Residual standard error: {_fmt(self.pooled_sd)}")
        return "\n".join(out + self._notes())

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(repr(self))}</pre>"

    def summary(self) -> str:
        """nlme's ``summary(lmList)`` layout: for each coefficient a table of
        estimate, standard error, t value and p-value by group."""
        se, t, p = self.se, self.tvalue, self.pvalue
        out = self._header() + ["", "Coefficients:"]
        for name in self.coef.columns:
            cols = [
                report.format_r(self.coef[name], 7),
                report.format_r(se[name], 7),
                report.format_r(t[name], 7),
                [_fmt_p(v) for v in p[name]],
            ]
            rows = [[str(g), *(c[i] for c in cols)] for i, g in enumerate(self.coef.index)]
            out.append(f"   {name} ")
            out.append(report.table(rows, ["", "Estimate", "Std. Error", "t value", "Pr(>|t|)"]))
        if self.pool:
            out.append(
                f"\nResidual standard error: {_fmt(self.pooled_sd)} on {self.pooled_df} "
                "degrees of freedom"
            )
        else:
            out.append("\nStandard errors use each group's own residual standard error")
        return "\n".join(out + self._notes())


def _fmt(x: float) -> str:
    return "NA" if not np.isfinite(x) else f"{x:.7g}"


def _fmt_p(x: float) -> str:
    if not np.isfinite(x):
        return "NA"
    return f"{x:.2e}" if x < 1e-4 else f"{x:.5f}"


# --------------------------------------------------------------------------- entry point


def lmList(
    formula: str,
    data: Any,
    subset: Any = None,
    pool: bool = True,
    *,
    na_action: str = "omit",
    levels: dict[str, list] | None = None,
) -> LmList:
    """OLS fit of ``y ~ x`` in every group of ``formula = "y ~ x | g"``.

    ``g`` may be a column (numeric columns are factors), an interaction
    ``a:b`` (groups labelled ``A:a``) or nested ``a/b`` (the innermost
    groups, labelled ``A/a`` as in nlme).  ``subset`` is a boolean mask
    (array or Series with the data's index; missing counts as FALSE) or a
    pandas expression string such as ``'sector == "Catholic"'``.  Groups
    without rows after subsetting are left out.  ``pool`` chooses the pooled
    residual SD for standard errors, t tests and intervals (nlme's default).
    Rows with missing values in used variables are dropped
    (``na_action="omit"``) or refused (``"raise"``).
    """
    if not isinstance(pool, (bool, np.bool_)):
        raise DataError(f"pool must be True or False, not {pool!r}")
    model_text, _, bar_pos = split_group_formula(formula)
    try:
        parsed = parse_formula(model_text)
    except FormulaError as exc:
        raise _relocate(exc, formula) from None
    specs, gfactors = _parse_group(formula, bar_pos + 1)
    group = specs[-1]  # nlme fits at the innermost level of a nested grouping
    nested = len(specs) > 1
    group_name = formula[bar_pos + 1 :].strip()

    frame = to_pandas(data)
    data_name = frame.attrs.get("name")
    frame = _apply_subset(frame, subset)
    if len(frame) == 0:
        raise DataError("no rows are left after applying subset")
    original_index = frame.index
    # positional labels let build_design's row_index map back to grouping codes
    work = frame.reset_index(drop=True)

    evaluator = Evaluator()
    parts = [_group_value(gfactors[g], work, evaluator, levels) for g in group]
    missing = np.zeros(len(work), dtype=bool)
    for part in parts:
        missing |= part.codes < 0
    if missing.any() and na_action == "raise":
        raise DataError(
            f"{int(missing.sum())} rows have missing values in the grouping factor "
            f"{group_name!r} and na_action='raise'"
        )
    design = build_design(
        parsed,
        work[~missing] if missing.any() else work,
        levels=levels,
        na_action=na_action,
        drop_aliased=False,  # aliasing is judged per group, as nlme's lm() fits do
    )
    keep = np.zeros(len(work), dtype=bool)
    keep[design.row_index.to_numpy()] = True
    parts = [subset_rows(part, keep) for part in parts]
    codes, labels, comps = group_codes(parts)
    if nested:
        pieces = [
            pd.Series(np.asarray(p.labels, dtype=object)[comps[:, k]]) for k, p in enumerate(parts)
        ]
        labels = list(pieces[0].str.cat(pieces[1:], sep="/"))

    y = design.y if design.offset is None else design.y - design.offset
    fit = _fit_groups(design.X, y, codes, len(labels))
    y = design.y
    return LmList(
        formula,
        group_name,
        labels,
        design.fixef_names,
        fit,
        y,
        original_index[design.row_index.to_numpy()],
        bool(pool),
        int(missing.sum()) + design.n_dropped,
        data_name,
    )
