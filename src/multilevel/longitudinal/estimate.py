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
:func:`multilevel.optimize.theta.minimize_theta`).

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
from multilevel.linalg.crossprod import cross_products
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

    def criterion(self, omega: np.ndarray, REML: bool):
        """The LMM's profiled criterion of θ at ω, in the user's columns
        (:class:`multilevel.lmm.basis.ScaledCriterion`), or None."""
        parts, logdet = self.at(omega)
        if parts is None:
            return None
        Zw, Xw, yw = parts
        cp = cross_products(Zw, self.codes, self.nlevels, Xw, yw)
        tmpl = templates(self.qs)
        return ScaledCriterion(ProfiledCriterion(cp, tmpl, REML, -logdet), self.basis, tmpl)

    with_var = True  # False: the structure without its variance function

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
        parts, logdet = w.at(omega)
        if parts is None:
            return np.inf
        Zw, Xw, yw = parts
        cp = cross_products(Zw, w.codes, nlevels, Xw, yw)
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
        parts, logdet = w.at(omega)
        Zw, Xw, yw = parts
        cp = cross_products(Zw, w.codes, nlevels, Xw, yw)
        crit, trec = optimize_in_basis(cp, w.basis, w.qs, REML, -logdet, None)
        return crit, trec, logdet

    return _with_fitted_rounds(
        struct, make, profile, finish, lambda crit, trec: _lmm_fitted(design, crit, trec, REML)
    )


def _lmm_fitted(design, crit, trec, REML: bool) -> np.ndarray:
    """Fitted values Xβ̂ + Zb̂ of the LMM at the criterion's optimum."""
    from multilevel.lmm.results import LmerFit

    return LmerFit(design, crit, trec, REML=REML)._fitted


def _with_fitted_rounds(struct, make, profile, finish, fitted_of):
    """ω's search, repeated with the fitted values updated while a variance
    function depends on them (module docstring)."""
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
        rec = _search(lambda o: profile(w, o), x, struct.free)
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
