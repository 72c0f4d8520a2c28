"""Adaptive Gauss–Hermite quadrature (AGQ) of a GLMM's marginal likelihood.

With one grouping factor the random effects of different levels are
independent, so the marginal likelihood factors into one q-dimensional
integral per level l (q = columns of the term):

    L_l = ∫ Π_{i∈l} f(yᵢ | ηᵢ(u)) φ_q(u) du = (2π)^(−q/2) ∫ exp(−g_l(u)/2) du,

g_l(u) = −2 Σ_{i∈l} log f(yᵢ | ηᵢ(u)) + ‖u‖².  The nodes are centred at the
conditional mode ũ_l and scaled by the curvature L_l L_lᵀ (the level's block of
ΛᵀZᵀWZΛ + I from PIRLS): u = ũ_l + L_l⁻ᵀ z, so that

    log L_l = −(q/2) log 2π − log|L_l| + log Σ_k w_k exp(−g_l(u_k)/2 + ‖z_k‖²/2)

with (z_k, w_k) the tensor product of the nAGQ-point Gauss–Hermite rule for
the weight exp(−z²/2) (nAGQ^q nodes).  One node (z = 0, w = (2π)^(q/2)) gives
the Laplace approximation exactly.  All levels and a chunk of nodes are
evaluated at once; nothing loops over levels or rows.  Unlike lme4, vector
random effects (e.g. intercept and slope) are supported.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import logsumexp

from multilevel.glmm.families import Family
from multilevel.glmm.pirls import Mode, PirlsProblem, lower_t_solve
from multilevel.linalg.crossprod import group_sums

_LOG2PI = float(np.log(2 * np.pi))
CHUNK_CELLS = 250_000  # rows × nodes evaluated at once: ~2 MB arrays stay in cache


@lru_cache(maxsize=32)
def gauss_hermite_grid(nagq: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product rule for ∫ h(z) exp(−‖z‖²/2) dz over R^q: nodes (K, q) and
    log weights (K,), K = nagq^q."""
    x, w = hermegauss(nagq)
    grids = np.meshgrid(*([x] * q), indexing="ij")
    nodes = np.stack([g.ravel() for g in grids], axis=1)
    lw = np.meshgrid(*([np.log(w)] * q), indexing="ij")
    logw = np.sum(np.stack([g.ravel() for g in lw], axis=1), axis=1)
    nodes.setflags(write=False)
    logw.setflags(write=False)
    return nodes, logw


def level_logliks(
    prob: PirlsProblem, mode: Mode, nodes: np.ndarray, logw: np.ndarray
) -> np.ndarray:
    """Per level of the (single) grouping factor: log L_l by the rule (nodes, logw)."""
    rb = prob.rb
    q, n0 = rb.q[0], rb.nlevels[0]
    f = mode.factor
    T0 = f.T[0]
    eta_fixed = mode.eta - rb.zb(mode.u, f.T)
    u0 = mode.u.reshape(n0, q).T  # (q, n0)
    Z0, codes = rb.Zs[0], rb.codes[0]
    K = nodes.shape[0]
    chunk = max(1, CHUNK_CELLS // max(1, prob.n))
    fam, r = prob.family, prob.resp
    intercept_only = q == 1 and bool(np.all(Z0 == 1.0))
    # a user's Family subclass may have a canonical link but no cumulant
    canonical = fam.canonical and type(fam).cumulant is not Family.cumulant
    if canonical:
        # log f = w(yη − b(η)) + const: the part linear in η is a per-level sum,
        # Σᵢ (wᵢyᵢη_fixed,ᵢ + constᵢ) + (Σᵢ wᵢyᵢzᵢ)ᵀbₗ, so only b(η) is evaluated
        # at every (row, node)
        wy = r.weights * r.y
        base = group_sums(codes, (wy * eta_fixed + r.const)[:, None], n0)[:, 0]
        wyz = group_sums(codes, wy[:, None] * Z0, n0)  # (n0, q)
        unit = bool(np.all(r.weights == 1.0))
    parts = []
    for start in range(0, K, chunk):  # chunks of nodes, bounded memory
        z = nodes[start : start + chunk]  # (k, q)
        k = z.shape[0]
        v = lower_t_solve(f.L0, np.broadcast_to(z.T[:, None, :], (q, n0, k)))
        u = u0[:, :, None] + v  # (q, n0, k)
        b = np.einsum("ab,bnk->ank", T0, u)
        if q == 1:
            zb = np.take(b[0], codes, axis=0)
            if not intercept_only:
                zb *= Z0[:, :1]
        else:
            zb = np.einsum("ia,aik->ik", Z0, b[:, codes, :])
        if canonical:
            zb += eta_fixed[:, None]
            cum = fam.cumulant(zb)
            if not unit:
                cum *= r.weights[:, None]
            ll = base[:, None] + np.einsum("nq,qnk->nk", wyz, b) - group_sums(codes, cum, n0)
        else:
            ll = prob.group_loglik(eta_fixed[:, None] + zb)
        g = -2.0 * ll + np.einsum("ank,ank->nk", u, u)
        parts.append(logw[start : start + k] - 0.5 * g + 0.5 * np.einsum("kq,kq->k", z, z))
    terms = np.concatenate(parts, axis=1)  # (n0, K)
    return -0.5 * q * _LOG2PI - 0.5 * f.logdet0 + logsumexp(terms, axis=1)


def agq_deviance(prob: PirlsProblem, mode: Mode, nagq: int) -> float:
    """−2 × marginal log-likelihood by nAGQ-point adaptive quadrature."""
    nodes, logw = gauss_hermite_grid(nagq, prob.rb.q[0])
    return float(-2.0 * level_logliks(prob, mode, nodes, logw).sum())
