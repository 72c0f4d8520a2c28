"""Likelihood-ratio tests between mixed models (LMMs, or GLMMs by their
Laplace, AGQ or Monte Carlo log-likelihoods).

``anova(m0, m1, ...)`` compares nested fits as lme4's ``anova``: REML fits are
first refit by maximum likelihood (``refit=True``, lme4's default), because
REML likelihoods of models with different fixed effects are not comparable.
The models are ordered by number of parameters; each row after the first
tests it against the row before:

    Chisq = 2 (ℓ₁ − ℓ₀),   Df = npar₁ − npar₀,   p = P(χ²_Df > Chisq).

Boundary correction.  A variance is 0 under the smaller model, on the edge
of its parameter space, so the naive χ²_Df reference is conservative.  When
two models have the same fixed effects and the larger one has exactly one
more random-effect column (one more variance plus its covariances with the
term's other columns), the null distribution is the 50:50 mixture
½χ²_{Df−1} + ½χ²_Df (Self & Liang 1987; Stram & Lee 1994; χ²₀ is the point
mass at 0).  That p-value is reported in the extra column
``Pr(>Chisq) boundary``; it is NaN where the rule does not apply.

``ranova(fit)`` tests every random-effects term as lmerTest does: a term
with several columns is reduced by removing each non-intercept column group
(``cses in (cses | school)``); a single-column term is dropped.  A reduced
model is the full model with the corresponding θ entries fixed at 0 (row and
column j of the term's template), so it is refit on the same cross-products;
a GLMM's reduced model minimises the fit's deviance function with those
entries at 0 (:meth:`multilevel.glmm.results.GlmerFit.devfun`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multilevel.covariance import templates
from multilevel.errors import ModelError

if TYPE_CHECKING:
    from multilevel.lmm.results import LmerFit


def refit_ml(fit: LmerFit) -> LmerFit:
    """The same model fitted by maximum likelihood (lme4's ``refitML``);
    an ML fit is returned unchanged."""
    return fit.refit_ml()


def _npar(fit: LmerFit) -> int:
    return int(fit.df_model)


def _same_fixed(a: LmerFit, b: LmerFit) -> bool:
    return list(a.fixef.index) == list(b.fixef.index) and np.allclose(a.design.X, b.design.X)


def _re_dim(fit: LmerFit) -> int:
    return int(sum(r.q for r in fit.design.random))


def _is_glmm(fit) -> bool:
    return hasattr(fit, "family")


def _response(fit) -> np.ndarray | None:
    """The response as fitted (a GLMM's: proportions or counts, with its prior
    weights, so that cbind() and proportion forms of one response compare);
    None where it lives on a cluster (a Dask fit: compared by nobs only)."""
    if not _is_glmm(fit):
        return fit.design.y
    try:
        prob = fit._prob
    except ModelError:  # a Dask fit: its rows stay on the workers
        return None
    r = prob.resp.take(fit._inv)
    return np.column_stack([r.y, r.weights])


def boundary_pvalue(chisq: float, df: int) -> float:
    """P-value of the 50:50 mixture ½χ²_{df−1} + ½χ²_df at ``chisq``."""
    from scipy import stats  # scipy.stats costs 0.5 s to import: when used

    if not np.isfinite(chisq) or df < 1:
        return float("nan")
    upper = stats.chi2.sf(chisq, df)
    lower = stats.chi2.sf(chisq, df - 1) if df > 1 else float(chisq <= 0)
    return float(0.5 * upper + 0.5 * lower)


def anova(
    *fits: LmerFit,
    refit: bool = True,
    names: list[str] | None = None,
    ddf: str = "Satterthwaite",
    type: int | str = 3,
    **named: LmerFit,
) -> pd.DataFrame:
    """Likelihood-ratio tests of nested LMMs, or of nested GLMMs (lme4's
    ``anova(m0, m1, ...)``; a GLMM's ``loglik`` is its full marginal
    log-likelihood by the fit's integration method).

    With one model: its type-III table (:mod:`multilevel.inference.type3`) —
    for an LMM lmerTest's F tests (``ddf`` "Satterthwaite" or
    "Kenward-Roger"), for a GLMM car::Anova's Wald χ² tests.

    Fits are given positionally (named ``m0``, ``m1``, ... or by ``names``) or
    as keywords (``anova(small=m0, large=m1)``).  Returns one row per model,
    ordered by number of parameters: npar, AIC, BIC, logLik, deviance, Chisq,
    Df, Pr(>Chisq) and the boundary-corrected ``Pr(>Chisq) boundary`` (see the
    module docstring).  ``refit=False`` compares REML fits as they are, which
    is valid only when their fixed effects are identical.
    """
    from scipy import stats  # scipy.stats costs 0.5 s to import: when used

    models = list(fits) + list(named.values())
    labels = list(names) if names is not None else [f"m{i}" for i in range(len(fits))]
    labels += list(named)
    if len(models) == 1 and not getattr(models[0], "nlme_style", False):
        return _single_model(models[0], ddf, type)
    if len(models) < 2:
        raise ModelError("anova needs at least two fitted models to compare")
    if len(labels) != len(models):
        raise ModelError(f"{len(labels)} names for {len(models)} models")
    if any(getattr(m, "nlme_style", False) for m in models):
        return nlme_anova(models, labels)
    nobs = {m.nobs for m in models}
    if len(nobs) > 1:
        raise ModelError(f"models were not all fitted to the same data (nobs {sorted(nobs)})")
    kinds = {_is_glmm(m) for m in models}
    if len(kinds) > 1:
        raise ModelError(
            "anova compares linear mixed models with each other and GLMMs with each other, "
            "not one with the other"
        )
    y0 = _response(models[0])
    if any(
        (y := _response(m)) is not None
        and y0 is not None
        and (y.shape != y0.shape or not np.array_equal(y, y0))
        for m in models
    ):
        raise ModelError("models were not all fitted to the same response")
    reml = [getattr(m, "REML", False) for m in models]
    if any(reml):
        if refit:
            models = [refit_ml(m) for m in models]
        else:
            if not all(reml):
                raise ModelError("refit=False needs all models fitted by REML (or all by ML)")
            if not all(_same_fixed(models[0], m) for m in models[1:]):
                raise ModelError(
                    "REML likelihoods of models with different fixed effects are not "
                    "comparable; use refit=True (ML)"
                )
    order = sorted(range(len(models)), key=lambda i: _npar(models[i]))
    rows = []
    prev = None
    for i in order:
        m = models[i]
        ll = m.loglik
        npar = _npar(m)
        row = {
            "npar": npar,
            "AIC": -2 * ll + 2 * npar,
            "BIC": -2 * ll + np.log(m.nobs) * npar,
            "logLik": ll,
            "deviance": -2 * ll,
            "Chisq": np.nan,
            "Df": np.nan,
            "Pr(>Chisq)": np.nan,
            "Pr(>Chisq) boundary": np.nan,
        }
        if prev is not None:
            df = npar - _npar(prev)
            chisq = max(0.0, 2 * (ll - prev.loglik))
            row["Chisq"] = chisq
            row["Df"] = df
            row["Pr(>Chisq)"] = stats.chi2.sf(chisq, df) if df > 0 else np.nan
            if df > 0 and _same_fixed(prev, m) and _re_dim(m) == _re_dim(prev) + 1:
                row["Pr(>Chisq) boundary"] = boundary_pvalue(chisq, df)
        rows.append(row)
        prev = m
    out = pd.DataFrame(rows, index=[labels[i] for i in order])
    out["npar"] = out["npar"].astype(int)
    out["Df"] = out["Df"].astype("Int64")
    return out


def _single_model(fit, ddf: str, type: int | str) -> pd.DataFrame:
    from multilevel.inference.type3 import type3_table, wald_chisq_table

    if str(type).upper() not in ("3", "III"):
        raise ModelError(
            f"type={type!r}: the single-model table is the type-III one (type=3); compare "
            "nested models with anova(m0, m1) for sequential tests"
        )
    if hasattr(fit, "thresholds"):
        raise ModelError("a type-III table of an ordinal model is not available")
    if _is_glmm(fit):
        return wald_chisq_table(fit)
    return type3_table(fit, ddf)


def nlme_anova(models: list, labels: list[str]) -> pd.DataFrame:
    """nlme's ``anova(m0, m1, ...)`` of lme and gls fits: the models in the
    order given, each with df, AIC, BIC (nlme's: log(n − p) for REML), logLik,
    and the likelihood-ratio test against the model before it ("1 vs 2").
    REML fits compare only with the same fixed effects (nlme warns; here it
    is an error, the comparison being meaningless), and nothing is refitted."""
    from scipy import stats  # scipy.stats costs 0.5 s to import: when used

    if not all(getattr(m, "nlme_style", False) for m in models):
        raise ModelError("anova compares lme and gls fits with each other (nlme's anova)")
    if len({m.nobs for m in models}) > 1:
        raise ModelError("models were not all fitted to the same data")
    y0 = models[0].design.y
    if any(m.design.y.shape != y0.shape or not np.array_equal(m.design.y, y0) for m in models):
        raise ModelError("models were not all fitted to the same response")
    methods = {m.method for m in models}
    if len(methods) > 1:
        raise ModelError("all models must be fitted by REML, or all by ML (method=)")
    if methods == {"REML"}:
        X0 = models[0].design.X
        if any(m.design.X.shape != X0.shape or not np.allclose(m.design.X, X0) for m in models):
            raise ModelError(
                "REML likelihoods of models with different fixed effects are not comparable; "
                "fit them with method='ML'"
            )
    rows = []
    for k, m in enumerate(models):
        row = {"Model": k + 1, "df": int(m.df_model), "AIC": m.aic, "BIC": m.bic,
               "logLik": m.loglik, "Test": "", "L.Ratio": np.nan, "p-value": np.nan}  # fmt: skip
        if k:
            prev = models[k - 1]
            ddf = abs(int(m.df_model) - int(prev.df_model))
            lr = abs(2.0 * (m.loglik - prev.loglik))
            row.update({"Test": f"{k} vs {k + 1}", "L.Ratio": lr,
                        "p-value": stats.chi2.sf(lr, ddf) if ddf else np.nan})  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows, index=labels)


# -- ranova ------------------------------------------------------------------------------
def _column_groups(r, factor_specs: dict) -> list[list[int]]:
    """Column indices of each non-intercept term of a random term's expression,
    in order (the model-matrix columns of one term are contiguous)."""
    names = r.cnames

    def pieces_of(f: str) -> set[str] | None:
        spec = factor_specs.get(f)
        if spec is None:
            return None
        suffixes = spec.labels if spec.categorical else spec.suffixes
        return {f + s for s in (suffixes or [""])}

    def matches(name: str, term: tuple[str, ...]) -> bool:
        pieces = name.split(":")
        if len(pieces) != len(term):
            return False
        for pc, f in zip(pieces, term, strict=True):
            allowed = pieces_of(f)
            if not (pc in allowed if allowed is not None else pc.startswith(f)):
                return False
        return True

    groups: list[list[int]] = []
    j = 1 if r.term.expr.intercept else 0
    for term in r.term.expr.terms:
        cols = []
        while j < len(names) and matches(names[j], term):
            cols.append(j)
            j += 1
        if cols:
            groups.append(cols)
    if j < len(names):  # unmatched columns: one group each
        groups.extend([[c] for c in range(j, len(names))])
    return groups


def constrained_fit(fit: LmerFit, fixed_zero: np.ndarray) -> tuple[float, np.ndarray]:
    """Minimum of the fit's criterion over θ with the entries ``fixed_zero``
    (boolean mask) held at 0: the criterion of the reduced model."""
    from multilevel.optimize.theta import minimize_theta

    crit = fit.criterion
    theta0 = np.asarray(fit.optinfo.theta, dtype=float)
    free = ~fixed_zero
    lower = np.concatenate([t.lower_bounds() for t in crit.tmpl])
    full = np.where(free, theta0, 0.0)
    if not free.any():
        return float(crit(full)), full

    def f(x: np.ndarray) -> float:
        th = full.copy()
        th[free] = x
        return crit(th)

    rec = minimize_theta(f, theta0[free].copy(), lower[free], check_hessian=False)
    out = full.copy()
    out[free] = rec.theta
    return float(rec.criterion), out


def ranova(fit: LmerFit, reduce_terms: bool = True) -> pd.DataFrame:
    """Likelihood-ratio tests of the random-effects terms (lmerTest's ``ranova``;
    for a GLMM the same tests on its Laplace or quadrature deviance, the
    reduced model minimised over all its parameters).

    One row for the model (``<none>``) and one per reduced model: a term with
    several columns loses each non-intercept column group in turn
    (``reduce_terms=True``, e.g. ``cses in (cses | school)``), otherwise the
    whole term is dropped.  Reduced models keep the fit's method (REML or ML).
    Columns: npar, logLik, AIC, LRT, Df, Pr(>Chisq) and the boundary-corrected
    ``Pr(>Chisq) boundary`` where exactly one random-effect column is removed.
    """
    from scipy import stats  # scipy.stats costs 0.5 s to import: when used

    glmm = _is_glmm(fit)
    if hasattr(fit, "thresholds"):
        raise ModelError("ranova is not available for an ordinal model")
    if glmm:
        devfun = fit.devfun()
        tmpls = templates([r.q for r in fit.design.random])
    else:
        tmpls = fit.criterion.tmpl
    ntheta = len(fit.theta) if glmm else len(fit.optinfo.theta)
    base_npar = _npar(fit)
    rows = [
        {
            "npar": base_npar,
            "logLik": fit.loglik,
            "AIC": fit.aic,
            "LRT": np.nan,
            "Df": np.nan,
            "Pr(>Chisq)": np.nan,
            "Pr(>Chisq) boundary": np.nan,
        }
    ]
    labels = ["<none>"]
    # the formula's order of terms, not the engine's (ordered by levels)
    written = [t.text for t in fit.design.formula.random]
    terms = sorted(
        zip(fit.design.random, tmpls, strict=True),
        key=lambda rt: written.index(rt[0].term.text) if rt[0].term.text in written else 0,
    )
    for r, tmpl in terms:
        rows_t, cols_t = tmpl.rows, tmpl.cols
        idx = tmpl.offset + np.arange(tmpl.size)
        groups = _column_groups(r, fit.design.factor_specs) if reduce_terms and r.q > 1 else []
        reductions: list[tuple[str, list[int]]] = []
        if groups and r.term.expr.intercept:
            for g in groups:
                label = " + ".join(r.cnames[c] for c in g)
                reductions.append((f"{label} in {r.term.text}", g))
        elif groups and len(groups) > 1:
            for g in groups:
                label = " + ".join(r.cnames[c] for c in g)
                reductions.append((f"{label} in {r.term.text}", g))
        else:
            reductions.append((r.term.text, list(range(r.q))))
        for label, cols in reductions:
            mask = np.zeros(ntheta, dtype=bool)
            hit = np.isin(rows_t, cols) | np.isin(cols_t, cols)
            mask[idx[hit]] = True
            value = devfun.constrained(mask)[0] if glmm else constrained_fit(fit, mask)[0]
            ll = -0.5 * value
            npar = base_npar - int(mask.sum())
            df = base_npar - npar
            lrt = max(0.0, 2 * (fit.loglik - ll))
            rows.append(
                {
                    "npar": npar,
                    "logLik": ll,
                    "AIC": -2 * ll + 2 * npar,
                    "LRT": lrt,
                    "Df": df,
                    "Pr(>Chisq)": stats.chi2.sf(lrt, df),
                    "Pr(>Chisq) boundary": boundary_pvalue(lrt, df) if len(cols) == 1 else np.nan,
                }
            )
            labels.append(label)
    out = pd.DataFrame(rows, index=labels)
    out["Df"] = out["Df"].astype("Int64")
    return out


__all__ = ["anova", "boundary_pvalue", "constrained_fit", "nlme_anova", "ranova", "refit_ml"]
