"""Machine-wide CPU use from /proc/stat, to detect other work disturbing a timing.

The benchmark machine may be shared (another session running tests, say). With
2 cores, a multi-threaded engine slows down badly when the other core is busy,
so the driver waits for a quiet machine before each run and records how much
CPU time other processes used while the run was going on.
"""

from __future__ import annotations

import os
import time

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
