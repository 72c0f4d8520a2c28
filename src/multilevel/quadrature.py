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

from .pirls import Mode, PirlsProblem, lower_t_solve

_LOG2PI = float(np.log(2 * np.pi))
CHUNK_CELLS = 2_000_000  # rows × nodes evaluated at once


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
    parts = []
    for start in range(0, K, chunk):  # chunks of nodes, bounded memory
        z = nodes[start : start + chunk]  # (k, q)
        k = z.shape[0]
        v = lower_t_solve(f.L0, np.broadcast_to(z.T[:, None, :], (q, n0, k)))
        u = u0[:, :, None] + v  # (q, n0, k)
        b = np.einsum("ab,bnk->ank", T0, u)
        if q == 1:
            zb = Z0[:, :1] * b[0][codes]
        else:
            zb = np.einsum("ia,aik->ik", Z0, b[:, codes, :])
        g = -2.0 * prob.group_loglik(eta_fixed[:, None] + zb) + np.einsum("ank,ank->nk", u, u)
        parts.append(logw[start : start + k] - 0.5 * g + 0.5 * np.einsum("kq,kq->k", z, z))
    terms = np.concatenate(parts, axis=1)  # (n0, K)
    return -0.5 * q * _LOG2PI - 0.5 * f.logdet0 + logsumexp(terms, axis=1)


def agq_deviance(prob: PirlsProblem, mode: Mode, nagq: int) -> float:
    """−2 × marginal log-likelihood by nAGQ-point adaptive quadrature."""
    nodes, logw = gauss_hermite_grid(nagq, prob.rb.q[0])
    return float(-2.0 * level_logliks(prob, mode, nodes, logw).sum())
