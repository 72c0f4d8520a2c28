"""nlme's one-sided ``form`` arguments of correlation structures and variance
functions: ``"~ 1 | g"``, ``"~ time | g"``, ``"~ x + y | g"``,
``"~ fitted(.)"``, ``"~ v | stratum"``, ``"~ 1 | a/b"`` (nested groups)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from multilevel.errors import DataError, FormulaError


@dataclass(frozen=True)
class Form:
    """A parsed form: covariate names (empty for ``~ 1``; ``("fitted(.)",)``
    for the fitted values) and grouping columns (outermost first)."""

    text: str
    covariates: tuple[str, ...]
    groups: tuple[str, ...]

    @property
    def fitted(self) -> bool:
        return self.covariates == ("fitted(.)",)


def parse_form(text: str | None, default: str = "~ 1") -> Form:
    src = default if text is None else text
    if not isinstance(src, str):
        raise FormulaError(
            f"form must be a one-sided formula string such as '~ 1 | g', not {src!r}"
        )
    s = src.strip()
    if not s.startswith("~"):
        raise FormulaError("a form starts with '~' (e.g. '~ 1 | g' or '~ time | g')", src, 0)
    body = s[1:]
    cov, _, grp = body.partition("|")
    cov = cov.strip()
    if "|" in grp:
        raise FormulaError("only one '|' is allowed in a form", src, s.rindex("|"))
    if cov in ("", "1"):
        covs: tuple[str, ...] = ()
    elif cov.replace(" ", "") in ("fitted(.)", "fitted"):
        covs = ("fitted(.)",)
    else:
        covs = tuple(c.strip().strip("`") for c in cov.split("+"))
        if any(not c for c in covs):
            raise FormulaError("an empty covariate in the form", src, 0)
    groups = tuple(g.strip().strip("`") for g in grp.split("/")) if grp.strip() else ()
    if any(not g for g in groups):
        raise FormulaError("an empty grouping column after '|' or '/'", src, 0)
    return Form(src, covs, groups)


def column(frame: pd.DataFrame, name: str, what: str) -> pd.Series:
    if name not in frame.columns:
        raise DataError(f"the {what} {name!r} is not a column of the data")
    return frame[name]


def numeric_column(frame: pd.DataFrame, name: str, what: str) -> np.ndarray:
    col = column(frame, name, what)
    if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        raise DataError(f"the {what} {name!r} must be numeric, not {col.dtype}")
    try:
        return np.asarray(col, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"the {what} {name!r} must be numeric") from None


def group_codes(frame: pd.DataFrame, groups: tuple[str, ...], what: str) -> np.ndarray:
    """Integer codes of the (nested) grouping, by first appearance; all rows
    one group without grouping columns."""
    if not groups:
        return np.zeros(len(frame), dtype=np.int64)
    cols = [column(frame, g, what).astype(str).to_numpy() for g in groups]
    key = cols[0] if len(cols) == 1 else pd.Series(cols[0]).str.cat(cols[1:], sep="/").to_numpy()
    codes, _ = pd.factorize(key)
    return codes.astype(np.int64)
