"""The θ search's convergence judgement: optimiser status, gradient and the
Hessian at the optimum."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import multilevel as ml
from multilevel.errors import ConvergenceWarning
from multilevel.optimize.hessian import clearly_positive_definite
from multilevel.optimize.theta import minimize_theta


def _saddle(x: np.ndarray) -> tuple[float, np.ndarray]:
    # stationary at (0.5, 2): a minimum in x0, a maximum in x1
    a, b = x[0] - 0.5, x[1] - 2.0
    return a * a - b * b + b**4, np.array([2 * a, -2 * b + 4 * b**3])


def test_a_saddle_point_is_not_reported_as_converged():
    lower = np.array([0.0, -np.inf])
    rec = minimize_theta(
        lambda x: _saddle(x)[0], np.array([0.5, 2.0]), lower, value_and_gradient=_saddle
    )
    assert not rec.converged
    assert any("Hessian" in m and "saddle" in m for m in rec.messages)


def test_a_proper_minimum_is_converged():
    def fg(x):
        a, b = x[0] - 0.5, x[1] - 2.0
        return a * a + 3 * b * b, np.array([2 * a, 6 * b])

    rec = minimize_theta(
        lambda x: fg(x)[0], np.array([1.0, 0.0]), np.array([0.0, -np.inf]), value_and_gradient=fg
    )
    assert rec.converged, rec.messages
    np.testing.assert_allclose(rec.theta, [0.5, 2.0], atol=1e-6)


@pytest.mark.parametrize("with_gradient", [True, False])
def test_a_flat_direction_is_not_converged(with_gradient):
    # depends on x0² + x1² only: a circle of optima, nothing identifies the split
    def fg(x):
        r = x @ x - 2.0
        return r * r, 4 * r * x

    rec = minimize_theta(
        lambda x: fg(x)[0],
        np.array([0.3, 1.2]),
        np.zeros(2),
        value_and_gradient=fg if with_gradient else None,
    )
    assert not rec.converged
    assert any("not identified" in m for m in rec.messages)


def test_duplicated_random_term_is_flagged_as_not_identified():
    s = ml.datasets.load("sleepstudy")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        m = ml.lmer("Reaction ~ Days + (1|Subject) + (1|Subject)", s)
    assert not m.converged
    assert any(issubclass(w.category, ConvergenceWarning) for w in seen)
    # the total variance is still pinned down: as (1|Subject) alone
    one = ml.lmer("Reaction ~ Days + (1|Subject)", s)
    assert m.loglik == pytest.approx(one.loglik, abs=1e-6)


def test_clearly_positive_definite():
    assert clearly_positive_definite(np.diag([1.0, 2.0]))
    assert not clearly_positive_definite(np.diag([1e-9, 2.0]), 1e-6)
    assert not clearly_positive_definite(np.diag([-1.0, 2.0]))
    assert not clearly_positive_definite(np.array([[np.nan]]))
    assert clearly_positive_definite(np.zeros((0, 0)))
    assert not clearly_positive_definite(None)


def _even(x: np.ndarray) -> tuple[float, np.ndarray]:
    # even in x (as the criterion is in a diagonal θ): stationary at 0, where
    # it is a maximum; minima at ±1
    return (x[0] ** 2 - 1.0) ** 2, np.array([4.0 * x[0] * (x[0] ** 2 - 1.0)])


@pytest.mark.parametrize("with_gradient", [True, False])
def test_a_start_on_the_bound_does_not_stay_at_its_symmetric_stationary_point(with_gradient):
    rec = minimize_theta(
        lambda x: _even(x)[0],
        np.array([0.0]),
        np.array([0.0]),
        value_and_gradient=_even if with_gradient else None,
    )
    assert rec.converged
    assert rec.theta[0] == pytest.approx(1.0, abs=1e-5)


def test_a_zero_start_reaches_the_optimum():
    s = ml.datasets.load("sleepstudy")
    ref = ml.lmer("Reaction ~ Days + (1 | Subject)", s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no singular-fit or convergence warning
        m = ml.lmer("Reaction ~ Days + (1 | Subject)", s, start=[0.0])
    assert m.converged
    assert m.optinfo.criterion == pytest.approx(ref.optinfo.criterion, abs=1e-8)


def _rosenbrock_bounded(x):
    """A curved valley with its minimum at (1, 1); bounded below at 0 in x₀."""
    a, b = x
    f = (1 - a) ** 2 + 10 * (b - a * a) ** 2
    g = np.array([-2 * (1 - a) - 40 * a * (b - a * a), 20 * (b - a * a)])
    return f, g


@pytest.mark.parametrize(
    "case",
    [
        ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
        ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
        ("sleepstudy", "Reaction ~ Days + (Days || Subject)"),
        "valley",
        "bound",
    ],
)
def test_compiled_bfgs_search_takes_the_python_searchs_steps(case, monkeypatch):
    """The compiled search and its Python fallback evaluate the
    same points in the same order (the same arithmetic, to rounding)."""
    import multilevel.optimize.theta as th
    from multilevel.compiled import kernel

    if kernel("_optim", "bfgs_search") is None:
        pytest.skip("the compiled kernel of the search was not built")

    def run(disabled):
        monkeypatch.setattr(th, "SEARCH_DISABLED", disabled)
        if case == "valley":
            rec = minimize_theta(
                lambda x: _rosenbrock_bounded(x)[0],
                np.array([-1.0, 2.0]),
                np.array([-np.inf, -np.inf]),
                value_and_gradient=_rosenbrock_bounded,
            )
            return np.array(rec._thetas), np.array(rec._values), rec
        if case == "bound":  # the optimum sits on the bound x₀ = 0.5

            def fg(x):
                return (x[0] + 1) ** 2 + (x[1] - 2) ** 2, np.array([2 * (x[0] + 1), 2 * (x[1] - 2)])

            rec = minimize_theta(
                lambda x: fg(x)[0], np.array([3.0, 0.0]), np.array([0.5, -np.inf]),
                value_and_gradient=fg, check_hessian=False,
            )  # fmt: skip
            return np.array(rec._thetas), np.array(rec._values), rec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = ml.lmer(case[1], ml.datasets.load(case[0]))
        return np.array(fit.optinfo._thetas), np.array(fit.optinfo._values), fit.optinfo

    xc, vc, rc = run(False)
    xp, vp, rp = run(True)
    assert xc.shape == xp.shape
    np.testing.assert_allclose(xc, xp, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(vc, vp, rtol=1e-9, atol=1e-10)
    assert rc.converged and rp.converged
    if case == "valley":
        np.testing.assert_allclose(rc.theta, [1.0, 1.0], atol=1e-6)
    if case == "bound":
        np.testing.assert_allclose(rc.theta, [0.5, 2.0], atol=1e-8)
