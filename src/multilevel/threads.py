"""BLAS threads sized to the work (DESIGN.md, principle 7).

Mixed-model work after the one pass over the rows is a stream of small
matrix operations; a threaded BLAS on them loses to thread start-up and, on a
busy machine, to oversubscription.  These helpers run such code with one BLAS
thread (through threadpoolctl, a dependency; without it they change nothing).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


_controller: Any = None


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
            _controller = ThreadpoolController()
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


def one_blas_thread(fn: F) -> F:
    """Decorator: run ``fn`` with one BLAS thread."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_threaded_blas():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
