"""Shared fixtures: the R reference results carried in ``tests/reference`` and
their data (the package's bundled CSVs, byte-identical to the files R read).

``tools/refresh_reference.py`` refreshes both from the project's shared
reference folder and says what changed; the tests never look outside the
repository.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference"
TESTDATA = ROOT / "tests" / "data"  # data sets made for single tests
DATA = Path(str(resources.files("multilevel.datasets")))


def reference(case: str) -> dict:
    """The reference case ``case`` (a missing file is an error, never a skip)."""
    return json.loads((REFERENCE / f"{case}.json").read_text())


def reference_data(ref: dict) -> pd.DataFrame:
    """The case's CSV with its factors' levels in R's order (first = reference)."""
    df = pd.read_csv(DATA / ref["dataset"])
    for col, levels in ref.get("factor_levels", {}).items():
        if col in df.columns:
            df[col] = pd.Categorical(df[col].astype(str), categories=[str(v) for v in levels])
    return df


@pytest.fixture(scope="session")
def hsb() -> pd.DataFrame:
    return reference_data(reference("hsb_lmer_reml"))
