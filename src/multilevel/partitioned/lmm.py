"""Linear mixed models from data in chunks: Dask, Parquet, or frames too large
for a one-shot pass.

An LMM's likelihood depends on the rows only through the cross-product blocks
of [Z X y] (:mod:`multilevel.linalg.crossprod`), which are sums over rows.  So:

1. a first pass over the chunks agrees on every factor's levels (the union of
   the values seen, sorted as a single in-memory pass would sort them; pandas
   category order where the column is categorical) and counts rows;
2. a second pass builds each chunk's design with those frozen levels and its
   cross-products in a centred and scaled basis shared by all chunks (taken
   from the first rows, :mod:`multilevel.lmm.basis`), summed pairwise (on the
   workers, for Dask);
3. the optimisation runs locally on the sums, exactly as for in-memory data.

The answer is the in-memory answer up to the order of floating-point
summation.  Peak memory per worker is one chunk plus its cross-products
(O(levels · q²)), never O(n).  Fitted values, residuals and predictions on the
fitting data come back as Dask collections (or, for a pandas frame, pandas
objects computed chunk by chunk).

Stateful transformations (``scale``, ``center``, ``poly``) would need the
whole column and are refused: add the transformed column first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multilevel.errors import DataError, ModelError
from multilevel.formula.design import (
    Categorical,
    Design,
    aliased_from_gram,
    build_design,
    categorize,
    combo_keys,
    evaluate_factor,
    is_categorical,
    used_labels,
    warn_rank_deficient,
)
from multilevel.formula.evaluate import Evaluator
from multilevel.formula.parser import ParsedFormula, parse_formula
from multilevel.linalg.crossprod import CrossProducts, cross_products
from multilevel.lmm.basis import Basis
from multilevel.lmm.estimate import optimize_in_basis
from multilevel.lmm.results import LmerFit
from multilevel.mixedfit import warn_about
from multilevel.threads import single_threaded_blas

_STATEFUL = ("scale(", "center(", "poly(")


def is_dask(data: Any) -> bool:
    return type(data).__module__.split(".")[0] in ("dask", "dask_expr")


def is_partitioned(data: Any) -> bool:
    """Data that :func:`multilevel.lmer` hands to this module."""
    if is_dask(data):
        return True
    return isinstance(data, (str, Path)) and (str(data).endswith(".parquet") or Path(data).is_dir())


class _Chunks:
    """The same per-chunk work over Dask partitions or slices of a frame."""

    def __init__(self, data: Any, chunk_rows: int):
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)):
            raise DataError(f"chunk_rows must be a whole number, not {chunk_rows!r}")
        if chunk_rows < 1:
            raise DataError(f"chunk_rows must be at least 1, not {chunk_rows}")
        if isinstance(data, (str, Path)):
            try:
                import dask.dataframe as dd
            except ImportError as exc:  # pragma: no cover - optional extra
                raise ImportError(
                    "reading Parquet needs Dask: pip install multilevel[dask]"
                ) from exc
            data = dd.read_parquet(str(data))
        self.data = data
        self.dask = is_dask(data)
        self.chunk_rows = chunk_rows

    def columns(self) -> list[str]:
        return [str(c) for c in self.data.columns]

    def map_reduce(self, fn: Callable[[pd.DataFrame], Any], combine: Callable[[Any, Any], Any]):
        if self.dask:
            import dask

            parts = [dask.delayed(fn)(p) for p in self.data.to_delayed()]
            while len(parts) > 1:  # pairwise on the workers: the client gets one result
                parts = [
                    dask.delayed(combine)(parts[i], parts[i + 1])
                    if i + 1 < len(parts)
                    else parts[i]
                    for i in range(0, len(parts), 2)
                ]
            return dask.compute(parts[0])[0]
        return reduce(combine, (fn(c) for c in self._slices()))

    def _slices(self) -> Iterable[pd.DataFrame]:
        n = len(self.data)
        for start in range(0, max(n, 1), self.chunk_rows):
            yield self.data.iloc[start : start + self.chunk_rows]

    def head(self, n: int = 1000) -> pd.DataFrame:
        return self.data.head(n) if self.dask else self.data.iloc[:n]


# ------------------------------------------------------------------------------ pass 1


def _factor_labels(parsed: ParsedFormula) -> tuple[list[str], list[tuple[str, ...]]]:
    labels = used_labels(parsed)
    groups = [rt.group for rt in parsed.random]
    return labels, groups


def _scan(
    part: pd.DataFrame, parsed: ParsedFormula, columns: list[str], group_labels: set[str]
) -> dict:
    """Values seen in one chunk: uniques of categorical factors and grouping
    columns, distinct combinations of interaction grouping factors."""
    ev = Evaluator()
    seen: dict = {"rows": len(part), "uniques": {}, "categories": {}, "combos": {}}
    raw = {}
    for label in used_labels(parsed):
        value = evaluate_factor(parsed.factors[label], part, ev, columns)
        raw[label] = value
        if label in group_labels or is_categorical(value):
            s = value if isinstance(value, pd.Series) else pd.Series(value)
            if isinstance(s.dtype, pd.CategoricalDtype):
                seen["categories"][label] = list(s.cat.categories)
            seen["uniques"][label] = pd.unique(s.dropna())
    for rt in parsed.random:
        if len(rt.group) > 1:
            frame = pd.DataFrame({g: np.asarray(raw[g]) for g in rt.group}).dropna()
            seen["combos"][rt.group_name] = frame.drop_duplicates()
    return seen


def _merge_scans(a: dict, b: dict) -> dict:
    out = {
        "rows": a["rows"] + b["rows"],
        "uniques": {},
        "categories": {**a["categories"]},
        "combos": {},
    }
    for k in set(a["uniques"]) | set(b["uniques"]):
        parts = [x["uniques"][k] for x in (a, b) if k in x["uniques"]]
        out["uniques"][k] = pd.unique(np.concatenate([np.asarray(p, dtype=object) for p in parts]))
    for k in set(a["combos"]) | set(b["combos"]):
        frames = [x["combos"][k] for x in (a, b) if k in x["combos"]]
        out["combos"][k] = pd.concat(frames).drop_duplicates()
    out["categories"].update(b["categories"])
    return out


def _frozen_levels(scan: dict, parsed: ParsedFormula, user_levels: dict | None) -> dict:
    frozen: dict = {}
    for label, values in scan["uniques"].items():
        if user_levels and label in user_levels:
            frozen[label] = list(user_levels[label])
        elif label in scan["categories"]:
            used = set(values.tolist())
            frozen[label] = [c for c in scan["categories"][label] if c in used]
        else:
            cat = categorize(pd.Series(values), label, None)  # sorted, as one pass sorts
            frozen[label] = list(cat.values)
    for rt in parsed.random:
        if len(rt.group) > 1:
            combos = scan["combos"][rt.group_name]
            parts = [
                Categorical(
                    pd.Index(frozen[g]).get_indexer(combos[g].to_numpy()).astype(np.int64),
                    pd.Index(frozen[g]),
                    [],
                )
                for g in rt.group
            ]
            for g in rt.group:
                parts[rt.group.index(g)].labels = [str(v) for v in frozen[g]]
            frozen[("combos", rt.group_name)] = np.unique(combo_keys(parts))
    return frozen


# ------------------------------------------------------------------------------ pass 2


def _design(
    part, parsed, frozen, weights, offset, na_action, numeric_response: bool = True
) -> Design:
    return build_design(
        parsed,
        part,
        weights=weights,
        offset=offset,
        na_action=na_action,
        frozen=frozen,
        drop_aliased=False,
        check_nobs=False,
        numeric_response=numeric_response,
    )


def _partial(part, parsed, frozen, weights, offset, na_action, order, basis: Basis) -> dict:
    """One chunk's cross-products, of its columns centred and scaled by the
    basis every chunk shares: summed in that basis, the sums lose no digits
    to a covariate's origin (a timestamp) or units."""
    d = _design(part, parsed, frozen, weights, offset, na_action)
    rs = [d.random[k] for k in order]
    y = d.y if d.offset is None else d.y - d.offset
    sqrtw = None if d.weights is None else np.sqrt(d.weights)
    Zs, codes, nlevels = [r.Z for r in rs], [r.codes for r in rs], [r.nlevels for r in rs]
    cp = cross_products(Zs, codes, nlevels, d.X, y, sqrtw, maps=(basis.V, basis.NF))
    return {
        "cp": cp,
        "dropped": d.n_dropped,
        "sum_log_w": 0.0 if d.weights is None else float(np.log(d.weights).sum()),
    }


def _merge_partials(a: dict, b: dict) -> dict:
    return {
        "cp": a["cp"] + b["cp"],
        "dropped": a["dropped"] + b["dropped"],
        "sum_log_w": a["sum_log_w"] + b["sum_log_w"],
    }


# ------------------------------------------------------------------------------ fit


def lmer_partitioned(
    formula: str,
    data: Any,
    REML: bool = True,
    *,
    weights: str | None = None,
    offset: str | None = None,
    levels: dict[str, list] | None = None,
    na_action: str = "omit",
    chunk_rows: int = 1_000_000,
    start: Any = None,
) -> PartitionedLmerFit:
    """Fit an LMM to a Dask DataFrame, a Parquet path, or a pandas frame in
    chunks of ``chunk_rows`` rows; see the module docstring.  ``weights`` and
    ``offset`` are column names.  With a ``dask.distributed`` Client active,
    the passes run on its workers."""
    parsed = parse_formula(formula)
    if not parsed.random:
        raise ModelError(f"no random-effects terms in {formula!r}")
    for f in parsed.factors.values():
        if any(t in f.code for t in _STATEFUL):
            raise ModelError(
                f"{f.label!r}: scale(), center() and poly() need the whole column at once; "
                "add the transformed column to the data before fitting it in chunks"
            )
    for name, arg in (("weights", weights), ("offset", offset)):
        if arg is not None and not isinstance(arg, str):
            raise DataError(f"with data in chunks, {name} must be a column name")
    chunks = _Chunks(data, chunk_rows)
    columns = chunks.columns()
    for name, arg in (("weights", weights), ("offset", offset)):
        if arg is not None and arg not in columns:
            raise DataError(f"{name} column {arg!r} is not in the data")
    group_labels = {g for rt in parsed.random for g in rt.group}
    scan = chunks.map_reduce(lambda p: _scan(p, parsed, columns, group_labels), _merge_scans)
    if scan["rows"] == 0:
        raise DataError("the data have no rows")
    frozen = _frozen_levels(scan, parsed, levels)

    # the term order by number of levels, known from pass 1
    template = _design(chunks.head(), parsed, frozen, weights, offset, na_action)
    nlev = [r.nlevels for r in template.random]
    order = sorted(range(len(nlev)), key=lambda k: -nlev[k])
    for r in template.random:
        if r.nlevels < 2:
            raise ModelError(f"grouping factor {r.name!r} has only {r.nlevels} level")
    basis = _shared_basis(template, order)

    total = chunks.map_reduce(
        lambda p: _partial(p, parsed, frozen, weights, offset, na_action, order, basis),
        _merge_partials,
    )
    cp: CrossProducts = total["cp"]
    n = cp.n
    if n == 0:
        raise DataError("no rows are left after dropping rows with missing values")
    template.random = [template.random[k] for k in order]
    for r in template.random:
        if r.nlevels * r.q >= n:
            raise ModelError(
                f"number of observations ({n}) <= number of random effects "
                f"({r.nlevels * r.q}) for term {r.term.text}"
            )
    alias = aliased_from_gram(cp.AFF[: cp.p, : cp.p])  # of the centred and scaled columns
    messages = []
    if alias.any():
        messages.append(warn_rank_deficient(template.xspec.names, alias))
        cp = cp.drop_x_columns(~alias)
        basis = basis.drop_x_columns(~alias)
        template.xspec.keep = ~alias
        template.xspec.names = [
            nm for nm, a in zip(template.xspec.names, alias, strict=True) if not a
        ]
    if total["dropped"]:
        messages.append(f"{total['dropped']} rows with missing values were dropped")
    # the template keeps specs and levels, not rows
    template.y = np.empty(0)
    template.X = np.empty((0, cp.p))
    for r in template.random:
        r.Z, r.codes = np.empty((0, r.q)), np.empty(0, dtype=np.int64)
    template.n_rows, template.n_dropped = n, total["dropped"]
    template.messages = messages

    with single_threaded_blas():  # as models.fit_design: small factorizations only
        crit, record = optimize_in_basis(
            cp,
            basis,
            [r.q for r in template.random],
            REML,
            total["sum_log_w"],
            start,
        )
        fit = PartitionedLmerFit(template, crit, record, REML=REML, data_name="data")
    fit._chunks = chunks
    fit._weights = weights
    warn_about(fit)
    return fit


def _shared_basis(template: Design, order: list[int]) -> Basis:
    """The centred and scaled basis of every chunk, from the first rows (any
    basis is exact; these rows put its origins among the data's values).  The
    intercepts are named by the formula, not found in these rows."""
    rs = [template.random[k] for k in order]
    y = template.y if template.offset is None else template.y - template.offset
    x_ones, z_ones = template.intercept_columns()
    ones = (x_ones, [z_ones[k] for k in order])
    return Basis.of([r.Z for r in rs], template.X, y, ones=ones)


class PartitionedLmerFit(LmerFit):
    """An LMM fitted from chunks.  Estimates are as for :class:`LmerFit`;
    row-level results are computed chunk by chunk: Dask Series for Dask data
    (lazy), pandas Series for a pandas frame."""

    _chunks: _Chunks
    _weights: str | None

    def _map(self, fn: Callable[[pd.DataFrame], pd.Series], name: str):
        ch = self._chunks
        if ch.dask:
            return ch.data.map_partitions(fn, meta=(name, "f8"))
        return pd.concat([fn(c) for c in ch._slices()]).rename(name)

    def _response(self, part: pd.DataFrame) -> pd.Series:
        d = self.design
        resp = d.formula.response
        y = evaluate_factor(resp, part, d.evaluator, [str(c) for c in part.columns])
        return pd.Series(np.asarray(y, dtype=float), index=part.index)

    @property
    def fitted(self):  # type: ignore[override]
        """Conditional fitted values, chunk by chunk (a Dask Series for Dask data)."""
        return self._map(lambda p: self.predict(p).rename("fitted"), "fitted")

    def residuals(self, type: str = "response", scaled: bool = False):  # type: ignore[override]
        if type not in ("response", "pearson"):
            raise ModelError(f"type must be 'response' or 'pearson', not {type!r}")

        def one(p: pd.DataFrame) -> pd.Series:
            r = self._response(p) - self.predict(p)
            if type == "pearson" and self._weights is not None:
                r = r * np.sqrt(p[self._weights].to_numpy(dtype=float))
            return (r / self.sigma if scaled else r).rename("residuals")

        return self._map(one, "residuals")

    def residual_quantiles(self) -> np.ndarray:
        """Exact up to 20 million rows (the residuals are gathered: 8 bytes a
        row); beyond that Dask's approximate quantiles."""
        r = self.residuals(type="pearson", scaled=True)
        probs = [0, 0.25, 0.5, 0.75, 1]
        if self._chunks.dask:
            if self.nobs > 20_000_000:
                return np.asarray(r.dropna().quantile(probs).compute())
            r = r.compute()
        return np.quantile(r.dropna(), probs)

    def predict(
        self, newdata: Any = None, re_form: str | None = None, allow_new_levels: bool = False
    ):
        if newdata is None:
            return self._map(
                lambda p: LmerFit.predict(self, p, re_form, allow_new_levels), "predicted"
            )
        return LmerFit.predict(self, newdata, re_form, allow_new_levels)
