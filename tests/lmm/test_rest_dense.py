"""The dense rest block of scalar terms: M_RR built by a rank-n₁ update (syrk)
or by scattering its nonzeros, factored and inverted in place, and the exact
gradient from L⁻¹ (no full inverse)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
from multilevel.lmm import schur, staged
from multilevel.lmm.criterion import ProfiledCriterion


def crossed(n: int, levels: tuple[int, ...], seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols = {f"g{k}": rng.integers(0, nl, n) for k, nl in enumerate(levels)}
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=n)
    for k, nl in enumerate(levels):
        y = y + rng.normal(0, 0.7, nl)[cols[f"g{k}"]]
    return pd.DataFrame({"y": y, "x": x, **cols})


FORMULAS = {
    2: "y ~ x + (1 | g0) + (1 | g1)",
    3: "y ~ x + (1 | g0) + (1 | g1) + (1 | g2)",
}


def criterion(df: pd.DataFrame, nterms: int, mode: str, monkeypatch) -> ProfiledCriterion:
    monkeypatch.setattr(schur.RestBlock, "_syrk_pays", lambda self: mode == "syrk")
    fit = ml.lmer(FORMULAS[nterms], df)
    crit = fit.criterion.scaled
    assert crit._rest.kind == "dense"
    assert (crit._rest._syrk_A is not None) == (mode == "syrk")
    return crit


def brute_force_M(crit: ProfiledCriterion, theta: np.ndarray) -> np.ndarray:
    """Λ_R(A_RR − A_R1 diag(w²) A_1R)Λ_R + I from dense arrays."""
    cp, rb = crit.cp, crit._rest
    T = crit.templates(theta)
    lam1 = T[0][0, 0]
    w2 = lam1**2 / (lam1**2 * cp.D1[:, 0, 0] + 1.0)
    A1R = cp.A1R.toarray()
    lam = rb.lam(T)
    B = cp.ARR.toarray() - A1R.T @ (w2[:, None] * A1R)
    return lam[:, None] * B * lam[None, :] + np.eye(lam.size)


@pytest.mark.parametrize("mode", ["syrk", "scatter"])
@pytest.mark.parametrize("nterms", [2, 3])
def test_rest_block_is_the_schur_complement(nterms, mode, monkeypatch):
    df = crossed(1500, (120, 60, 25)[:nterms])
    crit = criterion(df, nterms, mode, monkeypatch)
    theta = np.linspace(0.6, 1.3, nterms)
    f = crit.factor(theta)
    M = brute_force_M(crit, theta)
    L = np.tril(f.rest.L)
    np.testing.assert_allclose(L @ L.T, M, rtol=1e-12, atol=1e-12)
    assert f.rest.logdet == pytest.approx(np.linalg.slogdet(M)[1], rel=1e-12)
    # L⁻¹ in place: lower triangular, zeros above, and the factor is consumed
    W = f.rest.factor_inverse()
    assert W.flags.f_contiguous
    np.testing.assert_allclose(np.triu(W, 1), 0.0)
    np.testing.assert_allclose(W @ L, np.eye(L.shape[0]), atol=1e-10)
    assert f.rest.L is None


@pytest.mark.parametrize("nterms", [2, 3])
def test_both_builds_give_the_same_criterion_and_gradient(nterms, monkeypatch):
    df = crossed(1500, (120, 60, 25)[:nterms])
    a = criterion(df, nterms, "syrk", monkeypatch)
    b = criterion(df, nterms, "scatter", monkeypatch)
    for theta in (np.linspace(0.6, 1.3, nterms), np.linspace(0.05, 2.0, nterms)):
        va, ga = a.value_and_gradient(theta)
        vb, gb = b.value_and_gradient(theta)
        assert va == pytest.approx(vb, rel=1e-13)
        np.testing.assert_allclose(ga, gb, rtol=1e-8, atol=1e-8)
        h = 1e-6
        num = [(b(theta + h * e) - b(theta - h * e)) / (2 * h) for e in np.eye(nterms)]
        np.testing.assert_allclose(gb, num, rtol=2e-4, atol=2e-4)


def test_a_kept_factor_survives_later_evaluations(monkeypatch):
    df = crossed(1500, (120, 60))
    crit = criterion(df, 2, "scatter", monkeypatch)
    theta = np.array([0.8, 1.1])
    kept = crit.factor(theta, keep=True)
    L0 = kept.rest.L.copy()
    np.testing.assert_allclose(np.triu(L0, 1), 0.0)
    crit.value_and_gradient(np.array([0.3, 0.4]))  # reuses (and inverts) the work buffer
    np.testing.assert_array_equal(kept.rest.L, L0)
    W = kept.rest.factor_inverse()  # a kept factor is inverted on a copy
    np.testing.assert_array_equal(kept.rest.L, L0)
    np.testing.assert_allclose(W @ L0, np.eye(L0.shape[0]), atol=1e-10)
    x = kept.rest.solve(kept.rest.MRF)
    np.testing.assert_allclose(L0 @ (L0.T @ x), kept.rest.MRF, rtol=1e-10, atol=1e-10)


def test_a_repeated_point_is_not_evaluated_again(monkeypatch):
    df = crossed(1500, (120, 60))
    crit = criterion(df, 2, "scatter", monkeypatch)
    theta = np.array([0.8, 1.1])
    v1, g1 = crit.value_and_gradient(theta)
    calls = []
    monkeypatch.setattr(crit, "factor", lambda *a, **k: calls.append(a))
    v2, g2 = crit.value_and_gradient(theta.copy())
    assert not calls and v2 == v1
    np.testing.assert_array_equal(g1, g2)
    g2[0] += 1.0  # the caller's copy
    np.testing.assert_array_equal(crit.value_and_gradient(theta)[1], g1)


def bare_block(rng, n1: int, Q: int, per_row: int) -> schur.RestBlock:
    """A rest block holding only its cost inputs: A_1R with ``per_row``
    random columns per row of the first term (a thin crossing to a table)."""
    import scipy.sparse as sp

    rows = np.repeat(np.arange(n1), per_row)
    cols = rng.integers(0, Q, rows.size)
    A1R = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n1, Q))
    A1R.sum_duplicates()
    rb = schur.RestBlock.__new__(schur.RestBlock)
    rb.A1R, rb.Q, rb._syrk_A = A1R, Q, None
    return rb


def test_syrk_is_chosen_for_dense_pair_maps_only():
    """Many pairs per level of the first term (a users x items table) make the
    rank-n₁ update cheaper; a thin random crossing keeps the pair map."""
    rng = np.random.default_rng(2)

    def block(n1: int, Q: int, per_row: int) -> schur.RestBlock:
        return bare_block(rng, n1, Q, per_row)

    assert block(1600, 900, 80)._syrk_pays()
    assert not block(3000, 3000, 6)._syrk_pays()


def force_staging(monkeypatch) -> None:
    """Stages whenever they shrink the dense block (small blocks do not pay
    for them at the measured costs)."""
    monkeypatch.setattr(schur, "STAGED_MIN", 0)
    monkeypatch.setattr(staged, "STAGE_NS", 0.0)
    monkeypatch.setattr(staged, "GRAM_NS", 0.0)


def staged_and_dense(df: pd.DataFrame, nterms: int, monkeypatch):
    """The same model with the rest block's independent sets eliminated first
    and without."""
    monkeypatch.setattr(schur.RestBlock, "_syrk_pays", lambda self: False)
    monkeypatch.setattr(schur, "STAGED_MIN", 10**9)
    dense = ml.lmer(FORMULAS[nterms], df)
    force_staging(monkeypatch)
    staged = ml.lmer(FORMULAS[nterms], df)
    assert dense.criterion.scaled._rest.staged is None
    assert staged.criterion.scaled._rest.staged is not None
    return dense, staged


@pytest.mark.parametrize("nterms", [2, 3])
def test_staged_elimination_gives_the_dense_answer(nterms, monkeypatch):
    # thin: levels with few observations have few neighbours
    df = crossed(1500, {2: (400, 300), 3: (500, 300, 200)}[nterms])
    dense, staged = staged_and_dense(df, nterms, monkeypatch)
    a, b = dense.criterion.scaled, staged.criterion.scaled
    for theta in (np.linspace(0.6, 1.3, nterms), np.linspace(0.05, 2.0, nterms)):
        va, ga = a.value_and_gradient(theta)
        vb, gb = b.value_and_gradient(theta)
        assert vb == pytest.approx(va, rel=1e-13)
        np.testing.assert_allclose(gb, ga, rtol=1e-8, atol=1e-8)
    assert staged.loglik == pytest.approx(dense.loglik, rel=1e-12)
    np.testing.assert_allclose(staged.fixef, dense.fixef, rtol=1e-8)
    for g in dense.ranef:
        np.testing.assert_allclose(staged.ranef[g], dense.ranef[g], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(staged.ranef_condsd[g], dense.ranef_condsd[g], rtol=1e-6)


@pytest.mark.parametrize("nterms", [2, 3])
def test_staged_gradient_matches_differences(nterms, monkeypatch):
    """The exact gradient through the staged factor (M_RR⁻¹ on its pattern
    from L⁻¹'s column products) against central differences of the criterion."""
    df = crossed(1500, {2: (400, 300), 3: (500, 300, 200)}[nterms])
    monkeypatch.setattr(schur.RestBlock, "_syrk_pays", lambda self: False)
    force_staging(monkeypatch)
    crit = ml.lmer(FORMULAS[nterms], df).criterion.scaled
    assert crit._rest.staged is not None and crit._rest.staged.nS < crit._rest.Q
    for theta in (np.linspace(0.6, 1.3, nterms), np.linspace(0.05, 2.0, nterms)):
        value, grad = crit.value_and_gradient(theta)
        assert value == pytest.approx(crit(theta), rel=1e-13)
        h = 1e-6
        num = [(crit(theta + h * e) - crit(theta - h * e)) / (2 * h) for e in np.eye(nterms)]
        np.testing.assert_allclose(grad, num, rtol=2e-4, atol=2e-4)


def random_crossing_plan(monkeypatch, rng):
    """M_RR of a random crossing (400 x 300 levels, 2,500 rows), its sorted
    lower-triangle keys and their staged elimination."""
    import scipy.sparse as sp

    from multilevel.lmm.staged import StagedElimination

    n1, Q, N = 400, 300, 2500
    a, b = rng.integers(0, n1, N), rng.integers(0, Q, N)
    Z1 = sp.csr_matrix((np.ones(N), (np.arange(N), a)), shape=(N, n1))
    Z2 = sp.csr_matrix((np.ones(N), (np.arange(N), b)), shape=(N, Q))
    d1 = np.asarray(Z1.sum(0)).ravel()
    A12 = (Z1.T @ Z2).tocsr()
    M = (Z2.T @ Z2 - A12.T @ sp.diags(1 / (d1 + 1)) @ A12 + sp.identity(Q)).toarray()
    r, c = np.nonzero(np.tril(M))
    keys = np.sort(r * Q + c)
    force_staging(monkeypatch)
    plan = StagedElimination.plan(Q, keys)
    assert plan is not None and plan.nS < Q
    return M, keys, plan


def test_staged_factor_solves_and_inverts(monkeypatch):
    """Block elimination of independent sets against dense algebra, on a rest
    block of random crossing."""
    rng = np.random.default_rng(0)
    M, keys, plan = random_crossing_plan(monkeypatch, rng)
    Q = M.shape[0]
    vals = M[keys // Q, keys % Q]
    B = rng.normal(size=(Q, 3))
    f = plan.factor(vals, B, keep=True)
    assert f.logdet == pytest.approx(np.linalg.slogdet(M)[1], rel=1e-13)
    np.testing.assert_allclose(M @ f.solve(B), B, atol=1e-12)
    np.testing.assert_allclose(M @ f.solve(B[:, 0]), B[:, 0], atol=1e-12)
    np.testing.assert_allclose(f.quad, B.T @ np.linalg.solve(M, B), rtol=1e-12)
    Minv = np.linalg.inv(M)
    np.testing.assert_allclose(f.selected_inverse(), Minv[keys // Q, keys % Q], atol=1e-14)
    np.testing.assert_allclose(M @ f.solve(B), B, atol=1e-12)  # a kept factor still solves
    # the kept factor holds the packed triangle only, and no work buffer is left
    assert f.L is None and f._packed.shape == (plan.nS * (plan.nS + 1) // 2,)
    assert plan.buf is None
    # not positive definite: a pivot of a stage or of the dense block fails
    assert plan.factor(-vals, B, keep=False) is None
    work = plan.factor(2.0 * vals, B, keep=False)  # a new work buffer
    work.selected_inverse()  # inverted in place
    np.testing.assert_allclose(M @ f.solve(B), B, atol=1e-12)  # the kept one is untouched

    # without the compiled column products, the entries come from the full inverse
    monkeypatch.setattr(staged, "gram_available", lambda: False)
    f = plan.factor(vals, B, keep=False)
    np.testing.assert_allclose(f.selected_inverse(), Minv[keys // Q, keys % Q], atol=1e-14)


def test_a_kept_factor_at_the_last_point_is_its_inverse_packed(monkeypatch):
    """The estimates' factorization at the point the search evaluated last
    takes that evaluation's W = L⁻¹ (packed) instead of factoring again; it
    solves and gives M⁻¹'s entries as the factor would."""
    rng = np.random.default_rng(1)
    M, keys, plan = random_crossing_plan(monkeypatch, rng)
    Q = M.shape[0]
    vals = M[keys // Q, keys % Q]
    B = rng.normal(size=(Q, 2))
    Minv = np.linalg.inv(M)
    work = plan.factor(vals, B, keep=False)
    work.selected_inverse()  # the gradient: W in the work buffer
    kept = plan.factor(vals.copy(), B.copy(), keep=True)
    assert kept is work and kept.W is None and kept._packed_inverse and plan.buf is None
    np.testing.assert_allclose(kept.selected_inverse(), Minv[keys // Q, keys % Q], atol=1e-14)
    for cols in (1, 3, 20):  # packed products, and BLAS-3 on W unpacked
        R = rng.normal(size=(Q, cols))
        np.testing.assert_allclose(M @ kept.solve(R), R, atol=1e-11)
    np.testing.assert_allclose(M @ kept.solve(B[:, 0]), B[:, 0], atol=1e-11)
    # elsewhere, or without the inverse formed, a kept factor is factored anew
    other = plan.factor(2.0 * vals, B, keep=False)
    other.selected_inverse()
    assert plan.factor(vals, B, keep=True) is not other
    plain = plan.factor(vals, B, keep=False)
    assert plan.factor(vals, B, keep=True) is not plain
    # a work factor whose buffer a later factorization took no longer answers
    stale = plan.factor(vals, B, keep=False)
    stale.selected_inverse()
    plan.factor(2.0 * vals, B, keep=False)
    assert stale.W is None


@pytest.mark.parametrize("mode", ["syrk", "scatter"])
def test_scalar_terms_keep_no_dense_copies(mode, monkeypatch):
    """Memory: one Fortran-ordered buffer for M_RR, L and L⁻¹; no dense A_RR
    or H (each would be another Q x Q array)."""
    df = crossed(1500, (120, 60))
    crit = criterion(df, 2, mode, monkeypatch)
    rb = crit._rest
    f = crit.factor(np.array([0.8, 1.1]))
    assert np.shares_memory(f.rest.L, rb.buf) and rb.buf.flags.f_contiguous
    crit.value_and_gradient(np.array([0.7, 1.2]))
    assert "ARR" not in rb.__dict__ and "Hbuf" not in rb.__dict__


@pytest.mark.parametrize("stage", [False, True])
@pytest.mark.parametrize("nterms", [2, 3])
def test_conditional_variances_of_scalar_terms(nterms, stage, monkeypatch):
    """From one inversion, the same as by a solve per level (the general path)."""
    df = crossed(1500, {2: (400, 300), 3: (500, 300, 200)}[nterms])
    monkeypatch.setattr(schur.RestBlock, "_syrk_pays", lambda self: False)
    if stage:
        force_staging(monkeypatch)
    else:
        monkeypatch.setattr(schur, "STAGED_MIN", 10**9)
    fit = ml.lmer(FORMULAS[nterms], df)
    crit = fit.criterion.scaled
    assert (crit._rest.staged is not None) == stage
    f = crit.factor(fit.optinfo.internal_theta, keep=True)
    fast = crit.conditional_variances(f)
    slow = crit._conditional_variances_general(f)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_staged_elimination_of_a_diagonal_block():
    """No edges: everything but one node is eliminated; the dense block is 1 x 1."""
    from multilevel.lmm.staged import StagedElimination

    Q = 50
    keys = np.arange(Q, dtype=np.int64) * (Q + 1)
    plan = StagedElimination.plan(Q, keys)
    assert plan is not None and plan.nS == 1
    vals = np.linspace(1.0, 3.0, Q)
    B = np.ones((Q, 2))
    f = plan.factor(vals, B, keep=False)
    assert f.logdet == pytest.approx(np.log(vals).sum(), rel=1e-14)
    np.testing.assert_allclose(f.solve(B), B / vals[:, None], rtol=1e-14)
    np.testing.assert_allclose(f.selected_inverse(), 1.0 / vals, rtol=1e-14)


@pytest.mark.parametrize("product", [False, True])
@pytest.mark.parametrize("mode", ["syrk", "scatter"])
def test_gradient_traces_by_product_or_full_inverse(mode, product, monkeypatch):
    """‖L⁻¹C‖² or Σ (M_RR⁻¹)_ab H_ab: the same gradient, and the exact one."""
    monkeypatch.setattr(schur.RestBlock, "_product_pays", lambda self: product)
    monkeypatch.setattr(schur, "STAGED_MIN", 10**9)
    df = crossed(1500, (120, 60, 25))
    crit = criterion(df, 3, mode, monkeypatch)
    assert crit._rest.inverse_by_product == product
    theta = np.array([0.6, 1.3, 0.9])
    value, grad = crit.value_and_gradient(theta)
    h = 1e-6
    num = [(crit(theta + h * e) - crit(theta - h * e)) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(grad, num, rtol=2e-4, atol=2e-4)
    monkeypatch.setattr(schur.RestBlock, "_product_pays", lambda self: not product)
    other = criterion(df, 3, mode, monkeypatch)
    v2, g2 = other.value_and_gradient(theta)
    assert v2 == pytest.approx(value, rel=1e-13)
    np.testing.assert_allclose(g2, grad, rtol=1e-9, atol=1e-9)


def test_inverse_choice_follows_the_costs():
    rng = np.random.default_rng(4)

    def block(n1: int, Q: int, per_row: int) -> schur.RestBlock:
        return bare_block(rng, n1, Q, per_row)

    assert block(5000, 5000, 6)._product_pays()  # a thin random crossing
    assert not block(3000, 1100, 25)._product_pays()  # InstEval's shape
