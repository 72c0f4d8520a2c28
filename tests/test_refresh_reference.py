"""tools/refresh_reference.py: what it reports and copies (on temporary folders)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "refresh_reference", ROOT / "tools/refresh_reference.py"
)
refresh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refresh)


def test_reports_new_changed_and_local_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    (src / "a.json").write_text(json.dumps({"loglik": -1.0, "case": "a"}))
    (dst / "a.json").write_text(json.dumps({"loglik": -2.0, "case": "a"}))
    (src / "b.json").write_text("{}")
    (dst / "c.json").write_text("{}")
    got = {p.name: s for s, p in refresh.compare(src, dst, ("*.json",))}
    assert got == {"a.json": "changed loglik", "b.json": "new", "c.json": "only here (kept)"}


def test_carried_files_are_the_ones_the_tests_read():
    from .conftest import DATA, REFERENCE

    assert refresh.TARGETS["reference"][0] == REFERENCE
    # the script writes the package's data; the tests read the installed package's
    names = {p.name for p in refresh.TARGETS["data"][0].glob("*.csv")}
    assert names == {p.name for p in DATA.glob("*.csv")}
    cases = sorted(REFERENCE.glob("*.json"))
    assert len(cases) >= 25
    for case in cases:
        assert (DATA / json.loads(case.read_text())["dataset"]).exists(), case.name
