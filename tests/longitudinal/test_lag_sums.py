"""The AR(1)/CAR(1) shortcut of an lme fit: cross-products of the whitened
rows from lag sums (no pass over the rows per ω) and Newton's method on the
profile over ω, each against the general path it replaces."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
from multilevel.longitudinal import estimate as E


def _panel(n_subjects=60, m=8, phi=0.5, drop=0.0, seed=1, times=None):
    """Random intercepts and slopes, AR(1) errors; ``drop`` of the rows
    missing at random (gaps of 2, 3, ... between successive occasions)."""
    rng = np.random.default_rng(seed)
    t = np.tile(np.arange(m, dtype=float) if times is None else times, n_subjects)
    s = np.repeat(np.arange(n_subjects), m)
    e = np.empty((n_subjects, m))
    e[:, 0] = rng.normal(size=n_subjects)
    for k in range(1, m):
        e[:, k] = phi * e[:, k - 1] + rng.normal(0, np.sqrt(1 - phi**2), n_subjects)
    b0, b1 = rng.normal(0, 1, n_subjects), rng.normal(0, 0.3, n_subjects)
    y = 2 + 0.5 * t + b0[s] + b1[s] * t + e.ravel()
    d = pd.DataFrame({"subject": s.astype(str), "t": t, "x": rng.normal(size=t.size), "y": y})
    keep = rng.uniform(size=len(d)) >= drop
    return d[keep].sample(frac=1.0, random_state=seed).reset_index(drop=True)  # any row order


def _capture(monkeypatch):
    """The whitened columns of the next lme fit."""
    seen = {}
    orig = E._with_fitted_rounds

    def spy(struct, make, *args):
        seen["w"] = make()
        return orig(struct, make, *args)

    monkeypatch.setattr(E, "_with_fitted_rounds", spy)
    return seen


@pytest.mark.parametrize(
    ("cor", "drop", "times"),
    [
        (ml.corAR1(form="~ t | subject"), 0.0, None),
        (ml.corAR1(form="~ t | subject"), 0.25, None),  # gaps 1, 2, 3, ...
        (ml.corCAR1(form="~ t | subject"), 0.2, np.arange(8) * 0.5),
    ],
)
def test_lag_sums_give_the_whitened_rows_cross_products(monkeypatch, cor, drop, times):
    d = _panel(drop=drop, times=times)
    seen = _capture(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml.lme("y ~ t + x", "~ t | subject", d, correlation=cor)
    w = seen["w"]
    assert w._lag_sums() is not None
    from multilevel.linalg.crossprod import cross_products

    phis = (0.1, 0.3, 0.9) if isinstance(cor, ml.corCAR1) else (-0.6, 0.0, 0.3, 0.9)
    for phi in phis:
        omega = cor.to_free(np.array([phi]))
        cp, logdet = w.cross_products(omega)
        with np.errstate(invalid="ignore"):  # φ < 0 to the power 0 on first rows, unused
            parts, logdet_rows = w.at(omega)
        ref = cross_products(parts[0], w.codes, w.nlevels, parts[1], parts[2])
        for name in ("D1", "B1F", "AFF"):
            np.testing.assert_allclose(getattr(cp, name), getattr(ref, name),
                                       rtol=1e-10, atol=1e-9)  # fmt: skip
        assert logdet == pytest.approx(logdet_rows, rel=1e-12, abs=1e-10)


def test_lag_sums_decline_what_they_cannot_do():
    d = _panel(n_subjects=10)
    from multilevel.longitudinal.whiten import ResidualStructure

    M = np.ones((len(d), 3))
    codes = pd.factorize(d["subject"])[0]
    s = ResidualStructure(ml.corCompSymm(0.2), None, d, ("subject",))
    assert s.lag_sums(M, codes, 10, 1) is None  # not Markov
    d = d.assign(v=d["t"] + 1.0)
    s = ResidualStructure(ml.corAR1(0.2), ml.varPower(0.5, form="~ v"), d, ("subject",))
    assert s.lag_sums(M, codes, 10, 1) is None  # a variance function of ω
    assert s.lag_sums(M, codes, 10, 1, with_var=False) is not None


@pytest.mark.parametrize(("REML", "drop"), [(True, 0.0), (False, 0.2)])
def test_newton_on_the_profile_finds_brents_optimum(monkeypatch, REML, drop):
    d = _panel(n_subjects=80, drop=drop, seed=3)
    calls = []
    orig = E._envelope_newton

    def spy(*args):
        rec = orig(*args)
        calls.append(rec)
        return rec

    monkeypatch.setattr(E, "_envelope_newton", spy)
    kw = dict(correlation=ml.corAR1(form="~ t | subject"), method="REML" if REML else "ML")
    fast = ml.lme("y ~ t", "~ t | subject", d, **kw)
    assert calls and calls[0] is not None and calls[0].optimizer == "newton"
    monkeypatch.setattr(E, "_envelope_newton", lambda *a: None)
    slow = ml.lme("y ~ t", "~ t | subject", d, **kw)
    assert fast.converged and slow.converged
    # Brent stops within 1e-4 deviance units of the optimum, Newton within 1e-7
    assert fast.loglik >= slow.loglik - 1e-7
    assert fast.loglik == pytest.approx(slow.loglik, abs=5e-5)
    assert fast.corstruct["Phi"] == pytest.approx(slow.corstruct["Phi"], abs=1e-3)
    np.testing.assert_allclose(fast.fixef, slow.fixef, rtol=1e-5, atol=1e-6)
