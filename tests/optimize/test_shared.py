"""The shared optimisation pieces on functions whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from multilevel.optimize.bounds import BOUNDARY_TOL, snap_to_bounds
from multilevel.optimize.hessian import fd_hessian, fd_hessian_of, gradient_hessian
from multilevel.optimize.newton import newton_steps
from multilevel.optimize.record import Logged

A = np.array([[3.0, 1.0, 0.5], [1.0, 2.0, 0.2], [0.5, 0.2, 1.0]])
c = np.array([1.0, -2.0, 0.5])


def quad(x: np.ndarray) -> float:
    return float(0.5 * x @ A @ x - c @ x)


def grad(x: np.ndarray) -> np.ndarray:
    return A @ x - c


def test_hessians_of_a_quadratic_are_exact():
    x = np.array([0.3, -1.0, 2.0])
    H, g = fd_hessian(quad, x, 1e-2)
    np.testing.assert_allclose(H, A, atol=1e-8)
    np.testing.assert_allclose(g, grad(x), atol=1e-8)
    np.testing.assert_allclose(gradient_hessian(grad, x), A, atol=1e-10)
    np.testing.assert_allclose(gradient_hessian(grad, x, g0=grad(x)), A, atol=1e-10)
    idx = np.array([0, 2])
    np.testing.assert_allclose(fd_hessian_of(quad, x, idx, 1e-2), A[np.ix_(idx, idx)], atol=1e-8)


def test_newton_reaches_the_minimum_and_respects_bounds():
    x_star = np.linalg.solve(A, c)

    def derivatives(x, _f):
        return grad(x), lambda idx: A[np.ix_(idx, idx)]

    x0 = np.zeros(3)
    free = np.full(3, -np.inf)
    res = newton_steps(quad, x0, quad(x0), free, derivatives, maxit=5, tol=1e-14)
    assert res.done and res.status == "CONVERGED"
    np.testing.assert_allclose(res.x, x_star, atol=1e-12)
    # x₁ ≥ 0 binds (the unconstrained x₁* < 0): held there, the others optimal given it
    lower = np.array([-np.inf, 0.0, -np.inf])
    res = newton_steps(quad, x0, quad(x0), lower, derivatives, maxit=10, tol=1e-14)
    assert x_star[1] < 0 and res.x[1] == 0.0
    sub = np.linalg.solve(A[np.ix_([0, 2], [0, 2])], c[[0, 2]])
    np.testing.assert_allclose(res.x[[0, 2]], sub, atol=1e-10)


def test_newton_reports_an_indefinite_hessian():
    def derivatives(x, _f):
        return np.array([1.0, 1.0]), lambda idx: np.diag([1.0, -1.0])[np.ix_(idx, idx)]

    res = newton_steps(lambda x: 0.0, np.ones(2), 0.0, np.full(2, -np.inf), derivatives,
                       maxit=3, tol=1e-9)  # fmt: skip
    assert res.status == "HESSIAN_NOT_PD" and not res.done


def test_snap_puts_near_bound_parameters_on_it_only_if_no_worse():
    lower = np.array([0.0, -np.inf])
    x = np.array([BOUNDARY_TOL / 2, 1.0])
    xs, fs, moved = snap_to_bounds(lambda z: float(z @ z), x, float(x @ x), lower)
    assert xs[0] == 0.0 and moved.tolist() == [True, False] and fs < x @ x
    xs, _, moved = snap_to_bounds(lambda z: -float(z[0]), x, -x[0], lower)
    assert xs[0] == x[0] and not moved.any()


def test_logger_keeps_the_best_finite_point():
    f = Logged(lambda x: np.inf if x[0] < 0 else float(x[0] ** 2), to_natural=lambda x: 2 * x)
    assert f(np.array([-1.0])) == 1e300 and f.best_x is None
    f(np.array([2.0]))
    f(np.array([1.0]))
    assert f.best == 1.0 and f.best_x[0] == 1.0
    assert [t[0] for t in f.thetas] == [-2.0, 4.0, 2.0]
    rec = f.record("test", "CONVERGED", True, f.best_x, f.best, np.zeros(1), [])
    assert rec.evals == 3 and rec.log["criterion"].tolist() == pytest.approx([1e300, 4.0, 1.0])
