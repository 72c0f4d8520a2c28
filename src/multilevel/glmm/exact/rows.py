"""The per-row pieces of the conditional log-density that the exact-gradient
routes sum over groups, written once for every family.

At linear predictors η (one per row, or one per row and quadrature node):
ℓ (the log-density without the data-only constants), ℓ' = ∂ℓ/∂η, the
curvature w = −ℓ'' and its derivative w' = −ℓ''' (the observed ones; for a
canonical link they are Fisher's too), and ∂/∂ψ of ℓ, ℓ' and ℓ'' for a family
with an estimated parameter (ψ its logarithm).  Binomial-logit and
Poisson-log use their cumulant b(η) (ℓ = wt(yη − b), ℓ' = wt(y − μ),
w = wt b'', w' = wt b''') with one exponential per row; every other family
the derivatives of :class:`multilevel.glmm.families.Family`.
"""

from __future__ import annotations

import numpy as np

from multilevel.glmm.families import Binomial, Family, GlmResponse, Poisson
from multilevel.glmm.families.discrete import LINK_ROWS


def canonical_plain(family: Family) -> bool:
    """Binomial-logit or Poisson-log (plain classes): the cumulant form (and the
    compiled kernels)."""
    return type(family) in (Binomial, Poisson) and family.canonical


def has_derivatives(family: Family) -> bool:
    """Whether the family provides ℓ''' (and ∂/∂ψ where it has a parameter)."""
    cls = type(family)
    return cls.dmu3 is not Family.dmu3 and (not family.nfree or cls.dparam is not Family.dparam)


def binomial_link_rows(family: Family) -> bool:
    """The plain binomial with a probit or cloglog link: the per-row
    formulas of :data:`LINK_ROWS` (and the compiled kernels' link rows)."""
    return type(family) is Binomial and family.link.name in LINK_ROWS


def fisher_curvature(family: Family, hessian: str) -> bool:
    """lme4's curvature (Fisher weights) with a probit or cloglog link: the
    log-determinant's weights differ from the modes' (observed) curvature."""
    return hessian != "observed" and not family.canonical and binomial_link_rows(family)


class RowTerms:
    """ℓ, ℓ', w, w' (and the ψ-derivatives) per row for a family and response;
    ``family`` is replaced by the search as ψ moves."""

    def __init__(self, family: Family, resp: GlmResponse):
        self.family = family
        self.generic = not canonical_plain(family)
        self.logit = isinstance(family, Binomial)
        self.y, self.wt = resp.y, resp.weights
        self.wy = resp.weights * resp.y

    def _data(self, eta: np.ndarray, rows: slice):
        if eta.ndim == 2:  # (rows, nodes)
            return self.y[rows, None], self.wt[rows, None], self.wy[rows, None]
        return self.y[rows], self.wt[rows], self.wy[rows]

    def cumulant(self, eta: np.ndarray, derivs: int):
        """b(η) and, if ``derivs``, μ, b'', b''' (binomial-logit, Poisson-log)."""
        if self.logit:
            e = np.exp(-np.abs(eta))
            b = np.maximum(eta, 0.0) + np.log1p(e)
            if derivs == 0:
                return b, None, None, None
            r = 1.0 / (1.0 + e)
            mu = np.where(eta >= 0, r, e * r)
            v = e * r * r  # μ(1 − μ) without cancellation
            return b, mu, v, v * (1.0 - 2.0 * mu)
        mu = np.exp(np.minimum(eta, 700.0))
        return mu, mu, mu, mu

    def at(self, eta: np.ndarray, order: int, rows: slice = slice(None)):
        """(ℓ, ℓ', w, w') at η for ``rows``: order 0 gives ℓ only, 1 adds ℓ'
        and w, 2 adds w' (the others None)."""
        y, wt, wy = self._data(eta, rows)
        if self.generic:
            if order == 0:
                return self.family.loglik_kernel(y, eta, wt), None, None, None
            ll, l1, l2, l3 = self.family.eta_derivs(y, eta, wt, order > 1)
            return ll, l1, -l2, (-l3 if order > 1 else None)
        b, mu, v, v3 = self.cumulant(eta, order)
        ll = wy * eta - wt * b
        if order == 0:
            return ll, None, None, None
        return ll, wt * (y - mu), wt * v, (wt * v3 if order > 1 else None)

    def param(self, eta: np.ndarray, rows: slice = slice(None)):
        """∂/∂ψ of ℓ, ℓ' and w at η, with a trailing axis over the family's
        free parameters (one for a scalar parameter)."""
        y, wt, _ = self._data(eta, rows)
        p0, p1, p2 = self.family.param_eta_derivs(y, eta, wt)
        if p0.ndim == eta.ndim:  # one parameter
            return p0[..., None], p1[..., None], -p2[..., None]
        return p0, p1, -p2

    def fisher(self, eta: np.ndarray) -> np.ndarray:
        """The Fisher weights (a scoring step where the observed curvature fails)."""
        return self.family.irls_terms(eta, self.wt)[2]
