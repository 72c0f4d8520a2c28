"""nlme's within-group correlation structures.

Each structure gives the correlation of two errors of one group from their
positions (``~ 1 | g``: the order of the rows in the group; ``~ t | g``: the
covariate t) or, for the spatial ones, their coordinates:

* ``corAR1(φ)``: φ^|pᵢ − pⱼ| (integer positions);
* ``corCAR1(φ)``: φ^|tᵢ − tⱼ| (continuous times, 0 < φ < 1);
* ``corARMA(p, q)``: the autocorrelation of a stationary ARMA(p, q) process
  at lag |pᵢ − pⱼ|, εₜ = Σ φₖεₜ₋ₖ + aₜ + Σ θₖaₜ₋ₖ;
* ``corCompSymm(ρ)``: ρ for every pair;
* ``corSymm()``: a general correlation matrix over the positions 1..m;
* ``corExp``, ``corGaus``, ``corLin``, ``corRatio``, ``corSpher``: a function of
  the Euclidean distance d over the range r, exp(−d/r), exp(−(d/r)²),
  (1 − d/r)₊, 1/(1 + (d/r)²), (1 − 1.5 d/r + 0.5 (d/r)³)₊, times (1 − nugget)
  for d > 0 with ``nugget=True``.

Parameters are searched on unconstrained scales: 2 atanh φ (corAR1), logit φ
(corCAR1), partial autocorrelations by 2 atanh (corARMA: stationary and
invertible by construction), a logistic map onto (−1/(m − 1), 1)
(corCompSymm, m the largest group), canonical partial correlations by
2 atanh (corSymm: positive definite by construction), log r and logit
nugget (spatial).  :mod:`multilevel.longitudinal.whiten` turns a structure
into the whitening of each group.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import special

from multilevel.errors import ModelError
from multilevel.longitudinal.forms import Form, parse_form


class CorStruct:
    """A correlation structure as nlme's ``corClasses``: ``value`` the
    starting (or, with ``fixed=True``, the fixed) constrained parameters,
    ``form`` the positions and grouping."""

    nlme_class = ""
    markov = False  # consecutive errors carry all the dependence (bidiagonal whitening)
    spatial = False
    default_value: tuple[float, ...] = ()

    def __init__(self, value=None, form: str | None = None, fixed: bool = False):
        self.form: Form = parse_form(form)
        self.value = None if value is None else np.atleast_1d(np.asarray(value, dtype=float))
        self.fixed = bool(fixed)
        self.m = 0  # the largest group / number of positions, set by bind

    # -- parameters
    def nparams(self) -> int:
        return len(self.names())

    def names(self) -> list[str]:
        raise NotImplementedError

    def to_free(self, value: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def from_free(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def start(self) -> np.ndarray:
        v = self.value if self.value is not None else np.asarray(self.default_value, float)
        self.check_value(v)
        return self.to_free(v)

    def check_value(self, v: np.ndarray) -> None:
        if v.size != self.nparams():
            raise ModelError(
                f"{self.nlme_class} has {self.nparams()} parameter(s) ({', '.join(self.names())}); "
                f"value has {v.size}"
            )

    def coef(self, x: np.ndarray) -> pd.Series:
        """nlme's ``coef(corStruct, unconstrained = FALSE)``."""
        return pd.Series(self.from_free(x), index=self.names(), name=self.nlme_class)

    # -- correlations
    def correlation(self, x: np.ndarray, lag: np.ndarray) -> np.ndarray:
        """Correlation at lags/distances ``lag`` (> 0)."""
        raise NotImplementedError

    def group_matrix(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The correlation matrix of one group's errors at positions ``pos``
        (m,) or coordinates (m, d)."""
        return self.group_matrices(x, pos[None])[0]

    def group_matrices(self, x: np.ndarray, P: np.ndarray) -> np.ndarray:
        """The correlation matrices of G groups of m errors at once, from
        positions (G, m) or coordinates (G, m, d)."""
        if P.ndim == 2:
            D = np.abs(P[:, :, None] - P[:, None, :])
        else:
            D = np.sqrt(((P[:, :, None, :] - P[:, None, :, :]) ** 2).sum(axis=3))
        C = np.ones_like(D)
        off = np.broadcast_to(~np.eye(D.shape[1], dtype=bool), D.shape)
        C[off] = self.correlation(x, D[off])
        return C

    def describe(self) -> str:
        """nlme's heading of the summary block."""
        return self.nlme_class

    def __repr__(self) -> str:
        return f"{self.nlme_class}(form={self.form.text!r})"


def _atanh2(r: np.ndarray) -> np.ndarray:
    return 2.0 * np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))


class corAR1(CorStruct):  # noqa: N801 - nlme's class names
    """AR(1): φ^|pᵢ − pⱼ| over integer positions (nlme's ``corAR1``)."""

    nlme_class = "corAR1"
    markov = True
    default_value = (0.0,)

    def names(self):
        return ["Phi"]

    def to_free(self, v):
        if not -1 < v[0] < 1:
            raise ModelError(f"corAR1's Phi must be in (-1, 1), not {v[0]}")
        return _atanh2(v)

    def from_free(self, x):
        return np.tanh(np.asarray(x, float) / 2.0)

    def correlation(self, x, lag):
        return self.from_free(x)[0] ** lag

    def describe(self):
        return "AR(1)"


class corCAR1(CorStruct):  # noqa: N801
    """Continuous-time AR(1): φ^|tᵢ − tⱼ|, 0 < φ < 1 (nlme's ``corCAR1``)."""

    nlme_class = "corCAR1"
    markov = True
    default_value = (0.2,)

    def names(self):
        return ["Phi"]

    def to_free(self, v):
        if not 0 < v[0] < 1:
            raise ModelError(f"corCAR1's Phi must be in (0, 1), not {v[0]}")
        return special.logit(v)

    def from_free(self, x):
        return special.expit(np.asarray(x, float))

    def correlation(self, x, lag):
        return self.from_free(x)[0] ** lag

    def describe(self):
        return "Continuous AR(1)"


class corCompSymm(CorStruct):  # noqa: N801
    """Compound symmetry: ρ for every pair (nlme's ``corCompSymm``)."""

    nlme_class = "corCompSymm"
    default_value = (0.0,)

    def names(self):
        return ["Rho"]

    def _lower(self) -> float:
        return -1.0 / max(self.m - 1, 1)

    def to_free(self, v):
        lo = self._lower()
        if not lo < v[0] < 1:
            raise ModelError(f"corCompSymm's Rho must be in ({lo:.4g}, 1), not {v[0]}")
        return special.logit((v - lo) / (1.0 - lo))

    def from_free(self, x):
        lo = self._lower()
        return lo + (1.0 - lo) * special.expit(np.asarray(x, float))

    def correlation(self, x, lag):
        return np.full(lag.shape, self.from_free(x)[0])

    def inverse_factor(self, x: np.ndarray, m: int) -> tuple[np.ndarray, float]:
        """A with A C Aᵀ = I for a group of m, nlme's: the group mean over
        √(1 + (m − 1)ρ) and Helmert contrasts over √(1 − ρ) (the eigenvectors
        of C), and log|C| = log(1 + (m − 1)ρ) + (m − 1) log(1 − ρ)."""
        rho = float(self.from_free(x)[0])
        A = np.zeros((m, m))
        A[0] = 1.0 / math.sqrt(m * (1.0 + (m - 1) * rho))
        for k in range(2, m + 1):  # Helmert rows, not data rows
            A[k - 1, : k - 1] = -1.0
            A[k - 1, k - 1] = k - 1.0
            A[k - 1] /= math.sqrt(k * (k - 1) * (1.0 - rho))
        return A, math.log1p((m - 1) * rho) + (m - 1) * math.log1p(-rho)

    def describe(self):
        return "Compound symmetry"


def _pacf_to_coef(r: np.ndarray) -> np.ndarray:
    """Polynomial coefficients from partial autocorrelations (Durbin–Levinson):
    a stationary AR polynomial for any r in (−1, 1)ᵏ."""
    phi = np.zeros(0)
    for k, rk in enumerate(r):  # lags, not rows
        phi = np.concatenate([phi - rk * phi[::-1], [rk]]) if k else np.array([rk])
    return phi


def _coef_to_pacf(phi: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_pacf_to_coef`; ModelError for a non-stationary polynomial."""
    phi = np.asarray(phi, float).copy()
    r = np.zeros(phi.size)
    for k in range(phi.size - 1, -1, -1):  # lags, from the last
        rk = phi[k]
        if not -1 < rk < 1:
            raise ModelError("corARMA's starting values are not stationary / invertible")
        r[k] = rk
        if k:
            phi = (phi[:k] + rk * phi[:k][::-1]) / (1.0 - rk * rk)
    return r


class corARMA(CorStruct):  # noqa: N801
    """ARMA(p, q) errors over integer positions (nlme's ``corARMA``)."""

    nlme_class = "corARMA"

    def __init__(self, value=None, form=None, p: int = 0, q: int = 0, fixed: bool = False):
        if int(p) != p or int(q) != q or p < 0 or q < 0 or p + q == 0:
            raise ModelError("corARMA needs whole numbers p >= 0, q >= 0 with p + q >= 1")
        self.p, self.q = int(p), int(q)
        self.markov = self.p == 1 and self.q == 0
        super().__init__(value, form, fixed)

    def names(self):
        return [f"Phi{k + 1}" for k in range(self.p)] + [f"Theta{k + 1}" for k in range(self.q)]

    def to_free(self, v):
        if np.allclose(v, 0):
            return np.zeros(v.size)
        ar = _coef_to_pacf(v[: self.p])
        ma = _coef_to_pacf(-v[self.p :])
        return _atanh2(np.concatenate([ar, ma]))

    def from_free(self, x):
        r = np.tanh(np.asarray(x, float) / 2.0)
        return np.concatenate([_pacf_to_coef(r[: self.p]), -_pacf_to_coef(r[self.p :])])

    def start(self):
        v = self.value if self.value is not None else np.zeros(self.p + self.q)
        self.check_value(v)
        return self.to_free(v)

    def acf(self, x: np.ndarray, maxlag: int) -> np.ndarray:
        """Autocorrelations at lags 0..maxlag through the ψ-weights of the
        MA(∞) form, summed until they are below 1e-16."""
        coef = self.from_free(x)
        phi, theta = coef[: self.p], coef[self.p :]
        # the ψ-weights decay like the largest inverse root of the AR polynomial
        inv = np.abs(np.roots(np.r_[1.0, -phi])) if self.p and np.any(phi) else np.zeros(1)
        rho = float(np.max(inv, initial=0.0))
        n = maxlag + 50 + (int(np.log(1e-17) / np.log(rho)) if 0 < rho < 1 else 0)
        n = min(n, maxlag + 200_000)
        from scipy import signal  # scipy.signal is slow to import: when used

        # ψ is the impulse response of (1 + θB)/(1 − φB): one filter pass
        impulse = np.zeros(n)
        impulse[0] = 1.0
        psi = signal.lfilter(np.r_[1.0, theta], np.r_[1.0, -phi], impulse)
        g = np.array([psi[: n - h] @ psi[h:] for h in range(maxlag + 1)])
        return g / g[0]

    def correlation(self, x, lag):
        k = np.rint(lag).astype(np.int64)
        return self.acf(x, int(k.max(initial=1)))[k]

    def group_matrices(self, x, P):
        lag = np.rint(np.abs(P[:, :, None] - P[:, None, :])).astype(np.int64)
        return self.acf(x, int(lag.max(initial=1)))[lag]

    def describe(self):
        return f"ARMA({self.p},{self.q})"


class corSymm(CorStruct):  # noqa: N801
    """A general correlation matrix over positions 1..m (nlme's ``corSymm``),
    parametrised by canonical partial correlations."""

    nlme_class = "corSymm"

    def names(self):
        m = self.m
        return [f"cor({i + 1},{j + 1})" for j in range(m) for i in range(j)]

    def _pairs(self):
        m = self.m
        return [(i, j) for j in range(m) for i in range(j)]

    def start(self):
        v = self.value if self.value is not None else np.zeros(self.m * (self.m - 1) // 2)
        self.check_value(v)
        return self.to_free(v)

    def _chol(self, x: np.ndarray) -> np.ndarray:
        """Lower Cholesky factor with unit rows from the canonical partial
        correlations z = tanh(x/2) (row i, column j < i)."""
        m = self.m
        z = np.tanh(np.asarray(x, float) / 2.0)
        Z = np.zeros((m, m))
        for k, (i, j) in enumerate(self._pairs()):  # pairs, not rows
            Z[j, i] = z[k]  # lower triangle: row j > column i
        L = np.zeros((m, m))
        L[0, 0] = 1.0
        for i in range(1, m):  # rows of a small m x m factor
            rem = 1.0
            for j in range(i):
                L[i, j] = Z[i, j] * math.sqrt(max(rem, 0.0))
                rem -= L[i, j] ** 2
            L[i, i] = math.sqrt(max(rem, 0.0))
        return L

    def matrix(self, x: np.ndarray) -> np.ndarray:
        L = self._chol(x)
        return L @ L.T

    def from_free(self, x):
        C = self.matrix(x)
        return np.array([C[i, j] for i, j in self._pairs()])

    def to_free(self, v):
        m = self.m
        C = np.eye(m)
        for k, (i, j) in enumerate(self._pairs()):
            C[i, j] = C[j, i] = v[k]
        try:
            L = np.linalg.cholesky(C)
        except np.linalg.LinAlgError:
            raise ModelError("corSymm's starting correlations are not positive definite") from None
        x = np.zeros(len(self._pairs()))
        for k, (i, j) in enumerate(self._pairs()):
            rem = 1.0 - np.sum(L[j, :i] ** 2)
            x[k] = _atanh2(np.array([L[j, i] / math.sqrt(rem)]))[0]
        return x

    def group_matrices(self, x, P):
        idx = np.rint(P).astype(np.int64) - 1
        return self.matrix(x)[idx[:, :, None], idx[:, None, :]]

    def describe(self):
        return "General"


class _Spatial(CorStruct):
    spatial = True
    shape = ""

    def __init__(self, value=None, form=None, nugget: bool = False, fixed: bool = False):
        self.nugget = bool(nugget)
        super().__init__(value, form, fixed)

    def names(self):
        return ["range", "nugget"] if self.nugget else ["range"]

    def start(self):
        if self.value is None:
            what = "range, nugget" if self.nugget else "range"
            raise ModelError(
                f"{self.nlme_class} needs a starting value=({what}) in the units of the coordinates"
            )
        return super().start()

    def to_free(self, v):
        if v[0] <= 0:
            raise ModelError(f"{self.nlme_class}'s range must be positive, not {v[0]}")
        out = [math.log(v[0])]
        if self.nugget:
            if not 0 < v[1] < 1:
                raise ModelError(f"{self.nlme_class}'s nugget must be in (0, 1), not {v[1]}")
            out.append(float(special.logit(v[1])))
        return np.array(out)

    def from_free(self, x):
        x = np.asarray(x, float)
        out = [math.exp(x[0])]
        if self.nugget:
            out.append(float(special.expit(x[1])))
        return np.array(out)

    def shape_fn(self, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def correlation(self, x, lag):
        v = self.from_free(x)
        c = self.shape_fn(lag / v[0])
        return (1.0 - v[1]) * c if self.nugget else c

    def describe(self):
        return f"{self.shape} spatial correlation"


class corExp(_Spatial):  # noqa: N801
    nlme_class, shape = "corExp", "Exponential"

    def shape_fn(self, s):
        return np.exp(-s)


class corGaus(_Spatial):  # noqa: N801
    nlme_class, shape = "corGaus", "Gaussian"

    def shape_fn(self, s):
        return np.exp(-s * s)


class corLin(_Spatial):  # noqa: N801
    nlme_class, shape = "corLin", "Linear"

    def shape_fn(self, s):
        return np.maximum(1.0 - s, 0.0)


class corRatio(_Spatial):  # noqa: N801
    nlme_class, shape = "corRatio", "Rational quadratic"

    def shape_fn(self, s):
        return 1.0 / (1.0 + s * s)


class corSpher(_Spatial):  # noqa: N801
    nlme_class, shape = "corSpher", "Spherical"

    def shape_fn(self, s):
        return np.where(s < 1.0, 1.0 - 1.5 * s + 0.5 * s**3, 0.0)


__all__ = [
    "CorStruct",
    "corAR1",
    "corARMA",
    "corCAR1",
    "corCompSymm",
    "corExp",
    "corGaus",
    "corLin",
    "corRatio",
    "corSpher",
    "corSymm",
]
