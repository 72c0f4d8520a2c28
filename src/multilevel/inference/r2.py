"""Variance explained by a mixed model: Nakagawa & Schielzeth's R² and the
intraclass correlation, as the R package performance (0.10) computes them
(Nakagawa, Johnson & Schielzeth 2017, J. R. Soc. Interface 14: 20170213).

On the link scale the variance of the response is split into

    σ²_f = var(Xβ̂)                       (over the rows, denominator n − 1)
    σ²_r = Σ_terms mean_i z_iᵀ Σ̂_k z_i    (Johnson 2014: a random slope's
                                           variance depends on its covariate)
    σ²_ε = σ̂² for an LMM; for a GLMM the distribution-specific variance:
           binomial: π²/3 (logit), 1 (probit), π²/6 (cloglog);
           Poisson: log(1 + 1/μ) (log link, the lognormal approximation, μ
           = exp(β₀) of the intercept-only model with the same random
           effects), 0.25 (square-root link);

    R²_marginal = σ²_f / (σ²_f + σ²_r + σ²_ε),
    R²_conditional = (σ²_f + σ²_r) / (σ²_f + σ²_r + σ²_ε),
    ICC_adjusted = σ²_r / (σ²_r + σ²_ε),
    ICC_unadjusted = σ²_r / (σ²_f + σ²_r + σ²_ε).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multilevel.errors import ModelError

if TYPE_CHECKING:
    from multilevel.lmm.results import LmerFit


def variance_components(fit: LmerFit) -> pd.Series:
    """σ²_f, σ²_r and σ²_ε of the module docstring (insight's ``get_variance``
    names: var.fixed, var.random, var.residual)."""
    d = fit.design
    eta = d.X @ fit.fixef.to_numpy(dtype=float)
    var_fixed = float(np.var(eta, ddof=1)) if eta.size > 1 else 0.0
    var_random = 0.0
    for r, T in zip(d.random, _covariance_factors(fit), strict=True):
        S = T @ T.T
        var_random += float(np.mean(np.einsum("ni,ij,nj->n", r.Z, S, r.Z)))
    return pd.Series(
        {"var.fixed": var_fixed, "var.random": var_random, "var.residual": _residual(fit)}
    )


def _covariance_factors(fit) -> list[np.ndarray]:
    """Per term a factor of Σ̂_k (σ̂T_k for an LMM)."""
    if hasattr(fit, "family"):
        return [np.asarray(T, dtype=float) for T in fit._templates]
    return [fit.sigma * T for T in fit.criterion.factor(np.asarray(fit.optinfo.theta)).T]


def _residual(fit) -> float:
    if not hasattr(fit, "family"):
        return float(fit.sigma**2)
    if hasattr(fit, "thresholds"):
        raise ModelError("R² and ICC of an ordinal model are not available")
    fam, link = fit.family.name, fit.family.link.name
    if fam == "binomial":
        v = {"logit": math.pi**2 / 3, "probit": 1.0, "cloglog": math.pi**2 / 6}.get(link)
    elif fam == "poisson":
        v = {"sqrt": 0.25}.get(link)
        if link == "log":
            mu = math.exp(float(fit.null_model().fixef.iloc[0]))
            v = math.log1p(1.0 / mu)
    else:
        v = None
    if v is None:
        raise ModelError(
            f"R² and ICC are implemented for linear mixed models and binomial (logit, probit, "
            f"cloglog) or Poisson (log, sqrt) GLMMs, not {fam} with the {link} link"
        )
    return v


def r2_nakagawa(fit: LmerFit) -> pd.Series:
    """Marginal and conditional R² (performance's ``r2_nakagawa``): a Series
    with ``conditional`` and ``marginal``."""
    v = variance_components(fit)
    total = v.sum()
    return pd.Series(
        {
            "conditional": (v["var.fixed"] + v["var.random"]) / total,
            "marginal": v["var.fixed"] / total,
        },
        name="R2",
    )


def icc(fit: LmerFit) -> pd.Series:
    """Adjusted and unadjusted intraclass correlation (performance's ``icc``):
    a Series with ``adjusted`` and ``unadjusted``."""
    v = variance_components(fit)
    return pd.Series(
        {
            "adjusted": v["var.random"] / (v["var.random"] + v["var.residual"]),
            "unadjusted": v["var.random"] / v.sum(),
        },
        name="ICC",
    )


__all__ = ["icc", "r2_nakagawa", "variance_components"]
