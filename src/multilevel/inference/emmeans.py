"""Estimated marginal means over a reference grid, as R's emmeans computes them.

The reference grid crosses every level of every factor in the fixed part
with every covariate at its mean over the rows used (or at the values given
in ``at``).  With x(g) the fixed-effects row of grid point g (the formula's
transforms evaluated there, e.g. log or poly of the covariate's mean), the
marginal mean of a cell of the ``specs`` factors is the equally weighted
average over the other grid points,

    ℓ_c = mean_{g in c} x(g),   EMM_c = ℓ_cᵀβ̂,   SE_c = √(ℓ_cᵀ V ℓ_c),

with V = vcov(β̂) — the Kenward–Roger adjusted covariance with KR DF
(emmeans's default for an LMM), vcov with Satterthwaite DF, or vcov with
asymptotic (infinite) DF for a GLMM.  Intervals are EMM ± t_{df}·SE; on the
response scale (``type="response"``) the estimate and limits are
back-transformed by the inverse link and the SE by the delta method
|dμ/dη|·SE.  ``pairs`` forms every difference ℓ_a − ℓ_b (a before b) with
Tukey's studentized-range, Holm's, Bonferroni's or no adjustment; on the
response scale a log or logit difference is shown as a ratio or odds ratio.
Below 1e-10 a Tukey p-value is the union bound (number of pairs × the
unadjusted p), sharp there, where the studentized-range integral has lost
its digits (R's ptukey reports a floor near 1e-14).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from multilevel.errors import ModelError
from multilevel.formula.design import Categorical, Numeric, build_matrix, evaluate_factor

if TYPE_CHECKING:
    from multilevel.lmm.results import LmerFit

ADJUSTMENTS = ("tukey", "holm", "bonferroni", "none")


@dataclass
class ReferenceGrid:
    """Grid points: per categorical factor the level index, per covariate its value."""

    factors: list[str]
    covariates: list[str]
    points: pd.DataFrame  # one row per grid point; factor columns hold level labels
    codes: dict[str, np.ndarray]
    X: np.ndarray  # fixed-effects rows of the grid points
    notes: list[str] = field(default_factory=list)


def reference_grid(fit: LmerFit, at: dict[str, Any] | None = None) -> ReferenceGrid:
    """The reference grid of ``fit`` (module docstring)."""
    design = fit.design
    at = dict(at or {})
    specs = design.factor_specs
    if design.offset is not None or design.formula.fixed.offsets:
        raise ModelError("marginal means of a model with an offset are not available")
    fixed_labels = list(dict.fromkeys(f for t in design.formula.fixed.terms for f in t))
    factors = [f for f in fixed_labels if specs[f].categorical]
    covs = list(design.covariate_means)
    if not covs and any(not specs[f].categorical for f in fixed_labels):
        raise ModelError(
            "this fit does not record its covariates' means (a partitioned fit); "
            "marginal means need an in-memory fit"
        )
    unknown = [k for k in at if k not in factors and k not in covs]
    if unknown:
        raise ModelError(
            f"at= names {unknown}, which are not variables of the fixed effects "
            f"(factors {factors}, covariates {covs})"
        )
    axes: list[list] = []
    for f in factors:
        labels = list(specs[f].labels)
        if f in at:
            want = [str(v) for v in np.atleast_1d(at[f])]
            bad = [v for v in want if v not in labels]
            if bad:
                raise ModelError(f"at= levels {bad} are not levels of {f!r} ({labels})")
            axes.append([labels.index(v) for v in want])
        else:
            axes.append(list(range(len(labels))))
    for c in covs:
        vals = np.atleast_1d(np.asarray(at.get(c, design.covariate_means[c]), dtype=float))
        axes.append(list(vals))
    # emmeans's order: the first variable varies fastest
    combos = [c[::-1] for c in itertools.product(*reversed(axes))]
    n = len(combos)
    arr = np.array(combos, dtype=object).reshape(n, len(axes))
    codes = {f: arr[:, i].astype(np.int64) for i, f in enumerate(factors)}
    frame = pd.DataFrame(
        {c: arr[:, len(factors) + i].astype(float) for i, c in enumerate(covs)}, index=range(n)
    )
    columns = [str(c) for c in frame.columns]
    values: dict[str, Any] = {}
    for f in fixed_labels:
        spec = specs[f]
        if spec.categorical:
            values[f] = Categorical(codes[f], spec.values, spec.labels)
        else:
            raw = evaluate_factor(spec.factor, frame, design.evaluator, columns)
            values[f] = Numeric(np.asarray(raw, dtype=float).reshape(n, -1), spec.suffixes or [""])
    X, _ = build_matrix(design.formula.fixed, values, n, design.xspec.codings)
    if design.xspec.keep is not None:
        X = X[:, design.xspec.keep]
    points = pd.DataFrame({f: [specs[f].labels[k] for k in codes[f]] for f in factors})
    for c in covs:
        points[c] = frame[c].to_numpy()
    return ReferenceGrid(factors, covs, points, codes, X)


def _interaction_note(design, specs: list[str]) -> str | None:
    for term in design.formula.fixed.terms:
        if len(term) > 1 and set(specs) & set(term):
            return "NOTE: Results may be misleading due to involvement in interactions"
    return None


class Emmeans:
    """Estimated marginal means (emmeans's ``emmGrid``): ``frame`` (the
    summary table), ``L`` (one row of fixed-effect weights per mean),
    ``pairs()``; printing shows the table and emmeans's notes."""

    def __init__(self, fit, specs: list[str], grid: ReferenceGrid, ddf: str, type: str,
                 level: float):  # fmt: skip
        self.fit, self.specs, self.grid, self.level, self.type = fit, specs, grid, level, type
        self.glmm = hasattr(fit, "family")
        self.ddf = "asymptotic" if self.glmm else ddf
        cells = pd.DataFrame({s: grid.points[s] for s in specs})
        keys = list(cells.itertuples(index=False, name=None))
        cell_of = {k: i for i, k in enumerate(dict.fromkeys(keys))}  # grid order
        order = list(cell_of)  # the first spec varies fastest
        idx = np.array([cell_of[k] for k in keys])
        counts = np.bincount(idx, minlength=len(order))
        L = np.zeros((len(order), grid.X.shape[1]))
        np.add.at(L, idx, grid.X)
        self.L = L / counts[:, None]
        self.cells = pd.DataFrame(order, columns=specs)
        self.beta = fit.fixef.to_numpy(dtype=float)
        self.V, self._df = _covariance_and_df(fit, self.ddf)
        self.notes = [n for n in [_interaction_note(fit.design, specs)] if n]

    # -- the table --------------------------------------------------------------------
    def _stats(self, L: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        est = L @ self.beta
        se = np.sqrt(np.einsum("ri,ij,rj->r", L, self.V, L))
        return est, se, self._df(L)

    @property
    def frame(self) -> pd.DataFrame:
        from scipy import stats  # scipy.stats costs 0.5 s to import: when used

        est, se, df = self._stats(self.L)
        q = stats.t.ppf(0.5 + self.level / 2, df)
        lo, hi = est - q * se, est + q * se
        out = self.cells.copy()
        lcl, ucl = ("asymp.LCL", "asymp.UCL") if self.glmm else ("lower.CL", "upper.CL")
        if self.type == "response" and self.glmm:
            link = self.fit.family.link
            mu = link.linkinv(est)
            out[_response_name(self.fit)] = mu
            out["SE"] = np.abs(link.mu_eta(est)) * se
            out["df"] = df
            out[lcl], out[ucl] = link.linkinv(lo), link.linkinv(hi)
        else:
            out["emmean"], out["SE"], out["df"], out[lcl], out[ucl] = est, se, df, lo, hi
        return out

    def messages(self) -> list[str]:
        out = list(self.notes)
        if not self.glmm:
            out.append(f"Degrees-of-freedom method: {self.ddf.lower()}")
        elif self.type != "response":
            out.append(
                f"Results are given on the {self.fit.family.link.name} (not the response) scale."
            )
        out.append(f"Confidence level used: {self.level:g}")
        if self.glmm and self.type == "response":
            out.append(f"Intervals are back-transformed from the {self.fit.family.link.name} scale")
        return out

    def __repr__(self) -> str:
        return self.frame.to_string(index=False) + "\n\n" + "\n".join(self.messages())

    def _repr_html_(self) -> str:
        notes = "".join(f"<p>{m}</p>" for m in self.messages())
        return self.frame.to_html(index=False) + notes

    # -- contrasts ----------------------------------------------------------------------
    def pairs(self, adjust: str = "tukey", type: str | None = None) -> pd.DataFrame:
        """Every pairwise difference of the means (emmeans's ``pairs``), with
        p-values adjusted by ``adjust`` ("tukey", "holm", "bonferroni", "none")."""
        from scipy import stats  # scipy.stats costs 0.5 s to import: when used

        adj = adjust.lower()
        if adj not in ADJUSTMENTS:
            raise ModelError(f"adjust must be one of {ADJUSTMENTS}, not {adjust!r}")
        kind = self.type if type is None else type
        labels = self._cell_labels()
        k = len(labels)
        if k < 2:
            raise ModelError("pairs needs at least two marginal means")
        ij = list(itertools.combinations(range(k), 2))
        C = np.array([self.L[i] - self.L[j] for i, j in ij])
        est, se, df = self._stats(C)
        ratio = est / se
        if adj == "tukey" and k > 2:
            p = stats.studentized_range.sf(np.abs(ratio) * math.sqrt(2), k, df)
            # far in the tail the numerical integral loses its digits (0 or a floor
            # near 1e-14); there the union bound over the pairs is sharp
            union = np.minimum(1.0, len(ij) * 2 * stats.t.sf(np.abs(ratio), df))
            p = np.where(p < 1e-10, union, p)
            note = f"P value adjustment: tukey method for comparing a family of {k} estimates"
        else:
            p = 2 * stats.t.sf(np.abs(ratio), df)
            m = len(p)
            if adj == "bonferroni" and m > 1:
                p = np.minimum(1.0, m * p)
                note = f"P value adjustment: bonferroni method for {m} tests"
            elif adj == "holm" and m > 1:
                order = np.argsort(p)
                stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
                p = np.empty(m)
                p[order] = np.minimum(1.0, stepped)
                note = f"P value adjustment: holm method for {m} tests"
            else:
                note = None
        out = pd.DataFrame()
        sep = " - "
        zname = "z.ratio" if self.glmm else "t.ratio"
        if kind == "response" and self.glmm:
            name = {"logit": "odds.ratio", "log": "ratio"}.get(self.fit.family.link.name)
            if name is None:
                raise ModelError(
                    f"pairs on the response scale need a log or logit link, not "
                    f"{self.fit.family.link.name}; use type='link'"
                )
            sep = " / "
            r = np.exp(est)
            out["contrast"] = [labels[i] + sep + labels[j] for i, j in ij]
            out[name], out["SE"], out["df"], out["null"] = r, r * se, df, 1.0
        else:
            out["contrast"] = [labels[i] + sep + labels[j] for i, j in ij]
            out["estimate"], out["SE"], out["df"] = est, se, df
        out[zname] = ratio
        out["p.value"] = p
        out.attrs["notes"] = [note] if note else []
        return out

    def _cell_labels(self) -> list[str]:
        """emmeans's labels: the levels, prefixed by the factor's name where
        the levels are numbers; several factors joined by spaces."""
        parts = []
        for s in self.specs:
            col = [str(v) for v in self.cells[s]]
            numeric = all(_is_number(v) for v in col)
            parts.append([f"{s}{v}" if numeric else v for v in col])
        return [" ".join(p) for p in zip(*parts, strict=True)]


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _response_name(fit) -> str:
    fam, link = fit.family.name, fit.family.link.name
    if fam == "binomial":
        return "prob"
    if fam in ("poisson", "negative_binomial") and link == "log":
        return "rate"
    return "response"


def _covariance_and_df(fit, ddf: str):
    """(V, df(L)) for the DF method: asymptotic, Satterthwaite or Kenward–Roger."""
    from multilevel.inference.ddf import _check_ddf, kenward_roger, kr_ddf, satterthwaite_df

    if ddf == "asymptotic":
        V = fit.vcov.to_numpy(dtype=float)
        return V, lambda L: np.full(L.shape[0], np.inf)
    method = _check_ddf(ddf)
    if method == "Kenward-Roger":
        kr = kenward_roger(fit)
        return kr.vcov_adj, lambda L: np.array([kr_ddf(kr, row)[0] for row in L])
    V = fit.vcov.to_numpy(dtype=float)
    if method == "Satterthwaite":
        return V, lambda L: np.asarray(satterthwaite_df(fit, L), dtype=float)
    return V, lambda L: np.full(L.shape[0], np.inf)


def emmeans(
    fit: LmerFit,
    specs: str | list[str],
    at: dict[str, Any] | None = None,
    ddf: str = "Kenward-Roger",
    type: str = "link",
    level: float = 0.95,
) -> Emmeans:
    """Estimated marginal means of ``fit`` for each level combination of
    ``specs`` (factor names, or covariates given values in ``at``), averaged
    with equal weights over the reference grid (module docstring).  ``ddf``
    for an LMM: "Kenward-Roger" (emmeans's default; REML fits),
    "Satterthwaite" or "none" (asymptotic); a GLMM's are asymptotic.
    ``type="response"`` back-transforms a GLMM's means."""
    if hasattr(fit, "thresholds"):
        raise ModelError("marginal means of an ordinal model are not available")
    if type not in ("link", "response"):
        raise ModelError(f"type must be 'link' or 'response', not {type!r}")
    if not 0 < level < 1:
        raise ModelError(f"level must be between 0 and 1, not {level}")
    spec_list = [specs] if isinstance(specs, str) else list(specs)
    if not spec_list:
        raise ModelError("specs names no variable")
    grid = reference_grid(fit, at)
    for s in spec_list:
        if s not in grid.factors and s not in grid.covariates:
            raise ModelError(
                f"{s!r} is not a variable of the fixed effects (factors {grid.factors}, "
                f"covariates {grid.covariates})"
            )
    return Emmeans(fit, spec_list, grid, ddf, type, level)


__all__ = ["ADJUSTMENTS", "Emmeans", "ReferenceGrid", "emmeans", "reference_grid"]
