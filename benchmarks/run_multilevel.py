"""Runner for this project's ``multilevel`` (run with the project's Python).

The working tree's ``src/`` is put first on ``sys.path``, so the code being
developed is measured even when it is not installed. API used:
``multilevel.lmer(formula, data=df, REML=reml)`` (``reml`` from the case);
``m.optinfo["evals"]`` and ``m.optinfo["criterion"]`` (the criterion minimised:
REML criterion of a REML fit, deviance of an ML fit).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import runner_common

SRC = Path(__file__).resolve().parent.parent / "src"
if (SRC / "multilevel").is_dir():
    sys.path.insert(0, str(SRC))


def source_state() -> str:
    """Commit of the measured ``src/`` (others may commit while a long run goes
    on), with ``+dirty`` if ``src/`` has uncommitted changes."""
    try:
        git = ["git", "-C", str(SRC.parent)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True
        )
    except OSError:
        return "git ?"
    return f"git {head.stdout.strip() or '?'}{'+dirty' if dirty.stdout.strip() else ''}"


def version() -> str:
    import multilevel

    where = Path(multilevel.__file__).parent
    return f"multilevel {getattr(multilevel, '__version__', '?')} ({where}; {source_state()})"


def fit(formula: str, df: pd.DataFrame, reml: bool) -> object:
    import multilevel

    return multilevel.lmer(formula, data=df, REML=reml)


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
