"""Fingerprint the fits of every reference case, to show a refactoring changed
no result.

    python tools/fingerprint.py write before.json
    python tools/fingerprint.py compare before.json [--rtol 1e-10]

Each case in ``tests/reference`` is fitted through the public API only (so the
script runs unchanged across a reorganisation of the modules), and every
number a user sees is recorded: log-likelihood, fixed effects, standard
errors, theta, conditional modes, Satterthwaite and Kenward-Roger DF, nlme's
DF, profile bounds, LRT statistics, per-group OLS coefficients.  GLMMs are
also fitted with the probit and cloglog links and with a crossed design so
that every GLMM route is exercised.  ``compare`` lists every number whose
relative difference exceeds ``rtol`` (scaled by the largest magnitude in its
array, so a value that is zero up to rounding is not flagged).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import multilevel as ml

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference"
DATA = ROOT / "src" / "multilevel" / "datasets"


def load_case(case: str) -> tuple[dict, pd.DataFrame]:
    ref = json.loads((REFERENCE / f"{case}.json").read_text())
    df = pd.read_csv(DATA / ref["dataset"])
    for col, levels in ref.get("factor_levels", {}).items():
        if col in df.columns:
            df[col] = pd.Categorical(df[col].astype(str), categories=[str(v) for v in levels])
    return ref, df


def _arr(x) -> list[float]:
    if isinstance(x, dict):
        return [v for k in sorted(x) for v in _arr(x[k])]
    return np.asarray(x, dtype=float).ravel().tolist()


def _intervals(iv) -> list[float]:
    """nlme's intervals() as one list of numbers."""
    if isinstance(iv, dict):
        return [v for k in sorted(iv) for v in _intervals(iv[k])]
    return np.asarray(iv, dtype=float).ravel().tolist()


def lmer_print(fit, slow: bool) -> dict:
    out = {
        "loglik": fit.loglik,
        "fixef": fit.fixef,
        "se": fit.se,
        "theta": fit.theta,
        "sigma": fit.sigma,
        "ranef": {g: r.to_numpy() for g, r in fit.ranef.items()},
        "condsd": {g: r.to_numpy() for g, r in fit.ranef_condsd.items()},
        "satterthwaite_df": fit.coef_table(ddf="Satterthwaite")["df"],
    }
    if fit.REML:
        out["kr_df"] = fit.coef_table(ddf="Kenward-Roger")["df"]
    if slow:
        out["profile"] = fit.confint(method="profile").to_numpy()
    return out


def glmer_print(fit) -> dict:
    return {
        "loglik": fit.loglik,
        "fixef": fit.fixef,
        "se": fit.se,
        "theta": fit.theta,
        "ranef": {g: r.to_numpy() for g, r in fit.ranef.items()},
    }


def fingerprints(slow: bool = True) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in sorted(REFERENCE.glob("*.json")):
        case = path.stem
        ref, data = load_case(case)
        engine = ref["engine"]
        if engine.endswith("lme4 1.1-31 lmer") or engine.endswith(" lmer"):
            fit = ml.lmer(ref["formula"], data, REML=ref["method"] == "REML")
            out[case] = lmer_print(fit, slow)
        elif engine.endswith("glmer"):
            fit = ml.glmer(ref["formula"], data, ref["family"], nAGQ=ref.get("nAGQ", 1))
            out[case] = glmer_print(fit)
            if case in ("cbpp_laplace", "contra_laplace"):  # one scalar term: the link routes
                for link in ("probit", "cloglog"):
                    for nagq in (1, 9):
                        g = ml.glmer(ref["formula"], data, ml.binomial(link), nAGQ=nagq)
                        out[f"{case}_{link}_agq{nagq}"] = glmer_print(g)
        elif engine.endswith("lme") and "nlme" in engine and case.startswith("hsb"):
            fixed = "mathach ~ meanses*cses + sector*cses"
            fit = ml.lme(fixed, "~ cses | school", data, method=ref["method"])
            out[case] = {
                "loglik": fit.loglik,
                "fixef": fit.tTable["Value"],
                "se": fit.tTable["Std.Error"],
                "df": fit.tTable["DF"],
                "intervals": _intervals(fit.intervals()),
            }
        elif "anova" in engine:
            m0 = ml.lmer("mathach ~ meanses*cses + sector*cses + (1 | school)", data, REML=False)
            m1 = ml.lmer("mathach ~ meanses*cses + sector*cses + (cses | school)", data, REML=False)
            tab = ml.anova(m0, m1)
            out[case] = {"chisq": tab["Chisq"].iloc[1], "p": tab["Pr(>Chisq)"].iloc[1]}
        elif "lmList" in engine:
            fit = ml.lmList("mathach ~ ses | school", data)
            out[case] = {"coef": fit.coef.to_numpy(), "se": fit.se.to_numpy()}
    cbpp = ml.datasets.load("cbpp").assign(obs=lambda d: np.arange(len(d)).astype(str))
    crossed = ml.glmer(
        "cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)", cbpp, "binomial"
    )
    out["cbpp_crossed_obs"] = glmer_print(crossed)
    return {k: {n: _arr(v) for n, v in d.items()} for k, d in out.items()}


def compare(old: dict, new: dict, rtol: float) -> list[str]:
    bad = []
    for case in sorted(old.keys() | new.keys()):
        if case not in old or case not in new:
            bad.append(f"{case}: only in {'new' if case in new else 'old'}")
            continue
        for name in sorted(old[case].keys() | new[case].keys()):
            a, b = np.array(old[case].get(name, [])), np.array(new[case].get(name, []))
            if a.shape != b.shape:
                bad.append(f"{case}.{name}: shape {a.shape} -> {b.shape}")
                continue
            if a.size == 0:
                continue
            scale = max(np.nanmax(np.abs(a)), 1e-300)
            diff = np.abs(a - b) / scale
            diff[np.isnan(a) & np.isnan(b)] = 0
            if np.nanmax(diff) > rtol or np.isnan(diff).any():
                bad.append(f"{case}.{name}: max relative difference {np.nanmax(diff):.3g}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["write", "compare"])
    ap.add_argument("path", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-10)
    ap.add_argument("--no-profile", action="store_true", help="skip the profile intervals")
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = fingerprints(slow=not args.no_profile)
    if args.action == "write":
        args.path.write_text(json.dumps(got, indent=1))
        print(f"{len(got)} fits written to {args.path}")
        return 0
    bad = compare(json.loads(args.path.read_text()), got, args.rtol)
    print("\n".join(bad) if bad else f"{len(got)} fits identical to rtol {args.rtol:g}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
