"""multilevel: hierarchical (multilevel) and mixed-effects models.

Public API::

    from multilevel import lmer
    fit = lmer("mathach ~ meanses*cses + sector*cses + (cses | school)", data)
    print(fit.summary())

The public names are loaded on first use (PEP 562): ``import multilevel`` costs
the error classes only, and the engines, pandas and scipy arrive with the first
name that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

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

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    **dict.fromkeys(("clmm", "glmer", "glmer_nb", "lmer"), "multilevel.api"),
    **dict.fromkeys(("parse_formula",), "multilevel.formula.parser"),
    **dict.fromkeys(("ClmmFit",), "multilevel.glmm.clmm_results"),
    **dict.fromkeys(
        (
            "Family",
            "Gamma",
            "beta_family",
            "binomial",
            "inverse_gaussian",
            "negative_binomial",
            "poisson",
        ),
        "multilevel.glmm.families",
    ),
    **dict.fromkeys(("GlmerFit", "loglik_mc"), "multilevel.glmm.results"),
    **dict.fromkeys(
        (
            "BootResult",
            "Emmeans",
            "Profile",
            "anova",
            "bootstrap",
            "coef_table",
            "confint",
            "contrast",
            "emmeans",
            "icc",
            "profile",
            "r2_nakagawa",
            "ranova",
            "refit_ml",
            "simulate",
        ),
        "multilevel.inference",
    ),
    **dict.fromkeys(("LmerFit",), "multilevel.lmm.results"),
    **dict.fromkeys(
        (
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
        ),
        "multilevel.longitudinal.correlation",
    ),
    **dict.fromkeys(
        ("varComb", "varConstPower", "varExp", "varFixed", "varIdent", "varPower"),
        "multilevel.longitudinal.variance",
    ),
    **dict.fromkeys(("GlsFit", "gls"), "multilevel.workflow.gls"),
    **dict.fromkeys(
        ("add_centered", "attach_level2", "center_grand", "center_within", "group_mean"),
        "multilevel.workflow.groups",
    ),
    **dict.fromkeys(("Multilevel", "MultilevelFit"), "multilevel.workflow.hlm"),
    **dict.fromkeys(("LmList", "lmList"), "multilevel.workflow.lmlist"),
    **dict.fromkeys(("LmeFit", "lme", "lme_from_formula"), "multilevel.workflow.nlme"),
}
_SUBMODULES = ("datasets", "plotting")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in _SUBMODULES or not name.startswith("_"):
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists but needs something not installed
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    *_SUBMODULES,
    *_LAZY,
    "ConvergenceWarning",
    "DataError",
    "DataWarning",
    "FormulaError",
    "ModelError",
    "MultilevelError",
    "RankDeficiencyWarning",
    "SingularFitWarning",
]
