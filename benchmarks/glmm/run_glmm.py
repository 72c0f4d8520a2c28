"""Runner for ``glmm`` (PyPI; Rust core). Run under the benchmark venv.

API used:

    glmm.fit(df, formula, family="binomial" | "poisson", nagq=K)
    glmm.fit(df, formula, family="negativebinomial", link="log", nagq=K)   # negative_binomial
    glmm.fit(df, formula, family="gamma", link="log", nagq=K)              # Gamma(log)

(the case's family mapped by ``FAMILIES``; the ``"ordinal"`` clmm cases are
marked unsupported in ``run.py``: glmm 0.6.2 has no cumulative link model).
Negative binomial: NB2, the shape θ estimated (``Fit.dispersion`` is θ̂);
Gamma: the dispersion φ = 1/shape estimated, by maximum likelihood on a GLMM
(glmm's docstrings; its reported log-likelihood then equals −deviance/2).

``nagq`` is the number of adaptive Gauss–Hermite nodes (odd, 1..25; 1 =
Laplace; > 1 only for a single grouping factor).  A binomial response with
trials is ``cbind(successes, failures)`` with two *column names* (no
expressions), hence the ``fail`` column of the prepared cbpp data.  All other
arguments are left at their defaults (``wald_se="hessian"``,
``anova_test="auto"``).  Reported: ``Fit.loglik`` (the full marginal
log-likelihood, density constants included, also for nagq > 1 — checked on
cbpp, where the constant is −41.98), evaluations ``Fit.n_eval`` (gradient
evaluations ``Fit.n_grad`` in the note).
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

import cases
import common
import pandas as pd

# case family (multilevel's spelling) -> glmm's family and link (None: its default)
FAMILIES = {
    "binomial": ("binomial", None),
    "poisson": ("poisson", None),
    "negative_binomial": ("negativebinomial", "log"),
    "Gamma(log)": ("gamma", "log"),
}


def fit(case: cases.Case, df: pd.DataFrame) -> object:
    import glmm

    family, link = FAMILIES[case.family]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = glmm.fit(df, case.formula_for("glmm"), family=family, link=link, nagq=case.nagq)
    common.LAST_WARNINGS[:] = [str(w.message) for w in caught]
    return m


def info(case: cases.Case, m) -> common.FitInfo:
    if m.nagq != case.nagq:
        raise RuntimeError(f"glmm ran nagq={m.nagq}, not {case.nagq}")
    return common.FitInfo(
        evals=int(m.n_eval),
        loglik_reported=float(m.loglik),
        loglik_full=float(m.loglik),
        fixef=dict(zip(m.names, map(float, m.beta), strict=True)),
        converged=bool(m.converged),
        note="; ".join(
            s
            for s in [
                f"+{m.n_grad} gradient evals" if m.n_grad else "",
                {
                    "negativebinomial": f"theta {m.dispersion:.6f}",
                    "gamma": f"phi {m.dispersion:.6f} (shape {1 / m.dispersion:.6f})",
                }.get(m.family, ""),
            ]
            if s
        ),
    )


if __name__ == "__main__":
    common.main(lambda: f"glmm {version('glmm')}", fit, info)
