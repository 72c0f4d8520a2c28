"""Search over (θ, β) with the exact gradient of an approximated GLMM deviance.

Used by the groupwise path (:mod:`multilevel.glmm.exact.scalar`) and by the Laplace
gradient of several scalar terms (:mod:`multilevel.glmm.exact.laplace`).  The
search runs in x = (θ, δ), β = β₀ + R⁻¹δ with RᵀR = 2XᵀWX of the GLM without
random effects, so that δ is in units of the deviance's curvature: bounded
BFGS (θ ≥ 0; see :mod:`multilevel.optimize.theta`) from a forward-difference
Hessian of the gradient, or Newton steps from a nearby model's optimum and
Hessian; then the Hessian at the optimum (forward differences of the exact
gradient) and Newton steps with it.  A model is any object with
``deviance_grad(phi, grad) -> (deviance, gradient | None)`` in φ = (θ, β),
the conditional modes ``u`` it warm-starts from, and an ``evals`` counter.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg.lapack import dpotrf, dsyev

from multilevel.glmm.pirls import PirlsError, factor
from multilevel.linalg.affine import upper_inverse
from multilevel.optimize.bounds import snap_to_bounds
from multilevel.optimize.newton import newton_steps
from multilevel.optimize.record import OptRecord
from multilevel.optimize.theta import GRAD_TOL, minimize_theta


def whitening(prob, beta0: np.ndarray) -> np.ndarray:
    """R with RᵀR = 2XᵀWX at the GLM fit β₀ (the deviance's β-curvature without
    random effects): β = β₀ + R⁻¹δ puts δ on unit scales for the search."""
    A = 2.0 * prob.glm_information(beta0)
    # LAPACK directly: numpy.linalg's wrappers cost more than a p x p factorization
    R, info = dpotrf(A, lower=0, clean=1)
    if info != 0 or not np.all(np.isfinite(R)) or np.min(np.abs(np.diag(R)), initial=1.0) < 1e-8:
        R = np.eye(prob.p)
    return R


class Search:
    """The deviance of one model in x = (θ, δ), β = β₀ + R⁻¹δ, with the last
    few points remembered (BFGS, the Hessian's differences and the Newton
    steps ask for the optimum again after other points) and the modes each
    left."""

    REMEMBER = 8  # points, at least; a Hessian's differences and its centre always fit

    def __init__(
        self,
        model,
        beta0: np.ndarray,
        Rinv: np.ndarray,
        ntheta: int = 1,
        lower_theta: np.ndarray | None = None,
        in_x: bool = False,
    ):
        """``in_x``: the model evaluates in x = (θ, δ) itself (its design is
        whitened), so no map per evaluation."""
        self.model, self.beta0, self.Rinv = model, beta0, Rinv
        self.in_x = in_x
        # the model gives its exact Hessian (deviance_grad_hess): Newton steps
        self.exact = bool(getattr(model, "exact_hessian", False))
        self.nt = ntheta
        self.d = beta0.size + ntheta
        lt = np.zeros(ntheta) if lower_theta is None else np.asarray(lower_theta, float)
        self.lower = np.concatenate([lt, np.full(beta0.size, -np.inf)])
        self._seen: dict[bytes, tuple[float, np.ndarray, np.ndarray | None]] = {}
        self._remember = max(self.REMEMBER, self.d + 3)
        # φ = Ax + c, A = diag(I, R⁻¹), c = (0, β₀): one product per evaluation,
        # and the gradient in x is gA (θ's entries pass through exactly)
        self._A = np.eye(self.d)
        self._A[ntheta:, ntheta:] = Rinv
        self._c = np.concatenate([np.zeros(ntheta), beta0])

    def fg(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        key = x.tobytes()
        seen = self._recall(key, False)
        if seen is not None:
            return seen[:2]
        try:
            dev, g = self.model.deviance_grad(self._phi(x))
        except PirlsError:
            dev, g = math.inf, None
        return self._keep(key, dev, g, None)[:2]

    def fgh(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray | None]:
        """The deviance, its gradient and its exact Hessian in x (``exact``
        models; None where the deviance is not finite)."""
        key = x.tobytes()
        seen = self._recall(key, True)
        if seen is not None:
            return seen
        try:
            dev, g, H = self.model.deviance_grad_hess(self._phi(x))
        except PirlsError:
            dev, g, H = math.inf, None, None
        return self._keep(key, dev, g, H)

    def _phi(self, x: np.ndarray) -> np.ndarray:
        """The model's point φ = Ax + c (x itself where the model is whitened)."""
        return x if self.in_x else self._A @ x + self._c

    def _recall(self, key: bytes, need_hessian: bool):
        """A remembered point's (deviance, gradient, Hessian), its modes put
        back in the model; None if not remembered (or without its Hessian)."""
        seen = self._seen.get(key)
        if seen is None or (need_hessian and seen[3] is None):
            return None
        dev, gx, u, Hx = seen
        self.model.u = None if u is None else u.copy()
        return dev, gx, Hx

    def _keep(self, key: bytes, dev: float, g, H):
        """The point's values in x, remembered with the modes it left."""
        # a sum is finite only if every term is (an overflowing sum is refused
        # too); Python's sum of a few floats costs less than numpy's reduction
        if g is None or not math.isfinite(dev + sum(g.tolist())):
            dev, gx, Hx = math.inf, np.zeros(self.d), None
        else:
            gx = g if self.in_x else g @ self._A
            Hx = H if H is None or self.in_x else self._A.T @ H @ self._A
            if Hx is not None and not np.isfinite(Hx).all():
                Hx = None
        u = self.model.u
        if len(self._seen) >= self._remember:
            del self._seen[next(iter(self._seen))]  # the oldest
        self._seen[key] = (dev, gx, None if u is None else u.copy(), Hx)
        return dev, gx, Hx

    def fun(self, x: np.ndarray) -> float:
        return self.fg(x)[0]

    def hessian(self, x: np.ndarray, h: float = 1e-4) -> np.ndarray:
        """Forward differences of the exact gradient, symmetrised (relative
        error about h, far below what standard errors need); the exact one
        where the model gives it."""
        if self.exact:
            H = self.fgh(x)[2]
            if H is not None:
                return H
        g0 = self.fg(x)[1]
        H = np.empty((self.d, self.d))
        for a in range(self.d):  # coordinates, not rows
            e = x.copy()
            e[a] += h
            H[a] = (self.fg(e)[1] - g0) / h
        self.fg(x)
        return 0.5 * (H + H.T)

    def _newton(self, x, f, g, H, maxit: int, tol: float, log: tuple[list, list]):
        """Projected Newton steps with a fixed H (the exact Hessian, or a nearby
        model's as a chord method) until the decrement ½gᵀH⁻¹g is below tol;
        a step that raises the deviance is halved (three times at most)."""

        def fun(z: np.ndarray) -> float:
            fz = self.fg(z)[0]
            log[0].append(z)
            log[1].append(fz)
            return fz

        start = [g]  # the gradient at x is known; later ones are the accepted trials'

        def derivatives(z: np.ndarray, _fz: float):
            gz = start.pop() if start else self.fg(z)[1]
            return gz, _restricted(H)

        res = newton_steps(
            fun, x, f, self.lower, derivatives, maxit=maxit, tol=tol,
            shrinks=(1.0, 0.5, 0.25, 0.125), slack=1e-11,
        )  # fmt: skip
        return res.x, res.f, (self.fg(res.x)[1] if res.moved else res.g)

    def _exact_newton(self, x0: np.ndarray):
        """Newton steps with the exact Hessian at each point from x0 (the
        trial points' Hessians come with their deviances, one evaluation
        each).  Returns (record, None) at convergence, or (None, x) where the
        steps stall (a Hessian not positive definite far from the optimum,
        or no shorter step lowering the deviance): BFGS goes on from x."""
        f = self.fgh(x0)[0]
        log: tuple[list, list] = ([x0], [f])

        def fun(z: np.ndarray) -> float:
            fz = self.fgh(z)[0]
            log[0].append(z)
            log[1].append(fz)
            return fz

        def derivatives(z: np.ndarray, _fz: float):
            _, gz, Hz = self.fgh(z)
            if Hz is None:  # refused as not positive definite
                Hz = np.full((self.d, self.d), np.nan)
            return gz, _restricted(Hz)

        if not math.isfinite(f):
            return None, x0
        res = newton_steps(
            fun, x0, f, self.lower, derivatives, maxit=50, tol=1e-12,
            shrinks=(1.0, 0.5, 0.25, 0.125), slack=1e-11,
        )  # fmt: skip
        if not res.done:
            return None, res.x
        g = self.fg(res.x)[1]
        rec = OptRecord("newton (exact Hessian)", "CONVERGED", True, 0, res.f, res.x, g, [])
        rec._thetas, rec._values = log
        return rec, None

    def minimize(self, x0: np.ndarray, H0: np.ndarray | None, chord: bool = False):
        """From (x0, H0): BFGS, or (``chord``, H0 being the Hessian of a nearby
        model at its optimum x0) Newton steps with H0, or (a model with its
        exact Hessian; H0 may be None) Newton steps with the Hessian at each
        point, BFGS from where they stall; then Newton steps with the
        Hessian at the point reached."""
        d = self.d
        lower = self.lower
        rec = None
        if self.exact and not chord:
            rec, x0 = self._exact_newton(x0)
            if rec is None:
                H0 = self.hessian(x0)
        if rec is None and chord:
            H0 = _modified(H0, d)
            f, g = self.fg(x0)
            log: tuple[list, list] = ([x0], [f])
            x, f, g = self._newton(x0, f, g, H0, 20, 1e-9, log)
            rec = OptRecord("newton", "CONVERGED", True, 0, f, x, g, [])  # judged below
            rec._thetas, rec._values = log
        elif rec is None:
            rec = minimize_theta(
                self.fun,
                x0,
                lower,
                value_and_gradient=self.fg,
                hessian0=_modified(H0, d),
                newton_polish=False,
                max_step=np.inf,  # δ is in curvature units: Newton steps may be long
                check_hessian=False,  # the Hessian is judged below
            )
        x, f = rec.theta, rec.criterion
        H = self.hessian(x)
        g = self.fg(x)[1]
        x, f, g = self._newton(x, f, g, H, 3, 1e-12, (rec._thetas, rec._values))

        def logged(z: np.ndarray) -> float:
            fz = self.fg(z)[0]
            rec._thetas.append(z)
            rec._values.append(fz)
            return fz

        x, f, snapped = snap_to_bounds(logged, x, f, lower, slack=1e-10)
        if snapped.any():
            g = self.fg(x)[1]
        rec.theta, rec.criterion, rec.gradient = x, f, g
        if chord or rec.optimizer.startswith("newton"):
            # judged where the Newton steps with the exact Hessian ended
            gmax = float(np.max(np.abs(np.where((x <= lower) & (g >= 0), 0.0, g))))
            if gmax > GRAD_TOL:
                rec.status, rec.converged = "FAILED", False
                rec.messages.append(f"Model failed to converge: largest |gradient| {gmax:.3g}")
        self.fg(x)  # leaves the modes at the optimum
        return rec, H


def _restricted(H: np.ndarray):
    """H[idx][:, idx] for the Newton steps' free coordinates idx."""
    return lambda idx: H if idx.size == H.shape[0] else H[np.ix_(idx, idx)]


def _modified(H: np.ndarray | None, d: int) -> np.ndarray:
    """A positive definite H for a search's start: eigenvalues by magnitude,
    floored at 1e-10 of the largest (the identity where H is not finite)."""
    ok = H is not None and np.all(np.isfinite(H))
    lam, V = _eigh(H) if ok else (np.ones(d), np.eye(d))
    lam = np.maximum(np.abs(lam), 1e-10 * max(1.0, float(np.max(np.abs(lam)))))
    return (V * lam) @ V.T


def _eigh(H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of a finite symmetric H, by
    LAPACK directly (numpy's wrapper costs more than a d x d problem)."""
    lam, V, info = dsyev(H, lower=1)
    return (lam, V) if info == 0 else np.linalg.eigh(H)


def past_zero_columns(tmpl: list):
    """``after`` for :func:`run_search`: a zero diagonal T_cc with a nonzero
    column below it is a bound of this parametrisation, not of the covariance:
    negating the column gives the same model, and if the deviance falls as
    T_cc grows from there the search goes on from the negated column (the
    lower deviance is kept).  Every column of every template is tried."""
    columns = []
    for t in tmpl:
        rows, cols = t.rows, t.cols
        for c in range(t.q):  # columns of T, not rows or levels
            below = t.offset + np.flatnonzero((cols == c) & (rows > c))
            if below.size:
                dpos = t.offset + int(np.flatnonzero((rows == c) & (cols == c))[0])
                columns.append((dpos, below))

    def after(search: Search, model, rec, H):
        for dpos, below in columns:
            x = rec.theta
            if x[dpos] > 0 or not np.any(x[below] != 0):
                continue
            flip = x.copy()
            flip[below] *= -1.0
            _, gf = search.fg(flip)
            if gf[dpos] >= -1e-6 * max(1.0, float(np.max(np.abs(gf)))):
                continue
            flip[dpos] = 0.1 * float(np.linalg.norm(x[below]))
            sgn = np.ones(x.size)
            sgn[below] = -1.0  # the Hessian at the negated column: S H S
            H0 = H * np.outer(sgn, sgn) if H is not None else search.hessian(flip)
            rec2, H2 = search.minimize(flip, H0)
            if rec2.criterion < rec.criterion:
                rec2._thetas = rec._thetas + rec2._thetas
                rec2._values = rec._values + rec2._values
                rec, H = rec2, H2
        search.fg(rec.theta)  # the modes at the optimum
        return rec, H

    return after


def conditional_curvature(prob, theta: np.ndarray, beta: np.ndarray, u: np.ndarray):
    """2 R_XᵀR_X at (θ, β) and the modes u: the β-curvature of the Laplace
    deviance with u following β and the weights held (2Xᵀ(W − WZΛM⁻¹ΛᵀZᵀW)X,
    M = ΛᵀZᵀWZΛ + I, Fisher weights W); None where it cannot be formed."""
    rb = prob.rb
    if rb.K == 1 and rb.q[0] == 1 and rb._starts0 is not None:
        # the scalar template's one entry: T = [[θ_k]]
        return _scalar_curvature(prob, float(theta[prob.tmpl[0].offset]), beta, u)
    T = prob.templates(theta)
    eta = prob.eta(beta, u, T)
    w = prob.family.irls_terms(eta, prob.resp.weights)[2]
    if not np.all(np.isfinite(w)):
        return None
    F = np.zeros((prob.n, prob.p + 1))  # the last column (a response) is not used
    F[:, : prob.p] = prob.X
    f = factor(prob.rb, prob.rb.crossprods(w, F), T, True)
    if f is None or not np.all(np.isfinite(f.LFF)):
        return None
    return 2.0 * (f.LFF @ f.LFF.T)


def _scalar_curvature(prob, t: float, beta: np.ndarray, u: np.ndarray):
    """:func:`conditional_curvature` for one scalar term with rows sorted by
    its levels, where M is diagonal, h_j = 1 + t² Σ z²w over level j's rows:
    2(XᵀWX − Σ_j t² b_j b_jᵀ / h_j), b_j = Σ z w x over its rows — the product
    the blocked factor forms, without factoring (its Cholesky only decides
    whether the matrix is positive definite, checked here)."""
    rb = prob.rb
    z, starts = rb.Zs[0][:, 0], rb._starts0
    eta = prob.offset + prob.X @ beta + (t * z) * u[rb.codes[0]]
    w = prob.family.irls_terms(eta, prob.resp.weights)[2]
    if not np.all(np.isfinite(w)):
        return None
    zw = z * w
    b = np.add.reduceat(zw[:, None] * prob.X, starts, axis=0)
    h = 1.0 + (t * t) * np.add.reduceat(z * zw, starts)
    M = (prob.X.T * w) @ prob.X - (b.T * ((t * t) / h)) @ b
    if not np.all(np.isfinite(M)) or (M.size and dpotrf(M, lower=1)[1] != 0):
        return None
    return 2.0 * M


def start_hessian(prob, search: Search, x0: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """BFGS's first Hessian at x0: the rows of θ (and a family's parameter) by
    forward differences of the exact gradient, the (δ, δ) block from the
    conditional curvature (:func:`conditional_curvature`), which omits only
    the weights' change with β — BFGS corrects that, and the Hessian at the
    optimum, the one behind the standard errors, is differenced in full.
    Costs nt evaluations instead of nt + p; all differenced where the
    curvature cannot be formed."""
    nt, d = search.nt, search.d
    f0, g0 = search.fg(x0)
    u = search.model.u
    if not math.isfinite(f0) or u is None or nt == d:
        return search.hessian(x0, h)
    theta, beta = x0[:nt], search.beta0 + search.Rinv @ x0[nt:]
    try:
        with np.errstate(all="ignore"):
            C = conditional_curvature(prob, theta, beta, np.asarray(u, dtype=float).reshape(-1))
    except (PirlsError, np.linalg.LinAlgError, ValueError):
        C = None
    if C is None:
        return search.hessian(x0, h)
    H = np.empty((d, d))
    H[nt:, nt:] = search.Rinv.T @ C @ search.Rinv
    for i in range(nt):  # θ coordinates, not rows
        e = x0.copy()
        e[i] += h
        H[i] = (search.fg(e)[1] - g0) / h
    H[:nt, :nt] = 0.5 * (H[:nt, :nt] + H[:nt, :nt].T)
    H[nt:, :nt] = H[:nt, nt:].T
    search.fg(x0)  # the modes at x0 again
    return H


def run_search(prob, beta0: np.ndarray, theta0, make_model, nagq: int = 1, lower_theta=None,
               after=None, whitened: bool = False):  # fmt: skip
    """The search every exact-gradient route runs.

    ``make_model(n)`` builds the route's deviance model with n quadrature
    nodes (1: Laplace).  β is whitened at the GLM fit β₀ (:func:`whitening`);
    the Laplace deviance is minimised from (θ₀, δ = 0) with the Hessian of
    :func:`start_hessian` there; for nAGQ > 1 Newton (chord) steps on the quadrature deviance
    follow from the Laplace optimum and Hessian (the two are close, and a
    Laplace evaluation costs 1/nAGQ of a quadrature one).  ``after(search,
    model, rec, H)`` may continue a search (the vector route's sign flips).
    ``whitened``: ``make_model(n, β₀, R⁻¹)`` builds the model in x = (θ, δ)
    itself (X R⁻¹ for X, o + Xβ₀ for the offset: no map per evaluation).
    Returns the record (in x; ``evals`` counts both searches, the log keeps the
    last one's evaluations), the Hessian in x (None if not finite), β₀, R⁻¹
    (β = β₀ + R⁻¹δ) and the conditional modes at the optimum."""
    Rinv = upper_inverse(whitening(prob, beta0))
    theta0 = np.atleast_1d(np.asarray(theta0, dtype=float))
    nt = theta0.size
    model = make_model(1, beta0, Rinv) if whitened else make_model(1)
    search = Search(model, beta0, Rinv, ntheta=nt, lower_theta=lower_theta, in_x=whitened)
    x0 = np.concatenate([theta0, np.zeros(prob.p)])
    # a start where the deviance is infinite (random effects of unit scale take
    # an inverse link's mean below 0 in some group) moves towards smaller ones
    sd = np.flatnonzero(search.lower[:nt] == 0.0)
    for _ in range(6):
        if np.isfinite(search.fg(x0)[0]):
            break
        x0[sd] *= 0.25
    rec, H = search.minimize(x0, None if search.exact else start_hessian(prob, search, x0))
    if after is not None:
        rec, H = after(search, model, rec, H)
    evals = model.evals
    if nagq > 1:
        quad = make_model(nagq, beta0, Rinv) if whitened else make_model(nagq)
        quad.u = model.u.copy()
        search = Search(quad, beta0, Rinv, ntheta=nt, lower_theta=lower_theta, in_x=whitened)
        rec, H = search.minimize(rec.theta, H, chord=True)
        if after is not None:
            rec, H = after(search, quad, rec, H)
        model, evals = quad, evals + quad.evals
    rec.evals = evals
    H = H if H is not None and np.all(np.isfinite(H)) else None
    return rec, H, beta0, Rinv, model.u.reshape(-1).copy()
