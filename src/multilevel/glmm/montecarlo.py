"""Monte Carlo (importance-sampling) estimates of a GLMM's marginal likelihood.

The marginal likelihood L = ∫ f(y | u) φ(u) du is estimated by importance
sampling with a heavy-tailed proposal centred at the conditional mode ũ and
scaled by the Laplace curvature L Lᵀ = ΛᵀZᵀWZΛ + I:

    u_s = ũ + L⁻ᵀ z_s √(ν/c_s),  z_s ~ N(0, I),  c_s ~ χ²_ν

(a multivariate t with ν degrees of freedom and scale matrix (L Lᵀ)⁻¹), and

    L̂ = (1/S) Σ_s f(y | u_s) φ(u_s) / t_ν(u_s),   Var(log L̂) ≈ Var(w)/(S w̄²)

(delta method).  With one grouping factor the integral factors over levels:
every level gets its own q-dimensional proposal and estimate, and the
variances add.  With several grouping factors one joint proposal over all Q
random effects is used; in high dimension its weights degenerate, which the
effective sample size (reported) shows.

The draws (z, c) are generated once from ``seed`` and reused for every
(θ, β): common random numbers make the estimated log-likelihood a smooth
function of the parameters, so it can be maximised (``glmer(method="mc")``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from multilevel.errors import ModelError, warn
from multilevel.glmm.pirls import Mode, PirlsProblem, back_solve, lower_t_solve

_LOG2PI = float(np.log(2 * np.pi))
CHUNK_CELLS = 2_000_000
DEFAULT_DF = 5.0


@dataclass
class MCEstimate:
    """An importance-sampling estimate of the marginal log-likelihood."""

    loglik: float
    se: float  # Monte Carlo standard error of loglik
    samples: int
    df: float
    ess: float  # smallest effective sample size (over levels, or the joint one)
    seed: int | None

    @property
    def deviance(self) -> float:
        return -2.0 * self.loglik

    def __repr__(self) -> str:
        return (
            f"MCEstimate(loglik={self.loglik:.6f}, se={self.se:.2g}, samples={self.samples}, "
            f"df={self.df:g}, min ESS={self.ess:.0f})"
        )


MAX_DRAWS = 50_000_000  # normal draws held at once (400 MB)


class Draws:
    """Standard-normal and χ² draws, fixed for all parameter values."""

    def __init__(self, prob: PirlsProblem, samples: int, seed: int | None, df: float = DEFAULT_DF):
        if samples < 2:
            raise ModelError("Monte Carlo needs at least 2 samples")
        if samples * prob.rb.Q > MAX_DRAWS:
            raise ModelError(
                f"{samples} Monte Carlo samples for {prob.rb.Q} random effects need "
                f"{samples * prob.rb.Q} normal draws (limit {MAX_DRAWS}); use fewer samples"
            )
        rb = prob.rb
        rng = np.random.default_rng(seed)
        self.samples = int(samples)
        self.df = float(df)
        self.seed = seed
        self.joint = rb.K > 1
        if self.joint:
            self.z = rng.standard_normal((rb.Q, samples))
            self.c = rng.chisquare(df, samples)
        else:
            self.z = rng.standard_normal((rb.q[0], rb.nlevels[0], samples))
            self.c = rng.chisquare(df, (rb.nlevels[0], samples))


def _log_t(r2: np.ndarray, dim: int, df: float, half_logdet: np.ndarray | float) -> np.ndarray:
    """Log-density of the t proposal at a point with ‖Lᵀ(u − ũ)‖² = r2."""
    return (
        gammaln((df + dim) / 2)
        - gammaln(df / 2)
        - 0.5 * dim * np.log(df * np.pi)
        + half_logdet
        - 0.5 * (df + dim) * np.log1p(r2 / df)
    )


def _summarise(logw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of log-weights (.., S): log of the mean, variance of its log, ESS."""
    S = logw.shape[-1]
    top = logw.max(axis=-1, keepdims=True)
    w = np.exp(logw - top)
    mean = w.mean(axis=-1)
    var = w.var(axis=-1, ddof=1)
    log_mean = np.log(mean) + top[..., 0]
    var_log = var / (S * mean * mean)
    ess = w.sum(axis=-1) ** 2 / np.square(w).sum(axis=-1)
    return log_mean, var_log, ess


def mc_loglik(prob: PirlsProblem, mode: Mode, draws: Draws) -> MCEstimate:
    """Importance-sampling estimate of the full marginal log-likelihood at the
    (θ, β) of ``mode`` (whose ũ and factor centre and scale the proposal)."""
    if draws.joint:
        return _joint(prob, mode, draws)
    rb = prob.rb
    q, n0 = rb.q[0], rb.nlevels[0]
    f = mode.factor
    T0 = f.T[0]
    eta_fixed = mode.eta - rb.zb(mode.u, f.T)
    u0 = mode.u.reshape(n0, q).T
    Z0, codes = rb.Zs[0], rb.codes[0]
    S, df = draws.samples, draws.df
    chunk = max(1, CHUNK_CELLS // max(1, prob.n))
    parts = []
    for start in range(0, S, chunk):  # chunks of samples, bounded memory
        z = draws.z[:, :, start : start + chunk]  # (q, n0, k)
        scale = np.sqrt(df / draws.c[:, start : start + chunk])  # (n0, k)
        v = lower_t_solve(f.L0, z) * scale[None]
        u = u0[:, :, None] + v
        b = np.einsum("ab,bnk->ank", T0, u)
        if q == 1:
            zb = Z0[:, :1] * b[0][codes]
        else:
            zb = np.einsum("ia,aik->ik", Z0, b[:, codes, :])
        g = -2.0 * prob.group_loglik(eta_fixed[:, None] + zb) + np.einsum("ank,ank->nk", u, u)
        r2 = np.einsum("ank,ank->nk", z, z) * scale * scale
        log_t = _log_t(r2, q, df, 0.5 * f.logdet0[:, None])
        parts.append(-0.5 * g - 0.5 * q * _LOG2PI - log_t)
    logw = np.concatenate(parts, axis=1)  # (n0, S)
    log_mean, var_log, ess = _summarise(logw)
    return MCEstimate(
        float(log_mean.sum()),
        float(np.sqrt(var_log.sum())),
        S,
        df,
        float(ess.min()),
        draws.seed,
    )


def _joint(prob: PirlsProblem, mode: Mode, draws: Draws) -> MCEstimate:
    rb = prob.rb
    f = mode.factor
    eta_fixed = mode.eta - rb.zb(mode.u, f.T)
    S, df, Q = draws.samples, draws.df, rb.Q
    chunk = max(1, CHUNK_CELLS // max(1, prob.n))
    logw = np.empty(S)
    r = prob.resp
    for start in range(0, S, chunk):
        z = draws.z[:, start : start + chunk]  # (Q, k)
        scale = np.sqrt(df / draws.c[start : start + chunk])
        v = back_solve(rb, f, z[: rb.Q0], z[rb.Q0 :]) * scale[None, :]
        u = mode.u[:, None] + v
        zb = np.zeros((prob.n, u.shape[1]))
        for Z, c, uk, Tk in zip(rb.Zs, rb.codes, _split_cols(rb, u), f.T, strict=True):
            b = np.einsum("ab,nbk->nak", Tk, uk)  # (n_k, q_k, k)
            zb += np.einsum("ia,iak->ik", Z, b[c])
        ll = (
            prob.family.loglik_kernel(r.y[:, None], eta_fixed[:, None] + zb, r.weights[:, None])
            + r.const[:, None]
        ).sum(axis=0)
        r2 = np.einsum("qk,qk->k", z, z) * scale * scale
        logw[start : start + z.shape[1]] = (
            ll - 0.5 * np.einsum("qk,qk->k", u, u) - 0.5 * Q * _LOG2PI
        ) - _log_t(r2, Q, df, 0.5 * f.logdet)
    log_mean, var_log, ess = _summarise(logw)
    return MCEstimate(float(log_mean), float(np.sqrt(var_log)), S, df, float(ess), draws.seed)


def _split_cols(rb, u: np.ndarray) -> list[np.ndarray]:
    """(Q, k) -> per term (n_k, q_k, k)."""
    out = [u[: rb.Q0].reshape(rb.nlevels[0], rb.q[0], -1)]
    for k in range(1, rb.K):
        s = slice(rb.Q0 + rb.rest_offsets[k - 1], rb.Q0 + rb.rest_offsets[k])
        out.append(u[s].reshape(rb.nlevels[k], rb.q[k], -1))
    return out


def warn_degenerate(est: MCEstimate) -> None:
    """Warn when the importance weights are dominated by a few draws."""
    if est.ess < 0.1 * est.samples:
        warn(
            f"importance weights degenerate: effective sample size {est.ess:.0f} of "
            f"{est.samples} draws; the Monte Carlo estimate and its standard error are "
            "unreliable (several grouping factors make the proposal high-dimensional)",
            RuntimeWarning,
        )
