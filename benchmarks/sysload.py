"""Machine-wide CPU use from /proc/stat, to detect other work disturbing a
timing; and what the LMM and GLMM drivers and their runners share (measured
runner subprocesses, retries of disturbed runs, the RESULT line).

The benchmark machine may be shared (another session running tests, say). With
2 cores, a multi-threaded engine slows down badly when the other core is busy,
so the driver waits for a quiet machine before each run and records how much
CPU time other processes used while the run was going on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def busy_seconds() -> float:
    """CPU seconds spent busy (not idle or iowait) on all cores since boot."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]
    return (sum(fields[:8]) - fields[3] - fields[4]) / HZ


def busy_fraction(seconds: float) -> float:
    """Fraction of all cores busy over the next ``seconds``."""
    b0 = busy_seconds()
    time.sleep(seconds)
    return (busy_seconds() - b0) / (seconds * NCPU)


def wait_idle(threshold: float, max_wait: float, window: float = 1.0) -> float:
    """Wait (up to ``max_wait`` s) until less than ``threshold`` of the cores is busy.

    Returns the last busy fraction seen.
    """
    deadline = time.monotonic() + max_wait
    frac = busy_fraction(window)
    while frac >= threshold and time.monotonic() < deadline:
        frac = busy_fraction(window)
    return frac


@dataclass
class Proc:
    code: int
    out: str
    err: str
    peak_mb: float  # peak RSS of the process (and its waited-for children)
    others_busy: float  # share of all cores used by other processes meanwhile


def run_subprocess(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path) -> Proc:
    """Run ``cmd`` in a new session (in ``cwd``), killed after ``timeout`` seconds;
    its peak RSS from ``os.wait4`` and the share of the cores others used."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        b0, t0 = busy_seconds(), time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        others = busy_seconds() - b0 - usage.ru_utime - usage.ru_stime
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Proc(
            proc.returncode,
            out.read(),
            err.read(),
            usage.ru_maxrss / 1024,
            max(0.0, others) / (wall * NCPU),
        )


def parse_result(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return None


# -- shared by the LMM and GLMM drivers ------------------------------------------
THREAD_VARS = ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def interpreter_missing(interpreter: str) -> str | None:
    """Why an engine's interpreter cannot run, or None."""
    if shutil.which(interpreter) is None and not Path(interpreter).exists():
        return f"interpreter {interpreter!r} not found"
    return None


def measured_run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path) -> dict[str, Any]:
    """One runner subprocess: its RESULT line with the median wall and CPU
    times, the number of fits, peak RSS and the CPU share others used; or an
    error record with the reason and the tail of stderr."""
    p = run_subprocess(cmd, env, timeout, cwd)
    rec: dict[str, Any] = {"others_busy": p.others_busy}
    res = parse_result(p.out)
    if res is None or "error" in res or p.code != 0:
        why = (res or {}).get("error") or (p.err.strip().splitlines() or [f"exit {p.code}"])[-1]
        if p.code == -signal.SIGKILL:
            why = f"killed after the {timeout:.0f} s timeout"
        return rec | {"status": "error", "reason": why, "stderr_tail": p.err[-2000:]}
    return rec | {
        "status": "ok",
        **res,
        "median_s": statistics.median(res["times_s"]),
        "cpu_median_s": statistics.median(res["cpu_s"]),
        "repeats": len(res["times_s"]),
        "peak_mb": p.peak_mb,
    }


def with_retries(run: Callable[[], dict[str, Any]], retries: int, busy_warn: float) -> dict:
    """Run; while other processes disturbed it (others_busy > busy_warn), run
    again, up to ``retries`` times.  Keeps the least disturbed run;
    ``attempts`` records how many were made."""
    best = rec = run()
    attempts = 1
    while best.get("others_busy", 0) > busy_warn and attempts <= retries:
        print(f"  others used {rec['others_busy']:.0%} of the CPUs: again", file=sys.stderr)
        rec = run()
        attempts += 1
        if rec["status"] == "ok" and rec["others_busy"] < best["others_busy"]:
            best = rec
    return best | {"attempts": attempts}


# -- shared by the runner subprocesses -------------------------------------------
def vm_hwm_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def emit(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def start_competitors(n: int) -> list[subprocess.Popen]:
    """n processes that keep one core each busy (a laptop with a browser open,
    another user's job): the machine a fit must not be slower on."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(0, n))]


def stop_competitors(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def measured_run_beside(
    cmd: list[str], env: dict[str, str], timeout: float, cwd: Path, competing: int
) -> dict[str, Any]:
    """:func:`measured_run` with ``competing`` busy processes running beside it."""
    competitors = start_competitors(competing)
    try:
        return measured_run(cmd, env, timeout, cwd)
    finally:
        stop_competitors(competitors)
