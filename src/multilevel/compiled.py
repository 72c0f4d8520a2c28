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


@cache
def lapack_kernel(module: str) -> bool:
    """Hand LAPACK's dpotrf, dtrtri and dpotri (scipy's exported addresses) to
    ``multilevel.<module>`` once; False where the module or scipy's export is
    missing (callers then keep to their own loops or to numpy)."""
    set_lapack = kernel(module, "set_lapack")
    if set_lapack is None:
        return False
    try:
        from scipy.linalg import cython_lapack

        capi = cython_lapack.__pyx_capi__
        set_lapack(capi["dpotrf"], capi["dtrtri"], capi["dpotri"])
    except (ImportError, AttributeError, KeyError, ValueError):  # no exported LAPACK
        return False
    return True
