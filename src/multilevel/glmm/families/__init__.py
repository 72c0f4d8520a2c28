"""GLMM response families behind one interface (:mod:`.base`): binomial,
Poisson and negative binomial counts (:mod:`.discrete`), Gamma, inverse
Gaussian and beta measurements (:mod:`.continuous`), with their links
(:mod:`.links`)."""

from __future__ import annotations

from multilevel.errors import ModelError
from multilevel.glmm.families.base import Family, GlmResponse
from multilevel.glmm.families.continuous import Beta, Gamma, InverseGaussian
from multilevel.glmm.families.discrete import Binomial, NegativeBinomial, Poisson, softplus
from multilevel.glmm.families.links import (
    CloglogLink,
    IdentityLink,
    InverseLink,
    InverseSquareLink,
    Link,
    LogitLink,
    LogLink,
    ProbitLink,
)

_FAMILIES: dict[str, type[Family]] = {
    "binomial": Binomial,
    "poisson": Poisson,
    "gamma": Gamma,
    "inverse.gaussian": InverseGaussian,
    "inverse_gaussian": InverseGaussian,
    "negative_binomial": NegativeBinomial,
    "negative.binomial": NegativeBinomial,
    "nbinom2": NegativeBinomial,
    "beta": Beta,
    "beta_family": Beta,
}
_NAMES = ("binomial", "poisson", "Gamma", "inverse.gaussian", "negative_binomial", "beta")


def get_family(family: str | Family, link: str | None = None) -> Family:
    """A :class:`Family` from a name (``"binomial"``, ``"Gamma"``,
    ``"binomial(probit)"``, ``"Gamma(link='log')"``, ``"negative_binomial(theta=2)"``)
    or an instance."""
    if isinstance(family, Family):
        if link is not None and link != family.link.name:
            return type(family)(link, family.value if not family.estimated else None)
        return family
    if not isinstance(family, str):
        raise ModelError(f"family must be a name or a Family, not {type(family).__name__}")
    text = family.strip().replace(" ", "")
    value = None
    if text.endswith(")") and "(" in text:
        text, args = text[:-1].split("(", 1)
        for arg in filter(None, args.split(",")):
            key, _, val = arg.rpartition("=")
            val = val.strip("\"'")
            if key in ("", "link"):
                link = val if link is None else link
            elif key == "theta":
                try:
                    value = float(val)
                except ValueError:
                    raise ModelError(f"theta must be a number in {family!r}") from None
            else:
                raise ModelError(f"unknown argument {key!r} in family {family!r}")
    cls = _FAMILIES.get(text.lower())
    if cls is None:
        raise ModelError(f"unknown family {family!r}; available: {', '.join(_NAMES)}")
    if value is not None and cls is not NegativeBinomial:
        raise ModelError(f"only the negative binomial family takes theta=, not {family!r}")
    return cls(link, value) if value is not None else cls(link)


def binomial(link: str = "logit") -> Binomial:
    return Binomial(link)


def poisson(link: str = "log") -> Poisson:
    return Poisson(link)


def gamma(link: str = "inverse") -> Gamma:
    """R's ``Gamma(link)``; the shape is estimated."""
    return Gamma(link)


def inverse_gaussian(link: str = "1/mu^2") -> InverseGaussian:
    """R's ``inverse.gaussian(link)``; the dispersion is estimated."""
    return InverseGaussian(link)


def negative_binomial(theta: float | None = None, link: str = "log") -> NegativeBinomial:
    """NB2, variance μ + μ²/θ: θ estimated (glmmTMB's ``nbinom2``) or fixed
    (MASS's ``negative.binomial(theta)``)."""
    return NegativeBinomial(link, theta)


def beta_family(link: str = "logit") -> Beta:
    """glmmTMB's ``beta_family(link)``; the precision φ is estimated."""
    return Beta(link)


__all__ = [
    "Beta",
    "Binomial",
    "CloglogLink",
    "Family",
    "Gamma",
    "GlmResponse",
    "IdentityLink",
    "InverseGaussian",
    "InverseLink",
    "InverseSquareLink",
    "Link",
    "LogLink",
    "LogitLink",
    "NegativeBinomial",
    "Poisson",
    "ProbitLink",
    "beta_family",
    "binomial",
    "gamma",
    "get_family",
    "inverse_gaussian",
    "negative_binomial",
    "poisson",
    "softplus",
]
