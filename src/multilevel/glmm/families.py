"""Response distributions and link functions of generalized linear (mixed) models.

A family pairs a distribution of y given the linear predictor η with a link
g(μ) = η.  What the GLMM code needs from it, per observation i with prior
weight wᵢ:

* ``linkfun`` g, ``linkinv`` g⁻¹, ``mu_eta`` dμ/dη, ``variance`` V(μ);
* the IRLS working weights wᵢ (dμ/dη)² / V(μ) and the working residuals
  (yᵢ − μᵢ) / (dμ/dη);
* ``dev_resids``: the squared deviance residuals 2wᵢ[ℓ(yᵢ; yᵢ) − ℓ(yᵢ; μᵢ)];
* ``loglik``: the *full* log-density, normalising constants included.

Binomial (links logit, probit, cloglog).  The response is a proportion
yᵢ = kᵢ/nᵢ of kᵢ successes in nᵢ trials; with prior weights aᵢ, wᵢ = aᵢ nᵢ and

    log f(yᵢ | μᵢ) = aᵢ [log C(nᵢ, kᵢ) + kᵢ log μᵢ + (nᵢ − kᵢ) log(1 − μᵢ)]

(R's ``binomial()$aic``: each row's log-density is scaled by its prior weight).
Responses accepted (as R's ``binomial()``): 0/1 numbers, booleans, a factor
with two levels (the second is "success"), proportions with ``weights=`` the
numbers of trials, and ``cbind(successes, failures)``.

Poisson (log link): log f(yᵢ | μᵢ) = wᵢ [yᵢ log μᵢ − μᵢ − log yᵢ!].

Logarithms of μ and 1 − μ are computed from η directly (``log_mu``,
``log1m_mu``), so that extreme linear predictors in the quadrature and Monte
Carlo code never produce ``log(0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from multilevel.errors import DataError, ModelError
from multilevel.formula.design import Categorical

_EPS = np.finfo(float).eps
_TINY = np.finfo(float).tiny
_MAX_EXP = 700.0  # exp(700) is finite


def _softplus(eta: np.ndarray) -> np.ndarray:
    """log(1 + e^η) = max(η, 0) + log(1 + e^−|η|).  numpy's vectorized ``log`` and
    ``exp`` are several times faster than ``logaddexp``/``log1p``; log(1 + x) for
    0 < x ≤ 1 has absolute error below 2.3e-16, so a sum over rows is as exact."""
    out = np.abs(eta)
    np.negative(out, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.log(out, out=out)
    out += np.maximum(eta, 0.0)
    return out


# --------------------------------------------------------------------------- links


class Link:
    """A link function g: μ ↦ η with inverse and derivative of the inverse."""

    name: str = ""

    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """dμ/dη, bounded below by machine epsilon as R's families do."""
        raise NotImplementedError

    def log_mu(self, eta: np.ndarray) -> np.ndarray:
        return np.log(self.linkinv(eta))

    def log1m_mu(self, eta: np.ndarray) -> np.ndarray:
        return np.log1p(-self.linkinv(eta))

    def __repr__(self) -> str:
        return f"<link {self.name}>"


class LogitLink(Link):
    """η = log(μ / (1 − μ)); the canonical binomial link."""

    name = "logit"

    def linkfun(self, mu):
        return special.logit(mu)

    def linkinv(self, eta):
        return special.expit(eta)

    def mu_eta(self, eta):
        return np.maximum(special.expit(eta) * special.expit(-eta), _EPS)

    def log_mu(self, eta):
        return special.log_expit(eta)

    def log1m_mu(self, eta):
        return special.log_expit(-eta)


class ProbitLink(Link):
    """η = Φ⁻¹(μ)."""

    name = "probit"

    def linkfun(self, mu):
        return special.ndtri(mu)

    def linkinv(self, eta):
        return special.ndtr(eta)

    def mu_eta(self, eta):
        return np.maximum(np.exp(-0.5 * np.square(eta)) / np.sqrt(2 * np.pi), _EPS)

    def log_mu(self, eta):
        return special.log_ndtr(eta)

    def log1m_mu(self, eta):
        return special.log_ndtr(-eta)


class CloglogLink(Link):
    """η = log(−log(1 − μ))."""

    name = "cloglog"

    def linkfun(self, mu):
        return np.log(-np.log1p(-mu))

    def linkinv(self, eta):
        return -np.expm1(-np.exp(np.minimum(eta, 700.0)))

    def mu_eta(self, eta):
        eta = np.minimum(eta, 700.0)
        return np.maximum(np.exp(eta - np.exp(eta)), _EPS)

    def log_mu(self, eta):
        with np.errstate(divide="ignore"):
            return np.log(-np.expm1(-np.exp(np.minimum(eta, 700.0))))

    def log1m_mu(self, eta):
        return -np.exp(np.minimum(eta, 700.0))


class LogLink(Link):
    """η = log μ; the canonical Poisson link."""

    name = "log"

    def linkfun(self, mu):
        return np.log(mu)

    def linkinv(self, eta):
        return np.exp(eta)

    def mu_eta(self, eta):
        return np.maximum(np.exp(eta), _EPS)

    def log_mu(self, eta):
        return np.asarray(eta, dtype=float)


_LINKS: dict[str, type[Link]] = {
    "logit": LogitLink,
    "probit": ProbitLink,
    "cloglog": CloglogLink,
    "log": LogLink,
}


# --------------------------------------------------------------------------- responses


@dataclass
class GlmResponse:
    """A response ready for fitting.

    ``y`` is the proportion (binomial) or count (Poisson); ``weights`` are the
    GLM prior weights (trials × prior weight for the binomial) so that
    Var(yᵢ) = V(μᵢ)/wᵢ; ``const`` holds each row's normalising log-constant
    (log binomial coefficient × prior weight, −log yᵢ! × weight) so that the
    log-likelihood is ``const + weights * (y log μ + ...)``; ``trials`` are the
    binomial numbers of trials (None for Poisson).
    """

    y: np.ndarray
    weights: np.ndarray
    const: np.ndarray
    trials: np.ndarray | None = None

    def take(self, index: np.ndarray) -> GlmResponse:
        return GlmResponse(
            self.y[index],
            self.weights[index],
            self.const[index],
            None if self.trials is None else self.trials[index],
        )


def _is_integer(x: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    return np.abs(x - np.round(x)) <= tol * np.maximum(1.0, np.abs(x))


def _log_choose(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


# --------------------------------------------------------------------------- families


class Family:
    """A response distribution with a link (see the module docstring)."""

    name: str = ""
    links: tuple[str, ...] = ()

    def __init__(self, link: str | Link | None = None):
        if link is None:
            link = self.links[0]
        if isinstance(link, str):
            if link not in self.links:
                raise ModelError(
                    f"link {link!r} is not available for the {self.name} family; "
                    f"choose one of {', '.join(self.links)}"
                )
            link = _LINKS[link]()
        self.link: Link = link

    # -- link delegation
    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        return self.link.linkfun(mu)

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        return self.link.linkinv(eta)

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        return self.link.mu_eta(eta)

    @property
    def canonical(self) -> bool:
        return self.link.name == self.links[0]

    # -- distribution
    def variance(self, mu: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def dev_resids(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def loglik_kernel(self, y: np.ndarray, eta: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """Per-row log-density without the normalising constant, from η."""
        raise NotImplementedError

    def cumulant(self, eta: np.ndarray) -> np.ndarray:
        """b(η) of a canonical link (``canonical``), where the kernel is
        wᵢ(yᵢηᵢ − b(ηᵢ)): log(1 + e^η) binomial, e^η Poisson."""
        raise NotImplementedError

    def loglik(
        self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray, const: np.ndarray | float = 0.0
    ) -> float:
        """Full log-likelihood Σᵢ log f(yᵢ | μᵢ) (``const`` from :meth:`response`)."""
        eta = self.linkfun(np.asarray(mu, dtype=float))
        return float(np.sum(self.loglik_kernel(y, eta, wt) + const))

    def aic(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray, const: Any = 0.0) -> float:
        """−2 × full log-likelihood (R's ``family$aic`` before adding 2 × rank)."""
        return -2.0 * self.loglik(y, mu, wt, const)

    def saturated_loglik(self, resp: GlmResponse) -> float:
        """Σᵢ log f(yᵢ | μᵢ = yᵢ): the constant relating deviance and log-likelihood,
        −2 loglik = Σ dev_resids − 2 × saturated_loglik."""
        raise NotImplementedError

    def working_weights(self, eta: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """IRLS weights wᵢ (dμ/dη)² / V(μ) (Fisher scoring)."""
        mu = self.linkinv(eta)
        d = self.mu_eta(eta)
        return wt * d * d / np.maximum(self.variance(mu), _TINY)

    def irls_terms(
        self, eta: np.ndarray, wt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """μ, dμ/dη and the IRLS weights wᵢ (dμ/dη)² / V(μ) at η in one pass
        (canonical links override it with a single transcendental per row)."""
        mu = self.linkinv(eta)
        d = self.mu_eta(eta)
        return mu, d, wt * d * d / np.maximum(self.variance(mu), _TINY)

    def initial_mu(self, resp: GlmResponse) -> np.ndarray:
        raise NotImplementedError

    def response(self, value: Any, weights: np.ndarray | None, label: str) -> GlmResponse:
        """Interpret the evaluated response (a ``design.Categorical`` or
        ``design.Numeric``) and prior weights; DataError when it cannot be."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}({self.link.name})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Family)
            and other.name == self.name
            and other.link.name == self.link.name
        )

    def __hash__(self) -> int:
        return hash((self.name, self.link.name))


class Binomial(Family):
    """Binomial proportions; links logit (default), probit, cloglog."""

    name = "binomial"
    links = ("logit", "probit", "cloglog")

    def variance(self, mu):
        return mu * (1.0 - mu)

    def dev_resids(self, y, mu, wt):
        mu = np.clip(mu, _TINY, 1.0 - _EPS / 2)
        return (
            2.0 * wt * (special.xlogy(y, y / mu) + special.xlogy(1.0 - y, (1.0 - y) / (1.0 - mu)))
        )

    def loglik_kernel(self, y, eta, wt):
        if self.link.name == "logit":  # y η − log(1 + e^η)
            return wt * (y * eta - _softplus(eta))
        # y log μ + (1 − y) log(1 − μ), with 0·log 0 = 0 at the boundary
        lm = self.link.log_mu(eta)
        l1m = self.link.log1m_mu(eta)
        with np.errstate(invalid="ignore"):  # 0 · (−∞) where the branch is unused
            a = np.where(y > 0, y * lm, 0.0)
            b = np.where(y < 1, (1.0 - y) * l1m, 0.0)
        return wt * (a + b)

    def irls_terms(self, eta, wt):
        if self.link.name != "logit":
            return super().irls_terms(eta, wt)
        # one exponential: e = exp(−η), μ = 1/(1 + e), dμ/dη = e/(1 + e)² = (eμ)μ
        # (accurate in both tails); the weights divide by V(μ) = μ(1 − μ) exactly
        # as the generic formula does
        e = np.exp(-np.maximum(eta, -_MAX_EXP))
        mu = 1.0 / (1.0 + e)
        d = np.maximum((e * mu) * mu, _EPS)
        return mu, d, wt * d * d / np.maximum(mu * (1.0 - mu), _TINY)

    def cumulant(self, eta):
        return _softplus(eta)

    def saturated_loglik(self, resp):
        y = resp.y
        k = special.xlogy(y, y) + special.xlogy(1.0 - y, 1.0 - y)
        return float(np.sum(resp.weights * k + resp.const))

    def initial_mu(self, resp):
        return (resp.weights * resp.y + 0.5) / (resp.weights + 1.0)

    def response(self, value, weights, label):
        prior = np.ones(_nrows(value)) if weights is None else np.asarray(weights, float)
        if isinstance(value, Categorical):
            vals = _binary_from_categorical(value, label)[:, None]
        else:
            vals = value.values
        if vals.shape[1] == 2:
            succ, fail = vals[:, 0], vals[:, 1]
            if (succ < 0).any() or (fail < 0).any():
                raise DataError(
                    f"the binomial response {label!r} has negative counts; "
                    "cbind() takes (successes, failures)"
                )
            if not (_is_integer(succ).all() and _is_integer(fail).all()):
                raise DataError(
                    f"the binomial response {label!r} has non-integer counts; "
                    "cbind() takes whole numbers of successes and failures"
                )
            return self._from_counts(np.round(succ), np.round(succ + fail), prior, label)
        if vals.shape[1] != 1:
            raise DataError(
                f"the binomial response {label!r} has {vals.shape[1]} columns; "
                "use one column (0/1 or proportions) or cbind(successes, failures)"
            )
        y = vals[:, 0]
        if (y < 0).any() or (y > 1).any():
            raise DataError(
                f"the binomial response {label!r} has values outside [0, 1]; give 0/1 "
                "outcomes, proportions with weights= the numbers of trials, or "
                "cbind(successes, failures)"
            )
        succ = y * prior
        if not _is_integer(succ).all():
            if weights is None:
                raise DataError(
                    f"the binomial response {label!r} has values strictly between 0 and 1; "
                    "proportions need weights= the numbers of trials"
                )
            raise DataError(
                f"the binomial response {label!r} times weights= is not a whole number of "
                "successes; weights must be the numbers of trials"
            )
        if not _is_integer(prior).all():
            raise DataError("binomial weights= must be whole numbers of trials")
        return self._from_counts(np.round(succ), np.round(prior), np.ones_like(prior), label)

    @staticmethod
    def _from_counts(succ, trials, prior, label) -> GlmResponse:
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(trials > 0, succ / trials, 0.0)
        const = prior * _log_choose(trials, succ)
        return GlmResponse(y, prior * trials, const, trials)


class Poisson(Family):
    """Poisson counts; link log."""

    name = "poisson"
    links = ("log",)

    def variance(self, mu):
        return mu

    def dev_resids(self, y, mu, wt):
        mu = np.maximum(mu, _TINY)
        return 2.0 * wt * (special.xlogy(y, y / mu) - (y - mu))

    def loglik_kernel(self, y, eta, wt):
        eta = np.minimum(eta, 700.0)
        return wt * (np.where(y > 0, y * eta, 0.0) - np.exp(eta))

    def cumulant(self, eta):
        return np.exp(np.minimum(eta, 700.0))

    def saturated_loglik(self, resp):
        y = resp.y
        return float(np.sum(resp.weights * (special.xlogy(y, y) - y) + resp.const))

    def irls_terms(self, eta, wt):
        mu = np.exp(eta)  # μ = dμ/dη = V(μ): one exponential
        d = np.maximum(mu, _EPS)
        return mu, d, wt * d * (d / np.maximum(mu, _TINY))

    def initial_mu(self, resp):
        return resp.y + 0.1

    def response(self, value, weights, label):
        if isinstance(value, Categorical):
            raise DataError(
                f"the Poisson response {label!r} is categorical; it must be counts "
                "(non-negative whole numbers)"
            )
        if value.values.shape[1] != 1:
            raise DataError(f"the Poisson response {label!r} must be a single column of counts")
        y = value.values[:, 0]
        if (y < 0).any():
            raise DataError(f"the Poisson response {label!r} has negative values")
        if not _is_integer(y).all():
            raise DataError(
                f"the Poisson response {label!r} has non-integer values; it must be counts"
            )
        y = np.round(y)
        wt = np.ones_like(y) if weights is None else np.asarray(weights, float)
        return GlmResponse(y, wt, -wt * special.gammaln(y + 1.0), None)


def _nrows(value: Any) -> int:
    return len(value.codes) if isinstance(value, Categorical) else value.values.shape[0]


def _binary_from_categorical(value: Categorical, label: str) -> np.ndarray:
    nlev = len(value.labels)
    if nlev == 2:
        return (value.codes == 1).astype(float)
    if nlev == 1 and value.values.dtype == bool:  # all TRUE or all FALSE
        return np.full(len(value.codes), float(bool(value.values[0])))
    if nlev == 1:
        raise DataError(
            f"the binomial response {label!r} has a single level ({value.labels[0]!r}); "
            "it needs two levels (the second is success), or give it as 0/1"
        )
    raise DataError(
        f"the binomial response {label!r} is a factor with {nlev} levels "
        f"({', '.join(value.labels[:5])}); a binomial response needs two levels "
        "(the second is success)"
    )


_FAMILIES: dict[str, type[Family]] = {"binomial": Binomial, "poisson": Poisson}


def get_family(family: str | Family, link: str | None = None) -> Family:
    """A :class:`Family` from a name (``"binomial"``, ``"poisson"``,
    ``"binomial(probit)"``) or an instance."""
    if isinstance(family, Family):
        if link is not None and link != family.link.name:
            return type(family)(link)
        return family
    if not isinstance(family, str):
        raise ModelError(f"family must be a name or a Family, not {type(family).__name__}")
    text = family.strip().replace(" ", "")
    if text.endswith(")") and "(" in text:
        text, arg = text[:-1].split("(", 1)
        arg = arg.removeprefix("link=").strip("\"'")
        if arg:
            link = arg if link is None else link
    cls = _FAMILIES.get(text.lower())
    if cls is None:
        raise ModelError(f"unknown family {family!r}; available: {', '.join(sorted(_FAMILIES))}")
    return cls(link)


def binomial(link: str = "logit") -> Binomial:
    return Binomial(link)


def poisson(link: str = "log") -> Poisson:
    return Poisson(link)


__all__ = [
    "Binomial",
    "CloglogLink",
    "Family",
    "GlmResponse",
    "Link",
    "LogLink",
    "LogitLink",
    "Poisson",
    "ProbitLink",
    "binomial",
    "get_family",
    "poisson",
]
