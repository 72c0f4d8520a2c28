"""The exact-gradient routes leave the PIRLS mode behind the random effects
and fitted values to first use (``LazyMode``) and take the deviance from the
search's optimum: both must equal what the eager computation gives."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import multilevel as ml
from multilevel.glmm.fit import LazyMode
from multilevel.glmm.quadrature import agq_deviance

CBPP = ml.datasets.load("cbpp")
FORMULA = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.mark.parametrize("nagq", [1, 7])
def test_lazy_mode_equals_pirls_at_the_estimates(nagq):
    fit = ml.glmer(FORMULA, CBPP, family="binomial", nAGQ=nagq)
    lazy = fit._mode
    assert isinstance(lazy, LazyMode)
    assert "_m" not in lazy.__dict__  # nothing beyond β formed by the fit itself
    prob, theta, _ = lazy._args
    eager = prob.mode(theta, lazy.beta, None, False)  # PIRLS from u = 0
    np.testing.assert_allclose(lazy.u, eager.u, rtol=0, atol=1e-8)
    np.testing.assert_allclose(lazy.eta, eager.eta, rtol=0, atol=1e-8)
    if nagq == 1:
        ref = eager.laplace
    else:
        ref = agq_deviance(prob, eager, nagq)
    assert fit.deviance == pytest.approx(ref, rel=1e-12, abs=1e-9)
    # the results that read the mode
    assert np.all(np.isfinite(fit.ranef["herd"].to_numpy()))
    assert np.all(np.isfinite(fit.ranef_condsd["herd"].to_numpy()))
    assert fit.fitted.shape == (len(CBPP),)


def test_lazy_mode_pickles_before_and_after_use():
    fit = ml.glmer(FORMULA, CBPP, family="binomial")
    back = pickle.loads(pickle.dumps(fit))  # the mode not yet formed
    np.testing.assert_array_equal(back.fixef, fit.fixef)
    np.testing.assert_allclose(back.fitted, fit.fitted, rtol=0, atol=1e-12)
    again = pickle.loads(pickle.dumps(fit))  # and after
    np.testing.assert_array_equal(again.ranef["herd"], fit.ranef["herd"])
