"""Runner for ``mixedlm`` (PyPI; Rust core). Run under the benchmark venv.

API used (binomial and Poisson GLMMs):

    from mixedlm.families import Binomial, Poisson
    mixedlm.glmer(formula, df, family=Binomial() | Poisson(), nAGQ=K)

``nAGQ`` > 1 is adaptive quadrature for a single scalar random-effect term.
A binomial response with trials is written ``successes / trials`` (no
``cbind``).  Other arguments at their defaults (optimizer COBYQA).  Reported:
``GlmerResult.logLik().value`` (documented and checked to be the full marginal
log-likelihood, density constants included, also for nAGQ > 1); in the
evaluations column ``GlmerResult.n_iter``, which is scipy's ``nit`` (optimizer
iterations, not objective evaluations).

Negative binomial and Gamma cases are marked unsupported in ``run.py``: mixedlm
1.3.0 has ``NegativeBinomial(theta=1.0)`` and ``Gamma()`` families but estimates
neither family parameter.  The NB θ stays at the value given
(``glmer_nb(formula, df, theta=1.0)`` is ``glmer`` with that family), and the
Gamma fit has unit dispersion (shape 1: ``GlmerResult.sigma`` is 1.0, and
``Gamma.log_likelihood`` uses shape = prior weight).  Checked on 5,000 rows of
the simulated data: Gamma loglik −10010.6 against glmmTMB's −7840.4 (shape 4.8
estimated), NB −10884.2 (θ = 1) against −10662.3 (θ̂ = 2.10).

The ``"ordinal"`` (clmm) cases are unsupported too: mixedlm 1.3.0 has no
cumulative link model (its families, ``CustomFamily`` included, are
exponential families of a scalar mean, without thresholds).
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

import cases
import common
import pandas as pd


def fit(case: cases.Case, df: pd.DataFrame) -> object:
    import mixedlm
    from mixedlm.families import Binomial, Poisson

    family = {"binomial": Binomial, "poisson": Poisson}[case.family]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = mixedlm.glmer(case.formula_for("mixedlm"), df, family=family, nAGQ=case.nagq)
    common.LAST_WARNINGS[:] = [str(w.message) for w in caught]
    return m


def info(case: cases.Case, m) -> common.FitInfo:
    if m.nAGQ != case.nagq:
        raise RuntimeError(f"mixedlm ran nAGQ={m.nAGQ}, not {case.nagq}")
    ll = float(m.logLik().value)
    names = list(m.matrices.fixed_names)
    return common.FitInfo(
        evals=int(m.n_iter),
        loglik_reported=ll,
        loglik_full=ll,
        fixef=dict(zip(names, map(float, m.beta), strict=True)),
        converged=bool(m.converged),
        note=f"optimizer {m.optimizer}; evals = iterations",
    )


if __name__ == "__main__":
    common.main(lambda: f"mixedlm {version('mixedlm')}", fit, info)
