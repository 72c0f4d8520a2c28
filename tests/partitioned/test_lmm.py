"""Fitting from chunks (issue 8): a pandas frame in slices, a Dask DataFrame,
a Parquet path and a local dask.distributed cluster of worker processes all
give the in-memory fit up to summation-order rounding: the criterion to
1e-12, estimates to 1e-8 relative, variance components to 1e-7 (both
accumulate centred and scaled columns, in bases taken from different rows; on
HSB's flat likelihood in the slope's SD that rounding moves the optimiser's
stopping point by ~2e-8)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import multilevel as ml
from multilevel.partitioned.lmm import PartitionedLmerFit, lmer_partitioned

CASES = [
    ("hsb", "mathach ~ meanses*cses + sector*cses + (cses | school)", 700),
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", 37),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", 25),
    ("pastes", "strength ~ 1 + (1 | batch/cask)", 17),
]


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def assert_same_fit(a, b, rtol=1e-8):
    assert b.loglik == pytest.approx(a.loglik, rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(b.fixef, a.fixef, rtol=rtol)
    np.testing.assert_allclose(b.se, a.se, rtol=rtol)
    np.testing.assert_allclose(b.varcorr["sdcor"], a.varcorr["sdcor"], rtol=10 * rtol)
    assert b.nobs == a.nobs
    for g in a.ranef:
        np.testing.assert_allclose(b.ranef[g], a.ranef[g], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shift", [1.7e9, -3e10])
def test_timestamps_in_chunks_keep_their_digits(shift):
    # raw sums of t² for t ~ 1e9-1e10 cancel ~11-13 of 16 digits; the chunks
    # accumulate centred columns, so the slope is the in-memory one
    s = ml.datasets.load("sleepstudy")
    data = s.assign(t=shift + s.Days * 3600.0, Reaction=s.Reaction + 1e6)
    formula = "Reaction ~ t + (t | Subject)"
    a = quiet(ml.lmer, formula, data)
    b = quiet(lmer_partitioned, formula, data.sample(frac=1.0, random_state=3), chunk_rows=41)
    np.testing.assert_allclose(b.fixef, a.fixef, rtol=1e-9)
    np.testing.assert_allclose(b.se, a.se, rtol=1e-7)
    np.testing.assert_allclose(b.varcorr["sdcor"], a.varcorr["sdcor"], rtol=1e-6)
    assert b.loglik == pytest.approx(a.loglik, rel=1e-11)
    assert b.converged


def test_first_chunk_ones_is_not_taken_for_an_intercept():
    # x is 1 on the rows the shared basis is taken from (the first 1,000) and
    # not after: the basis must not centre on it as if it were an intercept
    h = ml.datasets.load("hsb")
    data = h.assign(x=np.where(np.arange(len(h)) < 1500, 1.0, h.ses + 3.0))
    formula = "mathach ~ 0 + x + ses + (1 | school)"
    a = quiet(ml.lmer, formula, data)
    b = quiet(lmer_partitioned, formula, data, chunk_rows=1500)
    assert_same_fit(a, b)


@pytest.mark.parametrize("name, formula, rows", CASES)
def test_pandas_in_chunks_equals_in_memory(name, formula, rows):
    data = ml.datasets.load(name)
    a = quiet(ml.lmer, formula, data)
    b = quiet(lmer_partitioned, formula, data, chunk_rows=rows)
    assert isinstance(b, PartitionedLmerFit)
    assert_same_fit(a, b)
    np.testing.assert_allclose(b.fitted, a.fitted, rtol=1e-8)
    np.testing.assert_allclose(b.residual_quantiles(), a.residual_quantiles(), rtol=1e-7)


def test_dask_dataframe_and_parquet_equal_in_memory(tmp_path):
    dd = pytest.importorskip("dask.dataframe")
    pytest.importorskip("pyarrow")
    name, formula, _ = CASES[0]
    data = ml.datasets.load(name)
    a = quiet(ml.lmer, formula, data)
    ddf = dd.from_pandas(data, npartitions=5)
    b = quiet(ml.lmer, formula, ddf)
    assert_same_fit(a, b)
    fitted = b.fitted
    assert type(fitted).__module__.startswith(("dask", "dask_expr"))  # lazy
    np.testing.assert_allclose(fitted.compute().to_numpy(), a.fitted.to_numpy(), rtol=1e-8)
    path = tmp_path / "hsb.parquet"
    ddf.to_parquet(str(path))
    c = quiet(ml.lmer, formula, str(path))
    assert_same_fit(a, c)


def test_local_distributed_cluster_of_processes():
    pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("distributed")
    import dask.dataframe as dd

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        for name, formula, _ in CASES[:3]:
            data = ml.datasets.load(name)
            a = quiet(ml.lmer, formula, data)
            b = quiet(ml.lmer, formula, dd.from_pandas(data, npartitions=4))
            assert_same_fit(a, b)


def test_refusals():
    data = ml.datasets.load("sleepstudy")
    with pytest.raises(ml.ModelError, match="whole column"):
        lmer_partitioned("Reaction ~ scale(Days) + (1 | Subject)", data, chunk_rows=50)
    with pytest.raises(ml.DataError, match="column name"):
        lmer_partitioned("Reaction ~ Days + (1 | Subject)", data, weights=np.ones(180))
    with pytest.raises(ml.DataError, match="did you mean"):
        lmer_partitioned("Reaction ~ Dayz + (1 | Subject)", data, chunk_rows=50)


def test_levels_missing_from_some_chunks():
    """A chunk that lacks a level, or a category, still codes it globally."""
    data = ml.datasets.load("hsb").sort_values("sector", kind="stable")  # chunks of one sector
    formula = CASES[0][1]
    a = quiet(ml.lmer, formula, data)
    b = quiet(lmer_partitioned, formula, data, chunk_rows=1000)
    assert_same_fit(a, b)


def test_in_memory_only_functions_say_so_for_dask_data():
    dd = pytest.importorskip("dask.dataframe")
    data = dd.from_pandas(ml.datasets.load("sleepstudy"), npartitions=2)
    with pytest.raises(ml.DataError, match="needs the data in memory"):
        ml.lme("Reaction ~ Days", "~ Days | Subject", data)
