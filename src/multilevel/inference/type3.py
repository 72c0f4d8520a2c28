"""Type-III hypotheses and tables for one fitted model.

For a fixed-effects term T (factors A_T, covariates C_T) the type-III
hypothesis is the effect of T averaged with equal weights over the levels
of every factor not in T, with every covariate not in T at 0 — SAS's type-III
hypotheses, which lmerTest's ``anova(type = 3)`` computes; they do not depend
on the contrasts the columns were coded with.  Concretely, with cells the
combinations of levels of all factors in the fixed part, and a column j of
term U coded c_j(cell) (its indicator product; covariates enter as
coefficients, not values):

    m_T(cell) = (c_j(cell) if covariates(U_j) = C_T else 0)_j,   per covariate column
    L_T = K_T · mean over the factors not in T of m_T,

where K_T holds the interaction contrasts of the factors in A_T (successive
differences, Kronecker products; one row when A_T is empty).  Lower-order
terms drop out under K_T, higher-order terms with further factors enter
averaged, and those with further covariates vanish at 0.  L_T is reduced to
independent rows (its rank is the term's NumDF).

``type3_table`` (an LMM): F = (L β̂)ᵀ(L V Lᵀ)⁻¹(L β̂)/k with Satterthwaite
(lmerTest's split along the eigenvectors of LVLᵀ) or Kenward–Roger DF;
Sum Sq = F·k·σ̂², Mean Sq = Sum Sq/k, as lmerTest prints.  ``wald_chisq_table``
(a GLMM): the type-III Wald χ² of car::Anova, which tests each term's own
columns (the intercept included), χ² = (β̂_T)ᵀ V_T⁻¹ β̂_T on rank(V_T) DF.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multilevel.errors import ModelError

if TYPE_CHECKING:
    from multilevel.lmm.results import LmerFit

MAX_CELLS = 100_000  # combinations of factor levels averaged over


def _columns(design) -> list[tuple[int, tuple[str, ...], dict[str, int], tuple[int, ...]]]:
    """Per model column (before aliased ones are dropped): its term index (−1:
    intercept), the term, the level index of each factor in it and the
    suffix index of each covariate column, in build_matrix's order (the
    first factor varies fastest)."""
    xs, specs = design.xspec, design.factor_specs
    out = []
    if xs.intercept:
        out.append((-1, (), {}, ()))
    for t, (term, coding) in enumerate(zip(xs.terms, xs.codings, strict=True)):
        choices = []
        for f, c in zip(term, coding, strict=True):
            spec = specs[f]
            if c == "num":
                choices.append(range(len(spec.suffixes or [""])))
            else:
                choices.append(range(1 if c == "contrast" else 0, len(spec.labels)))
        # R's order: the first factor fastest
        for combo in itertools.product(*reversed(choices)):
            combo = combo[::-1]
            levels = {f: k for f, c, k in zip(term, coding, combo, strict=True) if c != "num"}
            sufs = tuple(k for c, k in zip(coding, combo, strict=True) if c == "num")
            out.append((t, term, levels, sufs))
    return out


def _covariates(design, term: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f for f in term if not design.factor_specs[f].categorical)


def _successive_differences(n: int) -> np.ndarray:
    K = np.zeros((n - 1, n))
    K[np.arange(n - 1), np.arange(n - 1)] = -1.0
    K[np.arange(n - 1), np.arange(1, n)] = 1.0
    return K


def type3_hypotheses(design, names: list[str]) -> dict[str, np.ndarray]:
    """{term label: L (k x p)} over the kept columns ``names`` (module docstring)."""
    xs, specs = design.xspec, design.factor_specs
    cols = _columns(design)
    if len(cols) != len(xs.names):
        raise ModelError("the fixed-effects columns could not be matched to their terms")
    keep = np.ones(len(cols), dtype=bool) if xs.keep is None else np.asarray(xs.keep, dtype=bool)
    factors = [f for f in dict.fromkeys(f for term in xs.terms for f in term)
               if specs[f].categorical]  # fmt: skip
    nlev = [len(specs[f].labels) for f in factors]
    ncells = int(np.prod(nlev)) if nlev else 1
    if ncells > MAX_CELLS:
        raise ModelError(
            f"type-III hypotheses average over {ncells} combinations of factor levels "
            f"(limit {MAX_CELLS}); test the terms with contrast(fit, L, joint=True)"
        )
    grid = np.array(list(itertools.product(*[range(n) for n in nlev])), dtype=int).reshape(
        ncells, len(factors)
    )
    out: dict[str, np.ndarray] = {}
    for term in xs.terms:
        cov_t = _covariates(design, term)
        a_t = [f for f in term if specs[f].categorical]
        sufs_t = [range(len(specs[f].suffixes or [""])) for f in cov_t]
        rows = []
        for suf in itertools.product(*sufs_t):
            # m(cell): the coding of every column whose covariates are exactly T's
            M = np.zeros((ncells, len(cols)))
            for j, (u, uterm, levels, usuf) in enumerate(cols):
                uterm_cov = _covariates(design, uterm) if u >= 0 else ()
                if set(uterm_cov) != set(cov_t):
                    continue
                if tuple(usuf[uterm_cov.index(f)] for f in cov_t) != tuple(suf):
                    continue
                ind = np.ones(ncells)
                for f, k in levels.items():
                    ind = ind * (grid[:, factors.index(f)] == k)
                M[:, j] = ind
            # average over the factors not in T, then contrasts over T's factors
            idx = [factors.index(f) for f in a_t]
            shape = [nlev[factors.index(f)] for f in a_t]
            cell_t = np.ravel_multi_index(grid[:, idx].T, shape) if idx else np.zeros(ncells, int)
            nt = int(np.prod(shape)) if shape else 1
            A = np.zeros((nt, len(cols)))
            np.add.at(A, cell_t, M)
            A /= np.bincount(cell_t, minlength=nt)[:, None]
            K = np.ones((1, 1))
            for n in shape:  # C order: the first of T's factors varies slowest, as in kron
                K = np.kron(K, _successive_differences(n))
            rows.append(K @ A)
        L = np.vstack(rows)[:, keep]
        L = _independent_rows(L)
        if L.shape[0]:
            out[":".join(term)] = L
    return out


def _independent_rows(L: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """A basis of L's row space (rows of Rᵀ from a pivoted QR, scaled back)."""
    if L.size == 0:
        return L
    U, s, Vt = np.linalg.svd(L, full_matrices=False)
    r = int(np.sum(s > tol * max(s.max(), 1.0)))
    if r == L.shape[0]:
        return L
    return s[:r, None] * Vt[:r]


def type3_table(fit: LmerFit, ddf: str = "Satterthwaite") -> pd.DataFrame:
    """lmerTest's ``anova(fit, type = 3, ddf = ...)`` (module docstring)."""
    from multilevel.inference.ddf import _check_ddf, contrast

    method = _check_ddf(ddf)
    if method == "none":
        raise ModelError("a type-III F table needs ddf='Satterthwaite' or 'Kenward-Roger'")
    names = list(fit.fixef.index)
    hyp = type3_hypotheses(fit.design, names)
    s2 = fit.sigma**2
    rows = []
    for L in hyp.values():
        t = contrast(fit, L, ddf=method, joint=True).iloc[0]
        k = int(t["NumDF"])
        ss = float(t["F value"]) * k * s2
        rows.append([ss, ss / k, k, t["DenDF"], t["F value"], t["Pr(>F)"]])
    cols = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
    out = pd.DataFrame(rows, index=list(hyp), columns=cols)
    out["NumDF"] = out["NumDF"].astype(int)
    method_word = "Satterthwaite's" if method == "Satterthwaite" else "Kenward-Roger's"
    out.attrs["heading"] = f"Type III Analysis of Variance Table with {method_word} method"
    return out


def wald_chisq_table(fit) -> pd.DataFrame:
    """car::Anova(fit, type = 3) for a GLMM: each term's columns tested at 0."""
    from scipy import stats  # scipy.stats costs 0.5 s to import: when used

    design = fit.design
    xs = design.xspec
    cols = _columns(design)
    keep = np.ones(len(cols), dtype=bool) if xs.keep is None else np.asarray(xs.keep, dtype=bool)
    term_of = np.array([c[0] for c in cols])[keep]
    beta = fit.fixef.to_numpy(dtype=float)
    V = fit.vcov.to_numpy(dtype=float)
    labels = (["(Intercept)"] if xs.intercept else []) + [":".join(t) for t in xs.terms]
    ids = ([-1] if xs.intercept else []) + list(range(len(xs.terms)))
    rows, index = [], []
    for label, t in zip(labels, ids, strict=True):
        sel = np.flatnonzero(term_of == t)
        if sel.size == 0:
            continue
        Vt = V[np.ix_(sel, sel)]
        w, U = np.linalg.eigh(Vt)
        ok = w > 1e-10 * max(w.max(), 0.0)
        z = U[:, ok].T @ beta[sel]
        chisq = float(np.sum(z**2 / w[ok]))
        df = int(ok.sum())
        rows.append([chisq, df, stats.chi2.sf(chisq, df)])
        index.append(label)
    out = pd.DataFrame(rows, index=index, columns=["Chisq", "Df", "Pr(>Chisq)"])
    out["Df"] = out["Df"].astype(int)
    out.attrs["heading"] = "Analysis of Deviance Table (Type III Wald chisquare tests)"
    return out


__all__ = ["type3_hypotheses", "type3_table", "wald_chisq_table"]
