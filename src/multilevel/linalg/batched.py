"""Small dense matrices, one per level, factorized all at once.

A stack of q x q matrices (q is the number of columns of a random-effects
term, usually 1-3) is stored "level last": ``S[i][j]`` is a contiguous vector
over the levels.  The Cholesky factorization and triangular solves then loop
over the q² entries, never over levels, and every step is one vector
operation; for the q of mixed models this is several times faster than
numpy's per-matrix gufuncs.
"""

from __future__ import annotations

import numpy as np


def cholesky(S: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factors of S (q, q, n); None if some S is not positive definite."""
    q = S.shape[0]
    L = np.zeros_like(S)
    for j in range(q):
        d = S[j, j] - _dot(L[j, :j], L[j, :j])
        if not (d > 0).all():
            return None
        ljj = np.sqrt(d)
        L[j, j] = ljj
        for i in range(j + 1, q):
            L[i, j] = (S[i, j] - _dot(L[i, :j], L[j, :j])) / ljj
    return L


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Σ_k a[k] * b[k] over a short leading axis (0 when it is empty)."""
    k = a.shape[0]
    if k == 0:
        return 0.0
    if k == 1:
        return a[0] * b[0]
    return np.einsum("kn,kn->n", a, b)


def solve_lower(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """X with L X = B for lower-triangular L (q, q, n) and B (q, r, n) or (q, r)."""
    q = L.shape[0]
    n = L.shape[2]
    X = np.empty((q, B.shape[1], n))
    for i in range(q):
        rhs = B[i] if B.ndim == 3 else B[i][:, None]
        if i == 0:
            X[i] = rhs / L[i, i]
        elif i == 1:
            X[i] = (rhs - L[i, 0] * X[0]) / L[i, i]
        else:
            X[i] = (rhs - np.einsum("kn,krn->rn", L[i, :i], X[:i])) / L[i, i]
    return X


def solve_upper_t(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """X with Lᵀ X = B for lower-triangular L (q, q, n), B (q, n)."""
    q = L.shape[0]
    X = np.empty_like(B)
    for i in range(q - 1, -1, -1):
        acc = B[i] - np.einsum("kn,kn->n", L[i + 1 :, i], X[i + 1 :]) if i < q - 1 else B[i]
        X[i] = acc / L[i, i]
    return X


def to_levels_first(A: np.ndarray) -> np.ndarray:
    """(a, b, n) -> (n, a, b)."""
    return np.ascontiguousarray(A.transpose(2, 0, 1))  # moveaxis costs µs per call


def factor_levels(T: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per level Sᵢ = TᵀDᵢT + I = LᵢLᵢᵀ and Wᵢ = Lᵢ⁻¹Tᵀ (a term's blocks of the
    penalized cross-product at one template T), for D (q, q, n) level-last;
    None if some Sᵢ is not positive definite."""
    S = np.einsum("ai,ijn,jb->abn", T.T, D, T)
    S[np.diag_indices(T.shape[0])] += 1.0
    L = cholesky(S)
    if L is None:
        return None
    return L, solve_lower(L, T.T)
