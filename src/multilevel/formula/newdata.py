"""A fitted model's formula evaluated on new data: the fit's codings (factor
levels, stateful transforms such as ``scale``), X and Z of the new rows, and
the linear predictor Xβ + offset + Zb with new levels handled as lme4 does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from multilevel.errors import DataError, FormulaError, ModelError
from multilevel.formula.design import (
    Categorical,
    Design,
    Numeric,
    build_matrix,
    evaluate_factor,
    is_categorical,
    match_levels,
)


def _grouping_only(design: Design) -> set[str]:
    """Labels used only as grouping columns (they get levels, not codings)."""
    grouping = {g for r in design.random for g in r.term.group}
    used = {f for t in design.formula.fixed.terms for f in t} | set(design.formula.fixed.offsets)
    for r in design.random:
        used |= {f for t in r.term.expr.terms for f in t}
    return grouping - used


def new_values(design: Design, frame: pd.DataFrame) -> dict[str, Any]:
    """The formula's factors evaluated on new data with the fit's codings
    (levels, stateful transforms), grouping columns excepted."""
    values: dict[str, Any] = {}
    columns = [str(c) for c in frame.columns]
    for label, spec in design.factor_specs.items():
        if label == design.formula.response.label:  # type: ignore[union-attr]
            continue
        if label in _grouping_only(design):
            continue
        raw = evaluate_factor(spec.factor, frame, design.evaluator, columns)
        if spec.categorical:
            s = raw if isinstance(raw, pd.Series) else pd.Series(raw)
            codes = match_levels(spec.values, s)
            if (codes < 0).any():
                bad = [str(v) for v in pd.unique(s.to_numpy()[codes < 0])[:5]]
                raise DataError(f"{label!r} has levels not seen in the fit: {bad}")
            values[label] = Categorical(codes.astype(np.int64), spec.values, spec.labels)
        else:
            if is_categorical(raw):
                raise DataError(f"{label!r} was numeric in the fit but is not in newdata")
            arr = np.asarray(raw, dtype=float)
            values[label] = Numeric(arr.reshape(len(frame), -1), spec.suffixes or [""])
    return values


def new_offset(design: Design, frame: pd.DataFrame) -> np.ndarray | float:
    """The ``offset=`` argument of the fit on new data: its column read again
    (lme4 evaluates it in the new data); one given as an array cannot be, and
    is an error rather than silently left out."""
    arg = design.offset_arg
    if arg is None:
        return 0.0
    if arg is True:
        raise DataError(
            "the fit's offset= was an array, which new data cannot supply; give it as a "
            "column name (offset='col') or in the formula (+ offset(col))"
        )
    if arg not in frame.columns:
        raise DataError(f"offset column {arg!r} is not in newdata")
    try:
        return np.asarray(frame[arg], dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"offset column {arg!r} must be numeric") from None


def fixed_rows(design: Design, frame: pd.DataFrame, values: dict | None = None) -> np.ndarray:
    """The fixed-effects model matrix of new data, coded as in the fit
    (aliased columns dropped as in the fit)."""
    values = new_values(design, frame) if values is None else values
    X, _ = build_matrix(design.formula.fixed, values, len(frame), design.xspec.codings)
    return X if design.xspec.keep is None else X[:, design.xspec.keep]


def re_form_terms(design: Design, re_form: str | None) -> list[bool]:
    """Which random-effects terms a prediction includes, as lme4's ``re.form``:
    None all of them; ``"~0"`` (``"NA"``, ``"~-1"``) none; ``"~(1 | g) + ..."``
    those terms, each one of the model's (``(x | g)`` is ``(1 + x | g)``)."""
    have = [r.term.text for r in design.random]
    if re_form is None:
        return [True] * len(have)
    text = str(re_form).strip()
    if text.replace(" ", "") in ("~0", "NA", "~-1"):
        return [False] * len(have)
    from multilevel.formula.parser import parse_formula

    try:
        wanted = [t.text for t in parse_formula("y " + text).random] if text[:1] == "~" else []
    except FormulaError:
        wanted = []
    if not wanted:
        raise ModelError(
            f"re_form must be None (all random effects), '~0' (none) or random-effects terms "
            f"of the model such as '~{have[0]}', not {re_form!r}"
        )
    missing = [w for w in wanted if w not in have]
    if missing:
        raise ModelError(
            f"re_form term{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"{'are' if len(missing) > 1 else 'is'} not a random-effects term of the model "
            f"({', '.join(have)})"
        )
    return [h in wanted for h in have]


def fitted_predictor(
    design: Design, beta: np.ndarray, b: list[np.ndarray], include: list[bool]
) -> np.ndarray:
    """Xβ (+ offset) + the included terms' Zb on the fitting rows (data order)."""
    eta = design.X @ beta
    if design.offset is not None:
        eta = eta + design.offset
    for r, br, keep in zip(design.random, b, include, strict=True):
        if keep:
            eta = eta + np.einsum("nq,nq->n", r.Z, br[r.codes])
    return eta


def linear_predictor(
    design: Design,
    beta: np.ndarray,
    b: list[np.ndarray],
    frame: pd.DataFrame,
    include: list[bool],
    allow_new_levels: bool,
) -> np.ndarray:
    """Xβ (+ offset) + Zb of the ``include``d terms on new data; levels not
    seen in the fit get b = 0 when allowed and are an error otherwise."""
    values = new_values(design, frame)
    n = len(frame)
    eta = fixed_rows(design, frame, values) @ beta
    for label in design.formula.fixed.offsets:
        eta = eta + values[label].values[:, 0]
    eta = eta + new_offset(design, frame)
    for r, br, keep in zip(design.random, b, include, strict=True):
        if not keep:
            continue
        Z, _ = build_matrix(r.term.expr, values, n, r.spec.codings)
        idx = r.level_index(frame)
        if (idx < 0).any() and not allow_new_levels:
            rows = frame.loc[idx < 0, list(r.term.group)].drop_duplicates().head(5)
            new = [":".join(map(str, row)) for row in rows.itertuples(index=False)]
            raise DataError(
                f"new levels of {r.name!r} in newdata: {new}; "
                "use allow_new_levels=True to predict them at the population level"
            )
        bb = np.where((idx >= 0)[:, None], br[np.maximum(idx, 0)], 0.0)
        eta = eta + np.einsum("nq,nq->n", Z, bb)
    return eta
