"""PIRLS and the blocked factor (multilevel.glmm.pirls) against dense oracles.

The library never forms Z densely; here, on small problems, the dense
n x Q matrix ZΛ is the oracle: the conditional mode must solve the score
equations, the blocked log-determinant and conditional variances must equal
those of the dense ΛᵀZᵀWZΛ + I, for a vector-valued term (contra, intercept +
urban slope) and for three crossed/nested terms (grouse: INDEX, BROOD,
LOCATION).
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pandas as pd
import pytest

from multilevel import ConvergenceWarning, glmer
from multilevel.glmm.fit import single_threaded_blas
from multilevel.glmm.pirls import conditional_variances

from ..conftest import reference, reference_data

# grouse's 181 x 181 dense block: slow with a threaded BLAS on a busy machine
# unless threadpoolctl can limit it (see multilevel.glmm.fit.single_threaded_blas)
_SLOW_BLAS = [] if importlib.util.find_spec("threadpoolctl") else [pytest.mark.slow]

MODELS = {
    "contra": ("contra_laplace", "use ~ age + urban + (urban | district)", "binomial"),
    "grouse": (
        "grouse_poisson",
        "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
        "poisson",
    ),
    # a vector-valued first term with a crossed second one (age bands)
    "vector_crossed": (
        "contra_laplace",
        "use ~ age + urban + (urban | district) + (1 | band)",
        "binomial",
    ),
    # a vector-valued term after the first (Λ of the rest is not diagonal)
    "vector_rest": (
        "contra_laplace",
        "use ~ age + urban + (1 | district) + (urban | band)",
        "binomial",
    ),
}
_fits: dict = {}


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with single_threaded_blas():  # the dense oracles are small
        yield


def fit_of(name: str):
    if name not in _fits:
        case, formula, family = MODELS[name]
        data = reference_data(reference(case))
        if name.startswith("vector"):
            data = data.assign(band=(data["age"] // 4).astype(int).astype(str))
        _fits[name] = glmer(formula, data, family)
    return _fits[name]


def dense_design(prob, theta):
    """ZΛ as a dense (n, Q) matrix in the fitting order (test oracle only)."""
    rb = prob.rb
    T = prob.templates(theta)
    blocks = []
    for Z, codes, nl, Tk in zip(rb.Zs, rb.codes, rb.nlevels, T, strict=True):
        q = Z.shape[1]
        ZT = Z @ Tk  # row i: zᵢᵀT_k, placed in the columns of its level
        M = np.zeros((prob.n, nl * q))
        for a in range(q):
            M[np.arange(prob.n), codes * q + a] = ZT[:, a]
        blocks.append(M)
    return np.hstack(blocks)


@pytest.mark.filterwarnings("ignore::multilevel.SingularFitWarning")
@pytest.mark.parametrize(
    "name", ["contra", pytest.param("grouse", marks=_SLOW_BLAS), "vector_crossed", "vector_rest"]
)
@pytest.mark.parametrize("joint", [False, True])
def test_mode_solves_the_score_equations(name, joint):
    fit = fit_of(name)
    prob = fit._prob
    theta = fit._theta * 1.3  # away from the optimum: nothing special about it
    beta = fit._mode.beta + 0.05
    m = prob.mode(theta, beta, joint=joint)
    ZL = dense_design(prob, theta)
    fam, r = prob.family, prob.resp
    mu = fam.linkinv(m.eta)
    score_eta = r.weights * (r.y - mu) * fam.mu_eta(m.eta) / fam.variance(mu)
    np.testing.assert_allclose(ZL.T @ score_eta - m.u, 0.0, atol=1e-8)
    if joint:
        np.testing.assert_allclose(prob.X.T @ score_eta, 0.0, atol=1e-7)
    else:
        np.testing.assert_array_equal(m.beta, beta)
    # −2 loglik + ‖u‖² at the mode, and the Laplace value with the dense determinant
    assert m.pdev == pytest.approx(-2 * prob.loglik_eta(m.eta) + m.u @ m.u, rel=1e-14)
    A = ZL.T @ (m.weights[:, None] * ZL) + np.eye(ZL.shape[1])
    sign, logdet = np.linalg.slogdet(A)
    assert sign > 0
    assert m.factor.logdet == pytest.approx(logdet, abs=1e-9)
    # conditional covariances of b = Λu: diagonal blocks of Λ A⁻¹ Λᵀ
    Ainv = np.linalg.inv(A)
    T = prob.templates(theta)
    start = 0
    for Tk, V, nl in zip(T, conditional_variances(prob.rb, m.factor), prob.rb.nlevels, strict=True):
        q = Tk.shape[0]
        for lev in (0, nl // 2, nl - 1):  # a few levels of each term
            s = slice(start + lev * q, start + (lev + 1) * q)
            np.testing.assert_allclose(V[lev], Tk @ Ainv[s, s] @ Tk.T, atol=1e-10)
        start += nl * q


@pytest.mark.parametrize("name", [pytest.param("grouse", marks=_SLOW_BLAS)])
@pytest.mark.parametrize("small_dense", [250_000, 0])  # A₀ᵣ dense, and sparse
def test_weighted_crossproducts_match_dense(name, small_dense, monkeypatch):
    monkeypatch.setattr("multilevel.glmm.pirls.SMALL_DENSE", small_dense)
    fit = fit_of(name)
    prob = fit._prob
    rb = prob.rb
    w = np.random.default_rng(3).uniform(0.5, 2.0, prob.n)
    F = np.column_stack([prob.X, np.random.default_rng(4).normal(size=prob.n)])
    B = rb.crossprods(w, F)
    Z = dense_design(prob, np.ones(3))  # Λ = I: the raw Z
    Z0, ZR = Z[:, : rb.Q0], Z[:, rb.Q0 :]
    np.testing.assert_allclose(B.D0[0, 0], np.diag(Z0.T @ (w[:, None] * Z0)))
    A0R = B.A0R if small_dense else B.A0R.toarray()
    assert isinstance(B.A0R, np.ndarray) == bool(small_dense)
    np.testing.assert_allclose(A0R, Z0.T @ (w[:, None] * ZR), atol=1e-12)
    np.testing.assert_allclose(B.ARR, ZR.T @ (w[:, None] * ZR), atol=1e-12)
    np.testing.assert_allclose(B.ARF, ZR.T @ (w[:, None] * F), atol=1e-10)
    np.testing.assert_allclose(B.B0F[:, 0, :], Z0.T @ (w[:, None] * F), atol=1e-10)


def test_row_order_does_not_matter():
    ref = reference("contra_laplace")
    data = reference_data(ref)
    formula = "use ~ age + urban + (1 | district)"
    a = glmer(formula, data)
    shuffled = data.sample(frac=1.0, random_state=5)
    b = glmer(formula, shuffled)
    assert b.loglik == pytest.approx(a.loglik, abs=1e-7)
    np.testing.assert_allclose(b.fixef, a.fixef, atol=1e-6)
    # results come back in the order (and with the index) of the data given
    pd.testing.assert_index_equal(b.fitted.index, shuffled.index)
    np.testing.assert_allclose(b.fitted.loc[data.index], a.fitted, atol=1e-6)
    np.testing.assert_allclose(
        b.residuals("pearson").loc[data.index], a.residuals("pearson"), atol=1e-5
    )


def test_complete_separation_is_reported():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    d = pd.DataFrame({"y": (x > 0) * 1.0, "x": x, "g": np.repeat(np.arange(20), 10).astype(str)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = glmer("y ~ x + (1 | g)", d)
    assert not fit.converged
    assert any(
        issubclass(w.category, ConvergenceWarning) and "separation" in str(w.message)
        for w in caught
    )


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_newton_weights_are_the_observed_curvature(link):
    """Binomial probit and cloglog: PIRLS's weights are −ℓ'' (the one-pass
    row formulas equal the chain rule's), working residuals ℓ'/w."""
    from multilevel.glmm.families import Binomial, Family

    fam = Binomial(link)
    rng = np.random.default_rng(4)
    # where 1 − μ keeps its digits (the chain rule loses them in the tails)
    eta = np.concatenate([np.linspace(-4.0, 2.5, 57), rng.normal(size=40)])
    y = rng.integers(0, 4, size=eta.size) / 3.0
    wt = rng.integers(1, 5, size=eta.size).astype(float) * 3.0
    w, r = fam.pirls_weights(y, eta, wt)
    w0, r0 = Family.newton_weights(fam, y, eta, wt)
    np.testing.assert_allclose(w, w0, rtol=1e-9)
    np.testing.assert_allclose(r, r0, rtol=1e-8, atol=1e-12)
    assert fam.pirls_newton and not Binomial().pirls_newton
    # far in the tails: finite, positive weights and finite residuals
    tails = np.array([-40.0, -20.0, 8.0, 30.0])
    w, r = fam.pirls_weights(np.array([1.0, 0.0, 1.0, 0.0]), tails, np.ones(4))
    assert np.all(np.isfinite(r)) and np.all(w > 0)


@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_newton_steps_reach_the_scoring_mode(link, monkeypatch):
    """The mode and the Laplace deviance (its curvature Fisher's, lme4's) are
    those of scoring steps; Newton's steps take fewer iterations."""
    from multilevel.glmm.families import Binomial, Family

    ref = reference("contra_laplace")
    fit = glmer(
        "use ~ age + urban + (1 | district) + (1 | livch)",
        reference_data(ref),
        family=f"binomial({link})",
    )
    prob = fit._prob
    theta, beta = np.asarray(fit.optinfo.internal_theta), fit._mode.beta
    newton = prob.mode(theta * 1.3, beta * 0.9)
    monkeypatch.setattr(Binomial, "pirls_weights", Family.pirls_weights)
    monkeypatch.setattr(Binomial, "pirls_newton", False)
    scoring = prob.mode(theta * 1.3, beta * 0.9)
    np.testing.assert_allclose(newton.u, scoring.u, atol=1e-8)
    assert newton.laplace == pytest.approx(scoring.laplace, abs=1e-8)
    np.testing.assert_allclose(newton.weights, scoring.weights, rtol=1e-7)
    assert newton.iterations < scoring.iterations


@pytest.mark.parametrize(
    "formula",
    [
        "use ~ age + urban + (1 | district) + (1 | livch)",
        "use ~ age + urban + (urban | district) + (urban | livch)",
    ],
)
def test_dense_small_blocks_equal_the_sparse_path(formula, monkeypatch):
    """A small model's first-by-rest blocks are dense: the same mode, factor
    and conditional variances as the sparse path (scalar and vector rest)."""
    ref = reference("contra_laplace")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = glmer(formula, reference_data(ref), family="binomial")
    prob = fit._prob
    theta = np.asarray(fit.optinfo.internal_theta) * 1.1 + 0.05
    beta = fit._mode.beta * 0.95
    dense = prob.mode(theta, beta, joint=True)
    assert isinstance(dense.factor.C0R, np.ndarray)
    monkeypatch.setattr("multilevel.glmm.pirls.SMALL_DENSE", 0)
    sparse = prob.mode(theta, beta, joint=True)
    assert not isinstance(sparse.factor.C0R, np.ndarray)
    np.testing.assert_allclose(dense.u, sparse.u, atol=1e-10)
    np.testing.assert_allclose(dense.beta, sparse.beta, atol=1e-10)
    assert dense.laplace == pytest.approx(sparse.laplace, abs=1e-9)
    np.testing.assert_allclose(dense.factor.LFF, sparse.factor.LFF, rtol=1e-10)
    for a, b in zip(
        conditional_variances(prob.rb, dense.factor),
        conditional_variances(prob.rb, sparse.factor),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_log_ndtr_pair_equals_two_log_ndtr():
    """log Φ(η) and log Φ(−η) from one log Φ of the smaller tail: equal to
    scipy's two calls to rounding, in both tails and at 0."""
    from scipy import special

    from multilevel.glmm.families.links import log_ndtr_pair

    x = np.concatenate([np.linspace(-40.0, 40.0, 801), [0.0, -0.0, 1e-300, -8.3, 38.5]])
    a, b = log_ndtr_pair(x)
    np.testing.assert_allclose(a, special.log_ndtr(x), rtol=1e-13, atol=4e-16)
    np.testing.assert_allclose(b, special.log_ndtr(-x), rtol=1e-13, atol=4e-16)
