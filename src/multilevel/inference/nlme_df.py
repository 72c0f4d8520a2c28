"""nlme's denominator degrees of freedom for the fixed effects: each term is
estimated at the innermost grouping level within whose groups it is constant,
and gets that level's DF (Pinheiro & Bates 2000, sec. 2.4.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multilevel.errors import ModelError
from multilevel.formula.design import term_columns

if TYPE_CHECKING:
    from multilevel.lmm.results import LmerFit


def varies_within(X: np.ndarray, codes: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """For every column of X: does it take different values inside some group?

    Group-wise max − min from one sort of the rows and ``reduceat`` over the
    group boundaries; differences below ``rtol`` × the column's largest
    absolute value count as constant (rounding in derived columns)."""
    order = np.argsort(codes, kind="stable")
    sc = codes[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
    Xs = X[order]
    spread = np.maximum.reduceat(Xs, starts, axis=0) - np.minimum.reduceat(Xs, starts, axis=0)
    scale = np.abs(X).max(axis=0)
    return (spread > rtol * np.where(scale > 0, scale, 1.0)).any(axis=0)


def between_within_df(
    X: np.ndarray,
    assign: np.ndarray,
    level_codes: list[np.ndarray],
    intercept: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """nlme's denominator DF (Pinheiro & Bates 2000, sec. 2.4.2).

    ``level_codes`` are the group indices of the grouping levels, outermost
    first (each level's groups nested in the previous level's).  Returns
    (DF per column of X, level at which each column is estimated: 1..Q+1).
    """
    n = X.shape[0]
    Q = len(level_codes)
    nterms = int(assign.max()) + 1 if assign.size else 0
    # inner[k, t]: term t varies within the groups of level k+1
    inner = np.zeros((Q, nterms), dtype=bool)
    for k, codes in enumerate(level_codes):  # Q levels, a handful
        v = varies_within(X, codes)
        np.logical_or.at(inner[k], assign, v)
    # estimated at the first level within whose groups the term is constant
    outer = ~inner
    term_level = np.where(outer.any(axis=0), outer.argmax(axis=0) + 1, Q + 1)
    if intercept:
        term_level[0] = Q + 1
    col_level = term_level[assign]
    counted = np.ones(len(assign), dtype=bool)
    if intercept:
        counted &= assign != 0
    p = np.bincount(col_level[counted], minlength=Q + 2)
    m = np.array([1] + [int(c.max()) + 1 for c in level_codes] + [n])
    level_df = m[1:] - (m[:-1] + p[1:])
    return level_df[col_level - 1].astype(np.int64), col_level


def nlme_df(fit: LmerFit) -> pd.Series:
    """nlme's between/within DF of a fitted LMM (nested grouping factors only)."""
    design = fit.design
    groups: dict[str, np.ndarray] = {}
    for r in sorted(design.random, key=lambda r: r.nlevels):
        groups.setdefault(r.name, r.codes)
    codes = list(groups.values())
    for outer, inner in zip(codes, codes[1:], strict=False):
        # nested: every inner group lies in one outer group
        pairs = np.unique(np.stack([inner, outer]), axis=1)
        if pairs.shape[1] != len(np.unique(inner)):
            raise ModelError("nlme's DF rule needs nested grouping factors")
    df, _ = between_within_df(design.X, term_columns(design), codes, design.xspec.intercept)
    return pd.Series(df, index=design.fixef_names, name="df")
