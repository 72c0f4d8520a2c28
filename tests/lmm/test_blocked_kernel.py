"""The compiled criterion of several terms, some of more than one column,
with dense cross blocks (``_kernels.blocked_terms``: the first term per
level, the rest dense), against the blockwise numpy criterion: the same
value, exact gradient, kept factorization and estimates."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
import multilevel.lmm.criterion as crit_mod
from multilevel.compiled import kernel
from multilevel.lmm.blocked import envelope_work, level_pattern, rest_order

pytestmark = pytest.mark.skipif(
    kernel("_kernels", "blocked_terms") is None, reason="the compiled kernel was not built"
)


def _frame(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 240
    g, h = rng.integers(0, 12, n), rng.integers(0, 5, n)
    side = rng.integers(0, 2, n)
    x, w = rng.normal(size=n), rng.normal(size=n)
    b = rng.normal(size=(12, 2)) * [1.0, 0.4]
    y = (2 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(0, 0.6, 5)[h]
         + rng.normal(0, 0.5, 24)[g * 2 + side] + 0.3 * w + rng.normal(size=n))  # fmt: skip
    cols = {"g": g, "h": h, "side": side}
    return pd.DataFrame({"y": y, "x": x, "w": w, **{k: v.astype(str) for k, v in cols.items()}})


CASES = [
    # a vector term first (most levels), a scalar one after: crossed
    ("y ~ x + w + (x | g) + (1 | h)", True),
    ("y ~ x + w + (x | g) + (1 | h)", False),
    # a scalar term first, a vector one after: nested (Pixel's shape)
    ("y ~ x + (x | h) + (1 | g:side)", True),
    # two vector terms and a scalar one
    ("y ~ x + (x | g) + (x | h) + (1 | side)", True),
    # nested vector terms, the first with many levels (nlme's Wafer's shape)
    ("y ~ x + (x | h/g)", True),
    ("y ~ x + w + (x + w | g) + (1 | h)", False),
]


def _fit(formula, reml):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ml.lmer(formula, _frame(), REML=reml)


@pytest.mark.parametrize("formula,reml", CASES)
def test_blocked_kernel_equals_numpy(formula, reml, monkeypatch):
    fit = _fit(formula, reml)
    cr = fit.criterion.scaled
    assert cr._kernel is not None and cr._kernel[0] is kernel("_kernels", "blocked_terms")
    monkeypatch.setattr(crit_mod, "_KERNEL_DISABLED", True)
    numpy_crit = crit_mod.ProfiledCriterion(cr.cp, cr.tmpl, cr.reml, cr.sum_log_w)
    assert numpy_crit._kernel is None
    opt = fit.optinfo.internal_theta
    rng = np.random.default_rng(0)
    for theta in (opt, 1.3 * opt + 0.1, rng.uniform(-0.5, 1.5, opt.size)):
        diag = np.concatenate([t.rows == t.cols for t in cr.tmpl])
        theta = np.where(diag, np.abs(theta), theta)
        v0, g0 = numpy_crit.value_and_gradient(theta)
        v1, g1 = cr.value_and_gradient(theta)
        assert v1 == pytest.approx(v0, rel=1e-12, abs=1e-9)
        np.testing.assert_allclose(g1, g0, rtol=1e-8, atol=1e-9 * cr.n)


@pytest.mark.parametrize("formula,reml", CASES)
def test_blocked_kept_factor_equals_the_general_one(formula, reml):
    """The compiled kept factorization against the general path's: blocks,
    solution, conditional variances; and a fit holding it pickles before Λ_R
    was ever formed."""
    fit = _fit(formula, reml)
    cr = fit.criterion.scaled
    theta = 1.1 * fit.optinfo.internal_theta + 0.05
    kept = cr.factor(theta, keep=True)
    general = cr.factor(theta, keep=False)
    assert kept.solution is not None and general.solution is None
    for a, b in ((kept.L1, general.L1), (kept.W, general.W), (kept.C1F, general.C1F)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(np.tril(kept.LFF), np.tril(general.LFF), rtol=1e-10, atol=1e-11)
    for name in ("logdet_Z", "logdet_X", "log_r2"):
        assert getattr(kept, name) == pytest.approx(getattr(general, name), rel=1e-11, abs=1e-11)
    a, b = kept.rest, general.rest
    np.testing.assert_allclose(a.MRF, b.MRF, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(a.schur_FF, b.schur_FF, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(np.tril(a.L), np.tril(b.L), rtol=1e-10, atol=1e-11)
    assert a.logdet == pytest.approx(b.logdet, rel=1e-11, abs=1e-11)
    (b1, us1), (b2, us2) = cr.solve(kept), cr.solve(general)
    np.testing.assert_allclose(b1, b2, rtol=1e-10, atol=1e-11)
    for u, v in zip(us1, us2, strict=True):
        assert u.shape == v.shape
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-11)
    pickle.loads(pickle.dumps(fit))  # the kept factor's Λ_R is still to be formed
    cv1, cv2 = cr.conditional_variances(kept), cr.conditional_variances(general)
    for x, y in zip(cv1, cv2, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-11)
    assert fit.optinfo.converged
    assert np.isfinite(fit.ranef_condsd[next(iter(fit.ranef_condsd))].to_numpy()).all()


def _nested_frame(n_schools: int, per_school: int, seed: int = 5) -> pd.DataFrame:
    """Growth data's shape: children nested in schools, three years each."""
    rng = np.random.default_rng(seed)
    child = np.repeat(np.arange(n_schools * per_school), 3)
    school = child // per_school
    year = np.tile([0.0, 1.0, 2.0], child.size // 3) + rng.normal(0, 0.1, child.size)
    bc = rng.normal(size=(child.max() + 1, 2)) * [1.0, 0.3]
    bs = rng.normal(size=(n_schools, 2)) * [0.7, 0.2]
    y = 1 + 0.5 * year + bc[child, 0] + bc[child, 1] * year + bs[school, 0]
    y = y + bs[school, 1] * year + rng.normal(0, 0.5, child.size)
    return pd.DataFrame({"y": y, "year": year, "child": child.astype(str),
                         "school": school.astype(str)})  # fmt: skip


def test_level_pattern_is_the_same_from_dense_and_sparse_blocks():
    """Each first-term level's rest columns (whole rest levels) and values,
    read from the dense cross block and from its CSR form."""
    import dataclasses

    from multilevel.linalg.crossprod import dense_to_csr

    fit = _fit("y ~ x + w + (x | g) + (x | h) + (1 | side)", True)
    cp = fit.criterion.scaled.cp
    assert cp.dense is not None
    sparse = dataclasses.replace(
        cp, _A1R=dense_to_csr(cp.dense[0]), _ARR=dense_to_csr(cp.dense[1]), dense=None
    )
    (p1, i1, x1), (p2, i2, x2) = level_pattern(cp), level_pattern(sparse)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(x1, x2)
    # every level of g meets every level of h and of side here: all rest columns
    assert (np.diff(p1) == cp.Qr).all()
    A = cp.dense[0].reshape(cp.nlevels[0], cp.q[0], cp.Qr)
    lev = 3
    nz = int(p1[lev + 1] - p1[lev])
    block = x1[p1[lev] * cp.q[0] : p1[lev + 1] * cp.q[0]].reshape(cp.q[0], nz)
    np.testing.assert_array_equal(block, A[lev][:, i1[p1[lev] : p1[lev + 1]]])


def test_nested_vector_terms_with_sparse_cross_blocks_equal_numpy(monkeypatch):
    """Children in schools, (year | child) + (year | school), large enough
    that the cross blocks are kept sparse: each child meets one school, the
    kernel reads two rest columns per child; value and gradient as numpy's."""
    df = _nested_frame(n_schools=60, per_school=90)
    fit = ml.lmer("y ~ year + (year | child) + (year | school)", df, REML=False)
    cr = fit.criterion.scaled
    assert cr.cp.dense is None
    assert cr._kernel is not None and cr._kernel[0] is kernel("_kernels", "blocked_terms")
    Ap = cr._kernel[1][2]
    assert (np.diff(Ap) == 2).all()
    monkeypatch.setattr(crit_mod, "_KERNEL_DISABLED", True)
    numpy_crit = crit_mod.ProfiledCriterion(cr.cp, cr.tmpl, cr.reml, cr.sum_log_w)
    opt = fit.optinfo.internal_theta
    for theta in (opt, 1.2 * opt + 0.05):
        v0, g0 = numpy_crit.value_and_gradient(theta)
        v1, g1 = cr.value_and_gradient(theta)
        assert v1 == pytest.approx(v0, rel=1e-12)
        np.testing.assert_allclose(g1, g0, rtol=1e-7, atol=1e-8 * cr.n)
    assert fit.optinfo.converged
    assert np.abs(fit.optinfo.gradient).max() < 1e-4


def test_envelope_work_follows_the_rest_blocks_structure():
    """Nested rest levels (each first-term level meeting one rest level of
    q columns) leave a block-diagonal Schur complement: work O(Q_R q²); a
    level meeting all rest columns fills it: about Q_R³/2."""
    Qr, q = 200, 2
    ARR = np.kron(np.eye(Qr // q), np.ones((q, q)))
    Ap = np.arange(0, Qr + 1, q, dtype=np.int64)
    Ai = np.arange(Qr, dtype=np.int64)
    pos = np.arange(Qr, dtype=np.int64)
    assert envelope_work(ARR, Ap, Ai, pos) <= 2.0 * Qr * q * q
    assert envelope_work(ARR, np.array([0, Qr], dtype=np.int64), Ai, pos) >= 0.4 * Qr**3


def test_reverse_cuthill_mckee_narrows_a_chain_of_levels(monkeypatch):
    """Rest levels coupled in a chain (first-term level j meets rest levels
    j and j + 1), numbered at random: the natural order's envelope is wide,
    the ordering found makes it a band of two levels; the kernel's value and
    gradient with it equal numpy's."""
    import multilevel.lmm.blocked as blocked

    monkeypatch.setattr(blocked, "REORDER_WORK", 0.0)  # a small model, for speed
    rng = np.random.default_rng(11)
    n_rest, per = 60, 4
    label = rng.permutation(n_rest)
    rows = []
    for j in range(n_rest - 1):
        for _ in range(per):
            for k in (j, j + 1):
                rows.append((j, label[k], rng.normal()))
    g, h, x = (np.array(v) for v in zip(*rows, strict=True))
    bh = rng.normal(size=(n_rest, 2)) * [1.0, 0.4]
    y = 1 + x + rng.normal(size=n_rest)[g] + bh[h, 0] + bh[h, 1] * x + rng.normal(size=g.size)
    df = pd.DataFrame({"y": y, "x": x, "g": g.astype(str), "h": h.astype(str)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ml.lmer("y ~ x + (1 | g) + (x | h)", df)
    cr = fit.criterion.scaled
    assert cr._kernel is not None and cr._kernel[0] is kernel("_kernels", "blocked_terms")
    cp = cr.cp
    Ap, Ai, _ = level_pattern(cp)
    ARR = cp.ARR_dense()
    natural = envelope_work(ARR, Ap, Ai, np.arange(cp.Qr))
    pos, work = rest_order(cp, ARR, Ap, Ai, lapack=False)
    assert work < natural / 5
    assert sorted(pos) == list(range(cp.Qr))
    np.testing.assert_array_equal(cr._kernel[1][7], pos)
    numpy_crit = crit_mod.ProfiledCriterion(cp, cr.tmpl, cr.reml, cr.sum_log_w)
    numpy_crit._kernel = None
    for theta in (fit.optinfo.internal_theta, np.array([0.8, 1.1, 0.2, 0.5])):
        v0, g0 = numpy_crit.value_and_gradient(theta)
        v1, g1 = cr.value_and_gradient(theta)
        assert v1 == pytest.approx(v0, rel=1e-12)
        np.testing.assert_allclose(g1, g0, rtol=1e-8, atol=1e-8 * cr.n)


def test_a_large_rest_block_stays_with_numpy(monkeypatch):
    """The kernel's rest buffers are dense Q_R x Q_R: beyond its limit of rest
    columns the model takes the numpy path (a small limit here, for speed)."""
    monkeypatch.setattr(crit_mod, "BLOCKED_MAX_REST", 4)
    fit = _fit("y ~ x + w + (x | g) + (1 | h)", True)  # h: 5 rest columns
    assert fit.criterion.scaled._kernel is None
    assert fit.optinfo.converged
