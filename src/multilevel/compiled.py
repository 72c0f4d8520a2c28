"""The optional compiled kernels (``_kernels.c``, ``_glmm_kernels.c``), built
by pip when a C compiler is present.  Every caller has a numpy fallback, so
a kernel that was not built is simply None."""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import Any


@cache
def kernel(module: str, name: str) -> Any:
    """``multilevel.<module>.<name>``, or None if that extension was not built."""
    try:
        return getattr(import_module(f"multilevel.{module}"), name)
    except (ImportError, AttributeError):
        return None
