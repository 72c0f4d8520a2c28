"""Coverage of 95% profile, Satterthwaite and Wald intervals under a known LMM.

    python benchmarks/inference/coverage_study.py [--ndata 200] [--seed 20240606]

Each data set: G = 30 groups of m = 10 rows, x ~ N(0, 1) drawn afresh,

    y = β₀ + β₁x + u₀ + u₁x + e,   β = (1, 0.5),
    (u₀, u₁) ~ N(0, [[1, 0.15], [0.15, 0.25]])  (sd 1 and 0.5, correlation 0.3),
    e ~ N(0, 1),

fitted by REML as ``y ~ x + (x | g)``.  Intervals at 95%:

* ``satterthwaite``: β̂ⱼ ± t_{νⱼ, 0.975}·SE with lmerTest's Satterthwaite νⱼ
  (``coef_table(fit, "Satterthwaite")``);
* ``wald``: β̂ⱼ ± 1.96·SE (for reference);
* ``profile``: likelihood-profile intervals (``fit.confint(method="profile")``) of
  β₀, β₁, both SDs, the correlation and σ.

For each interval the observed coverage k/N and its exact (Clopper–Pearson) 95%
and 99.9% binomial intervals are reported, with the misses below and above the
truth.  A data set whose fit or interval raises an error is counted as a failure
(reported separately, and excluded from N for that interval).

Data set i uses the generator seeded by the i-th child of SeedSequence(seed), so
the study is reproducible and any prefix of it is the same.  Results:
``benchmarks/inference/results/coverage.{json,md}``; ``tests/test_inference_slow.py``
runs the same study through :func:`study`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import multilevel  # noqa: E402
from multilevel.inference import coef_table  # noqa: E402

GROUPS, PER_GROUP = 30, 10
BETA = {"(Intercept)": 1.0, "x": 0.5}
SD0, SD1, CORR, SIGMA = 1.0, 0.5, 0.3, 1.0
TRUTH = {
    "sd_(Intercept)|g": SD0,
    "cor_x.(Intercept)|g": CORR,
    "sd_x|g": SD1,
    "sigma": SIGMA,
    **BETA,
}
FORMULA = "y ~ x + (x | g)"
LEVEL = 0.95
SEED = 20240606


def simulate_data(rng: np.random.Generator) -> pd.DataFrame:
    """One data set from the true model."""
    g = np.repeat(np.arange(GROUPS), PER_GROUP)
    x = rng.standard_normal(g.size)
    cov = np.array([[SD0**2, CORR * SD0 * SD1], [CORR * SD0 * SD1, SD1**2]])
    u = rng.standard_normal((GROUPS, 2)) @ np.linalg.cholesky(cov).T
    e = SIGMA * rng.standard_normal(g.size)
    y = BETA["(Intercept)"] + BETA["x"] * x + u[g, 0] + u[g, 1] * x + e
    labels = np.array([f"g{i:02d}" for i in range(GROUPS)])
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(labels[g])})


def one_dataset(ss: np.random.SeedSequence) -> dict[str, Any]:
    """Fit one simulated data set; its intervals (name -> (lo, hi)) per method."""
    df = simulate_data(np.random.default_rng(ss))
    rec: dict[str, Any] = {"errors": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = multilevel.lmer(FORMULA, df, REML=True)
        except Exception as exc:  # counted as a failure of every interval
            rec["errors"]["fit"] = f"{type(exc).__name__}: {exc}"
            return rec
        rec["singular"] = bool(fit.singular)
        rec["converged"] = bool(fit.converged)
        try:
            tab = coef_table(fit, "Satterthwaite")
            t = stats.t.ppf(0.5 + LEVEL / 2, tab["df"])
            half = t * tab["Std. Error"]
            rec["satterthwaite"] = {
                k: (tab.loc[k, "Estimate"] - half[k], tab.loc[k, "Estimate"] + half[k])
                for k in BETA
            }
            rec["df"] = {k: float(tab.loc[k, "df"]) for k in BETA}
        except Exception as exc:
            rec["errors"]["satterthwaite"] = f"{type(exc).__name__}: {exc}"
        z = stats.norm.ppf(0.5 + LEVEL / 2)
        rec["wald"] = {
            k: (fit.fixef[k] - z * fit.se[k], fit.fixef[k] + z * fit.se[k]) for k in BETA
        }
        try:
            ci = fit.confint(method="profile", level=LEVEL)
            rec["profile"] = {k: (ci.loc[k].iloc[0], ci.loc[k].iloc[1]) for k in TRUTH}
        except Exception as exc:
            rec["errors"]["profile"] = f"{type(exc).__name__}: {exc}"
    return rec


def clopper_pearson(k: int, n: int, level: float) -> tuple[float, float]:
    """Exact binomial confidence interval for a proportion k/n."""
    a = 1 - level
    lo = 0.0 if k == 0 else stats.beta.ppf(a / 2, k, n - k + 1)
    hi = 1.0 if k == n else stats.beta.ppf(1 - a / 2, k + 1, n - k)
    return float(lo), float(hi)


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Coverage per (method, parameter) with exact binomial intervals."""
    rows = []
    for method, params in (
        ("satterthwaite", list(BETA)),
        ("wald", list(BETA)),
        ("profile", list(TRUTH)),
    ):
        for name in params:
            ivals = [r[method][name] for r in records if method in r]
            truth = TRUTH[name]
            lo = np.array([iv[0] for iv in ivals], dtype=float)
            hi = np.array([iv[1] for iv in ivals], dtype=float)
            n = lo.size
            below = int(np.sum(hi < truth))  # interval entirely below the truth
            above = int(np.sum(lo > truth))
            k = n - below - above
            rows.append(
                {
                    "method": method,
                    "parameter": name,
                    "truth": truth,
                    "n": n,
                    "failed": len(records) - n,
                    "covered": k,
                    "coverage": k / n if n else float("nan"),
                    "ci95": clopper_pearson(k, n, 0.95),
                    "ci999": clopper_pearson(k, n, 0.999),
                    "miss_low": below,
                    "miss_high": above,
                    "mean_width": float(np.mean(hi - lo)) if n else float("nan"),
                }
            )
    return rows


def study(ndata: int = 200, seed: int = SEED) -> dict[str, Any]:
    """Run the whole study; per-interval coverage and per-data-set counts."""
    t0 = time.perf_counter()
    records = [one_dataset(ss) for ss in np.random.SeedSequence(seed).spawn(ndata)]
    elapsed = time.perf_counter() - t0
    errors = [(i, r["errors"]) for i, r in enumerate(records) if r["errors"]]
    dfs = np.array([[r["df"][k] for k in BETA] for r in records if "df" in r])
    return {
        "ndata": ndata,
        "seed": seed,
        "design": {"groups": GROUPS, "per_group": PER_GROUP, "formula": FORMULA},
        "truth": TRUTH,
        "level": LEVEL,
        "elapsed_s": elapsed,
        "singular": int(sum(r.get("singular", False) for r in records)),
        "not_converged": int(sum(not r.get("converged", True) for r in records)),
        "errors": errors,
        "satterthwaite_df_median": dict(zip(BETA, np.median(dfs, axis=0).tolist(), strict=True))
        if dfs.size
        else {},
        "coverage": summarise(records),
    }


def md_escape(name: str) -> str:
    """A parameter name inside a Markdown table cell."""
    return name.replace("|", "\\|")


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Coverage of 95% intervals, simulated LMM",
        "",
        f"{res['ndata']} data sets (seed {res['seed']}), {GROUPS} groups x {PER_GROUP} rows, "
        f"`{FORMULA}` by REML; truth: β = (1, 0.5), sd(u₀) = 1, sd(u₁) = 0.5, "
        "corr = 0.3, σ = 1.",
        f"Singular fits: {res['singular']}; not converged: {res['not_converged']}; "
        f"data sets with an error: {len(res['errors'])}. "
        f"Median Satterthwaite DF: "
        + ", ".join(f"{k} {v:.1f}" for k, v in res["satterthwaite_df_median"].items())
        + f". Wall time {res['elapsed_s']:.0f} s ({res.get('load', '')}).",
        "",
        "| method | parameter | covered / N | coverage | exact 95% CI | exact 99.9% CI "
        "| 0.95 in 99.9% CI | misses low / high | mean width |",
        "| --- | --- | ---: | ---: | --- | --- | --- | ---: | ---: |",
    ]
    for r in res["coverage"]:
        lo, hi = r["ci95"]
        lo3, hi3 = r["ci999"]
        ok = "yes" if lo3 <= LEVEL <= hi3 else "**no**"
        par = md_escape(r["parameter"])
        lines.append(
            f"| {r['method']} | {par} | {r['covered']} / {r['n']} "
            f"| {r['coverage']:.3f} | [{lo:.3f}, {hi:.3f}] | [{lo3:.3f}, {hi3:.3f}] | {ok} "
            f"| {r['miss_low']} / {r['miss_high']} | {r['mean_width']:.4f} |"
        )
    if res["errors"]:
        lines += ["", "Errors:", ""]
        lines += [f"* data set {i}: {e}" for i, e in res["errors"]]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ndata", type=int, default=200)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    res = study(args.ndata, args.seed)
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    res["load"] = (
        f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after, 2 CPUs; "
        f"OPENBLAS_NUM_THREADS={blas}"
    )
    res["machine"] = platform.platform()
    res["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "coverage.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "coverage.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
