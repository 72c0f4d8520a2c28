"""The cumulative link family (:mod:`multilevel.glmm.families.ordinal`):
probabilities, derivatives in η and in the free threshold parameters, the
Fisher weights, the threshold structures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from multilevel.glmm.families.ordinal import CDFS, Cumulative, threshold_structure

LINKS = sorted(CDFS)
SCIPY = {
    "logit": stats.logistic,
    "probit": stats.norm,
    "cloglog": stats.gumbel_l,  # 1 − exp(−eˣ)
    "loglog": stats.gumbel_r,  # exp(−e⁻ˣ)
    "cauchit": stats.cauchy,
}


def family(link: str, threshold: str = "flexible", K: int = 5, seed: int = 0) -> Cumulative:
    fam = Cumulative(link, threshold).with_levels([str(j) for j in range(K)])
    if threshold != "flexible":  # ordered: spacings 0.8, 1.6, ... (or central.2 first)
        return fam.with_free(0.8 * np.arange(1, fam.nfree + 1))
    return fam.with_free(np.random.default_rng(seed).normal(scale=0.4, size=fam.nfree))


@pytest.mark.parametrize("link", LINKS)
def test_distribution_functions_match_scipy(link):
    x = np.linspace(-6, 6, 25)
    cdf = CDFS[link]()
    np.testing.assert_allclose(cdf.cdf(x), SCIPY[link].cdf(x), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(cdf.sf(x), SCIPY[link].sf(x), rtol=1e-10, atol=1e-300)
    f, f1, f2 = cdf.densities(x)
    np.testing.assert_allclose(f, SCIPY[link].pdf(x), rtol=1e-12, atol=1e-300)
    h = 1e-5
    np.testing.assert_allclose(f1, (cdf.densities(x + h)[0] - cdf.densities(x - h)[0]) / (2 * h),
                               rtol=1e-6, atol=1e-10)  # fmt: skip
    np.testing.assert_allclose(f2, (cdf.densities(x + h)[1] - cdf.densities(x - h)[1]) / (2 * h),
                               rtol=1e-6, atol=1e-10)  # fmt: skip
    p = np.array([0.01, 0.3, 0.5, 0.9])
    np.testing.assert_allclose(cdf.cdf(cdf.quantile(p)), p, rtol=1e-12)


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("threshold", ["flexible", "equidistant", "symmetric"])
def test_eta_and_parameter_derivatives_match_differences(link, threshold):
    fam = family(link, threshold, K=6)
    y = np.repeat(np.arange(6.0), 3)
    eta = np.tile([-0.7, 0.4, 1.3], 6) + 0.5 * y - 1.0
    wt = np.linspace(0.5, 2.0, y.size)
    ll, l1, l2, l3 = fam.eta_derivs(y, eta, wt)
    np.testing.assert_allclose(ll, fam.loglik_kernel(y, eta, wt))
    h = 1e-5
    for got, k in ((l1, 0), (l2, 1), (l3, 2)):
        up = fam.eta_derivs(y, eta + h, wt)[k]
        dn = fam.eta_derivs(y, eta - h, wt)[k]
        np.testing.assert_allclose(got, (up - dn) / (2 * h), rtol=1e-5, atol=1e-7)
    p0, p1, p2 = fam.param_eta_derivs(y, eta, wt)
    assert p0.shape == (y.size, fam.nfree)
    psi = fam.free_values()
    for j in range(fam.nfree):
        e = np.zeros_like(psi)
        e[j] = h
        up = fam.with_free(psi + e).eta_derivs(y, eta, wt)
        dn = fam.with_free(psi - e).eta_derivs(y, eta, wt)
        for got, k in ((p0, 0), (p1, 1), (p2, 2)):
            np.testing.assert_allclose(got[:, j], (up[k] - dn[k]) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("link", LINKS)
def test_fisher_weight_is_the_expected_observed_curvature(link):
    fam = family(link)
    eta = np.array([-1.5, 0.0, 0.8, 2.5])
    w = fam.irls_terms(eta, np.ones(4))[2]
    probs = fam.category_probs(eta)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    expected = np.zeros(4)
    for j in range(5):  # categories
        expected += probs[:, j] * fam.observed_weights(np.full(4, float(j)), eta, np.ones(4))
    np.testing.assert_allclose(w, expected, rtol=1e-8)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(LINKS),
    st.floats(-40, 40),
    st.lists(st.floats(-3, 1), min_size=3, max_size=3),
)
def test_probabilities_are_finite_and_sum_to_one_far_out(link, eta, incs):
    """Far in either tail no probability is negative, NaN or lost to cancellation."""
    fam = Cumulative(link).with_levels(list("abcde")).with_free(np.array(incs))
    e = np.full(5, eta)
    p = fam.probability(np.arange(5.0), e)
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    ll, l1, l2, _ = fam.eta_derivs(np.arange(5.0), e, np.ones(5))
    ok = p > 1e-280
    assert np.all(np.isfinite(l1[ok])) and np.all(np.isfinite(l2[ok]))


def test_structures_are_ordinals():
    """ordinal's tJac: equidistant αⱼ = γ₁ + (j − 1)γ₂; symmetric about the
    middle threshold (odd) or the middle two (even)."""
    J, names = threshold_structure("equidistant", 4)
    assert names == ["threshold.1", "spacing"]
    np.testing.assert_array_equal(J @ [1.0, 2.0], [1, 3, 5, 7])
    J, names = threshold_structure("symmetric", 4)
    assert names == ["central.1", "central.2", "spacing.1"]
    np.testing.assert_array_equal(J @ [1.0, 2.0, 0.5], [0.5, 1, 2, 2.5])
    J, names = threshold_structure("symmetric", 5)
    assert names == ["central", "spacing.1", "spacing.2"]
    np.testing.assert_array_equal(J @ [0.0, 1.0, 3.0], [-3, -1, 0, 1, 3])


def test_simulated_categories_follow_the_probabilities():
    fam = family("probit")
    rng = np.random.default_rng(3)
    eta = np.full(40_000, 0.3)
    y = fam.simulate(eta, None, rng)
    freq = np.bincount(y.astype(int), minlength=5) / y.size
    np.testing.assert_allclose(freq, fam.category_probs(eta[:1])[0], atol=0.01)
