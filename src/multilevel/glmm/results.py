"""Fitted generalized linear mixed models: estimates, random effects,
predictions and lme4's ``summary(glmerMod)`` layout.

Everything is computed from the conditional mode ũ at (θ̂, β̂) and the
PIRLS factor there; nothing refits.  Arrays inside the fit are in the row
order used for fitting (sorted by the first grouping factor); everything
returned is in the order of the data.
"""

from __future__ import annotations

import copy
import math
import textwrap
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from multilevel.errors import ModelError
from multilevel.formula.design import to_pandas
from multilevel.glmm.basis import GlmmBasis
from multilevel.glmm.montecarlo import DEFAULT_DF, Draws, MCEstimate, mc_loglik, warn_degenerate
from multilevel.inference.methods import InferenceMethods
from multilevel.mixedfit import MixedModelFit
from multilevel.optimize.record import OptRecord
from multilevel.report import (
    TextExport,
    correlation_block,
    fit_messages,
    format_pvalues,
    format_r,
    optimizer_record,
    quantile_line,
    random_effects_block,
    ranef_records,
    stars,
    table,
    table_records,
    varcorr_records,
)
from multilevel.threads import single_threaded_blas

if TYPE_CHECKING:
    from multilevel.formula.design import Design
    from multilevel.glmm.devfun import GlmmDevfun
    from multilevel.glmm.families import Family
    from multilevel.glmm.pirls import Mode, PirlsProblem


class GlmerFit(InferenceMethods, TextExport, MixedModelFit):
    """A generalized linear mixed model fitted by :func:`multilevel.glmer`.

    Beyond the lme4-style accessors: ``method`` ("laplace", "agq", "mc") and
    ``nAGQ``; ``mc`` (the :class:`~multilevel.glmm.montecarlo.MCEstimate` of a Monte
    Carlo fit); ``hessian``, the central-difference Hessian of the approximated
    deviance in (θ, β) behind ``vcov``; ``optinfo`` (second stage: its
    ``theta`` holds (θ, β), ``log`` every evaluation) and ``stage1`` (θ with β
    inside PIRLS).
    """

    _has_residual = False  # binomial and Poisson have no scale parameter

    def __init__(
        self,
        *,
        design: Design,
        family: Family,
        prob: PirlsProblem,
        perm: np.ndarray,
        mode: Mode,
        theta: np.ndarray,
        basis: GlmmBasis | None = None,
        vcov: np.ndarray,
        vcov_note: str,
        deviance: float,
        method: str,
        nAGQ: int,
        mc: MCEstimate | None,
        optinfo: OptRecord,
        stage1: OptRecord | None,
        hessian: np.ndarray | None,
        data_name: str = "data",
    ):
        self._prob = prob
        self._mode = mode
        self._basis = basis
        self._perm = perm
        self._inv = np.empty_like(perm)
        self._inv[perm] = np.arange(perm.size)
        self.mc = mc
        self._set_estimates(
            design=design,
            family=family,
            theta=theta,
            templates=mode.factor.T if basis is None else self._original_templates(theta),
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

    def _set_estimates(
        self,
        *,
        design,
        family,
        theta,
        templates,
        vcov,
        vcov_note,
        deviance,
        method,
        nAGQ,
        optinfo,
        stage1,
        hessian,
        data_name,
    ) -> None:
        """What every GLMM fit records, however it was computed."""
        self.design = design
        self.family = family
        self._theta = np.asarray(theta, dtype=float)
        self._vcov = np.asarray(vcov, dtype=float)
        self.vcov_note = vcov_note
        self._deviance = deviance
        self.method = method
        self.nAGQ = nAGQ
        self.optinfo = optinfo
        self.stage1 = stage1
        self.hessian = hessian
        self.data_name = data_name
        self.formula = design.formula.text
        self._T = templates
        self._templates = templates
        self._theta_values = self._theta

    # -- data-order helpers ----------------------------------------------------------
    def _data_order(self, a: np.ndarray) -> np.ndarray:
        return a[self._inv]

    @property
    def nobs(self) -> int:
        return self.design.nobs

    @property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates β̂."""
        return pd.Series(self._beta, index=self.design.fixef_names, name="Estimate")

    @property
    def sigma(self) -> float:
        """glmmTMB's ``sigma()``: 1 for binomial and Poisson, the negative
        binomial θ, 1/√shape for Gamma (the coefficient of variation), √φ for
        the inverse Gaussian (φ its dispersion), the precision φ for beta."""
        return self.family.sigma

    @property
    def nb_theta(self) -> float:
        """The negative binomial θ (lme4's ``getME(fit, "glmer.nb.theta")``)."""
        if self.family.name != "negative_binomial":
            raise ModelError(
                f"nb_theta is the negative binomial's θ; this fit's family is {self.family.name}"
            )
        return float(self.family.value)

    @property
    def family_param(self) -> pd.Series:
        """The family's own parameter (θ, shape, dispersion or φ) on its
        natural scale; empty for binomial and Poisson."""
        fam = self.family
        if fam.param_name is None:
            return pd.Series([], dtype=float, name="family")
        return pd.Series([float(fam.value)], index=[fam.param_name], name="family")

    @property
    def vcov(self) -> pd.DataFrame:
        """Covariance of β̂: the β block of 2 H⁻¹, H the Hessian of the
        approximated deviance in (θ, β) (lme4's default); see ``vcov_note``."""
        names = self.design.fixef_names
        return pd.DataFrame(self._vcov, index=names, columns=names)

    @property
    def se(self) -> pd.Series:
        return pd.Series(
            np.sqrt(np.diag(self._vcov)), index=self.design.fixef_names, name="Std. Error"
        )

    @property
    def zvalues(self) -> pd.Series:
        return pd.Series(
            self._beta / self.se.to_numpy(), index=self.design.fixef_names, name="z value"
        )

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided Wald p-values, 2 Φ(−|z|)."""
        from scipy.stats import norm  # scipy.stats costs 0.5 s to import: when used

        return pd.Series(
            2.0 * norm.sf(np.abs(self.zvalues.to_numpy())),
            index=self.design.fixef_names,
            name="Pr(>|z|)",
        )

    @property
    def coefficients(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "Estimate": self.fixef,
                "Std. Error": self.se,
                "z value": self.zvalues,
                "Pr(>|z|)": self.pvalues,
            }
        )

    @property
    def vcov_message(self) -> str:
        return {
            "hessian": "",
            "conditional": "standard errors conditional on theta (from the PIRLS factor)",
            "hessian-beta": "the Hessian in (theta, beta) is not positive definite; standard "
            "errors from its beta block (conditional on theta)",
            "none": "the Hessian of the deviance is not positive definite; standard errors "
            "conditional on theta (from the PIRLS factor)",
        }[self.vcov_note]

    # -- likelihood ------------------------------------------------------------------
    @property
    def loglik(self) -> float:
        """Full marginal log-likelihood (normalising constants included) by the
        fit's integration method; comparable across methods."""
        return -0.5 * self._deviance

    _basis: GlmmBasis | None = None  # X = X̃N, Z_k = Z̃_k V_k: the engine's β̃ = Nβ, b̃ = Vb

    def _original_templates(self, theta: np.ndarray) -> list[np.ndarray]:
        from multilevel.covariance import templates

        return [t.matrix(theta) for t in templates([V.shape[0] for V in self._basis.Vs])]

    @property
    def _beta(self) -> np.ndarray:
        """β̂ in the original columns of X."""
        beta = self._mode.beta
        return beta if self._basis is None else self._basis.beta(beta)

    def loglik_mc(
        self, samples: int = 2000, seed: int | None = 1, df: float = DEFAULT_DF
    ) -> MCEstimate:
        """Monte Carlo check: the importance-sampling estimate of the full
        marginal log-likelihood at (θ̂, β̂) with its standard error (module
        function :func:`loglik_mc`)."""
        est = mc_loglik(self._prob, self._mode, Draws(self._prob, samples, seed, df))
        warn_degenerate(est)
        return est

    @property
    def loglik_se(self) -> float:
        """Monte Carlo standard error of ``loglik`` (0 for Laplace and AGQ)."""
        return 0.0 if self.mc is None else self.mc.se

    @property
    def deviance(self) -> float:
        """−2 × loglik (the 'deviance' column of summary())."""
        return self._deviance

    @property
    def loglik_lme4(self) -> float:
        """The number lme4 1.1-31 reports for this fit: for nAGQ > 1 it leaves out
        the saturated-model term (``loglik − saturated_loglik``); otherwise loglik."""
        if self.method == "agq":
            return self.loglik - self.saturated_loglik
        return self.loglik

    @cached_property
    def saturated_loglik(self) -> float:
        """Σᵢ log f(yᵢ | μᵢ = yᵢ): lme4 1.1-31's AGQ logLik is loglik minus this."""
        return self.family.saturated_loglik(self._prob.resp)

    @property
    def df_model(self) -> int:
        return len(self._beta) + len(self._theta) + self.family.nfree

    @property
    def df_resid(self) -> int:
        return self.nobs - self.df_model

    @property
    def aic(self) -> float:
        return self._deviance + 2 * self.df_model

    @property
    def bic(self) -> float:
        return self._deviance + math.log(self.nobs) * self.df_model

    @property
    def method_title(self) -> str:
        if self.method == "agq" or (self.method == "laplace" and self.nAGQ == 0):
            return f"Adaptive Gauss-Hermite Quadrature, nAGQ = {self.nAGQ}"
        if self.method == "mc":
            return (
                f"Monte Carlo Importance Sampling, samples = {self.mc.samples}, "
                f"t df = {self.mc.df:g}"
            )
        return "Laplace Approximation"

    # -- random effects ------------------------------------------------------------------
    @cached_property
    def _b(self) -> list[np.ndarray]:
        us = self._prob.rb.split(self._mode.u)
        b = [u @ T.T for u, T in zip(us, self._mode.factor.T, strict=True)]
        return b if self._basis is None else self._basis.b(b)

    @cached_property
    def condvar(self) -> list[np.ndarray]:
        """Per term (n_k, q_k, q_k): diagonal blocks of Λ(ΛᵀZᵀWZΛ + I)⁻¹Λᵀ with the
        PIRLS weights at the mode (lme4's ``postVar``)."""
        from multilevel.glmm.pirls import conditional_variances

        C = conditional_variances(self._prob.rb, self._mode.factor)
        return C if self._basis is None else self._basis.condvar(C)

    # -- fitted values and residuals -------------------------------------------------------
    @cached_property
    def _eta(self) -> np.ndarray:
        return self._data_order(self._mode.eta)

    @cached_property
    def _mu(self) -> np.ndarray:
        return self.family.linkinv(self._eta)

    @property
    def linear_predictor(self) -> pd.Series:
        """η̂ = offset + Xβ̂ + Zb̃ on the fitting data."""
        return pd.Series(self._eta, index=self.design.row_index, name="eta")

    @property
    def fitted(self) -> pd.Series:
        """Conditional fitted means μ̂ = g⁻¹(η̂) (proportions for binomial trials)."""
        return pd.Series(self._mu, index=self.design.row_index, name="fitted")

    @property
    def y(self) -> pd.Series:
        """The response as fitted: 0/1 or proportions (binomial), counts (Poisson)."""
        return pd.Series(self._data_order(self._prob.resp.y), index=self.design.row_index, name="y")

    def residuals(self, type: str = "deviance") -> pd.Series:
        """Residuals of type ``"deviance"`` (default, as lme4), ``"pearson"``
        ((y − μ)√w/√V(μ)), ``"response"`` (y − μ) or ``"working"`` ((y − μ)/μ'(η))."""
        fam = self.family
        r = self._prob.resp
        y = self._data_order(r.y)
        wt = self._data_order(r.weights)
        mu, eta = self._mu, self._eta
        if type == "response":
            res = y - mu
        elif type == "pearson":
            res = (y - mu) * np.sqrt(wt) / np.sqrt(np.maximum(fam.variance(mu), 1e-300))
        elif type == "deviance":
            res = np.sign(y - mu) * np.sqrt(np.maximum(fam.dev_resids(y, mu, wt), 0.0))
        elif type == "working":
            res = (y - mu) / fam.mu_eta(eta)
        else:
            raise ValueError(
                f"type must be 'deviance', 'pearson', 'response' or 'working', not {type!r}"
            )
        return pd.Series(res, index=self.design.row_index, name="residuals")

    def predict(
        self,
        newdata: Any = None,
        re_form: str | None = None,
        allow_new_levels: bool = False,
        type: str = "link",
    ) -> pd.Series:
        """Predictions on the link (default, as lme4) or response scale.

        ``re_form=None`` includes all random effects, ``"~0"`` none (population
        level), ``"~(1 | g)"`` the terms named (lme4's ``re.form``).  New levels
        are an error unless ``allow_new_levels=True``, which predicts them with
        b = 0."""
        from multilevel.formula.newdata import fitted_predictor, re_form_terms

        if type not in ("link", "response"):
            raise ModelError(f"type must be 'link' or 'response', not {type!r}")
        include = re_form_terms(self.design, re_form)
        if newdata is None:
            if all(include):
                eta = self._eta.copy()
            else:
                eta = fitted_predictor(self.design, self._beta, self._b, include)
            index = self.design.row_index
        else:
            eta = self._predict_new(to_pandas(newdata), include, allow_new_levels)
            index = to_pandas(newdata).index
        out = eta if type == "link" else self.family.linkinv(eta)
        return pd.Series(out, index=index, name="predicted")

    def simulate(self, nsim: int = 1, seed: Any = None, use_u: bool = False) -> pd.DataFrame:
        """``nsim`` responses drawn from the fitted model (lme4's ``simulate``):
        new random effects b ~ N(0, Σ̂) per simulation (``use_u=True``: the
        conditional modes b̂ instead), η = offset + Xβ̂ + Zb, y ~ family(g⁻¹(η))
        at the family's estimated parameter.  On the scale of ``fit.y``
        (proportions for binomial trials); columns sim_1, ..., rows as fitted."""
        if int(nsim) != nsim or nsim < 1:
            raise ModelError(f"nsim must be a whole number of at least 1, not {nsim!r}")
        rng = np.random.default_rng(seed)
        resp = self._prob.resp.take(self._inv)
        fixed = self.design.X @ self._beta
        if self.design.offset is not None:
            fixed = fixed + self.design.offset
        cols = {}
        for i in range(int(nsim)):
            if use_u:
                eta = self._eta
            else:
                eta = fixed.copy()
                for r, T in zip(self.design.random, self._templates, strict=True):
                    b = rng.standard_normal((r.nlevels, r.q)) @ T.T
                    eta += np.einsum("nq,nq->n", r.Z, b[r.codes])
            cols[f"sim_{i + 1}"] = self.family.simulate(self.family.linkinv(eta), resp, rng)
        return pd.DataFrame(cols, index=self.design.row_index)

    _engine: Any = None  # the fitting function with this fit's settings (set by fit_glmm)

    def refit(self, newresp: Any) -> GlmerFit:
        """The same model fitted to a new response (lme4's ``refit``): one value
        per row used in the fit, on the scale of ``fit.y`` (proportions of the
        same numbers of trials for a binomial response, as ``simulate`` gives).
        Warnings are left to the caller."""
        y = np.asarray(newresp, dtype=float)
        if y.shape != (self.nobs,):
            raise ModelError(f"newresp needs {self.nobs} values, not {y.size}")
        return self._fit_again(lambda design: None, y)

    def null_model(self) -> GlmerFit:
        """The model with the same random effects, family and offset but only
        an intercept as fixed effect (insight's ``null_model``)."""
        from multilevel.formula.design import MatrixSpec

        def intercept_only(design) -> None:
            design.X = np.ones((self.nobs, 1))
            design.xspec = MatrixSpec(True, [], [], ["(Intercept)"])

        return self._fit_again(intercept_only)

    def _fit_again(self, change_design, y: np.ndarray | None = None) -> GlmerFit:
        """This fit's engine and settings on a copy of its design (changed by
        ``change_design``) and its response (or ``y`` in its place)."""
        if self._engine is None:
            raise ModelError("this fit cannot be refitted (it was not fitted in memory)")
        resp = self._prob.resp.take(self._inv)
        if y is not None:
            resp = self.family.new_response(resp, y)
        design = copy.copy(self.design)
        design.random = list(self.design.random)  # the fit orders the list in place
        change_design(design)
        with single_threaded_blas():
            return self._engine(design, copy.copy(self.family), resp)

    def devfun(self) -> GlmmDevfun:
        """The deviance as a function of (θ, β) in this fit's coordinates,
        approximated as the fit was (:class:`multilevel.glmm.devfun.GlmmDevfun`)."""
        from multilevel.glmm.devfun import GlmmDevfun

        return GlmmDevfun(self)

    def _predict_new(self, frame: pd.DataFrame, include: list[bool], allow_new: bool) -> np.ndarray:
        from multilevel.formula.newdata import linear_predictor

        return linear_predictor(self.design, self._beta, self._b, frame, include, allow_new)

    # -- export ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every number of the summary as plain Python types (JSON-ready)."""
        fp = self.family_param
        return {
            "model": "glmer",
            "formula": self.formula,
            "family": self.family.name,
            "link": self.family.link.name,
            "method": self.method,
            "nAGQ": self.nAGQ,
            "nobs": self.nobs,
            "n_dropped": self.design.n_dropped,
            "ngroups": dict(self.ngroups),
            "fixef": {k: float(v) for k, v in self.fixef.items()},
            "se": {k: float(v) for k, v in self.se.items()},
            "z": {k: float(v) for k, v in self.zvalues.items()},
            "p": {k: float(v) for k, v in self.pvalues.items()},
            "vcov": self.vcov.to_numpy().tolist(),
            "varcorr": varcorr_records(self.varcorr),
            "family_param": {k: float(v) for k, v in fp.items()},
            "loglik": self.loglik,
            "loglik_se": self.loglik_se,
            "aic": self.aic,
            "bic": self.bic,
            "deviance": self.deviance,
            "df_resid": self.df_resid,
            "singular": self.singular,
            "converged": self.converged,
            "messages": fit_messages(self),
            "coefficients": table_records(self.coefficients),
            "ranef": ranef_records(self.ranef, self.ranef_condsd),
            "fitted": [float(v) for v in self.fitted],
            "convergence": optimizer_record(self.optinfo),
        }

    # -- printing ----------------------------------------------------------------------------
    def summary(self) -> GlmerSummary:
        """lme4-style summary; ``print(fit.summary())`` shows it."""
        return GlmerSummary(self)

    def __repr__(self) -> str:
        return (
            f"<GlmerFit {self.family!r} {self.method_title}: {self.formula}; nobs={self.nobs}, "
            f"loglik={self.loglik:.4f}>"
        )


class GlmerSummary:
    """The summary of a GLMM fit: lme4's text layout and the coefficient table."""

    def __init__(self, fit: GlmerFit):
        self.fit = fit

    @property
    def coefficients(self) -> pd.DataFrame:
        return self.fit.coefficients

    def __str__(self) -> str:
        return glmer_summary(self.fit)

    __repr__ = __str__


# --------------------------------------------------------------------------- text

SIGNIF_LEGEND = (
    "Signif. codes:  0 \u2018***\u2019 0.001 \u2018**\u2019 0.01 \u2018*\u2019 "
    "0.05 \u2018.\u2019 0.1 \u2018 \u2019 1"
)


def fixed_effects_table(fit: GlmerFit) -> str:
    """printCoefmat: estimates and SEs rounded together, z to 3 decimals, p-values
    by format.pval, significance stars."""
    est = fit.fixef.to_numpy()
    se = fit.se.to_numpy()
    both = np.concatenate([est, se])
    finite = np.abs(both[np.isfinite(both) & (both != 0)])
    digits = 4
    if finite.size:
        digmin = 1 + np.floor(np.log10([finite.min(), finite.max()]))
        dec = int(max(1, digits - digmin.min()))
    else:
        dec = 1
    txt = format_r(np.round(both, dec), digits)
    z = fit.zvalues.to_numpy()
    ztxt = format_r(np.round(z, 3), digits)
    p = fit.pvalues.to_numpy()
    ptxt = format_pvalues(p, 3)
    marks = [stars(v).ljust(3) for v in p]
    names = list(fit.fixef.index)
    k = len(est)
    rows = [[nm, txt[i], txt[k + i], ztxt[i], ptxt[i], marks[i]] for i, nm in enumerate(names)]
    return table(rows, ["", "Estimate", "Std. Error", "z value", "Pr(>|z|)", "   "])


def glmer_summary(fit: GlmerFit) -> str:
    """lme4's ``print(summary(glmerFit))`` layout."""
    title = (
        f"Generalized linear mixed model fit by maximum likelihood ({fit.method_title}) [glmerMod]"
    )
    out = textwrap.wrap(title, width=71, subsequent_indent="  ", break_on_hyphens=False)
    out.append(f" Family: {fit.family.describe()}  ( {fit.family.link.name} )")
    out.append(f"Formula: {fit.formula}")
    out.append(f"   Data: {fit.data_name}")
    if fit.design.n_dropped:
        out.append(f"   ({fit.design.n_dropped} observations deleted due to missingness)")
    out.append("")
    vals = [fit.aic, fit.bic, fit.loglik, fit.deviance]
    labels = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
    cells = [f"{v:.1f}" for v in vals] + [str(int(fit.df_resid))]
    w = max(len(c) for c in labels + cells)
    out.append(" ".join(a.rjust(w) for a in labels) + " ")
    out.append(" ".join(a.rjust(w) for a in cells) + " ")
    if fit.mc is not None:
        out.append(
            f"(Monte Carlo standard error of logLik: {fit.mc.se:.3g}; "
            f"smallest effective sample size {fit.mc.ess:.0f})"
        )
    out.append("")
    scaled = fit.residuals(type="pearson").to_numpy() / math.sqrt(fit.family.dispersion)
    q = np.quantile(scaled, [0, 0.25, 0.5, 0.75, 1])
    out.append("Scaled residuals: ")
    out.append(quantile_line(q))
    out.append("")
    out.append("Random effects:")
    out.append(random_effects_block(fit))
    groups = "; ".join(f"{g}, {n}" for g, n in fit.ngroups.items())
    out.append(f"Number of obs: {fit.nobs}, groups:  {groups}")
    if fit.family.summary_line() is not None:
        out.append("")
        out.append(fit.family.summary_line())
    out.append("")
    out.append("Fixed effects:")
    out.append(fixed_effects_table(fit))
    out.append("---")
    out.append(SIGNIF_LEGEND)
    names = list(fit.fixef.index)
    if len(names) > 1 and np.isfinite(fit._vcov).all():
        out.append("")
        out.append("Correlation of Fixed Effects:")
        v = fit._vcov
        d = np.sqrt(np.diag(v))
        out.append(correlation_block(names, v / np.outer(d, d)))
    notes = []
    if fit.singular:
        notes.append(fit.singular_message)
    notes.extend(fit.optinfo.messages)
    if fit.vcov_message:
        notes.append(fit.vcov_message)
    if notes:
        out.append("")
        out.extend(notes)
    return "\n".join(out)


def loglik_mc(
    fit: GlmerFit, samples: int = 2000, seed: int | None = 1, df: float = DEFAULT_DF
) -> MCEstimate:
    """Monte Carlo check of a fit: the importance-sampling estimate of the full
    marginal log-likelihood at the fit's (θ̂, β̂), with its standard error.

    Compare with ``fit.loglik``: for an adequate Laplace or AGQ fit the two
    agree within a few standard errors."""
    return fit.loglik_mc(samples, seed, df)
