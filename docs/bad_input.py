"""Writes docs/bad_input.md: every class of awkward input, run, with what the
user sees (``python docs/bad_input.py``; ``tests/test_bad_input_doc.py``
checks that the committed page is what this script prints today)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import multilevel as ml

OUT = Path(__file__).resolve().parent / "bad_input.md"


def small() -> pd.DataFrame:
    r = np.random.default_rng(1)
    d = pd.DataFrame({"x": r.normal(size=30), "g": np.repeat(list("abcdef"), 5)})
    d["y"] = 1 + d["x"] + np.repeat(r.normal(size=6), 5) + r.normal(size=30)
    d["f"] = np.where(d["y"] > 1, "hi", "lo")
    return d


S = ml.datasets.load("sleepstudy")
C = ml.datasets.load("cbpp")
W = ml.datasets.load("wine")
F = "Reaction ~ Days + (Days | Subject)"


def _with(**cols):
    return small().assign(**cols)


def _mixed_groups():
    g = S["Subject"].astype(object).copy()
    subs = sorted(S["Subject"].unique())
    g[S["Subject"] == subs[0]] = 0
    g[S["Subject"] == subs[1]] = "0"
    return S.assign(g=g)


def _sep():
    d = pd.DataFrame({"g": np.repeat(np.arange(20), 10)})
    d["x"] = np.random.default_rng(2).normal(size=200)
    d["y"] = d["g"] % 2
    return d


def _underdispersed():
    r = np.random.default_rng(5)
    g = np.repeat(np.arange(40), 25)
    x = r.normal(size=g.size)
    mu = np.exp(1.5 + 0.3 * x + r.normal(0, 0.4, 40)[g])
    d = pd.DataFrame({"y": r.binomial(20, mu / (mu.max() + 1)), "x": x, "g": g})
    return ml.glmer("y ~ x + (1 | g)", d, "negative_binomial")


def _wine_ordered(extra=None, drop=None, only=None):
    w = W.copy()
    if drop is not None:
        w = w[w["rating"].astype(str) != drop]
    if only is not None:
        w = w[w["rating"].astype(str) == only]
    cats = [str(v) for v in range(1, 6)] + ([extra] if extra else [])
    w["rating"] = pd.Categorical(w["rating"].astype(str), categories=cats, ordered=True)
    return w


def _wide():
    r = np.random.default_rng(3)
    d = pd.DataFrame(r.normal(size=(600, 100)), columns=[f"x{i}" for i in range(100)])
    d["g"] = np.arange(600) % 20
    d["y"] = r.normal(size=600)
    return d


CASES = [
    # (class, call shown, thunk)
    ("missing column", 'lmer("y ~ xx + (1 | g)", d)', lambda: ml.lmer("y ~ xx + (1 | g)", small())),
    ("formula: dangling operator", 'lmer("y ~ x + (1 | g) +", d)',
     lambda: ml.lmer("y ~ x + (1 | g) +", small())),
    ("formula: unclosed parenthesis", 'lmer("y ~ x + (1 | g", d)',
     lambda: ml.lmer("y ~ x + (1 | g", small())),
    ("formula nested 1000 deep", 'lmer("y ~ ((((...x...)))) + (1 | g)", d)',
     lambda: ml.lmer("y ~ " + "(" * 1000 + "x" + ")" * 1000 + " + (1 | g)", small())),
    ("100 predictors", 'lmer("y ~ x0 + ... + x99 + (1 | g)", d)',
     lambda: ml.lmer("y ~ " + " + ".join(f"x{i}" for i in range(100)) + " + (1 | g)", _wide())),
    ("code in a formula", 'lmer(\'y ~ I(__import__("os").system("ls")) + (1 | g)\', d)',
     lambda: ml.lmer('y ~ I(__import__("os").system("ls")) + (1 | g)', small())),
    ("numbers are doubles", 'lmer("y ~ I(x * 10^20) + I(x^-1) + (1 | g)", d)',
     lambda: ml.lmer("y ~ I(x * 10^20) + I(x^-1) + (1 | g)", small())),
    ("dotted and backticked names", 'lmer("y ~ log(Sepal.Width) + log(`my var`) + (1 | g)", d)',
     lambda: ml.lmer("y ~ log(Sepal.Width) + log(`my var`) + (1 | g)",
                     _with(**{"Sepal.Width": 2.0 + small()["x"] ** 2, "my var": 3.0 + small()["x"] ** 4}))),
    ("a constant string", "lmer(\"y ~ I('a') + (1 | g)\", d)",
     lambda: ml.lmer("y ~ I('a') + (1 | g)", small())),
    ("no random effects", 'lmer("y ~ x", d)', lambda: ml.lmer("y ~ x", small())),
    ("one-level grouping factor", 'lmer("y ~ x + (1 | one)", d)',
     lambda: ml.lmer("y ~ x + (1 | one)", _with(one=1))),
    ("as many random effects as rows", 'lmer("y ~ x + (1 | obs)", d)',
     lambda: ml.lmer("y ~ x + (1 | obs)", _with(obs=np.arange(30)))),
    ("non-numeric response", 'lmer("f ~ x + (1 | g)", d)', lambda: ml.lmer("f ~ x + (1 | g)", small())),
    ("constant response", 'lmer("c ~ x + (1 | g)", d)', lambda: ml.lmer("c ~ x + (1 | g)", _with(c=2.0))),
    ("response fitted exactly", 'lmer("z ~ x + (1 | g)", d.assign(z=2 * d.x))',
     lambda: ml.lmer("z ~ x + (1 | g)", _with(z=2 * small()["x"]))),
    ("empty data", 'lmer("y ~ x + (1 | g)", d.iloc[:0])', lambda: ml.lmer("y ~ x + (1 | g)", small().iloc[:0])),
    ("infinite values", 'lmer("y ~ x + (1 | g)", d with x = inf in one row)',
     lambda: ml.lmer("y ~ x + (1 | g)", _with(x=np.r_[np.inf, small()["x"][1:]]))),
    ("missing values", 'lmer("y ~ x + (1 | g)", d with one NaN)',
     lambda: ml.lmer("y ~ x + (1 | g)", _with(x=np.r_[np.nan, small()["x"][1:]]))),
    ("duplicate column names", 'lmer("y ~ x + (1 | g)", d with two columns "x")',
     lambda: ml.lmer("y ~ x + (1 | g)", pd.concat([small(), small()[["x"]]], axis=1))),
    ("weights naming a text column", 'lmer("y ~ x + (1 | g)", d, weights="f")',
     lambda: ml.lmer("y ~ x + (1 | g)", small(), weights="f")),
    ("object column of numbers", 'lmer(F, s.assign(Days=s.Days.astype(object)))',
     lambda: ml.lmer(F, S.assign(Days=S["Days"].astype(object)))),
    ("group labels 0 and \"0\"", 'lmer("Reaction ~ Days + (1 | g)", s with g holding 0 and "0")',
     lambda: ml.lmer("Reaction ~ Days + (1 | g)", _mixed_groups())),
    ("a timestamp covariate", 'lmer("Reaction ~ t + (1 | Subject)", s.assign(t=1.7e9 + 3600 * s.Days))',
     lambda: ml.lmer("Reaction ~ t + (1 | Subject)", S.assign(t=1.7e9 + 3600.0 * S["Days"]))),
    ("a covariate in units of 1e8", "lmer(F, s.assign(Days=s.Days * 1e8))",
     lambda: ml.lmer(F, S.assign(Days=S["Days"] * 1e8))),
    ("a response in units of 1e-200", "lmer(F, s.assign(Reaction=s.Reaction * 1e-200))",
     lambda: ml.lmer(F, S.assign(Reaction=S["Reaction"] * 1e-200))),
    ("aliased column", 'lmer("y ~ x + x2 + (1 | g)", d.assign(x2=2 * d.x))',
     lambda: ml.lmer("y ~ x + x2 + (1 | g)", _with(x2=2 * small()["x"]))),
    ("singular fit (Dyestuff2)", 'lmer("Yield ~ 1 + (1 | Batch)", dyestuff2)',
     lambda: ml.lmer("Yield ~ 1 + (1 | Batch)", ml.datasets.load("dyestuff2"))),
    ("start of the wrong length", "lmer(F, s, start=[1, 0])", lambda: ml.lmer(F, S, start=[1, 0])),
    ("start with NaN", "lmer(F, s, start=[nan, 0, 1])", lambda: ml.lmer(F, S, start=[np.nan, 0, 1])),
    ("start below its bound", "lmer(F, s, start=[-1, 0, 1])", lambda: ml.lmer(F, S, start=[-1, 0, 1])),
    ("predict with an offset= column", 'lmer(..., offset="o").predict(newdata)',
     lambda: _offset_check()),
    ("all-zero Poisson response", 'glmer("z ~ period + (1 | herd)", cbpp.assign(z=0), "poisson")',
     lambda: ml.glmer("z ~ period + (1 | herd)", C.assign(z=0), "poisson")),
    ("Gamma response with zeros", 'glmer("Reaction ~ Days + (1 | Subject)", s with 0s, "Gamma(log)")',
     lambda: ml.glmer("Reaction ~ Days + (1 | Subject)",
                      S.assign(Reaction=S["Reaction"].where(S["Days"] > 0, 0.0)), "Gamma(log)")),
    ("negative binomial with non-counts", 'glmer("r ~ period + (1 | herd)", cbpp with r = '
     'incidence/size, "negative_binomial")',
     lambda: ml.glmer("r ~ period + (1 | herd)", C.assign(r=C["incidence"] / C["size"]),
                      "negative_binomial")),
    ("beta response with 0 and 1", 'glmer("p ~ period + (1 | herd)", cbpp with p = '
     'incidence/size, "beta")',
     lambda: ml.glmer("p ~ period + (1 | herd)", C.assign(p=C["incidence"] / C["size"]), "beta")),
    ("ordinal response not ordered", 'clmm("rating ~ temp + (1 | judge)", wine)',
     lambda: ml.clmm("rating ~ temp + (1 | judge)", W)),
    ("ordinal: empty category at the end", 'clmm(..., rating with an unused top level "6")',
     lambda: ml.clmm("rating ~ temp + (1 | judge)", _wine_ordered(extra="6"))),
    ("ordinal: empty category inside", 'clmm(..., wine without rating 3)',
     lambda: ml.clmm("rating ~ temp + (1 | judge)", _wine_ordered(drop="3"))),
    ("ordinal: one category", 'clmm(..., wine with rating 3 only)',
     lambda: ml.clmm("rating ~ temp + (1 | judge)", _wine_ordered(only="3"))),
    ("ordinal: no intercept", 'clmm("rating ~ 0 + temp + (1 | judge)", wine)',
     lambda: ml.clmm("rating ~ 0 + temp + (1 | judge)", _wine_ordered())),
    ("correlation: form column missing", 'gls("Reaction ~ Days", s, correlation=corCAR1(form="~ time | Subject"))',
     lambda: ml.gls("Reaction ~ Days", S, correlation=ml.corCAR1(form="~ time | Subject"))),
    ("correlation: duplicated positions", 'gls(..., s with Days clipped to >= 1 (two rows at 1), corAR1(form="~ Days | Subject"))',
     lambda: ml.gls("Reaction ~ Days", S.assign(Days=S["Days"].clip(lower=1)),
                    correlation=ml.corAR1(form="~ Days | Subject"))),
    ("variance covariate with zeros", 'gls("Reaction ~ Days", s, weights=varPower(form="~ Days"))',
     lambda: ml.gls("Reaction ~ Days", S, weights=ml.varPower(form="~ Days"))),
    ("correlation crossing the random effects", 'lme(..., random="~ 1 | Subject", corAR1(form="~ 1 | Days"))',
     lambda: ml.lme("Reaction ~ Days", "~ 1 | Subject", S,
                    correlation=ml.corAR1(form="~ 1 | Days"))),
    ("unknown link", 'glmer(..., family="Gamma(logit)")',
     lambda: ml.glmer("Reaction ~ Days + (1 | Subject)", S, "Gamma(logit)")),
    ("negative binomial theta running off to infinity", 'glmer("y ~ x + (1 | g)", '
     'underdispersed counts, "negative_binomial")', lambda: _underdispersed()),
    ("too many quadrature nodes", "glmer(..., nAGQ=20000)",
     lambda: ml.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", C, "binomial",
                      nAGQ=20000)),
    ("separation within groups", 'glmer("y ~ x + (1 | g)", d with y constant per group, "binomial")',
     lambda: ml.glmer("y ~ x + (1 | g)", _sep(), "binomial")),
    ("confidence level outside (0, 1)", "lmer(F, s).confint(level=1.5)",
     lambda: ml.lmer(F, S).confint(level=1.5)),
    ("unknown data set", 'datasets.load("nope")', lambda: ml.datasets.load("nope")),
    ("emmeans of a grouping factor", 'emmeans(lmer(F, s), "Subject")',
     lambda: ml.emmeans(ml.lmer(F, S), "Subject")),
    ("emmeans at a variable not in the model", 'emmeans(lmer(F, s), "Days", at={"age": 3})',
     lambda: ml.emmeans(ml.lmer(F, S), "Days", at={"age": 3})),
    ("R² of a negative binomial GLMM", 'r2_nakagawa(glmer("incidence ~ period + (1 | herd)", '
     'cbpp, "negative_binomial"))',
     lambda: ml.r2_nakagawa(ml.glmer("incidence ~ period + (1 | herd)", C, "negative_binomial"))),
    ("type-I table asked of one model", "anova(lmer(F, s), type=1)",
     lambda: ml.anova(ml.lmer(F, S), type=1)),
    ("profile of a Monte Carlo GLMM", 'confint(glmer(..., method="mc"))',
     lambda: ml.confint(ml.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", C,
                                 "binomial", method="mc", mc_samples=100))),
]  # fmt: skip


def _offset_check():
    d = S.assign(o=2.0 * S["Days"])
    fit = ml.lmer("Reaction ~ Days + (1 | Subject)", d, offset="o")
    diff = float(np.abs(fit.predict(d).to_numpy() - fit.fitted.to_numpy()).max())
    if diff < 1e-10:
        return "predict(newdata) equals the fitted values (max difference below 1e-10)"
    return f"predict(newdata) differs from the fitted values by up to {diff:.3g}"


def outcome(thunk) -> str:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            res = thunk()
        except ml.MultilevelError as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        except Exception as exc:  # shown as it is: the page must say what is true
            return f"**{type(exc).__name__}** (not a library error): {exc}"
    if isinstance(res, str):
        return res
    parts = ["fit returned" + ("" if getattr(res, "converged", True) else ", converged=False")]
    dropped = getattr(getattr(res, "design", None), "n_dropped", 0)
    if dropped:
        parts.append(f"{dropped} row(s) with missing values dropped and counted in the summary")
    seen = set()
    for w in rec:
        text = f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
        if text not in seen and w.category.__module__.startswith("multilevel"):
            seen.add(text)
            parts.append(text)
    return "; ".join(parts)


def page() -> str:
    rows = []
    for name, call, thunk in CASES:
        text = outcome(thunk).replace("|", "\\|")
        if len(text) > 400:
            text = text[:397] + "..."
        shown = call.replace("|", "\\|")
        rows.append(f"| {name} | `` {shown} `` | {text} |")
    head = """# Awkward input: what the user sees

Every row below was run by `docs/bad_input.py` (which writes this page) and
`tests/test_bad_input_doc.py` checks that the page is what the library does
today.  `d` is a small data frame (columns `y`, `x`, `g`, `f`; 30 rows in 6
groups), `s` is `sleepstudy`, `F` is `"Reaction ~ Days + (Days | Subject)"`.

Errors a user can act on are subclasses of `multilevel.MultilevelError`
(`FormulaError`, `DataError`, `ModelError`), raised before numerical work
where the problem can be seen in the input.  On the command line
(`multilevel fit`) the same first line is printed after `multilevel: error:`
with exit status 2; anything else is a bug of ours and prints one line with
`internal error` and exit status 1.  Warnings (`RankDeficiencyWarning`,
`SingularFitWarning`, `ConvergenceWarning`) point at the user's call and are
also kept on the fit and printed in its summary.

Covariates and the response may have any origin and units (timestamps,
calendar years, units from 1e-8 to 1e8, responses from 1e-200 to 1e200): the
engine works in a centred and scaled basis and maps the estimates back
(`tests/test_invariance.py` checks this with hypothesis).  In a correlated
term with an intercept, shifting a slope's covariate moves the intercept's
variance and covariance as the model says; in an uncorrelated term
(`(x || g)`) or a term without an intercept a shift changes the model itself,
and only a change of units is invariant.

| input | call | what the user sees |
| --- | --- | --- |
"""
    return head + "\n".join(rows) + "\n"


def outcome_class(text: str) -> str:
    """What a row's outcome is, without its numbers: the error class, or
    'fit returned' with the warning classes (for the test across versions)."""
    first = text.split(":")[0].strip("* ")
    if first.startswith("fit returned") or first.startswith("predict"):
        kinds = sorted({w.split(":")[0].strip() for w in text.split("; ")[1:] if ":" in w})
        return first.split(",")[0] + (" " + " ".join(kinds) if kinds else "")
    return first


if __name__ == "__main__":
    text = page()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
