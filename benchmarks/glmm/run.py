"""GLMM benchmark driver: time GLMM fits (binomial, Poisson, negative binomial,
Gamma, cumulative link for ordinal responses) of several engines side by side.

    python benchmarks/glmm/run.py [--cases cbpp-1,cbpp-25,...] [--repeats N]
                                  [--engines multilevel,lme4,glmmTMB,ordinal,glmm,mixedlm]
                                  [--competing N]

Every (case, engine, thread setting) runs in a fresh subprocess, one after the
other; the subprocess's peak RSS comes from ``os.wait4``. Results are printed
as tables and written to ``benchmarks/glmm/results/latest.json``. See README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # for ../sysload.py (after HERE: our cases.py wins)

import cases  # noqa: E402
import sysload  # noqa: E402

BENCH_PYTHON = os.environ.get("BENCH_PYTHON", "/work/benchenv/bin/python")
PROJECT_PYTHON = os.environ.get("BENCH_PROJECT_PYTHON", sys.executable)
RSCRIPT = os.environ.get("BENCH_RSCRIPT", "Rscript")
# The engines here run (almost) single-threaded on 2 cores: a run is disturbed when other
# processes used more than the other core, i.e. competed for ours.
BUSY_WARN = 0.5
THREAD_VARS = sysload.THREAD_VARS
TARGET = 10.0  # lme4 (and glmmTMB) time / multilevel time we aim for
TARGET_ENGINES = ("lme4", "glmmTMB")


@dataclass(frozen=True)
class Engine:
    name: str
    kind: str  # "python" or "r"
    interpreter: str
    script: str
    threaded: bool = True  # run once per --threads setting
    unsupported: dict[str, str] = field(default_factory=dict)  # case key -> reason

    def command(self, case: cases.Case, repeats: int, budget: float) -> list[str]:
        if self.kind == "r":  # run_lme4.R: the engine name is the R package to use
            d = case.dataset
            return [
                self.interpreter,
                str(HERE / self.script),
                self.name,
                str(d.prepared_path()),
                case.formula_for(self.name),
                case.family,
                str(case.nagq),
                cases.factor_spec(d),
                str(repeats),
                str(budget),
            ]
        return [self.interpreter, str(HERE / self.script), case.key, str(repeats), str(budget)]

    def missing(self) -> str | None:
        """Why this engine cannot run at all, or None."""
        return sysload.interpreter_missing(self.interpreter)


def _cases_where(test, reason: str) -> dict[str, str]:
    return {k: reason for k, c in cases.CASES.items() if test(c)}


def _ordinal_cases(reason: str) -> dict[str, str]:
    """The cumulative link (clmm) cases, unsupported by an engine without such a model."""
    return _cases_where(lambda c: c.family == cases.ORDINAL, reason)


ENGINES = {
    e.name: e
    for e in [
        Engine("multilevel", "python", PROJECT_PYTHON, "run_multilevel.py"),
        # Debian's R links the single-threaded reference BLAS.
        Engine(
            "lme4",
            "r",
            RSCRIPT,
            "run_lme4.R",
            threaded=False,
            unsupported=_ordinal_cases(
                "lme4 has no cumulative link model (ordinal::clmm is the R engine here)"
            ),
        ),
        # glmmTMB runs one thread unless glmmTMBControl(parallel =) says otherwise.
        Engine(
            "glmmTMB",
            "r",
            RSCRIPT,
            "run_lme4.R",
            threaded=False,
            unsupported=_cases_where(
                lambda c: c.nagq > 1,
                "glmmTMB has the Laplace approximation only (no adaptive quadrature)",
            )
            | _ordinal_cases(
                "glmmTMB 1.1.5 has no cumulative link family "
                "(its ordbeta is ordered beta regression for a continuous response)"
            ),
        ),
        # ordinal::clmm, the R engine of the cumulative link (ordinal) cases only
        Engine(
            "ordinal",
            "r",
            RSCRIPT,
            "run_lme4.R",
            threaded=False,
            unsupported=_cases_where(
                lambda c: c.family != cases.ORDINAL,
                "ordinal::clmm fits cumulative link models only",
            ),
        ),
        Engine(
            "glmm",
            "python",
            BENCH_PYTHON,
            "run_glmm.py",
            unsupported=_ordinal_cases(
                "glmm 0.6.2 has no cumulative link / ordinal model (families gaussian, "
                "binomial, poisson, gamma, negativebinomial, inversegaussian)"
            ),
        ),
        Engine(
            "mixedlm",
            "python",
            BENCH_PYTHON,
            "run_mixedlm.py",
            unsupported=_cases_where(
                lambda c: c.family == "negative_binomial",
                "mixedlm 1.3.0 does not estimate the negative binomial theta "
                "(NegativeBinomial(theta=1.0) / glmer_nb(theta=1.0) hold it fixed)",
            )
            | _cases_where(
                lambda c: c.family.startswith("Gamma"),
                "mixedlm 1.3.0 does not estimate the Gamma shape "
                "(its Gamma family has unit dispersion: shape 1, sigma = 1.0)",
            )
            | _ordinal_cases(
                "mixedlm 1.3.0 has no cumulative link / ordinal model (its families, "
                "custom ones included, have a scalar mean and no thresholds)"
            ),
        ),
    ]
}


def run_one(
    engine: Engine, case: cases.Case, threads: str, args: argparse.Namespace
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "case": case.key,
        "engine": engine.name,
        "threads": threads,
        "formula": case.formula_for(engine.name),
    }
    if case.key in engine.unsupported:
        return rec | {"status": "unsupported", "reason": engine.unsupported[case.key]}
    env = dict(os.environ)
    if threads == "1":
        env.update({v: "1" for v in THREAD_VARS})
    if args.idle_threshold < 1:
        rec["busy_before"] = sysload.wait_idle(args.idle_threshold, args.idle_wait)
    rec["loadavg_before"] = list(os.getloadavg())
    rec["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res = sysload.measured_run_beside(
        engine.command(case, args.repeats, args.budget), env, args.timeout, HERE, args.competing
    )
    return rec | {"competing": args.competing} | res


def run_with_retries(
    engine: Engine, case: cases.Case, threads: str, args: argparse.Namespace
) -> dict[str, Any]:
    """run_one, again while other processes disturbed it (sysload.with_retries)."""
    return sysload.with_retries(
        lambda: run_one(engine, case, threads, args), args.retries, busy_limit(args.competing)
    )


# With --competing N, the N busy processes alone use N/NCPU of the CPUs; anything beyond that
# (by more than this share of the CPUs, measurement noise) is a process the run did not ask for.
COMPETING_MARGIN = 0.05


def busy_limit(competing: int) -> float:
    """Share of the CPUs other processes may use before a run counts as disturbed: quiet,
    the cores other than the run's own; beside N competitors, only the competitors' share."""
    if not competing:
        return BUSY_WARN
    return competing / sysload.NCPU + COMPETING_MARGIN


def disturbed(r: dict[str, Any]) -> bool:
    return r["others_busy"] > busy_limit(r.get("competing", 0))


def add_ratios(results: list[dict[str, Any]], baseline: str) -> None:
    """ratio = engine median / baseline median (same case; same threads if the baseline has it);
    dloglik = full log-likelihood minus the highest any engine reached on the case (among
    the comparable ones: lme4's Gamma logLik is not at the maximum-likelihood shape)."""
    base = {
        (r["case"], r["threads"]): r["median_s"]
        for r in results
        if r["engine"] == baseline and r["status"] == "ok"
    }
    for r in results:
        if r["status"] != "ok":
            continue
        b = base.get((r["case"], r["threads"])) or base.get((r["case"], "default"))
        r["ratio"] = r["median_s"] / b if b else None
        comparable = [
            x["loglik_full"]
            for x in results
            if x["case"] == r["case"] and x["status"] == "ok" and x.get("loglik_comparable", True)
        ]
        r["dloglik"] = (
            r["loglik_full"] - max(comparable)
            if comparable and r.get("loglik_comparable", True)
            else None
        )


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def fmt_time(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def fmt_n(r: dict[str, Any]) -> str:
    """Number of timed fits; "1w": the warm-up alone exceeded --budget and is the timing."""
    return "1w" if r.get("warmup_only") else str(r["repeats"])


def fmt_dloglik(r: dict[str, Any]) -> str:
    return "n/c" if r.get("dloglik") is None else f"{r['dloglik']:.1e}"


# (header, width, cell) for the table; cell() reads one ok result.
COLUMNS: list[tuple[str, int, Any]] = [
    ("median", 10, lambda r: fmt_time(r["median_s"])),
    ("cpu", 10, lambda r: fmt_time(r["cpu_median_s"])),
    ("n", 3, fmt_n),
    ("evals", 6, lambda r: fmt(r["evals"], "d")),
    ("peak MB", 8, lambda r: f"{r['peak_mb']:.0f}"),
    ("+fit MB", 8, lambda r: f"{r['peak_mb'] - r['rss_before_fit_mb']:.0f}"),
    ("loglik (full)", 16, lambda r: f"{r['loglik_full']:.5f}"),
    ("dloglik", 9, fmt_dloglik),
    ("load1", 6, lambda r: f"{r['loadavg_before'][0]:.2f}"),
]


def case_title(case: cases.Case) -> str:
    how = "Laplace" if case.nagq == 1 else f"nAGQ = {case.nagq}"
    return f"({case.key}) {case.family}, {how}: {case.formula}"


def print_table(results: list[dict[str, Any]], baseline: str) -> None:
    cols = COLUMNS + [(f"x {baseline}", 13, lambda r: fmt(r["ratio"], ".2f"))]
    head = f"{'engine':<11}{'thr':>4}" + "".join(f"{h:>{w}}" for h, w, _ in cols)
    for key in dict.fromkeys(r["case"] for r in results):
        print("\n" + case_title(cases.CASES[key]))
        print(head)
        for r in (r for r in results if r["case"] == key):
            label = f"{r['engine']:<11}{r['threads']:>4}"
            if r["status"] != "ok":
                print(f"{label}  {r['status'].upper()}: {r['reason']}")
                continue
            flags = "" if r.get("converged") in (True, None) else "  (not converged)"
            if disturbed(r):
                flags += f"  (!) others used {r['others_busy']:.0%} of the CPUs"
            print(label + "".join(f"{cell(r):>{w}}" for _, w, cell in cols) + flags)


def print_targets(results: list[dict[str, Any]], baseline: str) -> None:
    """lme4 and glmmTMB time / baseline time per case, against the TARGET speed-up;
    glmm time / baseline time against 1."""
    for engine, target in [(e, TARGET) for e in TARGET_ENGINES] + [("glmm", 1.0)]:
        rows = [r for r in results if r["engine"] == engine and r["status"] == "ok"]
        rows = [r for r in rows if r.get("ratio") and r["engine"] != baseline]
        if not rows:
            continue
        print(f"\nTarget: {engine} time / {baseline} time >= {target:g}")
        for r in rows:
            verdict = "met" if r["ratio"] >= target else "MISSED"
            print(f"  {r['case']:<10} {r['ratio']:8.2f}x  {verdict}")


def markdown_table(results: list[dict[str, Any]], baseline: str) -> str:
    """One row per (case, engine): the README's results table."""
    lines = [
        f"| case | engine | median | cpu | n | evals | peak MB | loglik (full) | dloglik "
        f"| x {baseline} | load1 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        eng = r["engine"] + ("" if r["threads"] == "default" else f" ({r['threads']} thr)")
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {eng} | {r['status']}: {r['reason']} |" + " |" * 8)
            continue
        flag = "" if r.get("converged") in (True, None) else " (conv. warning)"
        if disturbed(r):
            flag += f" (!{r['others_busy']:.0%})"
        lines.append(
            f"| {r['case']} | {eng}{flag} | {fmt_time(r['median_s'])} "
            f"| {fmt_time(r['cpu_median_s'])} | {fmt_n(r)} | {fmt(r['evals'], 'd')} "
            f"| {r['peak_mb']:.0f} | {r['loglik_full']:.5f} | {fmt_dloglik(r)} "
            f"| {fmt(r['ratio'], '.2f')} | {r['loadavg_before'][0]:.2f} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", default=",".join(cases.CASES), help="comma-separated case keys")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated engines")
    ap.add_argument("--repeats", type=int, default=7, help="timed fits after one warm-up")
    ap.add_argument(
        "--budget", type=float, default=60.0, help="seconds per run; fewer (>=3) fits if exceeded"
    )
    ap.add_argument(
        "--threads", default="default", help="'default', '1' or 'default,1' (threaded engines)"
    )
    ap.add_argument("--baseline", default="multilevel", help="engine the ratios divide by")
    ap.add_argument("--timeout", type=float, default=900.0, help="kill one run after N s")
    ap.add_argument(
        "--idle-threshold",
        type=float,
        default=0.5,
        help="before each run, wait until less than this share of the CPUs is busy (1 = no wait)",
    )
    ap.add_argument("--retries", type=int, default=2, help="re-runs of a disturbed run")
    ap.add_argument(
        "--competing",
        type=int,
        default=0,
        help="busy processes (one core each) running beside every timed run",
    )
    ap.add_argument("--idle-wait", type=float, default=180.0, help="give up waiting after N s")
    ap.add_argument("--output", type=Path, default=HERE / "results" / "latest.json")
    ap.add_argument(
        "--update",
        action="store_true",
        help="merge into --output: replace only the runs made now, keep the others",
    )
    ap.add_argument(
        "--from-json", type=Path, help="run nothing: print the tables of an earlier results file"
    )
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())["results"]
        print_table(results, args.baseline)
        print_targets(results, args.baseline)
        print("\n" + markdown_table(results, args.baseline))
        return
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    modes = [t.strip() for t in args.threads.split(",") if t.strip()]
    for k in keys:
        cases.prepare(cases.CASES[k].dataset)  # write the data before any timing
    results: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = os.getloadavg()
    for key in keys:
        case = cases.CASES[key]
        for name in names:
            engine = ENGINES[name]
            why = engine.missing()
            for threads in modes if engine.threaded else ["default"]:
                print(f"running ({key}) {name} threads={threads} ...", file=sys.stderr, flush=True)
                if why:
                    rec = {"case": key, "engine": name, "threads": threads}
                    results.append(rec | {"status": "skipped", "reason": why})
                else:
                    results.append(run_with_retries(engine, case, threads, args))
                if results[-1]["status"] != "ok":
                    print(f"  {results[-1]['status']}: {results[-1]['reason']}", file=sys.stderr)
    meta_extra: dict[str, Any] = {}
    if args.update and args.output.exists():
        old = json.loads(args.output.read_text())
        done = {(r["case"], r["engine"], r["threads"]) for r in results}
        kept = [r for r in old["results"] if (r["case"], r["engine"], r["threads"]) not in done]
        order = {k: i for i, k in enumerate(cases.CASES)}
        names_order = {k: i for i, k in enumerate(ENGINES)}
        results = sorted(
            kept + results, key=lambda r: (order[r["case"]], names_order[r["engine"]], r["threads"])
        )
        keys = list(dict.fromkeys(r["case"] for r in results))
        meta_extra["updates"] = old["meta"].get("updates", []) + [
            {"date": started, "runs": sorted(f"{c}/{e}/{t}" for c, e, t in done)}
        ]
        started = old["meta"]["started"]
        load_start = tuple(old["meta"]["loadavg_start"])
    add_ratios(results, args.baseline)
    print_table(results, args.baseline)
    print_targets(results, args.baseline)
    print("\n" + markdown_table(results, args.baseline))
    meta = {
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.machine(),
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "env": {v: os.environ.get(v) for v in THREAD_VARS},
        "cases": {
            k: {
                "data": cases.CASES[k].data,
                "family": cases.CASES[k].family,
                "nAGQ": cases.CASES[k].nagq,
                "formula": cases.CASES[k].formula,
                "formulas": cases.CASES[k].formulas,
                "derived": cases.CASES[k].dataset.derived,
            }
            for k in keys
        },
        **meta_extra,
        "loglik_definition": "loglik_full: full marginal log-likelihood, density constants "
        "included (multilevel fit.loglik; glmm Fit.loglik; mixedlm logLik(); glmmTMB logLik; "
        "lme4 logLik plus, for nAGQ > 1, the saturated-model term lme4 leaves out). "
        "loglik_reported: the engine's own number. loglik_comparable false: not the "
        "maximised likelihood of the same model (lme4 Gamma: shape by moments), no dloglik.",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
