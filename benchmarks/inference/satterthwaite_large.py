"""Satterthwaite p-values on a large LMM: multilevel against lmerTest.

    python benchmarks/inference/satterthwaite_large.py [--sizes 2000x100,10000x100] [--repeats 3]
                                    [--engines multilevel,multilevel-1t,lmertest] [--append]

Data (one CSV per size, written once to ``benchmarks/.data/``, fixed seed): G groups
of m rows, x ~ N(0, 1), y = 1 + 0.5·x + u0 + u1·x + e with sd(u0) = 1, sd(u1) = 0.5,
corr(u0, u1) = 0.3, sd(e) = 1; model ``y ~ x + (x | g)`` fitted by REML.

Every engine runs in its own fresh process, one after the other, never in parallel;
before each run the driver waits (up to a minute) for the machine to be quiet and
records the share of the CPUs other processes used while the run was going on.

multilevel (this file with ``--child``): per repeat a fresh ``lmer`` fit and
``coef_table(fit, "Satterthwaite")`` (its derivative cache is per fit, so every
repeat computes the DFs from scratch), with the default BLAS threads and, as
``multilevel-1t``, with BLAS on one thread; the peak RSS (``ru_maxrss``; JSON
``maxrss_mb``) after loading (``loaded``), after the first fit and its table (``fit``)
and after all repeats (``table``: two fits are alive while the next replaces the last);
then, once more on a fresh fit under
``tracemalloc``, the peak of memory allocated during ``coef_table`` alone.

lmerTest: ``satterthwaite_lmertest.R`` (lme4 fit; ``lmerTest::lmer`` = fit plus
lmerTest's derivative set-up; that set-up alone, ``as_lmerModLmerTest``; ``summary``).

Results: ``benchmarks/inference/results/satterthwaite_large.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DATA_DIR = Path(os.environ.get("BENCH_DATA_DIR", ROOT / "benchmarks" / ".data"))
RESULTS = HERE / "results"
FORMULA = "y ~ x + (x | g)"
TRUTH = {"beta": [1.0, 0.5], "sd_u0": 1.0, "sd_u1": 0.5, "corr": 0.3, "sigma": 1.0}
SEED = 20240605
# multilevel-1t: BLAS on one thread, as R's reference BLAS (OpenBLAS's threads wait
# for a busy second CPU on every small matrix call)
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

sys.path.insert(0, str(ROOT / "benchmarks"))
import sysload  # noqa: E402


def data_path(groups: int, per_group: int) -> Path:
    """Write (once) and return the CSV of G groups x m rows."""
    import numpy as np
    import pandas as pd

    path = DATA_DIR / f"inference_sat_{groups}x{per_group}.csv"
    meta = path.with_suffix(".json")
    spec = {"version": 1, "seed": SEED, "groups": groups, "per_group": per_group, **TRUTH}
    if path.exists() and meta.exists() and json.loads(meta.read_text()) == spec:
        return path
    rng = np.random.default_rng([SEED, groups, per_group])
    g = np.repeat(np.arange(groups), per_group)
    x = rng.standard_normal(g.size)
    s0, s1, r = TRUTH["sd_u0"], TRUTH["sd_u1"], TRUTH["corr"]
    chol = np.linalg.cholesky(np.array([[s0**2, r * s0 * s1], [r * s0 * s1, s1**2]]))
    u = rng.standard_normal((groups, 2)) @ chol.T
    b0, b1 = TRUTH["beta"]
    y = b0 + b1 * x + u[g, 0] + u[g, 1] * x + TRUTH["sigma"] * rng.standard_normal(g.size)
    width = len(str(groups - 1))
    labels = np.char.add("g", np.char.zfill(np.arange(groups).astype(str), width))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"y": y, "x": x, "g": labels[g]}).to_csv(path, index=False, float_format="%.17g")
    meta.write_text(json.dumps(spec))
    return path


# -- the multilevel child process ------------------------------------------------------------
def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(csv: str, repeats: int) -> None:
    """Time lmer + coef_table(Satterthwaite) in this process; print RESULT {json}."""
    import tracemalloc
    import warnings

    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import pandas as pd

    import multilevel
    from multilevel.inference import coef_table

    df = pd.read_csv(csv)
    df["g"] = pd.Categorical(df["g"])  # R's factor(): sorted labels
    rss = {"loaded": _maxrss_mb()}
    fit_s, table_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = multilevel.lmer(FORMULA, df, REML=True)
        t1 = time.perf_counter()
        table = coef_table(fit, "Satterthwaite")
        t2 = time.perf_counter()
        fit_s.append(t1 - t0)
        table_s.append(t2 - t1)
        if len(fit_s) == 1:
            rss["fit"] = _maxrss_mb()
    rss["table"] = _maxrss_mb()
    # allocation peaks under tracemalloc (numpy reports its buffers to it)
    tracemalloc.start()
    fit = multilevel.lmer(FORMULA, df, REML=True)
    fit_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    coef_table(fit, "Satterthwaite")
    table_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    out = {
        "engine_version": (
            f"multilevel (numpy {np.__version__}, Python {platform.python_version()})"
        ),
        "nobs": int(fit.nobs),
        "ngroups": int(fit.ngroups["g"]),
        "fit": {"wall_s": fit_s},
        "table": {"wall_s": table_s},
        "maxrss_mb": rss,
        "tracemalloc_peak_mb": {"fit": fit_peak / 2**20, "table": table_peak / 2**20},
        "names": [str(i) for i in table.index],
        "estimate": table["Estimate"].tolist(),
        "se": table["Std. Error"].tolist(),
        "df": table["df"].tolist(),
        "t": table["t value"].tolist(),
        "p": table["Pr(>|t|)"].tolist(),
        "reml_criterion": float(fit.reml_criterion),
        "theta": [float(v) for v in fit.theta],
    }
    print("RESULT " + json.dumps(out), flush=True)


# -- the driver --------------------------------------------------------------------------------
def run(
    cmd: list[str], timeout: float, env: dict[str, str] | None, idle: float, idle_wait: float
) -> dict[str, Any]:
    """Run one engine process; its RESULT, its peak RSS (wait4) and the others' CPU share."""
    sysload.wait_idle(idle, idle_wait)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        b0, t0 = sysload.busy_seconds(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, env=env)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        busy = sysload.busy_seconds() - b0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    cpu = usage.ru_utime + usage.ru_stime
    res: dict[str, Any] = {
        "returncode": proc.returncode,
        "process_wall_s": wall,
        "process_cpu_s": cpu,
        "process_peak_rss_mb": usage.ru_maxrss / 1024,
        "others_busy": max(0.0, busy - cpu) / (wall * sysload.NCPU),
    }
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            res.update(json.loads(line[len("RESULT ") :]))
            break
    else:
        res["error"] = stderr[-2000:]
    res["stderr_tail"] = stderr[-500:]
    return res


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000x100,10000x100")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", default="multilevel,multilevel-1t,lmertest")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--idle", type=float, default=0.35, help="wait for less CPU use than this")
    ap.add_argument("--idle-wait", type=float, default=60.0, help="but at most this long (s)")
    ap.add_argument("--append", action="store_true", help="add to the runs already in results/")
    ap.add_argument("--child", nargs=2, metavar=("CSV", "REPEATS"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    engines = args.engines.split(",")
    records = []
    previous = RESULTS / "satterthwaite_large.json"
    if args.append and previous.exists():
        records = json.loads(previous.read_text())["runs"]
    for size in args.sizes.split(","):
        groups, per_group = (int(v) for v in size.split("x"))
        csv = str(data_path(groups, per_group))
        for engine in engines:
            env = None
            if engine in ("multilevel", "multilevel-1t"):
                cmd = [sys.executable, __file__, "--child", csv, str(args.repeats)]
                if engine == "multilevel-1t":
                    env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
            elif engine == "lmertest":
                cmd = ["Rscript", str(HERE / "satterthwaite_lmertest.R"), csv, FORMULA]
                cmd.append(str(args.repeats))
            else:
                raise SystemExit(f"unknown engine {engine!r}")
            print(f"{size} {engine} ...", file=sys.stderr, flush=True)
            rec = {
                "size": size,
                "engine": engine,
                "repeats": args.repeats,
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "loadavg_before": load_avg(),
            }
            rec.update(run(cmd, args.timeout, env, args.idle, args.idle_wait))
            rec["loadavg_after"] = load_avg()
            records.append(rec)
            print(summary_line(rec), file=sys.stderr, flush=True)
    out = {
        "formula": FORMULA,
        "truth": TRUTH,
        "seed": SEED,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": records,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "satterthwaite_large.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "satterthwaite_large.md").write_text(markdown(out))
    print(markdown(out))


def _med(v: list[float]) -> float:
    return statistics.median(v)


def summary_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"  error: {r['error'][-300:]}"
    if r["engine"].startswith("multilevel"):
        return (
            f"  fit {_med(r['fit']['wall_s']):.3f}s  coef_table {_med(r['table']['wall_s']):.3f}s"
            f"  peak RSS {r['process_peak_rss_mb']:.0f} MB  others {r['others_busy']:.0%}"
        )
    return (
        f"  lme4 fit {_med(r['fit']['wall_s']):.3f}s  lmerTest::lmer "
        f"{_med(r['lmertest']['wall_s']):.3f}s  as_lmerModLmerTest "
        f"{_med(r['convert']['wall_s']):.3f}s  summary {_med(r['summary']['wall_s']):.3f}s"
        f"  peak RSS {r['vm_hwm_mb']['summary']:.0f} MB  others {r['others_busy']:.0%}"
    )


def _mm(v: list[float]) -> str:
    """median (min) of timings."""
    return f"{_med(v):.3f} ({min(v):.3f})"


def markdown(out: dict[str, Any]) -> str:
    lines = [
        "# Satterthwaite p-values on large data: multilevel vs lmerTest",
        "",
        f"`{out['formula']}`, REML; written {out['date']} on {out['machine']['cpus']} CPUs "
        f"({out['machine']['platform']}). Times: median (min) of the repeats, wall clock, s. "
        "'others': share of all CPUs used by other processes during the run. "
        "multilevel-1t: BLAS limited to one thread (R uses the single-threaded reference "
        "BLAS here).",
        "",
        "| rows | groups | engine | repeats | fit (s) | Satterthwaite (s) | fit + table (s) "
        "| peak RSS (MB) | memory of the DF step | others | load avg |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in out["runs"]:
        if "error" in r:
            lines.append(f"| | | {r['engine']} ({r['size']}) | error | | | | | | | |")
            continue
        if r["engine"].startswith("multilevel"):
            fit, tab = r["fit"]["wall_s"], r["table"]["wall_s"]
            both = [a + b for a, b in zip(fit, tab, strict=True)]
            peak = r["process_peak_rss_mb"]
            mem = (
                f"tracemalloc peak {r['tracemalloc_peak_mb']['table']:.1f} MB; peak RSS "
                f"{r['maxrss_mb']['loaded']:.0f} loaded, {r['maxrss_mb']['fit']:.0f} 1st fit + "
                f"table, {r['maxrss_mb']['table']:.0f} all repeats"
            )
        else:
            fit = r["fit"]["wall_s"]
            lt, cv, sm = r["lmertest"]["wall_s"], r["convert"]["wall_s"], r["summary"]["wall_s"]
            tab = [a + c for a, c in zip(cv, sm, strict=True)]
            both = [a + c for a, c in zip(lt, sm, strict=True)]
            peak = r["vm_hwm_mb"]["summary"]
            heap = max(r["convert"]["heap_max_mb"])
            mem = (
                f"R heap max {heap:.0f} MB in as_lmerModLmerTest; VmHWM "
                f"{r['vm_hwm_mb']['loaded']:.0f} loaded, {r['vm_hwm_mb']['fit']:.0f} lme4 fits, "
                f"{r['vm_hwm_mb']['lmertest']:.0f} lmerTest fits"
            )
        la = r["loadavg_before"][0]
        lines.append(
            f"| {r['nobs']:,} | {r['ngroups']:,} | {r['engine']} | {len(r['fit']['wall_s'])} "
            f"| {_mm(fit)} | {_mm(tab)} | {_mm(both)} | {peak:.0f} | {mem} "
            f"| {r['others_busy']:.0%} | {la} |"
        )
    lines += [
        "",
        "lmerTest: 'fit' is lme4::lmer; 'Satterthwaite' is as_lmerModLmerTest (lmerTest's "
        "derivative set-up on the lme4 fit) + summary; 'fit + table' is lmerTest::lmer + "
        "summary.",
        "",
    ]
    lines += ["## Estimates", "", "| rows | engine | term | estimate | SE | df | p |"]
    lines += ["| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in out["runs"]:
        if "error" in r:
            continue
        for i, name in enumerate(r["names"]):
            lines.append(
                f"| {r['nobs']:,} | {r['engine']} | {name} | {r['estimate'][i]:.7g} "
                f"| {r['se'][i]:.7g} | {r['df'][i]:.6g} | {r['p'][i]:.4g} |"
            )
    lines.append("")
    crit = [f"{r['engine']} {r['nobs']:,}: {r['reml_criterion']:.6f}" for r in out["runs"]]
    lines += ["REML criterion at the optimum: " + "; ".join(crit), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
