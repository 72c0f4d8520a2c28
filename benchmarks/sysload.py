"""Machine-wide CPU use from /proc/stat, to detect other work disturbing a timing.

The benchmark machine may be shared (another session running tests, say). With
2 cores, a multi-threaded engine slows down badly when the other core is busy,
so the driver waits for a quiet machine before each run and records how much
CPU time other processes used while the run was going on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
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
