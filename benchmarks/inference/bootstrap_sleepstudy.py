"""Parametric bootstrap of sleepstudy against the profile intervals.

    python benchmarks/inference/bootstrap_sleepstudy.py [--nsim 1000] [--seed 2024] [--seeds 8]

Model ``Reaction ~ Days + (Days | Subject)`` by REML.  One bootstrap of ``nsim``
replicates with the progress bar (timed), repeated with the same seed on two worker
processes (the replicates must be identical), and its 95% percentile intervals set
against the likelihood-profile intervals ``fit.confint(method="profile")``.

Monte Carlo error: the standard error of every percentile endpoint is the
Maritz–Jarrett estimate (``BootResult.confint_mcse``: the order-statistic law of
the sample quantile applied to the replicates), z = (percentile − profile)/MC SE.
Also shown, as explanations of the differences:

* ``basic`` = 2t̂ − q_{1−p} (corrects a shift of the replicates' distribution);
* ``scale`` = t̂²/q_{1−p} (exact when t̂/t has a distribution free of t, as σ̂/σ
  nearly has);
* ``wald`` = β̂ ± 1.96 SE, the large-nsim limit of the β percentile interval.

``--seeds K`` repeats the bootstrap with seeds 0..K−1 (without progress bar) to show
which differences are systematic: their mean over seeds against the spread between
seeds (an empirical MC SE) and the mean Maritz–Jarrett SE.

Results: ``benchmarks/inference/results/bootstrap_sleepstudy.{json,md}``;
``tests/test_inference_slow.py`` checks the same comparison through :func:`compare`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import multilevel  # noqa: E402
from multilevel.inference.bootstrap import BootResult, bootstrap  # noqa: E402

FORMULA = "Reaction ~ Days + (Days | Subject)"
REFERENCE = ROOT.parent / "shared" / "reference" / "sleep_reml.json"


def sleepstudy_fit() -> multilevel.LmerFit:
    return multilevel.lmer(FORMULA, multilevel.datasets.load("sleepstudy"), REML=True)


def _is_scale(name: str) -> bool:
    return name == "sigma" or name.startswith("sd_")


def compare(fit: Any, boot: BootResult, prof: pd.DataFrame) -> pd.DataFrame:
    """Per parameter and endpoint: profile, percentile, MC SE, z, and the basic,
    scale-pivot and Wald versions of the same endpoint."""
    perc = boot.confint()
    se = boot.confint_mcse()
    wald = fit.confint(method="wald")
    rows = []
    for name in perc.index:
        t0 = boot.t0[name]
        for end, col in enumerate(perc.columns):
            other = perc.columns[1 - end]  # the reflected endpoints use the other quantile
            q_other, se_other = perc.loc[name, other], se.loc[name, other]
            scale_ok = _is_scale(name) and q_other > 0
            row = {
                "parameter": name,
                "end": "lower" if end == 0 else "upper",
                "profile": prof.loc[name].iloc[end],
                "perc": perc.loc[name, col],
                "mcse": se.loc[name, col],
                "basic": 2 * t0 - q_other,
                "basic_mcse": se_other,
                "scale": t0**2 / q_other if scale_ok else np.nan,
                "scale_mcse": t0**2 / q_other**2 * se_other if scale_ok else np.nan,
                "wald": wald.loc[name].iloc[end] if name in wald.index else np.nan,
            }
            for kind in ("perc", "basic", "scale"):
                mcse = row["mcse"] if kind == "perc" else row[f"{kind}_mcse"]
                row[f"{kind}_diff"] = row[kind] - row["profile"]
                row[f"{kind}_z"] = row[f"{kind}_diff"] / mcse if mcse > 0 else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v: float, d: int = 4) -> str:
    return f"{v:.{d}g}" if np.isfinite(v) else ""


def _z(v: float) -> str:
    return f" ({v:.1f})" if np.isfinite(v) else ""


def md_name(name: str) -> str:
    return name.replace("|", "\\|")


def markdown(res: dict[str, Any]) -> str:
    m = pd.DataFrame(res["comparison"])
    lines = [
        "# Parametric bootstrap of sleepstudy vs profile intervals",
        "",
        f"`{FORMULA}`, REML.  nsim = {res['nsim']}, seed {res['seed']}: "
        f"{res['elapsed_s']:.1f} s with the progress bar ({res['load']}); "
        f"{res['singular']} singular refits, {res['not_converged']} not converged; "
        f"correlation replicates at exactly +1: {res['cor_at_plus1']}, at −1: "
        f"{res['cor_at_minus1']}.",
        f"Same seed again on 2 worker processes: replicates identical = "
        f"{res['identical_same_seed']} ({res['elapsed_workers_s']:.1f} s).",
        "",
        "95% intervals; MC SE = Maritz–Jarrett standard error of the percentile endpoint; "
        "z = (percentile − profile) / MC SE.",
        "",
        "| parameter | end | profile | percentile | MC SE | perc − prof | z | basic (z) "
        "| scale pivot (z) | Wald (β̂ ± 1.96 SE) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for _, r in m.iterrows():
        lines.append(
            f"| {md_name(r['parameter'])} | {r['end']} | {_fmt(r['profile'], 6)} "
            f"| {_fmt(r['perc'], 6)} | {_fmt(r['mcse'], 2)} | {_fmt(r['perc_diff'], 3)} "
            f"| {r['perc_z']:.1f} | {_fmt(r['basic'], 6)}{_z(r['basic_z'])} "
            f"| {_fmt(r['scale'], 6)}{_z(r['scale_z'])} | {_fmt(r['wald'], 6)} |"
        )
    if res.get("r_profile_ci"):
        worst = max(
            abs(res["profile_ci"][k][i] - v[i]) / max(abs(v[i]), 1e-8)
            for k, v in res["r_profile_ci"].items()
            for i in range(2)
        )
        lines += [
            "",
            f"Our profile intervals vs lme4's (reference): max relative difference {worst:.1e}.",
        ]
    if res.get("seeds"):
        s = pd.DataFrame(res["seeds"])
        lines += [
            "",
            f"## Systematic or Monte Carlo? {res['nseeds']} more bootstraps (seeds 0.."
            f"{res['nseeds'] - 1}, nsim = {res['nsim']} each)",
            "",
            "mean diff = mean over the K seeds of (endpoint − profile endpoint; for "
            "'perc − Wald': percentile − Wald endpoint); between-seed "
            "SD = the empirical MC SE of one bootstrap's endpoint (to compare with the mean "
            "Maritz–Jarrett SE); z of mean = mean diff / (between-seed SD / √K): a systematic "
            "difference when large.",
            "",
            "| parameter | end | kind | mean diff | between-seed SD | mean MJ SE | z of mean "
            "| seeds with abs(z) > 3 |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for _, r in s.iterrows():
            lines.append(
                f"| {md_name(r['parameter'])} | {r['end']} | {r['kind']} "
                f"| {_fmt(r['mean_diff'], 3)} | {_fmt(r['sd_between'], 2)} "
                f"| {_fmt(r['mean_mcse'], 2)} "
                f"| {r['mean_diff'] / (r['sd_between'] / np.sqrt(res['nseeds'])):.1f} "
                f"| {r['n_abs_z_gt_3']} / {res['nseeds']} |"
            )
    lines.append("")
    return "\n".join(lines)


def seeds_summary(fit: Any, prof: pd.DataFrame, nsim: int, k: int) -> list[dict[str, Any]]:
    tabs = []
    for seed in range(k):
        c = compare(fit, bootstrap(fit, nsim, seed=seed, progress=False), prof)
        c["seed"] = seed
        tabs.append(c)
    allc = pd.concat(tabs)
    rows = []
    for (name, end), g in allc.groupby(["parameter", "end"], sort=False):
        for kind, mcse in (("perc", "mcse"), ("basic", "basic_mcse"), ("scale", "scale_mcse")):
            if kind == "scale" and not _is_scale(name):
                continue
            rows.append(
                {
                    "parameter": name,
                    "end": end,
                    "kind": kind,
                    "mean_diff": float(g[f"{kind}_diff"].mean()),
                    "sd_between": float(g[kind].std(ddof=1)),
                    "mean_mcse": float(g[mcse].mean()),
                    "n_abs_z_gt_3": int((g[f"{kind}_z"].abs() > 3).sum()),
                }
            )
        if g["wald"].notna().all():  # fixed effects: percentile against its nsim → ∞ limit
            d = g["perc"] - g["wald"]
            rows.append(
                {
                    "parameter": name,
                    "end": end,
                    "kind": "perc − Wald",
                    "mean_diff": float(d.mean()),
                    "sd_between": float(g["perc"].std(ddof=1)),
                    "mean_mcse": float(g["mcse"].mean()),
                    "n_abs_z_gt_3": int((d.abs() > 3 * g["mcse"]).sum()),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsim", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    fit = sleepstudy_fit()
    prof = fit.confint(method="profile")
    load0 = os.getloadavg()[0]
    err = io.StringIO()
    t0 = time.perf_counter()
    with redirect_stderr(err):
        boot = bootstrap(fit, args.nsim, seed=args.seed, progress=True)
    elapsed = time.perf_counter() - t0
    progress_lines = err.getvalue().replace("\r", "\n").strip().splitlines()
    t0 = time.perf_counter()
    again = bootstrap(fit, args.nsim, seed=args.seed, progress=False, workers=2)
    elapsed_workers = time.perf_counter() - t0
    identical = bool(np.array_equal(boot.samples.to_numpy(), again.samples.to_numpy()))
    cor = boot.samples["cor_Days.(Intercept)|Subject"].to_numpy()
    res: dict[str, Any] = {
        "formula": FORMULA,
        "nsim": args.nsim,
        "seed": args.seed,
        "elapsed_s": elapsed,
        "elapsed_workers_s": elapsed_workers,
        "load": f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after, 2 CPUs",
        "progress_first_last": [progress_lines[0], progress_lines[-1]] if progress_lines else [],
        "identical_same_seed": identical,
        "singular": int(boot.singular.sum()),
        "not_converged": int((~boot.converged).sum()),
        "cor_at_plus1": int(np.sum(cor >= 1 - 1e-9)),
        "cor_at_minus1": int(np.sum(cor <= -1 + 1e-9)),
        "t0": boot.t0.to_dict(),
        "bootstrap_bias": (boot.samples.mean() - boot.t0).to_dict(),
        "profile_ci": {k: list(v) for k, v in zip(prof.index, prof.to_numpy(), strict=True)},
        "comparison": compare(fit, boot, prof).to_dict(orient="records"),
    }
    if REFERENCE.exists():
        res["r_profile_ci"] = json.loads(REFERENCE.read_text()).get("profile_ci")
    if args.seeds:
        res["nseeds"] = args.seeds
        res["seeds"] = seeds_summary(fit, prof, args.nsim, args.seeds)
    res["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "bootstrap_sleepstudy.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "bootstrap_sleepstudy.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
