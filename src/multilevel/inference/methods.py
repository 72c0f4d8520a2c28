"""The inference tools as methods of a fitted LMM or GLMM (one-line
conveniences: ``fit.confint()`` is ``confint(fit)``), written once for both
fit classes."""

from __future__ import annotations

from typing import Any

import pandas as pd


class InferenceMethods:
    """confint, profile, bootstrap, ranova, the one-model anova table,
    emmeans, r2_nakagawa and icc of the fit."""

    def confint(self, method: str = "profile", level: float = 0.95, **kw: Any) -> pd.DataFrame:
        """Confidence intervals: "profile" (likelihood), "wald" or "boot"."""
        from multilevel.inference.profile import confint

        return confint(self, method=method, level=level, **kw)

    def profile(self, **kw: Any):
        """Likelihood profiles (ζ traces) of the variance parameters and β."""
        from multilevel.inference.profile import profile

        return profile(self, **kw)

    def bootstrap(self, nsim: int = 500, seed: int | None = None, **kw: Any):
        """Parametric bootstrap: simulate, refit (warm-started), collect a statistic."""
        from multilevel.inference.bootstrap import bootstrap

        return bootstrap(self, nsim, seed=seed, **kw)

    def ranova(self) -> pd.DataFrame:
        """Likelihood-ratio tests of each random-effects term (lmerTest's ranova)."""
        from multilevel.inference.anova import ranova

        return ranova(self)

    def anova(self, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """The type-III table: lmerTest's F tests, or car's Wald χ² for a GLMM."""
        from multilevel.inference.anova import anova

        return anova(self, ddf=ddf)

    def emmeans(self, specs: str | list[str], **kw: Any):
        """Estimated marginal means over the reference grid (R's emmeans)."""
        from multilevel.inference.emmeans import emmeans

        return emmeans(self, specs, **kw)

    def r2_nakagawa(self) -> pd.Series:
        """Marginal and conditional R² (Nakagawa & Schielzeth)."""
        from multilevel.inference.r2 import r2_nakagawa

        return r2_nakagawa(self)

    def icc(self) -> pd.Series:
        """Adjusted and unadjusted intraclass correlation."""
        from multilevel.inference.r2 import icc

        return icc(self)
