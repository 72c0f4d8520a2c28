"""Link functions g: μ ↦ η of the GLMM families, with the inverse, its first
two derivatives dμ/dη and d²μ/dη² (the second enters the observed
information −∂²ℓ/∂η² of a non-canonical link), and log μ, log(1 − μ) computed
from η directly so that extreme linear predictors never give log(0)."""

from __future__ import annotations

import numpy as np
from scipy import special

from multilevel.errors import ModelError

EPS = np.finfo(float).eps
TINY = np.finfo(float).tiny
MAX_EXP = 700.0  # exp(700) is finite


class Link:
    """A link function g: μ ↦ η with inverse and derivatives of the inverse."""

    name: str = ""
    # η is a log, log-odds or quantile (no units) rather than μ, 1/μ, 1/μ² or √μ
    unit_free: bool = False

    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """dμ/dη, bounded below by machine epsilon as R's families do."""
        raise NotImplementedError

    def mu_eta2(self, eta: np.ndarray) -> np.ndarray:
        """d²μ/dη²."""
        raise NotImplementedError

    def mu_eta3(self, eta: np.ndarray) -> np.ndarray:
        """d³μ/dη³."""
        raise NotImplementedError

    def log_mu(self, eta: np.ndarray) -> np.ndarray:
        return np.log(self.linkinv(eta))

    def log1m_mu(self, eta: np.ndarray) -> np.ndarray:
        return np.log1p(-self.linkinv(eta))

    def log_mu_pair(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log μ and log(1 − μ) together (a link may share their work)."""
        return self.log_mu(eta), self.log1m_mu(eta)

    def __repr__(self) -> str:
        return f"<link {self.name}>"


class LogitLink(Link):
    """η = log(μ / (1 − μ)); the canonical binomial link."""

    name = "logit"
    unit_free = True

    def linkfun(self, mu):
        return special.logit(mu)

    def linkinv(self, eta):
        return special.expit(eta)

    def mu_eta(self, eta):
        return np.maximum(special.expit(eta) * special.expit(-eta), EPS)

    def mu_eta2(self, eta):
        mu = special.expit(eta)
        return mu * (1.0 - mu) * (1.0 - 2.0 * mu)

    def mu_eta3(self, eta):
        v = special.expit(eta) * special.expit(-eta)
        return v * (1.0 - 6.0 * v)

    def log_mu(self, eta):
        return special.log_expit(eta)

    def log1m_mu(self, eta):
        return special.log_expit(-eta)


class ProbitLink(Link):
    """η = Φ⁻¹(μ)."""

    name = "probit"
    unit_free = True

    def linkfun(self, mu):
        return special.ndtri(mu)

    def linkinv(self, eta):
        return special.ndtr(eta)

    def mu_eta(self, eta):
        return np.maximum(np.exp(-0.5 * np.square(eta)) / np.sqrt(2 * np.pi), EPS)

    def mu_eta2(self, eta):
        return -eta * np.exp(-0.5 * np.square(eta)) / np.sqrt(2 * np.pi)

    def mu_eta3(self, eta):
        return (np.square(eta) - 1.0) * np.exp(-0.5 * np.square(eta)) / np.sqrt(2 * np.pi)

    def log_mu(self, eta):
        return special.log_ndtr(eta)

    def log1m_mu(self, eta):
        return special.log_ndtr(-eta)

    def log_mu_pair(self, eta):
        return log_ndtr_pair(eta)


def log_ndtr_pair(eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log Φ(η) and log Φ(−η) with one log Φ: of the smaller tail, Φ(−|η|) ≤ ½,
    and the larger one's as log1p(−Φ(−|η|)), accurate since Φ(−|η|) ≤ ½."""
    small = special.log_ndtr(-np.abs(eta))
    big = np.log1p(-np.exp(small))
    pos = eta > 0
    return np.where(pos, big, small), np.where(pos, small, big)


class CloglogLink(Link):
    """η = log(−log(1 − μ))."""

    name = "cloglog"
    unit_free = True

    def linkfun(self, mu):
        return np.log(-np.log1p(-mu))

    def linkinv(self, eta):
        return -np.expm1(-np.exp(np.minimum(eta, MAX_EXP)))

    def mu_eta(self, eta):
        eta = np.minimum(eta, MAX_EXP)
        return np.maximum(np.exp(eta - np.exp(eta)), EPS)

    def mu_eta2(self, eta):
        eta = np.minimum(eta, MAX_EXP)
        e = np.exp(eta)
        return np.exp(eta - e) * (1.0 - e)

    def mu_eta3(self, eta):
        eta = np.minimum(eta, MAX_EXP)
        e = np.exp(eta)
        return np.exp(eta - e) * (np.square(1.0 - e) - e)

    def log_mu(self, eta):
        with np.errstate(divide="ignore"):
            return np.log(-np.expm1(-np.exp(np.minimum(eta, MAX_EXP))))

    def log1m_mu(self, eta):
        return -np.exp(np.minimum(eta, MAX_EXP))


class LogLink(Link):
    """η = log μ; the canonical Poisson link."""

    name = "log"
    unit_free = True

    def linkfun(self, mu):
        return np.log(mu)

    def linkinv(self, eta):
        return np.exp(np.minimum(eta, MAX_EXP))

    def mu_eta(self, eta):
        return np.maximum(np.exp(np.minimum(eta, MAX_EXP)), EPS)

    def mu_eta2(self, eta):
        return np.exp(np.minimum(eta, MAX_EXP))

    def mu_eta3(self, eta):
        return np.exp(np.minimum(eta, MAX_EXP))

    def log_mu(self, eta):
        return np.asarray(eta, dtype=float)


class IdentityLink(Link):
    """η = μ."""

    name = "identity"

    def linkfun(self, mu):
        return np.asarray(mu, dtype=float)

    def linkinv(self, eta):
        return np.asarray(eta, dtype=float)

    def mu_eta(self, eta):
        return np.ones_like(np.asarray(eta, dtype=float))

    def mu_eta2(self, eta):
        return np.zeros_like(np.asarray(eta, dtype=float))

    def mu_eta3(self, eta):
        return np.zeros_like(np.asarray(eta, dtype=float))


class InverseLink(Link):
    """η = 1/μ; the canonical Gamma link."""

    name = "inverse"

    def linkfun(self, mu):
        return 1.0 / np.asarray(mu, dtype=float)

    def linkinv(self, eta):
        return 1.0 / np.asarray(eta, dtype=float)

    def mu_eta(self, eta):
        return -1.0 / np.square(eta)

    def mu_eta2(self, eta):
        return 2.0 / np.power(eta, 3)

    def mu_eta3(self, eta):
        return -6.0 / np.power(eta, 4)


class InverseSquareLink(Link):
    """η = 1/μ²; the canonical inverse Gaussian link."""

    name = "1/mu^2"

    def linkfun(self, mu):
        return 1.0 / np.square(mu)

    def linkinv(self, eta):
        return 1.0 / np.sqrt(eta)

    def mu_eta(self, eta):
        return -0.5 * np.power(eta, -1.5)

    def mu_eta2(self, eta):
        return 0.75 * np.power(eta, -2.5)

    def mu_eta3(self, eta):
        return -1.875 * np.power(eta, -3.5)


class SqrtLink(Link):
    """η = √μ."""

    name = "sqrt"

    def linkfun(self, mu):
        return np.sqrt(mu)

    def linkinv(self, eta):
        return np.square(eta)

    def mu_eta(self, eta):
        return np.maximum(2.0 * np.asarray(eta, dtype=float), EPS)

    def mu_eta2(self, eta):
        return np.full_like(np.asarray(eta, dtype=float), 2.0)

    def mu_eta3(self, eta):
        return np.zeros_like(np.asarray(eta, dtype=float))


LINKS: dict[str, type[Link]] = {
    cls.name: cls
    for cls in (
        LogitLink,
        ProbitLink,
        CloglogLink,
        LogLink,
        IdentityLink,
        InverseLink,
        InverseSquareLink,
        SqrtLink,
    )
}


def make_link(name: str, allowed: tuple[str, ...], family: str) -> Link:
    """The link called ``name`` if the family allows it; ModelError otherwise."""
    if name not in allowed:
        raise ModelError(
            f"link {name!r} is not available for the {family} family; "
            f"choose one of {', '.join(allowed)}"
        )
    return LINKS[name]()
