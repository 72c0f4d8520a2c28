"""The command line: fit a CSV, JSON output, one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import multilevel as ml
from multilevel.cli import main


@pytest.fixture()
def sleep_csv(tmp_path):
    path = tmp_path / "sleep.csv"
    ml.datasets.load("sleepstudy").to_csv(path, index=False)
    return path


def test_fit_prints_summary(sleep_csv, capsys):
    assert main(["fit", str(sleep_csv), "Reaction ~ Days + (Days | Subject)"]) == 0
    out = capsys.readouterr().out
    assert "REML criterion at convergence: 1743.6" in out
    assert "Data: sleep" in out


def test_fit_json_holds_the_numbers(sleep_csv, capsys):
    assert (
        main(["fit", str(sleep_csv), "Reaction ~ Days + (Days | Subject)", "--ml", "--json"]) == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["method"] == "ML"
    assert res["fixef"]["Days"] == pytest.approx(10.467286, rel=1e-6)
    assert res["loglik"] == pytest.approx(-875.9697, abs=1e-3)
    assert [r["grp"] for r in res["varcorr"]] == ["Subject"] * 3 + ["Residual"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "/no/such/file.csv", "y ~ x + (1|g)"], "no such file"),
        (["fit", "{csv}", "Reaction ~ Dayz + (1 | Subject)"], "did you mean 'Days'"),
        (["fit", "{csv}", "Reaction ~ Days + (1 | Subject"], "position"),
    ],
)
def test_errors_are_one_line_with_status_2(args, message, sleep_csv, capsys):
    args = [a.replace("{csv}", str(sleep_csv)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_datasets_lists_bundled_data(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "hsb" in out and "sleepstudy" in out


def test_module_entry_point_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "multilevel", "fit", str(tmp_path / "missing.csv"), "y ~ 1 + (1|g)"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("multilevel: error: no such file")
