"""What every fitted mixed model shares: variance components, random effects
per grouping factor, boundary (singular) fits.

A subclass provides ``design`` (:class:`multilevel.formula.design.Design`), the
relative covariance templates ``_templates`` (one q_k x q_k lower-triangular
T_k per term) and their entries ``_theta_values``, the conditional modes
``_b`` (per term, (n_k, q_k)), their conditional covariances ``condvar``,
``fixef``, ``optinfo`` and ``sigma``.  Var(b) = σ² T_k T_kᵀ per level for an
LMM (σ the residual standard deviation) and T_k T_kᵀ for a GLMM (whose
``sigma`` is its family's dispersion, 1 for binomial and Poisson).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from multilevel.covariance import sd_corr, templates, theta_names
from multilevel.errors import ConvergenceWarning, SingularFitWarning, warn
from multilevel.optimize.bounds import BOUNDARY_TOL


class MixedModelFit:
    """Accessors shared by :class:`LmerFit` and :class:`GlmerFit`."""

    _has_residual: bool = True  # an LMM's varcorr ends with the residual row

    @property
    def theta(self) -> pd.Series:
        """Relative covariance factors' lower triangles (lme4's ``getME(, "theta")``)."""
        names: list[str] = []
        for r in self.design.random:
            names.extend(theta_names(r.name, r.cnames))
        return pd.Series(self._theta_values, index=names, name="theta")

    @property
    def ngroups(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.design.random:
            out.setdefault(r.name, r.nlevels)
        return out

    @property
    def converged(self) -> bool:
        return self.optinfo.converged

    # -- variance components -------------------------------------------------------
    def _varcorr_blocks(self) -> list[tuple[str, list[str], np.ndarray]]:
        """Per term: (printed group name, columns, correlation matrix); repeated
        group names get lme4's suffixes ".1", ".2"."""
        seen: dict[str, int] = {}
        out = []
        for r, T in zip(self.design.random, self._templates, strict=True):
            k = seen.get(r.name, 0)
            seen[r.name] = k + 1
            _, corr = sd_corr(T @ T.T)
            out.append((r.name if k == 0 else f"{r.name}.{k}", r.cnames, corr))
        return out

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """Variances and covariances as lme4's ``as.data.frame(VarCorr(fit))``:
        columns grp, var1, var2, vcov, sdcor (a correlation in covariance rows);
        LMMs end with the Residual row."""
        rows = []
        # a GLMM's templates are its covariance factors: its ``sigma`` (a family's
        # dispersion, as glmmTMB's) scales nothing
        scale = self.sigma if self._has_residual else 1.0
        with np.errstate(over="ignore", under="ignore"):  # σ in units of 1e±200
            s2 = float(np.float64(scale) ** 2)
        for (name, cnames, _), T in zip(self._varcorr_blocks(), self._templates, strict=True):
            with np.errstate(over="ignore", under="ignore", invalid="ignore"):
                cov = s2 * (T @ T.T)
            sd, corr = sd_corr(T @ T.T)
            sd = scale * sd  # from the relative factor: no σ² under- or overflow
            for i, cn in enumerate(cnames):
                rows.append((name, cn, None, cov[i, i], sd[i]))
            for i in range(len(cnames)):
                for j in range(i + 1, len(cnames)):
                    rows.append((name, cnames[i], cnames[j], cov[i, j], corr[i, j]))
        if self._has_residual:
            rows.append(("Residual", None, None, s2, self.sigma))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    # -- boundary fits -------------------------------------------------------------
    @property
    def _boundary_templates(self) -> list[np.ndarray]:
        """The templates in which a zero variance is judged: those of the
        engine's centred and scaled basis where it has one (a tolerance on θ
        then means the same in any units), else the fit's own."""
        internal = getattr(self.optinfo, "internal_theta", None)
        if internal is None:
            return self._templates
        return [T.matrix(internal) for T in templates([r.q for r in self.design.random])]

    @cached_property
    def _boundary(self) -> list[str]:
        msgs = []
        for r, T in zip(self.design.random, self._boundary_templates, strict=True):
            for j in range(r.q):
                if abs(T[j, j]) < BOUNDARY_TOL:
                    if j == 0 or r.q == 1:
                        what = f"the variance of {r.cnames[j]!r} is estimated as 0"
                    else:
                        what = (
                            f"{r.cnames[j]!r} is perfectly correlated with the earlier "
                            "columns (a correlation of ±1 or a zero variance)"
                        )
                    msgs.append(f"{r.term.text}: {what}")
        return msgs

    @property
    def singular(self) -> bool:
        """Boundary (singular) fit: some random-effects covariance matrix is singular."""
        return bool(self._boundary)

    @property
    def singular_message(self) -> str:
        if not self._boundary:
            return ""
        return "boundary (singular) fit: " + "; ".join(self._boundary)

    # -- random effects ------------------------------------------------------------
    def _by_group(self, blocks: list[np.ndarray]) -> dict[str, pd.DataFrame]:
        """Per-term arrays (n_k, q_k) as DataFrames per grouping factor, the
        terms of one factor side by side (as lme4's ranef)."""
        out: dict[str, pd.DataFrame] = {}
        for r, b in zip(self.design.random, blocks, strict=True):
            df = pd.DataFrame(b, index=pd.Index(r.levels, name=r.name), columns=r.cnames)
            if r.name in out:
                df.columns = [c if c not in out[r.name].columns else f"{c}.1" for c in df.columns]
                df = pd.concat([out[r.name], df], axis=1)
            out[r.name] = df
        return out

    @cached_property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes b̂ per grouping factor: DataFrames indexed by level
        (the linear-predictor scale for GLMMs)."""
        return self._by_group(self._b)

    @cached_property
    def ranef_condsd(self) -> dict[str, pd.DataFrame]:
        """Conditional standard deviations of the random effects, laid out as ranef."""
        return self._by_group([np.sqrt(np.diagonal(v, axis1=1, axis2=2)) for v in self.condvar])

    @cached_property
    def coef(self) -> dict[str, pd.DataFrame]:
        """Per grouping factor: fixed effects plus that factor's random effects."""
        out = {}
        fe = self.fixef
        for g, re in self.ranef.items():
            df = pd.DataFrame(
                np.tile(fe.to_numpy(), (len(re), 1)), index=re.index, columns=fe.index
            )
            for c in re.columns:
                df[c] = df[c] + re[c] if c in df.columns else re[c]
            out[g] = df
        return out


def warn_about(fit: MixedModelFit) -> None:
    """The end of every fit: the optimiser's convergence problems, standard
    errors that are only conditional on θ (GLMMs) and a boundary fit, as
    warnings pointing at the user's call (they are also kept on the fit and
    printed in its summary)."""
    for msg in fit.optinfo.messages:
        warn(msg, ConvergenceWarning)
    if getattr(fit, "vcov_note", "hessian") not in ("hessian", "conditional"):
        warn(fit.vcov_message, ConvergenceWarning)
    if fit.singular:
        warn(fit.singular_message, SingularFitWarning)
