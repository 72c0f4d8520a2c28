"""Warnings point at the user's call, however deep in the package they arise."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

import multilevel as ml


def test_fit_warnings_name_the_callers_line():
    data = ml.datasets.load("dyestuff2")
    with pytest.warns(ml.SingularFitWarning) as rec:
        ml.lmer("Yield ~ 1 + (1 | Batch)", data)
    assert rec[0].filename == __file__
    d = pd.DataFrame({"y": range(12), "x": [1.0, 2.0] * 6, "g": list("aabbccddeeff")})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ml.lmer("y ~ x + I(2 * x) + (1 | g)", d)
    dropped = [w for w in rec if issubclass(w.category, ml.RankDeficiencyWarning)]
    assert dropped and dropped[0].filename == __file__
    assert "dropping 1 column / coefficient: I(2 * x)" in str(dropped[0].message)
