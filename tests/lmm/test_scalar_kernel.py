"""The compiled criterion of several scalar terms with a small dense rest
block against the numpy criterion: the same value and exact gradient."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
import multilevel.lmm.criterion as crit_mod
from multilevel.compiled import kernel

pytestmark = pytest.mark.skipif(
    kernel("_kernels", "scalar_terms") is None, reason="the compiled kernel was not built"
)


def _three_terms() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 400
    a, b = rng.integers(0, 30, n), rng.integers(0, 12, n)
    c = b // 3
    x = rng.normal(size=n)
    y = (1 + 0.5 * x + rng.normal(0, 0.7, 30)[a] + rng.normal(0, 0.5, 12)[b]
         + rng.normal(0, 0.3, 4)[c] + rng.normal(size=n))  # fmt: skip
    cols = {"a": a, "b": b, "c": c}
    return pd.DataFrame({"y": y, "x": x, **{k: v.astype(str) for k, v in cols.items()}})


CASES = [
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", True),
    ("pastes", "strength ~ 1 + (1 | batch/cask)", True),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", False),
    ("three", "y ~ x + (1 | a) + (1 | b) + (1 | c)", True),
]


@pytest.mark.parametrize("data,formula,reml", CASES)
def test_scalar_kernel_equals_numpy(data, formula, reml, monkeypatch):
    frame = _three_terms() if data == "three" else ml.datasets.load(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ml.lmer(formula, frame, REML=reml)
    cr = fit.criterion.scaled
    K = len(cr.cp.q)
    monkeypatch.setattr(crit_mod, "_KERNEL_DISABLED", True)
    numpy_crit = crit_mod.ProfiledCriterion(cr.cp, cr.tmpl, cr.reml, cr.sum_log_w)
    monkeypatch.setattr(crit_mod, "_KERNEL_DISABLED", False)
    compiled = crit_mod.ProfiledCriterion(cr.cp, cr.tmpl, cr.reml, cr.sum_log_w)
    opt = fit.optinfo.internal_theta
    points = [opt, 1.3 * opt + 0.1, np.full(K, 0.5), np.where(np.arange(K) == K - 1, 0.0, opt)]
    for theta in points:
        v0, g0 = numpy_crit.value_and_gradient(theta)
        v1, g1 = compiled.value_and_gradient(theta)
        assert v1 == pytest.approx(v0, rel=1e-12, abs=1e-9)
        # at the optimum the gradient is a difference of terms of order n: its
        # rounding there is ~1e-9 n, whatever the order of the sums
        np.testing.assert_allclose(g1, g0, rtol=1e-8, atol=1e-9 * cr.n)
        assert compiled(theta) == pytest.approx(v0, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("data,formula,reml", CASES)
def test_kept_factor_compiled_equals_the_rest_block(data, formula, reml):
    """The factor kept for the estimates (compiled, with its solution, without
    the general rest block's set-up) against the general path's: the same
    blocks, solves and inverse, hence the same estimates."""
    frame = _three_terms() if data == "three" else ml.datasets.load(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ml.lmer(formula, frame, REML=reml)
    cr = fit.criterion.scaled
    theta = 1.1 * fit.optinfo.internal_theta + 0.05
    kept = cr.factor(theta, keep=True)
    general = cr.factor(theta, keep=False)  # the rest block's path
    assert "_rest_block" in vars(cr) and cr._rest_block is not None
    a, b = kept.rest, general.rest
    np.testing.assert_allclose(a.lam, b.lam, rtol=1e-14)
    np.testing.assert_allclose(a.MRF, b.MRF, rtol=1e-12, atol=1e-12)
    assert a.logdet == pytest.approx(b.logdet, rel=1e-12)
    np.testing.assert_allclose(a.schur_FF, b.schur_FF, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.tril(a.L), np.tril(b.L), rtol=1e-12, atol=1e-12)
    rhs = np.linspace(-1.0, 1.0, a.MRF.shape[0])
    np.testing.assert_allclose(a.solve(rhs), b.solve(rhs), rtol=1e-11, atol=1e-12)
    assert kept.logdet_Z == pytest.approx(general.logdet_Z, rel=1e-13)
    # the first term's blocks and [X y]'s factor, and the solution the
    # compiled pass formed with them
    for x, y in ((kept.L1, general.L1), (kept.W, general.W), (kept.C1F, general.C1F)):
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.tril(kept.LFF), np.tril(general.LFF), rtol=1e-10, atol=1e-12)
    assert kept.logdet_X == pytest.approx(general.logdet_X, rel=1e-11, abs=1e-11)
    assert kept.log_r2 == pytest.approx(general.log_r2, rel=1e-11)
    assert kept.solution is not None and general.solution is None
    (b1, us1), (b2, us2) = cr.solve(kept), cr.solve(general)
    np.testing.assert_allclose(b1, b2, rtol=1e-10, atol=1e-12)
    for u, v in zip(us1, us2, strict=True):
        assert u.shape == v.shape
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)
