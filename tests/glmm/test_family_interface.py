"""The family interface (multilevel.glmm.families.base) for every family and
link: full log-densities against scipy.stats, the derivatives ℓ_μ, ℓ_μμ and
the observed curvature against differences of the log-density, the scoring
step, moments of simulated responses, and the refusal of responses a family
cannot take."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from multilevel import DataError, ModelError
from multilevel.formula.design import Numeric
from multilevel.glmm.families import (
    Beta,
    Binomial,
    Gamma,
    InverseGaussian,
    NegativeBinomial,
    Poisson,
    get_family,
)

rng = np.random.default_rng(11)
N = 40


def _case(name: str, link: str):
    """A family at a parameter value, responses and means inside its support."""
    if name == "gamma":
        fam = Gamma(link).with_value(3.5)
        mu = rng.uniform(0.5, 4.0, N)
        y = rng.gamma(3.5, mu / 3.5)
    elif name == "ig":
        fam = InverseGaussian(link).with_value(0.3)
        mu = rng.uniform(0.5, 3.0, N)
        y = rng.wald(mu, 1 / 0.3)
    elif name == "nb":
        fam = NegativeBinomial(link).with_value(1.7)
        mu = rng.uniform(0.3, 8.0, N)
        y = rng.poisson(rng.gamma(1.7, mu / 1.7)).astype(float)
    elif name == "beta":
        fam = Beta(link).with_value(6.0)
        mu = rng.uniform(0.1, 0.9, N)
        y = rng.beta(mu * 6.0, (1 - mu) * 6.0)
    elif name == "poisson":
        fam = Poisson(link)
        mu = rng.uniform(0.3, 8.0, N)
        y = rng.poisson(mu).astype(float)
    else:
        fam = Binomial(link)
        mu = rng.uniform(0.1, 0.9, N)
        y = rng.binomial(1, mu).astype(float)
    # binomial weights are numbers of trials: whole numbers
    wt = np.ones(N) if name == "binomial" else rng.uniform(0.5, 2.0, N)
    return fam, y, mu, wt


CASES = [
    ("gamma", "inverse"),
    ("gamma", "log"),
    ("gamma", "identity"),
    ("ig", "1/mu^2"),
    ("ig", "log"),
    ("ig", "inverse"),
    ("nb", "log"),
    ("nb", "sqrt"),
    ("nb", "identity"),
    ("beta", "logit"),
    ("beta", "probit"),
    ("beta", "cloglog"),
    ("poisson", "log"),
    ("binomial", "probit"),
    ("binomial", "cloglog"),
]


def _loglik(fam, y, eta, wt):
    resp = fam.response(Numeric(y[:, None], [""]), wt, "y")
    return fam.loglik_kernel(y, eta, resp.weights) + resp.const


@pytest.mark.parametrize(("name", "link"), CASES)
def test_full_log_density_matches_scipy(name, link):
    fam, y, mu, wt = _case(name, link)
    eta = fam.linkfun(mu)
    got = _loglik(fam, y, eta, wt)
    v = fam.value
    expected = {
        "gamma": lambda: stats.gamma.logpdf(y, v, scale=mu / v),
        "ig": lambda: stats.invgauss.logpdf(y, mu * v, scale=1 / v),
        "nb": lambda: stats.nbinom.logpmf(y, v, v / (v + mu)),
        "beta": lambda: stats.beta.logpdf(y, mu * v, (1 - mu) * v),
        "poisson": lambda: stats.poisson.logpmf(y, mu),
        "binomial": lambda: stats.bernoulli.logpmf(y, mu),
    }[name]()
    np.testing.assert_allclose(got, wt * expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("name", "link"), CASES)
def test_derivatives_and_observed_curvature_match_differences(name, link):
    fam, y, mu, wt = _case(name, link)
    eta = fam.linkfun(mu)

    def ll_mu(m):
        return fam.loglik_kernel(y, fam.linkfun(m), wt)

    h = 1e-5 * mu
    l1, l2 = fam.dmu(y, mu, wt)
    np.testing.assert_allclose(l1, (ll_mu(mu + h) - ll_mu(mu - h)) / (2 * h), rtol=1e-5, atol=1e-6)
    num2 = (ll_mu(mu + h) - 2 * ll_mu(mu) + ll_mu(mu - h)) / h**2
    np.testing.assert_allclose(l2, num2, rtol=1e-3, atol=1e-3)
    he = 1e-4
    d2 = (
        fam.loglik_kernel(y, eta + he, wt)
        - 2 * fam.loglik_kernel(y, eta, wt)
        + fam.loglik_kernel(y, eta - he, wt)
    ) / he**2
    np.testing.assert_allclose(fam.observed_weights(y, eta, wt), -d2, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(("name", "link"), CASES)
def test_scoring_step_is_score_over_fisher_weight(name, link):
    fam, y, mu, wt = _case(name, link)
    eta = fam.linkfun(mu)
    w, resid = fam.score_weights(y, eta, wt)
    he = 1e-6
    score = (fam.loglik_kernel(y, eta + he, wt) - fam.loglik_kernel(y, eta - he, wt)) / (2 * he)
    np.testing.assert_allclose(w * resid, score, rtol=1e-5, atol=1e-6)
    assert np.all(w > 0)
    if fam.canonical:  # observed = expected curvature
        np.testing.assert_allclose(fam.observed_weights(y, eta, wt), w, rtol=1e-12)


@pytest.mark.parametrize("name", ["gamma", "ig", "nb", "beta"])
def test_fisher_weights_are_the_expected_observed_curvature(name):
    fam, _, mu, _ = _case(name, {"gamma": "log", "ig": "log", "nb": "log", "beta": "logit"}[name])
    mu = np.full(1, mu[0])
    eta = fam.linkfun(mu)
    resp = type("R", (), {"trials": None})()
    draws = fam.simulate(np.full(200_000, mu[0]), resp, np.random.default_rng(3))
    one = np.ones(draws.size)
    observed = fam.observed_weights(draws, np.full(draws.size, eta[0]), one)
    fisher = fam.irls_terms(eta, np.ones(1))[2][0]
    assert observed.mean() == pytest.approx(fisher, rel=0.03)
    assert draws.mean() == pytest.approx(mu[0], rel=0.03)


@pytest.mark.parametrize(
    ("family", "values", "message"),
    [
        ("Gamma", [1.0, 0.0], "1 value.*not positive"),
        ("inverse.gaussian", [-1.0, 2.0], "not positive"),
        ("negative_binomial", [1.0, -2.0], "1 negative value"),
        ("negative_binomial", [1.0, 2.5], "non-integer"),
        (
            "beta",
            [0.5, 1.0, 0.0],
            r"2 value\(s\) outside the open interval.*\(y \* \(n - 1\) \+ 0.5\) / n",
        ),
    ],
)
def test_responses_outside_the_support_are_refused(family, values, message):
    fam = get_family(family)
    with pytest.raises(DataError, match=message):
        fam.response(Numeric(np.array(values)[:, None], [""]), None, "y")


def test_names_links_and_fixed_parameters():
    assert get_family("Gamma").link.name == "inverse"
    assert get_family("Gamma(link='log')") == Gamma("log")
    assert get_family("inverse.gaussian").link.name == "1/mu^2"
    assert get_family("nbinom2").estimated
    fixed = get_family("negative_binomial(theta=2.5)")
    assert not fixed.estimated and fixed.value == 2.5 and fixed.nfree == 0
    assert get_family("beta_family").name == "beta"
    with pytest.raises(ModelError, match="not available for the Gamma family"):
        Gamma("logit")
    with pytest.raises(ModelError, match="positive number"):
        NegativeBinomial("log", -1.0)
    with pytest.raises(ModelError, match="only the negative binomial"):
        get_family("Gamma(theta=2)")
    with pytest.raises(ModelError, match="unknown family"):
        get_family("weibull")


def test_sigma_is_glmmtmbs():
    assert Gamma("log").with_value(4.0).sigma == pytest.approx(0.5)
    assert NegativeBinomial().with_value(3.0).sigma == 3.0
    assert Beta().with_value(20.0).sigma == 20.0
    assert InverseGaussian().with_value(0.04).sigma == pytest.approx(0.2)
    assert Poisson().sigma == 1.0


@pytest.mark.parametrize(("name", "link"), CASES)
def test_eta_derivatives_match_differences(name, link):
    fam, y, mu, wt = _case(name, link)
    eta = fam.linkfun(mu)
    ll, l1, l2, l3 = fam.eta_derivs(y, eta, wt)
    np.testing.assert_allclose(ll, fam.loglik_kernel(y, eta, wt), rtol=1e-12)
    he = 1e-5 * np.maximum(1.0, np.abs(eta))

    def d(k, e):
        return fam.eta_derivs(y, e, wt)[k]

    np.testing.assert_allclose(
        l1, (d(0, eta + he) - d(0, eta - he)) / (2 * he), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        l2, (d(1, eta + he) - d(1, eta - he)) / (2 * he), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        l3, (d(2, eta + he) - d(2, eta - he)) / (2 * he), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(-l2, fam.observed_weights(y, eta, wt), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "link"), [c for c in CASES if c[0] in ("gamma", "ig", "nb", "beta")]
)
def test_parameter_derivatives_match_differences(name, link):
    fam, y, mu, wt = _case(name, link)
    eta = fam.linkfun(mu)
    h = 1e-6
    up = fam.with_value(fam.value * np.exp(h)).eta_derivs(y, eta, wt)
    down = fam.with_value(fam.value * np.exp(-h)).eta_derivs(y, eta, wt)
    for got, a, b in zip(fam.param_eta_derivs(y, eta, wt), up, down, strict=False):
        np.testing.assert_allclose(got, (a - b) / (2 * h), rtol=1e-5, atol=1e-6)
