"""Fitted generalized linear mixed models: estimates, random effects,
predictions and lme4's ``summary(glmerMod)`` layout.

Everything is computed from the conditional mode ũ at (θ̂, β̂) and the
PIRLS factor there; nothing refits.  Arrays inside the fit are in the row
order used for fitting (sorted by the first grouping factor); everything
returned is in the order of the data.
"""

from __future__ import annotations

import math
import textwrap
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from .covariance import sd_corr, theta_names
from .design import to_pandas
from .optimize import BOUNDARY_TOL, OptRecord
from .report import correlation_block, format_r, quantile_line, table

if TYPE_CHECKING:
    from .design import Design
    from .families import Family
    from .montecarlo import MCEstimate
    from .pirls import Mode, PirlsProblem


class GlmerFit:
    """A generalized linear mixed model fitted by :func:`multilevel.glmer`.

    Beyond the lme4-style accessors: ``method`` ("laplace", "agq", "mc") and
    ``nAGQ``; ``mc`` (the :class:`~multilevel.montecarlo.MCEstimate` of a Monte
    Carlo fit); ``hessian``, the central-difference Hessian of the approximated
    deviance in (θ, β) behind ``vcov``; ``optinfo`` (second stage: its
    ``theta`` holds (θ, β), ``log`` every evaluation) and ``stage1`` (θ with β
    inside PIRLS).
    """

    def __init__(
        self,
        *,
        design: Design,
        family: Family,
        prob: PirlsProblem,
        perm: np.ndarray,
        mode: Mode,
        theta: np.ndarray,
        vcov: np.ndarray,
        vcov_note: str,
        deviance: float,
        method: str,
        nAGQ: int,
        mc: MCEstimate | None,
        optinfo: OptRecord,
        stage1: OptRecord,
        hessian: np.ndarray | None,
        data_name: str = "data",
    ):
        self.design = design
        self.family = family
        self._prob = prob
        self._mode = mode
        self._perm = perm
        self._inv = np.empty_like(perm)
        self._inv[perm] = np.arange(perm.size)
        self._theta = np.asarray(theta, dtype=float)
        self._vcov = np.asarray(vcov, dtype=float)
        self.vcov_note = vcov_note
        self._deviance = deviance
        self.method = method
        self.nAGQ = nAGQ
        self.mc = mc
        self.optinfo = optinfo
        self.stage1 = stage1
        self.hessian = hessian
        self.data_name = data_name
        self.formula = design.formula.text
        self._T = mode.factor.T

    # -- data-order helpers ----------------------------------------------------------
    def _data_order(self, a: np.ndarray) -> np.ndarray:
        return a[self._inv]

    @property
    def nobs(self) -> int:
        return self.design.nobs

    @property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates β̂."""
        return pd.Series(self._mode.beta, index=self.design.fixef_names, name="Estimate")

    @property
    def theta(self) -> pd.Series:
        """Relative covariance factors' lower triangles (lme4's ``getME(, "theta")``);
        for a GLMM they are the Cholesky factors of the random effects' covariances."""
        names: list[str] = []
        for r in self.design.random:
            names.extend(theta_names(r.name, r.cnames))
        return pd.Series(self._theta, index=names, name="theta")

    @property
    def sigma(self) -> float:
        return 1.0

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
            self._mode.beta / self.se.to_numpy(), index=self.design.fixef_names, name="z value"
        )

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided Wald p-values, 2 Φ(−|z|)."""
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
        return len(self._mode.beta) + len(self._theta)

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
    def ngroups(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.design.random:
            out.setdefault(r.name, r.nlevels)
        return out

    @property
    def converged(self) -> bool:
        return self.optinfo.converged

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

    # -- variance components -----------------------------------------------------------
    def _blocks(self) -> list[tuple[str, list[str], np.ndarray]]:
        seen: dict[str, int] = {}
        out = []
        for r, T in zip(self.design.random, self._T, strict=True):
            k = seen.get(r.name, 0)
            seen[r.name] = k + 1
            out.append((r.name if k == 0 else f"{r.name}.{k}", r.cnames, T @ T.T))
        return out

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """lme4's ``as.data.frame(VarCorr(fit))``: grp, var1, var2, vcov, sdcor (no
        Residual row: binomial and Poisson have no scale parameter)."""
        rows = []
        for name, cnames, cov in self._blocks():
            sd, corr = sd_corr(cov)
            for i, cn in enumerate(cnames):
                rows.append((name, cn, None, cov[i, i], sd[i]))
            for i in range(len(cnames)):
                for j in range(i + 1, len(cnames)):
                    rows.append((name, cnames[i], cnames[j], cov[i, j], corr[i, j]))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    @cached_property
    def _boundary(self) -> list[str]:
        msgs = []
        for r, T in zip(self.design.random, self._T, strict=True):
            for j in range(r.q):
                if abs(T[j, j]) < BOUNDARY_TOL:
                    what = (
                        f"the variance of {r.cnames[j]!r} is estimated as 0"
                        if j == 0 or r.q == 1
                        else f"{r.cnames[j]!r} is perfectly correlated with the earlier columns"
                    )
                    msgs.append(f"{r.term.text}: {what}")
        return msgs

    @property
    def singular(self) -> bool:
        return bool(self._boundary)

    @property
    def singular_message(self) -> str:
        return "boundary (singular) fit: " + "; ".join(self._boundary) if self._boundary else ""

    # -- random effects ------------------------------------------------------------------
    @cached_property
    def _b(self) -> list[np.ndarray]:
        us = self._prob.rb.split(self._mode.u)
        return [u @ T.T for u, T in zip(us, self._T, strict=True)]

    def _by_group(self, blocks: list[np.ndarray]) -> dict[str, pd.DataFrame]:
        out: dict[str, pd.DataFrame] = {}
        for r, b in zip(self.design.random, blocks, strict=True):
            df = pd.DataFrame(b, index=pd.Index(r.levels, name=r.name), columns=r.cnames)
            if r.name in out:
                df.columns = [c if c not in out[r.name].columns else f"{c}.1" for c in df.columns]
                df = pd.concat([out[r.name], df], axis=1)
            out[r.name] = df
        return out

    @cached_property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes b̃ (linear-predictor scale) per grouping factor."""
        return self._by_group(self._b)

    @cached_property
    def condvar(self) -> list[np.ndarray]:
        """Per term (n_k, q_k, q_k): diagonal blocks of Λ(ΛᵀZᵀWZΛ + I)⁻¹Λᵀ with the
        PIRLS weights at the mode (lme4's ``postVar``)."""
        from .pirls import conditional_variances

        return conditional_variances(self._prob.rb, self._mode.factor)

    @cached_property
    def ranef_condsd(self) -> dict[str, pd.DataFrame]:
        """Conditional standard deviations of the random effects, laid out as ranef."""
        return self._by_group([np.sqrt(np.diagonal(v, axis1=1, axis2=2)) for v in self.condvar])

    @cached_property
    def coef(self) -> dict[str, pd.DataFrame]:
        """Per grouping factor: fixed effects plus that factor's random effects."""
        out = {}
        fe = self.fixef
        for g, re in self.ranef.items():
            df = pd.DataFrame(
                np.tile(fe.to_numpy(), (len(re), 1)), index=re.index, columns=fe.index
            )
            for c in re.columns:
                df[c] = df[c] + re[c] if c in df.columns else re[c]
            out[g] = df
        return out

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
        level).  New levels are an error unless ``allow_new_levels=True``, which
        predicts them with b = 0."""
        if type not in ("link", "response"):
            raise ValueError(f"type must be 'link' or 'response', not {type!r}")
        population = re_form is not None and re_form.replace(" ", "") in ("~0", "NA", "~-1")
        if re_form is not None and not population:
            raise ValueError("re_form must be None (all random effects) or '~0' (none)")
        if newdata is None:
            eta = self._eta.copy()
            if population:
                eta = self.design.X @ self._mode.beta
                if self.design.offset is not None:
                    eta = eta + self.design.offset
            index = self.design.row_index
        else:
            eta = self._predict_new(to_pandas(newdata), population, allow_new_levels)
            index = to_pandas(newdata).index
        out = eta if type == "link" else self.family.linkinv(eta)
        return pd.Series(out, index=index, name="predicted")

    def _predict_new(self, frame: pd.DataFrame, population: bool, allow_new: bool) -> np.ndarray:
        from .results import linear_predictor

        return linear_predictor(self.design, self._mode.beta, self._b, frame, population, allow_new)

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


def _format_sci(values: list[float], digits: int) -> list[str]:
    """R's scientific format: the fewest significant digits (at most ``digits``)
    that show every value to ``digits`` significant digits, exponent ≥ 2 digits."""
    sig = 1
    for v in values:
        target = float(f"{v:.{digits - 1}e}")
        for d in range(1, digits + 1):
            if float(f"{v:.{d - 1}e}") == target:
                sig = max(sig, d)
                break
    out = []
    for v in values:
        mant, exp = f"{v:.{sig - 1}e}".split("e")
        out.append(f"{mant}e{int(exp):+03d}")
    return out


def format_numbers(values: list[float], digits: int) -> list[str]:
    """R's ``format(x, digits=)``: fixed notation unless scientific is narrower."""
    fixed = format_r(values, digits)
    sci = _format_sci(values, digits)
    if max(map(len, fixed)) <= max(map(len, sci)):
        return fixed
    return sci


def format_pvalues(p: np.ndarray, digits: int = 3) -> list[str]:
    """R's ``format.pval``: p-values down to 1e-4 (exponent ≥ −4 when digits > 1)
    formatted together, smaller ones together, those below machine epsilon as
    ``< 2e-16``."""
    out = ["NA"] * len(p)
    eps = np.finfo(float).eps
    ok = [i for i, v in enumerate(p) if np.isfinite(v) and v >= eps]
    lim = -4 if digits > 1 else -3
    fixed = [i for i in ok if math.floor(math.log10(p[i])) >= lim]
    small = [i for i in ok if math.floor(math.log10(p[i])) < lim]
    for group in (fixed, small):
        if group:
            for i, txt in zip(group, format_numbers([p[i] for i in group], digits), strict=True):
                out[i] = txt
    for i, v in enumerate(p):
        if np.isfinite(v) and v < eps:
            out[i] = "< 2e-16"
    return out


def _stars(p: float) -> str:
    if not np.isfinite(p):
        return ""
    for cut, s in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p <= cut:
            return s
    return ""


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
    stars = [_stars(v).ljust(3) for v in p]
    names = list(fit.fixef.index)
    k = len(est)
    rows = [[nm, txt[i], txt[k + i], ztxt[i], ptxt[i], stars[i]] for i, nm in enumerate(names)]
    return table(rows, ["", "Estimate", "Std. Error", "z value", "Pr(>|z|)", "   "])


def random_effects_block(fit: GlmerFit) -> str:
    """lme4's random-effects table for a GLMM (no Residual row)."""
    vc = fit.varcorr
    variances = vc[vc["var2"].isna()]
    var_txt = format_numbers(list(variances["vcov"]), 4)
    sd_txt = format_numbers(list(variances["sdcor"]), 4)
    show_corr = any(r.q > 1 for r in fit.design.random)
    rows: list[list[str]] = []
    k = 0
    for name, cnames, cov in fit._blocks():
        _, corr = sd_corr(cov)
        for i, cn in enumerate(cnames):
            row = [name if i == 0 else "", cn, var_txt[k], sd_txt[k]]
            if show_corr:
                row.append(" ".join(f"{corr[i, j]:.2f}" for j in range(i)))
            rows.append(row)
            k += 1
    header = ["Groups", "Name", "Variance", "Std.Dev."] + (["Corr"] if show_corr else [])
    widths = [max(len(r[j]) for r in rows + [header]) for j in range(len(header))]
    for j in (2, 3):  # numbers share the column's width and align right inside it
        w = max(len(r[j]) for r in rows)
        for r in rows:
            r[j] = r[j].rjust(w)
    lines = []
    for r in [header] + rows:
        lines.append(" " + " ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def glmer_summary(fit: GlmerFit) -> str:
    """lme4's ``print(summary(glmerFit))`` layout."""
    title = (
        f"Generalized linear mixed model fit by maximum likelihood ({fit.method_title}) [glmerMod]"
    )
    out = textwrap.wrap(title, width=71, subsequent_indent="  ", break_on_hyphens=False)
    out.append(f" Family: {fit.family.name}  ( {fit.family.link.name} )")
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
    q = np.quantile(fit.residuals(type="pearson").to_numpy(), [0, 0.25, 0.5, 0.75, 1])
    out.append("Scaled residuals: ")
    out.append(quantile_line(q))
    out.append("")
    out.append("Random effects:")
    out.append(random_effects_block(fit))
    groups = "; ".join(f"{g}, {n}" for g, n in fit.ngroups.items())
    out.append(f"Number of obs: {fit.nobs}, groups:  {groups}")
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
