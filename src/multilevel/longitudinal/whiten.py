"""Whitening: a model whose errors have covariance σ²Vᵢ within group i is
the model with independent errors in the rows L_i⁻¹[Zᵢ Xᵢ yᵢ], Vᵢ = LᵢLᵢᵀ,
and its likelihood gains −½ log|Vᵢ| per group (the Jacobian), so that

    criterion(θ, ω) = criterion of the whitened rows (θ) + Σᵢ log|Vᵢ(ω)|

for REML and ML alike.  With a variance function Vᵢ = SᵢCᵢSᵢ (S diagonal,
C the correlation), L⁻¹ = L_C⁻¹S⁻¹ and log|V| = log|C| + 2Σ log sᵢ.

The whitened rows of a random-effects column stay in its group, so its
levels are unchanged when the correlation groups nest in every grouping
factor (:func:`check_nesting`).  AR(1) and CAR(1) — and any Markov
structure — whiten in one pass: with aₖ the correlation of a row with the
previous row of its group (φ^Δt),

    m̃ₖ = (mₖ − aₖ mₖ₋₁)/√(1 − aₖ²),   log|C| = Σₖ log(1 − aₖ²)

(the first row of a group unchanged), O(n) and no n × n matrix.  Other
structures factor each group's correlation matrix, groups of one size in
one batch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from multilevel.errors import DataError, ModelError
from multilevel.linalg.crossprod import level_crossprod
from multilevel.longitudinal.correlation import CorStruct, corAR1, corARMA, corSymm
from multilevel.longitudinal.forms import group_codes, numeric_column
from multilevel.longitudinal.variance import VarFunc


class ResidualStructure:
    """A correlation structure and a variance function bound to the model's
    rows; ``x`` is (correlation parameters, variance parameters), both on
    their unconstrained scales."""

    def __init__(
        self,
        cor: CorStruct | None,
        var: VarFunc | None,
        frame: pd.DataFrame,
        default_groups: tuple[str, ...] = (),
    ):
        self.cor, self.var = cor, var
        n = len(frame)
        self.n = n
        if var is not None:
            var.bind(frame)
        self.order = np.arange(n)
        self.starts = np.array([0], dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
        if cor is not None:
            self._bind_cor(cor, frame, default_groups)
        self.inverse = np.empty(n, dtype=np.int64)
        self.inverse[self.order] = np.arange(n)
        self.nc = 0 if cor is None else cor.nparams()
        self.nv = 0 if var is None else var.nparams()

    # -- binding
    def _bind_cor(self, cor: CorStruct, frame: pd.DataFrame, default_groups) -> None:
        groups = cor.form.groups or default_groups
        codes = group_codes(frame, groups, "correlation grouping")
        self.groups = groups
        covs = cor.form.covariates
        if cor.spatial:
            if not covs:
                raise ModelError(f"{cor.nlme_class} needs coordinates: form='~ x + y' (| g)")
            pos = np.column_stack([numeric_column(frame, c, "coordinate") for c in covs])
            if not np.all(np.isfinite(pos)):
                raise DataError("the coordinates have missing or infinite values")
            order = np.argsort(codes, kind="stable")
        else:
            if len(covs) > 1:
                raise ModelError(f"{cor.nlme_class} takes one position covariate, '~ t | g'")
            if covs:
                t = numeric_column(frame, covs[0], "correlation covariate")
                if not np.all(np.isfinite(t)):
                    raise DataError(f"the correlation covariate {covs[0]!r} has missing values")
                if isinstance(cor, (corAR1, corARMA, corSymm)) and np.any(t != np.round(t)):
                    raise DataError(
                        f"{cor.nlme_class} needs integer positions; {covs[0]!r} has fractions "
                        "(corCAR1 takes continuous times)"
                    )
            else:  # the order of the rows within each group: 1, 2, ...
                t = np.zeros(len(frame))
                first = np.argsort(codes, kind="stable")
                sc = codes[first]
                st = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
                rank = np.arange(len(frame)) - np.repeat(st, np.diff(np.r_[st, len(frame)]))
                t[first] = rank + 1.0
            order = np.lexsort((t, codes))
            ts, cs = t[order], codes[order]
            same = cs[1:] == cs[:-1]
            dup = same & (ts[1:] == ts[:-1])
            if np.any(dup):
                g, at = cs[1:][dup][0], ts[1:][dup][0]
                raise DataError(
                    f"two rows of one group have the same position ({at:g}) in "
                    f"{cor.nlme_class}'s form {cor.form.text!r} (group {g + 1} in order of "
                    "appearance): positions must be unique within a group"
                )
            pos = t
        self.order = order
        cs = codes[order]
        self.starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]]) if len(cs) else self.starts
        self.codes_sorted = cs
        self.pos = pos[order]
        sizes = np.diff(np.r_[self.starts, len(cs)])
        if cor.spatial and cor.value is None:
            cor.value = np.array([0.9 * _min_distance(self.pos, self.starts, sizes)]
                                 + ([0.1] if cor.nugget else []))  # fmt: skip
        if isinstance(cor, corSymm):
            m = int(self.pos.max())
            if self.pos.min() < 1:
                raise DataError("corSymm's positions must be 1, 2, ... (integers from 1)")
            cor.m = m
            if m > 200:
                raise ModelError(f"corSymm over {m} positions has {m * (m - 1) // 2} parameters")
        else:
            cor.m = int(sizes.max(initial=1))
        self.first = np.zeros(len(cs), dtype=bool)
        self.first[self.starts] = True
        if cor.markov:
            gap = np.diff(self.pos, prepend=self.pos[:1] if len(cs) else self.pos)
            self.gap = np.where(self.first, 0.0, gap)
        self.sizes = sizes

    # -- parameters
    @property
    def nparams(self) -> int:
        return self.nc + self.nv

    def start(self) -> np.ndarray:
        parts = []
        if self.cor is not None:
            parts.append(self.cor.start())
        if self.var is not None:
            parts.append(self.var.start())
        return np.concatenate(parts) if parts else np.zeros(0)

    @property
    def free(self) -> np.ndarray:
        """Which of ω's entries are estimated (a structure given with
        ``fixed=True`` keeps its value=)."""
        cf = bool(self.cor is not None and self.cor.fixed)
        vf = bool(self.var is not None and getattr(self.var, "fixed", False))
        return np.r_[np.full(self.nc, not cf), np.full(self.nv, not vf)].astype(bool)

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[: self.nc], x[self.nc :]

    # -- whitening
    def whiten(
        self, x: np.ndarray, M: np.ndarray, with_var: bool = True
    ) -> tuple[np.ndarray, float]:
        """L⁻¹M for rows M in the model's order (n, k), returned in the
        structure's order (``order``: by group and position), and log|V|;
        ``with_var=False`` leaves the variance function out (x still holds
        its parameters)."""
        xc, xv = self.split(np.asarray(x, float))
        logdet = 0.0
        if self.var is not None and with_var:
            s = self.var.sd(xv)
            if not np.all(np.isfinite(s)) or np.any(s <= 0):
                return np.full_like(M, np.nan), np.inf
            # relative to their geometric mean: σ absorbs the common factor, the
            # profiled criterion is unchanged and the whitened rows keep the
            # data's scale whatever a trial ω is
            ls = np.log(s)
            ls = ls - ls.mean()
            M = M * np.exp(-ls)[:, None]
            logdet += 2.0 * float(ls.sum())
        M = M[self.order]
        if self.cor is None:
            return M, logdet
        if self.cor.markov:
            out, ld = self._markov(xc, M)
        else:
            out, ld = self._dense(xc, M)
        return out, logdet + ld

    def _markov(self, xc: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, float]:
        a = np.where(self.first, 0.0, self.cor.correlation(xc, np.maximum(self.gap, 1e-300)))
        a = np.where(self.first, 0.0, a)
        r = 1.0 - a * a
        if np.any(r <= 0):
            return np.full_like(M, np.nan), np.inf
        prev = np.empty_like(M)
        prev[1:] = M[:-1]
        prev[:1] = 0.0
        out = (M - a[:, None] * prev) / np.sqrt(r)[:, None]
        return out, float(np.log(r).sum())

    def lag_sums(
        self, M: np.ndarray, codes: np.ndarray, nlevels: int, q: int, with_var: bool = True
    ) -> LagSums | None:
        """The per-level cross-products of the whitened rows as functions of ω
        (:class:`LagSums`), or None where they are not a few sums of the rows:
        a structure that is not Markov, a variance function of ω, many distinct
        gaps, or levels so small that the sums outweigh the rows."""
        cor = self.cor
        if cor is None or not cor.markov or (self.var is not None and with_var):
            return None
        gaps = np.unique(self.gap[~self.first])
        # per ω the sums cost ~2(3D + 1)·levels·q·k operations, whitening and
        # multiplying the rows ~10·n·k
        if gaps.size > MAX_GAPS or (3 * gaps.size + 1) * nlevels * q > 5 * max(self.n, 1):
            return None
        return LagSums(self, M, codes, nlevels, q, gaps)

    def _dense(self, xc: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, float]:
        out = np.empty_like(M)
        logdet = 0.0
        cor = self.cor
        for m in np.unique(self.sizes):  # group sizes, not groups
            idx = np.flatnonzero(self.sizes == m)
            rows = self.starts[idx][:, None] + np.arange(m)[None, :]  # (G, m)
            P = self.pos[rows]
            if hasattr(cor, "inverse_factor"):  # a closed form (compound symmetry)
                A, ld = cor.inverse_factor(xc, int(m))
                if not np.isfinite(ld):
                    return np.full_like(M, np.nan), np.inf
                out[rows] = np.einsum("ab,gbk->gak", A, M[rows])
                logdet += len(idx) * ld
                continue
            C = cor.group_matrices(xc, P) if _varies(P) else None
            if C is None:
                C1 = cor.group_matrix(xc, P[0])
                try:
                    L = np.linalg.cholesky(C1)
                except np.linalg.LinAlgError:
                    return np.full_like(M, np.nan), np.inf
                B = M[rows]  # (G, m, k)
                out[rows] = (
                    np.linalg.solve(L, B.transpose(1, 0, 2).reshape(m, -1))
                    .reshape(m, len(idx), -1)
                    .transpose(1, 0, 2)
                )
                logdet += len(idx) * 2.0 * float(np.log(np.diag(L)).sum())
                continue
            try:
                L = np.linalg.cholesky(C)
            except np.linalg.LinAlgError:
                return np.full_like(M, np.nan), np.inf
            out[rows] = np.linalg.solve(L, M[rows])
            logdet += 2.0 * float(np.log(np.diagonal(L, axis1=1, axis2=2)).sum())
        return out, logdet

    def scale(self, x: np.ndarray) -> float:
        """The geometric mean of the variance function's sᵢ at ω (1 without
        one): whitening divides by sᵢ relative to it, so that the σ of the
        whitened model is nlme's σ times this factor."""
        if self.var is None:
            return 1.0
        s = self.var.sd(self.split(np.asarray(x, float))[1])
        return float(np.exp(np.log(s).mean()))

    def runaway(self, x: np.ndarray) -> str | None:
        """Why ω is at a limit of the structure rather than a maximum (a
        variance function whose SDs span more than 1e8, a spatial range far
        beyond the distances), or None."""
        xc, xv = self.split(np.asarray(x, float))
        if self.var is not None and self.nv:
            span = self.var.span(xv)
            if not span < 1e8:
                est = ", ".join(f"{k} = {v:.4g}" for k, v in self.var.coef(xv).items())
                return (
                    f"the variance function runs off to a limit: its standard deviations span "
                    f"a factor of {span:.3g} across the rows ({est}), "
                    "so some rows are given (almost) no variance; the likelihood has no interior "
                    "maximum along this direction — simplify the variance function or start it "
                    "elsewhere (value=) to find an interior local maximum"
                )
        if self.cor is not None and self.cor.spatial:
            rng = float(self.cor.from_free(xc)[0])
            pos = self.pos.reshape(len(self.pos), -1)
            extent = float(np.sqrt(((pos.max(axis=0) - pos.min(axis=0)) ** 2).sum()))
            if extent > 0 and rng > 100.0 * extent:
                return (
                    f"the range of {self.cor.nlme_class} runs off to infinity ({rng:.4g}; the "
                    f"coordinates span {extent:.4g}): the likelihood keeps rising as the "
                    "correlation flattens out, so there is no finite estimate — a linear "
                    "variogram or a trend in the mean may describe these data"
                )
        return None

    def unwhiten_order(self, v: np.ndarray) -> np.ndarray:
        """A vector in the structure's order back in the model's order."""
        return v[self.inverse]

    # -- reporting
    def coef(self, x: np.ndarray) -> tuple[pd.Series | None, pd.Series | None]:
        xc, xv = self.split(np.asarray(x, float))
        return (
            None if self.cor is None else self.cor.coef(xc),
            None if self.var is None else self.var.coef(xv),
        )


MAX_GAPS = 8  # distinct gaps between successive rows for which LagSums pays


class LagSums:
    """Cross-products of a Markov structure's whitened rows at any ω without
    the rows.

    Within a group a row k after the first is whitened to
    (mₖ − ρ mₖ₋₁)/√(1 − ρ²), ρ the correlation at its gap d, so over any set
    of rows

        Σ m̃ₖm̃ₖᵀ = F + Σ_d (S₀ − ρ_d(C + Cᵀ) + ρ_d² S₂)_d / (1 − ρ_d²)

    with F = Σ over first rows of mmᵀ and, over the later rows of gap d,
    S₀ = Σ mₖmₖᵀ, C = Σ mₖmₖ₋₁ᵀ, S₂ = Σ mₖ₋₁mₖ₋₁ᵀ.  One pass forms them per
    level for the first ``q`` columns (the random effects' blocks) and over
    all rows for every column; then each ω costs O(levels × q × k) whatever
    the number of rows.  log|C| is Σ_d N_d log(1 − ρ_d²).
    """

    def __init__(self, struct, M, codes: np.ndarray, nlevels: int, q: int, gaps):
        self.cor, self.split = struct.cor, struct.split
        Ms = M[struct.order]
        first = struct.first

        def sums(c, A, B):
            # per level for the first q columns; over all rows by BLAS, whose
            # blocked sums keep the totals as exact as the rows' own product
            return level_crossprod(c, A[:, :q], B, nlevels), A.T @ B

        self.F = sums(codes[first], Ms[first], Ms[first])
        later = np.flatnonzero(~first)
        self.gaps = np.asarray(gaps, float)
        self.counts, self.S0, self.S1, self.S2 = [], [], [], []
        for d in self.gaps:
            rows = later[struct.gap[later] == d]
            cur, prev, c = Ms[rows], Ms[rows - 1], codes[rows]
            (Cl, Ct), (Dl, _) = sums(c, cur, prev), sums(c, prev, cur)
            self.counts.append(rows.size)
            self.S0.append(sums(c, cur, cur))
            self.S1.append((Cl + Dl, Ct + Ct.T))
            self.S2.append(sums(c, prev, prev))

    def at(self, x: np.ndarray):
        """At ω: the whitened rows' per-level cross-products of the first q
        columns with all (levels, q, k), their total cross-products (k, k) and
        log|C|; (None, None, inf) outside the structure's range."""
        xc = self.split(np.asarray(x, float))[0]
        rho = np.asarray(self.cor.correlation(xc, self.gaps), float)
        r = 1.0 - rho * rho
        if not np.all(np.isfinite(rho)) or np.any(r <= 0):
            return None, None, np.inf
        G, T = self.F[0].copy(), self.F[1].copy()
        logdet = 0.0
        for j in range(rho.size):  # distinct gaps, a handful
            a, b = -rho[j] / r[j], rho[j] ** 2 / r[j]
            G += self.S0[j][0] / r[j] + a * self.S1[j][0] + b * self.S2[j][0]
            T += self.S0[j][1] / r[j] + a * self.S1[j][1] + b * self.S2[j][1]
            logdet += self.counts[j] * float(np.log(r[j]))
        return G, T, logdet


def _min_distance(pos: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> float:
    """The smallest positive distance between two rows of one group (nlme's
    default range of a spatial structure is 90% of it)."""
    pos = pos.reshape(len(pos), -1)
    best = np.inf
    for a, m in zip(starts, sizes, strict=True):  # groups
        P = pos[a : a + m]
        if m < 2:
            continue
        D = np.sqrt(((P[:, None, :] - P[None, :, :]) ** 2).sum(axis=2))
        d = D[D > 0]
        if d.size:
            best = min(best, float(d.min()))
    if not np.isfinite(best):
        raise DataError("no two rows of a group have different coordinates: no spatial range")
    return best


def _varies(P: np.ndarray) -> bool:
    """Whether the groups' positions differ (else one factor serves them all)."""
    return P.shape[0] > 1 and not np.all(P == P[:1])


def check_nesting(struct: ResidualStructure, random_codes: list[np.ndarray]) -> None:
    """Every correlation group within one level of each grouping factor: the
    whitened rows of a random-effects column then stay in its level."""
    if struct.cor is None:
        return
    cs = struct.codes_sorted
    for codes in random_codes:
        c = codes[struct.order]
        same_group = cs[1:] == cs[:-1]
        if np.any(same_group & (c[1:] != c[:-1])):
            raise ModelError(
                f"the correlation groups ({' / '.join(struct.groups) or 'all rows'}) are not "
                "nested in the random effects' grouping factors: a correlation within groups "
                "must not cross their levels (give form='~ ... | g' with g the innermost "
                "grouping factor, or a grouping nested in it)"
            )


__all__ = ["LagSums", "ResidualStructure", "check_nesting"]
