"""The fits behind ``tests/reference/inference`` (their R calls in each JSON's
``call``), fitted once per test session."""

from __future__ import annotations

from functools import cache

import multilevel as ml

FORMULAS = {
    "hsb_reml": ("hsb", "mathach ~ meanses*cses + sector*cses + (cses | school)", None),
    "hsb_intercept_reml": ("hsb", "mathach ~ ses + sector + (1 | school)", None),
    "sleep_reml": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", None),
    "penicillin_reml": ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", None),
    "cbpp_laplace": (
        "cbpp",
        "cbind(incidence, size - incidence) ~ period + (1 | herd)",
        "binomial",
    ),
    "grouse_poisson": (
        "grouseticks",
        "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)",
        "poisson",
    ),
}


@cache
def data(name: str):
    df = ml.datasets.load(name)
    if name == "grouseticks":
        for c in ("YEAR", "BROOD", "LOCATION"):
            df[c] = df[c].astype(str)
    return df


@cache
def fit(case: str):
    name, formula, family = FORMULAS[case]
    if family is None:
        return ml.lmer(formula, data(name))
    return ml.glmer(formula, data(name), family)
