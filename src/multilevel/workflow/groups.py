"""Group-level helpers for building multilevel data: group means, centring and
attaching a level-2 table to level-1 rows.

For a level-1 variable x_ij (unit i in group j, n_j units in group j)

* group mean          x̄_j  = (1/n_j) Σ_i x_ij          (``group_mean``)
* centring within     x_ij − x̄_j                       (``center_within``)
* grand-mean centring x_ij − x̄,  x̄ = (1/n) Σ_ij x_ij    (``center_grand``)

Means skip missing values (as pandas does; R's ``ave(x, g)`` would give NA for
the whole group); a row with a missing grouping key gets NaN.  Everything is
vectorized with pandas' groupby; nothing loops over groups.

Building the High School and Beyond data from its two raw tables takes two
lines::

    hsb = attach_level2(students, schools, on="school", columns=["sector"])
    hsb = add_centered(hsb, "ses", by="school")     # adds meanses and cses
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from multilevel.errors import DataError
from multilevel.formula.design import to_pandas
from multilevel.formula.evaluate import closest

Columns = str | Sequence[str]


def _as_list(cols: Columns, what: str) -> list[str]:
    if isinstance(cols, str):
        return [cols]
    out = list(cols)
    if not out:
        raise DataError(f"{what}: give at least one column")
    return out


def _check_columns(frame: pd.DataFrame, cols: list[str], what: str) -> None:
    names = [str(c) for c in frame.columns]
    for c in cols:
        if c not in frame.columns:
            raise DataError(f"{what} column {c!r} is not in the data" + closest(c, names))


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    s = frame[column]
    if not pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        raise DataError(f"column {column!r} is not numeric (dtype {s.dtype}); cannot average it")
    return s.astype(float)


def group_mean(data: Any, column: str, by: Columns) -> pd.Series:
    """Mean of ``column`` within the groups of ``by``, one value per row.

    x̄_j = (1/n_j) Σ_i x_ij over the non-missing x_ij of group j (R's
    ``ave(x, g)``).  ``by`` is a column name or a list of names (their
    combinations are the groups).  The result is aligned to ``data``'s rows
    and named ``"mean" + column``.
    """
    frame = to_pandas(data)
    keys = _as_list(by, "by")
    _check_columns(frame, [column], "value")
    _check_columns(frame, keys, "grouping")
    x = _numeric(frame, column)
    # observed=True: unused categories of a categorical key are not groups
    grouped = x.groupby([frame[k] for k in keys], observed=True, sort=False, dropna=True)
    return grouped.transform("mean").rename(f"mean{column}")


def center_within(data: Any, column: str, by: Columns) -> pd.Series:
    """Group-mean centring: x_ij − x̄_j (x̄_j as in :func:`group_mean`).

    Within-group centred values sum to zero in every group, so their
    coefficient is the pure within-group effect.  Named ``"c" + column``.
    """
    frame = to_pandas(data)
    mean = group_mean(frame, column, by)
    return (_numeric(frame, column) - mean).rename(f"c{column}")


def center_grand(data: Any, column: str) -> pd.Series:
    """Grand-mean centring: x_ij − x̄ with x̄ the mean of all non-missing values."""
    frame = to_pandas(data)
    _check_columns(frame, [column], "value")
    x = _numeric(frame, column)
    return (x - x.mean()).rename(f"c{column}")


def attach_level2(
    level1: Any,
    level2: Any,
    on: Columns,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Attach the columns of a level-2 table (one row per group) to the
    level-1 rows of each group: a many-to-one left join on ``on``.

    The level-1 rows keep their order and index.  Checked before joining: the
    key columns exist in both tables with compatible types (a string key is
    not silently matched to an integer key), the key is unique in ``level2``,
    every level-1 row finds its group, and no attached column already exists
    in ``level1`` (choose with ``columns=`` or rename).  ``columns`` defaults
    to every non-key column of ``level2``.
    """
    l1 = to_pandas(level1)
    l2 = to_pandas(level2)
    keys = _as_list(on, "on")
    _check_columns(l1, keys, "level-1 key")
    _check_columns(l2, keys, "level-2 key")
    for k in keys:
        _check_key_types(l1[k], l2[k], k)
    if columns is None:
        cols = [c for c in l2.columns if c not in keys]
    else:
        cols = list(columns)
        _check_columns(l2, cols, "level-2")
        if overlap := [c for c in cols if c in keys]:
            raise DataError(f"columns= includes the key column(s) {overlap}")
    if clash := [c for c in cols if c in l1.columns]:
        raise DataError(
            f"level-1 data already have column(s) {clash}; pass columns= to choose the "
            "level-2 columns to attach, or rename them"
        )

    key2 = l2[keys]
    dup = key2.duplicated(keep=False)
    if dup.any():
        shown = key2[dup].drop_duplicates().head(5).to_dict("records")
        raise DataError(
            f"the key {keys} is not unique in the level-2 table: {int(dup.sum())} rows share "
            f"{int(key2[dup].drop_duplicates().shape[0])} keys, e.g. {shown}"
        )
    if key2.isna().any(axis=None):
        raise DataError(f"the level-2 key {keys} has missing values")

    table = l2.set_index(keys if len(keys) > 1 else keys[0])[cols]
    if len(keys) > 1:
        wanted = pd.MultiIndex.from_frame(l1[keys])
    else:
        wanted = pd.Index(l1[keys[0]])
    found = wanted.isin(table.index)
    if not found.all():
        missing = pd.Series(list(wanted[~found])).drop_duplicates()
        raise DataError(
            f"{int((~found).sum())} level-1 rows have no group in the level-2 table "
            f"({len(missing)} key values, e.g. {list(missing.head(5))})"
        )
    attached = table.reindex(wanted)
    attached.index = l1.index
    return pd.concat([l1, attached], axis=1)


def _key_kind(s: pd.Series) -> str:
    dtype = s.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        dtype = dtype.categories.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_numeric_dtype(dtype):
        return "number"
    return "text"


def _check_key_types(a: pd.Series, b: pd.Series, key: str) -> None:
    ka, kb = _key_kind(a), _key_kind(b)
    if ka != kb:
        raise DataError(
            f"key {key!r} is {ka} in the level-1 data but {kb} in the level-2 data; convert "
            f"one of them (e.g. df[{key!r}] = df[{key!r}].astype(int) or .astype(str))"
        )


def add_centered(
    data: Any,
    columns: Columns,
    by: Columns | None = None,
    *,
    mean_prefix: str = "mean",
    prefix: str = "c",
    overwrite: bool = False,
) -> pd.DataFrame:
    """Return a copy of ``data`` with, for every column x, the mean
    ``mean_prefix + x`` and the centred ``prefix + x``.

    With ``by`` the mean is the group mean x̄_j and the centred column
    x_ij − x̄_j (HSB's ``meanses`` and ``cses`` from ``ses``); without it the
    grand mean x̄ and x_ij − x̄.  Existing columns of those names are an
    error unless ``overwrite=True``.
    """
    frame = to_pandas(data)
    cols = _as_list(columns, "columns")
    _check_columns(frame, cols, "value")
    new = [f"{p}{c}" for c in cols for p in (mean_prefix, prefix)]
    if not overwrite and (clash := [c for c in new if c in frame.columns]):
        raise DataError(f"data already have column(s) {clash}; pass overwrite=True")
    out = frame.copy()
    for c in cols:
        x = _numeric(frame, c)
        mean = group_mean(frame, c, by) if by is not None else pd.Series(x.mean(), frame.index)
        out[f"{mean_prefix}{c}"] = mean
        out[f"{prefix}{c}"] = x - mean
    return out
