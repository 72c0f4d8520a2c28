"""Plots (multilevel.plotting): the drawn data are read back from the artists and
compared with the model's numbers and, where R reports them, with R's.

Agreement with R (hsb_lmer_reml): conditional modes within 2e-3 of the largest
|mode| of each column, conditional SDs within 2e-3 relative; lmList intervals
(hsb_lmlist) from R's estimates and SEs within 1e-9.  The tests without
matplotlib (import hygiene, the missing-dependency error) run everywhere; the
others are skipped when matplotlib is not installed.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import expit

import multilevel as ml
from multilevel import plotting as mp
from multilevel.errors import DataError, ModelError, MultilevelError

from .conftest import reference, reference_data

SRC = Path(__file__).resolve().parents[1] / "src"
Z95 = stats.norm.ppf(0.975)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference("hsb_lmer_reml")


@pytest.fixture(scope="module")
def data(ref) -> pd.DataFrame:
    return reference_data(ref)


@pytest.fixture(scope="module")
def fit(ref, data):
    return ml.lmer(ref["formula"], data)


@pytest.fixture(scope="module")
def mpl():
    return pytest.importorskip("matplotlib")


def _line(ax, label):
    found = [ln for ln in ax.lines if ln.get_label() == label]
    assert len(found) == 1, [ln.get_label() for ln in ax.lines]
    return found[0]


def _segments(ax, label) -> np.ndarray:
    """(k, 2, 2) segments of the LineCollection labelled ``label``."""
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return np.array(found[0].get_segments())


def _ticklabels(ax, axis="y") -> list[str]:
    ticks = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    return [t.get_text() for t in ticks]


# --------------------------------------------------------------------------- optional


def test_import_does_not_load_matplotlib():
    code = (
        "import sys, multilevel, multilevel.plotting; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _without_matplotlib(monkeypatch):
    # a None entry makes `import matplotlib` raise ImportError, as if not installed
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, fit, data):
    _without_matplotlib(monkeypatch)
    lml = ml.lmList("mathach ~ ses | school", data)
    calls = [
        lambda: mp.caterpillar(fit),
        lambda: mp.lmlist_intervals(lml),
        lambda: mp.residuals_fitted(fit),
        lambda: mp.qq_residuals(fit),
        lambda: mp.qq_ranef(fit),
        lambda: mp.residuals_by_group(fit),
        lambda: mp.diagnostics(fit),
        lambda: mp.trajectories(fit, "cses"),
        lambda: mp.profile_zeta(fit),  # must fail before profiling
        lambda: mp.effect_plot(fit, "cses", data),
    ]
    for call in calls:
        with pytest.raises(mp.MissingDependencyError) as info:
            call()
        assert isinstance(info.value, ImportError)
        assert isinstance(info.value, MultilevelError)
        assert "pip install multilevel[plot]" in str(info.value)


# --------------------------------------------------------------------------- caterpillar


def test_caterpillar_points_and_intervals_are_the_models(mpl, fit):
    fig = mp.caterpillar(fit)
    assert len(fig.axes) == 2
    modes, sds = fit.ranef["school"], fit.ranef_condsd["school"]
    for ax, term in zip(fig.axes, ["(Intercept)", "cses"], strict=True):
        assert ax.get_xlabel() == term
        assert term in ax.get_title() and "school" in ax.get_title()
        b, sd = modes[term].to_numpy(), sds[term].to_numpy()
        order = np.argsort(b, kind="stable")
        pts = _line(ax, "conditional mode")
        assert len(pts.get_xdata()) == 160
        np.testing.assert_array_equal(pts.get_xdata(), b[order])
        np.testing.assert_array_equal(pts.get_ydata(), np.arange(160))
        seg = _segments(ax, "interval")
        assert seg.shape == (160, 2, 2)
        np.testing.assert_allclose(seg[:, 0, 0], (b - Z95 * sd)[order], rtol=1e-12)
        np.testing.assert_allclose(seg[:, 1, 0], (b + Z95 * sd)[order], rtol=1e-12)
        np.testing.assert_array_equal(seg[:, 0, 1], np.arange(160))
        assert np.all(np.diff(pts.get_xdata()) >= 0)


def test_caterpillar_intervals_agree_with_r(mpl, fit, ref):
    fig = mp.caterpillar(fit, sort=False, labels=True)
    re = pd.DataFrame(ref["ranef"]["school"]).T
    sd = pd.DataFrame(ref["ranef_condsd"]["school"]).T
    for ax, term in zip(fig.axes, re.columns, strict=True):
        assert _ticklabels(ax) == list(re.index)  # level order, labelled
        seg = _segments(ax, "interval")
        scale = np.abs(re[term]).max() + Z95 * sd[term].max()
        np.testing.assert_allclose(seg[:, 0, 0], re[term] - Z95 * sd[term], atol=2e-3 * scale)
        np.testing.assert_allclose(seg[:, 1, 0], re[term] + Z95 * sd[term], atol=2e-3 * scale)
        np.testing.assert_allclose(
            fit.ranef_condsd["school"][term], sd[term], rtol=2e-3
        )  # the SDs the intervals use


def test_caterpillar_options(mpl, fit):
    from matplotlib.figure import Figure

    fig = mp.caterpillar(fit, terms="cses", level=0.5)
    (ax,) = fig.axes
    b = fit.ranef["school"]["cses"].to_numpy()
    sd = fit.ranef_condsd["school"]["cses"].to_numpy()
    seg = _segments(ax, "interval")
    width = np.sort(seg[:, 1, 0] - seg[:, 0, 0])
    np.testing.assert_allclose(width, np.sort(2 * stats.norm.ppf(0.75) * sd), rtol=1e-12)
    assert _ticklabels(ax) == []  # 160 groups: no labels by default
    own = Figure()
    axes = own.subplots(1, 2)
    assert mp.caterpillar(fit, ax=axes) is own
    np.testing.assert_array_equal(_line(axes[1], "conditional mode").get_xdata(), np.sort(b))
    with pytest.raises(ValueError, match="2 panel"):
        mp.caterpillar(fit, ax=axes[0])
    with pytest.raises(ModelError, match="no random effect 'ses'"):
        mp.caterpillar(fit, group="school", terms="ses")
    with pytest.raises(ModelError, match="grouping factors"):
        mp.caterpillar(fit, group="class")


def test_wrapped_fits_draw_the_same(mpl, data):
    lme = ml.lme("mathach ~ meanses*cses + sector*cses", "~ cses | school", data)
    spec = ml.Multilevel(
        level1="mathach ~ cses",
        level2={"(Intercept)": "~ meanses + sector", "cses": "~ meanses + sector"},
        group="school",
        random=["(Intercept)", "cses"],
    )
    mfit = spec.fit(data)
    a = _line(mp.caterpillar(lme).axes[1], "conditional mode").get_xdata()
    b = _line(mp.caterpillar(mfit).axes[1], "conditional mode").get_xdata()
    c = _line(mp.caterpillar(lme.lmer).axes[1], "conditional mode").get_xdata()
    np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ModelError, match="fitted mixed model"):
        mp.caterpillar(data)


def test_png_renders_headless(mpl, fit):
    buf = io.BytesIO()
    mp.caterpillar(fit).savefig(buf, format="png", dpi=40)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- lmList


def test_lmlist_intervals_are_nlmes(mpl):
    r = reference("hsb_lmlist")
    lml = ml.lmList(r["formula"], reference_data(r))
    fig = mp.lmlist_intervals(lml)
    coef = pd.DataFrame(r["lmlist"]["coef"]).T
    se = pd.DataFrame(r["lmlist"]["se"]).T
    q = stats.t.ppf(0.975, r["lmlist"]["pooled_sd_df"])
    order = np.argsort(coef["(Intercept)"].to_numpy(), kind="stable")
    assert len(fig.axes) == 2
    for ax, name in zip(fig.axes, ["(Intercept)", "ses"], strict=True):
        assert ax.get_xlabel() == name
        seg = _segments(ax, "interval")
        assert seg.shape == (160, 2, 2)
        np.testing.assert_allclose(seg[:, 0, 0], (coef[name] - q * se[name]).iloc[order], 1e-9)
        np.testing.assert_allclose(seg[:, 1, 0], (coef[name] + q * se[name]).iloc[order], 1e-9)
        est = _line(ax, "estimate")
        np.testing.assert_allclose(est.get_xdata(), coef[name].iloc[order], rtol=1e-9)
        mean = _line(ax, "mean")
        assert mean.get_xdata()[0] == pytest.approx(coef[name].mean(), rel=1e-9)
    assert fig.axes[0].get_ylabel() == "school"


def test_lmlist_intervals_subset_sort_and_unestimable(mpl, data):
    cath = ml.lmList("mathach ~ ses | school", data, subset='sector == "Catholic"')
    fig = mp.lmlist_intervals(cath, sort_by=None, labels=True, level=0.9)
    ci = cath.confint(level=0.9)
    ax = fig.axes[1]
    assert _ticklabels(ax) == [str(g) for g in cath.coef.index]
    seg = _segments(ax, "interval")
    assert seg.shape[0] == cath.ngroups == 70
    np.testing.assert_allclose(seg[:, 0, 0], ci[("ses", "lower")], rtol=1e-12)
    # a school with one pupil has an intercept but no slope: no slope interval
    one = data[data.school.astype(str) != "1224"]
    one = pd.concat([one, data[data.school.astype(str) == "1224"].head(1)])
    lml = ml.lmList("mathach ~ ses | school", one)
    fig = mp.lmlist_intervals(lml)
    assert _segments(fig.axes[0], "interval").shape[0] == 160
    assert _segments(fig.axes[1], "interval").shape[0] == 159
    with pytest.raises(ModelError, match="not a coefficient"):
        mp.lmlist_intervals(lml, sort_by="cses")


# --------------------------------------------------------------------------- diagnostics


def test_ppoints_is_rs():
    np.testing.assert_allclose(
        mp.ppoints(5), [0.1190476190, 0.3095238095, 0.5, 0.6904761905, 0.8809523810], rtol=1e-9
    )
    np.testing.assert_allclose(mp.ppoints(20)[[0, -1]], [0.025, 0.975])


def test_residual_plots(mpl, fit, ref):
    r = fit.residuals(type="pearson", scaled=True).to_numpy()
    ax = mp.residuals_fitted(fit).axes[0]
    pts = _line(ax, "residuals")
    assert len(pts.get_xdata()) == fit.nobs == 7185
    np.testing.assert_array_equal(pts.get_xdata(), fit.fitted.to_numpy())
    np.testing.assert_array_equal(pts.get_ydata(), r)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("fitted values", "standardized residuals")

    ax = mp.qq_residuals(fit).axes[0]
    qq = _line(ax, "sample")
    np.testing.assert_array_equal(qq.get_ydata(), np.sort(r))
    np.testing.assert_allclose(qq.get_xdata(), stats.norm.ppf((np.arange(7185) + 0.5) / 7185))
    # R's summary quantiles are the ends and quartiles of the same residuals
    y = qq.get_ydata()
    np.testing.assert_allclose([y[0], y[-1]], np.array(ref["std_resid_quantiles"])[[0, 4]], 1e-3)

    fig = mp.qq_ranef(fit)
    assert len(fig.axes) == 2
    for ax, term in zip(fig.axes, ["(Intercept)", "cses"], strict=True):
        pts = _line(ax, "sample")
        assert len(pts.get_ydata()) == 160
        np.testing.assert_array_equal(pts.get_ydata(), np.sort(fit.ranef["school"][term]))
        assert term in ax.get_ylabel()


def test_residuals_by_group(mpl, fit, data):
    ax = mp.residuals_by_group(fit).axes[0]
    boxes = [ln for ln in ax.lines if ln.get_gid() == "box"]
    assert len(boxes) == 160
    meds = [ln.get_ydata()[0] for ln in ax.lines if ln.get_gid() == "median"]
    r = fit.residuals(type="pearson", scaled=True)
    expect = r.groupby(data.loc[r.index, "school"].astype(str).to_numpy()).median()
    np.testing.assert_allclose(meds, np.sort(expect.to_numpy()), rtol=1e-12)
    assert "school" in ax.get_xlabel()
    ax = mp.residuals_by_group(fit, sort=False, labels=True).axes[0]
    assert _ticklabels(ax, "x") == list(fit.ranef["school"].index)


def test_diagnostics_panels(mpl, fit):
    fig = mp.diagnostics(fit)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "Residuals vs fitted",
        "Normal Q-Q: residuals",
        "Normal Q-Q: (Intercept) | school",
        "Normal Q-Q: cses | school",
        "Residuals by school",
    ]


# --------------------------------------------------------------------------- trajectories


def test_trajectories_data_and_lines(mpl, fit, data):
    fig = mp.trajectories(fit, "cses", groups=["1224", "8367"])
    assert [ax.get_title() for ax in fig.axes] == ["school 1224", "school 8367"]
    fitted = fit.fitted.to_numpy()
    pop = fit.predict(re_form="~0").to_numpy()
    for ax, school in zip(fig.axes, ["1224", "8367"], strict=True):
        rows = np.flatnonzero(data.school.astype(str).to_numpy() == school)
        rows = rows[np.argsort(data.cses.to_numpy()[rows], kind="stable")]
        pts = _line(ax, "data")
        assert len(pts.get_xdata()) == len(rows)
        np.testing.assert_array_equal(pts.get_ydata(), data.mathach.to_numpy()[rows])
        np.testing.assert_allclose(_line(ax, "group fit").get_ydata(), fitted[rows])
        np.testing.assert_allclose(_line(ax, "population fit").get_ydata(), pop[rows])
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("cses", "mathach")
    # the group line is the population line shifted by the school's own effects
    b = fit.ranef["school"].loc["1224"]
    ax = fig.axes[0]
    x = _line(ax, "group fit").get_xdata()
    gap = _line(ax, "group fit").get_ydata() - _line(ax, "population fit").get_ydata()
    np.testing.assert_allclose(gap, b["(Intercept)"] + b["cses"] * x, atol=1e-10)


def test_trajectories_sample_and_errors(mpl, fit, data):
    fig = mp.trajectories(fit, "ses", data=data, n=6, seed=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == len(set(titles)) == 6
    assert fig.axes[0].get_xlabel() == "ses"
    with pytest.raises(DataError, match="no level"):
        mp.trajectories(fit, "cses", groups=["9999"])
    with pytest.raises(DataError, match="pass data="):
        mp.trajectories(fit, "ses")


# --------------------------------------------------------------------------- profiles


def test_profile_zeta_traces_and_intervals(mpl):
    d = ml.datasets.load("dyestuff")
    fit = ml.lmer("Yield ~ 1 + (1 | Batch)", d)
    prof = ml.profile(fit)
    fig = mp.profile_zeta(prof)
    assert [ax.get_xlabel() for ax in fig.axes] == list(prof.traces)
    assert len(fig.axes) == 3
    z = stats.norm.ppf(0.975)
    for ax, name in zip(fig.axes, prof.traces, strict=True):
        tr = prof.traces[name]
        ln = _line(ax, "zeta")
        np.testing.assert_array_equal(ln.get_xdata(), tr[name])
        np.testing.assert_array_equal(ln.get_ydata(), tr["zeta"])
        seg = _segments(ax, "interval")
        np.testing.assert_allclose(seg[:, 0, 0], prof.ci.loc[name], rtol=1e-12)
        # the trace crosses ±z at the interval's endpoints
        np.testing.assert_allclose(seg[:, 1, 1], [-z, z], atol=0.02)
    fig = mp.profile_zeta(fit, which="sigma", absolute=True)  # a fit is profiled first
    (ax,) = fig.axes
    assert ax.get_ylabel() == "|ζ|"
    assert np.all(_line(ax, "zeta").get_ydata() >= 0)
    with pytest.raises(ModelError, match="no profile"):
        mp.profile_zeta(prof, which="rho")


def test_profile_zeta_endpoint_at_a_bound(mpl):
    d = ml.datasets.load("dyestuff2")
    with pytest.warns(ml.SingularFitWarning):
        fit = ml.lmer("Yield ~ 1 + (1 | Batch)", d)
    prof = ml.profile(fit, which="sd_(Intercept)|Batch")
    seg = _segments(mp.profile_zeta(prof).axes[0], "interval")
    assert seg[0, 0, 0] == 0.0  # the SD's lower endpoint is its bound
    assert abs(seg[0, 1, 1]) < stats.norm.ppf(0.975)  # ζ never reaches the cut-off


# --------------------------------------------------------------------------- effects


def test_effect_plot_lmm_band_from_vcov(mpl, fit, data):
    fig = mp.effect_plot(fit, "cses", data, by="sector", n=11)
    ax = fig.axes[0]
    beta, V = fit.fixef, fit.vcov.to_numpy()
    m = data["meanses"].mean()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("cses", "mathach")
    assert "meanses" in ax.get_title()
    for k, sector in enumerate(["Public", "Catholic"]):
        ln = _line(ax, f"sector = {sector}")
        x = ln.get_xdata()
        np.testing.assert_allclose(x, np.linspace(data.cses.min(), data.cses.max(), 11))
        c = float(sector == "Catholic")
        X = np.column_stack([np.ones(11), np.full(11, m), x, np.full(11, c), m * x, c * x])
        eta = X @ beta.to_numpy()
        np.testing.assert_allclose(ln.get_ydata(), eta, rtol=1e-10)
        se = np.sqrt(np.einsum("ij,jk,ik->i", X, V, X))
        band = [c for c in ax.collections if c.get_label() == f"sector = {sector} band"]
        verts = band[0].get_paths()[0].vertices
        for xi, lo, hi in zip(x, eta - Z95 * se, eta + Z95 * se, strict=True):
            ys = verts[np.isclose(verts[:, 0], xi), 1]
            assert ys.min() == pytest.approx(lo, rel=1e-9)
            assert ys.max() == pytest.approx(hi, rel=1e-9)
        assert ln.get_color() != ax.lines[0].get_color() or k == 0


def test_effect_grid_held_values_and_errors(fit, data):
    grid = mp.effect_grid(fit, "cses", data, at={"meanses": 0.5, "sector": "Catholic"}, n=5)
    assert grid.attrs["held"] == {"meanses": 0.5, "sector": "Catholic"}
    np.testing.assert_allclose(grid["eta"], fit.predict(grid, re_form="~0"), rtol=1e-12)
    np.testing.assert_allclose(grid["fit"], grid["eta"])
    with pytest.raises(DataError, match="numeric"):
        mp.effect_grid(fit, "sector", data)
    with pytest.raises(ModelError, match="not a variable"):
        mp.effect_grid(fit, "ses", data)
    with pytest.raises(DataError, match="not in the data"):
        mp.effect_grid(fit, "size", data)


def test_effect_plot_glmm_on_probability_scale(mpl, data):
    d = data.assign(passed=(data.mathach >= 12).astype(int))
    g = ml.glmer("passed ~ meanses + cses + sector + (1 | school)", d, family="binomial")
    fig = mp.effect_plot(g, "meanses", d, n=7)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "P(passed)"
    ln = _line(ax, "prediction")
    x = ln.get_xdata()
    X = np.column_stack([np.ones(7), x, np.full(7, d.cses.mean()), np.zeros(7)])
    eta = X @ g.fixef.to_numpy()
    np.testing.assert_allclose(ln.get_ydata(), expit(eta), rtol=1e-10)
    se = np.sqrt(np.einsum("ij,jk,ik->i", X, g.vcov.to_numpy(), X))
    verts = [c for c in ax.collections if c.get_label() == "prediction band"][0]
    verts = verts.get_paths()[0].vertices
    ys = verts[np.isclose(verts[:, 0], x[3]), 1]
    assert ys.min() == pytest.approx(expit(eta[3] - Z95 * se[3]), rel=1e-9)
    assert ys.max() == pytest.approx(expit(eta[3] + Z95 * se[3]), rel=1e-9)
    link = mp.effect_grid(g, "meanses", d, n=7, scale="link")
    np.testing.assert_allclose(link["fit"], eta, rtol=1e-10)
    # the caterpillar of a GLMM uses its conditional SDs too
    seg = _segments(mp.caterpillar(g).axes[0], "interval")
    sd = g.ranef_condsd["school"]["(Intercept)"].to_numpy()
    np.testing.assert_allclose(np.sort(seg[:, 1, 0] - seg[:, 0, 0]), np.sort(2 * Z95 * sd))
    assert _line(mp.residuals_fitted(g).axes[0], "residuals").get_ydata().size == 7185
