"""docs/bad_input.md says what the library does: every row's outcome (the
error class, or a returned fit with its warning classes) is what running the
row's call gives today.  Regenerate with ``python docs/bad_input.py``."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
spec = importlib.util.spec_from_file_location("bad_input_page", DOCS / "bad_input.py")
page = importlib.util.module_from_spec(spec)
sys.modules["bad_input_page"] = page
spec.loader.exec_module(page)


def _rows(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\| (.+?) \| `` .* `` \| (.*) \|$", line)
        if m:
            out[m.group(1)] = m.group(2).replace("\\|", "|")
    return out


def test_every_row_says_what_happens_today():
    committed = _rows((DOCS / "bad_input.md").read_text())
    assert len(committed) == len(page.CASES)
    for name, _, thunk in page.CASES:
        now = page.outcome(thunk)
        assert "not a library error" not in now, f"{name}: {now}"
        assert page.outcome_class(now) == page.outcome_class(committed[name]), name
