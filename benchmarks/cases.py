"""Benchmark cases: data file, formula and factor columns.

Imported by the driver and by the Python runners (also under the separate
benchmark virtualenv), so it needs only pandas and numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SHARED_DATA = Path(os.environ.get("BENCH_SHARED_DATA", "/work/shared/data"))


@dataclass(frozen=True)
class Case:
    key: str
    name: str
    formula: str
    file: str  # a file in SHARED_DATA, or "sim:NAME" for a simulate.py data set
    # factor column -> level order (first is the reference), or None for the
    # sorted order of the values in the file
    factors: dict[str, list[str] | None] = field(default_factory=dict)
    crossed: bool = False

    def csv_path(self) -> Path:
        if self.file.startswith("sim:"):
            import simulate  # local module; generates the file on first use

            return simulate.ensure(self.file[4:])
        return SHARED_DATA / self.file


CASES = {
    c.key: c
    for c in [
        Case(
            "a",
            "hsb",
            "mathach ~ meanses*cses + sector*cses + (cses | school)",
            "hsb.csv",
            {"sector": ["Public", "Catholic"], "school": None},
        ),
        Case(
            "b",
            "sleepstudy",
            "Reaction ~ Days + (Days | Subject)",
            "sleepstudy.csv",
            {"Subject": None},
        ),
        Case(
            "c",
            "penicillin",
            "diameter ~ 1 + (1 | plate) + (1 | sample)",
            "penicillin.csv",
            {"plate": None, "sample": None},
            crossed=True,
        ),
        Case(
            "d",
            "insteval_sim",
            "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)",
            "sim:insteval_sim",
            {"service": ["0", "1"], "s": None, "d": None, "dept": None},
            crossed=True,
        ),
        Case("e", "large_sim", "y ~ 1 + x + (1 + x | g)", "sim:large_sim", {"g": None}),
    ]
}


def load(case: Case, path: Path | None = None) -> pd.DataFrame:
    """Read the case's CSV; factor columns become pandas Categoricals of strings."""
    df = pd.read_csv(path or case.csv_path())
    for col, levels in case.factors.items():
        values = df[col].astype(str)
        if levels is None:
            # numeric codes sort numerically (as R's factor() on numbers does)
            order = sorted(df[col].unique())
            levels = [str(v) for v in order]
        df[col] = pd.Categorical(values, categories=levels)
    return df


def factor_spec(case: Case) -> str:
    """Factor columns for the R runner: ``col[:lev1,lev2];col2``."""
    parts = [col if lev is None else f"{col}:{','.join(lev)}" for col, lev in case.factors.items()]
    return ";".join(parts)
