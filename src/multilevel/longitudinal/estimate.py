"""The likelihood of a model with structured residuals, profiled over
everything but the structure's parameters ω (correlation and variance).

At ω the rows are whitened (:mod:`multilevel.longitudinal.whiten`), in the
centred and scaled basis of :mod:`multilevel.lmm.basis` (column maps commute
with the row maps of whitening), and

* with random effects, θ is optimised on the whitened cross-products by the
  LMM engine (:func:`multilevel.lmm.estimate.optimize_cross_products`, warm
  started from the last θ), σ and β profiled out;
* without (gls), β and σ are profiled out of the whitened [X y]:
  ML = n(1 + log(2π r²/n)), REML = (n − p)(1 + log(2π r²/(n − p))) + log|X̃ᵀX̃|,

each plus log|V(ω)|.  ω is optimised over that profile (Brent for one
parameter, BOBYQA for several, then Newton steps with a difference Hessian:
:func:`multilevel.optimize.theta.minimize_theta`).  An AR(1) or CAR(1)
structure with one random-effects term gets its whitened cross-products at
any ω from lag sums formed once (:class:`multilevel.longitudinal.whiten.LagSums`)
and ω by Newton's method on the profile (:func:`_envelope_newton`).

A variance function of the fitted values (nlme's default ``varPower()``)
needs the fit it describes: as nlme, the fitted values are held fixed while
ω is optimised, then recomputed from the new fit, until ω changes by less
than 1e-6 (at most 50 rounds); the log-likelihood reported is the one at
the last fitted values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from multilevel.covariance import templates
from multilevel.errors import ModelError
from multilevel.linalg.affine import apply_affine
from multilevel.linalg.crossprod import CrossProducts, cross_products
from multilevel.lmm.basis import Basis, ScaledCriterion
from multilevel.lmm.criterion import ProfiledCriterion
from multilevel.lmm.estimate import optimize_cross_products, optimize_in_basis
from multilevel.longitudinal.whiten import ResidualStructure, check_nesting
from multilevel.optimize.hessian import gradient_hessian
from multilevel.optimize.record import Logged, OptRecord
from multilevel.optimize.theta import minimize_theta

_LOG2PI = float(np.log(2.0 * np.pi))
FITTED_ROUNDS = 50


@dataclass
class StructuredEstimate:
    """ω̂ and the record of its search; for an LMM the criterion and θ-record
    of the whitened problem at ω̂ (as :func:`multilevel.lmm.estimate.estimate`
    gives them), for gls β̂, its covariance and σ̂."""

    omega: np.ndarray
    record: OptRecord
    logdet: float
    crit: object = None
    theta_record: OptRecord | None = None
    beta: np.ndarray | None = None
    vcov: np.ndarray | None = None
    sigma: float | None = None
    deviance: float | None = None
    rounds: int = 1
    whitened: object = None  # the model's columns, whitened at any ω (``.at``, ``.criterion``)


class _Whitened:
    """The scaled columns [Z X y] of a model, whitened at any ω."""

    def __init__(self, struct: ResidualStructure, Zs, X, y, ones, random_codes):
        self.struct = struct
        self.basis = Basis.of(Zs, X, y, ones=ones)
        Zs_s = [apply_affine(Z, V) for Z, V in zip(Zs, self.basis.V, strict=True)]
        F_s = apply_affine(np.column_stack([X, y]), self.basis.NF)
        self.M = np.hstack(Zs_s + [F_s])
        self.qs = [Z.shape[1] for Z in Zs]
        self.p = X.shape[1]
        self.codes = [c[struct.order] for c in random_codes]
        self.nlevels = [int(c.max(initial=-1)) + 1 for c in random_codes]
        check_nesting(struct, random_codes)
        self._lags: dict = {}  # LagSums (or None) with and without the variance function

    def criterion(self, omega: np.ndarray, REML: bool):
        """The LMM's profiled criterion of θ at ω, in the user's columns
        (:class:`multilevel.lmm.basis.ScaledCriterion`), or None."""
        cp, logdet = self.cross_products(omega)
        if cp is None:
            return None
        tmpl = templates(self.qs)
        return ScaledCriterion(ProfiledCriterion(cp, tmpl, REML, -logdet), self.basis, tmpl)

    with_var = True  # False: the structure without its variance function

    def cross_products(self, omega: np.ndarray):
        """The cross-products of the whitened [Z X y] at ω and log|V(ω)|,
        (None, inf) where ω is outside the structure's range.  One term and a
        Markov structure: from the lag sums of :class:`LagSums` (formed on the
        first call; no pass over the rows per ω), else by whitening the rows."""
        lags = self._lag_sums()
        if lags is None:
            parts, logdet = self.at(omega)
            if parts is None:
                return None, np.inf
            Zw, Xw, yw = parts
            return cross_products(Zw, self.codes, self.nlevels, Xw, yw), logdet
        G, T, logdet = lags.at(omega)
        if (
            G is None
            or not np.isfinite(logdet)
            or not (np.isfinite(G).all() and np.isfinite(T).all())
        ):
            return None, np.inf
        q = self.qs[0]
        D1 = np.ascontiguousarray(G[:, :, :q])
        B1F = np.ascontiguousarray(G[:, :, q:])
        cp = CrossProducts([q], [self.nlevels[0]], D1, B1F, None, None, None, T[q:, q:].copy(),
                           self.struct.n, self.p)  # fmt: skip
        return cp, logdet

    def _lag_sums(self):
        if self.with_var not in self._lags:
            ok = len(self.qs) == 1 and self.struct.n > 0
            self._lags[self.with_var] = (
                self.struct.lag_sums(
                    self.M, self.codes[0], self.nlevels[0], self.qs[0], self.with_var
                )
                if ok
                else None
            )
        return self._lags[self.with_var]

    def at(self, omega: np.ndarray):
        Mw, logdet = self.struct.whiten(omega, self.M, self.with_var)
        if not np.isfinite(logdet) or not np.all(np.isfinite(Mw)):
            return None, np.inf
        out, k = [], 0
        for q in self.qs:
            out.append(Mw[:, k : k + q])
            k += q
        return (out, Mw[:, k : k + self.p], Mw[:, k + self.p]), logdet


def whitened_rows(design, struct: ResidualStructure) -> _Whitened:
    """The scaled [X y] of a gls model, whitened at any ω (``.at(ω)``)."""
    y = design.y if design.offset is None else design.y - design.offset
    return _Whitened(struct, [], design.X, y, (design.intercept_columns()[0], []), [])


def _search(profile, x0: np.ndarray, free: np.ndarray | None = None) -> OptRecord:
    """Minimise the profile over ω's free entries from x0 (the others held):
    Brent for one parameter, BOBYQA and Newton steps for several (no bounds:
    every scale is unconstrained).  The record is in the full ω."""
    if free is not None and not free.all():
        x0 = np.asarray(x0, float)

        def full(z):
            x = x0.copy()
            x[free] = z
            return x

        rec = _search(lambda z: profile(full(z)), x0[free])
        rec.theta = full(rec.theta)
        g = np.zeros(x0.size)
        g[free] = rec.gradient
        rec.gradient = g
        return rec
    if x0.size == 0:
        return OptRecord("none", "CONVERGED", True, 1, float(profile(x0)), x0, np.zeros(0), [])
    with np.errstate(all="ignore"):
        if x0.size > 1:
            return minimize_theta(profile, x0, np.full(x0.size, -np.inf), xtol=1e-7, ftol=1e-9)
        from scipy.optimize import minimize_scalar

        logged = Logged(profile)
        f = lambda t: logged(np.array([t]))  # noqa: E731
        a = float(x0[0])
        # Brent to 1e-4 in x, then one Newton step from a quadratic through
        # three points closes the rest
        res = minimize_scalar(f, bracket=(a - 0.5, a + 0.5), method="brent", tol=1e-4)
        x = logged.best_x
        # steps of 1e-3: the second difference then stands well above the
        # rounding of a criterion summed over a million rows
        h = 1e-3 * max(1.0, abs(float(x[0])))
        f0, fp, fm = logged.best, f(x[0] + h), f(x[0] - h)
        g = (fp - fm) / (2 * h)
        curv = (fp - 2.0 * f0 + fm) / (h * h)
        gain = g * g / (2.0 * curv) if curv > 0 else np.inf  # what a Newton step gains
        if curv > 0 and gain > 1e-8:
            fn = f(x[0] - g / curv)
            x = logged.best_x
            # the step gained what the quadratic said: the profile is quadratic
            # here and its minimum is reached (to the model's cubic term)
            if f0 - fn >= 0.5 * gain:
                gain = 0.0
        # converged: a minimum (positive curvature) that a Newton step would
        # lower by less than 1e-4 deviance units (5e-5 in the log-likelihood;
        # the θ searches leave the profile of a million rows no more precise)
        ok = bool(res.success) and curv > 0 and gain < 1e-4
        msgs = (
            []
            if ok
            else [f"the correlation/variance parameter search stopped with gradient {g:.3g}"]
        )
        rec = logged.record("brent", "CONVERGED" if ok else "FAILED", ok, x, logged.best,
                            np.array([g]), msgs)  # fmt: skip
        return rec


# steps in ω for the differences of f at fixed θ (relative to max(1, |ω|)):
# on a million rows f is known to ~1e-5, so its rounding over h (in g′) and h²
# (in g″) stays far below the profile's curvature, which grows like n
_DW = 1e-3
_MAX_STEP = 1.0  # a Newton step in ω, on its unconstrained scale
_GAIN_TOL = 1e-7  # deviance units a further Newton step in ω could gain


def _inner_newton(crit, theta: np.ndarray, H: np.ndarray, lower: np.ndarray):
    """θ̂ of ``crit`` from θ by Newton steps with the Hessian H, updated by
    BFGS from the exact gradients (θ̂ moves little with ω, so H from the last
    ω is close): (θ̂, f, ∇f, H), or None when θ̂ would reach a bound or the
    steps fail (the caller then uses the general search).

    Near θ̂ the criterion's decrease drowns in its rounding (on a million
    rows f is known to ~1e-5) while the exact gradient still resolves θ̂: a
    step is taken when it lowers f or shrinks the Newton decrement ½gᵀH⁻¹g
    (what a full step would gain) fourfold, and θ̂ is reached when the
    decrement is below 1e-10."""
    bounded = np.isfinite(lower)
    f, g = crit.value_and_gradient(theta)
    if not np.isfinite(f):
        return None
    for _ in range(20):
        try:
            step = -np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            return None
        dec = -0.5 * float(g @ step)
        if not dec >= 0.0:
            return None
        if dec < 1e-10:
            return theta, f, g, H
        t = 1.0
        for _ in range(6):
            tn = theta + t * step
            if np.any(bounded & (tn <= lower)):
                return None
            fn, gn = crit.value_and_gradient(tn)
            if np.isfinite(fn) and (
                fn <= f - 1e-4 * t * dec or 0.5 * float(gn @ np.linalg.solve(H, gn)) < 0.25 * dec
            ):
                break
            t *= 0.5
        else:
            # neither moves at the rounding of f and ∇f: θ̂ is reached to that
            return (theta, f, g, H) if dec < 1e-6 else None
        s, yv = tn - theta, gn - g
        sy = float(s @ yv)
        if sy > 0:
            Hs = H @ s
            H = H - np.outer(Hs, Hs) / float(s @ Hs) + np.outer(yv, yv) / sy
        theta, f, g = tn, fn, gn
    return None


def _envelope_newton(w: _Whitened, x0: np.ndarray, REML: bool) -> OptRecord | None:
    """Minimise the profile g(ω) = min_θ f(θ, ω) over one structure parameter
    by Newton's method on g′ = 0, with the derivatives at θ̂(ω) (the envelope
    and implicit-function theorems; H = ∇²_θ f at θ̂):

        g′ = f_ω,   g″ = f_ωω − f_ωθ H⁻¹ f_θω,   dθ̂/dω = −H⁻¹ f_θω,

    f_ω, f_ωω and f_θω by central differences of f and its exact θ-gradient
    with θ̂ held.  These differences of one smooth function resolve ω̂ where
    the profile's values, each the end of a θ search, do not: steps are judged
    by the sign of g′, which brackets ω̂ (bisection where a Newton step would
    leave the bracket or g″ ≤ 0).  Each later θ̂ starts from
    θ̂ + (dθ̂/dω)Δω with H carried over (:func:`_inner_newton`).  Stops where a
    further Newton step would gain under 1e-7 deviance units, with g″ > 0,
    and takes that step.
    None where this does not apply (θ̂ on a bound, a failed inner search, no
    convergence in 30 steps): the caller falls back to :func:`_search`."""
    tmpl = templates(w.qs)
    lower = np.concatenate([t.lower_bounds() for t in tmpl])
    bounded = np.isfinite(lower)
    thetas: list[np.ndarray] = []
    values: list[float] = []

    def crit_at(x: float):
        cp, logdet = w.cross_products(np.array([x]))
        return None if cp is None else ProfiledCriterion(cp, tmpl, REML, -logdet)

    def point(x: float, crit, start: np.ndarray, H: np.ndarray):
        """θ̂, g, H at x and g′, g″, dθ̂/dω there; None if a search fails."""
        res = _inner_newton(crit, start, H, lower)
        if res is None:
            return None
        th, f, _, H = res
        thetas.append(np.array([x]))
        values.append(f)
        h = _DW * max(1.0, abs(x))
        cp_, cm_ = crit_at(x + h), crit_at(x - h)
        if cp_ is None or cm_ is None:
            return None
        fp, gp = cp_.value_and_gradient(th)
        fm, gm = cm_.value_and_gradient(th)
        fxt = (gp - gm) / (2.0 * h)
        dth = -np.linalg.solve(H, fxt)
        d1 = (fp - fm) / (2.0 * h)
        d2 = (fp - 2.0 * f + fm) / (h * h) + float(fxt @ dth)
        if not (np.isfinite(d1) and np.isfinite(d2)):
            return None
        return th, f, H, d1, d2, dth

    x = float(x0[0])
    try:
        cp, logdet = w.cross_products(np.array([x]))
        if cp is None:
            return None
        crit, rec = optimize_cross_products(cp, w.qs, REML, -logdet, None)
        th = np.asarray(rec.theta, float)
        near = bounded & (th - lower <= 1e-4 * np.maximum(1.0, np.abs(th)))
        if not crit.has_gradient or not np.all(np.isfinite(th)) or near.any():
            return None
        H = gradient_hessian(lambda t: crit.value_and_gradient(t)[1], th)
        if not np.all(np.linalg.eigvalsh(H) > 0):
            return None
        cur = point(x, crit, th, H)
        lo, hi = -np.inf, np.inf
        for _ in range(30):
            if cur is None:
                return None
            th, f, H, d1, d2, dth = cur
            if d2 > 0 and d1 * d1 / (2.0 * d2) < _GAIN_TOL:
                # that last step is so short that the derivatives here make it
                # exactly enough: taken without a further θ search
                xf = np.array([x - d1 / d2])
                return OptRecord("newton", "CONVERGED", True, len(values), f, xf,
                                 np.array([d1]), [], thetas, values)  # fmt: skip
            if d1 > 0:
                hi = min(hi, x)
            else:
                lo = max(lo, x)
            step = -d1 / d2 if d2 > 0 else -np.sign(d1) * _MAX_STEP
            xn = x + float(np.clip(step, -_MAX_STEP, _MAX_STEP))
            if not lo < xn < hi:  # outside the bracket: halfway to its end
                xn = 0.5 * (x + (hi if xn > x else lo))
            for _ in range(30):  # outside the structure's range: back towards x
                crit_n = crit_at(xn)
                if crit_n is not None:
                    break
                xn = 0.5 * (x + xn)
            else:
                return None
            start = th + dth * (xn - x)
            if np.any(bounded & (start <= lower)):
                start = th
            cur = point(xn, crit_n, start, H.copy())
            x = xn
    except (ModelError, np.linalg.LinAlgError):
        return None
    return None


def estimate_lmm(design, struct: ResidualStructure, REML: bool) -> StructuredEstimate:
    """ω̂ and the LMM at ω̂ (terms ordered by levels, as the LMM engine does)."""
    order = sorted(range(len(design.random)), key=lambda k: -design.random[k].nlevels)
    design.random = [design.random[k] for k in order]
    rs = design.random
    y = design.y if design.offset is None else design.y - design.offset
    codes = [r.codes for r in rs]
    nlevels = [r.nlevels for r in rs]
    state: dict = {"theta": None, "H": None}

    def make():
        w = _Whitened(struct, [r.Z for r in rs], design.X, y, design.intercept_columns(), codes)
        w.nlevels = nlevels
        return w

    def profile(w: _Whitened, omega: np.ndarray) -> float:
        cp, logdet = w.cross_products(omega)
        if cp is None:
            return np.inf
        try:
            if state["theta"] is None or state["H"] is None:
                crit, rec = optimize_cross_products(cp, w.qs, REML, -logdet, state["theta"])
                if crit.has_gradient and np.all(np.isfinite(rec.theta)):
                    # θ̂ moves little with ω: the Hessian at the first optimum
                    # starts every later search (a few BFGS steps instead of a dozen)
                    th = np.asarray(rec.theta, float)
                    H = gradient_hessian(lambda t: crit.value_and_gradient(t)[1], th)
                    if np.all(np.isfinite(H)) and np.all(np.linalg.eigvalsh(H) > 0):
                        state["H"] = H
            else:
                tmpl = templates(w.qs)
                crit = ProfiledCriterion(cp, tmpl, REML, -logdet)
                lower = np.concatenate([t.lower_bounds() for t in tmpl])
                rec = minimize_theta(crit, state["theta"], lower,
                                     value_and_gradient=crit.value_and_gradient,
                                     hessian0=state["H"], check_hessian=False)  # fmt: skip
        except (ModelError, np.linalg.LinAlgError):
            return np.inf
        if np.all(np.isfinite(rec.theta)):
            state["theta"] = np.asarray(rec.theta, float)
        return float(rec.criterion)

    def finish(w: _Whitened, omega: np.ndarray):
        cp, logdet = w.cross_products(omega)
        crit, trec = optimize_in_basis(cp, w.basis, w.qs, REML, -logdet, None)
        return crit, trec, logdet

    def search(w: _Whitened, x0: np.ndarray, free: np.ndarray) -> OptRecord:
        if x0.size == 1 and free.all() and w._lag_sums() is not None:
            # each ω costs no pass over the rows: Newton on the profile with
            # its derivatives at θ̂ needs far fewer θ searches than Brent
            rec = _envelope_newton(w, x0, REML)
            if rec is not None:
                return rec
        return _search(lambda o: profile(w, o), x0, free)

    return _with_fitted_rounds(
        struct,
        make,
        profile,
        finish,
        lambda crit, trec: _lmm_fitted(design, crit, trec, REML),
        search,
    )


def _lmm_fitted(design, crit, trec, REML: bool) -> np.ndarray:
    """Fitted values Xβ̂ + Zb̂ of the LMM at the criterion's optimum."""
    from multilevel.lmm.results import LmerFit

    return LmerFit(design, crit, trec, REML=REML)._fitted


def _with_fitted_rounds(struct, make, profile, finish, fitted_of, search=None):
    """ω's search, repeated with the fitted values updated while a variance
    function depends on them (module docstring); ``search(w, x0, free)`` in
    place of :func:`_search` on ``profile`` for the rounds' searches over all
    of ω."""
    if search is None:

        def search(w, x0, free):
            return _search(lambda o: profile(w, o), x0, free)

    var = struct.var
    x = struct.start()
    rounds = 0
    if var is not None and var.uses_fitted:
        # the first fitted values: the model without the variance function
        w = make()
        w.with_var = False
        nc = struct.nc
        rec0 = _search(lambda o: profile(w, np.r_[o, x[nc:]]), x[:nc], struct.free[:nc])
        crit, trec, _ = finish(w, np.r_[rec0.theta, x[nc:]])
        var.set_fitted(fitted_of(crit, trec))
        x = np.concatenate([rec0.theta, x[nc:]])
    w = make()
    while True:
        rounds += 1
        rec = search(w, x, struct.free)
        crit, trec, logdet = finish(w, rec.theta)
        change = float(np.max(np.abs(rec.theta - x), initial=0.0))
        x = np.asarray(rec.theta, float)
        if var is None or not var.uses_fitted:
            break
        var.set_fitted(fitted_of(crit, trec))
        if change < 1e-6 or rounds >= FITTED_ROUNDS:
            if rounds >= FITTED_ROUNDS and change >= 1e-6:
                rec.converged = False
                rec.messages.append(
                    f"the variance function of the fitted values did not settle in "
                    f"{FITTED_ROUNDS} rounds (last change {change:.2g})"
                )
            # the likelihood at the final fitted values
            rec.criterion = profile(w, x)
            crit, trec, logdet = finish(w, x)
            break
    msg = struct.runaway(x)
    if msg is not None:
        rec.converged = False
        rec.messages.insert(0, msg)
    return StructuredEstimate(
        x, rec, logdet, crit=crit, theta_record=trec, rounds=rounds, whitened=w
    )


# --------------------------------------------------------------------------- gls


def gls_profile(AFF: np.ndarray, n: int, REML: bool, logdet: float):
    """−2 log-likelihood profiled over β and σ from [X̃ ỹ]ᵀ[X̃ ỹ], with β̂,
    (X̃ᵀX̃)⁻¹, and σ̂² (r²/(n − p) for REML, r²/n for ML)."""
    p = AFF.shape[0] - 1
    try:
        L = np.linalg.cholesky(AFF)
    except np.linalg.LinAlgError:
        return np.inf, None, None, None
    r2 = L[p, p] ** 2
    if not r2 > 0:
        return np.inf, None, None, None
    LX = L[:p, :p]
    logdet_X = 2.0 * float(np.log(np.diag(LX)).sum())
    dof = n - p if REML else n
    dev = dof * (1.0 + _LOG2PI + np.log(r2 / dof)) + logdet
    if REML:
        dev += logdet_X
    beta = np.linalg.solve(LX.T, L[p, :p])
    Linv = np.linalg.inv(LX)
    return float(dev), beta, Linv.T @ Linv, float(r2 / dof)


def estimate_gls(design, struct: ResidualStructure, REML: bool) -> StructuredEstimate:
    """ω̂, β̂, vcov(β̂) and σ̂ of a gls model."""
    y = design.y if design.offset is None else design.y - design.offset
    n = y.size

    def make():
        return whitened_rows(design, struct)

    def evaluate(w, omega):
        parts, logdet = w.at(omega)
        if parts is None:
            return np.inf, None, None, None, logdet
        _, Xw, yw = parts
        F = np.column_stack([Xw, yw])
        return (*gls_profile(F.T @ F, n, REML, logdet), logdet)

    def profile(w, omega):
        return evaluate(w, omega)[0]

    out: dict = {}

    def finish(w, omega):
        dev, beta_s, V_s, s2_s, logdet = evaluate(w, omega)
        out.update(dev=dev, beta_s=beta_s, V_s=V_s, s2_s=s2_s, basis=w.basis)
        return out, None, logdet

    def fitted(res, _trec):
        beta, _, _ = _gls_original(res)
        eta = design.X @ beta
        return eta if design.offset is None else eta + design.offset

    est = _with_fitted_rounds(struct, make, profile, finish, fitted)
    beta, vcov, sigma = _gls_original(out)
    if not REML:  # nlme's covariance of β̂ takes σ̃² = r²/(n − p) for ML fits too
        vcov = vcov * (n / (n - design.X.shape[1]))
    # the scaled problem's criterion differs from the original one by the
    # response's and X's scales (as for the LMM: :func:`optimize_in_basis`)
    NF = out["basis"].NF
    p = design.X.shape[1]
    log_c = float(np.log(NF[p, p]))
    shift = (
        2.0 * (n - p) * log_c + 2.0 * float(np.log(np.diag(NF)[:p]).sum())
        if REML
        else 2.0 * n * log_c
    )
    est.beta, est.vcov, est.sigma = beta, vcov, sigma
    est.deviance = out["dev"] + shift
    est.record.criterion = est.deviance
    return est


def _gls_original(res: dict):
    """β, σ²(XᵀV⁻¹X)⁻¹ and σ in the user's columns from the scaled fit."""
    NF = res["basis"].NF
    p = NF.shape[0] - 1
    c = NF[p, p]
    N = NF[:p, :p]
    # X = X̃N and y = X̃·NF[:p, p] + cỹ, so ỹ ≈ X̃β̃ is y ≈ XN⁻¹(cβ̃ + NF[:p, p])
    beta = np.linalg.solve(N, c * res["beta_s"] + NF[:p, p])
    Ninv = np.linalg.inv(N)
    vcov = (c * c * res["s2_s"]) * (Ninv @ res["V_s"] @ Ninv.T)
    return beta, vcov, float(c * np.sqrt(res["s2_s"]))


__all__ = ["StructuredEstimate", "estimate_gls", "estimate_lmm", "gls_profile", "whitened_rows"]
