"""Group-level helpers: rebuilding hsb.csv from the raw HSB tables, and errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
from multilevel import DataError
from multilevel.workflow.groups import (
    add_centered,
    attach_level2,
    center_grand,
    center_within,
    group_mean,
)

from ..conftest import DATA


@pytest.fixture(scope="module")
def students() -> pd.DataFrame:
    return ml.datasets.load("hsb_students")


@pytest.fixture(scope="module")
def schools() -> pd.DataFrame:
    return ml.datasets.load("hsb_schools")


def test_rebuild_hsb_from_raw_tables(students, schools):
    # the two lines of the module docstring
    hsb = attach_level2(students, schools, on="school", columns=["sector"])
    hsb = add_centered(hsb, "ses", by="school")
    expected = ml.datasets.load("hsb")
    got = hsb[list(expected.columns)]
    # hsb.csv holds 15 significant digits, R computed meanses = ave(ses, school)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=0, atol=1e-12)
    assert list(got["sector"].cat.categories) == ["Public", "Catholic"]
    # meanses is the mean over the sampled students, not the file's own value
    assert np.abs(hsb["meanses"] - hsb["meanses_file"]).max() > 1e-3


def test_rebuild_from_raw_csv_with_string_keys():
    # the raw CSVs quote the ids; read as text they must be converted explicitly
    raw_students = pd.read_csv(DATA / "hsb_students.csv", dtype={"school": str})
    raw_schools = pd.read_csv(DATA / "hsb_schools.csv", dtype={"school": str})
    hsb = attach_level2(raw_students, raw_schools, on="school", columns=["sector"])
    hsb = add_centered(hsb, "ses", by="school")
    expected = pd.read_csv(DATA / "hsb.csv")
    assert (hsb["school"].astype(int).to_numpy() == expected["school"].to_numpy()).all()
    assert (hsb["sector"].astype(str).to_numpy() == expected["sector"].to_numpy()).all()
    for col in ("meanses", "cses"):
        np.testing.assert_allclose(hsb[col], expected[col], rtol=0, atol=1e-12)
    with pytest.raises(DataError, match="text in the level-1 data but number"):
        attach_level2(raw_students, ml.datasets.load("hsb_schools"), on="school")


def test_group_mean_and_centring(students):
    m = group_mean(students, "ses", "school")
    c = center_within(students, "ses", "school")
    assert m.name == "meanses" and c.name == "cses"
    assert m.index.equals(students.index)
    np.testing.assert_allclose(c + m, students["ses"], rtol=0, atol=1e-15)
    # school 1224: 47 students, mean -0.434382978723404 (hsb.csv)
    first = students["school"] == 1224
    assert first.sum() == 47
    np.testing.assert_allclose(m[first], -0.434382978723404, rtol=0, atol=1e-14)
    # centred values sum to zero in every school
    sums = c.groupby(students["school"]).sum()
    assert np.abs(sums).max() < 1e-12
    g = center_grand(students, "ses")
    np.testing.assert_allclose(g, students["ses"] - students["ses"].mean(), atol=1e-15)
    assert abs(g.mean()) < 1e-14


def test_group_mean_several_keys_and_missing_values():
    df = pd.DataFrame(
        {
            "a": ["x", "x", "x", "y", "y", None],
            "b": [1, 1, 2, 1, 1, 1],
            "v": [1.0, 3.0, 5.0, np.nan, 4.0, 7.0],
        }
    )
    m = group_mean(df, "v", ["a", "b"])
    np.testing.assert_array_equal(m.to_numpy(), [2.0, 2.0, 5.0, 4.0, 4.0, np.nan])
    out = add_centered(df, "v")
    np.testing.assert_allclose(out["meanv"], 4.0)
    np.testing.assert_allclose(out["cv"].to_numpy()[:3], [-3.0, -1.0, 1.0])


def test_attach_keeps_order_index_and_multi_keys():
    l1 = pd.DataFrame({"g": [2, 1, 2, 3], "h": ["a", "a", "b", "a"]}, index=[10, 11, 12, 13])
    l2 = pd.DataFrame({"g": [1, 2, 3, 2], "h": ["a", "a", "a", "b"], "z": [0.1, 0.2, 0.3, 0.4]})
    out = attach_level2(l1, l2, on=["g", "h"])
    assert list(out.index) == [10, 11, 12, 13]
    np.testing.assert_array_equal(out["z"].to_numpy(), [0.2, 0.1, 0.4, 0.3])


def test_attach_errors(students, schools):
    dup = pd.concat([schools, schools.iloc[[0]]], ignore_index=True)
    with pytest.raises(DataError, match="not unique in the level-2 table.*1224"):
        attach_level2(students, dup, on="school", columns=["sector"])
    short = schools[schools["school"] != 1288]
    with pytest.raises(DataError, match="rows have no group.*1288"):
        attach_level2(students, short, on="school", columns=["sector"])
    with pytest.raises(DataError, match="already have column.*meanses_file"):
        attach_level2(students, schools, on="school")
    with pytest.raises(DataError, match="'scool' is not in the data.*'school'"):
        attach_level2(students, schools, on="scool")
    with pytest.raises(DataError, match="not numeric"):
        group_mean(students, "sex", "school")
    with pytest.raises(DataError, match="overwrite=True"):
        add_centered(add_centered(students, "ses", by="school"), "ses", by="school")
