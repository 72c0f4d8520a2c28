"""BLAS threads sized to the work (``threads``): one thread for a fit, the
BLAS's own count back for dense factorizations of order ≥ THREADED_MIN_ORDER."""

from __future__ import annotations

import pytest

from multilevel import threads


def _blas_threads() -> list[int]:
    ctl = threads._blas_controller()
    return [m.num_threads for m in ctl.select(user_api="blas").lib_controllers]


@pytest.fixture
def controller():
    ctl = threads._blas_controller()
    if not ctl or not ctl.select(user_api="blas").lib_controllers:
        pytest.skip("threadpoolctl sees no BLAS")
    return ctl


def test_one_thread_inside_a_fit_and_the_default_back_for_large_orders(controller, monkeypatch):
    default = threads._default_threads
    # an idle machine (another process's load is the next test's subject)
    monkeypatch.setattr(threads, "idle_cpus", lambda: default)
    with threads.single_threaded_blas():
        assert set(_blas_threads()) == {1}
        with threads.threads_for_order(threads.THREADED_MIN_ORDER - 1):
            assert set(_blas_threads()) == {1}  # small: unchanged
        with threads.threads_for_order(threads.THREADED_MIN_ORDER):
            assert max(_blas_threads()) == default
        assert set(_blas_threads()) == {1}  # restored on leaving


def test_decorator_limits_the_call(controller):
    @threads.one_blas_thread
    def inside():
        return _blas_threads()

    assert set(inside()) == {1}


def test_idle_cpus_leaves_out_a_busy_process_but_not_our_own_threads():
    import os
    import subprocess
    import sys
    import time

    from multilevel.threads import idle_cpus

    cpus = os.cpu_count() or 1
    assert 1 <= idle_cpus() <= cpus
    if cpus < 2 or not os.path.exists("/proc/loadavg"):
        return
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert idle_cpus() <= cpus - 1
    finally:
        busy.terminate()
        busy.wait()
