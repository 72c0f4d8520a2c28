"""Exception and warning types raised by multilevel.

Every problem a user can act on is raised as a subclass of
:class:`MultilevelError` before any numerical work starts, so callers can catch
the library's own errors without catching programming errors.
"""

from __future__ import annotations

import os
import sys
import warnings


class MultilevelError(Exception):
    """Base class of all errors raised by multilevel."""


class FormulaError(MultilevelError, ValueError):
    """A formula that cannot be parsed or expanded.

    ``position`` is the 0-based character offset of the problem in
    ``formula``; the message shows it with a caret.
    """

    def __init__(self, message: str, formula: str = "", position: int | None = None):
        self.formula = formula
        self.position = position
        self.reason = message
        text = message
        if formula and position is not None:
            text = f"{message} at position {position}\n  {formula}\n  {' ' * position}^"
        super().__init__(text)


class DataError(MultilevelError, ValueError):
    """Data that cannot be used as given (missing columns, bad values, wrong types)."""


class ModelError(MultilevelError, ValueError):
    """A model that is not identifiable or cannot be fitted as specified."""


class ConvergenceWarning(UserWarning):
    """The optimizer stopped without reaching a verified optimum."""


class SingularFitWarning(UserWarning):
    """The fit lies on the boundary of the parameter space (a variance is 0 or a
    correlation is +-1)."""


class RankDeficiencyWarning(UserWarning):
    """Aliased fixed-effect columns were dropped (lme4's rank-deficiency message)."""


class DataWarning(UserWarning):
    """Part of the data was left out of the model (e.g. an ordinal response's
    categories without observations)."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning]) -> None:
    """Issue a warning attributed to the user's code: the first caller outside
    the package, however deep inside it the warning arises."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
