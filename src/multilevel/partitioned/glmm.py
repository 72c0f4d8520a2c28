"""GLMMs with one grouping factor on Dask data: partition-local PIRLS, Laplace
and adaptive quadrature, with the optimisation on the client.

With a single grouping factor g the random effects of different levels are
independent given (θ, β), so every quantity :func:`multilevel.glmer`
optimises is a sum over the levels l of g:

    Laplace:  −2 log L(θ, β) ≈ Σ_l [ −2 Σ_{i∈l} log f(yᵢ | η̃ᵢ) + ‖ũ_l‖² + log|L_l|² ],
    AGQ:      −2 log L(θ, β) = −2 Σ_l log L_l(θ, β)   (one quadrature per level),

where ũ_l(θ, β) is the level's conditional mode and L_l L_lᵀ = Λᵀ Z_lᵀ W Z_l Λ + I.
Hence:

1. a first pass agrees on the factor levels (:mod:`multilevel.partitioned.lmm`);
2. the data are shuffled once on the grouping columns, so that each level's
   rows live in one partition; each partition's design (frozen levels) and
   PIRLS problem are built once and persisted on the workers;
3. each evaluation of the deviance at (θ, β) runs PIRLS with β fixed on every
   partition and returns one number per partition, summed on the client.

The optimisation is :func:`multilevel.glmer`'s (lme4's two stages).  Stage 2
(θ and whitened β, BOBYQA then Newton steps with a central-difference
Hessian) only needs the deviance.  Stage 1 optimises θ with β at the *joint*
mode of the penalized deviance pdev(u, β) = −2 Σ log f + ‖u‖²; β couples the
partitions, so the joint mode is found by Newton steps on the profiled
penalized deviance F(β) = Σ_partitions min_u pdev:

    β ← β + (R_XᵀR_X)⁻¹ Xᵀ W r,   r = (y − μ)/μ'(η),
    R_XᵀR_X = XᵀWX − XᵀWZΛ(ΛᵀZᵀWZΛ + I)⁻¹ΛᵀZᵀWX,

the partitions returning Xᵀ W r and their share of R_XᵀR_X at their modes.
This is the joint PIRLS step with u first brought to its mode, so it has the
same fixed point (the joint mode) and the same R_X, which whitens β for stage 2.
The GLM start for β comes from IRLS passes summing XᵀWX and XᵀWz.

What moves over the network per evaluation: θ and β out, one float per
partition back (p² + p + 2 floats per partition in stage 1).  The conditional
modes and variances (O(levels)) come back once, at the optimum.  The result
equals the in-memory fit up to the order of floating-point summation and the
stopping tolerance of PIRLS (1e-10 on the modes).

Crossed or several grouping factors couple levels across partitions (the
Laplace factor of the whole ΛᵀZᵀWZΛ + I is needed) and are refused.  Row-level
results (fitted values, residuals, predictions) are lazy Dask Series computed
partition by partition on the original data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg as sla

from multilevel.covariance import templates
from multilevel.errors import DataError, ModelError
from multilevel.formula.design import Design, aliased_from_gram, warn_rank_deficient
from multilevel.formula.newdata import re_form_terms
from multilevel.formula.parser import ParsedFormula, parse_formula
from multilevel.glmm.basis import GlmmBasis
from multilevel.glmm.families import Family, get_family
from multilevel.glmm.fit import (
    MAX_NODES,
    flag_runaway_parameter,
    flag_runaway_variances,
    resolve_hessian,
    resolve_method,
)
from multilevel.glmm.montecarlo import DEFAULT_DF
from multilevel.glmm.pirls import (
    MAX_ITER,
    STEP_TOL,
    PirlsError,
    PirlsProblem,
    RandomBlocks,
    conditional_variances,
    factor,
)
from multilevel.glmm.quadrature import agq_deviance
from multilevel.glmm.results import GlmerFit, GlmerSummary, glmer_summary
from multilevel.glmm.stages import (
    StagedObjective,
    conditional_vcov,
    pirls_message,
    run_stages,
    stage2_estimates,
)
from multilevel.mixedfit import warn_about
from multilevel.optimize.hessian import hessian_stencil
from multilevel.optimize.record import OptRecord
from multilevel.partitioned.lmm import (
    _STATEFUL,
    _Chunks,
    _design,
    _frozen_levels,
    _merge_scans,
    _scan,
    is_dask,
)
from multilevel.threads import single_threaded_blas

MAX_DENSE_REST = 4000  # several terms of one factor: dense (levels x q) block per partition
HESSIAN_STEP = 1e-3  # optimize_stage2's central-difference step (see _Objective.stage2)
EXACT_QUANTILE_ROWS = 20_000_000


# ------------------------------------------------------------------ partition side


@dataclass
class _Spec:
    """What a worker needs to build a partition's design."""

    parsed: ParsedFormula
    frozen: dict
    family: Family
    weights: str | None
    offset: str | None
    na_action: str
    basis: GlmmBasis  # the centred and scaled columns every partition's problem uses
    hessian: str = "fisher"  # the Laplace curvature (glmm.fit.resolve_hessian)


def _part_design(frame: pd.DataFrame, spec: _Spec) -> Design | None:
    """The partition's design with the frozen levels; None without usable rows."""
    if len(frame) == 0:
        return None
    try:
        return _design(
            frame,
            spec.parsed,
            spec.frozen,
            spec.weights,
            spec.offset,
            spec.na_action,
            numeric_response=False,
        )
    except DataError as exc:
        if str(exc).startswith("no rows are left"):  # all rows of this partition incomplete
            return None
        raise


class _Part:
    """One partition's PIRLS problem (rows sorted by level, local level codes),
    the global codes of its levels and the last conditional mode (a warm start:
    results never depend on it beyond PIRLS's tolerance)."""

    def __init__(self, prob: PirlsProblem | None, glevels: np.ndarray, n_dropped: int):
        self.prob = prob
        self.glevels = glevels
        self.n_dropped = n_dropped
        self.u: np.ndarray | None = None


def _build_part(frame: pd.DataFrame, spec: _Spec) -> _Part:
    d = _part_design(frame, spec)
    if d is None:
        return _Part(None, np.empty(0, dtype=np.int64), len(frame))
    resp = spec.family.response(d.response, d.weights, spec.parsed.response.label)
    # every term has the same grouping factor, hence the same codes
    glevels, local = np.unique(d.random[0].codes, return_inverse=True)
    local = local.astype(np.int64).ravel()
    perm = np.argsort(local, kind="stable")
    k = len(d.random)
    B = spec.basis
    Zs = [B.scaled_Z(j, r.Z)[perm] for j, r in enumerate(d.random)]
    rb = RandomBlocks(Zs, [local[perm]] * k, [glevels.size] * k)
    offset = None if d.offset is None else d.offset[perm]
    tmpl = templates([r.q for r in d.random])
    prob = PirlsProblem(
        spec.family, resp.take(perm), B.scaled_X(d.X)[perm], offset, rb, tmpl, spec.hessian
    )
    return _Part(prob, glevels.astype(np.int64), d.n_dropped)


def _part_info(part: _Part) -> dict:
    prob = part.prob
    if prob is None:
        return {"n": 0, "dropped": part.n_dropped, "glevels": part.glevels}
    return {
        "n": prob.n,
        "dropped": part.n_dropped,
        "glevels": part.glevels,
        "gram": prob.X.T @ prob.X,
    }


def _drop_columns(part: _Part, keep: np.ndarray) -> _Part:
    p = part.prob
    prob = PirlsProblem(p.family, p.resp, p.X[:, keep], p.offset, p.rb, p.tmpl, p.hessian)
    return _Part(prob, part.glevels, part.n_dropped)


def _set_family_value(part: _Part, value: float) -> _Part:
    """The family's parameter at ``value`` (its start, before the search carries it)."""
    part.prob.family = part.prob.family.with_value(value)
    return part


def _start_sums(part: _Part, beta: np.ndarray) -> np.ndarray:
    """The partition's share of the family parameter's moment estimate at the GLM fit."""
    prob = part.prob
    return prob.family.start_sums(prob.resp, prob.family.linkinv(prob.offset + prob.X @ beta))


def _glm_pass(part: _Part, beta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float]:
    """XᵀWX, XᵀWz at the GLM's η (β = None: the family's starting μ) and −2 loglik."""
    prob = part.prob
    fam, r = prob.family, prob.resp
    with np.errstate(over="ignore", under="ignore"):
        if beta is None:
            eta = fam.linkfun(fam.initial_mu(r))
            dev = math.nan
        else:
            eta = prob.offset + prob.X @ beta
            dev = -2.0 * prob.loglik_eta(eta)
        w, resid = fam.score_weights(r.y, eta, r.weights)
        z = eta - prob.offset + resid
    Xw = prob.X * w[:, None]
    return Xw.T @ prob.X, Xw.T @ z, dev


def _local_mode(part: _Part, theta: np.ndarray, beta: np.ndarray, start: np.ndarray | None):
    """PIRLS at (θ, β) from ``start``, from u = 0 when that fails (as glmer)."""
    try:
        return part.prob.mode(theta, beta, start, False)
    except PirlsError:
        if start is None:
            raise
        return part.prob.mode(theta, beta, None, False)


def _profile_beta(part: _Part, theta: np.ndarray, beta: np.ndarray):
    """At the mode ũ(θ, β): (pdev, log|L|², share of R_XᵀR_X, XᵀW r); None when
    PIRLS fails."""
    prob = part.prob
    fam, r = prob.family, prob.resp
    with np.errstate(over="ignore", under="ignore"):
        try:
            m = _local_mode(part, theta, beta, part.u)
        except PirlsError:
            return None
        part.u = m.u
        w = m.weights  # the curvature at the mode (Fisher's, or the observed one)
        wf, resid = fam.score_weights(r.y, m.eta, r.weights)
        g = prob.X.T @ (wf * resid)  # Σ xᵢ ∂ℓᵢ/∂η
        blocks = prob.rb.crossprods(w, prob.X)
        f = factor(prob.rb, blocks, m.factor.T, joint=False)
    if f is None:
        return None
    S = blocks.AFF - f.C0F.T @ f.C0F
    if f.CRF is not None:
        S = S - f.CRF.T @ f.CRF
    return m.pdev, m.factor.logdet, S, g


def _deviances(
    part: _Part, thetas: np.ndarray, betas: np.ndarray, method: str, nagq: int
) -> np.ndarray:
    """The partition's deviance at each (θ, β) point (inf where PIRLS fails)."""
    prob = part.prob
    start = part.u
    out = np.empty(len(thetas))
    with np.errstate(over="ignore", under="ignore"):
        for i in range(len(thetas)):  # evaluation points, not rows or levels
            try:
                m = _local_mode(part, thetas[i], betas[i], start)
            except PirlsError:
                out[i] = math.inf
                continue
            if len(thetas) == 1:
                part.u = m.u
            out[i] = m.laplace if method == "laplace" else agq_deviance(prob, m, nagq)
    return out


def _final(part: _Part, theta: np.ndarray, beta: np.ndarray, method: str, nagq: int) -> dict:
    """Deviance, conditional modes and conditional variances at the estimates."""
    prob = part.prob
    with np.errstate(over="ignore", under="ignore"):
        try:
            m = _local_mode(part, theta, beta, part.u)
        except PirlsError as exc:
            return {"error": str(exc)}
        dev = m.laplace if method == "laplace" else agq_deviance(prob, m, nagq)
    return {
        "deviance": dev,
        "u": prob.rb.split(m.u),
        "condvar": conditional_variances(prob.rb, m.factor),
        "saturated": prob.family.saturated_loglik(prob.resp),
        "family": prob.family,  # at the estimated parameter
        "mu_max": float(np.max(prob.family.linkinv(m.eta), initial=0.0)),
    }


# ------------------------------------------------------------------ client side


class _Partitions:
    """The persisted per-partition problems and the calls mapped over them."""

    def __init__(self, parts: list):
        self.parts = parts
        self.calls = 0  # round trips, for the record

    def map(self, fn, *args) -> list:
        import dask

        self.calls += 1
        return list(dask.compute(*[dask.delayed(fn, pure=False)(p, *args) for p in self.parts]))

    def transform(self, fn, *args) -> None:
        import dask

        self.parts = list(
            dask.persist(*[dask.delayed(fn, pure=False)(p, *args) for p in self.parts])
        )


@dataclass
class _JointMode:
    beta: np.ndarray
    laplace: float
    LFF: np.ndarray  # lower Cholesky factor of R_XᵀR_X


class _Objective(StagedObjective):
    """glmer's two objectives over the partitions (see the module docstring)."""

    # stage2() evaluates a Hessian's stencil in one pass, which needs its steps
    # known in advance: fixed ones
    steep_steps = False

    def __init__(self, parts: _Partitions, p: int, ntheta: int, method: str, nagq: int):
        self.parts = parts
        self.p = p
        self.ntheta = ntheta
        self.method = method
        self.nagq = nagq
        self.beta = np.zeros(p)
        self.beta0 = np.zeros(p)
        self.Rinv = np.eye(p)
        self._cache: dict[bytes, float] = {}
        self._best = math.inf
        self._best_x: np.ndarray | None = None

    # -- GLM start -------------------------------------------------------------------
    def initial_beta(self) -> np.ndarray:
        """IRLS of the GLM without random effects, as PirlsProblem.initial_beta."""

        def total(beta):
            res = self.parts.map(_glm_pass, beta)
            return sum(r[0] for r in res), sum(r[1] for r in res), sum(r[2] for r in res)

        A, c, _ = total(None)
        beta = np.zeros(self.p)
        dev = math.inf
        for _ in range(50):  # IRLS iterations
            beta_new = _solve_normal(A, c)
            A_new, c_new, dev_new = total(beta_new)
            if not np.isfinite(dev_new):
                break
            beta = beta_new
            if abs(dev - dev_new) < 1e-10 * (1 + abs(dev_new)):
                break
            dev, A, c = dev_new, A_new, c_new
        return beta

    # -- stage 1 ---------------------------------------------------------------------
    def joint_mode(self, theta: np.ndarray, beta: np.ndarray) -> _JointMode:
        """The joint mode of pdev(u, β) at θ by Newton steps on the profiled
        F(β), halving a step that raises F (raises PirlsError on failure)."""
        beta = np.array(beta, dtype=float)
        prev: tuple[np.ndarray, float, np.ndarray] | None = None
        t = 1.0
        for _ in range(MAX_ITER):
            res = self.parts.map(_profile_beta, theta, beta)
            if any(r is None for r in res):
                raise PirlsError("PIRLS failed in a partition")
            F = float(sum(r[0] for r in res))
            if not np.isfinite(F):
                raise PirlsError("infinite penalized deviance")
            if prev is not None and F > prev[1] + 1e-12 * (1.0 + abs(prev[1])):
                t *= 0.5
                if t < 2.0**-30:
                    raise PirlsError("step-halving failed to reduce the penalized deviance")
                beta = prev[0] + t * prev[2]
                continue
            S = sum(r[2] for r in res)
            g = sum(r[3] for r in res)
            try:
                L = np.linalg.cholesky(S)
            except np.linalg.LinAlgError:
                raise PirlsError("the fixed-effects block is not positive definite") from None
            delta = sla.cho_solve((L, True), g, check_finite=False)
            if np.max(np.abs(delta), initial=0.0) < STEP_TOL:
                return _JointMode(beta, F + float(sum(r[1] for r in res)), L)
            prev, t = (beta, F, delta), 1.0
            beta = beta + delta
        raise PirlsError(f"PIRLS did not converge in {MAX_ITER} iterations")

    # -- stage 2 ---------------------------------------------------------------------
    def deviances(self, xs: list[np.ndarray]) -> np.ndarray:
        pts = [self.unpack(np.asarray(x, dtype=float)) for x in xs]
        thetas = np.array([t for t, _ in pts])
        betas = np.array([b for _, b in pts])
        res = self.parts.map(_deviances, thetas, betas, self.method, self.nagq)
        total = np.sum(res, axis=0)
        return np.where(np.isfinite(total), total, math.inf)

    def stage2(self, x: np.ndarray) -> float:
        """The deviance at (θ, δ).  optimize_stage2's central-difference Hessian
        asks for 2d² points around the best point, one at a time; when its first
        point is asked for, all of them are evaluated in one pass over the
        partitions (each from the centre's modes: the values single evaluations
        would give, up to PIRLS's tolerance)."""
        x = np.asarray(x, dtype=float)
        key = x.tobytes()
        if key in self._cache:
            v = self._cache.pop(key)
        elif self._best_x is not None and np.array_equal(x, _stencil(self._best_x, first=True)[0]):
            pts = _stencil(self._best_x)
            vals = self.deviances(pts)
            self._cache = {pt.tobytes(): float(val) for pt, val in zip(pts, vals, strict=True)}
            v = self._cache.pop(key)
        else:
            v = float(self.deviances([x])[0])
        if v < self._best:
            self._best, self._best_x = v, x.copy()
        return v


def _stencil(x: np.ndarray, h: float = HESSIAN_STEP, first: bool = False) -> list[np.ndarray]:
    """The points of glmm.fd_hessian around x, in its order (``first``: only
    the first, which announces a Hessian)."""
    pts = hessian_stencil(x, h)
    return pts[:1] if first else pts


def _solve_normal(A: np.ndarray, c: np.ndarray) -> np.ndarray:
    try:
        return sla.cho_solve(sla.cho_factor(A, lower=True), c, check_finite=False)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(A, c, rcond=None)[0]


# ------------------------------------------------------------------ checks


def _check_model(parsed: ParsedFormula, formula: str, method: str) -> tuple[str, ...]:
    """One grouping factor, given by data columns; returns its columns."""
    if not parsed.random:
        raise ModelError(
            f"no random-effects terms in {formula!r}; add e.g. (1 | group), or use a GLM"
        )
    groups = {rt.group for rt in parsed.random}
    if len(groups) > 1:
        names = ", ".join(sorted(rt.group_name for rt in parsed.random))
        raise ModelError(
            "glmer on Dask data supports one grouping factor (terms such as (1 | g) + "
            f"(0 + x | g) share it); {formula!r} has several ({names}). With one factor the "
            "levels are independent given the parameters, so each partition holding whole "
            "levels finds its conditional modes and its share of the Laplace or quadrature "
            "deviance alone; crossed or nested factors couple the levels of different "
            "partitions (the Laplace approximation needs one factorization of the whole "
            "random-effects cross-product), which is not implemented. Fit such a model in "
            "memory (data.compute())"
        )
    if method == "agq" and len(parsed.random) > 1:
        raise ModelError(
            f"nAGQ > 1 (adaptive quadrature) needs a single random-effects term; the model "
            f"has {len(parsed.random)} ({', '.join(t.text for t in parsed.random)}). Use "
            "nAGQ=1 (Laplace)"
        )
    if method == "mc":
        raise ModelError(
            "method='mc' is not available for Dask data (its common random numbers are "
            "drawn per level in one process); use Laplace (nAGQ=1) or adaptive quadrature "
            "(nAGQ > 1), or fit in memory"
        )
    cols = parsed.random[0].group
    for g in cols:
        if not parsed.factors[g].is_name:
            raise ModelError(
                f"the grouping factor {g!r} is an expression; with Dask data the rows are "
                "shuffled on grouping columns, so add it to the data as a column first"
            )
    for f in parsed.factors.values():
        if any(t in f.code for t in _STATEFUL):
            raise ModelError(
                f"{f.label!r}: scale(), center() and poly() need the whole column at once; "
                "add the transformed column to the data before fitting it in partitions"
            )
    return cols


# ------------------------------------------------------------------ fit


def glmer_partitioned(
    formula: str,
    data: Any,
    family: str | Family = "binomial",
    nAGQ: int = 1,
    *,
    weights: str | None = None,
    offset: str | None = None,
    levels: dict[str, list] | None = None,
    na_action: str = "omit",
    method: str | None = None,
    mc_samples: int = 1000,
    seed: int | None = 1,
    mc_df: float = DEFAULT_DF,
    namespace: dict | None = None,
    hessian: str | None = None,
) -> PartitionedGlmerFit:
    """Fit a GLMM with one grouping factor to a Dask DataFrame or a Parquet path
    (what :func:`multilevel.glmer` does with such data); see the module
    docstring.  ``weights`` and ``offset`` are column names.  The work runs on
    Dask's current scheduler: the workers of an active ``dask.distributed``
    Client, else threads.  The estimates equal the in-memory fit's."""
    del mc_samples, seed, mc_df  # Monte Carlo integration is refused below
    parsed = parse_formula(formula)
    fam = get_family(family)
    hessian = resolve_hessian(hessian, fam)
    if fam.estimated and fam.value is None:
        fam = fam.with_value(1.0)  # until the GLM's moments give a start
    meth = resolve_method(method, nAGQ)
    group_cols = _check_model(parsed, formula, meth)
    if namespace is not None:
        raise ModelError(
            "namespace= is not supported with Dask data: functions used in the formula "
            "must be evaluated on the workers; add the computed columns to the data"
        )
    for name, arg in (("weights", weights), ("offset", offset)):
        if arg is not None and not isinstance(arg, str):
            raise DataError(f"with Dask data, {name} must be a column name")
    started = time.perf_counter()
    chunks = _Chunks(data, 1)
    columns = chunks.columns()
    for name, arg in (("weights", weights), ("offset", offset)):
        if arg is not None and arg not in columns:
            raise DataError(f"{name} column {arg!r} is not in the data")

    # pass 1: levels
    scan = chunks.map_reduce(lambda p: _scan(p, parsed, columns, set(group_cols)), _merge_scans)
    if scan["rows"] == 0:
        raise DataError("the data have no rows")
    frozen = _frozen_levels(scan, parsed, levels)
    template = _design(
        _head(chunks.data), parsed, frozen, weights, offset, na_action, numeric_response=False
    )
    # one basis for every partition, from the first rows (exact whatever rows it
    # comes from; these put its origins among the data's values), the intercepts
    # named by the formula
    head_resp = fam.response(template.response, template.weights, parsed.response.label)
    basis = GlmmBasis.of(
        template.X,
        [r.Z for r in template.random],
        ones=template.intercept_columns(),
        eta_scale=fam.eta_scale(head_resp),
    )
    spec = _Spec(parsed, frozen, fam, weights, offset, na_action, basis, hessian)
    qs = [r.q for r in template.random]
    if meth == "agq" and nAGQ ** qs[0] > MAX_NODES:
        raise ModelError(
            f"nAGQ = {nAGQ} with {qs[0]} random effects per level needs {nAGQ ** qs[0]} nodes "
            f"per level (limit {MAX_NODES}); use fewer nodes"
        )

    # the shuffle: each level's rows in one partition; problems built once, kept
    import dask

    shuffled = chunks.data.shuffle(on=list(group_cols))
    parts = _Partitions(
        list(dask.persist(*[dask.delayed(_build_part)(p, spec) for p in shuffled.to_delayed()]))
    )
    info = parts.map(_part_info)
    nonempty = [k for k, i in enumerate(info) if i["n"] > 0]
    n = sum(i["n"] for i in info)
    n_dropped = sum(i["dropped"] for i in info)
    if n == 0:
        raise DataError("no rows are left after dropping rows with missing values")
    parts.parts = [parts.parts[k] for k in nonempty]
    info = [info[k] for k in nonempty]
    glevels = [i["glevels"] for i in info]
    if len(qs) > 1 and max(g.size for g in glevels) * sum(qs[1:]) > MAX_DENSE_REST:
        raise ModelError(
            f"several terms of one grouping factor ({' + '.join(rt.text for rt in parsed.random)}) "
            "couple each partition's levels through a dense block; a partition has too many "
            "levels for it: use more partitions, or one term such as (1 + x | g)"
        )
    nfrozen = template.random[0].nlevels
    allcodes = np.concatenate(glevels)
    if np.unique(allcodes).size != allcodes.size:
        raise ModelError("a level of the grouping factor is in more than one partition")
    present = np.zeros(nfrozen, dtype=bool)
    present[allcodes] = True
    cmap = np.cumsum(present) - 1  # frozen code -> level index of the fit

    # aliased fixed-effect columns, judged on XᵀX as build_design judges them
    alias = aliased_from_gram(sum(i["gram"] for i in info))
    messages: list[str] = []
    if alias.any():
        messages.append(warn_rank_deficient(template.xspec.names, alias))
        parts.transform(_drop_columns, ~alias)
        basis = basis.drop_x_columns(~alias)
        template.xspec.keep = ~alias
        template.xspec.names = [
            nm for nm, a in zip(template.xspec.names, alias, strict=True) if not a
        ]
    if n_dropped:
        messages.append(
            f"{n_dropped} row{'s' if n_dropped != 1 else ''} with missing values "
            f"{'were' if n_dropped != 1 else 'was'} dropped"
        )
    _strip_template(template, present, n, n_dropped, messages)
    setup = time.perf_counter() - started

    with single_threaded_blas():
        fit = _optimise(
            parts,
            template,
            fam,
            meth,
            int(nAGQ),
            glevels,
            cmap,
            basis,
        )
    fit._spec = spec
    fit._data = chunks.data
    fit._cmap = cmap
    fit.dask_info = {
        "npartitions": len(parts.parts),
        "round_trips": parts.calls,
        "setup_seconds": setup,
        "seconds": time.perf_counter() - started,
    }
    flag_runaway_variances(fit)
    flag_runaway_parameter(fit, np.array([fit._mu_max]))
    warn_about(fit)
    return fit


def _head(data: Any, n: int = 1000) -> pd.DataFrame:
    """Rows for the template design: the first non-empty partition's first n.
    (Not Dask's head(), which warns on the workers when a partition is short.)"""
    for k in range(data.npartitions):  # usually the first
        head = data.get_partition(k).map_partitions(lambda p: p.iloc[:n]).compute()
        if len(head):
            return head
    return head


def _strip_template(
    template: Design, present: np.ndarray, n: int, n_dropped: int, messages: list[str]
) -> None:
    """Keep specs and levels (those with rows), not rows."""
    p = len(template.xspec.names)
    template.y = np.empty(0)
    template.X = np.empty((0, p))
    template.weights = template.offset = None
    template.response = None
    for r in template.random:
        r.Z, r.codes = np.empty((0, r.q)), np.empty(0, dtype=np.int64)
        if not present.all():
            r.levels = [lab for lab, k in zip(r.levels, present, strict=True) if k]
            if len(r.term.group) > 1:  # (levels, columns): the component codes of each level
                r.group_combos = r.group_combos[present]
            else:
                r.group_values = [r.group_values[0][present]]
    template.n_rows, template.n_dropped = n, n_dropped
    template.messages = messages


def _optimise(
    parts: _Partitions,
    template: Design,
    fam: Family,
    method: str,
    nagq: int,
    glevels: list[np.ndarray],
    cmap: np.ndarray,
    basis: GlmmBasis,
) -> PartitionedGlmerFit:
    """glmm.fit_glmm's two stages and Hessian, with the deviance from the
    partitions, in the basis of their columns; estimates mapped back.  A
    family's parameter starts at the moments of the GLM fit (as
    PirlsProblem.start_family) and is searched as its logarithm after θ."""
    tmpl = templates([r.q for r in template.random])
    nre = sum(t.size for t in tmpl)
    p = len(template.xspec.names)
    obj = _Objective(parts, p, nre + fam.nfree, method, nagq)
    obj.beta = obj.initial_beta()
    start = []
    if fam.nfree:
        for _ in range(3):  # the negative binomial's GLM depends on θ: iterate twice
            value = fam.start_from(sum(parts.map(_start_sums, obj.beta)))
            parts.transform(_set_family_value, value)
            obj.beta = obj.initial_beta()
        start = [math.log(value)]

    theta0 = np.concatenate([t.initial() for t in tmpl] + [np.array(start)])
    lower_t = np.concatenate([t.lower_bounds() for t in tmpl] + [np.full(fam.nfree, -np.inf)])
    st = run_stages(obj, theta0, lower_t, stage1_only=nagq == 0 and method == "laplace")
    rec1, rec2, hess = st.rec1, st.rec2, None
    if rec2 is None:
        theta_hat, beta_hat = rec1.theta, st.mode1.beta
        vcov = conditional_vcov(st.mode1.LFF)
        vcov_note = "conditional"
    else:
        est = stage2_estimates(obj, rec2, st.H)
        theta_hat, beta_hat, hess = est.theta, est.beta, est.hessian
        vcov, vcov_note = est.vcov, est.vcov_note
        if vcov is None:
            vcov = conditional_vcov(st.mode1.LFF)

    res = parts.map(_final, theta_hat, beta_hat, method, nagq)
    errors = [r["error"] for r in res if "error" in r]
    if errors:
        raise ModelError(pirls_message(PirlsError(errors[0])))
    nlev = int(cmap.max()) + 1 if cmap.size else 0
    T = [t.matrix(theta_hat) for t in tmpl]  # of the scaled columns
    b, condvar = [], []
    for k, (r, Tk) in enumerate(zip(template.random, T, strict=True)):
        uk = np.zeros((nlev, r.q))
        vk = np.zeros((nlev, r.q, r.q))
        for g, rr in zip(glevels, res, strict=True):  # partitions, not levels
            idx = cmap[g]
            uk[idx] = rr["u"][k]
            vk[idx] = rr["condvar"][k]
        b.append(uk @ Tk.T)
        condvar.append(vk)
    theta_hat, vcov, hess = basis.to_original(tmpl, theta_hat, vcov, hess, (rec1, rec2))
    theta_hat = theta_hat[:nre]  # the family's parameter is in res[...]["family"]
    beta_hat, b, condvar = basis.beta(beta_hat), basis.b(b), basis.condvar(condvar)
    T = [t.matrix(theta_hat) for t in tmpl]
    fit = PartitionedGlmerFit(
        design=template,
        family=res[0]["family"],
        beta=beta_hat,
        b=b,
        condvar=condvar,
        theta=theta_hat,
        templates=T,
        vcov=vcov,
        vcov_note=vcov_note,
        deviance=float(sum(r["deviance"] for r in res)),
        saturated=float(sum(r["saturated"] for r in res)),
        method=method,
        nAGQ=nagq,
        optinfo=rec2 if rec2 is not None else rec1,
        stage1=rec1,
        hessian=hess,
    )
    fit._mu_max = max(r["mu_max"] for r in res)
    return fit


# ------------------------------------------------------------------ result


@dataclass
class _Estimates:
    """What GlmerFit reads from its PIRLS mode: β̂ and the templates."""

    beta: np.ndarray
    T: list[np.ndarray]

    @property
    def factor(self) -> _Estimates:
        return self


class PartitionedGlmerFit(GlmerFit):
    """A GLMM fitted on Dask data.  Estimates, random effects, likelihood and
    summary() are those of :class:`GlmerFit`; row-level results (``fitted``,
    ``linear_predictor``, ``y``, ``residuals``, ``predict()`` without newdata)
    are lazy Dask Series computed partition by partition on the data as given
    (rows with missing values left out).  ``dask_info`` records the number of
    partitions, round trips to the workers and wall times."""

    _spec: _Spec
    _data: Any
    _cmap: np.ndarray
    dask_info: dict

    def __init__(
        self,
        *,
        design: Design,
        family: Family,
        beta: np.ndarray,
        b: list[np.ndarray],
        condvar: list[np.ndarray],
        theta: np.ndarray,
        templates: list[np.ndarray],
        vcov: np.ndarray,
        vcov_note: str,
        deviance: float,
        saturated: float,
        method: str,
        nAGQ: int,
        optinfo: OptRecord,
        stage1: OptRecord,
        hessian: np.ndarray | None,
        data_name: str = "data",
    ):
        self._mode = _Estimates(np.asarray(beta, dtype=float), templates)
        self._b_terms = b
        self._condvar = condvar
        self._saturated = saturated
        self.mc = None
        self._set_estimates(
            design=design,
            family=family,
            theta=theta,
            templates=templates,
            vcov=vcov,
            vcov_note=vcov_note,
            deviance=deviance,
            method=method,
            nAGQ=nAGQ,
            optinfo=optinfo,
            stage1=stage1,
            hessian=hessian,
            data_name=data_name,
        )

    @property
    def _prob(self):
        raise ModelError(
            "this needs the fitting rows in one process; a Dask fit keeps them on the workers "
            "(refit in memory with data.compute() for it)"
        )

    # -- from the partitions ------------------------------------------------------------
    @property
    def _b(self) -> list[np.ndarray]:  # type: ignore[override]
        return self._b_terms

    @property
    def condvar(self) -> list[np.ndarray]:  # type: ignore[override]
        return self._condvar

    @property
    def saturated_loglik(self) -> float:  # type: ignore[override]
        return self._saturated

    # -- row-level results, lazily --------------------------------------------------------
    def _rows(self, what: str, type: str = "deviance"):
        fn = partial(
            _row_values,
            spec=self._spec,
            keep=self.design.xspec.keep,
            beta=self._mode.beta,
            b=self._b_terms,
            cmap=self._cmap,
            what=what,
            type=type,
        )
        return self._data.map_partitions(fn, meta=(what, "f8"))

    @property
    def linear_predictor(self):  # type: ignore[override]
        """η̂ = offset + Xβ̂ + Zb̃, a lazy Dask Series."""
        return self._rows("eta")

    @property
    def fitted(self):  # type: ignore[override]
        """Conditional fitted means μ̂, a lazy Dask Series."""
        return self._rows("fitted")

    @property
    def y(self):  # type: ignore[override]
        """The response as fitted (0/1, proportions or counts), a lazy Dask Series."""
        return self._rows("y")

    def residuals(self, type: str = "deviance"):  # type: ignore[override]
        """Residuals as :meth:`GlmerFit.residuals`, a lazy Dask Series."""
        if type not in ("deviance", "pearson", "response", "working"):
            raise ModelError(
                f"type must be 'deviance', 'pearson', 'response' or 'working', not {type!r}"
            )
        return self._rows("residuals", type)

    def predict(
        self,
        newdata: Any = None,
        re_form: str | None = None,
        allow_new_levels: bool = False,
        type: str = "link",
    ):
        """As :meth:`GlmerFit.predict`; lazy (a Dask Series) for the fitting data
        (newdata=None) and for Dask newdata.  The fitting data's offset= column is
        included for newdata=None only (as in memory)."""
        if type not in ("link", "response"):
            raise ModelError(f"type must be 'link' or 'response', not {type!r}")
        include = re_form_terms(self.design, re_form)
        population = not any(include)
        if newdata is None:
            if not (population or all(include)):
                raise ModelError(
                    "predictions with some of the random-effects terms on the fitting rows of "
                    "a Dask fit: pass the data as newdata"
                )
            what = ("pop_" if population else "") + ("fitted" if type == "response" else "eta")
            return self._rows(what).rename("predicted")
        if is_dask(newdata):
            return newdata.map_partitions(
                lambda p: GlmerFit.predict(self, p, re_form, allow_new_levels, type),
                meta=("predicted", "f8"),
            )
        return GlmerFit.predict(self, newdata, re_form, allow_new_levels, type)

    def residual_quantiles(self) -> np.ndarray:
        """Quantiles (0, ¼, ½, ¾, 1) of the Pearson residuals: exact up to 20
        million rows (gathered on the client, 8 bytes a row), else Dask's
        approximate quantiles."""
        r = self.residuals(type="pearson")
        probs = [0, 0.25, 0.5, 0.75, 1]
        if self.nobs > EXACT_QUANTILE_ROWS:
            return np.asarray(r.quantile(probs).compute())
        return np.quantile(r.compute().to_numpy(), probs)

    def summary(self) -> GlmerSummary:  # type: ignore[override]
        """lme4-style summary (the Pearson residual quantiles computed on the workers)."""
        return _PartitionedSummary(self)

    def __repr__(self) -> str:
        return (
            f"<PartitionedGlmerFit {self.family!r} {self.method_title}: {self.formula}; "
            f"nobs={self.nobs}, loglik={self.loglik:.4f}>"
        )


class _QuantileView:
    """The fit as glmer_summary reads it, with residuals() standing for the five
    residual quantiles (the quantiles of those five values are themselves)."""

    def __init__(self, fit: PartitionedGlmerFit, quantiles: np.ndarray):
        self._fit = fit
        self._q = quantiles

    def residuals(self, type: str = "pearson") -> pd.Series:
        return pd.Series(self._q)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fit, name)


class _PartitionedSummary(GlmerSummary):
    def __str__(self) -> str:
        q = self.fit.residual_quantiles()
        return glmer_summary(_QuantileView(self.fit, q))  # type: ignore[arg-type]

    __repr__ = __str__


def _row_values(
    frame: pd.DataFrame,
    *,
    spec: _Spec,
    keep: np.ndarray | None,
    beta: np.ndarray,
    b: list[np.ndarray],
    cmap: np.ndarray,
    what: str,
    type: str,
) -> pd.Series:
    """One partition's η̂, μ̂, y or residuals, indexed by its complete rows."""
    d = _part_design(frame, spec)
    if d is None:
        return pd.Series(np.empty(0), index=frame.index[:0], name=what)
    X = d.X if keep is None else d.X[:, keep]
    eta = X @ beta
    if d.offset is not None:
        eta = eta + d.offset
    if not what.startswith("pop_"):
        for r, bk in zip(d.random, b, strict=True):  # terms, not levels
            eta = eta + np.einsum("nq,nq->n", r.Z, bk[cmap[r.codes]])
    fam = spec.family
    if what in ("eta", "pop_eta"):
        out = eta
    elif what in ("fitted", "pop_fitted"):
        out = fam.linkinv(eta)
    else:
        resp = fam.response(d.response, d.weights, spec.parsed.response.label)
        y, wt = resp.y, resp.weights
        if what == "y":
            out = y
        else:
            mu = fam.linkinv(eta)
            if type == "response":
                out = y - mu
            elif type == "pearson":
                out = (y - mu) * np.sqrt(wt) / np.sqrt(np.maximum(fam.variance(mu), 1e-300))
            elif type == "deviance":
                out = np.sign(y - mu) * np.sqrt(np.maximum(fam.dev_resids(y, mu, wt), 0.0))
            else:
                out = (y - mu) / fam.mu_eta(eta)
    return pd.Series(out, index=d.row_index, name=what)


__all__ = ["PartitionedGlmerFit", "glmer_partitioned"]
