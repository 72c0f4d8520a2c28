"""Longitudinal AR(1) benchmark: multilevel's ``lme`` against R's nlme, side by side.

Model (both engines, REML)::

    y ~ t, random = ~ t | subject, correlation = corAR1()

on simulated panels of n subjects x 10 occasions (t = 0..9):
y = 2 + 0.5 t + b0 + b1 t + e with b0 ~ N(0, 1), b1 ~ N(0, 0.3^2) independent and
e an AR(1) series within each subject (phi = 0.5, marginal sd 0.8). The data
are written once per size to ``benchmarks/longitudinal/.data/`` (fixed seed) and
both engines read the same CSV.

Every fit runs in a fresh process: ``python run.py --worker DATA.csv`` for
multilevel, ``Rscript run_nlme.R DATA.csv`` for nlme. Only the fit call is
timed; peak RSS is that of the whole process (data loading included).

    python benchmarks/longitudinal/run.py                    # everything
    python benchmarks/longitudinal/run.py --sizes 1000 --no-competing
    python benchmarks/longitudinal/run.py --no-nlme

See README.md beside this file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA_DIR = HERE / ".data"
RESULTS = HERE / "results" / "latest.json"
R_SCRIPT = HERE / "run_nlme.R"

OCCASIONS = 10
BETA = (2.0, 0.5)
SD_B0, SD_B1 = 1.0, 0.3
PHI, SD_E = 0.5, 0.8
SEED = 20240611  # the generator is seeded with (SEED, n)

NCPU = os.cpu_count() or 1
HZ = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- data


def simulate(n: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng([SEED, n])
    t = np.tile(np.arange(OCCASIONS, dtype=float), n)
    subject = np.repeat(np.arange(1, n + 1), OCCASIONS)
    b0 = rng.normal(0.0, SD_B0, n)
    b1 = rng.normal(0.0, SD_B1, n)
    e = np.empty((n, OCCASIONS))
    e[:, 0] = rng.normal(0.0, SD_E, n)  # stationary start
    innov_sd = SD_E * np.sqrt(1.0 - PHI**2)
    for k in range(1, OCCASIONS):
        e[:, k] = PHI * e[:, k - 1] + rng.normal(0.0, innov_sd, n)
    y = BETA[0] + BETA[1] * t + b0[subject - 1] + b1[subject - 1] * t + e.ravel()
    return pd.DataFrame({"subject": subject, "t": t.astype(int), "y": y})


def data_path(n: int) -> Path:
    return DATA_DIR / f"ar1_n{n}_seed{SEED}.csv"


def write_data(n: int) -> None:
    path = data_path(n)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    simulate(n).to_csv(tmp, index=False)  # shortest round-trip float repr
    tmp.replace(path)


def data_file(n: int) -> Path:
    """The CSV for ``n`` subjects, simulated (in a subprocess) if missing.

    The driver itself never imports numpy or pandas: a child's peak RSS
    (ru_maxrss) starts from its parent's RSS at fork, so the driver stays small.
    """
    path = data_path(n)
    if not path.exists():
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--simulate", str(n)],
                       check=True)  # fmt: skip
    return path


# --------------------------------------------------------------------------- worker


def current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(csv: str) -> None:
    """One multilevel fit in this (fresh) process; prints ``RESULT {json}``."""
    import pandas as pd

    import multilevel as ml

    df = pd.read_csv(csv)
    rss_before = current_rss_mb()
    c0, t0 = time.process_time(), time.perf_counter()
    fit = ml.lme("y ~ t", "~ t | subject", df, correlation=ml.corAR1())
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {
        "ok": True,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": peak,
        "rss_before_fit_mb": rss_before,
        "loglik": float(fit.loglik),
        "phi": float(fit.corstruct["Phi"]),
        "converged": bool(fit.converged),
        "nobs": len(df),
        "multilevel_version": getattr(ml, "__version__", "?"),
        "multilevel_file": ml.__file__,
    }
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- driver


def busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(v) for v in fh.readline().split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / HZ


def busy_fraction(seconds: float) -> float:
    b0 = busy_seconds()
    time.sleep(seconds)
    return (busy_seconds() - b0) / (seconds * NCPU)


def wait_quiet(threshold: float, max_wait: float) -> float:
    """Wait up to ``max_wait`` s for the machine's busy share to drop below
    ``threshold``; returns the last share seen."""
    deadline = time.monotonic() + max_wait
    frac = busy_fraction(1.0)
    while frac >= threshold and time.monotonic() < deadline:
        frac = busy_fraction(2.0)
    return frac


def top_others(limit: int = 3) -> list[str]:
    """The busiest other processes right now (for the record)."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,rss,args", "--sort=-pcpu"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()[1 : limit + 1]
    except (OSError, subprocess.SubprocessError):
        return []
    return [" ".join(line.split())[:120] for line in out]


def run_measured(
    cmd: list[str], timeout: float | None, start_marker: str | None = None
) -> dict[str, Any]:
    """Run ``cmd`` in its own process group. The time limit counts from the
    latest ``start_marker`` line on stdout if given (else from the start); on
    expiry the group is killed. Returns output, exit status, the child's peak
    RSS (wait4) and the share of the cores other processes used meanwhile."""
    with tempfile.TemporaryDirectory() as tmp:
        out_path, err_path = Path(tmp, "stdout"), Path(tmp, "stderr")
        load0 = os.getloadavg()
        b0, t0 = busy_seconds(), time.monotonic()
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, start_new_session=True)
        clock_from = t0
        killed = False
        seen = 0
        with open(out_path) as watch:  # its own file offset
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                time.sleep(0.5)
                if start_marker is not None:
                    watch.seek(seen)
                    chunk = watch.read()
                    seen += len(chunk)
                    if start_marker in chunk:
                        clock_from = time.monotonic()
                if timeout is not None and time.monotonic() - clock_from > timeout and not killed:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        busy = busy_seconds() - b0
        child_cpu = usage.ru_utime + usage.ru_stime
        stdout, stderr = out_path.read_text(), err_path.read_text()
    result = None
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    return {
        "result": result,
        "returncode": proc.returncode,
        "timed_out": killed,
        "process_wall_s": wall,
        "process_peak_rss_mb": usage.ru_maxrss / 1024,
        "others_busy": max(0.0, (busy - child_cpu) / (wall * NCPU)) if wall > 0 else 0.0,
        "loadavg_before": load0,
        "stderr_tail": stderr[-2000:] if (result is None or proc.returncode) else "",
    }


def run_multilevel(csv: Path) -> dict[str, Any]:
    rec = run_measured([sys.executable, str(Path(__file__).resolve()), "--worker", str(csv)], 3600)
    res = rec["result"] or {"ok": False}
    rec.update({k: v for k, v in res.items() if k != "ok"})
    rec["ok"] = bool(res.get("ok")) and rec["returncode"] == 0
    del rec["result"]
    return rec


def run_nlme(csv: Path, timeout: float) -> dict[str, Any]:
    rscript = os.environ.get("BENCH_RSCRIPT", shutil.which("Rscript") or "Rscript")
    rec = run_measured([rscript, str(R_SCRIPT), str(csv)], timeout, start_marker="FIT_START")
    res = rec["result"] or {"ok": False}
    rec.update({k: v for k, v in res.items() if k != "ok"})
    rec["ok"] = bool(res.get("ok")) and rec["returncode"] == 0
    if rec["ok"]:
        retried = rec["retried_with_optim"]
        rec["status"] = "ok" + (" (retried with opt = 'optim')" if retried else "")
    elif rec["timed_out"]:
        rec["status"] = f"did not finish in {timeout / 60:g} min (killed)"
    elif rec["returncode"] == -signal.SIGKILL:
        rec["status"] = "killed (SIGKILL: out of memory?)"
    elif any("cannot allocate" in (a.get("error") or "") for a in res.get("attempts", [])):
        rec["status"] = "failed: out of memory"
    else:
        errs = [a.get("error") for a in res.get("attempts", []) if a.get("error")]
        rec["status"] = "failed: " + (errs[-1] if errs else rec["stderr_tail"][-300:])
    del rec["result"]
    return rec


def versions() -> dict[str, Any]:
    v: dict[str, Any] = {"python": sys.version.split()[0]}
    code = (
        "import json, numpy, pandas, scipy, multilevel; print(json.dumps({"
        "'numpy': numpy.__version__, 'pandas': pandas.__version__, "
        "'scipy': scipy.__version__, 'multilevel': getattr(multilevel, '__version__', '?')}))"
    )
    try:
        v.update(json.loads(subprocess.check_output([sys.executable, "-c", code], text=True)))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        v["python_packages"] = f"unavailable: {exc}"
    try:
        v["R"] = subprocess.run(
            ["Rscript", "-e", 'cat(R.version.string, as.character(packageVersion("nlme")))'],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        v["R"] = f"unavailable: {exc}"
    return v


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    diff = git("diff", "HEAD", "--", "src")
    return {
        "commit": git("rev-parse", "HEAD"),
        "src_modified": git("status", "--porcelain", "src").splitlines(),
        "src_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None,
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def summarize(records: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        for engine in ("multilevel", "nlme"):
            recs = [
                r for r in records if r["engine"] == engine and r["n"] == n and not r["competing"]
            ]
            if not recs:
                continue
            ok = [r for r in recs if r["ok"]]
            times = [r["wall_s"] if engine == "multilevel" else r["elapsed_s"] for r in ok]
            rows.append(
                {
                    "engine": engine,
                    "n": n,
                    "runs": len(recs),
                    "ok": len(ok),
                    "median_s": statistics.median(times) if times else None,
                    "times_s": times,
                    "peak_rss_mb": max(r["process_peak_rss_mb"] for r in recs),
                    "loglik": ok[-1]["loglik"] if ok else None,
                    "phi": ok[-1]["phi"] if ok else None,
                    "status": (
                        ("converged" if all(r["converged"] for r in ok) else "NOT converged")
                        if engine == "multilevel" and ok
                        else (recs[-1].get("status") or ("ok" if ok else "failed"))
                    ),
                    "others_busy": max(r["others_busy"] for r in recs),
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    head = (
        f"{'engine':<11}{'subjects':>9}{'runs':>5}{'median s':>10}{'times s':>24}"
        f"{'peak MB':>9}{'logLik (REML)':>18}{'Phi':>10}  {'others':>6}  status"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        times = ", ".join(f"{t:.2f}" for t in r["times_s"])
        print(
            f"{r['engine']:<11}{r['n']:>9,}{r['runs']:>5}{fmt(r['median_s'], '.2f'):>10}"
            f"{times:>24}{r['peak_rss_mb']:>9.0f}{fmt(r['loglik'], '.5f'):>18}"
            f"{fmt(r['phi'], '.5f'):>10}  {r['others_busy']:>6.0%}  {r['status']}"
        )
    for r in records:
        if r["competing"]:
            print(
                f"multilevel {r['n']:>9,} beside a busy process: "
                f"{fmt(r.get('wall_s'), '.2f')} s, peak {r['process_peak_rss_mb']:.0f} MB, "
                f"others used {r['others_busy']:.0%} of the cores"
            )
    by = {(r["engine"], r["n"]): r for r in rows}
    for (engine, n), r in by.items():
        other = by.get(("nlme", n))
        if engine == "multilevel" and other and r["loglik"] is not None and other["loglik"]:
            d = r["loglik"] - other["loglik"]
            verdict = "ok" if d >= -1e-4 else "LOWER than nlme by more than 1e-4"
            print(f"logLik multilevel - nlme at n = {n:,}: {d:+.3e} ({verdict})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", metavar="CSV", help=argparse.SUPPRESS)
    ap.add_argument("--simulate", type=int, metavar="N", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="1000,10000,100000", help="subjects, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="multilevel runs per size")
    ap.add_argument("--nlme-small-repeats", type=int, default=2, help="nlme runs at the smallest")
    ap.add_argument("--nlme-timeout", type=float, default=1200.0, help="seconds per nlme fit")
    ap.add_argument("--no-nlme", action="store_true")
    ap.add_argument("--no-competing", action="store_true", help="skip the busy-neighbour run")
    ap.add_argument("--quiet-threshold", type=float, default=0.25)
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="max s to wait for quiet")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if args.simulate:
        write_data(args.simulate)
        return 0

    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "date_utc": started.isoformat(timespec="seconds"),
        "argv": sys.argv,
        "machine": {
            "cpus": NCPU,
            "cpu_model": cpu_model(),
            "mem_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "loadavg_start": os.getloadavg(),
            "busy_others_at_start": top_others(),
        },
        "versions": versions(),
        "git": git_state(),
        "thread_env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            if k in os.environ
        },
        "model": {
            "multilevel": 'ml.lme("y ~ t", "~ t | subject", df, correlation=ml.corAR1())',
            "nlme": "lme(y ~ t, random = ~ t | subject, data = d, correlation = corAR1())",
            "simulation": {
                "occasions": OCCASIONS,
                "beta": BETA,
                "sd_b0": SD_B0,
                "sd_b1": SD_B1,
                "phi": PHI,
                "sd_e": SD_E,
                "seed": SEED,
            },
        },
    }
    records: list[dict[str, Any]] = []

    def record(engine: str, n: int, rec: dict[str, Any], competing: bool = False) -> None:
        rec.update(engine=engine, n=n, competing=competing)
        records.append(rec)
        t = rec.get("wall_s") if engine == "multilevel" else rec.get("elapsed_s")
        print(
            f"  {engine:<10} n={n:>7,}{' [busy neighbour]' if competing else ''}: "
            f"{'ok' if rec['ok'] else 'FAILED'} fit {fmt(t, '.2f')} s, "
            f"peak {rec['process_peak_rss_mb']:.0f} MB, logLik {fmt(rec.get('loglik'), '.5f')}, "
            f"others {rec['others_busy']:.0%}, load {rec['loadavg_before'][0]:.2f}"
            + ("" if rec["ok"] else f" -- {rec.get('status') or rec['stderr_tail'][-300:]}"),
            flush=True,
        )
        write(args.output, meta, records, sizes)

    files = {n: data_file(n) for n in sizes}
    for n in sizes:
        for _ in range(args.repeats):
            rec_busy = wait_quiet(args.quiet_threshold, args.quiet_wait)
            rec = run_multilevel(files[n])
            rec["busy_before"] = rec_busy
            record("multilevel", n, rec)

    if not args.no_competing:
        n = max(sizes)
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(1.0)
            rec = run_multilevel(files[n])
        finally:
            hog.kill()
            hog.wait()
        rec["competing_process"] = "python -c 'while True: pass' (one core, not pinned)"
        record("multilevel", n, rec, competing=True)

    if not args.no_nlme:
        for i, n in enumerate(sizes):
            stop = False
            for _ in range(args.nlme_small_repeats if i == 0 else 1):
                rec_busy = wait_quiet(args.quiet_threshold, args.quiet_wait)
                rec = run_nlme(files[n], args.nlme_timeout)
                rec["busy_before"] = rec_busy
                record("nlme", n, rec)
                if rec["timed_out"] or "memory" in rec["status"]:
                    stop = True
                    break
            if stop:
                break

    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta["git_end"] = git_state()  # the source tree may be edited while this runs
    meta["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    meta["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write(args.output, meta, records, sizes)
    print()
    print_table(summarize(records, sizes), records)
    print(f"\nwrote {args.output}")
    return 0


def write(path: Path, meta: dict, records: list, sizes: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "summary": summarize(records, sizes), "runs": records}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
