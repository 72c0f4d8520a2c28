"""Every fit class exports its numbers completely (fixed effects with SE and
p, variance components, random effects with conditional SDs, fitted values,
fit statistics, the convergence record) as strict JSON, and shows itself in
a notebook as HTML tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import multilevel as ml


def _fits():
    sleep = ml.datasets.load("sleepstudy")
    cbpp = ml.datasets.load("cbpp")
    wine = ml.datasets.load("wine")
    wine["rating"] = pd.Categorical(wine["rating"], ordered=True)
    return {
        "lmer": ml.lmer("Reaction ~ Days + (Days | Subject)", sleep),
        "glmer": ml.glmer(
            "cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial"
        ),  # fmt: skip
        "clmm": ml.clmm("rating ~ temp + (1 | judge)", wine),
        "lme": ml.lme("Reaction ~ Days", "~ Days | Subject", sleep),
        "gls": ml.gls("Reaction ~ Days", sleep, correlation=ml.corAR1(form="~ 1 | Subject")),
    }


FITS = _fits()


@pytest.mark.parametrize("kind", list(FITS))
def test_json_is_strict_and_complete(kind):
    f = FITS[kind]
    d = json.loads(f.to_json(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    for key in ("coefficients", "fitted", "convergence", "loglik", "aic", "messages"):
        assert key in d, key
    coef = d["coefficients"]
    assert len(coef["rows"]) == len(coef["data"]) and coef["columns"]
    assert len(d["fitted"]) == f.nobs
    assert isinstance(d["convergence"]["converged"], bool)
    if kind != "gls":
        assert d["ranef"], "random effects missing"
        g = next(iter(d["ranef"].values()))
        assert len(g["levels"]) == len(g["values"])
        if kind in ("lmer", "glmer", "clmm"):
            assert np.all(np.asarray(g["condsd"]) > 0)


def test_lmer_json_has_satterthwaite_df_and_ranef_values():
    f = FITS["lmer"]
    d = f.to_dict()
    assert d["coefficients"]["columns"] == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    got = np.asarray(d["ranef"]["Subject"]["values"])
    np.testing.assert_allclose(got, f.ranef["Subject"].to_numpy())
    np.testing.assert_allclose(np.asarray(d["ranef"]["Subject"]["condsd"]),
                               f.ranef_condsd["Subject"].to_numpy())  # fmt: skip


@pytest.mark.parametrize("kind", list(FITS))
def test_notebook_view_is_html_tables(kind):
    html = FITS[kind]._repr_html_()
    assert "<pre>" not in html
    assert html.count("<table") >= 2
    assert "Fixed effects" in html
