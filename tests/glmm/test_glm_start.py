"""The GLM without random effects that starts every search
(``PirlsProblem.initial_beta``): the compiled IRLS (binomial-logit,
Poisson-log) gives numpy's β and leaves numpy's XᵀWX at it for the search's
whitening; a fit is the same either way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel.glmm.pirls as pirls_mod
from multilevel.compiled import kernel

from .model_checks import quiet_glmer

needs_kernel = pytest.mark.skipif(
    kernel("_glmm_kernels", "glm_irls") is None, reason="compiled kernels not built"
)


def _data(kind: str, seed: int = 5) -> tuple[str, pd.DataFrame, str]:
    rng = np.random.default_rng(seed)
    J, m = 20, 9
    g = np.repeat(np.arange(J), m)
    x = rng.normal(size=J * m)
    d = pd.DataFrame({"x": x, "g": g.astype(str), "off": rng.normal(scale=0.3, size=J * m)})
    u = rng.normal(scale=0.8, size=J)
    if kind == "poisson":
        d["y"] = rng.poisson(np.exp(0.5 + 0.4 * x + d["off"] + u[g]))
        return "y ~ x + offset(off) + (1 | g)", d, "poisson"
    n = rng.integers(1, 6, size=J * m)
    d["k"] = rng.binomial(n, 1 / (1 + np.exp(-(-0.4 + 0.9 * x + u[g]))))
    d["nk"] = n - d["k"]
    return "cbind(k, nk) ~ x + (1 | g)", d, "binomial"


def _both(monkeypatch, kind: str):
    formula, d, family = _data(kind)
    fast = quiet_glmer(formula, d, family=family)
    monkeypatch.setattr(pirls_mod, "IRLS_KERNEL_DISABLED", True)
    slow = quiet_glmer(formula, d, family=family)
    monkeypatch.setattr(pirls_mod, "IRLS_KERNEL_DISABLED", False)
    return fast, slow


@needs_kernel
@pytest.mark.parametrize("kind", ["poisson", "binomial"])
def test_compiled_glm_start_equals_numpy(kind, monkeypatch):
    fast, slow = _both(monkeypatch, kind)
    prob = fast._prob
    prob._glm_info = None
    beta_c = prob.initial_beta()
    info_c = prob.glm_information(beta_c)
    assert prob._glm_info is not None  # the compiled path ran
    monkeypatch.setattr(pirls_mod, "IRLS_KERNEL_DISABLED", True)
    prob._glm_info = None
    beta_n = prob.initial_beta()
    info_n = prob.glm_information(beta_n)
    np.testing.assert_allclose(beta_c, beta_n, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(info_c, info_n, rtol=1e-12)


@needs_kernel
@pytest.mark.parametrize("kind", ["poisson", "binomial"])
def test_fit_is_the_same_with_either_glm_start(kind, monkeypatch):
    fast, slow = _both(monkeypatch, kind)
    np.testing.assert_allclose(fast.fixef.values, slow.fixef.values, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(fast.theta, slow.theta, rtol=1e-9, atol=1e-10)
    assert fast.deviance == pytest.approx(slow.deviance, abs=1e-9)


def test_information_at_another_beta_is_formed_afresh(monkeypatch):
    fast, _ = _both(monkeypatch, "binomial")
    prob = fast._prob
    beta = prob.initial_beta() + 0.1
    eta = prob.offset + prob.X @ beta
    w = prob.family.irls_terms(eta, prob.resp.weights)[2]
    np.testing.assert_allclose(prob.glm_information(beta), (prob.X.T * w) @ prob.X, rtol=1e-13)
