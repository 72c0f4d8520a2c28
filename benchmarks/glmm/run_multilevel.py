"""Runner for ``multilevel`` (this repository's ``src/``, put first on ``sys.path``).

API used: ``multilevel.glmer(formula, df, family=FAMILY, nAGQ=K)``, the case's
family string as is ("binomial", "poisson", "negative_binomial", "Gamma(log)";
the last two with the observed curvature, glmmTMB's Laplace).  Reported:
``fit.loglik`` (the full marginal log-likelihood, all density constants
included, for Laplace and AGQ alike; ``fit.loglik_lme4`` is lme4's number, which
for nAGQ > 1 omits the saturated-model term); evaluations
``fit.optinfo.evals`` (every deviance evaluation of the (θ, β) search, as
lme4's ``feval``; with the two-stage search also the first stage's
``fit.stage1.evals``, in the note).

Family ``"ordinal"`` (the clmm cases): ``multilevel.clmm(formula, df,
nAGQ=K)`` with its defaults ``link="logit"``, ``threshold="flexible"`` (R's
``ordinal::clmm``); the response is an ordered Categorical (``cases.load``).
Reported: ``fit.loglik`` (R's ``logLik(clmm)``), ``fit.optinfo.evals``,
``fit.converged``; the thresholds with the fixed effects.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import cases  # noqa: E402
import common  # noqa: E402
import pandas as pd  # noqa: E402


def version() -> str:
    """Package version and the repository's commit (``+dirty``: uncommitted changes in src/)."""
    import multilevel

    root = Path(__file__).resolve().parents[2]
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True
        ).stdout.strip()
        commit = f" ({commit}{'+dirty' if dirty else ''})"
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    return f"multilevel {getattr(multilevel, '__version__', '?')}{commit}"


def fit(case: cases.Case, df: pd.DataFrame) -> object:
    import multilevel

    formula = case.formula_for("multilevel")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case.family == cases.ORDINAL:
            m = multilevel.clmm(formula, df, link="logit", threshold="flexible", nAGQ=case.nagq)
        else:
            m = multilevel.glmer(formula, df, family=case.family, nAGQ=case.nagq)
    common.LAST_WARNINGS[:] = [str(w.message) for w in caught]
    return m


def info(case: cases.Case, m) -> common.FitInfo:
    if case.family == cases.ORDINAL:
        vc = m.varcorr
        return common.FitInfo(
            evals=int(m.optinfo.evals),
            loglik_reported=float(m.loglik),
            loglik_full=float(m.loglik),
            fixef={k: float(v) for k, v in m.thresholds.items()}
            | {k: float(v) for k, v in m.fixef.items()},
            converged=bool(m.converged),
            note=f"{m.optinfo.optimizer}; "
            + "; ".join(
                f"sd {g} {float(sd):.6f}" for g, sd in zip(vc["grp"], vc["sdcor"], strict=True)
            ),
        )
    return common.FitInfo(
        evals=int(m.optinfo.evals),
        loglik_reported=float(m.loglik),
        loglik_full=float(m.loglik),
        fixef={k: float(v) for k, v in m.fixef.items()},
        converged=bool(m.optinfo.converged),
        note=(
            f"{m.optinfo.optimizer}; "
            + (f"stage 1: {m.stage1.evals} evals; " if m.stage1 is not None else "")
            + f"loglik_lme4 {m.loglik_lme4:.6f}"
            + "".join(f"; {k} {float(v):.6f}" for k, v in m.family_param.items())
        ),
    )


if __name__ == "__main__":
    common.main(version, fit, info)
