"""Fitted cumulative link mixed models, reported as ``ordinal::clmm`` reports
them: threshold parameters and regression coefficients (no intercept), their
covariance, conditional modes, category probabilities, the summary layout.

The engine fits η = Xβ + Zb with an intercept β₀ and thresholds relative to
it, a(ψ) (:mod:`multilevel.glmm.families.ordinal`); ordinal's parameters are

    γ = P a(ψ) − β₀ v  (thresholds α = Jγ = a − β₀),   β without β₀,

and their covariance is G V Gᵀ, V = 2H⁻¹ restricted to (ψ, β) (H the Hessian
of the deviance in (θ, ψ, β), θ included, as ordinal's ``vcov``), G the
Jacobian of (ψ, β) ↦ (γ, β₋₀).
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np
import pandas as pd

from multilevel.errors import ModelError
from multilevel.glmm.results import SIGNIF_LEGEND, GlmerFit
from multilevel.optimize.stage2 import vcov_from_hessian
from multilevel.report import (
    fit_messages,
    format_pvalues,
    format_r,
    optimizer_record,
    random_effects_block,
    ranef_records,
    stars,
    table,
    table_records,
    varcorr_records,
)


class ClmmFit(GlmerFit):
    """A cumulative link mixed model fitted by :func:`multilevel.clmm`.

    ``thresholds`` (α, named ``1|2``, ``2|3``...), ``alpha`` (ordinal's
    threshold parameters: α itself for flexible thresholds, ``threshold.1``
    and ``spacing`` for equidistant ones, ``central``/``spacing.k`` for
    symmetric ones), ``fixef`` (β, without an intercept), ``coefficients``,
    ``se``, ``vcov`` over (alpha, β), ``varcorr``, ``ranef`` and ``condvar``,
    ``loglik``, ``aic``, ``bic``; ``predict`` gives category probabilities.
    """

    # -- parameters --------------------------------------------------------------------
    @property
    def link(self) -> str:
        return self.family.link.name

    @property
    def threshold(self) -> str:
        return self.family.threshold

    @property
    def levels(self) -> list[str]:
        """The response categories, lowest first."""
        return list(self.family.levels)

    @property
    def _beta0(self) -> float:
        return float(self._beta[0])

    @property
    def thresholds(self) -> pd.Series:
        """α₁ < ... < α_{K−1}: P(Y ≤ j) = F(αⱼ − η)."""
        return pd.Series(
            self.family.alpha(self._beta0), index=self.family.alpha_names, name="thresholds"
        )

    @property
    def alpha(self) -> pd.Series:
        """ordinal's threshold parameters γ (α = Jγ)."""
        return pd.Series(
            self.family.gamma(self._beta0), index=self.family.gamma_names, name="alpha"
        )

    @property
    def family_param(self) -> pd.Series:
        """The family's own parameters: ordinal's threshold parameters (``alpha``)."""
        return self.alpha

    @property
    def fixef(self) -> pd.Series:
        """β̂ (no intercept: the thresholds take its place)."""
        return pd.Series(self._beta[1:], index=self.design.fixef_names[1:], name="Estimate")

    @property
    def coef(self) -> pd.Series:
        """(alpha, β), ordinal's ``coef()``."""
        return pd.concat([self.alpha, self.fixef]).rename("Estimate")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # ordinal's covariance replaces the engine's β-only one, and so does its note
        self._coef_cov, self.vcov_note = self._alpha_beta_vcov()

    def _alpha_beta_vcov(self) -> tuple[np.ndarray, str]:
        """G V Gᵀ with V the (ψ, β) block of 2H⁻¹ (of H's (ψ, β) block alone,
        conditional on θ, when H is not positive definite, e.g. a variance at 0)."""
        nt, nf = len(self._theta), self.family.nfree
        p = len(self._beta)
        ng = len(self.family.gamma_names)
        G = np.zeros((ng + p - 1, nf + p))
        G[:ng, : nf + 1] = self.family.gamma_jacobian()
        G[ng:, nf + 1 :] = np.eye(p - 1)
        V, note = vcov_from_hessian(self.hessian, nt)
        if V is None:
            k = ng + p - 1
            return np.full((k, k), np.nan), "none"
        return G @ V[nt:, nt:] @ G.T, note

    @property
    def vcov(self) -> pd.DataFrame:
        """Covariance of (alpha, β): from 2H⁻¹ with H the Hessian in (θ, ψ, β)."""
        names = list(self.coef.index)
        return pd.DataFrame(self._coef_cov, index=names, columns=names)

    @property
    def vcov_message(self) -> str:
        return {
            "hessian": "",
            "hessian-beta": "the Hessian in (theta, thresholds, beta) is not positive definite; "
            "standard errors conditional on theta",
            "none": "the Hessian of the deviance is not positive definite in the thresholds "
            "and coefficients: no standard errors",
        }[self.vcov_note]

    @property
    def se(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self._coef_cov)), index=self.coef.index, name="Std. Error")

    @property
    def zvalues(self) -> pd.Series:
        return pd.Series(self.coef.to_numpy() / self.se.to_numpy(), index=self.coef.index,
                         name="z value")  # fmt: skip

    @property
    def pvalues(self) -> pd.Series:
        from scipy.stats import norm

        return pd.Series(2.0 * norm.sf(np.abs(self.zvalues.to_numpy())), index=self.coef.index,
                         name="Pr(>|z|)")  # fmt: skip

    @property
    def coefficients(self) -> pd.DataFrame:
        """Estimates, standard errors, z and p for alpha then β."""
        return pd.DataFrame(
            {"Estimate": self.coef, "Std. Error": self.se, "z value": self.zvalues,
             "Pr(>|z|)": self.pvalues}
        )  # fmt: skip

    def confint(self, method: str = "Wald", level: float = 0.95) -> pd.DataFrame:
        """Wald intervals for alpha and β (ordinal's ``confint`` for clmm)."""
        from scipy.stats import norm

        if str(method).lower() != "wald":
            raise ModelError(f"clmm has Wald intervals only (as ordinal), not method={method!r}")
        if not 0 < level < 1:
            raise ModelError(f"level must be between 0 and 1, not {level!r}")
        z = norm.ppf(0.5 + level / 2)
        est, se = self.coef.to_numpy(), self.se.to_numpy()
        lo, hi = f"{100 * (1 - level) / 2:g} %", f"{100 * (1 + level) / 2:g} %"
        return pd.DataFrame({lo: est - z * se, hi: est + z * se}, index=self.coef.index)

    @property
    def df_model(self) -> int:
        return len(self.family.gamma_names) + len(self._beta) - 1 + len(self._theta)

    # -- fitted values and predictions ---------------------------------------------------
    @property
    def fitted(self) -> pd.Series:
        """P(Y = observed category | b̂): ordinal's ``fitted``."""
        y = self._data_order(self._prob.resp.y)
        return pd.Series(
            self.family.probability(y, self._eta), index=self.design.row_index, name="fitted"
        )

    @property
    def y(self) -> pd.Series:
        """The response's categories as fitted."""
        codes = self._data_order(self._prob.resp.y).astype(int)
        cat = pd.Categorical.from_codes(codes, categories=self.levels, ordered=True)
        return pd.Series(cat, index=self.design.row_index, name="y")

    def residuals(self, type: str = "deviance") -> pd.Series:
        raise ModelError(
            "a cumulative link model has no residuals of the GLM kinds (ordinal defines none "
            "for clmm); use fitted (the probability of the observed category) or predict"
        )

    def predict(
        self,
        newdata: Any = None,
        re_form: str | None = None,
        allow_new_levels: bool = False,
        type: str = "prob",
    ) -> pd.DataFrame | pd.Series:
        """Predictions at the fitting rows or ``newdata``: ``type="prob"``
        (default) the probability of every category (a DataFrame, one column
        per category), ``"cum.prob"`` P(Y ≤ j), ``"class"`` the most probable
        category, ``"linear.predictor"`` η = xᵀβ + zᵀb (no intercept, ordinal's
        sign).  ``re_form=None`` includes the random effects at their
        conditional modes, ``"~0"`` none (b = 0)."""
        types = ("prob", "cum.prob", "class", "linear.predictor")
        if type not in types:
            raise ModelError(f"type must be one of {', '.join(types)}, not {type!r}")
        eta = super().predict(newdata, re_form, allow_new_levels, type="link")
        index = eta.index
        eta = eta.to_numpy()
        if type == "linear.predictor":
            return pd.Series(eta - self._beta0, index=index, name="eta")
        probs = self.family.category_probs(eta)
        if type == "class":
            cat = pd.Categorical.from_codes(
                np.argmax(probs, axis=1), categories=self.levels, ordered=True
            )
            return pd.Series(cat, index=index, name="class")
        if type == "cum.prob":
            probs = np.cumsum(probs, axis=1)
        return pd.DataFrame(probs, index=index, columns=self.levels)

    def simulate(self, nsim: int = 1, seed: Any = None, use_u: bool = False) -> pd.DataFrame:
        """``nsim`` responses drawn from the fitted model, as ordered categories."""
        sims = super().simulate(nsim, seed, use_u)
        return sims.apply(
            lambda c: pd.Categorical.from_codes(
                c.to_numpy().astype(int), categories=self.levels, ordered=True
            )
        )

    # -- printing and export --------------------------------------------------------------
    @property
    def method_title(self) -> str:
        if self.method == "agq":
            return (
                "the adaptive Gauss-Hermite quadrature approximation with "
                f"{self.nAGQ} quadrature points"
            )
        return "the Laplace approximation"

    def summary(self) -> ClmmSummary:
        """ordinal's ``summary(clmm)`` layout; ``print(fit.summary())`` shows it."""
        return ClmmSummary(self)

    def to_dict(self) -> dict[str, Any]:
        """Every number of the summary as plain Python types (JSON-ready)."""
        return {
            "model": "clmm",
            "formula": self.formula,
            "link": self.link,
            "threshold": self.threshold,
            "method": self.method,
            "nAGQ": self.nAGQ,
            "nobs": self.nobs,
            "n_dropped": self.design.n_dropped,
            "ngroups": dict(self.ngroups),
            "levels": self.levels,
            "thresholds": _floats(self.thresholds),
            "alpha": _floats(self.alpha),
            "fixef": _floats(self.fixef),
            "se": _floats(self.se),
            "z": _floats(self.zvalues),
            "p": _floats(self.pvalues),
            "vcov": self.vcov.to_numpy().tolist(),
            "varcorr": varcorr_records(self.varcorr),
            "loglik": self.loglik,
            "aic": self.aic,
            "bic": self.bic,
            "df_model": self.df_model,
            "converged": self.converged,
            "messages": fit_messages(self),
            "coefficients": table_records(self.coefficients),
            "ranef": ranef_records(self.ranef, self.ranef_condsd),
            "fitted": [float(v) for v in self.fitted],
            "convergence": optimizer_record(self.optinfo),
        }

    def __repr__(self) -> str:
        return (
            f"<ClmmFit {self.link} {self.threshold} ({self.method}): {self.formula}; "
            f"nobs={self.nobs}, loglik={self.loglik:.4f}>"
        )


def _floats(s: pd.Series) -> dict[str, float]:
    return {str(k): float(v) for k, v in s.items()}


class ClmmSummary:
    """The summary of a clmm fit: ordinal's layout and the coefficient table."""

    def __init__(self, fit: ClmmFit):
        self.fit = fit

    @property
    def coefficients(self) -> pd.DataFrame:
        return self.fit.coefficients

    def __str__(self) -> str:
        return clmm_summary(self.fit)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.fit._repr_html_()


def _coef_table(fit: ClmmFit, rows: list[int], pvalues: bool) -> str:
    """printCoefmat's columns for the given rows of ``fit.coefficients``."""
    c = fit.coefficients.iloc[rows]
    est, se = c["Estimate"].to_numpy(), c["Std. Error"].to_numpy()
    both = np.concatenate([est, se])
    finite = np.abs(both[np.isfinite(both) & (both != 0)])
    digits = 4
    dec = 1
    if finite.size:
        digmin = 1 + np.floor(np.log10([finite.min(), finite.max()]))
        dec = int(max(1, digits - digmin.min()))
    txt = format_r(np.round(both, dec), digits)
    ztxt = format_r(np.round(c["z value"].to_numpy(), 3), digits)
    k = len(est)
    out = []
    for i, nm in enumerate(c.index):
        row = [str(nm), txt[i], txt[k + i], ztxt[i]]
        if pvalues:
            p = c["Pr(>|z|)"].to_numpy()
            row += [format_pvalues(p, 3)[i], stars(p[i]).ljust(3)]
        out.append(row)
    header = ["", "Estimate", "Std. Error", "z value"]
    if pvalues:
        header += ["Pr(>|z|)", "   "]
    return table(out, header)


def clmm_summary(fit: ClmmFit) -> str:
    """ordinal's ``print(summary(clmm))`` layout."""
    out = textwrap.wrap(
        f"Cumulative Link Mixed Model fitted with {fit.method_title}", width=66,
        break_on_hyphens=False,
    )  # fmt: skip
    out += ["", f"formula: {fit.formula}", f"data:    {fit.data_name}", ""]
    if fit.design.n_dropped:
        out.insert(-1, f"({fit.design.n_dropped} observations deleted due to missingness)")
    grad = fit.optinfo.gradient
    mg = float(np.max(np.abs(grad))) if grad is not None and np.size(grad) else math.nan
    H = fit.hessian
    condh = math.nan
    if H is not None:
        ev = np.linalg.eigvalsh(H)
        condh = float(ev.max() / ev.min()) if ev.min() > 0 else math.inf
    cells = [
        ("link", fit.link),
        ("threshold", fit.threshold),
        ("nobs", str(fit.nobs)),
        ("logLik", f"{fit.loglik:.2f}"),
        ("AIC", f"{fit.aic:.2f}"),
        ("niter", str(fit.optinfo.evals)),
        ("max.grad", f"{mg:.2e}"),
        ("cond.H", f"{condh:.1e}"),
    ]
    widths = [max(len(a), len(b)) for a, b in cells]
    out.append(" " + " ".join(a.ljust(w) for (a, _), w in zip(cells, widths, strict=True)) + " ")
    out.append(" " + " ".join(b.ljust(w) for (_, b), w in zip(cells, widths, strict=True)) + " ")
    out += ["", "Random effects:", random_effects_block(fit)]
    out.append("Number of groups:  " + ", ".join(f"{g} {n}" for g, n in fit.ngroups.items()) + " ")
    ng = len(fit.family.gamma_names)
    nb = len(fit.fixef)
    if nb:
        out += ["", "Coefficients:", _coef_table(fit, list(range(ng, ng + nb)), True), "---",
                SIGNIF_LEGEND]  # fmt: skip
    out += ["", "Threshold coefficients:", _coef_table(fit, list(range(ng)), False)]
    notes = list(fit.design.messages)
    if fit.singular:
        notes.append(fit.singular_message)
    notes.extend(fit.optinfo.messages)
    if fit.vcov_message:
        notes.append(fit.vcov_message)
    if notes:
        out += [""] + notes
    return "\n".join(out)
