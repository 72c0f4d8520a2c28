"""Benchmark driver: time LMM fits of several engines side by side.

    python benchmarks/run.py [--cases a,b,c,...,j] [--repeats N]
                             [--engines multilevel,lme4,glmm,mixedlm]

Every (case, engine, thread setting) runs in a fresh subprocess, one after the
other; the subprocess's peak RSS comes from ``os.wait4``. Results are printed
as a table and written to ``benchmarks/results/latest.json``. See README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cases  # noqa: E402
import sysload  # noqa: E402

BENCH_PYTHON = os.environ.get("BENCH_PYTHON", "/work/benchenv/bin/python")
PROJECT_PYTHON = os.environ.get("BENCH_PROJECT_PYTHON", sys.executable)
RSCRIPT = os.environ.get("BENCH_RSCRIPT", "Rscript")
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # set on some machines here
BUSY_WARN = 0.10  # flag runs during which other processes used more CPU than this
THREAD_VARS = sysload.THREAD_VARS


@dataclass(frozen=True)
class Engine:
    name: str
    kind: str  # "python" or "r"
    interpreter: str
    script: str
    threaded: bool = True  # run once per --threads setting
    unsupported: dict[str, str] = field(default_factory=dict)  # case key -> reason

    def command(self, case: cases.Case, repeats: int, budget: float) -> list[str]:
        script = str(HERE / self.script)
        if case.max_repeats is not None:
            repeats = min(repeats, case.max_repeats)
        if self.kind == "r":
            spec = [str(case.csv_path()), case.formula, cases.factor_spec(case)]
            reml = "TRUE" if case.REML else "FALSE"
            return [self.interpreter, script, *spec, str(repeats), str(budget), reml]
        # the Python runners read the formula, factors and REML flag from cases.py
        return [self.interpreter, script, case.key, str(repeats), str(budget)]

    def missing(self) -> str | None:
        """Why this engine cannot run at all, or None."""
        return sysload.interpreter_missing(self.interpreter)


ENGINES = {
    e.name: e
    for e in [
        Engine("multilevel", "python", PROJECT_PYTHON, "run_multilevel.py"),
        # Debian's R links the reference BLAS, which is single-threaded.
        Engine("lme4", "r", RSCRIPT, "run_lme4.R", threaded=False),
        Engine("glmm", "python", BENCH_PYTHON, "run_glmm.py"),
        Engine("mixedlm", "python", BENCH_PYTHON, "run_mixedlm.py"),
    ]
}


def run_one(
    engine: Engine, case: cases.Case, threads: str, args: argparse.Namespace
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "case": case.key,
        "case_name": case.name,
        "engine": engine.name,
        "threads": threads,
    }
    if case.key in engine.unsupported:
        return rec | {"status": "unsupported", "reason": engine.unsupported[case.key]}
    env = dict(os.environ)
    if threads == "1":
        env.update({v: "1" for v in THREAD_VARS})
    if args.native_blas:
        for v in BLAS_VARS:
            env.pop(v, None)
    if args.idle_threshold < 1:
        rec["busy_before"] = sysload.wait_idle(args.idle_threshold, args.idle_wait)
    res = sysload.measured_run_beside(
        engine.command(case, args.repeats, args.budget), env, args.timeout, HERE, args.competing
    )
    rec["competing"] = args.competing
    if res["status"] != "ok":
        return rec | res
    evals = res.get("evals")
    return rec | res | {"ms_per_eval": 1000 * res["median_s"] / evals if evals else None}


def run_with_retries(
    engine: Engine, case: cases.Case, threads: str, args: argparse.Namespace
) -> dict[str, Any]:
    """run_one, again while other processes disturbed it (sysload.with_retries)."""
    retries = 0 if args.competing else args.retries  # there, others are busy by design
    return sysload.with_retries(lambda: run_one(engine, case, threads, args), retries, BUSY_WARN)


def add_ratios(results: list[dict[str, Any]], baseline: str) -> None:
    """ratio = engine median / baseline median (same case; same threads if the baseline has it)."""
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
        best = min(
            x["criterion"]
            for x in results
            if x["case"] == r["case"] and x.get("criterion") is not None
        )
        r["crit_minus_best"] = None if r.get("criterion") is None else r["criterion"] - best


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


# (header, width, cell) for the table; cell() reads one ok result.
COLUMNS: list[tuple[str, int, Any]] = [
    ("median ms", 11, lambda r: f"{r['median_s'] * 1000:.2f}"),
    ("cpu ms", 11, lambda r: f"{r['cpu_median_s'] * 1000:.2f}"),
    ("cpu/wall", 9, lambda r: f"{r['cpu_median_s'] / r['median_s']:.2f}"),
    ("n", 3, lambda r: str(r["repeats"])),
    ("evals", 6, lambda r: fmt(r["evals"], "d")),
    ("ms/eval", 11, lambda r: fmt(r["ms_per_eval"], ".3f")),
    ("peak MB", 8, lambda r: f"{r['peak_mb']:.0f}"),
    ("+fit MB", 8, lambda r: f"{r['peak_mb'] - r['rss_before_fit_mb']:.0f}"),
    ("crit-best", 10, lambda r: fmt(r["crit_minus_best"], ".1e")),
]


def print_table(results: list[dict[str, Any]], baseline: str) -> None:
    cols = COLUMNS + [(f"x {baseline}", 13, lambda r: fmt(r["ratio"], ".2f"))]
    head = f"{'engine':<11}{'thr':>4}" + "".join(f"{h:>{w}}" for h, w, _ in cols)
    for key in dict.fromkeys(r["case"] for r in results):
        case = cases.CASES[key]
        fit_by = "REML" if case.REML else "ML"
        print(f"\n({key}) {case.name}: {case.formula}  [{fit_by}; crit = {case.criterion_name}]")
        if not any(
            r["engine"] == baseline and r["status"] == "ok" for r in results if r["case"] == key
        ):
            print(f"(no {baseline} result for this case: no ratios)")
        print(head)
        for r in (r for r in results if r["case"] == key):
            label = f"{r['engine']:<11}{r['threads']:>4}"
            if r["status"] != "ok":
                print(f"{label}  {r['status'].upper()}: {r['reason']}")
                continue
            flags = "" if r.get("converged") in (True, None) else "  (not converged)"
            if r.get("warmup_only"):
                flags += "  (one fit: the warm-up exceeded --budget)"
            if r["others_busy"] > BUSY_WARN:
                flags += f"  (!) other processes used {r['others_busy']:.0%} of the CPUs"
            print(label + "".join(f"{cell(r):>{w}}" for _, w, cell in cols) + flags)


def git_state() -> str:
    """Commit of the working tree (and whether it has uncommitted changes)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "../src"],
            cwd=HERE,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    if not head:
        return "unknown (not a git checkout)"
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--cases", default=",".join(cases.CASES), help="comma-separated case keys (default: all)"
    )
    ap.add_argument(
        "--engines", default=",".join(ENGINES), help="comma-separated engines (default: all)"
    )
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed fits after one warm-up (default 5)"
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds per run: fewer (>=3) fits if exceeded; only the warm-up if it exceeds it",
    )
    ap.add_argument(
        "--threads", default="default,1", help="'default', '1' or both (threaded engines)"
    )
    ap.add_argument("--baseline", default="multilevel", help="engine the ratios divide by")
    ap.add_argument(
        "--timeout", type=float, default=1800.0, help="kill one run after this many seconds"
    )
    ap.add_argument(
        "--native-blas", action="store_true", help="unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE"
    )
    ap.add_argument(
        "--idle-threshold",
        type=float,
        default=0.15,
        help="before each run, wait until less than this share of the CPUs is busy (1 = no wait)",
    )
    ap.add_argument("--retries", type=int, default=3, help="re-runs of a disturbed run")
    ap.add_argument(
        "--competing",
        type=int,
        default=0,
        help="busy processes (one core each) running beside every timed run",
    )
    ap.add_argument("--idle-wait", type=float, default=300.0, help="give up waiting after N s")
    ap.add_argument("--output", type=Path, default=HERE / "results" / "latest.json")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="add to the results already in --output (replacing the same case, engine, threads)",
    )
    return ap.parse_args()


def merge_previous(
    path: Path, results: list[dict[str, Any]], meta: dict[str, Any]
) -> list[dict[str, Any]]:
    """``results`` added to those already in ``path`` (a new run replaces an old
    one of the same case, engine and threads); the old runs' ``meta`` go to
    ``meta["earlier_runs"]``."""
    if not path.exists():
        return results
    old = json.loads(path.read_text())
    new_keys = {(r["case"], r["engine"], r["threads"]) for r in results}
    kept = [r for r in old["results"] if (r["case"], r["engine"], r["threads"]) not in new_keys]
    earlier = old["meta"].pop("earlier_runs", [])
    meta["earlier_runs"] = [*earlier, old["meta"]]
    case_order, engine_order = list(cases.CASES), list(ENGINES)
    return sorted(
        kept + results,
        key=lambda r: (case_order.index(r["case"]), engine_order.index(r["engine"]), r["threads"]),
    )


def main() -> None:
    args = parse_args()
    started, git_at_start = time.strftime("%Y-%m-%d %H:%M:%S"), git_state()

    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    modes = [t.strip() for t in args.threads.split(",") if t.strip()]
    for k in keys:
        cases.CASES[k].csv_path()  # generate simulated data before any timing
    results: list[dict[str, Any]] = []
    for key in keys:
        case = cases.CASES[key]
        for name in names:
            engine = ENGINES[name]
            why = engine.missing()
            for threads in modes if engine.threaded else ["default"]:
                print(f"running ({key}) {name} threads={threads} ...", file=sys.stderr, flush=True)
                if why:
                    rec = {"case": key, "case_name": case.name, "engine": name, "threads": threads}
                    results.append(rec | {"status": "skipped", "reason": why})
                else:
                    results.append(run_with_retries(engine, case, threads, args))
                if results[-1]["status"] != "ok":
                    print(
                        f"  {results[-1]['status']}: {results[-1]['reason']}",
                        file=sys.stderr,
                        flush=True,
                    )
    meta = {
        "started": started,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_at_start": git_at_start,  # others may commit while a long run goes on
        "git": git_state(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.machine(),
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "env": {v: os.environ.get(v) for v in THREAD_VARS + BLAS_VARS},
        "formulas": {k: cases.CASES[k].formula for k in keys},
        "reml": {k: cases.CASES[k].REML for k in keys},
    }
    if args.merge:
        results = merge_previous(args.output, results, meta)
    add_ratios(results, args.baseline)
    print_table(results, args.baseline)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
