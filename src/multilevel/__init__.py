"""multilevel: hierarchical (multilevel) and mixed-effects models.

Public API::

    from multilevel import lmer
    fit = lmer("mathach ~ meanses*cses + sector*cses + (cses | school)", data)
    print(fit.summary())
"""

from . import datasets, plotting
from .errors import (
    ConvergenceWarning,
    DataError,
    FormulaError,
    ModelError,
    MultilevelError,
    SingularFitWarning,
)
from .families import Family, binomial, poisson
from .formula import parse_formula
from .glmm import glmer
from .glmm_results import GlmerFit
from .groups import add_centered, attach_level2, center_grand, center_within, group_mean
from .inference import (
    BootResult,
    Profile,
    anova,
    bootstrap,
    coef_table,
    confint,
    contrast,
    profile,
    ranova,
    refit_ml,
    simulate,
)
from .levels import Multilevel, MultilevelFit
from .lmlist import LmList, lmList
from .models import lmer
from .montecarlo import loglik_mc
from .nlme import LmeFit, lme, lme_from_formula
from .results import LmerFit

__version__ = "0.1.0"

__all__ = [
    "plotting",
    "Family",
    "GlmerFit",
    "binomial",
    "glmer",
    "loglik_mc",
    "poisson",
    "BootResult",
    "Profile",
    "anova",
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
    "FormulaError",
    "LmerFit",
    "ModelError",
    "MultilevelError",
    "SingularFitWarning",
    "datasets",
    "lmer",
    "parse_formula",
]
