"""Design matrices with R's coding and names; input checks before numerical work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from multilevel import DataError, FormulaError, ModelError, lmer, parse_formula
from multilevel.formula.design import RankDeficiencyWarning, _label, build_design, level_labels


def small(n_groups: int = 8, per: int = 6, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=g.size)
    f = rng.choice(["lo", "mid", "hi"], size=g.size)
    y = 1 + 0.5 * x + rng.normal(size=n_groups)[g] + rng.normal(scale=0.5, size=g.size)
    return pd.DataFrame({"y": y, "x": x, "f": f, "g": g, "b": x > 0})


def design(formula: str, data: pd.DataFrame, **kw):
    return build_design(parse_formula(formula), data, **kw)


def test_column_names_follow_r(hsb):
    d = design("mathach ~ meanses*cses + sector*cses + (cses | school)", hsb)
    assert d.fixef_names == [
        "(Intercept)",
        "meanses",
        "cses",
        "sectorCatholic",
        "meanses:cses",
        "cses:sectorCatholic",
    ]
    assert d.random[0].cnames == ["(Intercept)", "cses"]
    assert d.random[0].nlevels == 160


def test_strings_sorted_and_levels_override():
    df = small()
    assert design("y ~ f + (1|g)", df).fixef_names == ["(Intercept)", "flo", "fmid"]
    d = design("y ~ f + (1|g)", df, levels={"f": ["lo", "mid", "hi"]})
    assert d.fixef_names == ["(Intercept)", "fmid", "fhi"]


def test_full_dummy_coding_without_intercept_and_bool_names():
    df = small()
    assert design("y ~ 0 + f + (1|g)", df).fixef_names == ["fhi", "flo", "fmid"]
    assert design("y ~ b + (1|g)", df).fixef_names == ["(Intercept)", "bTRUE"]
    # x:f with x in the model: f coded by contrasts; without: by indicators
    assert design("y ~ x + x:f + (1|g)", df).fixef_names == ["(Intercept)", "x", "x:flo", "x:fmid"]
    assert design("y ~ x:f + (1|g)", df).fixef_names == ["(Intercept)", "x:fhi", "x:flo", "x:fmid"]


def test_interaction_columns_are_products():
    df = small()
    d = design("y ~ x*f + (1|g)", df)
    X = pd.DataFrame(d.X, columns=d.fixef_names)
    np.testing.assert_allclose(X["x:fmid"], df["x"] * (df["f"] == "mid"))


def test_transformations():
    df = small()
    d = design("y ~ I(x^2) + log(abs(x)) + (1|g)", df)
    np.testing.assert_allclose(d.X[:, 1], df.x**2)
    np.testing.assert_allclose(d.X[:, 2], np.log(np.abs(df.x)))


def test_aliased_column_dropped_with_message():
    df = small()
    df["x2"] = 2 * df["x"]
    with pytest.warns(RankDeficiencyWarning, match="dropping 1 column"):
        d = design("y ~ x + x2 + (1|g)", df)
    assert d.fixef_names == ["(Intercept)", "x"]


def test_missing_rows_dropped_and_counted():
    df = small()
    df.loc[[0, 5], "x"] = np.nan
    df.loc[7, "f"] = None
    d = design("y ~ x + f + (1|g)", df)
    assert d.n_dropped == 3 and d.nobs == len(df) - 3
    fit = lmer("y ~ x + f + (1|g)", df)
    assert "3 observations deleted" in str(fit.summary())
    with pytest.raises(DataError, match="missing values"):
        design("y ~ x + (1|g)", df, na_action="raise")


def test_missing_column_suggests_close_match():
    with pytest.raises(DataError, match=r"'xx'.*did you mean 'x'"):
        lmer("y ~ xx + (1|g)", small())
    with pytest.raises(DataError, match="'gg'"):
        lmer("y ~ x + (1|gg)", small())


def test_single_level_grouping_factor():
    df = small()
    df["one"] = "a"
    with pytest.raises(ModelError, match="only 1 level"):
        lmer("y ~ x + (1|one)", df)


def test_as_many_random_effects_as_observations():
    df = small()
    df["obs"] = np.arange(len(df))
    with pytest.raises(ModelError, match="unidentifiable"):
        lmer("y ~ x + (1|obs)", df)


def test_non_numeric_response():
    df = small()
    with pytest.raises(DataError, match="not numeric"):
        lmer("f ~ x + (1|g)", df)


def test_empty_data_and_infinite_values():
    with pytest.raises(DataError, match="no rows"):
        lmer("y ~ x + (1|g)", small().iloc[:0])
    df = small()
    df.loc[3, "x"] = np.inf
    with pytest.raises(DataError, match="infinite"):
        lmer("y ~ x + (1|g)", df)


def test_unsafe_expression_refused():
    with pytest.raises(FormulaError):
        lmer("y ~ __import__('os').getcwd() + (1|g)", small())
    with pytest.raises(FormulaError, match="'eval' .* not allowed"):
        lmer("y ~ eval('x') + (1|g)", small())
    with pytest.raises(FormulaError, match="not allowed"):
        lmer("y ~ I(getattr(x, 'real')) + (1|g)", small())
    with pytest.raises(FormulaError, match="not allowed"):
        lmer("y ~ I([x][0]) + (1|g)", small())


def test_no_random_terms_is_an_error():
    with pytest.raises(ModelError, match="no random-effects"):
        lmer("y ~ x", small())


def test_polars_input_gives_the_same_fit():
    pl = pytest.importorskip("polars")
    df = small()
    a = lmer("y ~ x + (1|g)", df)
    b = lmer("y ~ x + (1|g)", pl.DataFrame({c: df[c].to_numpy() for c in df.columns}))
    np.testing.assert_allclose(a.fixef, b.fixef, rtol=1e-10)
    assert a.loglik == pytest.approx(b.loglik, rel=1e-12)


def test_offset_equals_shifted_response():
    df = small()
    df["z"] = np.linspace(-1, 1, len(df))
    a = lmer("y ~ x + offset(z) + (1|g)", df)
    b = lmer("y ~ x + (1|g)", df.assign(y=df.y - df.z))
    c = lmer("y ~ x + (1|g)", df, offset="z")
    np.testing.assert_allclose(a.fixef, b.fixef, rtol=1e-6)
    np.testing.assert_allclose(c.fixef, b.fixef, rtol=1e-6)
    np.testing.assert_allclose(a.fitted - df.z, b.fitted, atol=1e-6)


def test_constant_weights_scale_sigma_only():
    df = small()
    a = lmer("y ~ x + (1|g)", df)
    b = lmer("y ~ x + (1|g)", df, weights=np.full(len(df), 4.0))
    np.testing.assert_allclose(a.fixef, b.fixef, rtol=1e-6)
    # Var(εᵢ) = σ²/wᵢ: the same residual variance needs σ twice as large
    assert b.sigma == pytest.approx(2 * a.sigma, rel=1e-6)
    assert b.loglik == pytest.approx(a.loglik, rel=1e-8)


def test_random_slope_not_in_fixed_part():
    df = small()
    fit = lmer("y ~ 1 + (x | g)", df)
    assert fit.design.fixef_names == ["(Intercept)"]
    assert list(fit.ranef["g"].columns) == ["(Intercept)", "x"]


def test_interaction_grouping_factor_labels_and_fit():
    from ..conftest import reference, reference_data

    ref = reference("pastes_reml")
    data = reference_data(ref)
    explicit = lmer("strength ~ 1 + (1 | cask:batch) + (1 | batch)", data)
    nested = lmer("strength ~ 1 + (1 | batch/cask)", data)
    assert explicit.loglik == pytest.approx(nested.loglik, abs=1e-8)
    assert list(explicit.ranef["cask:batch"].index[:2]) == ["a:A", "a:B"]
    assert list(nested.ranef["cask:batch"].index) == list(ref["ranef"]["cask:batch"])


def test_poly_gives_orthonormal_columns_and_new_data_reuses_them():
    import multilevel as ml

    d = ml.datasets.load("sleepstudy")
    fit = lmer("Reaction ~ poly(Days, 2) + (1 | Subject)", d)
    assert fit.design.fixef_names == ["(Intercept)", "poly(Days, 2)1", "poly(Days, 2)2"]
    P = fit.design.X[:, 1:]
    np.testing.assert_allclose(P.T @ P, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(P.sum(axis=0), 0, atol=1e-12)
    # R: poly(0:9 repeated 18 times, 2)[1, ] = (-0.1167748, 0.1230915)
    np.testing.assert_allclose(P[0], [-0.1167748, 0.1230915], atol=1e-7)
    np.testing.assert_allclose(fit.predict(d.iloc[5:9]), fit.fitted.iloc[5:9], atol=1e-9)


@given(
    st.one_of(
        st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=20, unique=True),
        st.lists(st.floats(allow_nan=False, width=64), min_size=1, max_size=20, unique=True),
        st.lists(st.text(max_size=5), min_size=1, max_size=20, unique=True),
        st.lists(st.booleans(), min_size=1, max_size=2, unique=True),
    )
)
def test_level_labels_by_dtype_equal_the_per_value_labels(values):
    """The fast paths by dtype print every level as the one-value rule does
    (integral floats without '.0', TRUE/FALSE)."""
    idx = pd.Index(values)
    assert level_labels(idx) == [_label(v) for v in idx.to_numpy()]


@given(
    n=st.integers(1, 60),
    cols=st.lists(
        st.sampled_from(["normal", "zero", "copy", "shifted", "tiny", "huge", "ones", "int"]),
        min_size=1,
        max_size=6,
    ),
    intercept=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_compiled_aliasing_screen_decides_as_numpy(n, cols, intercept, seed):
    """The compiled screen of a model matrix decides what the numpy one
    decides: the same zero columns, or undecided (None) alike."""
    import multilevel.formula.design as D
    from multilevel.compiled import kernel

    if kernel("_kernels", "gram_screen") is None:
        pytest.skip("the compiled kernel of the screen was not built")
    rng = np.random.default_rng(seed)
    made = [np.ones(n)] if intercept else []
    for c in cols:
        base = rng.normal(size=n)
        made.append(
            {
                "normal": base,
                "zero": np.zeros(n),
                "copy": made[-1] * 3.0 if made else base,
                "shifted": 1e6 + base,  # centring keeps few digits
                "tiny": 1e-9 * base,
                "huge": 1e150 * base,
                "ones": np.ones(n),
                "int": rng.integers(0, 3, n).astype(float),
            }[c]
        )
    X = np.column_stack(made)
    D.GRAM_KERNEL_DISABLED = True
    try:
        expected = D._gram_screen(X)
    finally:
        D.GRAM_KERNEL_DISABLED = False
    got = D._gram_screen(X)
    assert (expected is None) == (got is None)
    if expected is not None:
        np.testing.assert_array_equal(got, expected)


def test_text_levels_without_pyarrow(monkeypatch):
    """Text levels stored by Python (pandas' string type without pyarrow)
    are listed without importing pyarrow, which is not a dependency."""
    import sys

    idx = pd.Index(["b", "a"], dtype=pd.StringDtype("python"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    assert level_labels(idx) == ["b", "a"]


def test_level_labels_formed_on_use_match_the_coding():
    """Grouping factors' level labels are formed on first use (a fit needs
    only their number): the same labels, in level order, as the eager coding,
    for one grouping column and for an interaction; a set list replaces them."""
    from multilevel.formula.design import group_codes

    df = pd.DataFrame(
        {
            "y": np.arange(12.0),
            "a": pd.array(list("bbaaccbbaacc"), dtype="string"),
            "b": [2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1],
        }
    )
    d = build_design(parse_formula("y ~ 1 + (1 | a) + (1 | a:b)"), df)
    one, inter = d.random
    assert one.nlevels == 3 and inter.nlevels == 6
    assert "_levels" in vars(one) and one._levels is None  # nothing formed yet
    assert one.levels == ["a", "b", "c"]
    codes, labels, _ = group_codes(inter.parts)
    assert inter.levels == labels == ["a:1", "a:2", "b:1", "b:2", "c:1", "c:2"]
    np.testing.assert_array_equal(codes, inter.codes)
    spec = d.factor_specs["a"]
    assert spec.labels == level_labels(spec.values) == ["a", "b", "c"]
    inter.levels = labels[:4]
    assert inter.nlevels == 4 and inter.levels == labels[:4]


@pytest.mark.parametrize("n", [30, 3000])  # the short columns' sort, then pandas' hashing
@pytest.mark.parametrize("storage", ["object", "str", "category"])
def test_text_levels_are_the_sorted_values(n, storage):
    """A text column's levels are its distinct values sorted (R's factor()),
    codes into them, -1 where missing, whatever pandas' string storage."""
    from multilevel.formula.design import categorize

    rng = np.random.default_rng(n)
    words = np.array(["b10", "a", "B", "b2", "é", "zz", "a b"], dtype=object)
    values = words[rng.integers(0, words.size, n)]
    values[3] = None
    col = pd.Series(values, dtype=object if storage == "object" else storage)
    cat = categorize(col, "w", None)
    present = sorted(set(v for v in values if v is not None))
    assert list(cat.values) == present
    assert cat.labels == present
    expect = np.array([present.index(v) if v is not None else -1 for v in values])
    np.testing.assert_array_equal(cat.codes, expect)
    assert isinstance(cat.values, pd.Index) and cat.values.get_indexer(["B"])[0] == 0
