"""The exact Hessian of the Laplace deviance of one scalar random-effects
term with a canonical link (binomial-logit, Poisson-log), in φ = (θ, β).

Per group, with ηᵢ = baseᵢ + θ zᵢ u and the cumulant b (ℓᵢ = wtᵢ(yᵢηᵢ − b(ηᵢ))),
the penalized deviance f(u; φ) = u²/2 − Σᵢ ℓᵢ has its mode û(φ) where
f_u = 0 and the group adds 2 f(û) + log h, h = f_uu(û), to the deviance.
Writing A, B for parameters (and u), gᵢ = ∂ηᵢ = (zᵢu, xᵢ, θzᵢ) and E for
the one second derivative of η, ∂²η/∂θ∂u = z, with sᵢ = ℓ'ᵢ and wᵢ, w3ᵢ,
w4ᵢ = wtᵢ b'', b''', b'''' at ηᵢ:

    f_AB   = δ_uu + Σ w g_A g_B − Σ s E_AB
    f_uAB  = Σ w3 g_u g_A g_B + Σ w (E_Au g_B + E_Bu g_A + E_AB g_u)
    f_uuAB = Σ w4 g_u² g_A g_B + 2 Σ w3 g_u (E_Au g_B + E_Bu g_A)
             + Σ w3 g_u² E_AB + 2 Σ w E_Au E_Bu.

Implicit differentiation of f_u(û(φ), φ) = 0 gives û_A = −f_uA/h and
û_AB = −(f_uAB + f_uuA û_B + f_uuB û_A + f_uuu û_A û_B)/h; then, with
k_A = f_uuA + f_uuu û_A (h's total derivative),

    ∂²[2f(û)]/∂A∂B = 2(f_AB − f_uA f_uB / h),
    ∂²[log h]/∂A∂B = (f_uuAB + f_uuuA û_B + f_uuuB û_A + f_uuuu û_A û_B
                      + f_uuu û_AB)/h − k_A k_B / h²,

and the gradient 2 f_A + k_A/h.  Every quantity is a sum over a group's rows
of products of these per-row terms, so the Hessian costs about one
evaluation of the gradient; the compiled kernel (``scalar_laplace_hessian``
in ``_glmm_kernels.c``) does the same group by group, this module is its
fallback and its reference in the tests.
"""

from __future__ import annotations

import numpy as np


def cumulant_derivatives(logit: bool, eta: np.ndarray):
    """b, μ, b'', b''', b'''' at η (binomial-logit or Poisson-log)."""
    if logit:
        e = np.exp(-np.abs(eta))
        b = np.maximum(eta, 0.0) + np.log1p(e)
        r = 1.0 / (1.0 + e)
        mu = np.where(eta >= 0, r, e * r)
        v = e * r * r
        return b, mu, v, v * (1.0 - 2.0 * mu), v * (1.0 - 6.0 * v)
    mu = np.exp(np.minimum(eta, 700.0))
    return mu, mu, mu, mu, mu


def laplace_hessian(model, phi: np.ndarray):
    """(D, dD/dφ, d²D/dφ²) of a :class:`multilevel.glmm.exact.scalar.ScalarGLMM`
    with a canonical link, Laplace (one node), at φ = (θ, β); its modes are
    updated as by an evaluation."""
    theta = float(phi[0])
    X, z, codes = model.X, model.z, model.codes
    base = model.offset + X @ phi[1:]
    u, eta = model._mode(theta, base)
    model.u = u
    y, wt = model.rows.y, model.rows.wt
    b, mu, v, v3, v4 = cumulant_derivatives(model.logit, eta)
    s, w, w3, w4 = wt * (y - mu), wt * v, wt * v3, wt * v4
    n, p = X.shape
    d = p + 1  # parameters; index d is u
    G = np.empty((n, d + 1))
    G[:, 0] = z * u[codes]
    G[:, 1:d] = X
    G[:, d] = theta * z
    gu = G[:, d]
    GG = G[:, :, None] * G[:, None, :]
    gsum = model._gsum
    F2 = gsum(w[:, None, None] * GG)
    F3 = gsum((w3 * gu)[:, None, None] * GG)
    F4 = gsum((w4 * gu * gu)[:, None, None] * GG)
    # the terms in E (only ∂²η/∂θ∂u = z): row and column 0 (θ) and the (θ, u) pair
    F2[:, 0, d] -= gsum(s * z)
    F2[:, d, 0] = F2[:, 0, d]
    F2[:, d, d] += 1.0
    e3 = gsum((w * z)[:, None] * G)  # Σ w E_Au g_B over B (A = θ)
    F3[:, 0, :] += e3
    F3[:, :, 0] += e3
    F3[:, 0, d] += gsum(w * gu * z)
    F3[:, d, 0] = F3[:, 0, d]
    e4 = 2.0 * gsum((w3 * gu * z)[:, None] * G)
    F4[:, 0, :] += e4
    F4[:, :, 0] += e4
    F4[:, 0, d] += gsum(w3 * gu * gu * z)
    F4[:, d, 0] = F4[:, 0, d]
    F4[:, 0, 0] += 2.0 * gsum(w * z * z)

    h = F2[:, d, d]
    fu = F2[:, d, :d]
    ua = -fu / h[:, None]
    fuu, fuuu = F3[:, d, :d], F3[:, d, d]
    k = fuu + fuuu[:, None] * ua
    fA = -gsum(s[:, None] * G[:, :d])
    grad = np.sum(2.0 * fA + k / h[:, None], axis=0)
    outer = ua[:, :, None] * ua[:, None, :]
    uab = (
        -(
            F3[:, :d, :d]
            + fuu[:, :, None] * ua[:, None, :]
            + ua[:, :, None] * fuu[:, None, :]
            + fuuu[:, None, None] * outer
        )
        / h[:, None, None]
    )
    f4u = F4[:, d, :d]
    dk = (
        F4[:, :d, :d]
        + f4u[:, :, None] * ua[:, None, :]
        + ua[:, :, None] * f4u[:, None, :]
        + F4[:, d, d][:, None, None] * outer
        + fuuu[:, None, None] * uab
    )
    hg = F2[:, :d, :d] + fu[:, :, None] * ua[:, None, :]
    H = np.sum(
        2.0 * hg + dk / h[:, None, None] - (k[:, :, None] * k[:, None, :]) / (h * h)[:, None, None],
        axis=0,
    )
    ll = wt * (y * eta - b)
    fhat = u * u / 2 - gsum(ll)
    dev = float(np.sum(2.0 * fhat + np.log(h))) - 2.0 * model.const
    return dev, grad, 0.5 * (H + H.T)
