"""The moment starts (``lmm.start``) of one term and of several scalar terms:
close to the optimum where the levels are informative, inside the bounds,
and only a start."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel as ml
from multilevel.covariance import templates
from multilevel.lmm.start import FLOOR, moment_start, moment_start_scalar


def _fit(formula, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ml.lmer(formula, data)


def test_hsb_start_is_near_the_optimum_and_inside_the_bounds():
    m = _fit("mathach ~ meanses*cses + sector*cses + (cses | school)", ml.datasets.load("hsb"))
    cp = m.criterion.scaled.cp  # the scaled problem the search ran on
    x0 = moment_start(cp, templates([2])[0])
    opt = m.optinfo.internal_theta
    # 160 schools of ~45 students: the intercept's scale within 5%, all
    # diagonal entries positive (the slope's raised to the floor at most)
    assert x0[0] == pytest.approx(opt[0], rel=0.05)
    assert x0[0] > 0 and x0[2] >= np.sqrt(FLOOR) * 0.99
    assert abs(x0[1] - opt[1]) < 0.01


def test_no_start_without_usable_levels():
    # as with one row per level: no level's ZᵢᵀZᵢ is invertible
    d = ml.datasets.load("sleepstudy")
    m = _fit("Reaction ~ Days + (Days | Subject)", d)
    cp = m.criterion.scaled.cp
    cp1 = type(cp)(cp.q, cp.nlevels, cp.D1 * 0.0, cp.B1F, None, None, None, cp.AFF, cp.n, cp.p)
    assert moment_start(cp1, templates([2])[0]) is None


@pytest.mark.parametrize(
    "formula",
    ["Reaction ~ Days + (Days | Subject)", "Reaction ~ Days + (1 | Subject)"],
)
def test_a_start_changes_no_optimum(formula):
    d = ml.datasets.load("sleepstudy")
    a = _fit(formula, d)
    b = ml.lmer(formula, d, start=np.ones(len(a.optinfo.theta)) * 0.5)
    assert a.converged and b.converged
    assert a.optinfo.criterion == pytest.approx(b.optinfo.criterion, abs=1e-8)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_small_closed_forms_equal_lapack(q):
    from multilevel.lmm.start import _inverse, _smallest_eigenvalue

    rng = np.random.default_rng(q)
    A = rng.normal(size=(40, q, q))
    D = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(q)
    np.testing.assert_allclose(_inverse(D), np.linalg.inv(D), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_smallest_eigenvalue(D), np.linalg.eigvalsh(D)[:, 0], atol=1e-12)


def test_crossed_scalar_start_is_near_the_optimum():
    """Randomly crossed intercepts with a nested third term: every θ_k within
    20% of the optimum (the crossed ones within 10%), all inside the bounds."""
    rng = np.random.default_rng(5)
    n, na, nb = 6000, 300, 120
    a, b = rng.integers(0, na, n), rng.integers(0, nb, n)
    c = b // 10  # 12 departments of lecturers
    y = (rng.normal(0, 0.4, na)[a] + rng.normal(0, 0.6, nb)[b] + rng.normal(0, 0.3, 12)[c]
         + rng.normal(size=n))  # fmt: skip
    d = {"y": y, "a": a.astype(str), "b": b.astype(str), "c": c.astype(str)}
    import pandas as pd

    m = _fit("y ~ 1 + (1 | a) + (1 | b) + (1 | c)", pd.DataFrame(d))
    x0 = moment_start_scalar(m.criterion.scaled.cp)
    opt = m.optinfo.internal_theta
    assert np.all(x0 >= np.sqrt(FLOOR))
    np.testing.assert_allclose(x0[:2], opt[:2], rtol=0.1)
    np.testing.assert_allclose(x0[2], opt[2], rtol=0.2)
    one = _fit("Reaction ~ Days + (Days | Subject)", ml.datasets.load("sleepstudy"))
    assert moment_start_scalar(one.criterion.scaled.cp) is None
    # three terms: the compiled equations equal numpy's
    import multilevel.lmm.start as start

    if start.kernel("_kernels", "scalar_moments") is not None:
        start.kernel, saved = (lambda *a: None), start.kernel
        try:
            slow = moment_start_scalar(m.criterion.scaled.cp)
        finally:
            start.kernel = saved
        np.testing.assert_allclose(x0, slow, rtol=1e-10)


@pytest.mark.parametrize(
    "data,formula",
    [
        ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
        ("pastes", "strength ~ 1 + (1 | batch/cask)"),
    ],
)
def test_balanced_scalar_start_is_the_reml_optimum(data, formula):
    """On balanced crossed (Penicillin) and nested (Pastes) data the moment
    equations are the ANOVA estimators, which equal REML's when positive: the
    start is the optimum, and the search only confirms it."""
    m = _fit(formula, ml.datasets.load(data))
    x0 = moment_start_scalar(m.criterion.scaled.cp)
    np.testing.assert_allclose(x0, m.optinfo.internal_theta, rtol=1e-6)
    assert m.optinfo.evals <= 8


@pytest.mark.parametrize(
    ("formula", "data"),
    [
        ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
        ("mathach ~ meanses*cses + sector*cses + (cses | school)", "hsb"),
        ("Reaction ~ Days + (1 | Subject)", "sleepstudy"),
    ],
)
def test_compiled_level_moments_equal_numpy(formula, data, monkeypatch):
    import multilevel.lmm.start as start

    cp = _fit(formula, ml.datasets.load(data)).criterion.scaled.cp
    z = np.append(-np.linalg.solve(cp.AFF[:-1, :-1], cp.AFF[:-1, -1]), 1.0)
    fast = start._level_moments(cp, z)
    if start.kernel("_kernels", "one_term_moments") is None:
        pytest.skip("the compiled kernel was not built")
    monkeypatch.setattr(start, "kernel", lambda *a: None)
    slow = start._level_moments(cp, z)
    assert fast[0] == slow[0] == cp.nlevels[0]
    for a, b in zip(fast[1:], slow[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)


@pytest.mark.parametrize(
    ("formula", "data"),
    [
        ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),
        ("strength ~ 1 + (1 | batch) + (1 | batch:cask)", "pastes"),
    ],
)
def test_compiled_scalar_moments_equal_numpy(formula, data, monkeypatch):
    import multilevel.lmm.start as start

    cp = _fit(formula, ml.datasets.load(data)).criterion.scaled.cp
    fast = moment_start_scalar(cp)
    if start.kernel("_kernels", "scalar_moments") is None:
        pytest.skip("the compiled kernel was not built")
    monkeypatch.setattr(start, "kernel", lambda *a: None)
    np.testing.assert_allclose(fast, moment_start_scalar(cp), rtol=1e-10)


@pytest.mark.parametrize("between", [0, 1, 2])
def test_balanced_one_way_starts_at_the_anova_estimate(between):
    """Balanced one-way data, with 0-2 covariates constant within the levels
    beside the intercept: the moment start keeps used − k degrees of freedom
    for the levels' residual means (an ANOVA's between-level mean square)
    and gives the within-level variance the k back, so it is the ANOVA
    estimate, which is REML's: the search starts at the optimum."""
    rng = np.random.default_rng(7 + between)
    L, n = 9, 4
    g = np.repeat(np.arange(L), n)
    cols = {f"x{j}": rng.normal(size=L)[g] for j in range(between)}
    y = 1.0 + sum(cols.values(), 0.0) + rng.normal(0, 1.5, L)[g] + rng.normal(size=L * n)
    data = pd.DataFrame({"y": y, "g": g.astype(str), **cols, "w": rng.normal(size=L * n)})
    rhs = " + ".join(["1", *cols])
    m = _fit(f"y ~ {rhs} + (1 | g)", data)
    x0 = moment_start(m.criterion.scaled.cp, templates([1])[0])
    assert x0[0] == pytest.approx(m.optinfo.internal_theta[0], rel=1e-7)
    assert len(m.optinfo._values) <= 3
    # a covariate that varies within the levels is no between-level column
    m2 = _fit(f"y ~ {rhs} + w + (1 | g)", data)
    x2 = moment_start(m2.criterion.scaled.cp, templates([1])[0])
    assert x2[0] == pytest.approx(m2.optinfo.internal_theta[0], rel=0.2)


def test_rail_starts_at_lme4s_optimum():
    """nlme's Rail (6 rails x 3 measurements): lme4's θ 6.16931776649064."""
    from ..conftest import TESTDATA

    rail = pd.read_csv(TESTDATA / "rail.csv")
    rail["Rail"] = pd.Categorical(rail["Rail"].astype(str))
    m = _fit("travel ~ 1 + (1 | Rail)", rail)
    assert m.optinfo._thetas[0][0] == pytest.approx(6.16931776649064, rel=1e-7)


def _machines_like(seed: int, balanced: bool) -> pd.DataFrame:
    """Workers x machines x replicates (nlme's Machines' shape): the machine,
    a fixed effect, is constant within each worker:machine level."""
    rng = np.random.default_rng(seed)
    w, mach, rep = np.meshgrid(np.arange(6), np.arange(3), np.arange(3), indexing="ij")
    w, mach = w.ravel(), mach.ravel()
    keep = np.ones(w.size, dtype=bool) if balanced else rng.random(w.size) > 0.2
    w, mach = w[keep], mach[keep]
    y = (50 + 3.0 * mach + rng.normal(0, 5, 6)[w] + rng.normal(0, 3, 18)[w * 3 + mach]
         + rng.normal(size=w.size))  # fmt: skip
    return pd.DataFrame({"y": y, "Worker": w.astype(str), "Machine": np.array(list("ABC"))[mach]})


@pytest.mark.parametrize("balanced", [True, False])
def test_scalar_terms_moments_take_xs_projection_out(balanced, monkeypatch):
    """Several scalar terms with X beyond an intercept: the moment equations
    take X's whole projection out (compiled, and numpy's the same), so
    balanced data start at the ANOVA estimates, REML's; unbalanced data
    start near the optimum."""
    import multilevel.lmm.start as start_mod

    data = _machines_like(3, balanced)
    m = _fit("y ~ Machine + (1 | Worker) + (1 | Worker:Machine)", data)
    cp = m.criterion.scaled.cp
    x0 = moment_start_scalar(cp)
    opt = m.optinfo.internal_theta
    if balanced:
        np.testing.assert_allclose(x0, opt, rtol=1e-7)
        assert len(m.optinfo._values) <= 3
    else:
        np.testing.assert_allclose(x0, opt, rtol=0.25)
    compiled = start_mod.kernel
    monkeypatch.setattr(
        start_mod,
        "kernel",
        lambda mod, name: None if name == "project_moments" else compiled(mod, name),
    )
    np.testing.assert_allclose(moment_start_scalar(cp), x0, rtol=1e-10)


def _egsingle() -> pd.DataFrame:
    """mlmRev's egsingle (children's mathematics scores over school years,
    children nested in schools), as exported for the benchmarks."""
    from pathlib import Path

    df = pd.read_csv(Path(__file__).parents[1] / "data" / "egsingle.csv")
    for c in ("childid", "schoolid"):
        df[c] = df[c].astype(str)
    return df


# lme4 1.1-31 on this machine, ML: deviance(lmer(math ~ year + (year | childid)
# + (year | schoolid), egsingle, REML = FALSE)) after 172 evaluations
EGSINGLE_LME4_DEVIANCE = 16326.2311168937


def test_several_terms_start_on_growth_data():
    """Nested vector terms (children in schools): every term's start from its
    own levels, inside the bounds and of the optimum's scale; the search from
    it reaches lme4's deviance or lower, and from the identity the same."""
    from multilevel.lmm.start import moment_start_terms

    df = _egsingle()
    formula = "math ~ year + (year | childid) + (year | schoolid)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = ml.lmer(formula, df, REML=False)
    cr = m.criterion.scaled
    x0 = moment_start_terms(cr.cp, cr.tmpl)
    opt = m.optinfo.internal_theta
    diag = np.concatenate([t.rows == t.cols for t in cr.tmpl])
    assert np.all(x0[diag] > 0)
    # each standard deviation's scale within a factor of two of the optimum's
    ratio = x0[diag] / opt[diag]
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    assert m.converged
    assert m.optinfo.criterion <= EGSINGLE_LME4_DEVIANCE + 1e-7
    b = ml.lmer(formula, df, REML=False, start=np.concatenate([t.initial() for t in cr.tmpl]))
    assert b.converged
    assert b.optinfo.criterion == pytest.approx(m.optinfo.criterion, abs=1e-7)
    # the start saves the identity's search for θ's scale
    assert m.optinfo.evals < b.optinfo.evals


def test_several_terms_start_from_sparse_diagonal_blocks():
    """Each rest term's diagonal blocks read from A_RR in CSR (a model too
    large for the dense blocks) equal those from the dense array."""
    import dataclasses

    from multilevel.linalg.crossprod import dense_to_csr
    from multilevel.lmm.start import moment_start_terms

    d = ml.datasets.load("sleepstudy").copy()
    d["half"] = (d["Days"] >= 5).astype(str)
    m = _fit("Reaction ~ Days + (Days | Subject) + (Days | half)", d)
    cp, tmpl = m.criterion.scaled.cp, m.criterion.scaled.tmpl
    assert cp.dense is not None
    sparse = dataclasses.replace(
        cp, _A1R=dense_to_csr(cp.dense[0]), _ARR=dense_to_csr(cp.dense[1]), dense=None
    )
    a, b = moment_start_terms(cp, tmpl), moment_start_terms(sparse, tmpl)
    assert a is not None
    np.testing.assert_allclose(a, b, rtol=1e-13)
