"""The model-fitting entry points: ``lmer`` and ``glmer`` check their
arguments and hand the data to the in-memory engine (:mod:`multilevel.lmm`,
:mod:`multilevel.glmm`) or, for a Dask DataFrame or a Parquet path, to the
partitioned one (:mod:`multilevel.partitioned`).  The engines never see Dask
data and never import the partitioned code."""

from __future__ import annotations

from typing import Any

from multilevel.glmm.clmm_results import ClmmFit
from multilevel.glmm.families import Family
from multilevel.glmm.fit import fit_glmer
from multilevel.glmm.montecarlo import DEFAULT_DF
from multilevel.glmm.results import GlmerFit
from multilevel.lmm.fit import fit_lmer
from multilevel.lmm.results import LmerFit
from multilevel.partitioned.lmm import is_partitioned


def lmer(
    formula: str,
    data: Any,
    REML: bool = True,
    *,
    weights: Any = None,
    offset: Any = None,
    levels: dict[str, list] | None = None,
    na_action: str = "omit",
    namespace: dict | None = None,
    start: Any = None,
) -> LmerFit:
    """Fit a linear mixed model by REML (default) or maximum likelihood.

    ``formula`` uses lme4's syntax, e.g.
    ``"mathach ~ meanses*cses + sector*cses + (cses | school)"``.
    ``data`` is a pandas or polars DataFrame, or a Dask DataFrame or Parquet
    path (fitted in two passes over its partitions,
    :mod:`multilevel.partitioned.lmm`).  ``weights`` and ``offset`` are
    column names or arrays (prior weights: residual variance σ²/wᵢ).
    ``levels`` maps categorical columns to their level order, the first level
    being the reference.  Rows with missing values in used columns are dropped
    and counted (``na_action="raise"`` refuses them instead).  ``start`` is an
    initial θ.

    The model is y = Xβ + Zb + ε with b = Λ(θ)u, u ~ N(0, σ²I), ε ~ N(0, σ²I);
    θ minimises the profiled REML/ML criterion (see :mod:`multilevel.lmm.criterion`).
    """
    kwargs = dict(weights=weights, offset=offset, levels=levels, na_action=na_action, start=start)
    if is_partitioned(data):
        from multilevel.partitioned.lmm import lmer_partitioned

        return lmer_partitioned(formula, data, REML, **kwargs)
    return fit_lmer(formula, data, REML, namespace=namespace, **kwargs)


def glmer(
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
    """Fit a generalized linear mixed model by maximum likelihood.

    ``formula`` uses lme4's syntax; a binomial response may be 0/1, boolean, a
    two-level factor (second level = success), proportions with ``weights=``
    the numbers of trials, or ``cbind(successes, failures)``.  ``family`` is
    ``"binomial"`` (logit; also ``"binomial(probit)"``, ``"binomial(cloglog)"``),
    ``"poisson"``, ``"Gamma"`` (inverse; ``"Gamma(log)"``...), ``"inverse.gaussian"``,
    ``"negative_binomial"`` (NB2, θ estimated; ``"negative_binomial(theta=2)"``
    fixed), ``"beta"`` or a :class:`multilevel.glmm.families.Family`
    (``multilevel.Gamma("log")``, ``multilevel.negative_binomial()``...).  The
    negative binomial θ, the Gamma shape, the inverse Gaussian dispersion and
    the beta precision are estimated by maximum likelihood with θ and β
    (``fit.sigma`` as glmmTMB's ``sigma()``).

    ``hessian`` is the curvature of the conditional log-density in the
    Laplace approximation: ``"observed"`` (−∂²ℓ/∂η², glmmTMB's; the default
    for the families lme4 does not share) or ``"fisher"`` (the expected one,
    lme4's; the default for binomial and Poisson).  They differ only for a
    non-canonical link.

    ``nAGQ`` = 1: Laplace approximation; > 1: adaptive Gauss–Hermite
    quadrature with nAGQ nodes per dimension (one random-effects term, which
    may be vector-valued: nAGQ^q nodes per level); 0: only lme4's first stage
    (β estimated inside PIRLS).  ``method="mc"`` maximises an importance-
    sampling estimate with ``mc_samples`` draws per level (t proposal with
    ``mc_df`` degrees of freedom, reproducible from ``seed``).

    ``loglik`` is the full marginal log-likelihood for every method (see the
    module docstring for how it relates to lme4's AGQ numbers).
    """
    kwargs = dict(
        weights=weights,
        offset=offset,
        levels=levels,
        na_action=na_action,
        method=method,
        mc_samples=mc_samples,
        seed=seed,
        mc_df=mc_df,
        namespace=namespace,
        hessian=hessian,
    )
    if is_partitioned(data):
        from multilevel.partitioned.glmm import glmer_partitioned

        return glmer_partitioned(formula, data, family, nAGQ, **kwargs)
    return fit_glmer(formula, data, family, nAGQ, **kwargs)


def glmer_nb(
    formula: str, data: Any, *, link: str = "log", hessian: str = "fisher", **kwargs: Any
) -> GlmerFit:
    """lme4's ``glmer.nb``: a negative binomial (NB2) GLMM with θ estimated by
    maximum likelihood, the Laplace approximation with lme4's (Fisher)
    curvature by default (``hessian="observed"`` gives glmmTMB's ``nbinom2``
    fit).  Other arguments as :func:`glmer`; ``fit.nb_theta`` is θ̂."""
    from multilevel.glmm.families import negative_binomial

    return glmer(formula, data, negative_binomial(link=link), hessian=hessian, **kwargs)


def clmm(
    formula: str,
    data: Any,
    link: str = "logit",
    threshold: str = "flexible",
    nAGQ: int = 1,
    *,
    weights: Any = None,
    levels: dict[str, list] | None = None,
    na_action: str = "omit",
    namespace: dict | None = None,
) -> ClmmFit:
    """Fit a cumulative link mixed model to an ordered response (R's
    ``ordinal::clmm``): P(Y ≤ j | b) = F(αⱼ − xᵀβ − zᵀb).

    The response is an ordered pandas Categorical, or any column with its
    order given as ``levels={"rating": [lowest, ..., highest]}``.  ``link``
    is the latent distribution F: ``"logit"``, ``"probit"``, ``"cloglog"``,
    ``"loglog"`` or ``"cauchit"``; ``threshold`` ``"flexible"``,
    ``"equidistant"`` or ``"symmetric"``.  Random intercepts and slopes, one
    or several grouping factors (Laplace approximation, ``nAGQ=1``); ``nAGQ
    > 1`` integrates a single scalar random effect by adaptive Gauss–Hermite
    quadrature.  ``weights`` are frequency weights.  Categories without
    observations at either end are dropped with a warning."""
    from multilevel.glmm.clmm import fit_clmm

    return fit_clmm(
        formula, data, link=link, threshold=threshold, nAGQ=nAGQ, weights=weights,
        levels=levels, na_action=na_action, namespace=namespace,
    )  # fmt: skip


__all__ = ["clmm", "glmer", "glmer_nb", "lmer"]
