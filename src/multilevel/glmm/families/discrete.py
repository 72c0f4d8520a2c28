"""Counts and proportions: binomial, Poisson and negative binomial families.

Binomial (links logit, probit, cloglog).  The response is a proportion
yᵢ = kᵢ/nᵢ of kᵢ successes in nᵢ trials; with prior weights aᵢ, wᵢ = aᵢ nᵢ and

    log f(yᵢ | μᵢ) = aᵢ [log C(nᵢ, kᵢ) + kᵢ log μᵢ + (nᵢ − kᵢ) log(1 − μᵢ)]

(R's ``binomial()$aic``: each row's log-density is scaled by its prior weight).
Responses accepted (as R's ``binomial()``): 0/1 numbers, booleans, a factor
with two levels (the second is "success"), proportions with ``weights=`` the
numbers of trials, and ``cbind(successes, failures)``.

Poisson (log link): log f(yᵢ | μᵢ) = wᵢ [yᵢ log μᵢ − μᵢ − log yᵢ!].

Negative binomial NB2 (links log, sqrt, identity), variance μ + μ²/θ:

    log f(yᵢ | μᵢ) = wᵢ [log Γ(yᵢ + θ) − log Γ(θ) − log yᵢ! + θ log(θ/(μᵢ + θ))
                        + yᵢ log(μᵢ/(μᵢ + θ))],

θ estimated (lme4's ``glmer.nb``, glmmTMB's ``nbinom2``) or fixed (MASS's
``negative.binomial(theta)``).  Its log link is not canonical: the observed
and Fisher curvatures differ, and so do glmmTMB's and lme4's Laplace values.

Logarithms of μ and 1 − μ are computed from η directly (``log_mu``,
``log1m_mu``), so that extreme linear predictors in the quadrature and Monte
Carlo code never produce ``log(0)``.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from multilevel.errors import DataError
from multilevel.formula.design import Categorical
from multilevel.glmm.families.base import (
    Family,
    GlmResponse,
    is_integer,
    log_choose,
    nrows,
    numeric_column,
    prior_weights,
)
from multilevel.glmm.families.links import EPS, MAX_EXP, TINY, log_ndtr_pair


def softplus(eta: np.ndarray) -> np.ndarray:
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


_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))


def _mills_pair(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """φ(x)/Φ(x) and φ(x)/Φ(−x), finite for every x (one log Φ)."""
    lp, lm = log_ndtr_pair(x)
    e = -0.5 * x * x - _HALF_LOG_2PI
    return np.exp(e - lp), np.exp(e - lm)


def probit_rows(eta, y, wt):
    """ℓ', O = −ℓ'', W (Fisher's weight) and W' = dW/dη per row of a binomial
    with the probit link, through the inverse Mills ratio A = φ/Φ (finite in
    both tails): ℓ' = wt[yA(η) − (1 − y)A(−η)], W = wt A(η)A(−η),
    A' = −A(x + A)."""
    Ap, Am = _mills_pair(eta)
    dAp = -Ap * (eta + Ap)  # A'(η)
    dAm = -Am * (-eta + Am)  # A'(−η)
    lp = wt * (y * Ap - (1.0 - y) * Am)
    obs = -wt * (y * dAp + (1.0 - y) * dAm)  # −ℓ'': d/dη A(−η) = −A'(−η)
    W = wt * Ap * Am
    W1 = wt * (dAp * Am - Ap * dAm)
    return lp, obs, W, W1


def cloglog_rows(eta, y, wt):
    """ℓ', O = −ℓ'', W and W' per row (complementary log-log), through
    t = e^η and B = t/(eᵗ − 1): ℓ' = wt[yB − (1 − y)t], W = wt tB,
    B' = B(1 − t − B)."""
    t = np.exp(np.minimum(eta, 700.0))
    B = np.where(t > 1e-300, t / np.expm1(np.minimum(t, 700.0)), 1.0)
    dB = B * (1.0 - t - B)
    lp = wt * (y * B - (1.0 - y) * t)
    obs = -wt * (y * dB - (1.0 - y) * t)
    W = wt * t * B
    W1 = wt * t * B * (2.0 - t - B)
    return lp, obs, W, W1


LINK_ROWS = {"probit": probit_rows, "cloglog": cloglog_rows}


class Binomial(Family):
    """Binomial proportions; links logit (default), probit, cloglog."""

    name = "binomial"
    links = ("logit", "probit", "cloglog")
    canonical_link = "logit"
    hessian_default = "fisher"  # lme4's (equal to the observed one for logit)

    def variance(self, mu):
        return mu * (1.0 - mu)

    def dev_resids(self, y, mu, wt):
        mu = np.clip(mu, TINY, 1.0 - EPS / 2)
        return (
            2.0 * wt * (special.xlogy(y, y / mu) + special.xlogy(1.0 - y, (1.0 - y) / (1.0 - mu)))
        )

    def loglik_kernel(self, y, eta, wt):
        if self.link.name == "logit":  # y η − log(1 + e^η)
            return wt * (y * eta - softplus(eta))
        # y log μ + (1 − y) log(1 − μ), with 0·log 0 = 0 at the boundary
        lm, l1m = self.link.log_mu_pair(eta)
        with np.errstate(invalid="ignore"):  # 0 · (−∞) where the branch is unused
            a = np.where(y > 0, y * lm, 0.0)
            b = np.where(y < 1, (1.0 - y) * l1m, 0.0)
        return wt * (a + b)

    @property
    def pirls_newton(self) -> bool:
        # probit and cloglog: Newton's steps (scoring's converge linearly there)
        return self.link.name != "logit"

    def newton_weights(self, y, eta, wt):
        rows = LINK_ROWS.get(self.link.name)
        if rows is None:
            return super().newton_weights(y, eta, wt)
        lp, obs, W, _ = rows(eta, y, wt)  # one pass: no log-likelihood, no μ
        bad = ~(obs > 1e-12)
        if np.any(bad):
            obs = np.where(bad, W, obs)
        return obs, lp / obs

    def irls_terms(self, eta, wt):
        if self.link.name != "logit":
            return super().irls_terms(eta, wt)
        # one exponential: e = exp(−η), μ = 1/(1 + e), dμ/dη = e/(1 + e)² = (eμ)μ
        # (accurate in both tails); the weights divide by V(μ) = μ(1 − μ) exactly
        # as the generic formula does
        e = np.exp(-np.maximum(eta, -MAX_EXP))
        mu = 1.0 / (1.0 + e)
        d = np.maximum((e * mu) * mu, EPS)
        return mu, d, wt * d * d / np.maximum(mu * (1.0 - mu), TINY)

    def dmu(self, y, mu, wt):
        mu = np.clip(mu, TINY, 1.0 - EPS / 2)
        return wt * (y - mu) / (mu * (1.0 - mu)), -wt * (y / mu**2 + (1.0 - y) / (1.0 - mu) ** 2)

    def dmu3(self, y, mu, wt):
        mu = np.clip(mu, TINY, 1.0 - EPS / 2)
        return 2.0 * wt * (y / mu**3 - (1.0 - y) / (1.0 - mu) ** 3)

    def cumulant(self, eta):
        return softplus(eta)

    def simulate(self, mu, resp, rng):
        n = np.ones_like(mu) if resp.trials is None else resp.trials
        k = rng.binomial(n.astype(np.int64), np.clip(mu, 0.0, 1.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, k / n, 0.0)

    def saturated_loglik(self, resp):
        y = resp.y
        k = special.xlogy(y, y) + special.xlogy(1.0 - y, 1.0 - y)
        return float(np.sum(resp.weights * k + resp.const))

    def initial_mu(self, resp):
        return (resp.weights * resp.y + 0.5) / (resp.weights + 1.0)

    def response(self, value, weights, label):
        prior = np.ones(nrows(value)) if weights is None else np.asarray(weights, float)
        if isinstance(value, Categorical):
            vals = _binary_from_categorical(value, label)[:, None]
        else:
            vals = value.values
        if vals.shape[1] == 2:
            # both columns checked at once: a few ufunc calls on a small response
            if vals.min(initial=0.0) < 0:
                raise DataError(
                    f"the binomial response {label!r} has negative counts; "
                    "cbind() takes (successes, failures)"
                )
            if not is_integer(vals).all():
                raise DataError(
                    f"the binomial response {label!r} has non-integer counts; "
                    "cbind() takes whole numbers of successes and failures"
                )
            succ = np.round(vals[:, 0])
            return self._from_counts(succ, succ + np.round(vals[:, 1]), prior, label)
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
        if not is_integer(succ).all():
            if weights is None:
                raise DataError(
                    f"the binomial response {label!r} has values strictly between 0 and 1; "
                    "proportions need weights= the numbers of trials"
                )
            raise DataError(
                f"the binomial response {label!r} times weights= is not a whole number of "
                "successes; weights must be the numbers of trials"
            )
        if not is_integer(prior).all():
            raise DataError("binomial weights= must be whole numbers of trials")
        return self._from_counts(np.round(succ), np.round(prior), np.ones_like(prior), label)

    def _from_counts(self, succ, trials, prior, label) -> GlmResponse:
        y = _ratio(succ, trials)
        wt = prior * trials
        return GlmResponse(y, wt, self.data_constant(y, wt, trials), trials)

    def data_constant(self, y, weights, trials):
        """prior weight × log C(trials, successes)."""
        n = np.ones_like(y) if trials is None else trials
        return _ratio(weights, n) * log_choose(n, np.round(y * n))


def _ratio(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    """a / n, 0 where n is 0 (a binomial row without trials)."""
    return np.divide(a, n, out=np.zeros(np.shape(n)), where=n > 0)


class Poisson(Family):
    """Poisson counts; link log."""

    name = "poisson"
    links = ("log",)
    canonical_link = "log"
    hessian_default = "fisher"

    def variance(self, mu):
        return mu

    def dev_resids(self, y, mu, wt):
        mu = np.maximum(mu, TINY)
        return 2.0 * wt * (special.xlogy(y, y / mu) - (y - mu))

    def loglik_kernel(self, y, eta, wt):
        eta = np.minimum(eta, 700.0)
        return wt * (np.where(y > 0, y * eta, 0.0) - np.exp(eta))

    def dmu(self, y, mu, wt):
        mu = np.maximum(mu, TINY)
        return wt * (y / mu - 1.0), -wt * y / mu**2

    def dmu3(self, y, mu, wt):
        return 2.0 * wt * y / np.maximum(mu, TINY) ** 3

    def cumulant(self, eta):
        return np.exp(np.minimum(eta, 700.0))

    def simulate(self, mu, resp, rng):
        return rng.poisson(mu).astype(float)

    def saturated_loglik(self, resp):
        y = resp.y
        return float(np.sum(resp.weights * (special.xlogy(y, y) - y) + resp.const))

    def irls_terms(self, eta, wt):
        mu = np.exp(eta)  # μ = dμ/dη = V(μ): one exponential
        d = np.maximum(mu, EPS)
        return mu, d, wt * d * (d / np.maximum(mu, TINY))

    def initial_mu(self, resp):
        return resp.y + 0.1

    def response(self, value, weights, label):
        y = counts(value, "Poisson", label)
        wt = prior_weights(weights, y.size)
        return GlmResponse(y, wt, self.data_constant(y, wt, None), None)

    def data_constant(self, y, weights, trials):
        """−weight × log y!."""
        return -weights * special.gammaln(y + 1.0)


def counts(value, family: str, label: str) -> np.ndarray:
    """A count response (non-negative whole numbers), or DataError."""
    what = "counts (non-negative whole numbers)"
    y = numeric_column(value, family, label, what)
    bad = y < 0
    if bad.any():
        raise DataError(
            f"the {family} response {label!r} has {int(bad.sum())} negative value(s) "
            f"(e.g. {y[bad][0]:g}); it must be {what}"
        )
    bad = ~is_integer(y)
    if bad.any():
        raise DataError(
            f"the {family} response {label!r} has {int(bad.sum())} non-integer value(s) "
            f"(e.g. {y[bad][0]:g}); it must be {what}"
        )
    return np.round(y)


class NegativeBinomial(Family):
    """Negative binomial NB2 counts, variance μ + μ²/θ; links log (default),
    sqrt, identity; θ estimated unless given."""

    name = "negative_binomial"
    links = ("log", "sqrt", "identity")
    param_name = "theta"

    def variance(self, mu):
        return mu + mu * mu / self.value

    def dev_resids(self, y, mu, wt):
        th = self.value
        mu = np.maximum(mu, TINY)
        return 2.0 * wt * (special.xlogy(y, y / mu) - (y + th) * np.log((y + th) / (mu + th)))

    def _given_theta(self, fun, y: np.ndarray) -> np.ndarray:
        """fun(y + θ) − fun(θ) (log Γ or digamma): it depends on θ and the data
        only, so it is kept for the last (θ, y) rather than recomputed at every η."""
        cache = self.__dict__.setdefault("_cache", {})
        hit = cache.get(fun)
        if hit is None or hit[0] != self.value or hit[1] is not y:
            hit = (self.value, y, fun(y + self.value) - fun(self.value))
            cache[fun] = hit
        return hit[2]

    def with_value(self, value):
        out = super().with_value(value)
        out._cache = {}  # per θ: a copy must not share it
        return out

    def loglik_kernel(self, y, eta, wt):
        th = self.value
        lg = self._given_theta(special.gammaln, y)
        if self.link.name == "log":
            # a = η − log θ: log(μ/(μ + θ)) = a − log(1 + eᵃ), log(θ/(μ + θ)) = −log(1 + eᵃ)
            a = eta - np.log(th)
            return wt * (lg + y * a - (y + th) * softplus(a))
        mu = self.linkinv(eta)
        with np.errstate(divide="ignore", invalid="ignore"):
            lmu = self.link.log_mu(eta)
            lden = np.logaddexp(lmu, np.log(th))  # log(μ + θ)
            ll = lg + th * (np.log(th) - lden) + np.where(y > 0, y * (lmu - lden), 0.0)
        return wt * np.where(mu >= 0, ll, -np.inf)

    def dmu(self, y, mu, wt):
        th = self.value
        mu = np.maximum(mu, TINY)
        return wt * th * (y - mu) / (mu * (mu + th)), wt * (-y / mu**2 + (y + th) / (mu + th) ** 2)

    def eta_derivs(self, y, eta, wt, third=True):
        if self.link.name != "log":
            return super().eta_derivs(y, eta, wt, third)
        # log link, p = μ/(μ + θ): ℓ' = y − (y + θ)p, ℓ'' = −(y + θ)p(1 − p),
        # ℓ''' = −(y + θ)p(1 − p)(1 − 2p)
        th = self.value
        a = eta - np.log(th)
        sp = softplus(a)
        p = np.exp(a - sp)
        yt = wt * (y + th)
        c = yt * p * (1.0 - p)
        ll = wt * (self._given_theta(special.gammaln, y) + y * a) - yt * sp
        return ll, wt * y - yt * p, -c, (-c * (1.0 - 2.0 * p) if third else None)

    def dmu3(self, y, mu, wt):
        th = self.value
        mu = np.maximum(mu, TINY)
        return 2.0 * wt * (y / mu**3 - (y + th) / (mu + th) ** 3)

    def dparam(self, y, mu, wt):
        th = self.value
        mu = np.maximum(mu, TINY)
        s = mu + th
        with np.errstate(divide="ignore", invalid="ignore"):
            d0 = self._given_theta(special.digamma, y) + np.log(th / s) + 1.0 - (th + y) / s
        # ∂/∂ψ = θ ∂/∂θ
        return (
            wt * th * d0,
            wt * th * (y - mu) / s**2,
            wt * th * (mu - th - 2.0 * y) / s**3,
        )

    def saturated_loglik(self, resp):
        y, th = resp.y, self.value
        with np.errstate(divide="ignore", invalid="ignore"):
            k = (
                special.gammaln(y + th)
                - special.gammaln(th)
                + th * np.log(th / (y + th))
                + special.xlogy(y, y / (y + th))
            )
        return float(np.sum(resp.weights * k + resp.const))

    def initial_mu(self, resp):
        return resp.y + 0.1

    def start_sums(self, resp, mu):
        # moments: Var(y) = μ + μ²/θ, so θ ≈ Σwμ² / Σw((y − μ)² − μ)
        w = resp.weights
        return np.array([np.sum(w * mu**2), np.sum(w * ((resp.y - mu) ** 2 - mu))])

    def start_from(self, sums):
        if sums[1] <= 0:  # no overdispersion: start far out
            return 100.0
        return float(np.clip(sums[0] / sums[1], 1e-3, 1e4))

    @property
    def sigma(self) -> float:
        return float(self.value)

    def summary_line(self) -> str:
        return f"Dispersion parameter for negative binomial family (theta): {self.value:.3g}"

    def response(self, value, weights, label):
        y = counts(value, "negative binomial", label)
        wt = prior_weights(weights, y.size)
        return GlmResponse(y, wt, self.data_constant(y, wt, None), None)

    def data_constant(self, y, weights, trials):
        """−weight × log y!."""
        return -weights * special.gammaln(y + 1.0)

    def simulate(self, mu, resp, rng):
        th = self.value
        return rng.poisson(rng.gamma(th, mu / th)).astype(float)

    def describe(self) -> str:
        return f"Negative Binomial({self.value:.4g})"

    def runaway(self, mu):
        # the extra variance μ²/θ below 1e-4 of the Poisson variance μ everywhere
        if self.estimated and self.value > 1e4 * max(1.0, float(np.max(mu))):
            return (
                f"the negative binomial theta runs off to infinity ({self.value:.3g}): the "
                "counts show no overdispersion beyond the Poisson variance, and the likelihood "
                "rises towards the Poisson model's; fit family='poisson'"
            )
        return None


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
