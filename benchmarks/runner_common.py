"""Shared timing loop of the Python engine runners (``run_<engine>.py``).

A runner is started by ``run.py`` in a fresh process, one per engine and case:

    python run_ENGINE.py CASE_KEY REPEATS BUDGET_S

It loads the case's data (not timed), fits once as a warm-up (by REML or ML as
the case says: ``fit(formula, df, reml)``), then times
``repeats`` whole fit calls with ``time.perf_counter`` (and CPU time with
``time.process_time``, summed over all threads), and prints one line
``RESULT {json}``. When the warm-up took long, the number of timed fits is cut
to fit ``BUDGET_S`` seconds, but never below 3 (or ``repeats`` if smaller);
when the warm-up alone took longer than ``BUDGET_S`` (or ``repeats`` is 0), no
further fit is made and the warm-up is reported as the one timing
(``warmup_only``: for fits of minutes, whose first call's extra cost is
negligible beside the fit).
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cases
import pandas as pd
from sysload import emit, vm_hwm_mb

MIN_REPEATS = 3


def timed_fits(repeats: int, budget: float, warm: float) -> int:
    """Fits to time after a warm-up of ``warm`` seconds (0: report the warm-up)."""
    if warm * repeats <= budget:
        return repeats
    if warm > budget:
        return 0
    return max(min(MIN_REPEATS, repeats), int(budget / warm))


@dataclass
class FitInfo:
    evals: int | None  # criterion evaluations, as the engine reports them
    criterion: float | None  # REML criterion, or the deviance of an ML fit
    converged: bool | None = None
    note: str = ""


def main(
    version: Callable[[], str],
    fit: Callable[[str, pd.DataFrame, bool], Any],
    info: Callable[[Any], FitInfo],
) -> None:
    """Run one case: ``fit(formula, df, reml)`` returns a model, ``info(model)`` reads it."""
    key, repeats, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    case = cases.CASES[key]
    try:
        engine_version = version()
        df = cases.load(case)
        rss_before = vm_hwm_mb()
        c0, t0 = time.process_time(), time.perf_counter()
        model = fit(case.formula, df, case.REML)  # warm-up
        warm, warm_cpu = time.perf_counter() - t0, time.process_time() - c0
        n = timed_fits(repeats, budget, warm)
        wall, cpu = ([], []) if n else ([warm], [warm_cpu])
        for _ in range(n):
            c0, t0 = time.process_time(), time.perf_counter()
            model = fit(case.formula, df, case.REML)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        fi = info(model)
    except Exception as exc:  # report any engine failure to the driver
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
    emit(
        {
            "engine_version": engine_version,
            "nobs": len(df),
            "warmup_s": warm,
            "warmup_only": n == 0,
            "reml": case.REML,
            "times_s": wall,
            "cpu_s": cpu,
            "evals": fi.evals,
            "criterion": fi.criterion,
            "converged": fi.converged,
            "note": fi.note,
            "rss_before_fit_mb": rss_before,
        }
    )
