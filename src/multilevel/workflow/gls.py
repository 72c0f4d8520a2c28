"""``gls``: generalized least squares with nlme's correlation structures and
variance functions (``nlme::gls``).

    y = Xβ + ε,   ε within group i ~ N(0, σ²Vᵢ(ω)),   Vᵢ = SᵢCᵢSᵢ

(C a correlation structure, S a variance function; groups from the
structure's ``form``, all rows one group without one).  β and σ are
profiled out of the likelihood of the whitened rows and ω is optimised
(:mod:`multilevel.longitudinal.estimate`); REML by default, as nlme.

Inference as nlme's: t-tests on N − p degrees of freedom, the covariance
σ̂²(XᵀV⁻¹X)⁻¹ with σ̂² = r²/(N − p) for REML and r²/N for ML, BIC with
log(N − p) for REML; ``intervals()`` for β (t) and for ω and σ by Wald
intervals on their unconstrained scales (ω's, log σ) from the Hessian of
the log-likelihood profiled over β (nlme's ``apVar``).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from multilevel.errors import ConvergenceWarning, ModelError, warn
from multilevel.formula.design import build_design, to_pandas
from multilevel.formula.newdata import linear_predictor
from multilevel.formula.parser import parse_formula
from multilevel.longitudinal.correlation import CorStruct
from multilevel.longitudinal.estimate import StructuredEstimate, estimate_gls, whitened_rows
from multilevel.longitudinal.variance import VarFunc, varFixed
from multilevel.longitudinal.whiten import ResidualStructure
from multilevel.optimize.hessian import fd_hessian
from multilevel.report import TextExport, fit_messages, optimizer_record, table_records
from multilevel.threads import single_threaded_blas


def structure_frame(frame: pd.DataFrame, cor, var) -> pd.DataFrame:
    """The data with a unique index (rows of the structure are found by it)."""
    if not isinstance(cor, (CorStruct, type(None))):
        raise ModelError(
            f"correlation must be an nlme correlation structure such as corAR1(), not {cor!r}"
        )
    return frame if frame.index.is_unique else frame.reset_index(drop=True)


def gls(
    model: str,
    data: Any,
    correlation: CorStruct | None = None,
    weights: VarFunc | Any = None,
    method: str = "REML",
    *,
    na_action: str = "omit",
    levels: dict[str, list] | None = None,
    namespace: dict | None = None,
    data_name: str | None = None,
) -> GlsFit:
    """Fit a linear model with correlated or heteroscedastic errors by
    generalized least squares (R's ``nlme::gls``).

    ``correlation``: ``corAR1()``, ``corCAR1(form="~ t | g")``,
    ``corARMA(p=, q=)``, ``corCompSymm()``, ``corSymm()``, ``corExp``/
    ``corGaus``/``corLin``/``corRatio``/``corSpher(value=, form="~ x + y",
    nugget=)``.  ``weights``: a variance function (``varIdent``,
    ``varPower``, ``varExp``, ``varConstPower``, ``varFixed``, ``varComb``),
    or prior weights (Var(εᵢ) = σ²/wᵢ) as a column name or array.
    ``method`` is ``"REML"`` or ``"ML"``."""
    if method not in ("REML", "ML"):
        raise ModelError(f"method must be 'REML' or 'ML', not {method!r}")
    var = weights if isinstance(weights, VarFunc) else None
    prior = None if var is not None else weights
    frame = structure_frame(to_pandas(data), correlation, var)
    parsed = parse_formula(model)
    if parsed.random:
        raise ModelError("gls has no random effects; use lme (or lmer) for '(… | g)' terms")
    design = build_design(
        parsed, frame, weights=prior, levels=levels, na_action=na_action, namespace=namespace,
        check_nobs=False,
    )  # fmt: skip
    rows = frame.loc[design.row_index]
    if design.weights is not None:  # prior weights: Var(εᵢ) = σ²/wᵢ
        rows = rows.assign(__prior_variance__=1.0 / design.weights)
        var = varFixed("~ __prior_variance__")
    if data_name is None:
        data_name = getattr(frame, "attrs", {}).get("name", "data")
    with single_threaded_blas():
        struct = ResidualStructure(correlation, var, rows)
        est = estimate_gls(design, struct, method == "REML")
    fit = GlsFit(design, struct, est, REML=method == "REML", model=model, data_name=data_name)
    for msg in est.record.messages:
        warn(msg, ConvergenceWarning)
    return fit


class GlsFit(TextExport):
    """A model fitted by :func:`gls`, with nlme's accessors."""

    nlme_style = True  # anova() compares as nlme's: in the order given, no refit

    def __init__(
        self,
        design,
        struct: ResidualStructure,
        est: StructuredEstimate,
        *,
        REML: bool,
        model: str,
        data_name: str,
    ):
        self.design = design
        self.struct = struct
        self.est = est
        self.REML = REML
        self.model = model
        self.data_name = data_name
        self.optinfo = est.record

    # -- estimates
    @property
    def method(self) -> str:
        return "REML" if self.REML else "ML"

    @property
    def nobs(self) -> int:
        return self.design.nobs

    @property
    def names(self) -> list[str]:
        return list(self.design.fixef_names)

    @property
    def coef(self) -> pd.Series:
        return pd.Series(self.est.beta, index=self.names, name="Value")

    fixef = coef

    @property
    def sigma(self) -> float:
        """σ̂ on nlme's scale: Var(εᵢ) = σ²sᵢ² with the variance function's sᵢ."""
        return float(self.est.sigma) / self.struct.scale(self.est.omega)

    @property
    def vcov(self) -> pd.DataFrame:
        """σ̂²(XᵀV⁻¹X)⁻¹."""
        return pd.DataFrame(self.est.vcov, index=self.names, columns=self.names)

    @property
    def se(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.est.vcov)), index=self.names, name="Std.Error")

    @property
    def df_resid(self) -> int:
        return self.nobs - len(self.names)

    @property
    def tTable(self) -> pd.DataFrame:
        from scipy import stats

        est, se = self.coef.to_numpy(), self.se.to_numpy()
        t = est / se
        return pd.DataFrame(
            {"Value": est, "Std.Error": se, "t-value": t,
             "p-value": 2.0 * stats.t.sf(np.abs(t), self.df_resid)},
            index=self.names,
        )  # fmt: skip

    @property
    def corstruct(self) -> pd.Series | None:
        """The correlation parameters as nlme's ``coef(corStruct, unconstrained = FALSE)``."""
        return self.struct.coef(self.est.omega)[0]

    @property
    def varstruct(self) -> pd.Series | None:
        """The variance parameters (``allCoef = TRUE``: varIdent's first stratum at 1)."""
        return self.struct.coef(self.est.omega)[1]

    # -- likelihood
    @property
    def loglik(self) -> float:
        return -0.5 * float(self.est.deviance)

    @property
    def df_model(self) -> int:
        return len(self.names) + int(self.struct.free.sum()) + 1

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.df_model

    @property
    def bic(self) -> float:
        n = self.nobs - (len(self.names) if self.REML else 0)
        return -2.0 * self.loglik + np.log(n) * self.df_model

    @property
    def converged(self) -> bool:
        return bool(self.optinfo.converged)

    # -- fitted values and residuals
    @cached_property
    def _fitted(self) -> np.ndarray:
        eta = self.design.X @ self.est.beta
        return eta if self.design.offset is None else eta + self.design.offset

    @property
    def fitted(self) -> pd.Series:
        return pd.Series(self._fitted, index=self.design.row_index, name="fitted")

    def residuals(self, type: str = "response") -> pd.Series:
        """``"response"`` y − Xβ̂; ``"pearson"`` divided by σ̂sᵢ (nlme's
        standardized residuals); ``"normalized"`` L⁻¹(y − Xβ̂)/σ̂ within each
        group (independent N(0, 1) under the model)."""
        r = self.design.y - self._fitted
        return pd.Series(
            normalized(self.struct, self.est.omega, r, float(self.est.sigma), type),
            index=self.design.row_index, name="residuals",
        )  # fmt: skip

    def predict(self, newdata: Any = None) -> pd.Series:
        """Xβ̂ at the fitting rows or at ``newdata``."""
        if newdata is None:
            return self.fitted.rename("predicted")
        frame = to_pandas(newdata)
        eta = linear_predictor(self.design, self.est.beta, [], frame, [], False)
        return pd.Series(eta, index=frame.index, name="predicted")

    # -- intervals
    def _deviance_natural(self, phi: np.ndarray) -> float:
        """−2ℓ at (ω, log σ) with β profiled out (scaled units: log σ̃)."""
        k = self.struct.nparams
        w = self._whitened
        parts, logdet = w.at(phi[:k])
        if parts is None:
            return np.inf
        _, Xw, yw = parts
        F = np.column_stack([Xw, yw])
        AFF = F.T @ F
        p = Xw.shape[1]
        L = np.linalg.cholesky(AFF)
        r2 = L[p, p] ** 2
        # phi[k] is log of nlme's σ (scaled units); the whitened model's is σ × scale
        s2 = np.exp(2.0 * phi[k]) * self.struct.scale(phi[:k]) ** 2
        n = self.nobs
        dof = n - p if self.REML else n
        dev = dof * np.log(2 * np.pi * s2) + r2 / s2 + logdet
        if self.REML:
            dev += 2.0 * float(np.log(np.diag(L)[:p]).sum())
        return float(dev)

    @cached_property
    def _whitened(self):
        return whitened_rows(self.design, self.struct)

    @cached_property
    def apVar(self) -> pd.DataFrame:
        """Approximate covariance of (ω unconstrained, log σ): 2H⁻¹ of the
        deviance profiled over β, by central differences (nlme's ``apVar``)."""
        w = self._whitened
        c = w.basis.NF[-1, -1]
        phi = np.r_[self.est.omega, np.log(self.sigma / c)]  # nlme's σ, in ỹ's units
        H = fd_hessian(self._deviance_natural, phi, 1e-3)[0]
        labels = [f"cor.{n}" for n in self.struct.cor.names()] if self.struct.cor else []
        labels += [f"var.{n}" for n in self.struct.var.names()] if self.struct.var else []
        labels.append("log(sigma)")
        try:
            V = 2.0 * np.linalg.inv(H)
            np.linalg.cholesky(V)
        except np.linalg.LinAlgError:
            raise ModelError(
                "the approximate covariance of the correlation/variance parameters is not "
                "positive definite; use intervals(which='coef')"
            ) from None
        return pd.DataFrame(V, index=labels, columns=labels)

    def intervals(self, level: float = 0.95, which: str = "all") -> dict[str, Any]:
        """nlme's approximate intervals: ``coef`` β̂ ± t·SE; ``corStruct``,
        ``varStruct`` and ``sigma`` Wald intervals on the unconstrained scales,
        mapped back."""
        from scipy import stats

        cols = ["lower", "est.", "upper"]
        out: dict[str, Any] = {}
        if which in ("all", "coef"):
            est, se = self.coef.to_numpy(), self.se.to_numpy()
            half = stats.t.ppf(0.5 + level / 2, self.df_resid) * se
            out["coef"] = pd.DataFrame(
                np.column_stack([est - half, est, est + half]), index=self.names, columns=cols
            )
        if which in ("all", "var-cov"):
            out.update(structure_intervals(self.struct, self.est.omega, self.sigma,
                                           self.apVar.to_numpy(), level))  # fmt: skip
        return out

    # -- printing / export
    def summary(self) -> GlsSummary:
        return GlsSummary(self)

    def to_dict(self) -> dict[str, Any]:
        tt = self.tTable
        cs, vs = self.corstruct, self.varstruct
        return {
            "model": "gls",
            "formula": self.model,
            "method": self.method,
            "nobs": self.nobs,
            "n_dropped": self.design.n_dropped,
            "coef": {k: float(v) for k, v in self.coef.items()},
            "se": {k: float(v) for k, v in tt["Std.Error"].items()},
            "t": {k: float(v) for k, v in tt["t-value"].items()},
            "p": {k: float(v) for k, v in tt["p-value"].items()},
            "vcov": self.vcov.to_numpy().tolist(),
            "sigma": self.sigma,
            "corStruct": None if cs is None else {k: float(v) for k, v in cs.items()},
            "varStruct": None if vs is None else {k: float(v) for k, v in vs.items()},
            "loglik": self.loglik,
            "aic": self.aic,
            "bic": self.bic,
            "df_model": self.df_model,
            "converged": self.converged,
            "messages": fit_messages(self),
            "coefficients": table_records(self.tTable),
            "fitted": [float(v) for v in self.fitted],
            "convergence": optimizer_record(self.optinfo),
        }

    def __repr__(self) -> str:
        return f"<GlsFit {self.method}: {self.model}; nobs={self.nobs}, loglik={self.loglik:.4f}>"


class GlsSummary:
    def __init__(self, fit: GlsFit):
        self.fit = fit

    @property
    def tTable(self) -> pd.DataFrame:
        return self.fit.tTable

    def __str__(self) -> str:
        from multilevel.workflow.nlme_report import gls_summary

        return gls_summary(self.fit)

    __repr__ = __str__


def normalized(struct: ResidualStructure, omega, r: np.ndarray, sigma: float, type: str):
    """Residuals r of the response scale as ``type``: response, pearson
    (r/(σ̂sᵢ)) or normalized (L⁻¹r/σ̂, group by group); ``sigma`` is the
    whitened model's σ (nlme's times the structure's ``scale``)."""
    if type == "response":
        return r
    if type == "pearson":
        xv = struct.split(np.asarray(omega, float))[1]
        # sᵢ relative to their geometric mean, as the whitened model's σ is
        s = struct.var.sd(xv) / struct.scale(omega) if struct.var is not None else 1.0
        return r / (sigma * s)
    if type == "normalized":
        w, _ = struct.whiten(omega, r[:, None])
        return struct.unwhiten_order(w[:, 0]) / sigma
    raise ModelError(f"type must be 'response', 'pearson' or 'normalized', not {type!r}")


def structure_intervals(struct, omega, sigma, V, level) -> dict[str, Any]:
    """Wald intervals of ω (mapped back coordinate by coordinate) and σ from
    the covariance V of (ω, log σ̃)."""
    from scipy import stats

    z = stats.norm.ppf(0.5 + level / 2) * np.sqrt(np.diag(V))
    cols = ["lower", "est.", "upper"]
    out: dict[str, Any] = {}
    omega = np.asarray(omega, float)

    def block(fun, x, idx, names):
        rows = []
        for j, i in enumerate(idx):
            vals = []
            for d in (-z[i], 0.0, z[i]):
                xx = x.copy()
                xx[j] += d
                vals.append(fun(xx)[j])
            rows.append(sorted(vals) if vals[0] > vals[2] else vals)
        return pd.DataFrame(rows, index=names, columns=cols)

    xc, xv = struct.split(omega)
    if struct.cor is not None:
        out["corStruct"] = block(struct.cor.from_free, xc, range(struct.nc), struct.cor.names())
    if struct.var is not None and struct.nv:
        idx = range(struct.nc, struct.nc + struct.nv)
        names = struct.var.names()
        from_free = getattr(struct.var, "from_free", None) or (lambda x: np.exp(x))
        out["varStruct"] = block(from_free, xv, idx, names)
    zs = z[-1]
    out["sigma"] = pd.Series(sigma * np.exp([-zs, 0.0, zs]), index=cols, name="sigma")
    return out


__all__ = ["GlsFit", "GlsSummary", "gls"]
