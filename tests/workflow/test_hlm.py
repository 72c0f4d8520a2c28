"""Level-wise (HLM-style) specification: expansion to lme4 formulas, fits equal
to lmer on the combined formula and to R, printed equations, errors."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import multilevel as ml
from multilevel import DataError, FormulaError, ModelError
from multilevel.workflow.equations import format_numbers
from multilevel.workflow.hlm import Multilevel, MultilevelFit

from ..conftest import reference, reference_data

HSB_LEVEL2 = {"(Intercept)": "~ meanses + sector", "cses": "~ meanses + sector"}
REL = 1e-6  # our level-wise fit vs our lmer on the combined formula (identical designs)
R_REL = 1e-4  # vs R's reference (optimizer tolerance of both engines)


def hsb_spec(**kw) -> Multilevel:
    args = {"random": ["(Intercept)", "cses"], "correlated": True} | kw
    return Multilevel("mathach ~ cses", HSB_LEVEL2, group="school", **args)


@pytest.fixture(scope="module")
def hsb_ref() -> dict:
    return reference("hsb_lmer_reml")


@pytest.fixture(scope="module")
def hsb_fit(hsb) -> MultilevelFit:
    return hsb_spec().fit(hsb)


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


# --------------------------------------------------------------------------- HSB vs lmer/R


def test_hsb_formula_is_the_reference_formula(hsb_ref):
    assert hsb_spec().formula() == hsb_ref["formula"]


def test_hsb_fit_equals_lmer_and_r(hsb_fit, hsb, hsb_ref):
    direct = ml.lmer(hsb_ref["formula"], hsb)
    assert list(hsb_fit.fixef.index) == hsb_ref["fixef_names"]
    assert list(hsb_fit.fixef.index) == list(direct.fixef.index)
    assert _rel(hsb_fit.fixef, direct.fixef) < REL
    assert _rel(hsb_fit.se, direct.se) < REL
    assert abs(hsb_fit.loglik - direct.loglik) < 1e-8 * abs(direct.loglik)
    ref_fixef = [hsb_ref["fixef"][n] for n in hsb_ref["fixef_names"]]
    assert _rel(hsb_fit.fixef, ref_fixef) < R_REL
    assert abs(hsb_fit.loglik - hsb_ref["loglik"]) < 1e-6 * abs(hsb_ref["loglik"])
    assert isinstance(hsb_fit.lmer, ml.LmerFit)


@pytest.mark.parametrize(
    ("case", "kw", "reml"),
    [
        ("hsb_lmer_uncorr", {"correlated": False}, True),
        ("hsb_lmer_intercept", {"random": ["(Intercept)"]}, True),
        ("hsb_lmer_ml", {}, False),
    ],
)
def test_hsb_variants_against_r(case, kw, reml, hsb):
    ref = reference(case)
    spec = hsb_spec(**kw)
    assert spec.formula() == ref["formula"]
    fit = spec.fit(hsb, REML=reml)
    assert list(fit.fixef.index) == ref["fixef_names"]
    assert _rel(fit.fixef, [ref["fixef"][n] for n in ref["fixef_names"]]) < R_REL
    assert abs(fit.loglik - ref["loglik"]) < 1e-6 * abs(ref["loglik"])
    vc = [row["vcov"] for row in ref["varcorr"]]
    assert _rel([r.value for r in fit.variance_rows()], vc) < 1e-3


def test_coefficient_table_maps_gammas_to_r_names(hsb_fit, hsb_ref):
    tab = hsb_fit.coefficients
    assert list(tab.index) == ["γ00", "γ01", "γ02", "γ10", "γ11", "γ12"]
    assert list(tab["fixef"]) == [
        "(Intercept)",
        "meanses",
        "sectorCatholic",
        "cses",
        "meanses:cses",
        "cses:sectorCatholic",
    ]
    assert list(tab["equation"]) == ["β0j"] * 3 + ["β1j"] * 3
    for sym, row in tab.iterrows():
        assert row["estimate"] == pytest.approx(hsb_ref["fixef"][row["fixef"]], rel=R_REL), sym
        assert row["se"] == pytest.approx(hsb_ref["se"][row["fixef"]], rel=1e-3), sym


# --------------------------------------------------------------------------- printing


def test_symbolic_equations(hsb_fit):
    text = str(hsb_fit)
    assert "mathach_ij = β0j + β1j·cses_ij + r_ij" in text
    assert "β0j = γ00 + γ01·meanses_j + γ02·sectorCatholic_j + u0j" in text
    assert "β1j = γ10 + γ11·meanses_j + γ12·sectorCatholic_j + u1j" in text
    assert (
        "mathach_ij = γ00 + γ01·meanses_j + γ10·cses_ij + γ02·sectorCatholic_j"
        " + γ11·meanses_j·cses_ij + γ12·sectorCatholic_j·cses_ij + u0j + u1j·cses_ij + r_ij"
    ) in text
    spec_text = str(hsb_spec())
    assert "β0j = γ00 + γ01·meanses_j + γ02·sector_j + u0j" in spec_text
    assert hsb_spec().formula() in spec_text


def test_estimated_equations_hold_the_reference_numbers(hsb_fit, hsb_ref):
    fe = hsb_ref["fixef"]

    def n(name: str) -> str:
        return f"{fe[name]:.3f}"

    text = hsb_fit.equations()
    assert n("(Intercept)") == "12.128"
    assert (
        f"β0j = {n('(Intercept)')} + {n('meanses')}·meanses_j + "
        f"{n('sectorCatholic')}·sectorCatholic_j + u0j"
    ) in text
    slope = fe["cses:sectorCatholic"]
    assert slope < 0
    assert (
        f"β1j = {n('cses')} + {n('meanses:cses')}·meanses_j - {-slope:.3f}·sectorCatholic_j + u1j"
    ) in text
    assert (
        f"mathach_ij = {n('(Intercept)')} + {n('meanses')}·meanses_j + {n('cses')}·cses_ij"
    ) in text
    # digits= controls the significant digits (R's format() rule per equation)
    assert "β0j = 12.1 + 5.3·meanses_j + 1.2·sectorCatholic_j + u0j" in hsb_fit.equations(digits=2)
    symbolic = hsb_fit.equations(estimates=False)
    assert "γ01·meanses_j" in symbolic and "12.128" not in symbolic


def test_variance_components_text(hsb_fit, hsb_ref):
    text = str(hsb_fit)
    vc = {(r["group"], r["var1"], r["var2"]): r for r in hsb_ref["varcorr"]}
    v0 = vc[("school", "(Intercept)", None)]["vcov"]
    v1 = vc[("school", "cses", None)]["vcov"]
    c01 = vc[("school", "(Intercept)", "cses")]
    s2 = vc[("Residual", None, None)]["vcov"]
    lines = {line.strip().split(" = ")[0].strip(): line for line in text.splitlines()}

    def shown(label: str) -> float:
        return float(lines[label].split(" = ")[-1].split()[0])

    # 4 significant digits shown; the slope variance of our engine and lme4 differ by
    # 1.7e-3 relative (a flat direction of the likelihood: loglik agrees to 1e-11)
    for label, value in [
        ("Var(u0j)", v0),
        ("Var(u1j)", v1),
        ("Var(r_ij)", s2),
        ("Cov(u0j, u1j)", c01["vcov"]),
    ]:
        assert shown(label) == pytest.approx(value, rel=3e-3), label
        assert len(lines[label].split(" = ")[-1].split()[0].replace(".", "").lstrip("0")) <= 4
    corr = float(lines["Cov(u0j, u1j)"].split("corr ")[1].rstrip(")"))
    assert corr == pytest.approx(c01["sdcor"], abs=1e-3)
    assert "τ01" in lines["Cov(u0j, u1j)"] and "σ²" in lines["Var(r_ij)"]


def _balanced(tex: str) -> bool:
    depth = 0
    for m in re.finditer(r"\\[{}]|[{}]", tex):
        tok = m.group()
        if tok in (r"\{", r"\}"):
            continue
        depth += 1 if tok == "{" else -1
        if depth < 0:
            return False
    return depth == 0


def test_latex_is_well_formed(hsb_fit):
    tex = hsb_fit.to_latex()
    assert _balanced(tex)
    assert tex.startswith("\\begin{align*}") and tex.rstrip().endswith("\\end{align*}")
    for needle in (
        r"\gamma_{00}",
        r"\gamma_{12}",
        r"\beta_{0j}",
        r"u_{1j}",
        r"r_{ij}",
        r"\text{sectorCatholic}_{j}",
        r"\tau_{01}",
        r"\sigma^{2}",
        "12.128",
        r"- 1.643\,\text{sectorCatholic}_{j}",
    ):
        assert needle in tex, needle
    assert not re.search("[βγτσ·]", tex)
    rows = [r for r in tex.splitlines()[1:-1] if not r.startswith(r"\intertext")]
    assert all(r.count("&=") == 1 for r in rows)
    assert all(r.endswith(r" \\") for r in rows[:-1]) and not rows[-1].endswith(r"\\")
    assert _balanced(hsb_spec().to_latex())


def test_latex_escapes_names_and_small_numbers():
    from multilevel.workflow.equations import Equation, Symbol, Term, Variable, render_equation

    eq = Equation(
        Symbol("beta", (1,), "j"),
        [Term(Symbol("gamma", (1, 0))), Term(Symbol("gamma", (1, 1)), (Variable("a_b%", "j"),))],
    )
    eq.fixed[0].value, eq.fixed[1].value = 2.5, -3.2e-12
    tex = render_equation(eq, latex=True, estimates=True)
    assert r"\text{a\_b\%}_{j}" in tex and r"\times 10^{-12}" in tex and _balanced(tex)
    assert render_equation(eq) == "β1j = γ10 + γ11·(a_b%)_j"


# --------------------------------------------------------------------------- expansion rule


@pytest.mark.parametrize(
    ("kw", "formula"),
    [
        ({"level1": "y ~ x"}, "y ~ x + (1 | g)"),
        ({"level1": "y ~ 1", "level2": {"(Intercept)": "~ w"}}, "y ~ w + (1 | g)"),
        ({"level1": "y ~ x", "level2": {"x": "~ w"}}, "y ~ x + w:x + (1 | g)"),
        (
            {"level1": "y ~ x", "level2": {"(Intercept)": "~ w", "x": "~ 0 + w"}},
            "y ~ w + w:x + (1 | g)",
        ),
        (
            {"level1": "y ~ x + v", "level2": "~ w + h", "random": ["(Intercept)", "v"]},
            "y ~ w * x + w * v + h * x + h * v + (v | g)",
        ),
        ({"level1": "y ~ 0 + x", "random": ["x"]}, "y ~ 0 + x + (0 + x | g)"),
        (
            {"level1": "y ~ x", "random": ["(Intercept)", "x"], "correlated": False},
            "y ~ x + (x || g)",
        ),
        ({"level1": "y ~ x", "random": ["x"], "correlated": False}, "y ~ x + (0 + x | g)"),
        ({"level1": "y ~ x + offset(log(n))"}, "y ~ x + offset(log(n)) + (1 | g)"),
        (
            {"level1": "y ~ x:f", "level2": {"f:x": "~ w"}, "random": ["x:f"]},
            "y ~ x:f + w:x:f + (0 + x:f | g)",
        ),
    ],
)
def test_two_level_expansion(kw, formula):
    assert Multilevel(group="g", **kw).formula() == formula


@pytest.mark.parametrize(
    ("kw", "formula"),
    [
        ({}, "y ~ x + (1 | d/g)"),
        ({"random": ["(Intercept)", "x"], "random3": ["(Intercept)", "x"]}, "y ~ x + (x | d/g)"),
        (
            {"random": ["(Intercept)", "x"], "random3": ["(Intercept)"]},
            "y ~ x + (1 | d) + (x | g:d)",
        ),
        (
            {"level2": {"(Intercept)": "~ w"}, "random3": ["(Intercept)", ("(Intercept)", "w")]},
            "y ~ w + x + (w | d) + (1 | g:d)",
        ),
        (
            {"level2": "~ w", "level3": {"x": {"w": "~ z"}}, "random": []},
            "y ~ w * x + z:w:x + (1 | d)",
        ),
        (
            {"level3": {("(Intercept)", "(Intercept)"): "~ z"}, "random3": []},
            "y ~ z + x + (1 | g:d)",
        ),
    ],
)
def test_three_level_expansion(kw, formula):
    kw = dict(kw)
    spec = Multilevel("y ~ x", kw.pop("level2", None), group="g", group3="d", **kw)
    assert spec.formula() == formula
    assert spec.group_names == ("g:d", "d")


_names = st.sampled_from(["a", "b", "c"])


@settings(max_examples=60, deadline=None)
@given(
    level1=st.lists(st.sampled_from(["x1", "x2", "x1:x2"]), unique=True, max_size=3),
    icpt=st.booleans(),
    eqs=st.lists(st.lists(_names, unique=True, max_size=3), min_size=4, max_size=4),
    eq_icpt=st.lists(st.booleans(), min_size=4, max_size=4),
    rand=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_expansion_holds_exactly_the_level_wise_products(level1, icpt, eqs, eq_icpt, rand):
    """The constructor re-parses its formula and checks that the fixed terms are
    exactly {level-1 term ∪ level-2 term} and the random columns as listed."""
    keys = (["(Intercept)"] if icpt else []) + level1
    if not keys:
        return
    rhs = " + ".join((["1"] if icpt else ["0"]) + level1)
    level2 = {
        k: "~ " + " + ".join((["1"] if i else ["0"]) + e)
        for k, e, i in zip(keys, eqs, eq_icpt, strict=False)
    }
    random = [k for k, r in zip(keys, rand, strict=False) if r] or [keys[0]]
    try:
        spec = Multilevel(f"y ~ {rhs}", level2, group="g", random=random)
    except ModelError as exc:  # a coefficient with neither fixed nor random part
        assert "neither a fixed part" in str(exc)
        return
    parsed = ml.parse_formula(spec.formula())
    n_paths = len(spec.paths())
    assert len(parsed.fixed.terms) + parsed.fixed.intercept == n_paths


# --------------------------------------------------------------------------- three levels


def _three_level_data(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    D, S, N = 20, 8, 12
    dist = np.repeat(np.arange(D), S * N)
    school = np.tile(np.repeat(np.arange(S), N), D)
    sid = dist * S + school
    z = rng.normal(size=D)[dist]
    w = rng.normal(size=D * S)[sid]
    x = rng.normal(size=D * S * N)
    y = (
        1
        + 0.5 * z
        + 0.3 * w
        + x * (0.7 + 0.2 * w + 0.1 * z)
        + 0.8 * rng.normal(size=D)[dist]
        + 0.6 * rng.normal(size=D * S)[sid]
        + 0.3 * x * rng.normal(size=D * S)[sid]
        + rng.normal(size=D * S * N)
    )
    # school labels repeat across districts: only school:district identifies a school
    return pd.DataFrame(
        {
            "y": y,
            "x": x,
            "w": w,
            "z": z,
            "district": [f"d{i}" for i in dist],
            "school": [f"s{i}" for i in school],
        }
    )


@pytest.fixture(scope="module")
def three() -> pd.DataFrame:
    return _three_level_data()


def test_three_level_fit_equals_hand_written_lmer(three):
    spec = Multilevel(
        "y ~ x",
        {"(Intercept)": "~ w", "x": "~ w"},
        group="school",
        random=["(Intercept)", "x"],
        level3={"(Intercept)": {"(Intercept)": "~ z"}, "x": {"(Intercept)": "~ z"}},
        group3="district",
        random3=["(Intercept)"],
    )
    assert spec.formula() == "y ~ z * x + w * x + (1 | district) + (x | school:district)"
    fit = spec.fit(three)
    hand = ml.lmer("y ~ x*z + x*w + (1 + x | district:school) + (1 | district)", three)
    assert abs(fit.loglik - hand.loglik) < 1e-7 * abs(hand.loglik)
    assert fit.ngroups == {"school:district": 160, "district": 20}
    hand_fe = hand.fixef.rename({"x:z": "z:x"})
    assert _rel(fit.fixef, hand_fe[fit.fixef.index]) < 1e-5
    text = str(fit)
    assert "π0jk = β00k + β01k·w_jk + r0jk" in text
    assert "β00k = γ000 + γ001·z_k + u00k" in text
    assert "β11k = γ110\n" in text
    assert "Cov(r0jk, r1jk)" in text and "Var(u00k)" in text and "Var(e_ijk)" in text
    g = fit.coefficients.loc["γ101"]
    assert g["fixef"] == "z:x" and g["equation"] == "β10k"
    assert f"{g['estimate']:.4f}"[:5] in fit.equations()
    assert _balanced(fit.to_latex()) and r"\gamma_{101}" in fit.to_latex()


def test_three_level_nested_slash_form(three):
    spec = Multilevel(
        "y ~ x",
        "~ w",
        group="school",
        random=["(Intercept)", "x"],
        group3="district",
        random3=["(Intercept)", "x"],
        level3={"(Intercept)": {"(Intercept)": "~ z"}},
    )
    assert spec.formula() == "y ~ z + w * x + (x | district/school)"
    fit = spec.fit(three)
    hand = ml.lmer("y ~ z + x + w + x:w + (1 + x | district) + (1 + x | school:district)", three)
    assert abs(fit.loglik - hand.loglik) < 1e-7 * abs(hand.loglik)
    labels = [r.symbols for r in fit.variance_rows()]
    assert [s.text() for s in labels[-1]] == ["e_ijk"]
    assert {s.text() for row in labels for s in row} == {
        "r0jk", "r1jk", "u00k", "u10k", "e_ijk"
    }  # fmt: skip


def test_pastes_three_level_against_r():
    ref = reference("pastes_reml")
    spec = Multilevel("strength ~ 1", group="cask", group3="batch")
    assert spec.formula() == ref["formula"]
    fit = spec.fit(reference_data(ref))
    assert abs(fit.loglik - ref["loglik"]) < 1e-6 * abs(ref["loglik"])
    assert fit.fixef["(Intercept)"] == pytest.approx(ref["fixef"]["(Intercept)"], rel=1e-6)
    vc = {r["group"]: r["vcov"] for r in ref["varcorr"]}
    rows = {r.symbols[0].text(): r.value for r in fit.variance_rows()}
    assert rows["r0jk"] == pytest.approx(vc["cask:batch"], rel=1e-3)
    assert rows["u00k"] == pytest.approx(vc["batch"], rel=1e-3)
    assert rows["e_ijk"] == pytest.approx(vc["Residual"], rel=1e-3)


# --------------------------------------------------------------------------- categorical


@pytest.fixture(scope="module")
def hsb_cat(hsb) -> pd.DataFrame:
    d = hsb.copy()
    d["grp"] = pd.Categorical(np.array(["A", "B", "C"])[np.arange(len(d)) % 3])
    return d


def test_categorical_level1_term_gets_one_beta_per_column(hsb_cat):
    spec = Multilevel(
        "mathach ~ grp + cses",
        {"(Intercept)": "~ meanses", "grp": "~ meanses"},
        group="school",
        random=["(Intercept)", "cses"],
    )
    assert spec.formula() == "mathach ~ meanses * grp + cses + (cses | school)"
    fit = spec.fit(hsb_cat)
    direct = ml.lmer(spec.formula(), hsb_cat)
    assert list(fit.fixef.index) == list(direct.fixef.index)
    assert abs(fit.loglik - direct.loglik) < 1e-8 * abs(direct.loglik)
    text = str(fit)
    assert "mathach_ij = β0j + β1j·grpB_ij + β2j·grpC_ij + β3j·cses_ij + r_ij" in text
    assert "β2j = γ20 + γ21·meanses_j\n" in text
    assert "β3j = γ30 + u3j" in text
    assert fit.coefficients.loc["γ21", "fixef"] == "meanses:grpC"


def test_no_intercept_level2_equation_uses_indicator_columns(hsb):
    spec = Multilevel(
        "mathach ~ cses", {"(Intercept)": "~ sector", "cses": "~ 0 + sector"}, group="school"
    )
    assert spec.formula() == "mathach ~ sector + sector:cses + (1 | school)"
    fit = spec.fit(hsb)
    assert "sectorPublic:cses" in fit.fixef.index
    assert "β1j = γ11·sectorPublic_j + γ12·sectorCatholic_j" in str(fit)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"level2": {"ses": "~ meanses"}}, ModelError, "'ses' is not a coefficient"),
        ({"random": ["ses"]}, ModelError, "random: 'ses' is not a coefficient"),
        ({"random": ["cses", "cses"]}, ModelError, "listed twice"),
        ({"random": []}, ModelError, "no random effects"),
        ({"level2": {"cses": "y ~ meanses"}}, FormulaError, "one-sided"),
        ({"level2": {"cses": "~ meanses + (1 | school)"}}, FormulaError, "random-effects"),
        ({"level2": {"cses": "~ meanses +"}}, FormulaError, "missing right-hand operand"),
        ({"level2": {"cses": 3}}, FormulaError, "must be a string"),
        ({"level2": {"cses": "~ cses"}}, ModelError, "both as a level-1 variable"),
        ({"level2": {"cses": "~ school"}}, ModelError, "grouping column 'school'"),
        ({"level2": {"cses": "~ mathach"}}, ModelError, "the response"),
        ({"level2": ["~ meanses"]}, ModelError, "must map coefficient names"),
        ({"level3": {"cses": "~ z"}}, ModelError, "need group3"),
        ({"group3": "school"}, ModelError, "must differ"),
        ({"group": None}, ModelError, "group= "),
        ({"correlated": "yes"}, ModelError, "True or False"),
        (
            {"group3": "d", "level3": {"cses": {"meanses": "~ z"}}},
            ModelError,
            "not a coefficient of the level-2 equation",
        ),
        ({"group3": "d", "random3": [("cses", "sector")]}, ModelError, "level-2 equation"),
        (
            {"group3": "d", "level2": "~ meanses", "level3": {"cses": {"meanses": "~ cses"}}},
            ModelError,
            "both as a level-1 variable and as a level-3 predictor",
        ),
        ({"level2": {"cses": "~ 0"}, "random": ["(Intercept)"]}, ModelError, "neither a fixed"),
    ],
)
def test_specification_errors(kw, error, match):
    args = {"level2": None, "group": "school"} | kw
    with pytest.raises(error, match=re.escape(match) if "(" in match else match):
        Multilevel("mathach ~ cses", **args)


def test_level1_errors():
    with pytest.raises(FormulaError, match="random-effects terms"):
        Multilevel("mathach ~ cses + (1 | school)", group="school")
    with pytest.raises(FormulaError, match="no response"):
        Multilevel("~ cses", group="school")
    with pytest.raises(ModelError, match="no intercept"):
        Multilevel("mathach ~ 0 + cses", {"(Intercept)": "~ meanses"}, group="school")


def test_level2_predictor_varying_within_groups(hsb):
    spec = Multilevel("mathach ~ cses", {"cses": "~ ses"}, group="school")
    with pytest.raises(DataError, match="'ses' is not a level-2 variable: it varies within 160"):
        spec.fit(hsb)
    d = hsb.copy()
    d.loc[d.index[:3], "meanses"] += 1.0  # first school only
    with pytest.raises(DataError, match="varies within 1 of 160 'school' groups"):
        hsb_spec().fit(d)


def test_level3_predictor_varying_within_districts(three):
    spec = Multilevel(
        "y ~ x", group="school", group3="district", level3={"(Intercept)": {"(Intercept)": "~ w"}}
    )
    with pytest.raises(DataError, match="'w' is not a level-3 variable"):
        spec.fit(three)


def test_categorical_codings_that_do_not_split_by_level(hsb_cat):
    with pytest.raises(ModelError, match="'grpA'"):
        Multilevel("mathach ~ grp", group="school", random=["grp"]).fit(hsb_cat)
    with pytest.raises(ModelError, match="does not split into level-wise products"):
        Multilevel("mathach ~ grp", {"grp": "~ meanses"}, group="school").fit(hsb_cat)


def test_missing_columns_are_data_errors(hsb):
    with pytest.raises(DataError, match="not in the data"):
        Multilevel("mathach ~ cses", {"cses": "~ nosuch"}, group="school").fit(hsb)
    with pytest.raises(DataError, match="not in the data"):
        Multilevel("mathach ~ cses", group="district").fit(hsb)


def test_forwarding_and_repr(hsb_fit):
    assert hsb_fit.loglik == hsb_fit.lmer.loglik
    assert hsb_fit.formula == hsb_spec().formula()
    assert "MultilevelFit" in repr(hsb_fit) and "Multilevel(" in repr(hsb_spec())
    with pytest.raises(AttributeError):
        _ = hsb_fit.no_such_attribute
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        str(hsb_fit)


def test_format_numbers_follows_r_format_rule():
    assert format_numbers([12.12793, 5.332872, 1.22658], 4) == ["12.128", "5.333", "1.227"]
    assert format_numbers([2.3796], 4) == ["2.38"]  # R drops trailing zeros
    assert format_numbers([1.5, 3.2e-12], 3) == ["1.5", "3.20e-12"]
    assert format_numbers([float("nan"), 2.0], 3) == ["NA", "2"]
    with pytest.raises(ValueError):
        format_numbers([1.0], 0)
