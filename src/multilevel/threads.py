"""BLAS threads sized to the work (DESIGN.md, principle 7).

Mixed-model work after the one pass over the rows is a stream of small
matrix operations; a threaded BLAS on them loses to thread start-up and, on a
busy machine, to oversubscription.  These helpers run such code with one BLAS
thread (through threadpoolctl, a dependency; without it they change nothing),
except dense factorizations of order ~1000 and more (a crossed model's rest
block), which get the BLAS's threads back.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


_controller: Any = None
_default_threads = 1
THREADED_MIN_ORDER = 900  # dense factorizations at least this large use every BLAS thread


def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once: finding
    them costs milliseconds, limiting them afterwards microseconds."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller = False
        else:
            global _default_threads
            _controller = ThreadpoolController()
            blas = [m.num_threads for m in _controller.select(user_api="blas").lib_controllers]
            _default_threads = max(blas, default=1)
    return _controller


_inside = threading.local()  # this thread is already inside single_threaded_blas


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """One BLAS thread inside the block (nothing to do where the BLAS was
    loaded with one, or inside another such block: setting the limit costs
    tens of µs, a tenth of a small model's fit)."""
    controller = _blas_controller()
    if not controller or _default_threads <= 1 or getattr(_inside, "flag", False):
        yield
        return
    _inside.flag = True
    try:
        with _limited(1):
            yield
    finally:
        _inside.flag = False


_libraries: list | None = None


@contextmanager
def _limited(threads: int) -> Iterator[None]:
    """Every loaded BLAS at ``threads`` threads inside the block, restored
    after: through threadpoolctl's per-library controllers directly (its
    ``limit`` context re-reads every library's state, four times the cost:
    ~27 µs against ~7 µs here, once per small fit)."""
    global _libraries
    if _libraries is None:
        _libraries = list(_blas_controller().select(user_api="blas").lib_controllers)
    saved = [lib.get_num_threads() for lib in _libraries]
    for lib in _libraries:
        lib.set_num_threads(threads)
    try:
        yield
    finally:
        for lib, n in zip(_libraries, saved, strict=True):
            lib.set_num_threads(n)


def idle_cpus() -> int:
    """CPUs not running another process's task now: the online CPUs less the
    runnable tasks that are not this process's threads (Linux: /proc/loadavg's
    instant count less our own threads in state R, our BLAS threads among
    them; elsewhere the 1-minute load average less one)."""
    cpus = os.cpu_count() or 1
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
        others = running - _own_running_threads()
    except (OSError, ValueError, IndexError):
        try:
            others = int(os.getloadavg()[0]) - 1
        except (OSError, AttributeError):
            others = 0
    return max(1, cpus - max(0, others))


def _own_running_threads() -> int:
    n = 0
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as fh:
            stat = fh.read()
        n += stat[stat.rindex(")") + 2] == "R"  # the state follows the name
    return n


@contextmanager
def threads_for_order(n: int) -> Iterator[None]:
    """For a dense factorization of order n >= THREADED_MIN_ORDER, inside
    :func:`single_threaded_blas`: the BLAS's own thread count (as loaded), but
    no more than the CPUs idle at that moment.  At that size one call is
    milliseconds of work, which threads share well; a thread that must wait
    for a CPU another process holds makes every other one wait at each
    synchronisation (measured here on two cores beside one busy process: the
    InstEval-shaped benchmark fit took 119-180 s with two threads, 2.6 s with
    this rule)."""
    controller = _blas_controller()
    if not controller or n < THREADED_MIN_ORDER or _default_threads <= 1:
        yield
        return
    threads = min(_default_threads, idle_cpus())
    if threads <= 1:
        yield
        return
    with _limited(threads):
        yield


def one_blas_thread(fn: F) -> F:
    """Decorator: run ``fn`` with one BLAS thread."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_threaded_blas():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
