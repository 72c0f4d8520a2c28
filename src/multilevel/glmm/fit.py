"""``glmer``: generalized linear mixed models by Laplace, adaptive Gauss–Hermite
quadrature (AGQ) or Monte Carlo integration.

Model: yᵢ | b ~ family(μᵢ), g(μᵢ) = ηᵢ = offsetᵢ + xᵢᵀβ + zᵢᵀb, b = Λ(θ)u,
u ~ N(0, I).  The marginal likelihood

    L(θ, β) = ∫ Πᵢ f(yᵢ | ηᵢ(u)) φ(u) du

is approximated at the conditional mode ũ(θ, β) found by PIRLS
(:mod:`multilevel.glmm.pirls`):

* Laplace (nAGQ = 1): −2 log L ≈ −2 Σ log f(yᵢ | η̃ᵢ) + ‖ũ‖² + log|L|²;
* AGQ (nAGQ > 1, one random-effects term, scalar or vector):
  :mod:`multilevel.glmm.quadrature`;
* Monte Carlo (``method="mc"``): importance sampling with common random
  numbers, :mod:`multilevel.glmm.montecarlo`.

Optimisation.  With a canonical link and scalar terms, or one vector term
(Laplace; one scalar term also AGQ), the deviance comes with its exact
gradient in (θ, β) (:mod:`multilevel.glmm.exact.scalar`,
:mod:`multilevel.glmm.exact.laplace`, :mod:`multilevel.glmm.exact.vector`) and BFGS
searches (θ, β) together (:mod:`multilevel.glmm.exact.search`); a search that
ends unconverged, or at a zero variance that is not a minimum, is handed to
the route every other model takes, lme4's: first θ with β inside PIRLS
(lme4's nAGQ = 0 stage), then (θ, β) together by BOBYQA with the chosen
integration, β whitened, β = β₀ + R⁻¹δ, so that the parameters have
comparable scales.  Standard errors come, as lme4's, from the Hessian of the
approximated deviance in (θ, β) (differences of the exact gradient, or
central differences of the deviance): vcov(β̂) = the β block of 2 H⁻¹.

One log-likelihood for every method.  ``loglik`` is always the *full*
marginal log-likelihood, normalising constants of the density included
(binomial coefficients log C(nᵢ, kᵢ), −log yᵢ! for Poisson), so that Laplace,
AGQ and Monte Carlo values of one model compare directly, and compare with
lme4's Laplace ``logLik`` and glmmTMB's.  lme4 1.1-31 leaves out the
saturated-model term Σ log f(yᵢ | μᵢ = yᵢ) from its AGQ (nAGQ > 1)
log-likelihood: for a binomial-with-trials or Poisson response

    lme4's AGQ logLik = our loglik − Σᵢ log f(yᵢ | μᵢ = yᵢ)

(``fit.saturated_loglik``); e.g. cbpp, where lme4 prints −2 logLik 184.05 for
nAGQ = 1 and 100.01 for nAGQ = 25, the difference being 2 × 41.978, twice that
constant, not the integration.  For 0/1 responses the term is 0.
``deviance`` is −2 × loglik (the column summary() prints).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from multilevel.covariance import templates
from multilevel.errors import ConvergenceWarning, ModelError, SingularFitWarning
from multilevel.formula.design import build_design
from multilevel.formula.parser import parse_formula
from multilevel.glmm.exact import laplace as laplace_gradient
from multilevel.glmm.exact import link as link_glmm
from multilevel.glmm.exact import scalar as scalar_glmm
from multilevel.glmm.exact import vector as vector_glmm
from multilevel.glmm.families import Family, get_family
from multilevel.glmm.montecarlo import DEFAULT_DF, Draws, mc_loglik, warn_degenerate
from multilevel.glmm.pirls import Mode, PirlsError, PirlsProblem, RandomBlocks
from multilevel.glmm.quadrature import agq_deviance
from multilevel.glmm.results import GlmerFit
from multilevel.optimize.theta import BOUNDARY_TOL, GRAD_TOL, OptRecord, minimize_theta
from multilevel.threads import single_threaded_blas

METHODS = ("laplace", "agq", "mc")
MAX_NODES = 20_000  # nAGQ^q nodes per level
EXACT_GRADIENT = True  # the exact-gradient routes (see the module docstring)
NOT_PD_MESSAGE = (
    "the Hessian of the deviance is not positive definite at the optimum: the "
    "likelihood is flat or unbounded in some direction (complete separation of a "
    "binary response, or an unidentifiable fixed effect?)"
)
BOBYQA_BUDGET = 10  # × (parameters + 1): BOBYQA evaluations before Newton steps take over


def fit_glmer(
    formula: str,
    data: Any,
    family: str | Family = "binomial",
    nAGQ: int = 1,
    *,
    weights: Any = None,
    offset: Any = None,
    levels: dict[str, list] | None = None,
    na_action: str = "omit",
    method: str | None = None,
    mc_samples: int = 1000,
    seed: int | None = 1,
    mc_df: float = DEFAULT_DF,
    namespace: dict | None = None,
) -> GlmerFit:
    """In-memory ``glmer`` (:func:`multilevel.api.glmer` checks and dispatches)."""
    parsed = parse_formula(formula)
    if not parsed.random:
        raise ModelError(
            f"no random-effects terms in {formula!r}; add e.g. (1 | group), or use a GLM"
        )
    fam = get_family(family)
    meth = resolve_method(method, nAGQ)
    if meth == "agq" and len(parsed.random) > 1:
        raise ModelError(
            f"nAGQ > 1 (adaptive quadrature) needs a single random-effects term; the model "
            f"has {len(parsed.random)} ({', '.join(t.text for t in parsed.random)}). Use "
            "nAGQ=1 (Laplace) or method='mc'"
        )
    if meth == "mc" and (int(mc_samples) != mc_samples or mc_samples < 2):
        raise ModelError(f"mc_samples must be a whole number of at least 2, not {mc_samples!r}")
    design = build_design(
        parsed,
        data,
        weights=weights,
        offset=offset,
        levels=levels,
        na_action=na_action,
        namespace=namespace,
        numeric_response=False,
        check_nobs=False,
    )
    resp = fam.response(design.response, design.weights, parsed.response.label)
    if meth == "agq":
        q = design.random[0].q
        if nAGQ**q > MAX_NODES:
            raise ModelError(
                f"nAGQ = {nAGQ} with {q} random effects per level needs {nAGQ**q} nodes per "
                f"level (limit {MAX_NODES}); use fewer nodes"
            )
    with single_threaded_blas():
        return fit_glmm(
            design,
            fam,
            resp,
            nAGQ=int(nAGQ),
            method=meth,
            mc_samples=int(mc_samples),
            seed=seed,
            mc_df=float(mc_df),
            data_name=_data_name(data),
        )


def _data_name(data: Any) -> str:
    return getattr(data, "attrs", {}).get("name", "data") if hasattr(data, "attrs") else "data"


def resolve_method(method: str | None, nAGQ: Any) -> str:
    if isinstance(nAGQ, bool) or not isinstance(nAGQ, (int, np.integer)) or nAGQ < 0:
        raise ModelError(f"nAGQ must be a whole number >= 0, not {nAGQ!r}")
    if method is None:
        return "agq" if nAGQ > 1 else "laplace"
    m = str(method).lower()
    m = {"montecarlo": "mc", "monte carlo": "mc", "importance": "mc", "quadrature": "agq"}.get(m, m)
    if m not in METHODS:
        raise ModelError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if m == "agq" and nAGQ < 2:
        raise ModelError("method='agq' needs nAGQ >= 2 quadrature nodes")
    if m != "agq" and nAGQ > 1:
        raise ModelError(f"nAGQ = {nAGQ} is for method='agq', not method={method!r}")
    return m


# --------------------------------------------------------------------------- objective


class StagedObjective:
    """What both fitting stages share, in memory or over partitions: stage 1
    optimises θ with β inside PIRLS (``joint_mode``); stage 2 optimises
    (θ, δ) with β = β₀ + R⁻¹δ (whitened fixed effects)."""

    ntheta: int
    beta: np.ndarray
    beta0: np.ndarray
    Rinv: np.ndarray

    def joint_mode(self, theta: np.ndarray, beta: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    def stage1(self, theta: np.ndarray) -> float:
        try:
            m = self.joint_mode(theta, self.beta)
        except PirlsError:
            return math.inf
        self.beta = m.beta
        return m.laplace

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[: self.ntheta], self.beta0 + self.Rinv @ x[self.ntheta :]

    def natural(self, x: np.ndarray) -> np.ndarray:
        """(θ, δ) -> (θ, β)."""
        theta, beta = self.unpack(x)
        return np.concatenate([theta, beta])


class _Objective(StagedObjective):
    """Deviance functions of the two stages, with warm-started PIRLS."""

    def __init__(self, prob: PirlsProblem, method: str, nagq: int, draws: Draws | None):
        self.prob = prob
        self.method = method
        self.nagq = nagq
        self.draws = draws
        self.ntheta = sum(t.size for t in prob.tmpl)
        self.u: np.ndarray | None = None
        self.beta = prob.initial_beta()
        self.beta0 = self.beta.copy()
        self.Rinv = np.eye(prob.p)

    def mode(self, theta: np.ndarray, beta: np.ndarray, joint: bool) -> Mode:
        try:
            m = self.prob.mode(theta, beta, self.u, joint)
        except PirlsError:
            if self.u is None:
                raise
            m = self.prob.mode(theta, beta, None, joint)  # cold restart from u = 0
        self.u = m.u
        return m

    def joint_mode(self, theta: np.ndarray, beta: np.ndarray) -> Mode:
        return self.mode(theta, beta, joint=True)

    def deviance(self, m: Mode) -> float:
        if self.method == "laplace":
            return m.laplace
        if self.method == "agq":
            return agq_deviance(self.prob, m, self.nagq)
        return mc_loglik(self.prob, m, self.draws).deviance

    def stage2(self, x: np.ndarray) -> float:
        theta, beta = self.unpack(np.asarray(x, dtype=float))
        try:
            m = self.mode(theta, beta, joint=False)
        except PirlsError:
            return math.inf
        v = self.deviance(m)
        return v if np.isfinite(v) else math.inf


def hessian_stencil(x: np.ndarray, h: np.ndarray | float = 1e-3) -> list[np.ndarray]:
    """The points :func:`fd_hessian` evaluates around x, in its order: x ± hₐeₐ for
    every a, then x ± (hₐeₐ + h_b e_b) for every pair a < b (d² + d points)."""
    d = x.size
    h = np.broadcast_to(np.asarray(h, dtype=float), (d,))
    pts = []
    for a in range(d):  # parameters, not rows or groups
        e = np.zeros(d)
        e[a] = h[a]
        pts += [x + e, x - e]
    for a in range(d):
        for b in range(a + 1, d):
            e = np.zeros(d)
            e[a], e[b] = h[a], h[b]
            pts += [x + e, x - e]
    return pts


def fd_hessian(
    fun, x: np.ndarray, h: np.ndarray | float = 1e-3, f0: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference Hessian and gradient of a scalar function from d² + d + 1
    evaluations (:func:`hessian_stencil`): with Sₐ± = f(x ± hₐeₐ),

        Hₐₐ = (Sₐ₊ − 2f₀ + Sₐ₋)/hₐ²,   gₐ = (Sₐ₊ − Sₐ₋)/(2hₐ),
        Hₐ_b = [f(x + hₐeₐ + h_b e_b) + f(x − hₐeₐ − h_b e_b) − 2f₀
                − hₐ²Hₐₐ − h_b²H_bb] / (2hₐh_b),

    each with O(h²) error (the second-order expansion along eₐ + e_b less its
    diagonal parts), half the evaluations of the four-point cross formula."""
    d = x.size
    h = np.broadcast_to(np.asarray(h, dtype=float), (d,))
    f0 = fun(x) if f0 is None else f0
    vals = iter([fun(pt) for pt in hessian_stencil(x, h)])
    H = np.zeros((d, d))
    g = np.zeros(d)
    for a in range(d):  # parameters, not rows or groups
        fp, fm = next(vals), next(vals)
        H[a, a] = (fp - 2 * f0 + fm) / h[a] ** 2
        g[a] = (fp - fm) / (2 * h[a])
    for a in range(d):
        for b in range(a + 1, d):
            fp, fm = next(vals), next(vals)
            curv = fp + fm - 2 * f0 - h[a] ** 2 * H[a, a] - h[b] ** 2 * H[b, b]
            H[a, b] = H[b, a] = curv / (2 * h[a] * h[b])
    return H, g


class _Logged:
    """Records every evaluation (natural parameters and value)."""

    def __init__(self, fun, to_natural):
        self.fun = fun
        self.to_natural = to_natural
        self.xs: list[np.ndarray] = []
        self.values: list[float] = []
        self.best_x: np.ndarray | None = None
        self.best = math.inf

    def __call__(self, x, grad=None) -> float:
        x = np.array(x, dtype=float)
        v = float(self.fun(x))
        self.xs.append(self.to_natural(x))
        self.values.append(v)
        if v < self.best:
            self.best, self.best_x = v, x
        return v if math.isfinite(v) else 1e300


def _bobyqa(
    fun: _Logged,
    x0: np.ndarray,
    lower: np.ndarray,
    step: np.ndarray,
    ftol: float,
    maxeval: int = 50_000,
) -> np.ndarray:
    import nlopt

    opt = nlopt.opt(nlopt.LN_BOBYQA, x0.size)
    opt.set_min_objective(fun)
    opt.set_lower_bounds(lower)
    opt.set_initial_step(step)
    opt.set_ftol_abs(ftol)
    opt.set_xtol_abs(1e-8)
    opt.set_maxeval(maxeval)
    try:
        opt.optimize(x0)
    except (nlopt.RoundoffLimited, RuntimeError, ValueError):
        pass  # the best point so far is kept by the logger
    return x0 if fun.best_x is None else fun.best_x.copy()


def _newton(logged: _Logged, x, fx, lower, hessian_step, maxit: int):
    """Projected Newton steps with central-difference Hessians from x until the
    Newton decrement is below 1e-9 (``done``) or a step fails."""
    H = g = None
    status = "CONVERGED"
    for _ in range(maxit):  # Newton iterations
        H, g = fd_hessian(logged, x, hessian_step, fx)
        free = ~((x <= lower) & (g >= 0))
        idx = np.flatnonzero(free)
        try:
            c = np.linalg.cholesky(H[np.ix_(idx, idx)])
        except np.linalg.LinAlgError:
            return x, fx, H, g, "HESSIAN_NOT_PD", False
        s = np.zeros_like(x)
        s[idx] = -np.linalg.solve(c.T, np.linalg.solve(c, g[idx]))
        decrement = float(-0.5 * g @ s)
        if decrement < 1e-9:
            return x, fx, H, g, status, True
        for t in (1.0, 0.5, 0.25, 0.1):
            trial = np.maximum(x + t * s, lower)
            ft = logged(trial)
            if ft < fx:
                x, fx = trial, ft
                break
        else:
            return x, fx, H, g, status, False
    return x, fx, H, g, status, False


def optimize_stage2(
    fun,
    x0: np.ndarray,
    lower: np.ndarray,
    ntheta: int,
    to_natural,
    hessian_step: np.ndarray | float = 1e-3,
) -> tuple[OptRecord, np.ndarray | None]:
    """Minimise the stage-2 deviance over (θ, δ): BOBYQA to about 1e-6 deviance
    units (or at most 10(d + 1) evaluations), then Newton steps with a
    central-difference Hessian (steps ``hessian_step``, the parameters being on
    unit scales) until the Newton decrement is below 1e-9; when BOBYQA was cut
    short and the Newton steps fail, BOBYQA to its end and Newton again.
    Returns the record and the last Hessian (at the optimum, or where the
    Newton steps stopped)."""
    logged = _Logged(fun, to_natural)
    step = np.concatenate(
        [0.25 * np.maximum(np.abs(x0[:ntheta]), 0.5), np.full(x0.size - ntheta, 0.5)]
    )
    # BOBYQA's last digits cost many evaluations when stage 1 ends far from the
    # optimum (large data); a few Newton steps (d² + d + 1 evaluations each) finish
    # faster.  If they do not reach the optimum, BOBYQA runs to its end after all.
    budget = BOBYQA_BUDGET * (x0.size + 1)
    x = _bobyqa(logged, x0, lower, step, 1e-7, budget)
    truncated = len(logged.values) >= budget
    x, fx, H, g, status, done = _newton(
        logged, x, logged.best, lower, hessian_step, 4 if truncated else 6
    )
    if truncated and not done:
        x = _bobyqa(logged, x, lower, step, 1e-7)
        x, fx, H, g, status, done = _newton(logged, x, logged.best, lower, hessian_step, 6)
    # variances that BOBYQA left just above their bound: put them on it when that
    # does not raise the deviance (a singular fit is reported as such)
    near = np.isfinite(lower) & (x > lower) & (x - lower < BOUNDARY_TOL)
    if near.any():
        trial = np.where(near, lower, x)
        ft = logged(trial)
        if ft <= fx + 1e-10 * (1 + abs(fx)):
            x, fx = trial, ft
            g = np.where(near, 0.0, g)
    free = ~((x <= lower) & (g >= 0))
    gmax = float(np.max(np.abs(g[free]))) if free.any() else 0.0
    messages = []
    converged = status == "CONVERGED"
    if not converged:
        messages.append(NOT_PD_MESSAGE)
    if gmax > GRAD_TOL:
        converged = False
        messages.append(
            f"Model failed to converge: largest |gradient| of the free parameters is "
            f"{gmax:.3g} (tolerance {GRAD_TOL}); try rescaling covariates or a simpler "
            "random-effects structure"
        )
    rec = OptRecord(
        "bobyqa+newton",
        status,
        converged,
        len(logged.values),
        fx,
        x,
        g,
        messages,
        logged.xs,
        logged.values,
    )
    return rec, H


def _exact_route(family: Family, rs: list, method: str, nAGQ: int) -> str | None:
    """The exact-gradient search that fits this model, if any (module docstring)."""
    if not EXACT_GRADIENT or method == "mc" or nAGQ < 1:
        return None
    nterms, q0 = len(rs), rs[0].q
    laplace = method == "laplace" and nAGQ == 1
    if scalar_glmm.supported(family, nterms, q0):
        return "groupwise"
    if vector_glmm.supported(family, nterms, q0):
        return "vector"
    if laplace and laplace_gradient.supported(family, [r.q for r in rs], [r.nlevels for r in rs]):
        return "terms"
    if link_glmm.supported(family, nterms, q0):
        return "link"
    return None


def _exact_search(route: str, prob, obj, nAGQ: int, theta0: np.ndarray, lower_t: np.ndarray):
    """The exact-gradient search of ``route`` (groupwise, vector, terms, link),
    its record in natural coordinates and its Hessian; not converged when the
    Hessian is not positive definite or a zero variance is not a minimum."""
    with np.errstate(over="ignore", under="ignore"):
        if route == "groupwise":
            r2, H2, obj.beta0, obj.Rinv, obj.u = scalar_glmm.optimize_groupwise(
                prob, nAGQ, obj.beta, float(theta0[0])
            )
        elif route == "vector":
            r2, H2, obj.beta0, obj.Rinv, obj.u = vector_glmm.optimize_vector(
                prob, obj.beta, theta0, lower_t, nAGQ
            )
        elif route == "link":
            r2, H2, obj.beta0, obj.Rinv, obj.u = link_glmm.optimize_link(
                prob, obj.beta, float(theta0[0]), nAGQ
            )
        else:
            r2, H2, obj.beta0, obj.Rinv, obj.u = laplace_gradient.optimize_laplace(
                prob, obj.beta, theta0
            )
    r2._thetas = [obj.natural(x) for x in r2._thetas]
    r2.optimizer = "bfgs (exact gradient)"
    if not _positive_definite(H2, r2.theta, lower_t):
        r2.status, r2.converged = "HESSIAN_NOT_PD", False
        r2.messages.append(NOT_PD_MESSAGE)
    elif H2 is not None:
        # a scalar θ_k = 0 is stationary by symmetry; it is a minimum only if
        # the deviance curves up from it
        nt = lower_t.size
        at0 = r2.theta[:nt] <= lower_t
        curv = np.diag(H2)[:nt]
        if np.any(at0 & (curv < -1e-6 * max(1.0, float(np.max(np.abs(curv)))))):
            r2.status, r2.converged = "BOUNDARY_NOT_MINIMUM", False
            r2.messages.append(
                "a variance estimated as 0 is not a minimum of the deviance (it "
                "falls as the variance grows)"
            )
    return r2, H2


def _positive_definite(H: np.ndarray | None, x: np.ndarray, lower_t: np.ndarray) -> bool:
    """Whether H is clearly positive definite over the parameters off their
    bounds: its smallest eigenvalue above 1e-8 of the largest (a likelihood
    flat to rounding in some direction, as under separation, is not)."""
    if H is None:
        return False
    free = np.ones(x.size, dtype=bool)
    free[: lower_t.size] = x[: lower_t.size] > lower_t
    lam = np.linalg.eigvalsh(H[np.ix_(free, free)])
    return bool(lam.size == 0 or lam[0] > 1e-8 * max(lam[-1], 0.0))


def vcov_from_hessian(H: np.ndarray | None, ntheta: int) -> tuple[np.ndarray | None, str]:
    """2 H⁻¹ in the stage-2 coordinates (θ, δ); its δ block alone when H is not
    positive definite (e.g. a variance on its boundary)."""
    if H is None:
        return None, "none"
    H = 0.5 * (H + H.T)
    try:
        np.linalg.cholesky(H)
        return 2.0 * np.linalg.inv(H), "hessian"
    except np.linalg.LinAlgError:
        pass
    Hb = H[ntheta:, ntheta:]
    try:
        np.linalg.cholesky(Hb)
    except np.linalg.LinAlgError:
        return None, "none"
    V = np.full_like(H, np.nan)
    V[ntheta:, ntheta:] = 2.0 * np.linalg.inv(Hb)
    return V, "hessian-beta"


# --------------------------------------------------------------------------- fit


def fit_glmm(
    design,
    family: Family,
    resp,
    *,
    nAGQ: int = 1,
    method: str = "laplace",
    mc_samples: int = 1000,
    seed: int | None = 1,
    mc_df: float = DEFAULT_DF,
    data_name: str = "data",
) -> GlmerFit:
    """Order terms (lme4: by decreasing levels), sort rows by the first grouping
    factor, then the two optimisation stages and the Hessian."""
    order = sorted(range(len(design.random)), key=lambda k: -design.random[k].nlevels)
    design.random = [design.random[k] for k in order]
    rs = design.random
    # rows sorted by the first factor: its per-level sums become contiguous reductions
    perm = np.argsort(rs[0].codes, kind="stable")
    rb = RandomBlocks([r.Z[perm] for r in rs], [r.codes[perm] for r in rs], [r.nlevels for r in rs])
    tmpl = templates([r.q for r in rs])
    offset = None if design.offset is None else design.offset[perm]
    prob = PirlsProblem(family, resp.take(perm), design.X[perm], offset, rb, tmpl)
    draws = Draws(prob, mc_samples, seed, mc_df) if method == "mc" else None
    obj = _Objective(prob, method, nAGQ, draws)

    theta0 = np.concatenate([t.initial() for t in tmpl])
    lower_t = np.concatenate([t.lower_bounds() for t in tmpl])
    lower = np.concatenate([lower_t, np.full(prob.p, -np.inf)])

    def two_stage():
        """lme4's route: θ with β inside PIRLS, then (θ, δ) by BOBYQA + Newton."""
        with np.errstate(over="ignore", under="ignore"):
            # stage 1 is only stage 2's start unless nAGQ = 0: Brent's (scalar θ) last
            # digits are not needed (BOBYQA's looser stop costs more polishing: kept)
            start_only = theta0.size == 1 and not (nAGQ == 0 and method == "laplace")
            tol = 1e-5 if start_only else 1e-8
            r1 = minimize_theta(obj.stage1, theta0, lower_t, xtol=tol, ftol=tol)
        try:
            m1 = obj.mode(r1.theta, obj.beta, joint=True)
        except PirlsError as exc:
            raise ModelError(pirls_message(exc)) from None
        if nAGQ == 0 and method == "laplace":
            return r1, m1, None, None
        obj.beta0 = m1.beta.copy()
        obj.Rinv = np.linalg.inv(m1.factor.LFF).T  # β = β₀ + L⁻ᵀδ: δ has unit scale
        x0 = np.concatenate([r1.theta, np.zeros(prob.p)])
        with np.errstate(over="ignore", under="ignore"):
            r2, H2 = optimize_stage2(obj.stage2, x0, lower, obj.ntheta, obj.natural)
        return r1, m1, r2, H2

    rec1 = mode1 = rec2 = H = None
    route = _exact_route(family, rs, method, nAGQ)
    if route is not None:
        rec2, H = _exact_search(route, prob, obj, nAGQ, theta0, lower_t)
        if not rec2.converged:
            # the BFGS search can stall where the deviance is far from quadratic
            # (a variance driven towards 0 early): lme4's route decides, and the
            # lower deviance is kept
            kept = (rec2, H, obj.beta0, obj.Rinv, obj.u)
            obj.u = None
            try:
                alt = two_stage()
            except ModelError:
                alt = None
            better = alt is not None and (
                alt[2].criterion < rec2.criterion - 1e-8
                or (alt[2].converged and alt[2].criterion <= rec2.criterion + 1e-8)
            )
            if better:
                rec1, mode1, rec2, H = alt
            else:
                rec2, H, obj.beta0, obj.Rinv, obj.u = kept
    else:
        rec1, mode1, rec2, H = two_stage()
    hess = None
    if rec2 is None:  # nAGQ = 0: stage 1 only
        mode = mode1
        x_hat = np.concatenate([rec1.theta, np.zeros(prob.p)])
        vcov = _conditional_vcov(mode1)
        vcov_note = "conditional"
    else:
        x_hat = rec2.theta
        # the record in natural coordinates (θ, β): δ = R(β − β₀), ∂/∂β = Rᵀ∂/∂δ
        J = np.eye(x_hat.size)
        J[obj.ntheta :, obj.ntheta :] = np.linalg.inv(obj.Rinv)
        rec2.theta = obj.natural(x_hat)
        rec2.gradient = J.T @ rec2.gradient
        theta_hat, beta_hat = obj.unpack(x_hat)
        try:
            mode = obj.mode(theta_hat, beta_hat, joint=False)
        except PirlsError as exc:
            raise ModelError(pirls_message(exc)) from None
        Vx, vcov_note = vcov_from_hessian(H, obj.ntheta)
        if H is not None:
            hess = J.T @ H @ J
        if Vx is not None:
            vcov = obj.Rinv @ Vx[obj.ntheta :, obj.ntheta :] @ obj.Rinv.T
        elif rec1 is not None:
            vcov = _conditional_vcov(mode1)
        else:
            vcov = _conditional_vcov(obj.joint_mode(theta_hat, beta_hat))
    theta_hat = x_hat[: obj.ntheta]
    with np.errstate(over="ignore", under="ignore"):
        if method == "laplace":
            dev = mode.laplace
            mc = None
        elif method == "agq":
            dev = agq_deviance(prob, mode, nAGQ)
            mc = None
        else:
            mc = mc_loglik(prob, mode, draws)
            dev = mc.deviance
            warn_degenerate(mc, stacklevel=4)
    fit = GlmerFit(
        design=design,
        family=family,
        prob=prob,
        perm=perm,
        mode=mode,
        theta=theta_hat,
        vcov=vcov,
        vcov_note=vcov_note,
        deviance=float(dev),
        method=method,
        nAGQ=nAGQ,
        mc=mc,
        optinfo=rec2 if rec2 is not None else rec1,
        stage1=rec1,
        hessian=hess,
        data_name=data_name,
    )
    for msg in fit.optinfo.messages:
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    if vcov_note not in ("hessian", "conditional"):
        warnings.warn(fit.vcov_message, ConvergenceWarning, stacklevel=3)
    if fit.singular:
        warnings.warn(fit.singular_message, SingularFitWarning, stacklevel=3)
    return fit


def _conditional_vcov(mode: Mode) -> np.ndarray:
    """(R_XᵀR_X)⁻¹ from a joint PIRLS factor: the covariance of β conditional on θ."""
    Linv = np.linalg.inv(mode.factor.LFF)
    return Linv.T @ Linv


def pirls_message(exc: Exception) -> str:
    return (
        f"PIRLS failed to find the conditional modes of the random effects at the estimates "
        f"({exc}); the model may be overparameterised (e.g. complete separation of a "
        "binary response) — simplify the random effects or rescale covariates"
    )


__all__ = ["fit_glmer", "fit_glmm", "fd_hessian", "hessian_stencil", "optimize_stage2"]
