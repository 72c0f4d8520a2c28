"""``import multilevel`` loads the error classes only; every public name
arrives on first use (and is then an ordinary module attribute)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import multilevel as ml


def test_import_is_light():
    code = (
        "import sys, multilevel; "
        "heavy = [m for m in ('pandas', 'scipy', 'multilevel.api') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_public_name_resolves():
    for name in ml.__all__:
        assert getattr(ml, name) is not None, name
    assert set(ml.__all__) <= set(dir(ml))


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        ml.nonesuch  # noqa: B018
    with pytest.raises(AttributeError):
        ml._private_thing  # noqa: B018
