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


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """One BLAS thread inside the block."""
    controller = _blas_controller()
    if not controller:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


@contextmanager
def threads_for_order(n: int) -> Iterator[None]:
    """The BLAS's own thread count (as loaded) for a dense factorization of
    order n >= THREADED_MIN_ORDER, inside :func:`single_threaded_blas`: at that
    size one call is milliseconds of work, which threads share well."""
    controller = _blas_controller()
    if not controller or n < THREADED_MIN_ORDER or _default_threads <= 1:
        yield
        return
    with controller.limit(limits=_default_threads, user_api="blas"):
        yield


def one_blas_thread(fn: F) -> F:
    """Decorator: run ``fn`` with one BLAS thread."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_threaded_blas():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
