"""Families and links (multilevel.glmm.families): the link algebra, full
log-densities against scipy.stats, deviance residuals, and the interpretation
(and refusal) of binomial and Poisson responses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from multilevel import DataError, ModelError
from multilevel.formula.design import Categorical, Numeric
from multilevel.glmm.families import Binomial, Poisson, binomial, get_family, poisson

LINKS = ["logit", "probit", "cloglog"]
rng = np.random.default_rng(7)


@pytest.mark.parametrize("link", LINKS)
def test_binomial_link_inverse_and_derivative(link):
    fam = binomial(link)
    mu = np.linspace(0.01, 0.99, 41)
    eta = fam.linkfun(mu)
    np.testing.assert_allclose(fam.linkinv(eta), mu, rtol=1e-12)
    h = 1e-6
    numeric = (fam.linkinv(eta + h) - fam.linkinv(eta - h)) / (2 * h)
    np.testing.assert_allclose(fam.mu_eta(eta), numeric, rtol=1e-7)


@pytest.mark.parametrize("link", LINKS)
def test_log_mu_stable_at_extreme_eta(link):
    fam = binomial(link)
    eta = np.array([-800.0, -40.0, -3.0, 0.0, 3.0, 40.0, 800.0])
    lm, l1m = fam.link.log_mu(eta), fam.link.log1m_mu(eta)
    assert not np.isnan(lm).any() and not np.isnan(l1m).any()
    mid = slice(2, 4)  # where log(μ) and log1p(−μ) are themselves accurate
    np.testing.assert_allclose(lm[mid], np.log(fam.linkinv(eta[mid])), rtol=1e-12)
    np.testing.assert_allclose(l1m[mid], np.log1p(-fam.linkinv(eta[mid])), rtol=1e-12)
    # y = 1 at a hugely negative η is improbable, not an error; y = 0 there is certain
    ll = fam.loglik_kernel(np.array([1.0, 0.0]), np.array([-800.0, -800.0]), np.ones(2))
    assert ll[0] < -100 and ll[1] == pytest.approx(0.0, abs=1e-12)


def test_poisson_log_link():
    fam = poisson()
    eta = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(fam.linkfun(fam.linkinv(eta)), eta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fam.mu_eta(eta), np.exp(eta))
    np.testing.assert_allclose(fam.variance(np.exp(eta)), np.exp(eta))


@pytest.mark.parametrize("link", LINKS)
def test_binomial_loglik_is_full_density(link):
    fam = binomial(link)
    n = rng.integers(1, 30, 50).astype(float)
    k = rng.binomial(n.astype(int), 0.3).astype(float)
    resp = fam.response(Numeric(np.column_stack([k, n - k]), ["1", "2"]), None, "y")
    mu = rng.uniform(0.05, 0.95, 50)
    expected = stats.binom.logpmf(k, n, mu).sum()
    assert fam.loglik(resp.y, mu, resp.weights, resp.const) == pytest.approx(expected, rel=1e-12)
    # −2 loglik = Σ deviance residuals − 2 × saturated log-likelihood
    dev = fam.dev_resids(resp.y, mu, resp.weights).sum()
    assert fam.aic(resp.y, mu, resp.weights, resp.const) == pytest.approx(
        dev - 2 * fam.saturated_loglik(resp), rel=1e-12
    )


def test_poisson_loglik_is_full_density():
    fam = poisson()
    y = rng.poisson(3.0, 60).astype(float)
    resp = fam.response(Numeric(y[:, None], [""]), None, "y")
    mu = rng.uniform(0.5, 6, 60)
    expected = stats.poisson.logpmf(y, mu).sum()
    assert fam.loglik(resp.y, mu, resp.weights, resp.const) == pytest.approx(expected, rel=1e-12)
    dev = fam.dev_resids(resp.y, mu, resp.weights).sum()
    assert -2 * fam.loglik(resp.y, mu, resp.weights, resp.const) == pytest.approx(
        dev - 2 * fam.saturated_loglik(resp), rel=1e-12
    )


def test_prior_weights_scale_the_log_density():
    fam = poisson()
    y = np.array([0.0, 2.0, 5.0])
    w = np.array([1.0, 2.0, 0.5])
    resp = fam.response(Numeric(y[:, None], [""]), w, "y")
    mu = np.array([1.0, 2.5, 4.0])
    expected = (w * stats.poisson.logpmf(y, mu)).sum()
    assert fam.loglik(resp.y, mu, resp.weights, resp.const) == pytest.approx(expected)


def test_logit_working_weights():
    fam = binomial()
    eta = np.linspace(-4, 4, 9)
    wt = np.full(9, 3.0)
    mu = fam.linkinv(eta)
    np.testing.assert_allclose(fam.working_weights(eta, wt), wt * mu * (1 - mu), rtol=1e-12)


# -- responses --------------------------------------------------------------------------


def _cat(values, labels) -> Categorical:
    index = pd.Index(labels)
    return Categorical(index.get_indexer(values).astype(np.int64), index, [str(x) for x in labels])


def test_binary_forms_agree():
    fam = binomial()
    y01 = np.array([0.0, 1.0, 1.0, 0.0])
    a = fam.response(Numeric(y01[:, None], [""]), None, "y")
    b = fam.response(_cat(["N", "Y", "Y", "N"], ["N", "Y"]), None, "y")
    c = fam.response(_cat([False, True, True, False], [False, True]), None, "y")
    d = fam.response(Numeric(np.column_stack([y01, 1 - y01]), ["1", "2"]), None, "y")
    for r in (b, c, d):
        np.testing.assert_array_equal(r.y, a.y)
        np.testing.assert_array_equal(r.weights, a.weights)
        np.testing.assert_allclose(r.const, 0.0)


def test_second_factor_level_is_success():
    r = binomial().response(_cat(["b", "a", "b"], ["b", "a"]), None, "y")
    np.testing.assert_array_equal(r.y, [0.0, 1.0, 0.0])


def test_all_true_boolean_response():
    r = binomial().response(_cat([True, True], [True]), None, "y")
    np.testing.assert_array_equal(r.y, [1.0, 1.0])


def test_proportions_with_trials_equal_cbind():
    fam = binomial()
    k = np.array([2.0, 0.0, 5.0])
    n = np.array([4.0, 3.0, 5.0])
    a = fam.response(Numeric((k / n)[:, None], [""]), n, "y")
    b = fam.response(Numeric(np.column_stack([k, n - k]), ["1", "2"]), None, "y")
    for field in ("y", "weights", "const", "trials"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field))
    np.testing.assert_allclose(b.const, np.log([6.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    ("value", "weights", "message"),
    [
        (Numeric(np.array([[1.0, -1.0], [2.0, 3.0]]), ["1", "2"]), None, "negative counts"),
        (Numeric(np.array([[1.5, 1.0], [2.0, 3.0]]), ["1", "2"]), None, "non-integer counts"),
        (Numeric(np.array([[0.5], [1.0]]), [""]), None, "need weights"),
        (Numeric(np.array([[0.5], [1.0]]), [""]), np.array([3.0, 2.0]), "whole number"),
        (Numeric(np.array([[1.5], [1.0]]), [""]), None, "outside"),
        (Numeric(np.ones((2, 3)), ["1", "2", "3"]), None, "3 columns"),
        (None, None, "3 levels"),
        (None, "one-level", "single level"),
    ],
)
def test_bad_binomial_responses(value, weights, message):
    if value is None and weights is None:
        value = _cat(["a", "b", "c"], ["a", "b", "c"])
    elif value is None:
        value, weights = _cat(["a", "a"], ["a"]), None
    with pytest.raises(DataError, match=message):
        Binomial().response(value, weights, "y")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Numeric(np.array([[1.0], [-2.0]]), [""]), "negative"),
        (Numeric(np.array([[1.0], [2.5]]), [""]), "non-integer"),
        (_cat(["a", "b"], ["a", "b"]), "categorical"),
        (Numeric(np.ones((2, 2)), ["1", "2"]), "single column"),
    ],
)
def test_bad_poisson_responses(value, message):
    with pytest.raises(DataError, match=message):
        Poisson().response(value, None, "y")


def test_get_family():
    assert get_family("binomial") == binomial("logit")
    assert get_family("binomial(probit)").link.name == "probit"
    assert get_family("binomial(link = 'cloglog')").link.name == "cloglog"
    assert get_family("poisson").link.name == "log"
    assert get_family(binomial(), link="probit") == binomial("probit")
    with pytest.raises(ModelError, match="unknown family"):
        get_family("weibull")
    with pytest.raises(ModelError, match="not available"):
        binomial("log")
