"""Runner for this project's ``multilevel`` (run with the project's Python).

The working tree's ``src/`` is put first on ``sys.path``, so the code being
developed is measured even when it is not installed. API used:
``multilevel.lmer(formula, data=df, REML=True)``; ``m.optinfo["evals"]`` and
``m.optinfo["criterion"]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import runner_common

SRC = Path(__file__).resolve().parent.parent / "src"
if (SRC / "multilevel").is_dir():
    sys.path.insert(0, str(SRC))


def version() -> str:
    import multilevel

    return (
        f"multilevel {getattr(multilevel, '__version__', '?')} ({Path(multilevel.__file__).parent})"
    )


def fit(formula: str, df: pd.DataFrame) -> object:
    import multilevel

    return multilevel.lmer(formula, data=df, REML=True)


def _item(opt: object, key: str) -> object:
    """``opt[key]`` (dict-style, as specified), or ``None`` if absent."""
    try:
        return opt[key]  # type: ignore[index]
    except (KeyError, TypeError, AttributeError):
        return None


def info(m: object) -> runner_common.FitInfo:
    opt = getattr(m, "optinfo", None)
    evals, crit, conv = (_item(opt, k) for k in ("evals", "criterion", "converged"))
    return runner_common.FitInfo(
        evals=None if evals is None else int(evals),
        criterion=None if crit is None else float(crit),
        converged=None if conv is None else bool(conv),
    )


if __name__ == "__main__":
    runner_common.main(version, fit, info)
