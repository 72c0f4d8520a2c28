"""lme4's two optimisation stages for a GLMM, written once for the in-memory
fit (:mod:`multilevel.glmm.fit`) and the partitioned one: stage 1 optimises θ
with β inside PIRLS (the nAGQ = 0 fit); stage 2 optimises (θ, δ) together,
β = β₀ + R⁻¹δ with R from the stage-1 fixed-effects factor, so that δ has
unit conditional scale; the covariance of β̂ comes from stage 2's Hessian."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from multilevel.errors import ModelError
from multilevel.glmm.pirls import PirlsError
from multilevel.linalg.affine import upper_inverse
from multilevel.optimize.record import OptRecord
from multilevel.optimize.stage2 import optimize_stage2, vcov_from_hessian
from multilevel.optimize.theta import minimize_theta


class StagedObjective:
    """What both fitting stages share, in memory or over partitions: stage 1
    optimises θ with β inside PIRLS (``joint_mode``); stage 2 optimises
    (θ, δ) with β = β₀ + R⁻¹δ (whitened fixed effects)."""

    ntheta: int
    beta: np.ndarray
    beta0: np.ndarray
    Rinv: np.ndarray
    steep_steps: bool = True  # optimize_stage2's difference steps shrink on steep coordinates

    def joint_mode(self, theta: np.ndarray, beta: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    def stage1(self, theta: np.ndarray) -> float:
        try:
            m = self.joint_mode(theta, self.beta)
        except PirlsError:
            return math.inf
        self.beta = m.beta
        return m.laplace

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[: self.ntheta], self.beta0 + self.Rinv @ x[self.ntheta :]

    def natural(self, x: np.ndarray) -> np.ndarray:
        """(θ, δ) -> (θ, β)."""
        theta, beta = self.unpack(x)
        return np.concatenate([theta, beta])


@dataclass
class Stages:
    rec1: OptRecord
    mode1: object  # the joint mode at stage 1's θ (has .beta and .LFF)
    rec2: OptRecord | None  # None: stage 1 only (nAGQ = 0)
    H: np.ndarray | None  # stage 2's Hessian in (θ, δ)


def run_stages(
    obj: StagedObjective,
    theta0: np.ndarray,
    lower_t: np.ndarray,
    *,
    stage1_only: bool,
    stage1_tol: float = 1e-8,
) -> Stages:
    """Stage 1 from θ₀, then (unless ``stage1_only``) stage 2 from (θ̂₁, 0)."""
    with np.errstate(over="ignore", under="ignore"):
        r1 = minimize_theta(
            obj.stage1,
            theta0,
            lower_t,
            xtol=stage1_tol,
            ftol=stage1_tol,
            check_hessian=stage1_only,  # otherwise stage 2 judges the optimum
        )
    try:
        m1 = obj.joint_mode(r1.theta, obj.beta)
    except PirlsError as exc:
        raise ModelError(pirls_message(exc)) from None
    if stage1_only:
        return Stages(r1, m1, None, None)
    p = m1.beta.size
    obj.beta0 = m1.beta.copy()
    obj.Rinv = np.linalg.inv(m1.LFF).T  # β = β₀ + L⁻ᵀδ: δ has unit scale
    x0 = np.concatenate([r1.theta, np.zeros(p)])
    lower = np.concatenate([lower_t, np.full(p, -np.inf)])
    with np.errstate(over="ignore", under="ignore"):
        r2, H = optimize_stage2(
            obj.stage2, x0, lower, obj.ntheta, obj.natural, steep_steps=obj.steep_steps
        )
        r2, H = _leave_saddles(obj, r2, H, lower)
    return Stages(r1, m1, r2, H)


SADDLE_PROBE = 0.05  # a standard deviation's θ̃ (unit-scale columns) tried off its bound


def _leave_saddles(obj: StagedObjective, rec: OptRecord, H, lower: np.ndarray):
    """A diagonal θ at 0 is stationary by symmetry (the deviance depends on
    it through θ²); it is a minimum only if the deviance rises as θ leaves 0.
    For a correlated term a zero diagonal with a nonzero entry below it is
    a correlation of ±1 — a bound of the parametrisation, not of the model.
    Each zero diagonal is probed at SADDLE_PROBE; where the deviance is lower
    there, stage 2 goes on from that point and the lower optimum is kept."""
    nt = obj.ntheta
    for j in np.flatnonzero((lower[:nt] == 0.0) & (rec.theta[:nt] <= 0.0)):
        x = np.array(rec.theta, dtype=float)  # (θ, δ), as stage 2 searched
        x[j] = SADDLE_PROBE
        if not obj.stage2(x) < rec.criterion - 1e-9:
            continue
        r2, H2 = optimize_stage2(
            obj.stage2, x, lower, nt, obj.natural, steep_steps=obj.steep_steps,
            near_bound=np.arange(x.size) == j,
        )  # fmt: skip
        if r2.criterion < rec.criterion:
            r2._thetas = rec._thetas + r2._thetas
            r2._values = rec._values + r2._values
            r2.evals += rec.evals
            rec, H = r2, H2
    return rec, H


@dataclass
class Estimates:
    theta: np.ndarray
    beta: np.ndarray
    vcov: np.ndarray | None  # None: the Hessian gave none (the caller falls back)
    vcov_note: str
    hessian: np.ndarray | None  # in natural coordinates (θ, β)


def stage2_estimates(obj: StagedObjective, rec: OptRecord, H: np.ndarray | None) -> Estimates:
    """θ̂, β̂ and vcov(β̂) = the β block of 2H⁻¹ from a stage-2 (or exact-search)
    record in (θ, δ); the record is rewritten in natural coordinates (θ, β):
    δ = R(β − β₀), ∂/∂β = Rᵀ∂/∂δ."""
    nt = obj.ntheta
    x_hat = rec.theta
    J = np.eye(x_hat.size)
    Rinv = obj.Rinv  # upper triangular: the whitening's R⁻¹, or L⁻ᵀ of stage 1
    below = Rinv[_strictly_lower(Rinv.shape[0])]  # exact zeros where the map was triangular
    J[nt:, nt:] = np.linalg.inv(Rinv) if below.any() else upper_inverse(Rinv)
    rec.theta = obj.natural(x_hat)
    rec.gradient = J.T @ rec.gradient
    theta_hat, beta_hat = rec.theta[:nt], rec.theta[nt:]
    Vx, note = vcov_from_hessian(H, nt)
    hess = None if H is None else J.T @ H @ J
    vcov = None if Vx is None else Rinv @ Vx[nt:, nt:] @ Rinv.T
    return Estimates(theta_hat, beta_hat, vcov, note, hess)


@cache
def _strictly_lower(p: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tril_indices(p, -1)


def conditional_vcov(LFF: np.ndarray) -> np.ndarray:
    """(R_XᵀR_X)⁻¹ from a joint PIRLS factor: the covariance of β conditional on θ."""
    Linv = np.linalg.inv(LFF)
    return Linv.T @ Linv


def pirls_message(exc: Exception) -> str:
    return (
        f"PIRLS failed to find the conditional modes of the random effects at the estimates "
        f"({exc}); the model may be overparameterised (e.g. complete separation of a "
        "binary response) — simplify the random effects or rescale covariates"
    )
