"""Simulation from a fitted LMM or GLMM and the parametric bootstrap.

``simulate`` draws new responses from the fitted model,

    y* = Xβ̂ + offset + Σ_k Z_k b*_k + ε*,   b*_k,level ~ N(0, σ̂² T_k T_kᵀ),
    ε*ᵢ ~ N(0, σ̂²/wᵢ),

(lme4's ``simulate`` with new random effects; a GLMM draws from its family
at μ* = g⁻¹(η*), by the fit's ``simulate``).  ``bootstrap`` refits the
model to each simulated response (warm-started at θ̂) and collects a
statistic of every refit — by default the standard deviations,
correlations, σ and fixed effects, as lme4's ``confint(method="boot")`` —
from which ``BootResult.confint`` gives percentile (or normal / basic)
intervals.

Reproducibility: replicate i draws from its own generator, seeded by the
i-th child of ``numpy.random.SeedSequence(seed)``, so a seed gives the same
replicates whatever the number of workers or the order they finish in.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from multilevel.errors import ModelError
from multilevel.inference.params import VarianceParams

if TYPE_CHECKING:
    from multilevel.lmm.results import LmerFit


def _child_seeds(seed: Any, nsim: int) -> list[np.random.SeedSequence]:
    return np.random.SeedSequence(seed).spawn(nsim)


def _draw(fit: LmerFit, ss: np.random.SeedSequence) -> np.ndarray:
    """One simulated response (n,)."""
    if hasattr(fit, "family"):  # new random effects and the family's draws
        return fit.simulate(1, seed=ss).iloc[:, 0].to_numpy()
    rng = np.random.default_rng(ss)
    d = fit.design
    sigma = fit.sigma
    mu = d.X @ fit.fixef.to_numpy()
    if d.offset is not None:
        mu = mu + d.offset
    T = fit.criterion.factor(np.asarray(fit.optinfo.theta, dtype=float)).T
    for r, Tk in zip(d.random, T, strict=True):
        b = sigma * rng.standard_normal((r.nlevels, r.q)) @ Tk.T
        mu = mu + np.einsum("nq,nq->n", r.Z, b[r.codes])
    eps = sigma * rng.standard_normal(d.nobs)
    if d.weights is not None:
        eps = eps / np.sqrt(d.weights)
    return mu + eps


def simulate(fit: LmerFit, nsim: int = 1, seed: Any = None) -> pd.DataFrame:
    """``nsim`` responses simulated from the fitted model (columns sim_1, ...),
    indexed as the rows used in the fit; for a GLMM its ``simulate`` (new
    random effects and the family's draws, as lme4's)."""
    if nsim < 1:
        raise ModelError(f"nsim must be at least 1, not {nsim}")
    if hasattr(fit, "family"):
        return fit.simulate(nsim, seed)
    seeds = _child_seeds(seed, nsim)
    cols = {f"sim_{i + 1}": _draw(fit, ss) for i, ss in enumerate(seeds)}
    return pd.DataFrame(cols, index=fit.design.row_index)


# -- statistics --------------------------------------------------------------------------
def default_statistic(fit: LmerFit) -> pd.Series:
    """SDs and correlations of the random effects, σ (an LMM's) and the fixed
    effects, named as in :func:`multilevel.inference.profile.profile`."""
    vp = VarianceParams(fit)
    if vp.with_sigma:
        psi = vp.psi(np.asarray(fit.optinfo.theta, dtype=float), fit.sigma)
    else:
        psi = vp.psi(np.asarray(fit.theta, dtype=float))
    return pd.concat([pd.Series(psi, index=vp.names), fit.fixef])


# -- refitting ------------------------------------------------------------------------------
def _refit(fit: LmerFit, y: np.ndarray) -> LmerFit:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit.refit(y)


def _replicate(fit: LmerFit, statistic, ss) -> tuple[np.ndarray, bool, bool]:
    refit = _refit(fit, _draw(fit, ss))
    value = np.asarray(statistic(refit), dtype=float)
    return value, bool(refit.singular), bool(refit.converged)


_worker_state: dict[str, Any] = {}


def _worker_init(fit, statistic) -> None:
    _worker_state["fit"] = fit
    _worker_state["statistic"] = statistic


def _worker_run(i_ss) -> tuple[int, np.ndarray, bool, bool]:
    i, ss = i_ss
    return (i, *_replicate(_worker_state["fit"], _worker_state["statistic"], ss))


class _Progress:
    """tqdm when it is installed, otherwise a line on stderr every few percent."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.bar = None
        self.start = time.monotonic()
        self.next_report = 0
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="bootstrap")
            except ImportError:
                self.bar = None

    def update(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        pct = 100 * self.done // self.total
        if pct >= self.next_report or self.done == self.total:
            el = time.monotonic() - self.start
            print(
                f"\rbootstrap: {self.done}/{self.total} ({pct}%) {el:.1f}s",
                end="\n" if self.done == self.total else "",
                file=sys.stderr,
                flush=True,
            )
            self.next_report = pct + 5

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _maritz_jarrett(x_sorted: np.ndarray, p: float) -> float:
    """Maritz–Jarrett standard error of the p-quantile of sorted data."""
    from scipy import stats  # scipy.stats costs 0.5 s to import: when used

    n = x_sorted.size
    m = int(np.floor(n * p + 0.5))
    if n < 3 or not 1 <= m <= n:
        return float("nan")
    w = np.diff(stats.beta.cdf(np.arange(n + 1) / n, m, n - m + 1))
    c1 = float(w @ x_sorted)
    # centred second moment: no cancellation for a large mean
    return float(np.sqrt(w @ (x_sorted - c1) ** 2))


@dataclass
class BootResult:
    """Parametric bootstrap replicates of a statistic.

    ``t0``: the statistic on the original fit; ``samples``: one row per
    replicate; ``singular``/``converged``: per replicate flags of the refit.
    """

    t0: pd.Series
    samples: pd.DataFrame
    singular: np.ndarray
    converged: np.ndarray
    seed: Any

    @property
    def nsim(self) -> int:
        return len(self.samples)

    def confint(self, level: float = 0.95, type: str = "perc") -> pd.DataFrame:
        """Bootstrap intervals: ``"perc"`` (quantiles of the replicates, R's type 7),
        ``"basic"`` (2t₀ − upper, 2t₀ − lower quantiles) or ``"norm"``
        (t₀ − bias ± z·SD of the replicates)."""
        from scipy import stats  # scipy.stats costs 0.5 s to import: when used

        a = (1 - level) / 2
        pct = [f"{100 * a:.3g} %", f"{100 * (1 - a):.3g} %"]
        S = self.samples
        if type == "perc":
            lo, hi = S.quantile(a), S.quantile(1 - a)
        elif type == "basic":
            lo, hi = 2 * self.t0 - S.quantile(1 - a), 2 * self.t0 - S.quantile(a)
        elif type == "norm":
            z = stats.norm.ppf(1 - a)
            bias = S.mean() - self.t0
            sd = S.std(ddof=1)
            lo, hi = self.t0 - bias - z * sd, self.t0 - bias + z * sd
        else:
            raise ModelError(f"type must be 'perc', 'basic' or 'norm', not {type!r}")
        return pd.DataFrame({pct[0]: lo, pct[1]: hi})

    def confint_mcse(self, level: float = 0.95) -> pd.DataFrame:
        """Monte Carlo standard errors of the ``"perc"`` interval endpoints.

        Maritz–Jarrett: the sample p-quantile is close to the order statistic
        X₍ₘ₎, m = ⌊np + ½⌋, whose position on the probability scale, F(X₍ₘ₎),
        is Beta(m, n−m+1); with that law applied to the empirical distribution,
        X₍ₘ₎ has moments Cₖ = Σᵢ Wᵢ X₍ᵢ₎ᵏ, Wᵢ = P((i−1)/n < U ≤ i/n) for
        U ~ Beta(m, n−m+1), and SE = √(C₂ − C₁²).  Unlike the binomial spacing estimate
        √(p(1−p)/n)/f(ξₚ), it needs no density estimate (it is smooth in the
        replicates).  An endpoint inside a point mass (many replicates of a
        correlation at exactly ±1) gets 0.
        """
        a = (1 - level) / 2
        ci = self.confint(level, type="perc")
        out = pd.DataFrame(np.nan, index=ci.index, columns=ci.columns)
        for name in self.samples.columns:  # a handful of statistics
            x = np.sort(self.samples[name].dropna().to_numpy())
            for col, p in zip(ci.columns, (a, 1 - a), strict=True):
                out.loc[name, col] = _maritz_jarrett(x, p)
        return out

    def __repr__(self) -> str:
        return (
            f"<BootResult: {self.nsim} replicates of {self.samples.shape[1]} statistics; "
            f"{int(self.singular.sum())} singular, {int((~self.converged).sum())} not converged>"
        )


def bootstrap(
    fit: LmerFit,
    nsim: int = 500,
    seed: Any = None,
    statistic: Callable[[LmerFit], Any] | None = None,
    progress: bool = True,
    workers: int = 1,
) -> BootResult:
    """Parametric bootstrap: simulate from ``fit``, refit, apply ``statistic``.

    ``statistic(refit)`` returns a vector (a pandas Series keeps its names);
    the default is :func:`default_statistic`.  ``workers > 1`` runs the refits
    in that many processes (results do not depend on it).  ``progress`` shows
    a progress bar (tqdm if installed, otherwise a line on stderr).
    """
    if hasattr(fit, "thresholds"):
        raise ModelError(
            "the parametric bootstrap is not available for an ordinal model; use "
            "confint(fit, method='Wald')"
        )
    if nsim < 1:
        raise ModelError(f"nsim must be at least 1, not {nsim}")
    stat = statistic if statistic is not None else default_statistic
    t0_raw = stat(fit)
    if isinstance(t0_raw, pd.Series):
        names = [str(i) for i in t0_raw.index]
    else:
        names = [f"t{i + 1}" for i in range(np.asarray(t0_raw).size)]
    t0 = pd.Series(np.asarray(t0_raw, dtype=float).ravel(), index=names)
    seeds = _child_seeds(seed, nsim)
    out = np.full((nsim, t0.size), np.nan)
    singular = np.zeros(nsim, dtype=bool)
    converged = np.zeros(nsim, dtype=bool)
    bar = _Progress(nsim, progress)
    try:
        if workers <= 1:
            for i, ss in enumerate(seeds):
                out[i], singular[i], converged[i] = _replicate(fit, stat, ss)
                bar.update()
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # fork: the fit reaches the workers without pickling
            ctx = mp.get_context("fork")
            with ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_worker_init, initargs=(fit, stat)
            ) as pool:
                chunk = max(1, nsim // (workers * 8))
                for i, value, sing, conv in pool.map(
                    _worker_run, list(enumerate(seeds)), chunksize=chunk
                ):
                    out[i], singular[i], converged[i] = value, sing, conv
                    bar.update()
    finally:
        bar.close()
    return BootResult(t0, pd.DataFrame(out, columns=names), singular, converged, seed)


__all__ = ["BootResult", "bootstrap", "default_statistic", "simulate"]
