"""Inference for mixed models: one import for the tools in

* :mod:`multilevel.inference.ddf` — Satterthwaite and Kenward–Roger denominator DF,
  ``coef_table`` (summary with df and p-values), ``contrast`` (linear
  combinations, joint F tests), ``vcov_kr``;
* :mod:`multilevel.inference.anova` — likelihood-ratio tests ``anova`` (with the ML
  refit lme4 does, ``refit_ml``) and ``ranova`` (random-effects terms), with a
  boundary-corrected p-value;
* :mod:`multilevel.inference.profile` — likelihood profiles and ``confint`` (profile,
  Wald, bootstrap);
* :mod:`multilevel.inference.bootstrap` — ``simulate`` and the parametric ``bootstrap``;
* :mod:`multilevel.inference.type3` — the single-model type-III tables of ``anova(fit)``;
* :mod:`multilevel.inference.r2` — Nakagawa's ``r2_nakagawa`` and ``icc``;
* :mod:`multilevel.inference.emmeans` — estimated marginal means and their ``pairs``.

Every function takes a fitted model first (an LMM, and where the
mathematics allows a GLMM).
"""

from multilevel.inference.anova import anova, boundary_pvalue, ranova, refit_ml
from multilevel.inference.bootstrap import BootResult, bootstrap, default_statistic, simulate
from multilevel.inference.ddf import coef_table, contrast, kenward_roger, satterthwaite_df, vcov_kr
from multilevel.inference.emmeans import Emmeans, emmeans
from multilevel.inference.profile import Profile, confint, profile
from multilevel.inference.r2 import icc, r2_nakagawa

__all__ = [
    "BootResult",
    "Emmeans",
    "emmeans",
    "icc",
    "r2_nakagawa",
    "Profile",
    "anova",
    "boundary_pvalue",
    "bootstrap",
    "coef_table",
    "confint",
    "contrast",
    "default_statistic",
    "kenward_roger",
    "profile",
    "ranova",
    "refit_ml",
    "satterthwaite_df",
    "simulate",
    "vcov_kr",
]
