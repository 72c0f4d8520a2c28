"""Positive and (0, 1) measurements: Gamma, inverse Gaussian and beta families.

Each has a positive parameter estimated by maximum likelihood with the
variance parameters (``param_name``); prior weights multiply the log-density.

Gamma (links inverse, log, identity), shape ν, mean μ, variance μ²/ν:

    log f(y | μ) = ν log ν − ν log μ + (ν − 1) log y − ν y/μ − log Γ(ν);

``sigma`` is glmmTMB's 1/√ν (the coefficient of variation).

Inverse Gaussian (links 1/mu^2, inverse, log, identity), dispersion φ,
variance φμ³:

    log f(y | μ) = −½ log(2π φ y³) − (y − μ)² / (2 φ μ² y);

``sigma`` is √φ, as R's ``sigma()`` of a GLM.

Beta (links logit, probit, cloglog), precision φ, a = μφ, b = (1 − μ)φ,
variance μ(1 − μ)/(1 + φ) (glmmTMB's ``beta_family``):

    log f(y | μ) = log Γ(φ) − log Γ(a) − log Γ(b) + (a − 1) log y + (b − 1) log(1 − y);

``sigma`` is φ, as glmmTMB's.  Its score is not linear in y, so the scoring
step uses ℓ_η / W rather than (y − μ)/μ'.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from multilevel.errors import DataError
from multilevel.glmm.families.base import Family, GlmResponse, numeric_column, prior_weights
from multilevel.glmm.families.links import EPS, TINY


def _positive(value, family: str, label: str) -> np.ndarray:
    y = numeric_column(value, family, label, "positive numbers")
    bad = ~(y > 0)
    if bad.any():
        raise DataError(
            f"the {family} response {label!r} has {int(bad.sum())} value(s) that are not "
            f"positive (e.g. {y[bad][0]:g}); the {family} family needs y > 0 (drop or "
            "recode those rows, or choose a family that allows them)"
        )
    return y


def _moment_sums(resp: GlmResponse, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Σ w (y − μ)²/V(μ) and Σ w: their ratio is a moment estimate of a scale factor."""
    w = resp.weights
    return np.array([np.sum(w * (resp.y - mu) ** 2 / np.maximum(var, TINY)), np.sum(w)])


def _exact_fit(fam: Family, at_limit: bool, what: str, spread: str, limit: str = "infinity"):
    """The message for a parameter that ran off to the limit where the
    response is fitted without error (a spread below 1e-4 of the mean)."""
    if not (fam.estimated and at_limit):
        return None
    return (
        f"the {fam.name} {what} runs off to {limit} ({fam.value:.3g}): the response is fitted "
        f"(almost) without error (a {spread} below 1e-4), so the likelihood has no finite "
        "maximum; check that the response is not a function of the predictors"
    )


class Gamma(Family):
    """Gamma measurements; links inverse (canonical), log, identity."""

    name = "Gamma"
    links = ("inverse", "log", "identity")
    canonical_link = "inverse"
    param_name = "shape"

    def variance(self, mu):
        return mu * mu

    def info_mu(self, mu):
        return self.value / np.maximum(mu * mu, TINY)

    def dev_resids(self, y, mu, wt):
        mu = np.maximum(mu, TINY)
        return -2.0 * wt * (np.log(y / mu) - (y - mu) / mu)

    def loglik_kernel(self, y, eta, wt):
        nu = self.value
        mu = self.linkinv(eta)
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = (
                nu * np.log(nu)
                - nu * np.log(mu)
                + (nu - 1.0) * np.log(y)
                - nu * y / mu
                - special.gammaln(nu)
            )
        return wt * np.where(mu > 0, ll, -np.inf)

    def dmu(self, y, mu, wt):
        nu = self.value
        mu = np.maximum(mu, TINY)
        a = wt * nu / (mu * mu)
        return a * (y - mu), a * (mu - 2.0 * y) / mu

    def eta_derivs(self, y, eta, wt, third=True):
        if self.link.name != "log":
            return super().eta_derivs(y, eta, wt, third)
        # log link, r = y/μ: ℓ = ν(log ν − η + log y − r) − log y − log Γ(ν),
        # ℓ' = ν(r − 1), ℓ'' = −νr, ℓ''' = νr
        nu = self.value
        r = y * np.exp(-eta)
        wnr = wt * nu * r
        logy = self.of_data(y, np.log)
        ll = wt * ((nu - 1.0) * logy + nu * (math.log(nu) - eta - r) - math.lgamma(nu))
        return ll, wt * nu * (r - 1.0), -wnr, (wnr if third else None)

    def param_eta_derivs(self, y, eta, wt):
        if self.link.name != "log":
            return super().param_eta_derivs(y, eta, wt)
        # ℓ' and ℓ'' are linear in ν: their ∂/∂ψ = ν ∂/∂ν are themselves
        nu = self.value
        r = y * np.exp(-eta)
        logy = self.of_data(y, np.log)
        p0 = wt * nu * (math.log(nu) + 1.0 - eta + logy - r - special.digamma(nu))
        return p0, wt * nu * (r - 1.0), -wt * nu * r

    def dmu3(self, y, mu, wt):
        mu = np.maximum(mu, TINY)
        return wt * self.value * (6.0 * y - 2.0 * mu) / mu**4

    def dparam(self, y, mu, wt):
        nu = self.value
        mu = np.maximum(mu, TINY)
        l1, l2 = self.dmu(y, mu, wt)  # linear in ν: ∂/∂ψ = ν ∂/∂ν = themselves
        d0 = nu * (np.log(nu) + 1.0 - np.log(mu) + np.log(y) - y / mu - special.digamma(nu))
        return wt * d0, l1, l2

    def saturated_loglik(self, resp):
        return float(np.sum(self.loglik_kernel(resp.y, self.linkfun(resp.y), resp.weights)))

    def initial_mu(self, resp):
        return resp.y.copy()

    def start_sums(self, resp, mu):
        return _moment_sums(resp, mu, mu * mu)

    def start_from(self, sums):
        return float(np.clip(1.0 / max(float(sums[0] / sums[1]), 1e-8), 1e-3, 1e6))

    @property
    def sigma(self) -> float:
        return float(1.0 / np.sqrt(self.value))

    @property
    def dispersion(self) -> float:
        return float(1.0 / self.value)

    def summary_line(self) -> str:
        return f"Dispersion estimate for Gamma family (sigma^2): {1.0 / self.value:.3g}"

    def runaway(self, mu):
        return _exact_fit(self, self.value > 1e8, "shape", "coefficient of variation")

    def response(self, value, weights, label):
        y = _positive(value, "Gamma", label)
        return GlmResponse(y, prior_weights(weights, y.size), np.zeros_like(y), None)

    def simulate(self, mu, resp, rng):
        return rng.gamma(self.value, mu / self.value)


class InverseGaussian(Family):
    """Inverse Gaussian measurements; links 1/mu^2 (canonical), inverse, log, identity."""

    name = "inverse.gaussian"
    links = ("1/mu^2", "inverse", "log", "identity")
    canonical_link = "1/mu^2"
    param_name = "dispersion"

    def variance(self, mu):
        return mu**3

    def info_mu(self, mu):
        return 1.0 / (self.value * np.maximum(mu**3, TINY))

    def dev_resids(self, y, mu, wt):
        return wt * (y - mu) ** 2 / (y * mu * mu)

    def loglik_kernel(self, y, eta, wt):
        phi = self.value
        mu = self.linkinv(eta)
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = -0.5 * np.log(2.0 * np.pi * phi * y**3) - (y - mu) ** 2 / (2.0 * phi * mu * mu * y)
        return wt * np.where(mu > 0, ll, -np.inf)

    def dmu(self, y, mu, wt):
        phi = self.value
        mu = np.maximum(mu, TINY)
        return wt * (y - mu) / (phi * mu**3), wt * (2.0 * mu - 3.0 * y) / (phi * mu**4)

    def dmu3(self, y, mu, wt):
        mu = np.maximum(mu, TINY)
        return wt * (12.0 * y - 6.0 * mu) / (self.value * mu**5)

    def dparam(self, y, mu, wt):
        phi = self.value
        mu = np.maximum(mu, TINY)
        l1, l2 = self.dmu(y, mu, wt)  # ∝ 1/φ: ∂/∂ψ = −themselves
        return wt * (-0.5 + (y - mu) ** 2 / (2.0 * phi * mu * mu * y)), -l1, -l2

    def saturated_loglik(self, resp):
        y = resp.y
        return float(np.sum(resp.weights * -0.5 * np.log(2.0 * np.pi * self.value * y**3)))

    def initial_mu(self, resp):
        return resp.y.copy()

    def start_sums(self, resp, mu):
        return _moment_sums(resp, mu, mu**3)

    def start_from(self, sums):
        return float(np.clip(float(sums[0] / sums[1]), 1e-10, 1e10))

    @property
    def sigma(self) -> float:
        return float(np.sqrt(self.value))

    @property
    def dispersion(self) -> float:
        return float(self.value)

    def summary_line(self) -> str:
        return f"Dispersion estimate for inverse Gaussian family (phi): {self.value:.3g}"

    def runaway(self, mu):
        small = self.value * float(np.max(mu)) < 1e-8  # coefficient of variation √(φμ)
        return _exact_fit(self, small, "dispersion", "coefficient of variation", "0")

    def response(self, value, weights, label):
        y = _positive(value, "inverse Gaussian", label)
        return GlmResponse(y, prior_weights(weights, y.size), np.zeros_like(y), None)

    def simulate(self, mu, resp, rng):
        return rng.wald(mu, 1.0 / self.value)


class Beta(Family):
    """Proportions strictly inside (0, 1); links logit (default), probit, cloglog."""

    name = "beta"
    links = ("logit", "probit", "cloglog")
    param_name = "phi"

    def _ab(self, mu):
        mu = np.clip(mu, TINY, 1.0 - EPS / 2)
        return mu, mu * self.value, (1.0 - mu) * self.value

    def variance(self, mu):
        return mu * (1.0 - mu) / (1.0 + self.value)

    def info_mu(self, mu):
        _, a, b = self._ab(mu)
        return self.value**2 * (special.polygamma(1, a) + special.polygamma(1, b))

    def dev_resids(self, y, mu, wt):
        sat = self._ll(y, y)
        return 2.0 * wt * np.maximum(sat - self._ll(y, mu), 0.0)

    def _ll(self, y, mu):
        mu, a, b = self._ab(mu)
        return (
            special.gammaln(self.value)
            - special.gammaln(a)
            - special.gammaln(b)
            + (a - 1.0) * np.log(y)
            + (b - 1.0) * np.log1p(-y)
        )

    def loglik_kernel(self, y, eta, wt):
        return wt * self._ll(y, self.linkinv(eta))

    def dmu(self, y, mu, wt):
        _, a, b = self._ab(mu)
        phi = self.value
        l1 = phi * (np.log(y) - np.log1p(-y) - special.digamma(a) + special.digamma(b))
        l2 = -(phi**2) * (special.polygamma(1, a) + special.polygamma(1, b))
        return wt * l1, wt * l2

    def dmu3(self, y, mu, wt):
        _, a, b = self._ab(mu)
        return -wt * self.value**3 * (special.polygamma(2, a) - special.polygamma(2, b))

    def dparam(self, y, mu, wt):
        mu, a, b = self._ab(mu)
        phi = self.value
        ystar = np.log(y) - np.log1p(-y)
        dg_a, dg_b = special.digamma(a), special.digamma(b)
        tg_a, tg_b = special.polygamma(1, a), special.polygamma(1, b)
        d0 = (
            special.digamma(phi)
            - mu * dg_a
            - (1.0 - mu) * dg_b
            + mu * np.log(y)
            + (1.0 - mu) * np.log1p(-y)
        )
        d1 = ystar - dg_a + dg_b + phi * (-mu * tg_a + (1.0 - mu) * tg_b)
        d2 = -2.0 * phi * (tg_a + tg_b) - phi**2 * (
            mu * special.polygamma(2, a) + (1.0 - mu) * special.polygamma(2, b)
        )
        # ∂/∂ψ = φ ∂/∂φ
        return wt * phi * d0, wt * phi * d1, wt * phi * d2

    def score_weights(self, y, eta, wt):
        mu = self.linkinv(eta)
        d = self.mu_eta(eta)
        l1, l2 = self.dmu(y, mu, wt)
        w = -l2 * d * d  # ℓ_μμ does not involve y: the Fisher information
        return w, l1 * d / np.maximum(w, TINY)

    def saturated_loglik(self, resp):
        return float(np.sum(resp.weights * self._ll(resp.y, resp.y)))

    def initial_mu(self, resp):
        return resp.y.copy()

    def start_sums(self, resp, mu):
        return _moment_sums(resp, mu, mu * (1.0 - mu))

    def start_from(self, sums):
        disp = float(sums[0] / sums[1])  # ≈ 1/(1 + φ)
        return float(np.clip(1.0 / max(disp, 1e-8) - 1.0, 0.1, 1e6))

    @property
    def sigma(self) -> float:
        return float(self.value)

    def summary_line(self) -> str:
        return f"Dispersion parameter for beta family (phi): {self.value:.3g}"

    def runaway(self, mu):
        return _exact_fit(self, self.value > 1e8, "precision phi", "standard deviation")

    def response(self, value, weights, label):
        y = numeric_column(value, "beta", label, "proportions strictly between 0 and 1")
        bad = ~((y > 0) & (y < 1))
        if bad.any():
            n = y.size
            raise DataError(
                f"the beta response {label!r} has {int(bad.sum())} value(s) outside the open "
                f"interval (0, 1) (e.g. {y[bad][0]:g}); the beta family needs 0 < y < 1. The "
                f"usual transformation is (y * (n - 1) + 0.5) / n with n = {n} rows "
                "(Smithson and Verkuilen, 2006)"
            )
        return GlmResponse(y, prior_weights(weights, y.size), np.zeros_like(y), None)

    def simulate(self, mu, resp, rng):
        _, a, b = self._ab(mu)
        return rng.beta(a, b)
