"""Likelihood profiles and confidence intervals for LMM and GLMM parameters.

As lme4's ``profile``/``confint``, the profiles are of the maximum-likelihood
deviance (a REML fit is refit by ML first) and are expressed as

    ζ(v) = sign(v − v̂) √(d(v) − d̂),

where d(v) is the ML deviance minimised over all other parameters with the
profiled one held at v, and d̂ its overall minimum.  A 100(1−α)% interval is
{v : |ζ(v)| ≤ z_{1−α/2}}; its endpoints are found by root finding on ζ (not by
interpolating a spline through the trace, as lme4 does), and an endpoint is
the parameter's bound (0 for a standard deviation, ±1 for a correlation) when
ζ stays below the cutoff all the way to it.

Parameters: per random-effects term the standard deviations and correlations
(``sd_x|g``, ``cor_x.y|g``, in θ's order), the residual ``sigma``, then the
fixed effects.  For the variance parameters ψ = (sd, cor, σ) the deviance is

    d(ψ) = log|L_Z|²(θ) + n log(2πσ²) + r²(θ)/σ²,  T_k = diag(sd_k/σ) chol(R_k),

with β profiled out; for a fixed effect βⱼ held at b, at every θ

    r²_b(θ) = r²(θ) + (b − β̂ⱼ(θ))² / [(R_XᵀR_X)⁻¹]ⱼⱼ,   d = log|L_Z|² + n(1 + log(2π r²_b/n)),

so that the constrained fit needs no new cross-products, only θ is optimised.

A GLMM has no σ and no closed form in β: its deviance is the fit's Laplace or
quadrature approximation as a function of (sd, cor; β; the family's free
parameters) (:meth:`multilevel.glmm.results.GlmerFit.devfun`), and each point
of a profile minimises it over all coordinates but the profiled one (BOBYQA;
lme4's profile of a glmer fit in the same way).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.linalg as sla

from multilevel.errors import ModelError, SingularFitWarning
from multilevel.inference.params import VarianceParams
from multilevel.threads import one_blas_thread

if TYPE_CHECKING:
    from multilevel.lmm.results import LmerFit

_LOG2PI = np.log(2 * np.pi)
ALPHA_MAX = 0.01  # traces extend to ζ = z_{1-α_max/2}, as lme4's default


# -- inner minimisation ---------------------------------------------------------------
def _minimize(f, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, scale: np.ndarray):
    """Bounded minimisation of f over a few parameters (BOBYQA; golden-section
    Brent in one dimension).  Returns (x, f(x))."""
    from scipy import optimize  # imported when used (0.5 s)

    x0 = np.clip(np.asarray(x0, dtype=float), lower, upper)
    k = x0.size
    if k == 0:
        return x0, float(f(x0))
    if k == 1:
        lo, hi = float(lower[0]), float(upper[0])
        s = float(scale[0])
        a = max(lo, x0[0] - s)
        b = min(hi, x0[0] + s)
        fa = f(np.array([a]))
        f0 = f(x0)
        fb = f(np.array([b]))
        # widen the bracket until the interior point is lowest
        for _ in range(60):
            if fa < f0 and a > lo:
                a = max(lo, x0[0] - 2 * (x0[0] - a))
                fa = f(np.array([a]))
            elif fb < f0 and b < hi:
                b = min(hi, x0[0] + 2 * (b - x0[0]))
                fb = f(np.array([b]))
            else:
                break
        res = optimize.minimize_scalar(
            lambda t: f(np.array([t])), bounds=(a, b), method="bounded", options={"xatol": 1e-9 * s}
        )
        cands = [(float(res.fun), res.x), (fa, a), (fb, b), (f0, x0[0])]
        val, x = min(cands, key=lambda c: c[0])
        return np.array([float(x)]), float(val)
    import nlopt

    best = [np.inf, x0.copy()]

    def obj(x, grad):
        v = float(f(x))
        if not np.isfinite(v):
            v = 1e300
        if v < best[0]:
            best[0], best[1] = v, np.array(x)
        return v

    opt = nlopt.opt(nlopt.LN_BOBYQA, k)
    opt.set_min_objective(obj)
    lo = np.where(np.isfinite(lower), lower, -1e300)
    hi = np.where(np.isfinite(upper), upper, 1e300)
    opt.set_lower_bounds(lo)
    opt.set_upper_bounds(hi)
    step = np.minimum(0.2 * scale, np.maximum((hi - lo) / 4, 1e-8))
    opt.set_initial_step(step)
    opt.set_xtol_abs(1e-10 * scale)
    opt.set_ftol_abs(1e-12)
    opt.set_maxeval(20000)
    try:
        opt.optimize(x0)
    except (nlopt.RoundoffLimited, ValueError):
        pass
    return best[1], float(best[0])


# -- one profile ------------------------------------------------------------------------
@dataclass
class ProfileTrace:
    """ζ along one parameter, with the other parameters at their conditional optimum."""

    name: str
    estimate: float
    values: list[float] = field(default_factory=list)
    zeta: list[float] = field(default_factory=list)
    nuisance: list[np.ndarray] = field(default_factory=list)

    def frame(self, nuisance_names: list[str]) -> pd.DataFrame:
        order = np.argsort(self.values)
        df = pd.DataFrame(
            np.array(self.nuisance)[order] if self.nuisance else None, columns=nuisance_names
        )
        df.insert(0, "zeta", np.array(self.zeta)[order])
        df.insert(0, self.name, np.array(self.values)[order])
        return df


class _Profiler:
    """ζ(v) for one parameter: d(v) minimised over the nuisance parameters."""

    def __init__(self, dev, v_hat, nuis_hat, lower, upper, scale, dmin, lo_v, hi_v, name, step0):
        self.dev = dev  # (v, x) -> deviance
        self.step0 = step0  # first step away from the estimate
        self.v_hat = v_hat
        self.lower, self.upper, self.scale = lower, upper, scale
        self.dmin = dmin
        self.lo_v, self.hi_v = lo_v, hi_v
        self.trace = ProfileTrace(name, v_hat)
        self.trace.values.append(v_hat)
        self.trace.zeta.append(0.0)
        self.trace.nuisance.append(np.asarray(nuis_hat, dtype=float))
        self._memo = {float(v_hat): 0.0}

    def _start(self, v: float) -> np.ndarray:
        vals = np.array(self.trace.values)
        return self.trace.nuisance[int(np.argmin(np.abs(vals - v)))]

    def zeta(self, v: float) -> float:
        v = float(v)
        if v in self._memo:  # root finding re-evaluates its bracket
            return self._memo[v]
        x, d = _minimize(
            lambda x: self.dev(v, x), self._start(v), self.lower, self.upper, self.scale
        )
        z = np.sign(v - self.v_hat) * np.sqrt(max(d - self.dmin, 0.0))
        self.trace.values.append(float(v))
        self.trace.zeta.append(float(z))
        self.trace.nuisance.append(x)
        self._memo[v] = float(z)
        return float(z)

    def walk(self, direction: int, cutoff: float, zmax: float) -> float:
        """Move from the estimate until |ζ| ≥ zmax or the bound; returns the value
        where |ζ| = cutoff (or the bound when ζ never gets there)."""
        from scipy import optimize  # imported when used (0.5 s)

        bound = self.hi_v if direction > 0 else self.lo_v
        v_prev, z_prev = self.v_hat, 0.0
        v = self.v_hat + direction * self.step0
        crossing = None
        for _ in range(60):
            if (v - bound) * direction >= 0:
                v = bound
            z = abs(self.zeta(v))
            if crossing is None and z >= cutoff:
                crossing = (v_prev, z_prev, v, z)
            if z >= zmax or v == bound:
                break
            # secant on |ζ| aiming at steps of about zmax/8
            slope = (z - z_prev) / abs(v - v_prev) if v != v_prev else 0.0
            dist = abs(v - v_prev)
            if slope > 0:
                nxt = min(max((zmax / 8) / slope, 0.2 * dist), 4 * dist)
            else:
                nxt = 2 * dist
            v_prev, z_prev = v, z
            v = v + direction * nxt
        if crossing is None:
            return bound if v == bound else np.nan
        a, za, b, zb = crossing
        if zb == cutoff:
            return b
        # the limit to 1e-8 of its size: ζ itself is known only to the inner
        # optimisation's accuracy (~1e-12), and points closer than that would
        # put rounding noise into the trace
        return optimize.brentq(
            lambda t: abs(self.zeta(t)) - cutoff, a, b, xtol=1e-8 * max(abs(b), 1e-3), rtol=1e-12
        )


# -- public API -------------------------------------------------------------------------
class Profile:
    """Profiles of an LMM's parameters (see the module docstring).

    ``traces[name]`` is a DataFrame with the parameter's values, ``zeta`` and
    the other parameters at their conditional optimum, sorted by value, for
    plotting (ζ against the value is close to a straight line when the
    Wald approximation is good).  ``confint`` holds the intervals computed
    with the profile.
    """

    def __init__(self, traces: dict[str, pd.DataFrame], ci: pd.DataFrame, level: float):
        self.traces = traces
        self.level = level
        self.ci = ci

    def confint(self) -> pd.DataFrame:
        return self.ci

    def __repr__(self) -> str:
        return f"<Profile of {len(self.traces)} parameters, {self.level:.0%} intervals>"


@one_blas_thread
def profile(
    fit: LmerFit,
    which: list[str] | str | None = None,
    level: float = 0.95,
    alpha_max: float = ALPHA_MAX,
) -> Profile:
    """Profile the ML deviance over each parameter (``which``: names among
    ``sd_...|g``, ``cor_...|g``, ``sigma`` and the fixed effects, or the
    groups ``"theta_"`` (all variance parameters) and ``"beta_"``).  For a
    GLMM the deviance is the fit's Laplace or quadrature approximation
    (module :mod:`multilevel.glmm.devfun`), minimised over the other
    variance parameters, the fixed effects and the family's parameters."""
    from scipy import stats  # imported when used (0.5 s)

    if hasattr(fit, "thresholds"):
        raise ModelError(
            "likelihood profiles of an ordinal model are not available; use "
            "confint(fit, method='Wald')"
        )
    if not 0 < level < 1:
        raise ModelError(f"level must be between 0 and 1, not {level}")
    space = _GlmmSpace(fit) if hasattr(fit, "family") else _LmmSpace(fit)
    allnames = space.names
    if which is None:
        chosen = allnames
    else:
        want = [which] if isinstance(which, str) else list(which)
        chosen = []
        for w in want:
            if w == "theta_":
                chosen += space.variance_names
            elif w == "beta_":
                chosen += space.fixef_names
            elif w in allnames:
                chosen.append(w)
            else:
                raise ModelError(f"no parameter {w!r}; the parameters are {allnames}")
    cutoff = float(stats.norm.ppf(0.5 + level / 2))
    zmax = max(float(stats.norm.ppf(1 - alpha_max / 2)), cutoff * 1.05)
    traces: dict[str, pd.DataFrame] = {}
    rows = []
    for name in allnames:
        if name not in chosen:
            continue
        prof, nuis_names = space.profiler(name)
        lo = prof.walk(-1, cutoff, zmax)
        hi = prof.walk(+1, cutoff, zmax)
        rows.append((name, lo, hi))
        traces[name] = prof.trace.frame(nuis_names)
    pct = [f"{100 * (0.5 - level / 2):.3g} %", f"{100 * (0.5 + level / 2):.3g} %"]
    ci = pd.DataFrame([r[1:] for r in rows], index=[r[0] for r in rows], columns=pct)
    return Profile(traces, ci, level)


def _coordinate_profiler(dev_all, z_hat, lower, upper, scale, dmin, j, names, lo_v, step0):
    """The profile of coordinate j of a deviance over a parameter vector z,
    all other coordinates being the nuisance parameters."""
    k = len(z_hat)
    others = np.array([i for i in range(k) if i != j], dtype=int)

    def dev(v: float, x: np.ndarray) -> float:
        z = np.empty(k)
        z[j] = v
        z[others] = x
        return dev_all(z)

    prof = _Profiler(
        dev,
        z_hat[j],
        z_hat[others],
        lower[others],
        upper[others],
        scale[others],
        dmin,
        lo_v,
        upper[j],
        names[j],
        step0,
    )
    return prof, [names[i] for i in others]


class _LmmSpace:
    """An LMM's parameters: ψ = (sd, cor, σ) with β profiled out, and the fixed
    effects by the closed form of the module docstring."""

    def __init__(self, fit: LmerFit):
        from multilevel.inference.anova import refit_ml

        with warnings.catch_warnings():
            # the ML refit of a singular REML fit is singular too: already reported
            warnings.simplefilter("ignore", SingularFitWarning)
            self.m = refit_ml(fit)
        self.vp = VarianceParams(self.m)
        self.theta_hat = np.asarray(self.m.optinfo.theta, dtype=float)
        self.psi_hat = self.vp.psi(self.theta_hat, self.m.sigma)
        self.dmin = self.vp.deviance(self.psi_hat)
        self.variance_names = self.vp.names
        self.fixef_names = list(self.m.fixef.index)
        self.names = self.variance_names + self.fixef_names

    def profiler(self, name: str):
        if name in self.fixef_names:
            return _fixef_profiler(self.m, self.fixef_names.index(name), self.theta_hat, self.dmin)
        vp, psi_hat = self.vp, self.psi_hat
        j = vp.names.index(name)
        sigma = psi_hat[-1]
        scale = np.where(
            vp.kinds == "cor", 0.5, np.where(psi_hat > 0, np.abs(psi_hat), 0.1 * sigma)
        )
        lo_v = vp.lower[j] if vp.kinds[j] != "sigma" else 1e-12 * sigma
        step0 = 0.05 * scale[j] if vp.kinds[j] != "cor" else 0.05
        return _coordinate_profiler(
            vp.deviance, psi_hat, vp.lower, vp.upper, scale, self.dmin, j, vp.names, lo_v, step0
        )


class _GlmmSpace:
    """A GLMM's parameters z = (sd, cor; β; the family's free values) and its
    approximate deviance; every coordinate but the profiled one is a nuisance."""

    def __init__(self, fit):
        self.dv = fit.devfun()
        self.vp = VarianceParams(fit)
        psi = self.vp.psi(np.asarray(fit.theta, dtype=float))
        beta = fit.fixef.to_numpy(dtype=float)
        free = self.dv.free0
        self.k, self.p = psi.size, beta.size
        self.z_hat = np.concatenate([psi, beta, free])
        self.variance_names = self.vp.names
        self.fixef_names = list(fit.fixef.index)
        self.names = self.variance_names + self.fixef_names
        self._all = self.names + [f"family_{i + 1}" for i in range(free.size)]
        inf = np.full(self.p + free.size, np.inf)
        self.lower = np.concatenate([self.vp.lower, -inf])
        self.upper = np.concatenate([self.vp.upper, inf])
        se = fit.se.to_numpy(dtype=float)
        se = np.where(np.isfinite(se) & (se > 0), se, 1.0)
        sd_scale = np.where(psi > 0, np.abs(psi), 0.1)
        self.scale = np.concatenate(
            [np.where(self.vp.kinds == "cor", 0.5, sd_scale), se, np.ones(free.size)]
        )
        self.dmin = self.deviance(self.z_hat)

    def deviance(self, z: np.ndarray) -> float:
        th = self.vp.theta(z[: self.k])
        if th is None:
            return np.inf
        return self.dv(th, z[self.k : self.k + self.p], z[self.k + self.p :])

    def profiler(self, name: str):
        j = self.names.index(name)
        if j < self.k:
            cor = self.vp.kinds[j] == "cor"
            step0 = 0.05 if cor else 0.05 * self.scale[j]
        else:
            step0 = 0.5 * self.scale[j]
        return _coordinate_profiler(
            self.deviance,
            self.z_hat,
            self.lower,
            self.upper,
            self.scale,
            self.dmin,
            j,
            self._all,
            self.lower[j],
            step0,
        )


def _fixef_profiler(m: LmerFit, j: int, theta_hat: np.ndarray, dmin: float):
    crit = m.criterion
    n, p = m.nobs, len(m.fixef)
    slw = float(getattr(crit, "sum_log_w", 0.0))
    lower = np.concatenate([t.lower_bounds() for t in crit.tmpl])
    upper = np.full(lower.size, np.inf)
    ej = np.zeros(p)
    ej[j] = 1.0

    def dev(b: float, th: np.ndarray) -> float:
        f = crit.factor(np.asarray(th, dtype=float))
        if f is None:
            return np.inf
        LX = f.LFF[:p, :p]
        w = sla.solve_triangular(LX, ej, lower=True, check_finite=False)  # L⁻¹eⱼ
        beta = sla.solve_triangular(LX.T, f.LFF[p, :p], lower=False, check_finite=False)
        r2b = f.r2 + (b - beta[j]) ** 2 / (w @ w)
        return f.logdet_Z + n * (1.0 + _LOG2PI + np.log(r2b / n)) - slw

    scale = np.maximum(np.abs(theta_hat), 0.1)
    se = float(m.se.iloc[j])
    prof = _Profiler(
        dev,
        float(m.fixef.iloc[j]),
        theta_hat,
        lower,
        upper,
        scale,
        dmin,
        -np.inf,
        np.inf,
        m.fixef.index[j],
        0.5 * se,
    )
    return prof, list(m.theta.index)


@one_blas_thread
def confint(
    fit: LmerFit,
    method: str = "profile",
    level: float = 0.95,
    which: list[str] | str | None = None,
    **kwargs,
) -> pd.DataFrame:
    """Confidence intervals (lme4's ``confint``).

    ``method="profile"``: likelihood-profile intervals of the SDs,
    correlations, σ and fixed effects (see :func:`profile`);
    ``"wald"``: β̂ ± z·SE for the fixed effects;
    ``"boot"``: percentile intervals from :func:`multilevel.inference.bootstrap.bootstrap`
    (keyword arguments nsim, seed, ... are passed on).
    """
    from scipy import stats  # imported when used (0.5 s)

    meth = method.lower()
    if hasattr(fit, "thresholds") and meth != "wald":
        raise ModelError(
            f"method={method!r} intervals are not available for an ordinal model; use "
            "method='Wald' (fixed effects and thresholds)"
        )
    if meth == "wald" and hasattr(fit, "thresholds"):  # an ordinal model: thresholds too
        out = fit.confint(level=level)
        return out if which is None else out.loc[[which] if isinstance(which, str) else list(which)]
    if meth == "profile":
        return profile(fit, which=which, level=level).ci
    if meth == "wald":
        z = stats.norm.ppf(0.5 + level / 2)
        est, se = fit.fixef, fit.se
        pct = [f"{100 * (0.5 - level / 2):.3g} %", f"{100 * (0.5 + level / 2):.3g} %"]
        out = pd.DataFrame({pct[0]: est - z * se, pct[1]: est + z * se})
        if which is not None:
            out = out.loc[[which] if isinstance(which, str) else list(which)]
        return out
    if meth == "boot":
        from multilevel.inference.bootstrap import bootstrap

        return bootstrap(fit, **kwargs).confint(level=level)
    raise ModelError(f"method must be 'profile', 'wald' or 'boot', not {method!r}")


__all__ = ["Profile", "ProfileTrace", "confint", "profile"]
