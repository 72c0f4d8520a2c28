"""multilevel: hierarchical (multilevel) and mixed-effects models.

Public API::

    from multilevel import lmer
    fit = lmer("mathach ~ meanses*cses + sector*cses + (cses | school)", data)
    print(fit.summary())
"""

from multilevel import datasets, plotting
from multilevel.api import clmm, glmer, glmer_nb, lmer
from multilevel.errors import (
    ConvergenceWarning,
    DataError,
    DataWarning,
    FormulaError,
    ModelError,
    MultilevelError,
    RankDeficiencyWarning,
    SingularFitWarning,
)
from multilevel.formula.parser import parse_formula
from multilevel.glmm.clmm_results import ClmmFit
from multilevel.glmm.families import (
    Family,
    Gamma,
    beta_family,
    binomial,
    inverse_gaussian,
    negative_binomial,
    poisson,
)
from multilevel.glmm.results import GlmerFit, loglik_mc
from multilevel.inference import (
    BootResult,
    Emmeans,
    Profile,
    anova,
    bootstrap,
    coef_table,
    confint,
    contrast,
    emmeans,
    icc,
    profile,
    r2_nakagawa,
    ranova,
    refit_ml,
    simulate,
)
from multilevel.lmm.results import LmerFit
from multilevel.longitudinal.correlation import (
    corAR1,
    corARMA,
    corCAR1,
    corCompSymm,
    corExp,
    corGaus,
    corLin,
    corRatio,
    corSpher,
    corSymm,
)
from multilevel.longitudinal.variance import (
    varComb,
    varConstPower,
    varExp,
    varFixed,
    varIdent,
    varPower,
)
from multilevel.workflow.gls import GlsFit, gls
from multilevel.workflow.groups import (
    add_centered,
    attach_level2,
    center_grand,
    center_within,
    group_mean,
)
from multilevel.workflow.hlm import Multilevel, MultilevelFit
from multilevel.workflow.lmlist import LmList, lmList
from multilevel.workflow.nlme import LmeFit, lme, lme_from_formula

__version__ = "0.1.0"

__all__ = [
    "plotting",
    "Family",
    "Gamma",
    "ClmmFit",
    "GlmerFit",
    "beta_family",
    "binomial",
    "clmm",
    "glmer",
    "glmer_nb",
    "inverse_gaussian",
    "loglik_mc",
    "negative_binomial",
    "poisson",
    "BootResult",
    "Emmeans",
    "Profile",
    "anova",
    "emmeans",
    "icc",
    "r2_nakagawa",
    "bootstrap",
    "coef_table",
    "confint",
    "contrast",
    "profile",
    "ranova",
    "refit_ml",
    "simulate",
    "Multilevel",
    "MultilevelFit",
    "LmeFit",
    "lme",
    "gls",
    "GlsFit",
    "corAR1",
    "corARMA",
    "corCAR1",
    "corCompSymm",
    "corExp",
    "corGaus",
    "corLin",
    "corRatio",
    "corSpher",
    "corSymm",
    "varComb",
    "varConstPower",
    "varExp",
    "varFixed",
    "varIdent",
    "varPower",
    "lme_from_formula",
    "LmList",
    "add_centered",
    "attach_level2",
    "center_grand",
    "center_within",
    "group_mean",
    "lmList",
    "ConvergenceWarning",
    "DataError",
    "DataWarning",
    "FormulaError",
    "LmerFit",
    "ModelError",
    "MultilevelError",
    "RankDeficiencyWarning",
    "SingularFitWarning",
    "datasets",
    "lmer",
    "parse_formula",
]
