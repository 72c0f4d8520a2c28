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
(Laplace; one scalar term also AGQ), and with probit or cloglog links for
scalar terms or one vector term, the deviance comes with its exact
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
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from multilevel.covariance import templates
from multilevel.errors import ModelError
from multilevel.formula.design import build_design
from multilevel.formula.parser import parse_formula
from multilevel.glmm.basis import GlmmBasis, _Then
from multilevel.glmm.exact import laplace as laplace_gradient
from multilevel.glmm.exact import link as link_glmm
from multilevel.glmm.exact import scalar as scalar_glmm
from multilevel.glmm.exact import vector as vector_glmm
from multilevel.glmm.exact.start import moment_theta
from multilevel.glmm.families import Family, get_family
from multilevel.glmm.montecarlo import DEFAULT_DF, Draws, mc_loglik, warn_degenerate
from multilevel.glmm.pirls import Mode, PirlsError, PirlsProblem, RandomBlocks
from multilevel.glmm.quadrature import agq_deviance
from multilevel.glmm.results import GlmerFit
from multilevel.glmm.stages import (
    StagedObjective,
    conditional_vcov,
    pirls_message,
    run_stages,
    stage2_estimates,
)
from multilevel.mixedfit import warn_about
from multilevel.optimize.stage2 import (
    NOT_PD_MESSAGE,
    positive_definite,
)
from multilevel.threads import single_threaded_blas

METHODS = ("laplace", "agq", "mc")
MAX_NODES = 20_000  # nAGQ^q nodes per level
MAX_NAGQ = 100  # nodes per dimension
EXACT_GRADIENT = True  # the exact-gradient routes (see the module docstring)


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
    hessian: str | None = None,
) -> GlmerFit:
    """In-memory ``glmer`` (:func:`multilevel.api.glmer` checks and dispatches)."""
    parsed = parse_formula(formula)
    if not parsed.random:
        raise ModelError(
            f"no random-effects terms in {formula!r}; add e.g. (1 | group), or use a GLM"
        )
    fam = get_family(family)
    hessian = resolve_hessian(hessian, fam)
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
    check_response(fam, resp, parsed.response.label)
    if meth == "agq":
        q = design.random[0].q
        if nAGQ > MAX_NAGQ:
            raise ModelError(
                f"nAGQ = {nAGQ} quadrature nodes; at most {MAX_NAGQ} are allowed (a few dozen "
                "already integrate a smooth likelihood to rounding)"
            )
        if nAGQ**q > MAX_NODES:
            raise ModelError(
                f"nAGQ = {nAGQ} with {q} random effects per level needs {nAGQ**q} nodes per "
                f"level (limit {MAX_NODES}); use fewer nodes"
            )
    with single_threaded_blas():
        try:
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
                hessian=hessian,
            )
        except PirlsError as exc:
            raise ModelError(pirls_message(exc)) from None


def check_response(family: Family, resp, label: str) -> None:
    """Responses with nothing to estimate, refused before any numerical work."""
    y = resp.y[resp.weights > 0]
    if y.size and family.name == "poisson" and np.all(y == 0):
        raise ModelError(
            f"the response {label!r} is 0 in every row: the Poisson mean is estimated as 0 "
            "(log-mean -inf), so there is nothing to fit"
        )
    if y.size and family.name == "binomial" and (np.all(y == 0) or np.all(y == 1)):
        which = "failures" if np.all(y == 0) else "successes"
        raise ModelError(
            f"the response {label!r} has only {which}: the probability is estimated as "
            f"{0 if which == 'failures' else 1} (logit -inf or +inf), so there is nothing to fit"
        )


HESSIANS = ("observed", "fisher")


def resolve_hessian(hessian: str | None, family: Family) -> str:
    """The Laplace curvature: the family's default (observed, as glmmTMB, for
    the families lme4 does not share; Fisher, as lme4, for binomial and
    Poisson) unless chosen."""
    if hessian is None:
        return family.hessian_default
    h = str(hessian).lower()
    if h not in HESSIANS:
        raise ModelError(f"hessian must be 'observed' or 'fisher', not {hessian!r}")
    return h


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


class _Objective(StagedObjective):
    """Deviance functions of the two stages, with warm-started PIRLS."""

    def __init__(self, prob: PirlsProblem, method: str, nagq: int, draws: Draws | None):
        self.prob = prob
        self.method = method
        self.nagq = nagq
        self.draws = draws
        self.ntheta = prob.nre + prob.family.nfree
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


def _exact_route(prob: PirlsProblem, rs: list, method: str, nAGQ: int) -> str | None:
    """The exact-gradient search that fits this model, if any (module docstring)."""
    family = prob.family
    if not EXACT_GRADIENT or method == "mc" or nAGQ < 1:
        return None
    nterms, q0 = len(rs), rs[0].q
    laplace = method == "laplace" and nAGQ == 1
    # the vector route first: it also takes one scalar term where its
    # compiled kernel is the faster (probit or cloglog, observed curvature)
    if vector_glmm.supported(family, nterms, q0, prob.hessian, laplace):
        return "vector"
    if scalar_glmm.supported(family, nterms, q0, prob.hessian):
        return "groupwise"
    qs, nlevels = [r.q for r in rs], [r.nlevels for r in rs]
    if laplace and laplace_gradient.supported(family, qs, nlevels, prob.hessian, prob.n):
        return "terms"
    if family.nfree or prob.observed:  # the link route: binomial, lme4's curvature
        return None
    if link_glmm.supported(family, nterms, q0):
        return "link"
    return None


@dataclass
class _Natural:
    """A logged point (θ, δ) as (θ, β), β = β₀ + R⁻¹δ; picklable."""

    nt: int
    beta0: np.ndarray
    Rinv: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return np.concatenate([x[: self.nt], self.beta0 + self.Rinv @ x[self.nt :]])


def _exact_search(route: str, prob, obj, nAGQ: int, theta0: np.ndarray, lower_t: np.ndarray):
    """The exact-gradient search of ``route`` (groupwise, vector, terms, link),
    its record in natural coordinates and its Hessian; not converged when the
    Hessian is not positive definite or a zero variance is not a minimum."""
    with np.errstate(over="ignore", under="ignore"):
        if route in ("groupwise", "terms", "vector"):
            t0 = moment_theta(prob, obj.beta)
            if t0 is not None:  # the random effects'; a family's parameter keeps its start
                theta0 = np.concatenate([t0, theta0[t0.size :]])
        if route == "groupwise":
            r2, H2, obj.beta0, obj.Rinv, obj.u = scalar_glmm.optimize_groupwise(
                prob, nAGQ, obj.beta, theta0, lower_t
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
                prob, obj.beta, theta0, lower_t
            )
    # the log maps (θ, δ) -> (θ, β) when read, not per evaluation
    to_natural = _Natural(obj.ntheta, obj.beta0.copy(), obj.Rinv.copy())
    r2.log_map = to_natural if r2.log_map is None else _Then(r2.log_map, to_natural)
    # Newton steps with the exact Hessian (one scalar term by Laplace), or BFGS
    newton = r2.optimizer == "newton (exact Hessian)"
    r2.optimizer = r2.optimizer if newton else "bfgs (exact gradient)"
    if not positive_definite(H2, r2.theta, lower_t):
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
    hessian: str = "fisher",
    result: type[GlmerFit] = GlmerFit,
) -> GlmerFit:
    """Order terms (lme4: by decreasing levels), sort rows by the first grouping
    factor, then the two optimisation stages and the Hessian."""
    order = sorted(range(len(design.random)), key=lambda k: -design.random[k].nlevels)
    design.random = [design.random[k] for k in order]
    rs = design.random
    # rows sorted by the first factor: its per-level sums become contiguous reductions
    perm = np.argsort(rs[0].codes, kind="stable")
    # fixed and random effects in a centred and scaled basis, X = X̃N, Z = Z̃V:
    # PIRLS and the searches see no timestamps or units of 1e-8; θ is searched
    # as θ̃ (T̃T̃ᵀ = V T Tᵀ Vᵀ), β as β̃ = Nβ, and both map back below
    basis = GlmmBasis.of(
        design.X,
        [r.Z for r in rs],
        ones=design.intercept_columns(),
        eta_scale=family.eta_scale(resp),
    )
    rb = RandomBlocks(
        [basis.scaled_Z(k, r.Z)[perm] for k, r in enumerate(rs)],
        [r.codes[perm] for r in rs],
        [r.nlevels for r in rs],
    )
    tmpl = templates([r.q for r in rs])
    offset = None if design.offset is None else design.offset[perm]
    prob = PirlsProblem(
        family, resp.take(perm), basis.scaled_X(design.X)[perm], offset, rb, tmpl, hessian
    )
    prob.start_family()  # the family's parameters, searched on unconstrained scales
    draws = Draws(prob, mc_samples, seed, mc_df) if method == "mc" else None
    obj = _Objective(prob, method, nAGQ, draws)

    theta0 = np.concatenate([t.initial() for t in tmpl] + [prob.family.free_values()])
    lower_t = np.concatenate([t.lower_bounds() for t in tmpl] + [np.full(family.nfree, -np.inf)])

    def two_stage():
        """lme4's route: θ with β inside PIRLS, then (θ, δ) by BOBYQA + Newton."""
        stage1_only = nAGQ == 0 and method == "laplace"
        # stage 1 is only stage 2's start unless nAGQ = 0: Brent's (scalar θ) last
        # digits are not needed (BOBYQA's looser stop costs more polishing: kept)
        start_only = theta0.size == 1 and not stage1_only
        st = run_stages(
            obj, theta0, lower_t, stage1_only=stage1_only, stage1_tol=1e-5 if start_only else 1e-8
        )
        return st.rec1, st.mode1, st.rec2, st.H

    rec1 = mode1 = rec2 = H = None
    route = _exact_route(prob, rs, method, nAGQ)
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
    dev = mc = None
    if rec2 is None:  # nAGQ = 0: stage 1 only
        mode = mode1
        x_hat = np.concatenate([rec1.theta, np.zeros(prob.p)])
        vcov = conditional_vcov(mode1.LFF)
        vcov_note = "conditional"
    else:
        x_hat = rec2.theta
        est = stage2_estimates(obj, rec2, H)
        if rec1 is None:
            # an exact-gradient search ends at its optimum with the deviance
            # evaluated there (the same approximation, by the same modes): the
            # PIRLS mode and factor behind the random effects and fitted
            # values are formed only when a result asks for them
            prob.set_params(est.theta)
            mode = LazyMode(prob, est.theta, est.beta, obj.u)
            dev = rec2.criterion
        else:
            try:
                mode = obj.mode(est.theta, est.beta, joint=False)
            except PirlsError as exc:
                raise ModelError(pirls_message(exc)) from None
        vcov, vcov_note, hess = est.vcov, est.vcov_note, est.hessian
        if vcov is None:
            m = mode1 if rec1 is not None else obj.joint_mode(est.theta, est.beta)
            vcov = conditional_vcov(m.LFF)
    theta_hat = x_hat[: obj.ntheta]
    if dev is None:
        with np.errstate(over="ignore", under="ignore"):
            if method == "laplace":
                dev = mode.laplace
            elif method == "agq":
                dev = agq_deviance(prob, mode, nAGQ)
            else:
                mc = mc_loglik(prob, mode, draws)
                dev = mc.deviance
                warn_degenerate(mc)
    theta_hat, vcov, hess = basis.to_original(tmpl, theta_hat, vcov, hess, (rec1, rec2))
    theta_hat = theta_hat[: prob.nre]  # the family's parameter is in prob.family
    fit = result(
        design=design,
        family=prob.family,
        prob=prob,
        perm=perm,
        mode=mode,
        basis=basis,
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
    # refit() (a simulated response, the bootstrap) fits again this way
    fit._engine = partial(
        fit_glmm,
        nAGQ=nAGQ,
        method=method,
        mc_samples=mc_samples,
        seed=seed,
        mc_df=mc_df,
        data_name=data_name,
        hessian=hessian,
        result=result,
    )
    flag_runaway_variances(fit)
    flag_runaway_parameter(fit)
    warn_about(fit)
    return fit


class LazyMode:
    """The conditional mode at an exact search's optimum, by PIRLS from the
    search's modes on first use of anything but β (``Mode``'s attributes)."""

    def __init__(self, prob: PirlsProblem, theta: np.ndarray, beta: np.ndarray, u):
        self.beta = np.asarray(beta, dtype=float)
        self._args = (prob, np.asarray(theta, dtype=float), None if u is None else u.copy())

    def __getattr__(self, name: str):
        if name.startswith("__") or "_args" not in self.__dict__:
            raise AttributeError(name)
        m = self.__dict__.get("_m")
        if m is None:
            prob, theta, u = self._args
            try:
                try:
                    m = prob.mode(theta, self.beta, u, False)
                except PirlsError:
                    if u is None:
                        raise
                    m = prob.mode(theta, self.beta, None, False)  # cold restart from u = 0
            except PirlsError as exc:
                raise ModelError(pirls_message(exc)) from None
            self._m = m
        return getattr(m, name)


def flag_runaway_parameter(fit: GlmerFit, mu: np.ndarray | None = None) -> None:
    """A family parameter at a limit of the family (the negative binomial θ
    running off to infinity on counts without overdispersion...) is not an
    optimum: the fit is not converged, and the message says what to fit.
    ``mu``: the fitted means (or their largest), by default ``fit.fitted``."""
    if type(fit.family).runaway is Family.runaway:  # a family without such a limit
        return
    msg = fit.family.runaway(fit.fitted.to_numpy() if mu is None else mu)
    if msg is not None:
        fit.optinfo.converged = False
        if msg not in fit.optinfo.messages:
            fit.optinfo.messages.insert(0, msg)


RUNAWAY_SD = 30.0  # a random effect's typical size on the link scale beyond which


def flag_runaway_variances(fit: GlmerFit) -> None:
    """A variance running off to infinity is not an optimum: with a response
    constant within groups (separation) the likelihood keeps rising as the
    random effects grow, and an optimiser stops wherever its tolerance says.
    A random effect whose standard deviation times its column's root mean
    square exceeds RUNAWAY_SD on the link scale (an odds or rate ratio beyond
    e^30 between typical groups) is reported, and the fit is not converged."""
    msgs = []
    scaled = getattr(fit.optinfo, "internal_theta", None) is not None
    # judged in the engine's basis, where each column has unit root mean square
    # (centred in a correlated term): a shifted slope covariate is not a runaway
    for r, T in zip(fit.design.random, fit._boundary_templates, strict=True):
        sd = np.sqrt(np.maximum(np.diag(T @ T.T), 0.0))
        if scaled or not r.Z.size:
            rms = np.ones(r.q)
        else:
            rms = np.sqrt(np.mean(r.Z**2, axis=0))
        for j in np.flatnonzero(sd * rms > RUNAWAY_SD):
            msgs.append(
                f"the standard deviation of {r.cnames[j]!r} in {r.term.text} runs off to "
                f"infinity ({sd[j] * rms[j]:.3g} on the link scale): the response is (nearly) "
                "constant within groups (separation), so the likelihood has no finite "
                "maximum; drop or simplify this term, or use a model with a prior"
            )
    if msgs:
        fit.optinfo.converged = False
        fit.optinfo.messages.extend(m for m in msgs if m not in fit.optinfo.messages)


__all__ = ["fit_glmer", "fit_glmm"]
