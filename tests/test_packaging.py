"""The declared dependency bounds are the ones CI tests with."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lower_bounds() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    out = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([0-9.]+)", req)
        assert m, f"dependency without a plain lower bound: {req}"
        out[m.group(1).lower()] = m.group(2)
    return out


def _pinned() -> dict[str, str]:
    out = {}
    for line in (ROOT / "tools" / "oldest-constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            out[name.lower()] = version
    return out


def _same(a: str, b: str) -> bool:
    pa, pb = [int(x) for x in a.split(".")], [int(x) for x in b.split(".")]
    n = max(len(pa), len(pb))
    return pa + [0] * (n - len(pa)) == pb + [0] * (n - len(pb))


def test_oldest_constraints_are_the_lower_bounds():
    bounds, pinned = _lower_bounds(), _pinned()
    bounds.pop("ruff")  # the linter is for developers; no test runs it
    assert bounds.keys() == pinned.keys()
    for name, version in bounds.items():
        assert _same(version, pinned[name]), f"{name}: >={version} but tested with {pinned[name]}"


def test_importing_the_package_leaves_the_slow_scipy_modules_for_later():
    # scipy.stats and scipy.optimize took 0.5 s of a 1.1 s import: they are
    # imported by the functions that use them (p-values, intervals, plots)
    import subprocess
    import sys

    code = (
        "import sys, multilevel; "
        "print(sorted(m for m in ('scipy.stats', 'scipy.optimize', 'matplotlib') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
