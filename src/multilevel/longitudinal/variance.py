"""nlme's variance functions: Var(εᵢ) = σ² sᵢ(δ, vᵢ)², with

* ``varIdent(form="~ 1 | g")``: s = δ_g, one per stratum, the first stratum
  (in the order the data show them, as nlme) at 1;
* ``varPower(form="~ v")``: s = |v|^δ (``~ fitted(.)``, nlme's default: the
  fitted values);
* ``varExp(form="~ v")``: s = exp(δv);
* ``varConstPower(form="~ v")``: s = c + |v|^δ, c > 0;
* ``varFixed("~ v")``: s = √v, nothing estimated;
* ``varComb(f1, f2, ...)``: the product.

A ``| g`` on varPower, varExp or varConstPower gives each stratum its own
parameters.  Parameters are searched as log δ (varIdent), log c and δ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from multilevel.errors import DataError, ModelError
from multilevel.longitudinal.forms import Form, column, numeric_column, parse_form


class VarFunc:
    """A variance function bound to the data by :meth:`bind`."""

    nlme_class = ""
    default_form = "~ fitted(.)"

    def __init__(self, value=None, form: str | None = None, fixed: bool = False):
        self.form: Form = parse_form(form, self.default_form)
        self.value = value
        self.fixed = bool(fixed)  # the parameters held at value= (nlme's fixed=)
        self.strata_labels: list[str] = []
        self.strata = np.zeros(0, dtype=np.int64)
        self.v: np.ndarray | None = None

    @property
    def uses_fitted(self) -> bool:
        return self.form.fitted

    def bind(self, frame: pd.DataFrame) -> VarFunc:
        """Covariate and strata from the data rows (fitted values come later)."""
        if self.form.groups:
            key = [column(frame, g, "variance stratum").astype(str).to_numpy()
                   for g in self.form.groups]  # fmt: skip
            lab = (
                key[0] if len(key) == 1 else pd.Series(key[0]).str.cat(key[1:], sep="*").to_numpy()
            )
            codes, uniq = pd.factorize(lab)  # order of appearance, as nlme's strata
            self.strata, self.strata_labels = codes.astype(np.int64), [str(u) for u in uniq]
        else:
            self.strata, self.strata_labels = np.zeros(len(frame), dtype=np.int64), []
        if self.form.covariates and not self.form.fitted:
            if len(self.form.covariates) != 1:
                raise ModelError(f"{self.nlme_class} takes one variance covariate")
            self.v = numeric_column(frame, self.form.covariates[0], "variance covariate")
            self.check_covariate(self.v, self.form.covariates[0])
        return self

    def check_covariate(self, v: np.ndarray, name: str) -> None:
        if not np.all(np.isfinite(v)):
            raise DataError(f"the variance covariate {name!r} has missing or infinite values")

    def set_fitted(self, fitted: np.ndarray) -> None:
        self.v = np.asarray(fitted, float)

    @property
    def nstrata(self) -> int:
        return max(len(self.strata_labels), 1)

    def nparams(self) -> int:
        return len(self.names())

    def names(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> np.ndarray:
        raise NotImplementedError

    def sd(self, x: np.ndarray) -> np.ndarray:
        """sᵢ per row."""
        raise NotImplementedError

    def coef(self, x: np.ndarray) -> pd.Series:
        """nlme's ``coef(varStruct, unconstrained = FALSE, allCoef = TRUE)``."""
        raise NotImplementedError

    def span(self, x: np.ndarray) -> float:
        """The ratio of the largest to the smallest standard deviation the
        function's parameters put on the rows (of the covariate's term alone
        for varConstPower, whose constant can hide it)."""
        s = self.sd(x)
        return float(s.max() / s.min())

    def describe(self) -> str:
        return self.nlme_class

    def _stratum_names(self, base: list[str]) -> list[str]:
        if not self.strata_labels:
            return base
        return [f"{b}.{s}" if len(base) > 1 else s for s in self.strata_labels for b in base]


class varIdent(VarFunc):  # noqa: N801 - nlme's class names
    nlme_class = "varIdent"
    default_form = "~ 1"

    def bind(self, frame):
        super().bind(frame)
        if not self.form.groups:
            raise ModelError("varIdent needs strata: form='~ 1 | g'")
        return self

    def names(self):
        return self.strata_labels[1:]

    def start(self):
        k = self.nstrata - 1
        if self.value is None:
            return np.zeros(k)
        v = np.atleast_1d(np.asarray(self.value, float))
        if v.size != k or np.any(v <= 0):
            raise ModelError(f"varIdent's value must be {k} positive ratio(s) to the first stratum")
        return np.log(v)

    def sd(self, x):
        return np.exp(np.r_[0.0, x])[self.strata]

    def coef(self, x):
        return pd.Series(np.exp(np.r_[0.0, x]), index=self.strata_labels, name=self.nlme_class)

    def describe(self):
        return "Different standard deviations per stratum"


class _CovariateVar(VarFunc):
    """Variance functions of a covariate, optionally by stratum."""

    base: tuple[str, ...] = ()
    base_start: tuple[float, ...] = ()

    def names(self):
        return self._stratum_names(list(self.base))

    def start(self):
        k = self.nparams()
        if self.value is None:
            x = np.tile(self.base_start, self.nstrata)
        else:
            x = np.atleast_1d(np.asarray(self.value, float))
            if x.size == len(self.base):
                x = np.tile(x, self.nstrata)
            if x.size != k:
                raise ModelError(f"{self.nlme_class} has {k} parameter(s); value has {x.size}")
        return self.to_free(x)

    def to_free(self, v):
        return np.asarray(v, float)

    def from_free(self, x):
        return np.asarray(x, float)

    def _per_row(self, x) -> np.ndarray:
        """The parameters of each row's stratum (n, len(base))."""
        P = self.from_free(x).reshape(self.nstrata, len(self.base))
        return P[self.strata]

    def coef(self, x):
        return pd.Series(self.from_free(x), index=self.names(), name=self.nlme_class)


class varPower(_CovariateVar):  # noqa: N801
    nlme_class = "varPower"
    base, base_start = ("power",), (0.0,)

    def sd(self, x):
        d = self._per_row(x)[:, 0]
        return np.abs(self.v) ** d

    def check_covariate(self, v, name):
        super().check_covariate(v, name)
        if np.any(v == 0):
            raise DataError(
                f"the variance covariate {name!r} is 0 in some rows: |v|^power is 0 or infinite "
                "there (use varConstPower, or shift the covariate)"
            )

    def describe(self):
        return "Power of variance covariate"


class varExp(_CovariateVar):  # noqa: N801
    nlme_class = "varExp"
    base, base_start = ("expon",), (0.0,)

    def sd(self, x):
        return np.exp(self._per_row(x)[:, 0] * self.v)

    def describe(self):
        return "Exponential of variance covariate"


class varConstPower(_CovariateVar):  # noqa: N801
    nlme_class = "varConstPower"
    base, base_start = ("const", "power"), (1.0, 0.0)

    def to_free(self, v):
        v = np.asarray(v, float).reshape(-1, 2).copy()
        if np.any(v[:, 0] <= 0):
            raise ModelError("varConstPower's const must be positive")
        v[:, 0] = np.log(v[:, 0])
        return v.ravel()

    def from_free(self, x):
        v = np.asarray(x, float).reshape(-1, 2).copy()
        v[:, 0] = np.exp(v[:, 0])
        return v.ravel()

    def sd(self, x):
        P = self._per_row(x)
        return P[:, 0] + np.abs(self.v) ** P[:, 1]

    def span(self, x):
        t = np.abs(self.v) ** self._per_row(x)[:, 1]
        return float(t.max() / t.min())

    def describe(self):
        return "Constant plus power of variance covariate"


class varFixed(VarFunc):  # noqa: N801
    """s = √v: prior weights 1/v (nlme's ``varFixed``)."""

    nlme_class = "varFixed"

    def __init__(self, value: str = "~ 1"):
        super().__init__(None, value)

    def check_covariate(self, v, name):
        super().check_covariate(v, name)
        if np.any(v <= 0):
            raise DataError(f"varFixed's covariate {name!r} must be positive (it is a variance)")

    def names(self):
        return []

    def start(self):
        return np.zeros(0)

    def sd(self, x):
        return np.sqrt(self.v)

    def coef(self, x):
        return pd.Series([], dtype=float, name=self.nlme_class)

    def describe(self):
        return "fixed weights"


class varComb(VarFunc):  # noqa: N801
    """The product of variance functions (nlme's ``varComb``)."""

    nlme_class = "varComb"

    def __init__(self, *funcs: VarFunc):
        if not funcs or not all(isinstance(f, VarFunc) for f in funcs):
            raise ModelError(
                "varComb takes variance functions, e.g. varComb(varIdent(...), varPower())"
            )
        self.funcs = list(funcs)
        super().__init__(None, "~ 1")

    @property
    def uses_fitted(self) -> bool:
        return any(f.uses_fitted for f in self.funcs)

    def bind(self, frame):
        for f in self.funcs:
            f.bind(frame)
        return self

    def set_fitted(self, fitted):
        for f in self.funcs:
            if f.uses_fitted:
                f.set_fitted(fitted)

    def _split(self, x):
        out, k = [], 0
        for f in self.funcs:
            out.append(x[k : k + f.nparams()])
            k += f.nparams()
        return out

    def names(self):
        return [n for f in self.funcs for n in f.names()]

    def start(self):
        return np.concatenate([f.start() for f in self.funcs])

    def sd(self, x):
        out = np.ones(len(self.funcs[0].strata))
        for f, xf in zip(self.funcs, self._split(x), strict=True):
            out = out * f.sd(xf)
        return out

    def coef(self, x):
        return pd.concat([f.coef(xf) for f, xf in zip(self.funcs, self._split(x), strict=True)])

    def span(self, x):
        return max(f.span(xf) for f, xf in zip(self.funcs, self._split(x), strict=True))

    def describe(self):
        return "Combination of variance functions"


__all__ = [
    "VarFunc",
    "varComb",
    "varConstPower",
    "varExp",
    "varFixed",
    "varIdent",
    "varPower",
]
