"""Refresh the R reference results and data the tests carry.

    python tools/refresh_reference.py [SOURCE] [--check]

SOURCE is the project's shared folder (default: ``../shared`` beside the
repository) holding ``reference/*.json`` and ``data/*.csv``.  Reference cases
are copied to ``tests/reference/``; data files to the package's bundled data
(``src/multilevel/datasets/``), which is where the tests read them, so the
library and its tests use byte-identical files.  Every file that is new,
changed (with the JSON keys whose values differ) or only on one side is
listed.  ``--check`` copies nothing and exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "reference": (ROOT / "tests" / "reference", ("*.json", "README.md")),
    "data": (ROOT / "src" / "multilevel" / "datasets", ("*.csv",)),
}


def changed_keys(old: Path, new: Path) -> list[str]:
    """Top-level JSON keys whose values differ (empty for non-JSON files)."""
    if new.suffix != ".json":
        return []
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def compare(source: Path, target: Path, patterns: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(status, source file) for every file that is new or changed; files only
    in ``target`` are reported with status 'only here'."""
    out: list[tuple[str, Path]] = []
    names: set[str] = set()
    for pattern in patterns:
        for src in sorted(source.glob(pattern)):
            names.add(src.name)
            dst = target / src.name
            if not dst.exists():
                out.append(("new", src))
            elif dst.read_bytes() != src.read_bytes():
                keys = changed_keys(dst, src)
                out.append((f"changed {', '.join(keys)}" if keys else "changed", src))
        for dst in sorted(target.glob(pattern)):
            if dst.name not in names:
                out.append(("only here (kept)", dst))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--check", action="store_true", help="report differences, copy nothing")
    args = ap.parse_args(argv)
    differ = False
    for sub, (target, patterns) in TARGETS.items():
        source = args.source / sub
        if not source.is_dir():
            print(f"{source}: not found", file=sys.stderr)
            return 2
        for status, path in compare(source, target, patterns):
            print(f"{sub}/{path.name}: {status}")
            if status.startswith(("new", "changed")):
                differ = True
                if not args.check:
                    shutil.copyfile(path, target / path.name)
    if not differ:
        print("up to date")
    return 1 if differ and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
