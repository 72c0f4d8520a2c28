"""Fuzzing (hypothesis): the formula parser, the design builder and the
command line under random input raise only multilevel's own errors."""

from __future__ import annotations

import string
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import multilevel as ml
from multilevel import MultilevelError
from multilevel.cli import main

ALPHABET = string.ascii_letters[:6] + "xyzg019 ~+-*/:^()|,.%`'\"_[]{}=!<>&@#$"
TOKENS = [
    "y",
    "x",
    "g",
    "f",
    "~",
    "+",
    "-",
    "*",
    "/",
    ":",
    "^",
    "(",
    ")",
    "|",
    "||",
    "1",
    "0",
    "I(",
    "log(",
    "%in%",
    " ",
    "2",
    ",",
    "offset(",
    "x^2",
]

fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def data() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(6), 5)
    return pd.DataFrame(
        {
            "y": rng.normal(size=30),
            "x": rng.normal(size=30),
            "g": g,
            "f": rng.choice(["a", "b"], size=30),
        }
    )


DATA = data()


@fuzz
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_parser_raises_only_formula_errors_on_random_text(text):
    try:
        ml.parse_formula(text)
    except MultilevelError:
        pass


@fuzz
@given(st.lists(st.sampled_from(TOKENS), max_size=14).map("".join))
def test_fitting_random_token_soup_raises_only_library_errors(text):
    try:
        ml.lmer(text, DATA)
    except MultilevelError:
        pass
    except Warning:  # pragma: no cover - warnings are not errors
        pass


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    formula=st.lists(st.sampled_from(TOKENS), max_size=10).map("".join),
    cells=st.lists(
        st.sampled_from(["1", "2.5", "", "a", "nan", "inf", "-3"]), min_size=6, max_size=30
    ),
)
def test_command_line_exits_0_or_2(tmp_path_factory, formula, cells):
    path = tmp_path_factory.mktemp("fuzz") / "d.csv"
    rows = [cells[i : i + 3] for i in range(0, len(cells) - 2, 3)]
    path.write_text("y,x,g\n" + "\n".join(",".join(r) for r in rows) + "\n")
    try:
        status = main(["fit", str(path), formula])
    except SystemExit as exc:  # argparse: a formula starting with "-" reads as an option
        status = exc.code
    assert status in (0, 2)


@pytest.mark.parametrize(
    "formula",
    [
        'y ~ I(__import__("os").system("echo pwned")) + (1 | g)',
        "y ~ I(open('/etc/passwd')) + (1 | g)",
        "y ~ I(x.__class__) + (1 | g)",
        "y ~ I(getattr(x, 'shape')) + (1 | g)",
        "y ~ I(eval('1')) + (1 | g)",
        "y ~ I(lambda: 1) + (1 | g)",
        "y ~ I([c for c in x]) + (1 | g)",
        "y ~ exec('import os') + (1 | g)",
    ],
)
def test_code_in_formulas_is_refused(formula, tmp_path, capsys):
    with pytest.raises(MultilevelError):
        ml.lmer(formula, DATA)
    path = tmp_path / "d.csv"
    DATA.to_csv(path, index=False)
    assert main(["fit", str(path), formula]) == 2
    captured = capsys.readouterr()
    assert "pwned" not in captured.out
    assert captured.err.startswith("multilevel: error:")


# -- awkward data and options ------------------------------------------------------------
N = 60
_Y = {
    "normal": lambda r: r.normal(size=N) * 10 + 100,
    "constant": lambda r: np.full(N, 3.0),
    "zeros": lambda r: np.zeros(N),
    "huge": lambda r: r.normal(size=N) * 1e300,
    "tiny": lambda r: r.normal(size=N) * 1e-300,
    "with inf": lambda r: np.r_[np.inf, r.normal(size=N - 1)],
    "text": lambda r: np.array(["a", "b"] * (N // 2), dtype=object),
    "counts": lambda r: r.poisson(2.0, size=N).astype(float),
    "binary": lambda r: r.integers(0, 2, size=N).astype(float),
}
_X = {
    "normal": lambda r: r.normal(size=N),
    "timestamp": lambda r: 1.7e9 + r.normal(size=N) * 3600,
    "object numbers": lambda r: np.array(list(r.normal(size=N)), dtype=object),
    "mixed": lambda r: np.array([1.0, "a"] * (N // 2), dtype=object),
    "constant": lambda r: np.ones(N),
    "nan": lambda r: np.full(N, np.nan),
}
_G = {
    "ten": lambda r: np.arange(N) % 10,
    "text": lambda r: np.array([f"s{i % 6}" for i in range(N)], dtype=object),
    "mixed": lambda r: np.array([i % 3 if i % 2 else str(i % 3) for i in range(N)], dtype=object),
    "one level": lambda r: np.zeros(N, dtype=int),
    "unique": lambda r: np.arange(N),
}
_FORMULAS = [
    "y ~ x + (1 | g)",
    "y ~ x + (x | g)",
    "y ~ x + (x || g)",
    "y ~ log(x) + (1 | g)",
    "y ~ I(x^-1) + (1 | g/x)",
    "y ~ 0 + x + (0 + x | g)",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    y=st.sampled_from(sorted(_Y)),
    x=st.sampled_from(sorted(_X)),
    g=st.sampled_from(sorted(_G)),
    formula=st.sampled_from(_FORMULAS),
    weights=st.sampled_from([None, "x", "g", "w"]),
    start=st.one_of(st.none(), st.lists(st.sampled_from([0.0, 1.0, -1.0, np.nan]), max_size=4)),
    family=st.sampled_from([None, "binomial", "poisson"]),
    nagq=st.sampled_from([0, 1, 5, 30, 1000]),
    seed=st.integers(0, 3),
)
def test_awkward_data_and_options_raise_only_library_errors(
    y, x, g, formula, weights, start, family, nagq, seed
):
    r = np.random.default_rng(seed)
    d = pd.DataFrame({"y": _Y[y](r), "x": _X[x](r), "g": _G[g](r), "w": r.uniform(0.5, 2, N)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if family is None:
                fit = ml.lmer(formula, d, weights=weights, start=start)
            else:
                fit = ml.glmer(formula, d, family, nAGQ=nagq)
            fit.summary()
            fit.to_dict() if hasattr(fit, "to_dict") else None
        except MultilevelError:
            pass
