"""Shared fixtures: the R reference results in ../shared/reference and their data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "reference"


def reference(case: str) -> dict:
    path = REFERENCE / f"{case}.json"
    if not path.exists():
        pytest.skip(f"reference results not available: {path}")
    return json.loads(path.read_text())


def reference_data(ref: dict) -> pd.DataFrame:
    """The case's CSV with its factors' levels in R's order (first = reference)."""
    df = pd.read_csv(SHARED / "data" / ref["dataset"])
    for col, levels in ref.get("factor_levels", {}).items():
        if col in df.columns:
            df[col] = pd.Categorical(df[col].astype(str), categories=[str(v) for v in levels])
    return df


@pytest.fixture(scope="session")
def hsb() -> pd.DataFrame:
    return reference_data(reference("hsb_lmer_reml"))
