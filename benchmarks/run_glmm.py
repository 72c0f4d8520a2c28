"""Runner for ``glmm`` (PyPI; Rust core). Run under the benchmark venv.

API used: ``glmm.fit(df, formula, reml=reml)`` (``reml`` from the case);
evaluations ``Fit.n_eval`` (objective evaluations; gradient evaluations
``Fit.n_grad`` are reported in the note), criterion ``-2 * Fit.loglik`` (the
REML criterion of a REML fit, the deviance of an ML fit).
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

import pandas as pd
import runner_common


def fit(formula: str, df: pd.DataFrame, reml: bool) -> object:
    import glmm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return glmm.fit(df, formula, reml=reml)


def info(m: object) -> runner_common.FitInfo:
    return runner_common.FitInfo(
        evals=int(m.n_eval),
        criterion=-2.0 * float(m.loglik),
        converged=bool(m.converged),
        note=f"+{m.n_grad} gradient evals" if m.n_grad else "",
    )


if __name__ == "__main__":
    runner_common.main(lambda: f"glmm {version('glmm')}", fit, info)
