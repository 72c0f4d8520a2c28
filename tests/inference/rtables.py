"""Reading the R reference tables of ``tests/reference/inference`` (layout in
``tools/r_references/inference_references.R``): a table is
``{"columns", "rows", "data"}``; an infinite df is the string ``"Inf"``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

REF = Path(__file__).resolve().parents[1] / "reference" / "inference"


@cache
def reference(case: str) -> dict:
    return json.loads((REF / f"{case}.json").read_text())


def table(case: str, block: str) -> pd.DataFrame:
    t = reference(case)[block]["table"]
    df = pd.DataFrame(t["data"], columns=t["columns"], index=t["rows"])
    for c in df.columns:
        col = df[c].replace({"Inf": np.inf})
        if all(isinstance(v, (int, float)) or v is None for v in col):
            df[c] = col.astype(float)
    return df


def values(case: str, block: str) -> dict:
    return reference(case)[block]["values"]
