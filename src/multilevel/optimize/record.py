"""What every optimiser keeps: the record of a fit's optimisation
(``fit.optinfo``) and the logger that feeds it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class OptRecord:
    """The optimization record kept on a fitted model (``fit.optinfo``)."""

    optimizer: str
    status: str
    converged: bool
    evals: int
    criterion: float
    theta: np.ndarray
    gradient: np.ndarray
    messages: list[str] = field(default_factory=list)
    _thetas: list[np.ndarray] = field(default_factory=list, repr=False)
    _values: list[float] = field(default_factory=list, repr=False)
    # θ in the basis the engine optimised in, where boundary judgements are
    # made (None: the same as ``theta``)
    internal_theta: np.ndarray | None = field(default=None, repr=False)
    # maps a logged point to the θ the log shows (None: logged as shown); applied
    # when the log is read, not per evaluation
    log_map: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    @property
    def log(self) -> pd.DataFrame:
        """One row per criterion evaluation: θ and the criterion value."""
        pts = self._thetas if self.log_map is None else [self.log_map(t) for t in self._thetas]
        df = pd.DataFrame(np.array(pts).reshape(len(pts), -1))
        df.columns = [f"theta{i + 1}" for i in range(df.shape[1])]
        df["criterion"] = self._values
        df.index.name = "eval"
        return df

    def __getitem__(self, key: str):  # dict-style access, as lme4's optinfo list
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [
            "optimizer",
            "status",
            "converged",
            "evals",
            "criterion",
            "theta",
            "gradient",
            "messages",
            "log",
        ]


class Logged:
    """A criterion that records every evaluation and the best point so far.

    ``fg`` (optional) returns value and gradient together; ``to_natural`` maps
    the optimiser's coordinates to the ones the log shows (default: as given).
    A non-finite value is logged as 1e300, which every optimiser treats as a
    very high criterion, never as a best point."""

    def __init__(
        self,
        fun: Callable[[np.ndarray], float],
        fg: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None,
        to_natural: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.fun = fun
        self.fg = fg
        self.to_natural = to_natural
        self.thetas: list[np.ndarray] = []
        self.values: list[float] = []
        self.best = math.inf
        self.best_x: np.ndarray | None = None
        # the last Hessian an optimiser formed: (x, coordinates, H)
        self.hessian: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # an exact gradient the search already has: (x, gradient at x)
        self.known_grad: tuple[np.ndarray, np.ndarray] | None = None

    def hessian_near(self, x: np.ndarray, idx: np.ndarray, tol: float = 1e-3) -> np.ndarray | None:
        """The last Hessian formed, if in the coordinates ``idx`` and within
        ``tol`` of x (where it is the same to that order)."""
        if self.hessian is None:
            return None
        x0, idx0, H = self.hessian
        if not np.array_equal(idx0, idx) or np.max(np.abs(x0 - x), initial=0.0) > tol:
            return None
        return H

    def _log(self, x: np.ndarray, v: float) -> float:
        if not math.isfinite(v):
            v = 1e300
        self.thetas.append(x if self.to_natural is None else self.to_natural(x))
        self.values.append(v)
        if v < min(self.best, 1e300):
            self.best, self.best_x = v, x
        return v

    def __call__(self, x: np.ndarray, grad: np.ndarray | None = None) -> float:
        x = np.array(x, dtype=float)
        return self._log(x, float(self.fun(x)))

    def value_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.array(x, dtype=float)
        v, g = self.fg(x)
        return self._log(x, float(v)), np.ascontiguousarray(g, dtype=float)

    def record(
        self,
        optimizer: str,
        status: str,
        converged: bool,
        x: np.ndarray,
        fx: float,
        grad: np.ndarray,
        messages: list[str],
    ) -> OptRecord:
        return OptRecord(
            optimizer, status, converged, len(self.values), fx, x, grad, messages,
            self.thetas, self.values,
        )  # fmt: skip
