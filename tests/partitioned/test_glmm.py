"""GLMMs with one grouping factor on Dask data (issue 8, item 2).

The Dask fit (shuffle on the grouping column, partition-local PIRLS and
quadrature, optimisation on the client) must give the in-memory glmer fit:

* loglik within 1e-8 absolute (measured ≤ 3e-11), fixed effects within 1e-6
  relative (measured ≤ 3e-8), θ and the variance components within 1e-6,
  conditional modes and SDs within 1e-6 absolute (measured ≤ 4e-9);
* standard errors within 1e-4 relative (measured ≤ 2e-5 for Laplace, 4e-7 for
  AGQ): they come from a central-difference Hessian (h = 1e-3) of the
  deviance, which turns PIRLS's stopping tolerance (1e-10 on the modes; PIRLS
  stops per partition instead of over all levels at once) into ~1e-5 relative
  — as much as the in-memory SEs themselves move when that tolerance is
  tightened to 1e-14 (1.7e-5 on contraception).

Against R (the reference JSON), as tests/test_glmm.py: the full log-likelihood
within 1e-3 of lme4's/glmmTMB's (never below it by more than 1e-6).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from multilevel import DataError, ModelError, glmer

from ..conftest import reference, reference_data

dd = pytest.importorskip("dask.dataframe")
dask = pytest.importorskip("dask")

from multilevel.glmm import fit as glmm_module  # noqa: E402
from multilevel.partitioned.glmm import PartitionedGlmerFit  # noqa: E402

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
_memory: dict = {}


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@pytest.fixture(autouse=True)
def two_stage_in_memory(monkeypatch):
    """In-memory fits by the algorithm the partitioned one distributes (the
    two-stage search; glmer's exact-gradient search, which reaches the
    same optimum by another route, is off)."""
    monkeypatch.setattr(glmm_module, "EXACT_GRADIENT", False)


def in_memory(case: str):
    if case not in _memory:
        ref = reference(case)
        data = reference_data(ref)
        fit = glmer(ref["formula"], data, ref["family"], nAGQ=ref["nAGQ"])
        _memory[case] = (fit, ref, data)
    return _memory[case]


def scattered(data: pd.DataFrame, npartitions: int = 4):
    """Rows in random order: every group spread over several partitions."""
    return dd.from_pandas(data.sample(frac=1.0, random_state=1), npartitions=npartitions)


def assert_same_fit(a, b, se_rtol: float = 1e-4, theta_rtol: float = 1e-6) -> None:
    assert isinstance(b, PartitionedGlmerFit)
    assert b.converged
    assert b.nobs == a.nobs and b.ngroups == a.ngroups and b.df_resid == a.df_resid
    assert b.loglik == pytest.approx(a.loglik, abs=1e-8)
    assert list(b.fixef.index) == list(a.fixef.index)
    np.testing.assert_allclose(b.fixef, a.fixef, rtol=1e-6)
    np.testing.assert_allclose(b.se, a.se, rtol=se_rtol)
    np.testing.assert_allclose(b.theta, a.theta, rtol=theta_rtol, atol=1e-8)
    np.testing.assert_allclose(b.varcorr["sdcor"], a.varcorr["sdcor"], rtol=theta_rtol)
    assert b.saturated_loglik == pytest.approx(a.saturated_loglik, abs=1e-9)
    for g in a.ranef:
        assert list(b.ranef[g].index) == list(a.ranef[g].index)
        np.testing.assert_allclose(b.ranef[g], a.ranef[g], atol=1e-6)
        np.testing.assert_allclose(b.ranef_condsd[g], a.ranef_condsd[g], atol=1e-6)


def assert_close_to_r(fit, ref) -> None:
    full = ref.get("loglik_full_density", ref["loglik"])
    assert fit.loglik >= full - 1e-6
    assert fit.loglik - full < 1e-3


# -- threads ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["cbpp_laplace", "cbpp_agq25", "contra_laplace", "contra_agq"])
def test_threads_scheduler_equals_in_memory(case):
    a, ref, data = in_memory(case)
    with dask.config.set(scheduler="threads"):
        b = glmer(ref["formula"], scattered(data), ref["family"], nAGQ=ref["nAGQ"])
    assert b.dask_info["npartitions"] > 1
    assert_same_fit(a, b, se_rtol=1e-4 if ref["nAGQ"] == 1 else 1e-6)
    assert_close_to_r(b, ref)
    assert b.method == a.method and b.nAGQ == a.nAGQ


def test_timestamp_covariate_and_slope_as_in_memory():
    # a covariate at ~1.7e9 with a random slope: the partitions fit in the
    # centred and scaled basis of the first rows, the in-memory fit in its own
    a, ref, data = in_memory("contra_laplace")
    data = data.assign(t=1.7e9 + data["age"] * 86400.0)
    formula = "use ~ t + urban + (1 + t | district)"
    a = quiet(glmer, formula, data, "binomial")
    with dask.config.set(scheduler="threads"):
        b = quiet(glmer, formula, scattered(data, 3), "binomial")
    assert a.converged and b.converged
    # the SD of the intercept and each district's intercept are values at
    # t = 0, 1.7e9 from the data: extrapolations that turn the optimiser's
    # last digits into ~1e-3 relative.  What the data determine agrees as
    # usual: the likelihood, β, and every row's linear predictor
    assert b.loglik == pytest.approx(a.loglik, abs=1e-8)
    np.testing.assert_allclose(b.fixef, a.fixef, rtol=1e-6)
    np.testing.assert_allclose(b.se, a.se, rtol=1e-4)
    with dask.config.set(scheduler="threads"):
        eta = b.linear_predictor.compute().sort_index()
    np.testing.assert_allclose(eta, a.linear_predictor, atol=1e-6)

    def slope_sd(fit):
        vc = fit.varcorr
        row = (vc["grp"] == "district") & (vc["var1"] == "t") & vc["var2"].isna()
        return float(vc.loc[row, "sdcor"].item())

    assert slope_sd(b) == pytest.approx(slope_sd(a), rel=1e-5)


def test_row_level_results_are_lazy_and_equal_in_memory():
    a, ref, data = in_memory("contra_laplace")
    with dask.config.set(scheduler="threads"):
        b = glmer(ref["formula"], scattered(data, 3), ref["family"])
        fitted = b.fitted
        assert type(fitted).__module__.startswith(("dask", "dask_expr"))
        np.testing.assert_allclose(fitted.compute().sort_index(), a.fitted, atol=1e-8)
        np.testing.assert_allclose(b.y.compute().sort_index(), a.y, atol=0)
        for kind in ("deviance", "pearson", "response", "working"):
            r = b.residuals(kind).compute().sort_index()
            np.testing.assert_allclose(r, a.residuals(kind), atol=1e-7)
        for re_form in (None, "~0"):
            p = b.predict(re_form=re_form, type="response").compute().sort_index()
            np.testing.assert_allclose(p, a.predict(re_form=re_form, type="response"), atol=1e-8)
        np.testing.assert_allclose(b.predict(data), a.predict(data), atol=1e-8)
        lazy = b.predict(dd.from_pandas(data, npartitions=2)).compute()
        np.testing.assert_allclose(lazy, a.predict(data), atol=1e-8)
        quartiles = np.quantile(a.residuals("pearson"), [0, 0.25, 0.5, 0.75, 1])
        np.testing.assert_allclose(b.residual_quantiles(), quartiles, atol=1e-8)
        text, ours = str(a.summary()), str(b.summary())
    # identical up to the standard errors' 7th digit (see the module docstring)
    head = text.split("Fixed effects:")[0]
    assert ours.startswith(head)
    assert "Scaled residuals" in head and "district, 60" in head
    with pytest.raises(ValueError, match="type must be"):
        b.residuals("raw")


def test_first_stage_only_and_response_forms():
    a, ref, data = in_memory("cbpp_laplace")
    ddf = scattered(data, 3)
    with dask.config.set(scheduler="threads"):
        zero = glmer(CBPP, data, nAGQ=0)
        b = glmer(CBPP, ddf, nAGQ=0)
        assert b.vcov_note == "conditional" and "nAGQ = 0" in str(b.summary())
        assert b.loglik == pytest.approx(zero.loglik, abs=1e-8)
        np.testing.assert_allclose(b.fixef, zero.fixef, rtol=1e-6)
        np.testing.assert_allclose(b.se, zero.se, rtol=1e-6)
        prop = ddf.assign(prop=ddf.incidence / ddf["size"])
        c = glmer("prop ~ period + (1 | herd)", prop, weights="size")
    assert_same_fit(a, c)


def test_levels_only_in_incomplete_rows_are_dropped_as_in_memory():
    """A herd whose only row has a missing response is not a level of the fit."""
    a, ref, data = in_memory("cbpp_laplace")
    extra = data.iloc[:1].copy()
    extra["herd"] = "99"
    extra["incidence"] = np.nan
    more = pd.concat([data, extra], ignore_index=True)
    more["herd"] = pd.Categorical(
        more["herd"].astype(str), categories=[*data["herd"].cat.categories, "99"]
    )
    a2 = glmer(CBPP, more)
    with dask.config.set(scheduler="threads"):
        b = glmer(CBPP, scattered(more, 3))
    assert b.design.n_dropped == 1
    assert_same_fit(a2, b)
    assert "99" not in b.ranef["herd"].index


def test_parquet_path(tmp_path):
    pytest.importorskip("pyarrow")
    a, ref, data = in_memory("cbpp_laplace")
    path = tmp_path / "cbpp.parquet"
    scattered(data, 3).to_parquet(str(path))
    with dask.config.set(scheduler="threads"):
        b = glmer(CBPP, str(path))
    assert_same_fit(a, b)


# -- a local cluster of worker processes ------------------------------------------------


def test_local_distributed_cluster_of_processes():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        for case in ("cbpp_laplace", "cbpp_agq25", "contra_laplace"):
            a, ref, data = in_memory(case)
            b = glmer(ref["formula"], scattered(data), ref["family"], nAGQ=ref["nAGQ"])
            assert_same_fit(a, b, se_rtol=1e-4 if ref["nAGQ"] == 1 else 1e-6)
        fitted = b.fitted.compute().sort_index()
        np.testing.assert_allclose(fitted, a.fitted, atol=1e-8)


# -- what is refused ---------------------------------------------------------------------


def test_refusals_before_fitting():
    _, _, cbpp = in_memory("cbpp_laplace")
    _, _, contra = in_memory("contra_laplace")
    ddf = dd.from_pandas(cbpp, npartitions=2)
    dcontra = dd.from_pandas(contra, npartitions=2)
    with pytest.raises(ModelError, match="one grouping factor.*herd, period"):
        glmer(CBPP.replace("(1 | herd)", "(1 | herd) + (1 | period)"), ddf)
    with pytest.raises(ModelError, match="one grouping factor"):
        glmer("use ~ age + (1 | district/urban)", dcontra)
    with pytest.raises(ModelError, match="method='mc' is not available"):
        glmer(CBPP, ddf, method="mc")
    with pytest.raises(ModelError, match="single random-effects term"):
        glmer("use ~ age + (1 | district) + (0 + age | district)", dcontra, nAGQ=5)
    with pytest.raises(ModelError, match="no random-effects"):
        glmer("cbind(incidence, size - incidence) ~ period", ddf)
    with pytest.raises(DataError, match="column name"):
        glmer(CBPP, ddf, weights=np.ones(len(cbpp)))
    with pytest.raises(DataError, match="not in the data"):
        glmer(CBPP, ddf, offset="nope")
    with pytest.raises(ModelError, match="namespace"):
        glmer(CBPP, ddf, namespace={"f": abs})
    with pytest.raises(ModelError, match="scale"):
        glmer("use ~ scale(age) + (1 | district)", dcontra)
    with pytest.raises(DataError, match="non-integer"):
        glmer("cbind(s, f) ~ 1 + (1 | district)", dcontra.assign(s=0.5, f=2.0))


def test_interaction_grouping_factor_and_in_memory_only_methods():
    """(1 | district:urban) is one grouping factor of two columns: the shuffle is
    on both.  What needs the rows in one process says so."""
    from multilevel.glmm.results import loglik_mc

    _, _, contra = in_memory("contra_laplace")
    f = "use ~ age + urban + (1 | district:urban)"
    a = glmer(f, contra)
    with dask.config.set(scheduler="threads"):
        b = glmer(f, scattered(contra, 3))
    assert_same_fit(a, b)
    with dask.config.set(scheduler="threads"):
        eta = b.predict().compute().sort_index()
    np.testing.assert_allclose(eta, a.linear_predictor, atol=1e-8)
    with pytest.raises(ModelError, match="in one process"):
        loglik_mc(b)


# -- families with a parameter of their own ---------------------------------------------


@pytest.mark.parametrize(
    ("case", "family"),
    [
        ("gamma_sleep", "Gamma(log)"),
        ("nb_salamanders", "negative_binomial"),
        ("beta_youngdrivers", "beta"),
    ],
)
def test_families_with_a_parameter_as_in_memory_and_as_glmmtmb(case, family):
    from ..glmm.test_family_references import _load

    ref, data = _load(case)
    a = quiet(glmer, ref["formula"], data, family)
    with dask.config.set(scheduler="threads"):
        b = glmer(ref["formula"], scattered(data, 3), family)
    assert isinstance(b, PartitionedGlmerFit) and b.converged
    # the partitioned search keeps fixed difference steps (its Hessian stencil is
    # evaluated in one pass): on a steep coordinate (beta_youngdrivers' precision
    # 1171) it stops 1.5e-7 short of the in-memory optimum
    assert b.loglik == pytest.approx(a.loglik, abs=1e-6)
    np.testing.assert_allclose(b.fixef, a.fixef, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(b.se, a.se, rtol=2e-3)
    assert b.family.value == pytest.approx(a.family.value, rel=1e-5)
    assert b.sigma == pytest.approx(ref["sigma"], rel=1e-4)
    assert b.loglik >= ref["loglik"] - 1e-6
    assert "Dispersion" in str(b.summary())
