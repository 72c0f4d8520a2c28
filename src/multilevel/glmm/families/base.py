"""What every response distribution provides to the GLMM engine.

A family pairs a distribution of y given the linear predictor η with a link
g(μ) = η (:mod:`.links`).  Per observation i with prior weight wᵢ the engine
uses:

* ``loglik_kernel``: wᵢ × the log-density of yᵢ at η, without the part that
  depends on the data alone (kept in ``GlmResponse.const``); the two add up to
  the *full* log-density, normalising constants included;
* ``dmu``: the first two derivatives ℓ_μ, ℓ_μμ of that log-density in μ;
  from them ``observed_weights`` −∂²ℓ/∂η² = −(ℓ_μμ μ'² + ℓ_μ μ''), the curvature
  the Laplace approximation uses (glmmTMB's), and ``irls_terms``/``score_weights``
  the Fisher weights Wᵢ = wᵢ μ'² i(μ) (i(μ) the expected information per unit
  weight, ``info_mu``) with the working residual ℓ_η / Wᵢ of a scoring step —
  for the exponential families (yᵢ − μᵢ)/μ';
* ``variance`` V(μ), ``dev_resids`` and ``saturated_loglik`` for residuals and
  lme4's AGQ log-likelihood; ``initial_mu``; ``simulate``;
* an optional parameter of the distribution (``param_name``: the negative
  binomial θ, the Gamma shape, the beta precision φ, the inverse Gaussian
  dispersion), positive, estimated by maximum likelihood with the variance
  parameters (searched as its logarithm) unless fixed by the user.

With a canonical link ℓ_ηη does not depend on y and the observed and Fisher
weights coincide.  Prior weights multiply each row's log-density (R's
``binomial()``/``poisson()`` and glmmTMB's convention).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from multilevel.errors import DataError, ModelError
from multilevel.formula.design import Categorical
from multilevel.glmm.families.links import TINY, Link, make_link


@dataclass
class GlmResponse:
    """A response ready for fitting.

    ``y`` is the proportion (binomial), count or measurement; ``weights`` are
    the prior weights (trials × prior weight for the binomial) so that the
    log-likelihood is ``const + kernel(y, η, weights)``; ``const`` holds each
    row's log-constant that depends on the data alone (log binomial coefficient
    × prior weight, −log yᵢ! × weight, 0 where the constant involves the
    family's parameter); ``trials`` are the binomial numbers of trials.
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


def is_integer(x: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    return np.abs(x - np.round(x)) <= tol * np.maximum(1.0, np.abs(x))


def nrows(value: Any) -> int:
    return len(value.codes) if isinstance(value, Categorical) else value.values.shape[0]


def numeric_column(value: Any, family: str, label: str, what: str) -> np.ndarray:
    """The single numeric column of a response, or DataError saying what it must be."""
    if isinstance(value, Categorical):
        raise DataError(f"the {family} response {label!r} is categorical; it must be {what}")
    if value.values.shape[1] != 1:
        raise DataError(f"the {family} response {label!r} must be a single column of {what}")
    return np.asarray(value.values[:, 0], dtype=float)


def prior_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones(n) if weights is None else np.asarray(weights, float)


class Family:
    """A response distribution with a link (see the module docstring)."""

    name: str = ""
    links: tuple[str, ...] = ()
    canonical_link: str | None = None  # of an exponential family (observed = Fisher)
    param_name: str | None = None  # the distribution's own positive parameter
    hessian_default: str = "observed"  # the Laplace curvature by default (see glmer)

    def __init__(self, link: str | Link | None = None, value: float | None = None):
        if link is None:
            link = self.links[0]
        if isinstance(link, str):
            link = make_link(link, self.links, self.name)
        self.link: Link = link
        self.value: float | None = None  # the parameter's current value
        self.estimated = self.param_name is not None and value is None
        if value is not None:
            if self.param_name is None:
                raise ModelError(f"the {self.name} family has no parameter to fix")
            value = float(value)
            if not (np.isfinite(value) and value > 0):
                raise ModelError(f"{self.param_name} must be a positive number, not {value!r}")
            self.value = value

    # -- link delegation
    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        return self.link.linkfun(mu)

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        return self.link.linkinv(eta)

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        return self.link.mu_eta(eta)

    @property
    def canonical(self) -> bool:
        """Whether the link is the canonical link of an exponential family."""
        return self.link.name == self.canonical_link

    # -- the family's own parameter
    @property
    def nfree(self) -> int:
        """Parameters of the distribution a fit estimates (0 or 1)."""
        return int(self.estimated)

    def with_value(self, value: float) -> Family:
        """A copy at parameter value ``value`` (estimated or not as this one)."""
        out = copy.copy(self)
        out.value = float(value)
        return out

    def free_values(self) -> np.ndarray:
        """The estimated parameters on the unconstrained scale the searches
        move them on (``nfree`` of them): log ψ here."""
        return np.log([self.value] * self.nfree)

    def with_free(self, x: np.ndarray) -> Family:
        """A copy at unconstrained coordinates ``x`` (see :meth:`free_values`)."""
        return self.with_value(math.exp(float(x[0])))

    def param_start(self, resp: GlmResponse, mu: np.ndarray) -> float:
        """A starting value of the parameter from fitted means of a GLM: moments,
        from sums over the rows (``start_sums``, added up over partitions of the
        data too) through ``start_from``."""
        return self.start_from(self.start_sums(resp, mu))

    def start_sums(self, resp: GlmResponse, mu: np.ndarray) -> np.ndarray:
        """The row sums a moment estimate of the parameter needs."""
        raise NotImplementedError

    def start_from(self, sums: np.ndarray) -> float:
        """The moment estimate from (summed) ``start_sums``."""
        raise NotImplementedError

    @property
    def sigma(self) -> float:
        """glmmTMB's ``sigma()``: 1 for families without a parameter."""
        return 1.0

    @property
    def dispersion(self) -> float:
        """The GLM dispersion φ with Var(y) = φV(μ) (Gamma 1/shape, inverse
        Gaussian φ; 1 where ``variance`` is the whole variance)."""
        return 1.0

    def summary_line(self) -> str | None:
        """The family's parameter as glmmTMB's summary prints it."""
        return None

    # -- distribution
    def variance(self, mu: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def info_mu(self, mu: np.ndarray) -> np.ndarray:
        """Expected information about μ per unit prior weight: 1/V(μ) for a
        family with unit dispersion."""
        return 1.0 / np.maximum(self.variance(mu), TINY)

    def dev_resids(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def loglik_kernel(self, y: np.ndarray, eta: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """Per-row log-density without the data-only constant, from η."""
        raise NotImplementedError

    def dmu(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ℓ_μ and ℓ_μμ per row (prior weights included)."""
        raise NotImplementedError

    def dmu3(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """ℓ_μμμ per row."""
        raise NotImplementedError

    def dparam(
        self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """∂/∂ψ of ℓ, ℓ_μ and ℓ_μμ per row, ψ the logarithm of the parameter."""
        raise NotImplementedError

    def eta_derivs(
        self, y: np.ndarray, eta: np.ndarray, wt: np.ndarray, third: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """ℓ (kernel), ℓ_η, ℓ_ηη and ℓ_ηηη per row, by the chain rule through
        μ = g⁻¹(η): ℓ_ηη = ℓ_μμ μ′² + ℓ_μ μ″, ℓ_ηηη = ℓ_μμμ μ′³ + 3ℓ_μμ μ′μ″ + ℓ_μ μ‴."""
        link = self.link
        mu = link.linkinv(eta)
        d1, d2 = link.mu_eta(eta), link.mu_eta2(eta)
        l1, l2 = self.dmu(y, mu, wt)
        ll = self.loglik_kernel(y, eta, wt)
        e3 = None
        if third:
            e3 = self.dmu3(y, mu, wt) * d1**3 + 3.0 * l2 * d1 * d2 + l1 * link.mu_eta3(eta)
        return ll, l1 * d1, l2 * d1 * d1 + l1 * d2, e3

    def param_eta_derivs(
        self, y: np.ndarray, eta: np.ndarray, wt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """∂/∂ψ of ℓ, ℓ_η and ℓ_ηη per row."""
        link = self.link
        mu = link.linkinv(eta)
        d1, d2 = link.mu_eta(eta), link.mu_eta2(eta)
        p0, p1, p2 = self.dparam(y, mu, wt)
        return p0, p1 * d1, p2 * d1 * d1 + p1 * d2

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
        """Fisher weights wᵢ μ'² i(μ)."""
        return self.irls_terms(eta, wt)[2]

    def irls_terms(
        self, eta: np.ndarray, wt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """μ, dμ/dη and the Fisher weights wᵢ (dμ/dη)² i(μ) at η in one pass
        (canonical links override it with a single transcendental per row)."""
        mu = self.linkinv(eta)
        d = self.mu_eta(eta)
        return mu, d, wt * d * d * self.info_mu(mu)

    def score_weights(
        self, y: np.ndarray, eta: np.ndarray, wt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fisher weights W and working residuals ℓ_η / W: a scoring step on η
        solves the weighted least squares of η + ℓ_η/W.  For an exponential
        family ℓ_η/W = (y − μ)/μ'."""
        mu, d, w = self.irls_terms(eta, wt)
        return w, (y - mu) / d

    pirls_newton: bool = False  # PIRLS steps with Newton's weights (newton_weights)

    def pirls_weights(
        self, y: np.ndarray, eta: np.ndarray, wt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The weights and working residuals of a PIRLS step (its steps are
        halved while the penalized deviance rises): Newton's where the family
        says so (``pirls_newton``), else the scoring step."""
        if self.pirls_newton:
            return self.newton_weights(y, eta, wt)
        return self.score_weights(y, eta, wt)

    def newton_weights(
        self, y: np.ndarray, eta: np.ndarray, wt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Newton's weights −ℓ_ηη (positive for a log-concave density in η:
        the binomial and cumulative models with logit, probit, cloglog or
        loglog links) and working residuals ℓ_η/w, Fisher's weights where
        they are not positive (cauchit's tails): PIRLS, whose steps are
        halved while the penalized deviance rises, then converges
        quadratically where scoring converges linearly (non-canonical links)."""
        _, l1, l2, _ = self.eta_derivs(y, eta, wt, third=False)
        w = -l2
        bad = ~(w > 1e-12)
        if np.any(bad):
            w = np.where(bad, self.irls_terms(eta, wt)[2], w)
        return w, l1 / w

    def observed_weights(self, y: np.ndarray, eta: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """−∂²ℓ/∂η² per row; the Fisher weights for a canonical link."""
        if self.canonical:
            return self.irls_terms(eta, wt)[2]
        mu = self.linkinv(eta)
        l1, l2 = self.dmu(y, mu, wt)
        d = self.link.mu_eta(eta)
        return -(l2 * d * d + l1 * self.link.mu_eta2(eta))

    def initial_mu(self, resp: GlmResponse) -> np.ndarray:
        raise NotImplementedError

    def eta_scale(self, resp: GlmResponse) -> float:
        """A typical |η|: |g(ȳ)| where η has the units of the response (or their
        inverse: identity, inverse, 1/μ² links), 1 where it has none."""
        if self.link.unit_free:
            return 1.0
        w = resp.weights
        with np.errstate(all="ignore"):
            s = abs(float(self.linkfun(np.sum(w * resp.y) / np.sum(w))))
        return s if np.isfinite(s) and s > 0 else 1.0

    def response(self, value: Any, weights: np.ndarray | None, label: str) -> GlmResponse:
        """Interpret the evaluated response (a ``design.Categorical`` or
        ``design.Numeric``) and prior weights; DataError when it cannot be."""
        raise NotImplementedError

    def simulate(self, mu: np.ndarray, resp: GlmResponse, rng: np.random.Generator) -> np.ndarray:
        """Responses drawn at means μ (on the scale of ``resp.y``)."""
        raise NotImplementedError

    def data_constant(
        self, y: np.ndarray, weights: np.ndarray, trials: np.ndarray | None
    ) -> np.ndarray:
        """Each row's log-density term that depends on the data alone (0 where
        the normalising constant involves the family's parameter)."""
        return np.zeros_like(y, dtype=float)

    def new_response(self, resp: GlmResponse, y: np.ndarray) -> GlmResponse:
        """``resp`` with the values ``y`` (on the scale of ``resp.y``: a simulated
        response) and the same weights and trials."""
        y = np.asarray(y, dtype=float)
        return GlmResponse(y, resp.weights, self.data_constant(y, resp.weights, resp.trials),
                           resp.trials)  # fmt: skip

    def describe(self) -> str:
        """The family as lme4 prints it, e.g. ``Negative Binomial(3.21)``."""
        return self.name

    def of_data(self, y: np.ndarray, fun) -> np.ndarray:
        """fun(y) for a function of the data alone (log y...), kept for the last
        response array seen: a search evaluates the family at the same rows
        hundreds of times."""
        cache = self.__dict__.setdefault("_data_cache", {})
        hit = cache.get(fun)
        if hit is None or hit[0] is not y:
            hit = (y, fun(y))
            cache[fun] = hit
        return hit[1]

    def runaway(self, mu: np.ndarray) -> str | None:
        """Why the estimated parameter is at a limit of the family rather than
        a maximum (it ran off to 0 or infinity while the likelihood rose ever
        more slowly), given the fitted means; None when it is not."""
        return None

    def __repr__(self) -> str:
        if self.param_name is not None and self.value is not None:
            return f"{self.name}({self.link.name}, {self.param_name}={self.value:.6g})"
        return f"{self.name}({self.link.name})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Family)
            and other.name == self.name
            and other.link.name == self.link.name
            and other.estimated == self.estimated
            and (self.estimated or other.value == self.value)
        )

    def __hash__(self) -> int:
        return hash((self.name, self.link.name))


def log_choose(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
