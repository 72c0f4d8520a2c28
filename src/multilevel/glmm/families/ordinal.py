"""The cumulative link family of ordinal responses (``ordinal::clm``'s model).

A response with K ordered categories 0 < 1 < ... < K−1 and thresholds
α₁ < ... < α_{K−1}:

    P(Y ≤ j | η) = F(α_{j+1} − η),   P(Y = j) = F(α_{j+1} − η) − F(α_j − η)

(α₀ = −∞, α_K = +∞), with F the distribution function of the latent
variable: logistic (logit), normal (probit), minimum extreme value
(cloglog, F(x) = 1 − exp(−eˣ)), maximum extreme value (loglog,
F(x) = exp(−e⁻ˣ)) or Cauchy (cauchit).  The sign of η is ordinal's: a
positive effect moves the response up the scale.

The engine sees η = Xβ + Zb *with* an intercept column, and the family
carries the thresholds relative to it, a = α + β₀: the intercept absorbs
their location, so the fixed effects keep the centred basis of every other
GLMM.  The threshold structure is linear, α = Jγ (ordinal's ``tJac``):
``flexible`` J = I; ``equidistant`` αⱼ = γ₁ + (j − 1)γ₂; ``symmetric``
thresholds placed symmetrically about one central threshold (an odd number)
or two (an even number).  Writing the shift of every threshold by one as
J v = 1 (v₁ = 1), the family's free parameters ψ fix γ₁ = 0:

* flexible: a₁ = 0 and aⱼ = aⱼ₋₁ + exp(ψⱼ₋₁) — ordered by construction;
* otherwise a = J[:, 2:] ψ (a trial point that puts thresholds out of order
  has probability ≤ 0 in some row and is refused by the search).

Then γ = P a(ψ) − β₀ v with P = J⁺, which is how the estimates and their
covariance are reported.

Per row with u = a_y − η (upper), l = a_{y−1} − η (lower), π = F(u) − F(l):
ℓ = log π, and with gₖ = F⁽ᵏ⁾(u) − F⁽ᵏ⁾(l), dπ/dη = −g₁, d²π/dη² = g₂,
d³π/dη³ = −g₃, so ℓ_η = −g₁/π, ℓ_ηη = g₂/π − ℓ_η², ℓ_ηηη = −g₃/π − 3ℓ_η ℓ_ηη − ℓ_η³.
A threshold moves u (or l) by one: ∂π/∂a_y = F'(u), ∂gₖ/∂a_y = F⁽ᵏ⁺¹⁾(u).
"""

from __future__ import annotations

import copy
import math

import numpy as np
from scipy import special

from multilevel.errors import DataError, ModelError
from multilevel.formula.design import Categorical
from multilevel.glmm.families.base import Family, GlmResponse
from multilevel.glmm.families.links import IdentityLink

# --------------------------------------------------------------------------- latent CDFs


class LatentCDF(IdentityLink):
    """The distribution F of the latent variable.  As a GLM link it is the
    identity (the family's "mean" is η itself); η has no units."""

    unit_free = True

    def cdf(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sf(self, x: np.ndarray) -> np.ndarray:
        """1 − F(x) without cancellation."""
        raise NotImplementedError

    def quantile(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def densities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """F′, F″ and F‴ at finite x."""
        raise NotImplementedError

    def random(self, rng: np.random.Generator, size) -> np.ndarray:
        return self.quantile(rng.uniform(size=size))


class LogisticCDF(LatentCDF):
    name = "logit"

    def cdf(self, x):
        return special.expit(x)

    def sf(self, x):
        return special.expit(-x)

    def quantile(self, p):
        return special.logit(p)

    def densities(self, x):
        F, S = special.expit(x), special.expit(-x)
        f = F * S
        d = S - F
        return f, f * d, f * (d * d - 2.0 * f)


class NormalCDF(LatentCDF):
    name = "probit"

    def cdf(self, x):
        return special.ndtr(x)

    def sf(self, x):
        return special.ndtr(-x)

    def quantile(self, p):
        return special.ndtri(p)

    def densities(self, x):
        f = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return f, -x * f, (x * x - 1.0) * f


class GumbelMinCDF(LatentCDF):
    """F(x) = 1 − exp(−eˣ) (ordinal's ``cloglog``)."""

    name = "cloglog"

    def cdf(self, x):
        return -np.expm1(-np.exp(np.minimum(x, 50.0)))

    def sf(self, x):
        return np.exp(-np.exp(np.minimum(x, 50.0)))

    def quantile(self, p):
        return np.log(-np.log1p(-p))

    def densities(self, x):
        e = np.exp(np.minimum(x, 50.0))  # F′ is 0 to double precision beyond
        f = np.exp(np.minimum(x, 50.0) - e)
        a = 1.0 - e
        return f, f * a, f * (a * a - e)


class GumbelMaxCDF(LatentCDF):
    """F(x) = exp(−e⁻ˣ) (ordinal's ``loglog``)."""

    name = "loglog"

    def cdf(self, x):
        return np.exp(-np.exp(-np.maximum(x, -50.0)))

    def sf(self, x):
        return -np.expm1(-np.exp(-np.maximum(x, -50.0)))

    def quantile(self, p):
        return -np.log(-np.log(p))

    def densities(self, x):
        xc = np.maximum(x, -50.0)
        e = np.exp(-xc)
        f = np.exp(-xc - e)
        a = e - 1.0
        return f, f * a, f * (a * a - e)


class CauchyCDF(LatentCDF):
    name = "cauchit"

    def cdf(self, x):
        return 0.5 + np.arctan(x) / math.pi

    def sf(self, x):
        return 0.5 - np.arctan(x) / math.pi

    def quantile(self, p):
        return np.tan(math.pi * (p - 0.5))

    def densities(self, x):
        r = 1.0 / (1.0 + x * x)
        f = r / math.pi
        return f, -2.0 * x * r * f, f * r * r * (6.0 * x * x - 2.0)


CDFS: dict[str, type[LatentCDF]] = {
    c.name: c for c in (LogisticCDF, NormalCDF, GumbelMinCDF, GumbelMaxCDF, CauchyCDF)
}
THRESHOLDS = ("flexible", "equidistant", "symmetric")


# --------------------------------------------------------------------------- structures


def threshold_structure(kind: str, ntheta: int) -> tuple[np.ndarray, list[str]]:
    """ordinal's J (α = Jγ, ntheta × nγ) and the names of γ."""
    if kind == "flexible":
        return np.eye(ntheta), []
    if kind == "equidistant":
        if ntheta < 2:
            raise ModelError("equidistant thresholds need at least 3 response categories")
        return np.column_stack([np.ones(ntheta), np.arange(ntheta)]), ["threshold.1", "spacing"]
    if ntheta < 3:
        raise ModelError("symmetric thresholds need at least 4 response categories")
    if ntheta % 2:  # one central threshold, distances to it on both sides
        m = ntheta // 2
        J = np.zeros((ntheta, m + 1))
        J[:, 0] = 1.0
        for k in range(1, m + 1):  # spacings, not rows
            J[m + k, k] = 1.0
            J[m - k, k] = -1.0
        return J, ["central"] + [f"spacing.{k}" for k in range(1, m + 1)]
    m = ntheta // 2  # two central thresholds (positions m−1, m, 0-based)
    J = np.zeros((ntheta, m + 1))
    J[:m, 0] = 1.0
    J[m:, 1] = 1.0
    for k in range(1, m):  # spacings, not rows
        J[m - 1 - k, k + 1] = -1.0
        J[m + k, k + 1] = 1.0
    return J, ["central.1", "central.2"] + [f"spacing.{k}" for k in range(1, m)]


# --------------------------------------------------------------------------- family


class Cumulative(Family):
    """Cumulative link model for an ordered response (module docstring).
    ``resp.y`` holds the category codes 0..K−1."""

    name = "cumulative"
    links = tuple(CDFS)
    canonical_link = None
    param_name = "thresholds"

    def __init__(self, link: str = "logit", threshold: str = "flexible", levels=None):
        if not isinstance(link, str) or link not in CDFS:
            raise ModelError(
                f"link must be one of {', '.join(CDFS)} for a cumulative link model, not {link!r}"
            )
        if threshold not in THRESHOLDS:
            raise ModelError(f"threshold must be one of {', '.join(THRESHOLDS)}, not {threshold!r}")
        self.link = CDFS[link]()
        self.threshold = threshold
        self.estimated = True
        self.value = None
        self.levels: list[str] = [] if levels is None else [str(v) for v in levels]
        self._free: np.ndarray | None = None
        if self.levels:
            self._setup()

    def _setup(self) -> None:
        K = len(self.levels)
        self.ncat = K
        self.J, names = threshold_structure(self.threshold, K - 1)
        self.alpha_names = [
            f"{a}|{b}" for a, b in zip(self.levels[:-1], self.levels[1:], strict=True)
        ]
        self.gamma_names = names or list(self.alpha_names)
        self.P = np.linalg.pinv(self.J)
        # the shift of every threshold: J v = 1
        self.v = np.linalg.lstsq(self.J, np.ones(K - 1), rcond=None)[0]

    def with_levels(self, levels) -> Cumulative:
        out = copy.copy(self)
        out.levels = [str(v) for v in levels]
        out._setup()
        return out

    # -- the free parameters ψ ↔ thresholds a relative to the intercept
    @property
    def nfree(self) -> int:
        return self.ncat - 2 if self.threshold == "flexible" else self.J.shape[1] - 1

    def free_values(self) -> np.ndarray:
        return np.array(self._free, dtype=float)

    def with_free(self, x: np.ndarray) -> Cumulative:
        out = copy.copy(self)
        out._free = np.array(x, dtype=float)
        out._a = None
        return out

    def a(self) -> np.ndarray:
        """Thresholds relative to the intercept, a = α + β₀."""
        cached = self.__dict__.get("_a")
        if cached is None:
            psi = self._free
            if self.threshold == "flexible":
                cached = np.concatenate([[0.0], np.cumsum(np.exp(psi))])
            else:
                cached = self.J[:, 1:] @ psi
            self._a = cached
        return cached

    def da(self) -> np.ndarray:
        """∂a/∂ψ (ntheta × nfree)."""
        if self.threshold == "flexible":
            e = np.exp(self._free)
            return np.tril(np.ones((self.ncat - 1, self.ncat - 2)), -1) * e[None, :]
        return self.J[:, 1:]

    def gamma(self, beta0: float) -> np.ndarray:
        """ordinal's threshold parameters γ at intercept β₀."""
        return self.P @ self.a() - beta0 * self.v

    def alpha(self, beta0: float) -> np.ndarray:
        """The thresholds α = a − β₀."""
        return self.a() - beta0

    def gamma_jacobian(self) -> np.ndarray:
        """∂γ/∂(ψ, β₀) (nγ × (nfree + 1))."""
        return np.column_stack([self.P @ self.da(), -self.v])

    def start_from_counts(self, counts: np.ndarray) -> None:
        """ψ from the marginal cumulative proportions (α = F⁻¹(P(Y ≤ j)))
        projected on the structure; sets the family's start in place."""
        p = np.cumsum(counts)[:-1] / counts.sum()
        alpha = self.link.quantile(np.clip(p, 1e-6, 1 - 1e-6))
        if self.threshold == "flexible":
            self._free = np.log(np.maximum(np.diff(alpha), 1e-3))
        else:
            g = np.linalg.lstsq(self.J, alpha, rcond=None)[0]
            self._free = (g - g[0] * self.v)[1:]
        self._a = None

    def param_start(self, resp: GlmResponse, mu: np.ndarray) -> float:
        if self._free is None:
            counts = np.bincount(resp.y.astype(np.int64), weights=resp.weights, minlength=self.ncat)
            self.start_from_counts(counts)
        return math.nan

    # -- per-row pieces
    def _bounds(self, y: np.ndarray, eta: np.ndarray):
        """u and l per row with masks of the finite ones."""
        yi = y.astype(np.int64)
        a_ext = np.concatenate([[0.0], self.a(), [0.0]])
        up = yi < self.ncat - 1
        lo = yi > 0
        u = np.where(up, a_ext[yi + 1] - eta, 0.0)
        lw = np.where(lo, a_ext[yi] - eta, 0.0)
        return yi, u, lw, up, lo

    def probability(self, y: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """P(Y = y | η), from the smaller tail to avoid cancellation."""
        _, u, lw, up, lo = self._bounds(y, eta)
        F, S = self.link.cdf, self.link.sf
        Fu = np.where(up, F(u), 1.0)
        Fl = np.where(lo, F(lw), 0.0)
        Su = np.where(up, S(u), 0.0)
        Sl = np.where(lo, S(lw), 1.0)
        right = lo & (lw > 0)
        return np.where(right, Sl - Su, Fu - Fl)

    def loglik_kernel(self, y, eta, wt):
        with np.errstate(divide="ignore", invalid="ignore"):
            pi = self.probability(y, eta)
            return wt * np.where(pi > 0, np.log(np.where(pi > 0, pi, 1.0)), -np.inf)

    def _terms(self, y, eta):
        yi, u, lw, up, lo = self._bounds(y, eta)
        du = [np.where(up, d, 0.0) for d in self.link.densities(u)]
        dl = [np.where(lo, d, 0.0) for d in self.link.densities(lw)]
        return yi, du, dl

    def eta_derivs(self, y, eta, wt, third: bool = True):
        with np.errstate(divide="ignore", invalid="ignore"):
            pi = self.probability(y, eta)
            _, du, dl = self._terms(y, eta)
            g1, g2, g3 = (a - b for a, b in zip(du, dl, strict=True))
            ll = np.where(pi > 0, np.log(np.where(pi > 0, pi, 1.0)), -np.inf)
            l1 = -g1 / pi
            l2 = g2 / pi - l1 * l1
            l3 = (-g3 / pi - 3.0 * l1 * l2 - l1**3) if third else None
        return wt * ll, wt * l1, wt * l2, (None if l3 is None else wt * l3)

    def param_eta_derivs(self, y, eta, wt):
        """∂/∂ψ of ℓ, ℓ_η, ℓ_ηη: (…, nfree) arrays."""
        with np.errstate(divide="ignore", invalid="ignore"):
            pi = self.probability(y, eta)
            yi, (fu, fu1, fu2), (fl, fl1, fl2) = self._terms(y, eta)
            g1 = fu1 - fl1
            g0 = fu - fl
            l1 = -g0 / pi

            def pieces(d0, d1, d2):
                # the derivatives of ℓ, ℓ_η, ℓ_ηη when one bound moves by one
                p0 = d0 / pi
                p1 = -d1 / pi - l1 * p0
                p2 = d2 / pi - g1 * p0 / pi - 2.0 * l1 * p1
                return p0, p1, p2

            up = pieces(fu, fu1, fu2)
            lo = pieces(-fl, -fl1, -fl2)
        D = self.da()
        zero = np.zeros((1, D.shape[1]))
        Ju = np.concatenate([D, zero])[yi]  # the upper bound's row of ∂a/∂ψ
        Jl = np.concatenate([zero, D])[yi]
        wtx = np.asarray(wt)[..., None]
        return tuple(
            wtx * (pu[..., None] * Ju + pl[..., None] * Jl) for pu, pl in zip(up, lo, strict=True)
        )

    def category_probs(self, eta: np.ndarray) -> np.ndarray:
        """P(Y = j | η) for every category j (n × K)."""
        a = self.a()
        Fc = self.link.cdf(a[None, :] - np.asarray(eta)[:, None])
        Fc = np.column_stack([np.zeros(Fc.shape[0]), Fc, np.ones(Fc.shape[0])])
        return np.diff(Fc, axis=1)

    def irls_terms(self, eta, wt):
        """Expected information about η: Σⱼ (F′(aⱼ − η) − F′(aⱼ₋₁ − η))² / πⱼ."""
        eta = np.asarray(eta, dtype=float)
        flat = eta.reshape(-1)
        a = self.a()
        f = self.link.densities(a[None, :] - flat[:, None])[0]
        zero = np.zeros((flat.size, 1))
        g = np.diff(np.hstack([zero, f, zero]), axis=1)
        pi = self.category_probs(flat)
        info = np.sum(np.where(pi > 0, g * g / np.where(pi > 0, pi, 1.0), 0.0), axis=1)
        info = info.reshape(eta.shape)
        return eta, np.ones_like(eta), wt * np.maximum(info, 1e-12)

    def score_weights(self, y, eta, wt):
        w = self.irls_terms(eta, wt)[2]
        return w, self.eta_derivs(y, eta, wt, third=False)[1] / w

    pirls_newton = True  # Newton's PIRLS steps (log-concave F)

    def observed_weights(self, y, eta, wt):
        return -self.eta_derivs(y, eta, wt, third=False)[2]

    def dmu(self, y, mu, wt):
        _, l1, l2, _ = self.eta_derivs(y, mu, wt, third=False)
        return l1, l2

    def dmu3(self, y, mu, wt):
        return self.eta_derivs(y, mu, wt)[3]

    def dparam(self, y, mu, wt):
        return self.param_eta_derivs(y, mu, wt)

    def initial_mu(self, resp: GlmResponse) -> np.ndarray:
        return np.zeros_like(resp.y, dtype=float)

    def variance(self, mu):
        return np.ones_like(mu)

    def saturated_loglik(self, resp: GlmResponse) -> float:
        return 0.0

    def response(self, value, weights, label: str) -> GlmResponse:
        if not isinstance(value, Categorical):
            raise DataError(f"the ordinal response {label!r} must be an ordered categorical")
        y = value.codes.astype(float)
        n = y.size
        w = np.ones(n) if weights is None else np.asarray(weights, float)
        return GlmResponse(y, w, np.zeros(n))

    def simulate(self, mu, resp, rng):
        """Categories drawn at η: the latent variable η + e below which threshold."""
        e = self.link.random(rng, np.shape(mu))
        return np.searchsorted(self.a(), np.asarray(mu) + e).astype(float)

    def describe(self) -> str:
        return f"cumulative {self.link.name}"

    def __repr__(self) -> str:
        return f"cumulative({self.link.name}, threshold={self.threshold!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Cumulative)
            and other.link.name == self.link.name
            and other.threshold == self.threshold
        )

    def __hash__(self) -> int:
        return hash((self.name, self.link.name, self.threshold))
