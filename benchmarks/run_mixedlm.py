"""Runner for ``mixedlm`` (PyPI; Rust core). Run under the benchmark venv.

API used: ``mixedlm.lmer(formula, df, REML=reml)`` (``reml`` from the case); evaluations
``LmerResult.function_evals`` (the optimizer's nfev; with the default
exact-gradient L-BFGS-B one evaluation gives value and gradient), criterion
``LmerResult.REMLcrit()`` (the REML criterion of a REML fit, the deviance of an
ML fit: the objective minimised).
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

import pandas as pd
import runner_common


def fit(formula: str, df: pd.DataFrame, reml: bool) -> object:
    import mixedlm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mixedlm.lmer(formula, df, REML=reml)


def info(m: object) -> runner_common.FitInfo:
    return runner_common.FitInfo(
        evals=int(m.function_evals),
        criterion=float(m.REMLcrit()),
        converged=bool(m.converged),
        note=f"optimizer {m.optimizer}",
    )


if __name__ == "__main__":
    runner_common.main(lambda: f"mixedlm {version('mixedlm')}", fit, info)
