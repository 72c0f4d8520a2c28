"""Model frame and design matrices: from a parsed formula and data to X, y and
the per-term random-effects structures.

R semantics throughout: treatment contrasts with the first level as reference;
a categorical factor in a term is coded by contrasts when the term without it
is in the model (the intercept counting as the empty term) and by indicators
otherwise; interaction columns vary the first factor fastest; numeric
grouping columns are factors.  Rows with missing values in any used variable
are dropped and counted; infinite values are refused.  Everything is checked
before any numerical work.

The random-effects structure of term k is kept as its raw columns ``Z`` (n x
q_k) and the level index ``codes`` (n,) of its grouping factor; the sparse
n x (n_k q_k) matrix is never formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy.linalg.lapack import dpotrf

from multilevel.compiled import kernel
from multilevel.errors import DataError, FormulaError, ModelError, RankDeficiencyWarning, warn
from multilevel.formula.evaluate import Evaluator, closest
from multilevel.formula.parser import Factor, ParsedFormula, RandomTerm, TermSet


class Categorical:
    """A factor's coding: ``codes`` (int64 level index per row, -1 for
    missing), ``values`` (the data values of the levels, in level order) and
    ``labels`` (printable level labels).  Labels not given are formed on first
    use: a grouping factor's name its levels in results only."""

    def __init__(self, codes: np.ndarray, values: pd.Index, labels: list[str] | None = None):
        self.codes = codes
        self.values = values
        if labels is not None:
            self.labels = labels

    @cached_property
    def labels(self) -> list[str]:
        return level_labels(self.values)

    @property
    def nlevels(self) -> int:
        return len(self.values)


@dataclass
class Numeric:
    values: np.ndarray  # (n, k)
    suffixes: list[str]  # column-name suffixes; [""] for a single column


Value = Categorical | Numeric


def _label(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _label_strings(s: pd.Series) -> pd.Series:
    """Printable labels of a column, vectorized (integral floats without '.0')."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.map({True: "TRUE", False: "FALSE"})
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy()
        if np.all(np.isnan(v) | (v == np.round(v))):
            return pd.Series(np.where(np.isnan(v), "nan", v.astype(np.int64).astype(str)))
    return s.astype(str)


def match_levels(values: pd.Index, column: pd.Series) -> np.ndarray:
    """Level positions of new data's values; by value, else by printed label
    (a school read as 1224 in one file and "1224" in another is one level)."""
    idx = values.get_indexer(column.to_numpy())
    if (idx < 0).any():
        by_label = pd.Index(_label_strings(pd.Series(values))).get_indexer(
            _label_strings(column.reset_index(drop=True))
        )
        idx = np.where(idx < 0, by_label, idx)
    return idx


def to_pandas(data: Any) -> pd.DataFrame:
    """Accept pandas or polars data frames (and mappings of columns)."""
    if isinstance(data, pd.DataFrame):
        return data
    if type(data).__module__.startswith("polars"):
        # column by column: polars' own to_pandas() needs pyarrow
        return pd.DataFrame({c: data[c].to_numpy() for c in data.columns})
    if isinstance(data, dict):
        return pd.DataFrame(data)
    if type(data).__module__.split(".")[0] in ("dask", "dask_expr"):
        raise DataError(
            "this function needs the data in memory (call .compute() on the Dask "
            "DataFrame); lmer() fits Dask and Parquet data directly"
        )
    raise DataError(
        f"data must be a pandas or polars DataFrame, not {type(data).__module__}."
        f"{type(data).__name__}"
    )


def categorize(values: Any, label: str, level_order: list | None) -> Categorical:
    """Factor coding of a column: pandas category order, otherwise sorted."""
    # a float or integer array is coded as it is (a Series costs more than the coding)
    plain = isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iuf"
    stored = isinstance(values, (pd.Series, pd.api.extensions.ExtensionArray))
    s = values if plain or stored else pd.Series(values)
    if isinstance(s.dtype, pd.CategoricalDtype):
        # the dtype's and array's own attributes: the .cat accessor builds Series
        cats = s.dtype.categories
        codes = np.asarray((s.array if isinstance(s, pd.Series) else s).codes).astype(np.int64)
        # unused categories would give all-zero columns; R's droplevels() would drop them
        used = np.bincount(codes[codes >= 0], minlength=len(cats)) > 0
        if not used.all():
            remap = np.cumsum(used) - 1
            codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
            cats = cats[used]
        values_index = cats  # an Index already (immutable: shared, not copied)
    else:
        codes, uniques = _factorize(s)
        values_index = uniques if isinstance(uniques, pd.Index) else pd.Index(uniques)
    if level_order is not None:
        order = pd.Index(level_order)
        if not order.is_unique:
            raise DataError(f"levels= for {label!r} repeats a level")
        remap = order.get_indexer(values_index).astype(np.int64)
        if (remap < 0).any():
            missing = list(values_index[remap < 0][:5])
            raise DataError(
                f"levels= for {label!r} lacks the data values {missing}; "
                f"give all levels, the reference level first"
            )
        codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
        values_index = order
    return Categorical(codes, values_index)


def level_labels(values_index: pd.Index) -> list[str]:
    """Printable labels of levels: R's (TRUE/FALSE, integral numbers without
    '.0'), by dtype where that decides them."""
    dtype = values_index.dtype
    if isinstance(dtype, pd.StringDtype) and getattr(dtype, "storage", None) == "pyarrow":
        # Arrow-backed text (pandas' default string type when pyarrow is
        # installed); levels are never missing, so every item is a str
        return _text_items(values_index.array)
    arr = values_index.to_numpy()  # iterating an Arrow-backed index costs µs per item
    kind = arr.dtype.kind
    if kind in "iu":
        return [str(v) for v in arr.tolist()]
    if kind == "f":
        return [str(int(v)) if v.is_integer() else str(v) for v in arr.tolist()]
    if kind == "O":
        items = arr.tolist()
        if all(type(v) is str for v in items):
            return items
    if len(values_index) > 1000:  # pandas' fixed cost pays off only for many levels
        return _label_strings(pd.Series(values_index)).tolist()
    return [_label(v) for v in arr]


SMALL_SORT = 250  # text columns up to this length are coded by sorting (measured crossover ~300)


def _factorize(s: pd.Series) -> tuple[np.ndarray, Any]:
    """Codes into the sorted distinct values (-1 for missing).  Integer labels
    spanning a range not much wider than the data (the usual ids) are coded by
    direct addressing, several times faster than hashing on large data."""
    if s.dtype.kind in "iuf" and isinstance(s.dtype, np.dtype) and s.size:
        arr = np.asarray(s)
        lo, hi = arr.min(), arr.max()
        if s.dtype.kind == "f":  # whole numbers only (ids read as doubles)
            ok = np.isfinite(lo) and np.isfinite(hi) and hi - lo <= 4 * arr.size
            ok = ok and bool(np.all(arr == np.floor(arr)))
        else:
            ok = int(hi) - int(lo) <= 4 * arr.size
        if ok:
            lo, hi = int(lo), int(hi)
            off = (arr - arr.dtype.type(lo)).astype(np.intp)
            present = np.zeros(hi - lo + 1, dtype=bool)
            present[off] = True
            used = np.flatnonzero(present)
            # a scatter over the used values (a cumulative sum over the whole
            # range costs several times more: its bool-to-int cast)
            remap = np.empty(hi - lo + 1, dtype=np.int64)
            remap[used] = np.arange(used.size)
            return remap[off], (used + lo).astype(arr.dtype)
    if len(s) <= SMALL_SORT and s.dtype.kind in "OUT":
        # a short text column: sorting the values beats pandas' hashing and
        # its fixed cost (a tenth of a small model's fit); not for long ones,
        # where comparing Python strings is slow
        items = _text_items(s)
        if _all_str(items):  # else missing values or mixed types: pandas
            # sorted distinct values and a dict lookup: for a few hundred
            # strings cheaper than numpy's sort of an object array; the levels
            # as plain Python strings (an Arrow-backed index costs tens of µs
            # to build and to read back)
            uniques = sorted(set(items))
            pos = {v: i for i, v in enumerate(uniques)}
            codes = np.fromiter(map(pos.__getitem__, items), dtype=np.int64, count=len(items))
            return codes, _object_index(uniques)
    # hashing without pandas' sort, then the distinct values sorted here: for
    # text (pandas' default Arrow strings) its sort of the distinct values
    # costs a fixed ~60 µs a column, more than hashing a few thousand rows
    codes, uniques = pd.factorize(s, sort=False, use_na_sentinel=True)
    labels = _text_items(uniques.array if isinstance(uniques, pd.Index) else uniques)
    if _all_str(labels):
        order = sorted(range(len(labels)), key=labels.__getitem__)
        rank = np.empty(len(labels) + 1, dtype=np.int64)
        rank[order] = np.arange(len(labels))
        rank[-1] = -1  # the missing values' sentinel, -1, indexes it
        return rank[codes], _object_index([labels[i] for i in order])
    codes, uniques = pd.factorize(s, sort=True, use_na_sentinel=True)
    return codes.astype(np.int64), uniques


def _all_str(items: list) -> bool:
    """Whether every item is a Python str (the types' set: one C-level pass,
    where a generator's steps cost a Python frame each)."""
    return set(map(type, items)) <= {str}


def _object_index(items: list) -> pd.Index:
    """An object Index of Python strings: pandas' constructor validates and
    infers for ~9 µs a call, a tenth of a small model's fit per factor, where
    its own internal constructor takes the array as it is (the public one is
    the fallback should that ever change)."""
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    simple = getattr(pd.Index, "_simple_new", None)
    if simple is not None:
        try:
            out = simple(arr)
            if isinstance(out, pd.Index) and out.dtype == object and len(out) == len(items):
                return out
        except (TypeError, ValueError, AttributeError):
            pass
    return pd.Index(arr, dtype=object)


def _text_items(s: Any) -> list:
    """A text column's values as a list (Arrow-backed strings through Arrow's
    own conversion, a quarter of the cost of one through numpy)."""
    if isinstance(s, np.ndarray):
        return s.tolist()
    dtype = s.dtype
    if isinstance(dtype, pd.StringDtype) and getattr(dtype, "storage", None) == "pyarrow":
        return (s.array if isinstance(s, pd.Series) else s).__arrow_array__().to_pylist()
    return s.to_numpy().tolist()


def is_categorical(values: Any) -> bool:
    dtype = getattr(values, "dtype", None)
    if dtype is None:
        return True
    if isinstance(dtype, np.dtype) and dtype.kind in "iufb":  # without pandas' dispatch
        return dtype.kind == "b"
    if isinstance(dtype, (pd.CategoricalDtype, pd.StringDtype)):  # text: pandas' checks cost µs
        return True
    return pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype)


@dataclass
class FactorSpec:
    """How a factor was coded on the fitting data, reused for new data."""

    factor: Factor
    categorical: bool
    values: pd.Index | None = None  # level values for categoricals
    suffixes: list[str] | None = None  # numeric column suffixes

    @cached_property
    def labels(self) -> list[str] | None:
        """Printable level labels for categoricals, formed from the level
        values on first use (a grouping factor's are never needed by a fit)."""
        return level_labels(self.values) if self.categorical else None


@dataclass
class MatrixSpec:
    """A model matrix (fixed part, or one random term's columns) as built."""

    intercept: bool
    terms: list[tuple[str, ...]]
    codings: list[tuple[str, ...]]  # per term, per factor: "num", "contrast", "full"
    names: list[str]
    keep: np.ndarray | None = None  # columns kept after aliasing checks


@dataclass
class RandomStructure:
    """One random-effects term: raw columns and the grouping factor's levels.

    ``levels``, the levels' labels in order, are formed on first use from
    ``parts`` (the grouping columns' codings) and ``group_combos``: a fit
    needs only their number, results name them."""

    term: RandomTerm
    Z: np.ndarray  # (n, q) values of the term's columns
    codes: np.ndarray  # (n,) level of each row
    spec: MatrixSpec
    group_values: list[pd.Index]  # per grouping column, level values (for new data)
    group_combos: np.ndarray  # (nlevels, ncols) column codes of each level (one column: per row)
    parts: list[Categorical] = field(repr=False)
    _nlevels: int = field(repr=False)
    _levels: list[str] | None = field(default=None, repr=False)

    @property
    def levels(self) -> list[str]:
        if self._levels is None:
            self._levels = combo_labels(self.parts, self.group_combos)
        return self._levels

    @levels.setter
    def levels(self, labels: list[str]) -> None:
        self._levels = list(labels)
        self._nlevels = len(self._levels)

    def level_index(self, frame: pd.DataFrame) -> np.ndarray:
        """Level of each row of new data (-1 for levels not seen in the fit)."""
        for g in self.term.group:
            if g not in frame.columns:
                raise DataError(f"newdata lacks the grouping column {g!r}")
        codes = [
            match_levels(vals, frame[g])
            for vals, g in zip(self.group_values, self.term.group, strict=True)
        ]
        if len(codes) == 1:
            return codes[0].astype(np.int64)
        sizes = [len(v) for v in self.group_values]
        key = np.zeros(len(frame), dtype=np.int64)
        level_key = np.zeros(len(self.levels), dtype=np.int64)
        for j, (c, size) in enumerate(zip(codes, sizes, strict=True)):
            key = key * size + np.maximum(c, 0)
            level_key = level_key * size + self.group_combos[:, j]
        unknown = np.any(np.stack(codes) < 0, axis=0)
        pos = np.minimum(np.searchsorted(level_key, key), len(level_key) - 1)
        found = (level_key[pos] == key) & ~unknown
        return np.where(found, pos, -1).astype(np.int64)

    @property
    def name(self) -> str:
        return self.term.group_name

    @property
    def cnames(self) -> list[str]:
        return self.spec.names

    @property
    def q(self) -> int:
        return self.Z.shape[1]

    @property
    def nlevels(self) -> int:
        return self._nlevels


@dataclass
class Design:
    """Everything the engine needs, plus what prediction needs to rebuild it."""

    formula: ParsedFormula
    y: np.ndarray
    X: np.ndarray
    xspec: MatrixSpec
    random: list[RandomStructure]
    weights: np.ndarray | None
    offset: np.ndarray | None
    n_dropped: int
    row_index: pd.Index  # index labels of the rows used
    factor_specs: dict[str, FactorSpec]
    evaluator: Evaluator
    messages: list[str] = field(default_factory=list)
    response: Value | None = None  # the response as evaluated (GLMMs interpret it)
    n_rows: int | None = None  # set when the rows are not held (chunked data)
    # how offset= was given: a column name (read again from new data), an
    # array (new data cannot supply it), or None
    offset_arg: str | bool | None = None
    # the mean of every numeric data column behind a numeric fixed-effects
    # variable, over the rows used (a reference grid's covariate values)
    covariate_means: dict[str, float] = field(default_factory=dict)

    @property
    def nobs(self) -> int:
        return len(self.y) if self.n_rows is None else self.n_rows

    @property
    def fixef_names(self) -> list[str]:
        return self.xspec.names

    def intercept_columns(self) -> tuple[int | None, list[int | None]]:
        """The intercept's column of X and of each random term's Z (first when
        the formula has one; None otherwise), named by the formula rather than
        found in the data: a column that happens to be 1 is not an intercept."""
        return (
            0 if self.xspec.intercept else None,
            [0 if r.spec.intercept else None for r in self.random],
        )


class ColumnNames(Sequence):
    """A frame's column names as text, listed on first use: only expressions
    and error messages read them (listing an Arrow-backed column index costs
    µs per name)."""

    def __init__(self, frame: pd.DataFrame):
        self._frame = frame
        self._names: list[str] | None = None

    def _list(self) -> list[str]:
        if self._names is None:
            self._names = [str(c) for c in self._frame.columns]
        return self._names

    def __getitem__(self, i):  # type: ignore[override]
        return self._list()[i]

    def __len__(self) -> int:
        return len(self._list())

    def __contains__(self, name: object) -> bool:
        # the index's hash lookup first; the text names decide for labels that
        # are not strings (a column 1 is named "1" in a formula)
        try:
            if name in self._frame.columns:
                return True
        except TypeError:  # an unhashable name
            pass
        return name in self._list()

    def __iter__(self):
        return iter(self._list())


def column_values(frame: pd.DataFrame, label: str) -> Any:
    """The stored values of the column named ``label`` (a numpy array, read
    only, or a pandas extension array such as a Categorical), or None when no
    single column has that name.  Read from the frame's blocks: building a
    Series costs ~20 µs, a tenth of a small model's design."""
    try:
        loc = frame.columns.get_loc(label)
    except (KeyError, TypeError, pd.errors.InvalidIndexError):
        return None
    if not isinstance(loc, (int, np.integer)):
        return None  # a label matching several columns
    try:
        values = frame._mgr.iget_values(int(loc))
    except AttributeError:  # a pandas whose internals differ: the public route
        s = frame.iloc[:, int(loc)]
        values = s.to_numpy() if isinstance(s.dtype, np.dtype) else s.array
    if isinstance(values, np.ndarray):
        values = values.view()
        values.flags.writeable = False  # the caller's data, never written here
    return values


def evaluate_factor(
    factor: Factor, frame: pd.DataFrame, evaluator: Evaluator, columns: list[str]
) -> Any:
    if factor.is_name:
        column = column_values(frame, factor.label)
        if column is None:  # missing, or a label matching several columns
            raise DataError(
                f"column {factor.label!r} is not in the data" + closest(factor.label, columns)
            )
        return plain_column(column)
    used = evaluator.columns_used(factor.code, columns, factor.label)
    arrays = {c: _numeric_or_raw(column_values(frame, c)) for c in used}
    with np.errstate(all="ignore"):
        try:
            return evaluator.evaluate(factor.code, arrays, factor.label)
        except (TypeError, ValueError) as exc:
            raise DataError(f"cannot evaluate {factor.label!r}: {exc}") from None


def plain_column(s: Any) -> Any:
    """A column as R would read it: an object column holding only numbers is
    numeric; one mixing numbers and text (0 and "0") is text, so that values
    that print the same are one level."""
    if s.dtype != object:
        return s
    s = s if isinstance(s, pd.Series) else pd.Series(s, copy=False)
    present = s[s.notna()]
    kinds = {type(v) for v in present}
    numbers = (int, float, np.integer, np.floating)
    if kinds and all(issubclass(k, numbers) and not issubclass(k, (bool, np.bool_)) for k in kinds):
        return pd.to_numeric(s, errors="coerce").astype(float)
    if len(kinds) > 1:
        return s.map(_label, na_action="ignore")
    return s


def _numeric_or_raw(s: Any) -> np.ndarray:
    s = plain_column(s)
    if isinstance(s.dtype, np.dtype) and s.dtype.kind in "iuf":
        # a numpy column has no missing-value marker but NaN: no pandas pass
        return np.asarray(s).astype(float, copy=False)
    if isinstance(s, np.ndarray):
        return s
    if is_categorical(s):
        return s.to_numpy()
    return s.to_numpy(dtype=float, na_value=np.nan)


def to_value(raw: Any, label: str, levels: dict | None) -> Value:
    order = (levels or {}).get(label)
    if is_categorical(raw) or order is not None:
        return categorize(raw, label, order)
    arr = np.asarray(raw, dtype=float)
    if arr.ndim == 1:
        return Numeric(arr[:, None], [""])
    if arr.ndim == 2:
        return Numeric(arr, [str(j + 1) for j in range(arr.shape[1])])
    raise DataError(f"{label!r} evaluates to a {arr.ndim}-dimensional array")


def _missing(value: Value) -> np.ndarray:
    if isinstance(value, Categorical):
        return value.codes < 0
    return np.isnan(value.values).any(axis=1)


def subset_rows(value: Value, keep: np.ndarray, keep_levels: bool = False) -> Value:
    if isinstance(value, Categorical):
        codes = value.codes[keep]
        used = np.bincount(codes, minlength=len(value.labels)) > 0
        if used.all() or keep_levels:
            return Categorical(codes, value.values, value.labels)
        remap = np.cumsum(used) - 1
        return Categorical(
            remap[codes],
            value.values[used],
            [lab for lab, u in zip(value.labels, used, strict=True) if u],
        )
    return Numeric(value.values[keep], value.suffixes)


def _factor_columns(value: Value, coding: str) -> tuple[np.ndarray, list[str]]:
    if isinstance(value, Numeric):
        return value.values, value.suffixes
    nlev = len(value.labels)
    start = 1 if coding == "contrast" else 0
    ind = np.zeros((len(value.codes), nlev), dtype=float)
    ind[np.arange(len(value.codes)), value.codes] = 1.0
    return ind[:, start:], value.labels[start:]


def _codings(tset: TermSet, values: dict[str, Value]) -> list[tuple[str, ...]]:
    present = {frozenset(t) for t in tset.terms}
    if tset.intercept:
        present.add(frozenset())
    out = []
    for term in tset.terms:
        coding = []
        for f in term:
            if isinstance(values[f], Numeric):
                coding.append("num")
            else:
                margin = frozenset(term) - {f}
                coding.append("contrast" if margin in present else "full")
        out.append(tuple(coding))
    return out


MAX_MATRIX_ENTRIES = 200_000_000  # 1.6 GB of doubles for one model matrix


def _check_size(tset: TermSet, values: dict[str, Value], n: int, codings) -> int:
    """The model matrix's number of columns; refuses a matrix too large to
    allocate before allocating it (a factor with many levels, or an
    interaction of several, as fixed effects)."""
    p = int(tset.intercept)
    for term, coding in zip(tset.terms, codings, strict=True):
        width = 1
        for f, c in zip(term, coding, strict=True):
            v = values[f]
            if isinstance(v, Numeric):
                width *= v.values.shape[1]
            else:
                width *= len(v.labels) - (1 if c == "contrast" else 0)
        p += width
    if n * p > MAX_MATRIX_ENTRIES:
        raise DataError(
            f"the model matrix would have {n} rows x {p} columns ({n * p * 8 / 1e9:.1f} GB); "
            "a factor with this many levels (or their interaction) is better a random "
            "effect, e.g. (1 | factor)"
        )
    return p


def build_matrix(
    tset: TermSet, values: dict[str, Value], n: int, codings: list[tuple[str, ...]] | None = None
) -> tuple[np.ndarray, MatrixSpec]:
    """Model matrix of a term set with R's column names and order."""
    if codings is None:
        codings = _codings(tset, values)
    # filled in place: stacking the blocks costs a copy and numpy's checks
    X = np.empty((n, _check_size(tset, values, n, codings)))
    names: list[str] = []
    j = 0
    if tset.intercept:
        X[:, 0] = 1.0
        names.append("(Intercept)")
        j = 1
    built: dict[tuple[str, str], tuple[np.ndarray, list[str]]] = {}
    for term, coding in zip(tset.terms, codings, strict=True):
        mat = None
        cn = [""]
        for f, c in zip(term, coding, strict=True):
            if (f, c) not in built:  # a factor's indicators serve all its interactions
                built[f, c] = _factor_columns(values[f], c)
            cols, suffixes = built[f, c]
            # the first factor varies fastest, as in R
            mat = cols if mat is None else (mat[:, None, :] * cols[:, :, None]).reshape(n, -1)
            cn = [f"{a}:{f}{s}" if a else f"{f}{s}" for s in suffixes for a in cn]
        X[:, j : j + mat.shape[1]] = mat
        j += mat.shape[1]
        names.extend(cn)
    return X, MatrixSpec(tset.intercept, list(tset.terms), codings, names)


GRAM_KERNEL_WORK = 100_000  # n·p² up to which the compiled screen beats BLAS's XᵀX
GRAM_KERNEL_DISABLED = False  # tests switch the compiled screen off to compare with numpy


def _gram_screen(X: np.ndarray) -> np.ndarray | None:
    """The common case without copying X: XᵀX centred on an all-ones first
    column and scaled to correlations in p x p space; if its Cholesky pivots
    are all clearly positive, no column is aliased (all-zero columns are).
    None when that cannot be told this way (a pivot near 0, a column whose
    mean/sd is so large that centring in Gram space loses the digits, or
    non-finite products): the caller then decides on the data."""
    n, p = X.shape
    if n == 0 or p == 0:
        return np.zeros(p, dtype=bool) if p == 0 else None
    fn = None if GRAM_KERNEL_DISABLED else kernel("_kernels", "gram_screen")
    if fn is not None and n * p * p <= GRAM_KERNEL_WORK and X.dtype == np.float64:
        zero = np.zeros(p, dtype=bool)
        return zero if fn(np.ascontiguousarray(X), zero, n, p) else None
    with np.errstate(all="ignore"):
        G = X.T @ X
        raw_d = G.diagonal().copy()
        # |G_ij| <= sqrt(G_ii G_jj): finite diagonals mean a finite G
        if not np.isfinite(raw_d).all():
            return None
        if X[0, 0] == 1.0 and (X[:, 0] == 1.0).all():
            m = G[0] / n
            G = G - n * (m[:, None] * m)
            G[0, :] = G[:, 0] = 0.0
            G[0, 0] = n
        d = G.diagonal().copy()
        zero = raw_d == 0
        # centring in Gram space keeps about 16 - 2 log10(mean/sd) digits
        if (~zero & (d <= 1e-8 * raw_d)).any():
            return None
    keep = ~zero
    if not keep.any():
        return zero
    if not keep.all():
        G, d = G[np.ix_(keep, keep)], d[keep]
    s = np.sqrt(d)
    # LAPACK directly: numpy's wrapper costs more than this small factorization
    L, info = dpotrf(G / s[:, None] / s, lower=1)
    if info != 0:
        return None
    return zero if (L.diagonal() > 1e-4).all() else None


def aliased_columns(X: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Boolean mask of columns linearly dependent on earlier ones, decided as
    R's ``qr`` decides it but on a centred and scaled copy of X: after an
    all-ones column, every later column is centred (a change of origin keeps
    which columns span which), and each is scaled to unit length.  A column
    whose residual on the earlier kept columns is below ``tol`` of its length
    is aliased.  Working on the n x p matrix (QR, never XᵀX) and centred
    columns, a timestamp (mean/sd ~ 1e5) or a covariate in units of 1e-8 is
    kept, and only truly collinear columns are dropped."""
    n, p = X.shape
    screened = _gram_screen(X)
    if screened is not None:
        return screened
    Xc = np.array(X, dtype=float, copy=True)
    ones = [j for j in range(p) if n and np.all(X[:, j] == 1.0)]
    if ones:
        later = np.arange(p) > ones[0]
        Xc[:, later] -= Xc[:, later].mean(axis=0)
    big = np.max(np.abs(Xc), axis=0) if n else np.zeros(p)
    ok = np.isfinite(big) & (big > 0)
    Xc[:, ok] /= big[ok]  # first to unit max: no overflow in the norms (1e200 units)
    norms = np.linalg.norm(Xc, axis=0)
    alias = ~ok | ~(norms > 0) | ~np.isfinite(norms)
    Xc[:, ~alias] /= norms[~alias]
    Xc[:, alias] = 0.0
    # fast path: on centred unit columns the Gram matrix is well conditioned
    # unless columns are (nearly) collinear; only then decide by QR
    try:
        keep = ~alias
        piv = np.diag(np.linalg.cholesky(Xc[:, keep].T @ Xc[:, keep])) if keep.any() else []
        if np.all(np.asarray(piv) > 1e-4):
            return alias
    except np.linalg.LinAlgError:
        pass
    # R of the QR factorization: same span relations as X, p x p
    R = np.linalg.qr(Xc, mode="r") if n >= p else Xc
    basis: list[np.ndarray] = []  # orthonormal columns spanning the kept ones
    for j in range(p):  # columns, not rows or groups
        if alias[j]:
            continue
        v = R[:, j].copy()
        for _ in range(2):  # Gram-Schmidt twice: orthogonal to rounding
            for b in basis:
                v -= (b @ v) * b
        res = np.linalg.norm(v)
        if res < tol * np.linalg.norm(R[:, j]):
            alias[j] = True
        else:
            basis.append(v / res)
    return alias


def warn_rank_deficient(names: list[str], alias: np.ndarray) -> str:
    """lme4's message for dropped aliased columns, issued as a
    RankDeficiencyWarning and returned (the fit keeps it for its summary)."""
    dropped = [nm for nm, a in zip(names, alias, strict=True) if a]
    s = "s" if len(dropped) > 1 else ""
    msg = (
        f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
        f"column{s} / coefficient{s}: {', '.join(dropped)}"
    )
    warn(msg, RankDeficiencyWarning)
    return msg


def aliased_from_gram(G: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Aliased columns from the cross-product XᵀX: a Cholesky factorization
    of the scaled cross-product in column order that skips pivots below
    ``tol``; the later of two aliased columns is dropped, as R's
    column-pivoting QR does.
    """
    p = G.shape[0]
    d = np.sqrt(np.maximum(np.diag(G), 0.0))
    zero = d == 0
    d[zero] = 1.0
    G = G / d[:, None] / d[None, :]
    alias = zero.copy()
    L = np.zeros((p, p))
    for j in range(p):  # p columns, not rows or groups
        if alias[j]:
            continue
        keep = ~alias[:j]
        lj = L[j, :j][keep]
        pivot = G[j, j] - lj @ lj
        if pivot < tol:
            alias[j] = True
            continue
        L[j, j] = np.sqrt(pivot)
        rows = np.arange(j + 1, p)
        L[rows, j] = (G[rows, j] - L[rows, :j][:, keep] @ lj) / L[j, j]
    return alias


def _vector_arg(arg: Any, frame: pd.DataFrame, name: str, columns: list[str]) -> np.ndarray | None:
    if arg is None:
        return None
    if isinstance(arg, str):
        if arg not in frame.columns:
            raise DataError(f"{name} column {arg!r} is not in the data" + closest(arg, columns))
        arg = frame[arg]
    try:
        arr = np.asarray(arg, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be numeric (one number per row)") from None
    if arr.shape != (len(frame),):
        raise DataError(f"{name} must have one value per row ({len(frame)}), got shape {arr.shape}")
    return arr


def build_design(
    parsed: ParsedFormula,
    data: Any,
    *,
    weights: Any = None,
    offset: Any = None,
    levels: dict[str, list] | None = None,
    na_action: str = "omit",
    namespace: dict | None = None,
    numeric_response: bool = True,
    check_nobs: bool = True,
    drop_aliased: bool = True,
    frozen: dict | None = None,
) -> Design:
    """Model frame, fixed-effects matrix and random-effects structures.

    ``numeric_response=False`` keeps a categorical or multi-column response
    (``Design.response``) for the GLMM code to interpret; ``check_nobs=False``
    allows as many random effects as observations (families without a scale
    parameter, e.g. an observation-level random effect in a Poisson model);
    ``drop_aliased=False`` keeps aliased columns (per-group fits judge them).

    ``frozen`` fixes the complete level sets (one chunk of a larger data set,
    :mod:`multilevel.partitioned.lmm`): ``{label: level values}`` for every
    categorical factor and grouping column, and ``{("combos", group name):
    level keys}`` for interaction grouping factors; unused levels are kept and
    level-count checks are left to the caller.
    """
    frame = to_pandas(data)
    if not frame.columns.is_unique:  # cheaper than finding the duplicates
        dup = frame.columns[frame.columns.duplicated()]
        raise DataError(f"the data have more than one column named {', '.join(map(repr, dup))}")
    if na_action not in ("omit", "raise"):
        raise DataError(f"na_action must be 'omit' or 'raise', not {na_action!r}")
    if len(frame) == 0:
        raise DataError("the data have no rows")
    if parsed.response is None:
        raise FormulaError("the formula has no response", parsed.text, 0)
    columns = ColumnNames(frame)
    evaluator = Evaluator(namespace)

    needed: dict[str, Factor] = {}
    for label in used_labels(parsed):
        needed[label] = parsed.factors[label]
    raw = {label: evaluate_factor(f, frame, evaluator, columns) for label, f in needed.items()}
    w = _vector_arg(weights, frame, "weights", columns)
    off = _vector_arg(offset, frame, "offset", columns)

    if frozen is not None:
        levels = {**(levels or {}), **{k: list(v) for k, v in frozen.items() if isinstance(k, str)}}
    values = {label: to_value(r, label, levels) for label, r in raw.items()}
    n_all = len(frame)
    for label, v in values.items():
        if isinstance(v, Numeric) and v.values.shape[0] != n_all:
            if v.values.size == 1:
                values[label] = Numeric(np.full((n_all, 1), float(v.values.ravel()[0])), [""])
            else:
                raise DataError(f"{label!r} has {v.values.shape[0]} values for {n_all} rows")

    missing = np.zeros(n_all, dtype=bool)
    for v in values.values():
        missing |= _missing(v)
    for arr in (w, off):
        if arr is not None:
            missing |= np.isnan(arr)
    n_dropped = int(missing.sum())
    if n_dropped:
        if na_action == "raise":
            bad = [lab for lab, v in values.items() if _missing(v).any()]
            raise DataError(
                f"{n_dropped} rows have missing values (in {', '.join(map(repr, bad))}) "
                "and na_action='raise'"
            )
        keep = ~missing
        values = {lab: subset_rows(v, keep, frozen is not None) for lab, v in values.items()}
        w = None if w is None else w[keep]
        off = None if off is None else off[keep]
    else:
        keep = None
    n = n_all - n_dropped
    if n == 0:
        raise DataError("no rows are left after dropping rows with missing values")
    for label, v in values.items():
        if isinstance(v, Numeric) and not np.isfinite(v.values).all():
            raise DataError(f"{label!r} has infinite values")
    if w is not None:
        if not np.isfinite(w).all() or (w <= 0).any():
            raise DataError("weights must be positive and finite")
    if off is not None and not np.isfinite(off).all():
        raise DataError("offset has infinite values")

    resp = values[parsed.response.label]
    if numeric_response:
        if isinstance(resp, Categorical):
            raise DataError(
                f"the response {parsed.response.label!r} is not numeric; a linear mixed model "
                "needs a numeric response (use glmer for binary or count data)"
            )
        if resp.values.shape[1] != 1:
            raise DataError(f"the response {parsed.response.label!r} must be a single column")
    if isinstance(resp, Numeric) and resp.values.shape[1] == 1:
        y = resp.values[:, 0].copy()
    else:
        y = np.full(n, np.nan)

    X, xspec = build_matrix(parsed.fixed, values, n)
    messages: list[str] = []
    if X.shape[1] == 0:
        raise ModelError("the fixed-effects part has no columns; lmer needs at least one")
    alias = aliased_columns(X) if drop_aliased else np.zeros(X.shape[1], dtype=bool)
    if alias.any():
        messages.append(warn_rank_deficient(xspec.names, alias))
        X = X[:, ~alias]
        xspec.keep = ~alias
        xspec.names = [nm for nm, a in zip(xspec.names, alias, strict=True) if not a]
    if off is not None or parsed.fixed.offsets:
        total = np.zeros(n) if off is None else off.copy()
        for label in parsed.fixed.offsets:
            total += values[label].values[:, 0]  # type: ignore[union-attr]
        off = total

    random = [
        _random_structure(
            rt,
            values,
            n,
            check_nobs and frozen is None,
            None if frozen is None else frozen.get(("combos", rt.group_name)),
        )
        for rt in parsed.random
    ]
    specs = {
        lab: FactorSpec(
            parsed.factors[lab],
            isinstance(v, Categorical),
            getattr(v, "values", None) if isinstance(v, Categorical) else None,
            v.suffixes if isinstance(v, Numeric) else None,
        )
        for lab, v in values.items()
    }
    row_index = frame.index if keep is None else frame.index[keep]
    covariate_means = _covariate_means(parsed, needed, values, frame, keep, evaluator, columns)
    if n_dropped:
        messages.append(
            f"{n_dropped} row{'s' if n_dropped != 1 else ''} with missing values "
            f"{'were' if n_dropped != 1 else 'was'} dropped"
        )
    return Design(
        parsed,
        y,
        np.ascontiguousarray(X),
        xspec,
        random,
        w,
        off,
        n_dropped,
        row_index,
        specs,
        evaluator,
        messages,
        resp,
        offset_arg=offset if isinstance(offset, str) else (None if offset is None else True),
        covariate_means=covariate_means,
    )


def _covariate_means(parsed, needed, values, frame, keep, evaluator, columns) -> dict[str, float]:
    """Means of the numeric data columns behind numeric fixed-effects variables."""
    fixed = {f for t in parsed.fixed.terms for f in t}
    out: dict[str, float] = {}
    for label, f in needed.items():
        if label not in fixed or not isinstance(values[label], Numeric):
            continue
        if f.is_name:  # the column itself, already subset to the rows used
            col = values[label].values[:, 0]
            out[label] = float(col.sum()) / col.size  # np.mean's sum and division
            continue
        used = evaluator.columns_used(f.code, columns, f.label)
        for c in used:
            if c in out:  # also a variable of its own: the same rows, the same mean
                continue
            col = column_values(frame, c)  # no Series: its construction costs ~20 µs
            try:
                arr = np.asarray(frame[c] if col is None else col, dtype=float)
            except (TypeError, ValueError):
                continue
            arr = arr if keep is None else arr[keep]
            out[c] = float(arr.sum()) / arr.size if arr.size else float("nan")
    return out


def used_labels(parsed: ParsedFormula) -> list[str]:
    labels: list[str] = []

    def add(lab: str) -> None:
        if lab not in labels:
            labels.append(lab)

    assert parsed.response is not None
    add(parsed.response.label)
    for t in parsed.fixed.terms:
        for f in t:
            add(f)
    for f in parsed.fixed.offsets:
        add(f)
    for rt in parsed.random:
        for t in rt.expr.terms:
            for f in t:
                add(f)
        for g in rt.group:
            add(g)
    return labels


def combo_keys(parts: list[Categorical]) -> np.ndarray:
    """One integer per row for the combination of several factors' levels."""
    combo = np.zeros(len(parts[0].codes), dtype=np.int64)
    for p in parts:
        combo = combo * p.nlevels + p.codes
    return combo


def group_codes(
    parts: list[Categorical], known: np.ndarray | None = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Level index of the interaction of grouping factors (levels in the order
    of the first factor, then the next...): the combinations that occur, or
    the sorted ``known`` combination keys (see :func:`combo_keys`); with the
    levels' labels and their column codes (see :func:`group_levels`)."""
    codes, comps, _ = group_levels(parts, known)
    return codes, combo_labels(parts, comps), comps


def group_levels(
    parts: list[Categorical], known: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """The level of each row of the interaction of grouping factors, each
    level's codes in the factors (for one factor: each row's) and the number
    of levels."""
    if len(parts) == 1:
        return parts[0].codes, parts[0].codes[:, None], parts[0].nlevels
    combo = combo_keys(parts)
    span = 1
    for p in parts:
        span *= p.nlevels
    if known is None and span <= 4 * combo.size:
        # the keys' range is small: direct addressing, the same sorted keys
        # and codes as np.unique's sort at a fraction of its fixed cost
        present = np.zeros(span, dtype=bool)
        present[combo] = True
        uniq = present.nonzero()[0]
        remap = np.empty(span, dtype=np.int64)
        remap[uniq] = np.arange(uniq.size)
        codes = remap[combo]
    elif known is None:
        uniq, codes = np.unique(combo, return_inverse=True)
    else:
        uniq = np.asarray(known, dtype=np.int64)
        codes = np.searchsorted(uniq, combo)
    comps = np.empty((len(uniq), len(parts)), dtype=np.int64)  # each level's codes
    rem = uniq
    for k in range(len(parts) - 1, -1, -1):
        comps[:, k] = rem % parts[k].nlevels
        rem = rem // parts[k].nlevels
    return codes.astype(np.int64, copy=False), comps, len(uniq)


def combo_labels(parts: list[Categorical], comps: np.ndarray) -> list[str]:
    """Labels of the levels of grouping factors' interaction, "a:b", from
    each level's codes in the factors (see :func:`group_levels`)."""
    if len(parts) == 1:
        return list(parts[0].labels)
    if len(comps) <= 10_000:  # a join per level: pandas' fixed cost exceeds it here
        names = [[p.labels[i] for i in c] for p, c in zip(parts, comps.T.tolist(), strict=True)]
        return [":".join(t) for t in zip(*names, strict=True)]
    cols = [
        pd.Series(np.asarray(p.labels, dtype=object)[c])
        for p, c in zip(parts, comps.T, strict=True)
    ]
    return cols[0].str.cat(cols[1:], sep=":").tolist()


def _random_structure(
    rt: RandomTerm,
    values: dict[str, Value],
    n: int,
    check_nobs: bool = True,
    combos: np.ndarray | None = None,
) -> RandomStructure:
    Z, spec = build_matrix(rt.expr, values, n)
    parts: list[Categorical] = []
    for g in rt.group:
        v = values[g]
        if isinstance(v, Numeric):
            if v.values.shape[1] != 1:
                raise DataError(f"grouping factor {g!r} must be a single column")
            v = categorize(v.values[:, 0], g, None)
            values[g] = v
        parts.append(v)
    codes, combos, nlev = group_levels(parts, combos)
    if nlev < 2 and check_nobs:
        raise ModelError(
            f"grouping factor {rt.group_name!r} has only {nlev} level; "
            "a random effect needs at least two levels"
        )
    if check_nobs and nlev * Z.shape[1] >= n:
        raise ModelError(
            f"number of observations ({n}) <= number of random effects "
            f"({nlev * Z.shape[1]}) for term {rt.text}; the random-effects "
            "parameters and the residual variance are probably unidentifiable"
        )
    return RandomStructure(
        rt, np.ascontiguousarray(Z), codes, spec, [p.values for p in parts], combos, parts, nlev
    )


def term_columns(design: Design) -> np.ndarray:
    """Term index of every column of X (0 = intercept, k = k-th term), R's ``assign``."""
    xs = design.xspec
    sizes = [1] if xs.intercept else []
    for term, coding in zip(xs.terms, xs.codings, strict=True):
        size = 1
        for f, c in zip(term, coding, strict=True):
            spec = design.factor_specs[f]
            if c == "num":
                size *= len(spec.suffixes or [""])
            else:
                nlev = len(spec.labels or [])
                size *= nlev - 1 if c == "contrast" else nlev
        sizes.append(size)
    first = 0 if xs.intercept else 1
    assign = np.repeat(np.arange(first, first + len(sizes)), sizes)
    if xs.keep is not None:
        assign = assign[xs.keep]
    return assign
