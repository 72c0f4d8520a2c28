"""Fitted linear mixed models: estimates, random effects, predictions.

Attributes follow lme4's accessors (``fixef``, ``ranef``, ``varcorr``,
``theta``, ``sigma``, ``loglik``, ...) and return pandas objects indexed by
R-style names.  Everything is computed from the blocked Cholesky factor at the
optimal θ; nothing refits.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from multilevel.errors import DataError
from multilevel.formula.design import Categorical, Design, build_matrix, to_pandas
from multilevel.mixedfit import MixedModelFit
from multilevel.optimize.theta import OptRecord

if TYPE_CHECKING:
    from multilevel.lmm.criterion import ProfiledCriterion


class LmerFit(MixedModelFit):
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
        if fac is None:  # pragma: no cover - the optimum is always factorable
            raise RuntimeError("the optimum is not positive definite")
        self._fac = fac
        beta, us = criterion.solve(fac)
        self._beta = beta
        self._u = us
        n, p = design.nobs, design.X.shape[1]
        self._sigma2 = fac.r2 / (n - p if REML else n)
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
        return float(np.sqrt(self._sigma2))

    @cached_property
    def vcov(self) -> pd.DataFrame:
        """σ̂² (R_XᵀR_X)⁻¹: covariance of β̂ (conditional on θ̂)."""
        p = len(self._beta)
        Linv = np.linalg.inv(self._fac.LFF[:p, :p])
        V = self._sigma2 * (Linv.T @ Linv)
        names = self.design.fixef_names
        return pd.DataFrame(V, index=names, columns=names)

    @property
    def se(self) -> pd.Series:
        return pd.Series(
            np.sqrt(np.diag(self.vcov)), index=self.design.fixef_names, name="Std. Error"
        )

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
        return (
            f.logdet_Z
            + n * np.log(2 * np.pi * self._sigma2)
            + f.r2 / self._sigma2
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
        from multilevel.threads import single_threaded_blas

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
            raise ValueError(f"type must be 'response' or 'pearson', not {type!r}")
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
        giving population-level predictions.  Levels not seen in the fit are an
        error unless ``allow_new_levels=True``, which predicts them with b = 0.
        """
        population = re_form is not None and re_form.replace(" ", "") in ("~0", "NA", "~-1")
        if re_form is not None and not population:
            raise ValueError("re_form must be None (all random effects) or '~0' (none)")
        if newdata is None:
            if population:
                eta = self.design.X @ self._beta
                if self.design.offset is not None:
                    eta = eta + self.design.offset
                return pd.Series(eta, index=self.design.row_index, name="predicted")
            return self.fitted.rename("predicted")
        frame = to_pandas(newdata)
        eta = linear_predictor(
            self.design, self._beta, self._b, frame, population, allow_new_levels
        )
        return pd.Series(eta, index=frame.index, name="predicted")

    def _new_values(self, frame: pd.DataFrame) -> dict[str, Any]:
        return new_values(self.design, frame)

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

    def confint(self, method: str = "profile", level: float = 0.95, **kw: Any) -> pd.DataFrame:
        """Confidence intervals: "profile" (likelihood), "wald" or "boot"."""
        from multilevel.inference import confint

        return confint(self, method=method, level=level, **kw)

    def profile(self, **kw: Any):
        """Likelihood profiles (ζ traces) of σ, the SDs, correlations and β."""
        from multilevel.inference import profile

        return profile(self, **kw)

    def simulate(self, nsim: int = 1, seed: int | None = None):
        """Responses simulated from the fitted model."""
        from multilevel.inference import simulate

        return simulate(self, nsim, seed=seed)

    def bootstrap(self, nsim: int = 500, seed: int | None = None, **kw: Any):
        """Parametric bootstrap with warm-started refits."""
        from multilevel.inference import bootstrap

        return bootstrap(self, nsim, seed=seed, **kw)

    def ranova(self) -> pd.DataFrame:
        """Likelihood-ratio tests of each random-effects term (lmerTest's ranova)."""
        from multilevel.inference import ranova

        return ranova(self)

    def refit_ml(self) -> LmerFit:
        """The same model fitted by maximum likelihood."""
        from multilevel.inference import refit_ml

        return refit_ml(self)

    # -- export ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every number of the summary as plain Python types (JSON-ready)."""
        q = self.residual_quantiles()
        vc = self.varcorr
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
            "varcorr": [
                {
                    "grp": r.grp,
                    "var1": None if pd.isna(r.var1) else r.var1,
                    "var2": None if pd.isna(r.var2) else r.var2,
                    "vcov": float(r.vcov),
                    "sdcor": float(r.sdcor),
                }
                for r in vc.itertuples()
            ],
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
            "messages": list(self.design.messages)
            + list(self.optinfo.messages)
            + ([self.singular_message] if self.singular else []),
        }

    def to_json(self, **kwargs: Any) -> str:
        import json

        return json.dumps(self.to_dict(), **kwargs)

    # -- printing -------------------------------------------------------------------
    def summary(self, ddf: str | None = None) -> LmerSummary:
        """lme4-style summary; ``print(fit.summary())`` shows it.  With ``ddf``
        ("Satterthwaite", "Kenward-Roger", "nlme") the fixed-effects table gets
        denominator degrees of freedom and p-values, as lmerTest prints it."""
        return LmerSummary(self, ddf)

    def nlme_df(self) -> pd.Series:
        """nlme's between/within denominator DF (nested grouping factors only)."""
        from multilevel.errors import ModelError
        from multilevel.workflow.nlme import _term_columns, between_within_df

        groups: dict[str, np.ndarray] = {}
        for r in sorted(self.design.random, key=lambda r: r.nlevels):
            groups.setdefault(r.name, r.codes)
        codes = list(groups.values())
        for outer, inner in zip(codes, codes[1:], strict=False):
            # nested: every inner group lies in one outer group
            pairs = np.unique(np.stack([inner, outer]), axis=1)
            if pairs.shape[1] != len(np.unique(inner)):
                raise ModelError("nlme's DF rule needs nested grouping factors")
        df, _ = between_within_df(
            self.design.X, _term_columns(self.design), codes, self.design.xspec.intercept
        )
        return pd.Series(df, index=self.design.fixef_names, name="df")

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()

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
        import html

        return f"<pre>{html.escape(str(self))}</pre>"

    def to_dict(self) -> dict[str, Any]:
        return self.fit.to_dict()


def _floats(series: pd.Series) -> dict[str, float]:
    return {str(k): float(v) for k, v in series.items()}


def _grouping_only(design: Design) -> set[str]:
    """Labels used only as grouping columns (they get levels, not codings)."""
    grouping = {g for r in design.random for g in r.term.group}
    used = {f for t in design.formula.fixed.terms for f in t} | set(design.formula.fixed.offsets)
    for r in design.random:
        used |= {f for t in r.term.expr.terms for f in t}
    return grouping - used


def new_values(design: Design, frame: pd.DataFrame) -> dict[str, Any]:
    """The formula's factors evaluated on new data with the fit's codings
    (levels, stateful transforms), grouping columns excepted."""
    from multilevel.formula.design import Numeric, _evaluate_factor, _is_categorical, _match_levels

    values: dict[str, Any] = {}
    columns = [str(c) for c in frame.columns]
    for label, spec in design.factor_specs.items():
        if label == design.formula.response.label:  # type: ignore[union-attr]
            continue
        if label in _grouping_only(design):
            continue
        raw = _evaluate_factor(spec.factor, frame, design.evaluator, columns)
        if spec.categorical:
            s = raw if isinstance(raw, pd.Series) else pd.Series(raw)
            codes = _match_levels(spec.values, s)
            if (codes < 0).any():
                bad = [str(v) for v in pd.unique(s.to_numpy()[codes < 0])[:5]]
                raise DataError(f"{label!r} has levels not seen in the fit: {bad}")
            values[label] = Categorical(codes.astype(np.int64), spec.values, spec.labels)
        else:
            if _is_categorical(raw):
                raise DataError(f"{label!r} was numeric in the fit but is not in newdata")
            arr = np.asarray(raw, dtype=float)
            values[label] = Numeric(arr.reshape(len(frame), -1), spec.suffixes or [""])
    return values


def linear_predictor(
    design: Design,
    beta: np.ndarray,
    b: list[np.ndarray],
    frame: pd.DataFrame,
    population: bool,
    allow_new_levels: bool,
) -> np.ndarray:
    """Xβ (+ offset) (+ Zb unless ``population``) on new data; levels not seen
    in the fit get b = 0 when allowed and are an error otherwise."""
    values = new_values(design, frame)
    n = len(frame)
    X, _ = build_matrix(design.formula.fixed, values, n, design.xspec.codings)
    if design.xspec.keep is not None:
        X = X[:, design.xspec.keep]
    eta = X @ beta
    for label in design.formula.fixed.offsets:
        eta = eta + values[label].values[:, 0]
    if population:
        return eta
    for r, br in zip(design.random, b, strict=True):
        Z, _ = build_matrix(r.term.expr, values, n, r.spec.codings)
        idx = r.level_index(frame)
        if (idx < 0).any() and not allow_new_levels:
            rows = frame.loc[idx < 0, list(r.term.group)].drop_duplicates().head(5)
            new = [":".join(map(str, row)) for row in rows.itertuples(index=False)]
            raise DataError(
                f"new levels of {r.name!r} in newdata: {new}; "
                "use allow_new_levels=True to predict them at the population level"
            )
        bb = np.where((idx >= 0)[:, None], br[np.maximum(idx, 0)], 0.0)
        eta = eta + np.einsum("nq,nq->n", Z, bb)
    return eta
