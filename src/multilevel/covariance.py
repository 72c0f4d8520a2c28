"""Relative covariance factors: theta <-> Lambda templates <-> variances.

Each random-effects term k with q_k columns has a lower-triangular template
T_k (q_k x q_k); its random effects are b = (I ⊗ T_k) u with u ~ N(0, σ² I),
so Var(b_level) = σ² T_k T_kᵀ.  theta holds each template's lower triangle
column by column (lme4's order); the diagonal is bounded below by 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Template:
    """Positions of one term's theta entries in its q x q template."""

    q: int
    offset: int  # position of the term's first entry in theta

    @property
    def size(self) -> int:
        return self.q * (self.q + 1) // 2

    @property
    def rows(self) -> np.ndarray:
        return _positions(self.q)[0]

    @property
    def cols(self) -> np.ndarray:
        return _positions(self.q)[1]

    def lower_bounds(self) -> np.ndarray:
        return np.where(self.rows == self.cols, 0.0, -np.inf)

    def initial(self) -> np.ndarray:
        return (self.rows == self.cols).astype(float)

    def matrix(self, theta: np.ndarray) -> np.ndarray:
        T = np.zeros((self.q, self.q))
        T[self.rows, self.cols] = theta[self.offset : self.offset + self.size]
        return T


@lru_cache(maxsize=64)
def _positions(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a q x q lower triangle, column by column (read
    only: shared by every template of that size)."""
    rows = np.concatenate([np.arange(j, q) for j in range(q)])
    cols = np.concatenate([np.full(q - j, j) for j in range(q)])
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def templates(qs: list[int]) -> list[Template]:
    out, offset = [], 0
    for q in qs:
        out.append(Template(q, offset))
        offset += q * (q + 1) // 2
    return out


def theta_names(group: str, cnames: list[str]) -> list[str]:
    """lme4's names: 'g.(Intercept)', 'g.x.(Intercept)' (row.col), 'g.x'."""
    q = len(cnames)
    out = []
    for j in range(q):
        for i in range(j, q):
            out.append(f"{group}.{cnames[i]}" if i == j else f"{group}.{cnames[i]}.{cnames[j]}")
    return out


def covariance(T: np.ndarray, sigma: float) -> np.ndarray:
    return sigma**2 * (T @ T.T)


def sd_corr(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd, sd)
    corr[~np.isfinite(corr)] = np.nan
    np.fill_diagonal(corr, 1.0)
    return sd, corr
