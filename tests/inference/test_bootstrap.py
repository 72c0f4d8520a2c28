"""simulate() and the parametric bootstrap: reproducibility, and the moments
of the simulated responses against the model's (Monte Carlo tolerances are
several standard errors wide, fixed seeds keep the tests deterministic)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from multilevel import ModelError, lmer
from multilevel.inference.bootstrap import (
    BootResult,
    _maritz_jarrett,
    bootstrap,
    default_statistic,
    simulate,
)

from ..conftest import reference, reference_data


@pytest.fixture(scope="module")
def sleep():
    ref = reference("sleep_reml")
    return lmer(ref["formula"], reference_data(ref))


def test_simulate_reproducible(sleep):
    a = simulate(sleep, 3, seed=7)
    b = simulate(sleep, 3, seed=7)
    c = simulate(sleep, 3, seed=8)
    assert list(a.columns) == ["sim_1", "sim_2", "sim_3"]
    assert a.index.equals(sleep.design.row_index)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.to_numpy(), c.to_numpy())
    # replicate i does not depend on how many are drawn
    assert np.array_equal(simulate(sleep, 1, seed=7)["sim_1"], a["sim_1"])


def test_simulate_moments(sleep):
    nsim = 4000
    Y = simulate(sleep, nsim, seed=1).to_numpy()  # (n, nsim)
    d = sleep.design
    mu = d.X @ sleep.fixef.to_numpy()
    r = d.random[0]
    T = sleep.criterion.factor(np.asarray(sleep.optinfo.theta)).T[0]
    s2 = sleep.sigma**2
    # Var(yᵢ) = σ²(zᵢᵀTTᵀzᵢ + 1); Cov(yᵢ, yⱼ) = σ² zᵢᵀTTᵀzⱼ within a subject
    G = s2 * T @ T.T
    var = np.einsum("nq,qr,nr->n", r.Z, G, r.Z) + s2
    se_mean = np.sqrt(var / nsim)
    assert np.max(np.abs(Y.mean(axis=1) - mu) / se_mean) < 4.5
    ratio = Y.var(axis=1, ddof=1) / var
    assert abs(ratio.mean() - 1) < 0.02  # mean of 180 ratios, each with SE ~ 0.022
    same = np.flatnonzero(r.codes == r.codes[0])
    i, j = same[0], same[-1]
    cov = np.cov(Y[i], Y[j])[0, 1]
    expect = r.Z[i] @ G @ r.Z[j]
    assert cov == pytest.approx(expect, rel=0.1)


def test_bootstrap_reproducible_and_sensible(sleep):
    b = bootstrap(sleep, 150, seed=3, progress=False)
    again = bootstrap(sleep, 150, seed=3, progress=False)
    pd.testing.assert_frame_equal(b.samples, again.samples)
    assert b.samples.shape == (150, 6)
    assert list(b.t0.index) == list(default_statistic(sleep).index)
    assert b.converged.all()
    # bootstrap SDs of β̂ estimate the standard errors (SE of an SD from 150
    # replicates is about 6%)
    sd = b.samples[list(sleep.fixef.index)].std()
    assert np.allclose(sd / sleep.se, 1, atol=0.2)
    ci = b.confint()
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    assert (ci.iloc[:, 0] < ci.iloc[:, 1]).all()
    assert (ci.loc["sigma"].to_numpy() < 35).all() and (ci.loc["sigma"].to_numpy() > 18).all()
    for kind in ("basic", "norm"):
        other = b.confint(level=0.9, type=kind)
        assert list(other.columns) == ["5 %", "95 %"]
    with pytest.raises(ValueError):
        b.confint(type="bca")


def test_bootstrap_workers_same_result(sleep):
    one = bootstrap(sleep, 12, seed=11, progress=False)
    two = bootstrap(sleep, 12, seed=11, progress=False, workers=2)
    pd.testing.assert_frame_equal(one.samples, two.samples)


def test_bootstrap_custom_statistic_and_progress(sleep, capsys):
    b = bootstrap(sleep, 5, seed=1, statistic=lambda f: [f.sigma, f.loglik], progress=True)
    assert list(b.samples.columns) == ["t1", "t2"]
    assert b.t0.iloc[0] == pytest.approx(sleep.sigma)
    err = capsys.readouterr().err
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert "5/5" in err


def test_errors(sleep):
    with pytest.raises(ModelError):
        simulate(sleep, 0)
    with pytest.raises(ModelError):
        bootstrap(sleep, 0)


def test_simulate_with_weights():
    ref = reference("sleep_reml")
    data = reference_data(ref)
    w = 1.0 + (data["Days"].to_numpy() % 3)
    fit = lmer(ref["formula"], data, weights=w)
    Y = simulate(fit, 3000, seed=2).to_numpy()
    r = fit.design.random[0]
    T = fit.criterion.factor(np.asarray(fit.optinfo.theta)).T[0]
    s2 = fit.sigma**2
    var = np.einsum("nq,qr,nr->n", r.Z, s2 * T @ T.T, r.Z) + s2 / w
    for k in (1.0, 2.0, 3.0):  # average over the rows of each weight
        rows = w == k
        assert (Y[rows].var(axis=1, ddof=1) / var[rows]).mean() == pytest.approx(1, abs=0.03)


def test_bootstrap_singular_refits():
    ref = reference("dyestuff2_reml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = lmer(ref["formula"], reference_data(ref))
    b = bootstrap(fit, 40, seed=5, progress=False)
    # θ̂ = 0: every simulated batch effect is 0, many refits are singular
    assert b.singular.sum() > 5
    assert (b.samples["sd_(Intercept)|Batch"] >= 0).all()


def test_confint_mcse_maritz_jarrett():
    # normal replicates: the SE of the 2.5% and 97.5% sample quantiles is
    # √(p(1−p)/n)/φ(z_p) = 0.0845 for n = 1000 (asymptotically; the exact SD of
    # the order statistic is within 3% of that)
    rng = np.random.default_rng(4)
    n = 1000
    asym = np.sqrt(0.025 * 0.975 / n) / stats.norm.pdf(stats.norm.ppf(0.025))
    x = rng.standard_normal((n, 2)) * [1.0, 3.0] + [0.0, 10.0]
    b = BootResult(
        pd.Series([0.0, 10.0], index=["a", "b"]), pd.DataFrame(x, columns=["a", "b"]), *_flags(n)
    )
    se = b.confint_mcse()
    assert list(se.columns) == list(b.confint().columns) == ["2.5 %", "97.5 %"]
    assert list(se.index) == ["a", "b"]
    assert np.all((se.loc["a"] > 0.5 * asym) & (se.loc["a"] < 2 * asym))
    assert b.confint_mcse(level=0.9).columns.tolist() == ["5 %", "95 %"]
    # averaged over 300 independent sets of replicates (the estimate of one set
    # varies by ~25%): within 8% of the true SE
    est = [_maritz_jarrett(np.sort(rng.standard_normal(n)), p) for p in (0.025, 0.975) * 150]
    assert np.mean(est) == pytest.approx(asym, rel=0.08)
    # location-scale equivariant
    xs = np.sort(x[:, 0])
    assert _maritz_jarrett(3 * xs + 10, 0.975) == pytest.approx(3 * _maritz_jarrett(xs, 0.975))
    # a point mass at the endpoint (a correlation at +1) has no Monte Carlo error
    x = np.r_[np.linspace(-0.5, 0.9, 900), np.ones(100)]
    b = BootResult(pd.Series([0.3], index=["cor"]), pd.DataFrame({"cor": x}), *_flags(1000))
    se = b.confint_mcse()
    assert b.confint().loc["cor", "97.5 %"] == 1.0
    assert se.loc["cor", "97.5 %"] == pytest.approx(0.0, abs=1e-9)
    assert se.loc["cor", "2.5 %"] > 0


def _flags(n: int) -> tuple[np.ndarray, np.ndarray, None]:
    return np.zeros(n, bool), np.ones(n, bool), None
