"""Timing loop shared by the Python GLMM runners (``run_<engine>.py``).

A runner is started by ``run.py`` in a fresh process, one per engine and case:

    python run_ENGINE.py CASE_KEY REPEATS BUDGET_S

It loads the prepared CSV (not timed), fits once as a warm-up, then times
``REPEATS`` whole fit calls with ``time.perf_counter`` (CPU time with
``time.process_time``, all threads), and prints one line ``RESULT {json}``.
If the warm-up shows that the repeats would exceed ``BUDGET_S`` seconds, fewer
fits are timed, but at least 3 (or ``REPEATS`` if smaller); if the warm-up alone
took longer than ``BUDGET_S``, no further fit is made and the warm-up is the one
timing (``warmup_only``: it then includes the first call's one-off costs).
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cases
import pandas as pd

sys.path.append(str(Path(__file__).resolve().parent.parent))  # ../sysload.py
from sysload import emit, vm_hwm_mb  # noqa: E402

MIN_REPEATS = 3
LAST_WARNINGS: list[str] = []  # a runner's fit() stores the warnings of its last fit here


@dataclass
class FitInfo:
    evals: int | None  # objective evaluations, as the engine counts them
    loglik_reported: float  # the engine's own log-likelihood number
    loglik_full: float  # full marginal log-likelihood (all density constants)
    fixef: dict[str, float] = field(default_factory=dict)
    converged: bool | None = None
    note: str = ""
    # False where loglik_full is not the maximised log-likelihood of the same model as
    # the other engines' (then left out of the dloglik comparison)
    loglik_comparable: bool = True


def main(
    version: Callable[[], str],
    fit: Callable[[cases.Case, pd.DataFrame], Any],
    info: Callable[[cases.Case, Any], FitInfo],
) -> None:
    """Run one case: ``fit(case, df)`` returns a model, ``info(case, model)`` reads it."""
    key, repeats, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    case = cases.CASES[key]
    try:
        engine_version = version()
        df = cases.load(case.dataset)
        rss_before = vm_hwm_mb()
        c0, t0 = time.process_time(), time.perf_counter()
        model = fit(case, df)  # warm-up (imports, JIT, caches)
        warm, warm_cpu = time.perf_counter() - t0, time.process_time() - c0
        warmup_only = warm > budget  # one fit already exceeds the budget: it is the timing
        if warmup_only:
            n = 0
        elif warm * repeats <= budget:
            n = repeats
        else:
            n = max(min(MIN_REPEATS, repeats), int(budget / warm))
        wall, cpu = ([warm], [warm_cpu]) if warmup_only else ([], [])
        for _ in range(n):
            c0, t0 = time.process_time(), time.perf_counter()
            model = fit(case, df)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        fi = info(case, model)
    except Exception as exc:  # report any engine failure to the driver
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
    emit(
        {
            "engine_version": engine_version,
            "nobs": len(df),
            "warmup_s": warm,
            "warmup_only": warmup_only,
            "times_s": wall,
            "cpu_s": cpu,
            "evals": fi.evals,
            "loglik_reported": fi.loglik_reported,
            "loglik_full": fi.loglik_full,
            "loglik_comparable": fi.loglik_comparable,
            "fixef": fi.fixef,
            "converged": fi.converged,
            "note": fi.note,
            "warnings": sorted(set(LAST_WARNINGS)),
            "rss_before_fit_mb": rss_before,
        }
    )
