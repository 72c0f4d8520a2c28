"""The profiled criterion: exact gradients, and the compiled kernel against
the numpy implementation."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import multilevel as ml
import multilevel.lmm.criterion as lmm

from ..conftest import reference, reference_data

ONE_TERM = ["hsb_lmer_reml", "hsb_lmer_ml", "sleep_reml", "dyestuff_reml", "dyestuff2_reml"]
CROSSED = ["penicillin_reml", "pastes_reml"]


def fit_case(case):
    ref = reference(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ml.lmer(ref["formula"], reference_data(ref), REML=ref["method"] == "REML")


def _random_one_term(rng, q: int, nlev: int, p: int, rows: int):
    """Cross-products of one term of q columns from random rows (rows per level)."""
    from multilevel.linalg.crossprod import CrossProducts

    m = p + 1
    Z = rng.normal(size=(nlev, rows, q))
    F = rng.normal(size=(nlev, rows, m))
    D1 = np.einsum("lri,lrj->lij", Z, Z)
    B1F = np.einsum("lri,lrj->lij", Z, F)
    Fall = F.reshape(-1, m)
    return CrossProducts([q], [nlev], D1, B1F, None, None, None, Fall.T @ Fall, nlev * rows, p)


def numeric_gradient(crit, theta, h=1e-6):
    return np.array(
        [(crit(theta + h * e) - crit(theta - h * e)) / (2 * h) for e in np.eye(theta.size)]
    )


@pytest.mark.parametrize("case", ONE_TERM + CROSSED)
def test_exact_gradient_matches_differences(case):
    fit = fit_case(case)
    crit = fit.criterion.scaled  # the engine optimises in the scaled basis
    assert crit.has_gradient
    theta = fit.optinfo.internal_theta * 1.3 + 0.05
    value, grad = crit.value_and_gradient(theta)
    assert value == pytest.approx(crit(theta), rel=1e-13)
    # central differences carry rounding of ~1e-10 relative in the criterion
    np.testing.assert_allclose(grad, numeric_gradient(crit, theta), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("case", ONE_TERM)
def test_compiled_kernel_equals_numpy(case, monkeypatch):
    fit = fit_case(case)
    crit = fit.criterion.scaled  # the engine optimises in the scaled basis
    if crit._kernel is None:
        pytest.skip("the compiled kernel was not built")
    for theta in (fit.optinfo.internal_theta, fit.optinfo.internal_theta * 1.3 + 0.05):
        v1, g1 = crit.value_and_gradient(theta)
        kernel, crit._kernel = crit._kernel, None
        v2, g2 = crit.value_and_gradient(theta)
        crit._kernel = kernel
        assert v1 == pytest.approx(v2, rel=1e-12)
        np.testing.assert_allclose(g1, g2, rtol=1e-9, atol=1e-9)
    monkeypatch.setattr(lmm, "_KERNEL_DISABLED", True)
    slow = fit_case(case)
    assert slow.criterion.scaled._kernel is None
    assert slow.loglik == pytest.approx(fit.loglik, abs=1e-8)
    np.testing.assert_allclose(slow.fixef, fit.fixef, rtol=1e-7)
    # the estimates at the optimum: the first term's factor and modes (compiled
    # per-level factor and back-substitution against numpy's)
    for a, b in zip(slow.ranef.values(), fit.ranef.values(), strict=True):
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6, atol=1e-8)


def test_criterion_is_even_in_a_scalar_theta():
    """Λ and −Λ give the same model: the criterion is symmetric, so its
    derivative vanishes at θ = 0 (why the optimizer approaches bounds carefully)."""
    crit = fit_case("dyestuff_reml").criterion.scaled
    for t in (0.3, 1.7):
        assert crit(np.array([t])) == pytest.approx(crit(np.array([-t])), rel=1e-14)
    assert crit.value_and_gradient(np.array([0.0]))[1][0] == pytest.approx(0.0, abs=1e-12)


def _growth(nested: bool, seed: int = 4):
    """Children measured over years in schools: nested (each child in one
    school) or partly crossed (children change school)."""
    rng = np.random.default_rng(seed)
    n_child, n_school, years = 300, 25, 4
    school = rng.integers(0, n_school, n_child)
    rows = []
    for c in range(n_child):
        for t in range(years):
            s = school[c] if nested or t < 2 else (school[c] + 1) % n_school
            rows.append((c, s, t - 1.5))
    df = pd.DataFrame(rows, columns=["child", "school", "year"])
    b = rng.normal(size=(n_child, 2)) * [1.0, 0.3]
    s = rng.normal(size=(n_school, 2)) * [0.6, 0.2]
    df["y"] = (
        b[df.child, 0] + b[df.child, 1] * df.year + s[df.school, 0] + s[df.school, 1] * df.year
        + 0.5 * df.year + rng.normal(size=len(df))
    )  # fmt: skip
    return df


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize(
    "formula",
    [
        "y ~ year + (year | child) + (year | school)",
        "y ~ year + (1 | child) + (year | school)",
        "y ~ year + (year | child) + (1 | school)",
    ],
)
@pytest.mark.parametrize("REML", [True, False])
def test_gradient_of_vector_terms_beside_others(nested, formula, REML):
    fit = ml.lmer(formula, _growth(nested), REML=REML)
    crit = fit.criterion.scaled
    assert crit.has_gradient and fit.optinfo.optimizer.startswith("bfgs")
    theta = fit.optinfo.internal_theta * 1.2 + 0.05
    value, grad = crit.value_and_gradient(theta)
    assert value == pytest.approx(crit(theta), rel=1e-13)
    np.testing.assert_allclose(grad, numeric_gradient(crit, theta), rtol=2e-4, atol=2e-4)


def test_block_pair_products_are_the_sandwich():
    import scipy.sparse as sp

    from multilevel.lmm.schur import BlockPairProducts

    rng = np.random.default_rng(0)
    n1, q1, Q = 40, 2, 15
    A = sp.random(n1 * q1, Q, density=0.15, random_state=1, format="csr")
    bp = BlockPairProducts(A, q1)
    V = rng.normal(size=(n1, q1, q1))
    Vb = sp.block_diag(list(V)).toarray()
    H = np.zeros((Q, Q))
    H[bp.rows, bp.cols] = bp(V)
    np.testing.assert_allclose(H, A.T.toarray() @ Vb @ A.toarray(), atol=1e-12)
    G = rng.normal(size=(Q, Q))
    K = bp.adjoint(G)
    Ad = A.toarray().reshape(n1, q1, Q)
    np.testing.assert_allclose(K, Ad @ G @ np.swapaxes(Ad, 1, 2), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    q=st.integers(1, 3),
    nlev=st.integers(2, 9),
    p=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_compiled_factor_and_modes_equal_numpy_on_random_blocks(q, nlev, p, seed, scale):
    """The per-level factor, [X y] block and modes at any θ: the compiled
    kernels against numpy on random cross-products (one term of q columns)."""
    from multilevel.covariance import templates

    rng = np.random.default_rng(seed)
    cp = _random_one_term(rng, q, nlev, p, rows=6)
    tmpl = templates([q])
    theta = scale * rng.uniform(0.2, 1.5, tmpl[0].size)
    theta[tmpl[0].rows != tmpl[0].cols] *= rng.choice([-1.0, 1.0])
    fast = lmm.ProfiledCriterion(cp, tmpl, True)
    f1 = fast.factor(theta, keep=True)
    b1, u1 = fast.solve(f1)
    saved = lmm._KERNEL_DISABLED
    lmm._KERNEL_DISABLED = True
    try:
        slow = lmm.ProfiledCriterion(cp, tmpl, True)
        f2 = slow.factor(theta, keep=True)
        b2, u2 = slow.solve(f2)
    finally:
        lmm._KERNEL_DISABLED = saved
    for a, b in ((f1.L1, f2.L1), (f1.W, f2.W), (f1.C1F, f2.C1F), (f1.LFF, f2.LFF)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert f1.logdet_Z == pytest.approx(f2.logdet_Z, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(b1, b2, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(u1[0], u2[0], rtol=1e-9, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    q=st.integers(1, 6),
    nlev=st.sampled_from([1, 2, 7, 127, 128, 129, 300]),
    p=st.integers(0, 7),
    reml=st.booleans(),
    seed=st.integers(0, 10_000),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_compiled_criterion_and_gradient_equal_numpy_on_random_blocks(
    q, nlev, p, reml, seed, scale
):
    """The one-term kernel's value and gradient against numpy at random θ:
    every q (constants up to 4, the general loop above), level counts on
    both sides of the kernel's chunk of 128 levels, no fixed effects at all."""
    from multilevel.covariance import templates

    rng = np.random.default_rng(seed)
    cp = _random_one_term(rng, q, nlev, p, rows=q + p + 3)  # a residual even with one level
    tmpl = templates([q])
    theta = scale * rng.uniform(0.2, 1.5, tmpl[0].size)
    off = tmpl[0].rows != tmpl[0].cols
    theta[off] *= rng.choice([-1.0, 1.0], size=int(off.sum()))
    fast = lmm.ProfiledCriterion(cp, tmpl, reml)
    if fast._kernel is None:
        pytest.skip("the compiled kernel was not built")
    v1, g1 = fast.value_and_gradient(theta)
    saved = lmm._KERNEL_DISABLED
    lmm._KERNEL_DISABLED = True
    try:
        v2, g2 = lmm.ProfiledCriterion(cp, tmpl, reml).value_and_gradient(theta)
    finally:
        lmm._KERNEL_DISABLED = saved
    assert v1 == pytest.approx(v2, rel=1e-11, abs=1e-9)
    np.testing.assert_allclose(g1, g2, rtol=1e-7, atol=1e-7 * max(1.0, np.abs(g2).max()))
    assert fast(theta) == pytest.approx(v1, rel=1e-14, abs=1e-12)
