"""Fitted linear mixed models: estimates, random effects, predictions.

Attributes follow lme4's accessors (``fixef``, ``ranef``, ``varcorr``,
``theta``, ``sigma``, ``loglik``, ...) and return pandas objects indexed by
R-style names.  Everything is computed from the blocked Cholesky factor at the
optimal θ; nothing refits.
"""

from __future__ import annotations

import copy
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from multilevel.errors import ModelError
from multilevel.formula.design import Design, to_pandas
from multilevel.formula.newdata import fitted_predictor, linear_predictor, re_form_terms
from multilevel.inference.methods import InferenceMethods
from multilevel.lmm.estimate import estimate
from multilevel.mixedfit import MixedModelFit
from multilevel.optimize.record import OptRecord
from multilevel.report import (
    fit_messages,
    optimizer_record,
    ranef_records,
    table_records,
    varcorr_records,
)
from multilevel.threads import single_threaded_blas

if TYPE_CHECKING:
    from multilevel.lmm.criterion import ProfiledCriterion


class LmerFit(InferenceMethods, MixedModelFit):
    """A linear mixed model fitted by :func:`multilevel.lmer`."""

    def __init__(
        self,
        design: Design,
        criterion: ProfiledCriterion,
        record: OptRecord,
        *,
        REML: bool,
        data_name: str = "data",
    ):
        self.design = design
        self.criterion = criterion
        self.optinfo = record
        self.REML = REML
        self.data_name = data_name
        self.formula = design.formula.text
        fac = criterion.factor(record.theta, keep=True)
        if fac is None or not np.isfinite(fac.log_r2):
            raise ModelError(
                "the fixed effects reproduce the response exactly (residual variance 0): "
                "there is no variation left for a mixed model to describe"
            )
        self._fac = fac
        beta, us = criterion.solve(fac)
        self._beta = beta
        self._u = us
        n, p = design.nobs, design.X.shape[1]
        # σ̂ from the factor's last diagonal element: σ̂² itself may not be
        # representable for a response in extreme units (1e-200, 1e200)
        self._sigma = float(np.exp(0.5 * (fac.log_r2 - np.log(n - p if REML else n))))
        self._sigma2 = self._sigma * self._sigma  # Python floats: inf or 0, no warning
        self._crit = criterion.value(fac)

    # -- basic quantities -----------------------------------------------------
    @property
    def nobs(self) -> int:
        return self.design.nobs

    @property
    def method(self) -> str:
        return "REML" if self.REML else "ML"

    @property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates β̂."""
        return pd.Series(self._beta, index=self.design.fixef_names, name="Estimate")

    @property
    def sigma(self) -> float:
        """Residual standard deviation σ̂."""
        return self._sigma

    @cached_property
    def vcov(self) -> pd.DataFrame:
        """σ̂² (R_XᵀR_X)⁻¹: covariance of β̂ (conditional on θ̂)."""
        p = len(self._beta)
        SL = self._sigma * np.linalg.inv(self._fac.LFF[:p, :p])  # σ̂ L⁻¹: no σ̂² overflow
        with np.errstate(over="ignore", under="ignore"):
            V = SL.T @ SL
        names = self.design.fixef_names
        return pd.DataFrame(V, index=names, columns=names)

    @property
    def se(self) -> pd.Series:
        p = len(self._beta)
        Linv = np.linalg.inv(self._fac.LFF[:p, :p])
        se = self._sigma * np.sqrt(np.einsum("ij,ij->j", Linv, Linv))
        return pd.Series(se, index=self.design.fixef_names, name="Std. Error")

    @property
    def tvalues(self) -> pd.Series:
        return pd.Series(
            self._beta / self.se.to_numpy(), index=self.design.fixef_names, name="t value"
        )

    @property
    def df_model(self) -> int:
        return len(self._beta) + len(self.optinfo.theta) + 1

    @property
    def df_resid(self) -> int:
        return self.nobs - self.df_model

    @property
    def loglik(self) -> float:
        """Log-likelihood at the optimum (the REML log-likelihood for REML fits)."""
        return -0.5 * self._crit

    @property
    def reml_criterion(self) -> float:
        """-2 × REML log-likelihood (lme4's ``REMLcrit``); NaN for ML fits."""
        return self._crit if self.REML else float("nan")

    @property
    def deviance(self) -> float:
        """-2 × log-likelihood of the ML fit; for a REML fit the -2 log-likelihood
        at the REML estimates (θ̂, β̂, σ̂)."""
        if not self.REML:
            return self._crit
        n = self.nobs
        f = self._fac
        # r²/σ̂² = n − p exactly (σ̂² = r²/(n − p)), written so for extreme units
        return (
            f.logdet_Z
            + n * (np.log(2 * np.pi) + 2 * np.log(self._sigma))
            + (n - len(self._beta))
            - self.criterion.sum_log_w
        )

    @property
    def aic(self) -> float:
        return -2 * self.loglik + 2 * self.df_model

    @property
    def bic(self) -> float:
        return -2 * self.loglik + np.log(self.nobs) * self.df_model

    # -- random effects -------------------------------------------------------------
    @property
    def _templates(self) -> list[np.ndarray]:
        return self._fac.T

    @property
    def _theta_values(self) -> np.ndarray:
        return self.optinfo.theta

    @cached_property
    def _b(self) -> list[np.ndarray]:
        return [u @ T.T for u, T in zip(self._u, self._fac.T, strict=True)]

    @cached_property
    def condvar(self) -> list[np.ndarray]:
        """Per term, conditional covariance matrices of b given y at θ̂, β̂:
        (n_k, q_k, q_k) arrays (lme4's ``postVar``)."""
        with single_threaded_blas():
            return [self._sigma2 * v for v in self.criterion.conditional_variances(self._fac)]

    # -- fitted values, residuals, predictions -------------------------------------
    def _zb(self) -> np.ndarray:
        out = np.zeros(self.nobs)
        for r, b in zip(self.design.random, self._b, strict=True):
            out += np.einsum("nq,nq->n", r.Z, b[r.codes])
        return out

    @cached_property
    def _fitted(self) -> np.ndarray:
        eta = self.design.X @ self._beta + self._zb()
        if self.design.offset is not None:
            eta = eta + self.design.offset
        return eta

    @property
    def fitted(self) -> pd.Series:
        """Conditional fitted values Xβ̂ + Zb̂ (+ offset)."""
        return pd.Series(self._fitted, index=self.design.row_index, name="fitted")

    def residuals(self, type: str = "response", scaled: bool = False) -> pd.Series:
        """Residuals y - fitted: ``type="response"`` or ``"pearson"`` (times √w);
        ``scaled=True`` divides by σ̂ (lme4's scaled residuals)."""
        res = self.design.y - self._fitted
        if type == "pearson":
            if self.design.weights is not None:
                res = res * np.sqrt(self.design.weights)
        elif type != "response":
            raise ModelError(f"type must be 'response' or 'pearson', not {type!r}")
        if scaled:
            res = res / self.sigma
        return pd.Series(res, index=self.design.row_index, name="residuals")

    def residual_quantiles(self) -> np.ndarray:
        """Min, quartiles and max of the scaled Pearson residuals (lme4's
        "Scaled residuals")."""
        r = self.residuals(type="pearson", scaled=True)
        return np.quantile(r, [0, 0.25, 0.5, 0.75, 1])

    def predict(
        self, newdata: Any = None, re_form: str | None = None, allow_new_levels: bool = False
    ) -> pd.Series:
        """Predictions Xβ̂ + Zb̂ on the fitting data or ``newdata``.

        ``re_form=None`` includes all random effects; ``"~0"`` (or ``"NA"``) none,
        giving population-level predictions; ``"~(1 | plate)"`` the terms named
        (lme4's ``re.form``).  Levels not seen in the fit are an error unless
        ``allow_new_levels=True``, which predicts them with b = 0.
        """
        include = re_form_terms(self.design, re_form)
        if newdata is None:
            if all(include):
                return self.fitted.rename("predicted")
            eta = fitted_predictor(self.design, self._beta, self._b, include)
            return pd.Series(eta, index=self.design.row_index, name="predicted")
        frame = to_pandas(newdata)
        eta = linear_predictor(self.design, self._beta, self._b, frame, include, allow_new_levels)
        return pd.Series(eta, index=frame.index, name="predicted")

    # -- inference (multilevel.inference) ---------------------------------------------
    def coef_table(self, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """Estimate, Std. Error, df, t value, Pr(>|t|) with Satterthwaite,
        Kenward-Roger or no denominator degrees of freedom."""
        from multilevel.inference import coef_table

        return coef_table(self, ddf=ddf)

    def contrast(self, L: Any, ddf: str = "Satterthwaite", joint: bool = False) -> pd.DataFrame:
        """Tests of linear combinations Lβ (rows of L, or named combinations)."""
        from multilevel.inference import contrast

        return contrast(self, L, ddf=ddf, joint=joint)

    def simulate(self, nsim: int = 1, seed: int | None = None):
        """Responses simulated from the fitted model."""
        from multilevel.inference import simulate

        return simulate(self, nsim, seed=seed)

    def refit(self, newresp: Any = None, *, REML: bool | None = None) -> LmerFit:
        """The same model refitted (lme4's ``refit``) to a new response
        ``newresp`` (one value per row used in the fit) and/or by another
        criterion, starting from this fit's θ.  Warnings are left to the caller."""
        design = copy.copy(self.design)
        design.random = list(self.design.random)  # estimate() reorders the list in place
        if newresp is not None:
            y = np.asarray(newresp, dtype=float)
            if y.shape != (self.nobs,):
                raise ModelError(f"newresp needs {self.nobs} values, not {y.size}")
            design.y = y
        reml = self.REML if REML is None else bool(REML)
        theta = np.asarray(self.optinfo.theta)
        with single_threaded_blas():  # the factorizations are small (see lmm.fit)
            crit, record = estimate(design, REML=reml, start=theta)
            return LmerFit(design, crit, record, REML=reml, data_name=self.data_name)

    def refit_ml(self) -> LmerFit:
        """The same model fitted by maximum likelihood (lme4's ``refitML``);
        an ML fit is returned unchanged."""
        return self.refit(REML=False) if self.REML else self

    # -- export ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every number of the summary as plain Python types (JSON-ready)."""
        q = self.residual_quantiles()
        return {
            "model": "lmer",
            "formula": self.formula,
            "method": self.method,
            "nobs": self.nobs,
            "n_dropped": self.design.n_dropped,
            "ngroups": dict(self.ngroups),
            "fixef": _floats(self.fixef),
            "se": _floats(self.se),
            "t": _floats(self.tvalues),
            "vcov": self.vcov.to_numpy().tolist(),
            "varcorr": varcorr_records(self.varcorr),
            "theta": _floats(self.theta),
            "sigma": self.sigma,
            "loglik": self.loglik,
            "aic": self.aic,
            "bic": self.bic,
            "deviance": float(self.deviance),
            "reml_criterion": None if not self.REML else self.reml_criterion,
            "df_model": self.df_model,
            "df_resid": self.df_resid,
            "scaled_residual_quantiles": [float(v) for v in q],
            "singular": self.singular,
            "converged": self.converged,
            "optimizer": {
                "name": self.optinfo.optimizer,
                "status": self.optinfo.status,
                "evals": self.optinfo.evals,
                "criterion": self.optinfo.criterion,
            },
            "messages": fit_messages(self),
            "coefficients": table_records(self._export_coefficients()),
            "ranef": ranef_records(self.ranef, self.ranef_condsd),
            "fitted": [float(v) for v in self.fitted],
            "convergence": optimizer_record(self.optinfo),
        }

    def _export_coefficients(self) -> pd.DataFrame:
        """The fixed-effects table with Satterthwaite DF and p-values (lmerTest's);
        without them where the DF cannot be computed (a partitioned fit)."""
        try:
            return self.coef_table()
        except ModelError:
            return self.summary().coefficients

    def to_json(self, **kwargs: Any) -> str:
        """Every number of the summary as JSON (non-finite values as null)."""
        from multilevel.report import to_json

        return to_json(self.to_dict(), **kwargs)

    # -- printing -------------------------------------------------------------------
    def summary(self, ddf: str | None = None) -> LmerSummary:
        """lme4-style summary; ``print(fit.summary())`` shows it.  With ``ddf``
        ("Satterthwaite", "Kenward-Roger", "nlme") the fixed-effects table gets
        denominator degrees of freedom and p-values, as lmerTest prints it."""
        return LmerSummary(self, ddf)

    def nlme_df(self) -> pd.Series:
        """nlme's between/within denominator DF (nested grouping factors only)."""
        from multilevel.inference.nlme_df import nlme_df

        return nlme_df(self)

    def _repr_html_(self) -> str:
        from multilevel.report import fit_html

        return fit_html(self)

    def __repr__(self) -> str:
        return (
            f"<LmerFit {self.method}: {self.formula}; nobs={self.nobs}, loglik={self.loglik:.4f}>"
        )


class LmerSummary:
    """The summary of a fit: text in lme4's layout, and the coefficient table."""

    def __init__(self, fit: LmerFit, ddf: str | None = None):
        self.fit = fit
        self.ddf = ddf

    @property
    def coefficients(self) -> pd.DataFrame:
        """Estimate, Std. Error, t value; with ``ddf`` also df and Pr(>|t|)."""
        f = self.fit
        if self.ddf is None or self.ddf == "none":
            return pd.DataFrame({"Estimate": f.fixef, "Std. Error": f.se, "t value": f.tvalues})
        if self.ddf == "nlme":
            from scipy import stats

            df = f.nlme_df()
            t = f.tvalues
            return pd.DataFrame(
                {
                    "Estimate": f.fixef,
                    "Std. Error": f.se,
                    "df": df,
                    "t value": t,
                    "Pr(>|t|)": 2 * stats.t.sf(np.abs(t), df),
                }
            )
        return f.coef_table(ddf=self.ddf)

    def __str__(self) -> str:
        from multilevel.report import lmer_summary

        return lmer_summary(
            self.fit, self.coefficients if self.ddf not in (None, "none") else None, self.ddf
        )

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.fit._repr_html_()

    def to_dict(self) -> dict[str, Any]:
        return self.fit.to_dict()


def _floats(series: pd.Series) -> dict[str, float]:
    return {str(k): float(v) for k, v in series.items()}
