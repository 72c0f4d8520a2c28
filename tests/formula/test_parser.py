"""Parsing lme4 formulas: R's term algebra, random terms, positioned errors."""

from __future__ import annotations

import pytest

from multilevel import FormulaError, parse_formula


def labels(f: str) -> list[str]:
    return parse_formula(f).fixed.term_labels()


def test_r_term_order_and_factor_order():
    assert labels("mathach ~ meanses*cses + sector*cses") == [
        "meanses",
        "cses",
        "sector",
        "meanses:cses",
        "cses:sector",
    ]


def test_power_expands_to_all_two_way_interactions():
    assert labels("y ~ (a + b + c)^2") == ["a", "b", "c", "a:b", "a:c", "b:c"]
    assert labels("y ~ (a + b + c)**2") == labels("y ~ (a + b + c)^2")


def test_nesting_and_in_operator():
    assert labels("y ~ a/b") == ["a", "a:b"]
    assert labels("y ~ b %in% a") == ["b:a"]
    assert labels("y ~ a*b - a:b") == ["a", "b"]


@pytest.mark.parametrize("f", ["y ~ x - 1", "y ~ 0 + x", "y ~ -1 + x"])
def test_intercept_removal(f):
    p = parse_formula(f)
    assert not p.fixed.intercept
    assert p.fixed.term_labels() == ["x"]


def test_calls_are_single_factors():
    p = parse_formula("y ~ I(x^2) + log(z + 1) + offset(log(t))")
    assert p.fixed.term_labels() == ["I(x^2)", "log(z + 1)"]
    assert p.factors["I(x^2)"].code == "I(x**2)"
    assert p.fixed.offsets == ["offset(log(t))"]


def test_random_terms():
    p = parse_formula("y ~ x + (x | g) + (1 | h)")
    assert [r.text for r in p.random] == ["(1 + x | g)", "(1 | h)"]
    assert p.fixed.term_labels() == ["x"]


def test_double_bar_splits_terms():
    p = parse_formula("Reaction ~ Days + (Days || Subject)")
    assert [r.text for r in p.random] == ["(1 | Subject)", "(0 + Days | Subject)"]


def test_nested_grouping_names_as_lme4():
    p = parse_formula("strength ~ 1 + (1 | batch/cask)")
    assert [r.group_name for r in p.random] == ["cask:batch", "batch"]
    assert p.random[0].group == ("cask", "batch")
    q = parse_formula("y ~ 1 + (1 | a:b)")
    assert q.random[0].group_name == "a:b"


def test_backticks_and_dotted_names():
    p = parse_formula("y ~ `my var` + x.1")
    assert p.fixed.term_labels() == ["my var", "x.1"]


@pytest.mark.parametrize(
    "formula, position",
    [
        ("y ~ x +", 6),
        ("y ~ x + (1 | g", 14),
        ("y ~ x $ z", 6),
        ("y ~ x | g", 4),
        ("y ~ x + 2", 8),
        ("y ~ (a+b)^x", 10),
        ("y ~ x ~ z", 6),
        ("y ~ x + (1 | g) * z", 8),
    ],
)
def test_errors_name_the_position(formula, position):
    with pytest.raises(FormulaError) as err:
        parse_formula(formula)
    assert err.value.position == position
    assert "^" in str(err.value)


def test_missing_tilde_and_response():
    with pytest.raises(FormulaError, match="'~'"):
        parse_formula("y x")
    with pytest.raises(FormulaError, match="no response"):
        parse_formula("~ x")
    with pytest.raises(FormulaError, match="empty"):
        parse_formula("  ")
