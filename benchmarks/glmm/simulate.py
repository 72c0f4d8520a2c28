"""Simulated data for the GLMM benchmark, written once to ``.data/``.

``binary_sim`` (cases ``sim-1``, ``sim-25``): binary random-intercept logit
model, 200,000 rows in 2,000 groups ``g`` of 50–150 rows (mean 100):

    logit P(yᵢ = 1) = −0.5 + 0.8·x1ᵢ − 0.4·x2ᵢ + u_g,   u_g ~ N(0, 1),

x1 ~ N(0, 1), x2 ~ Bernoulli(0.5) (stored as 0/1, numeric).

``nb_sim`` and ``gamma_sim`` (cases ``nb-1``, ``gamma-1``): 200,000 rows in
2,000 groups ``g`` = 1..2000 of 100 consecutive rows each, both files with the
same x, g and b (one draw, seed 20261205, in the order x, b, NB y, Gamma y):

    log μᵢ = 1 + 0.3·xᵢ + b_g,   x ~ N(0, 1) (rounded to 6 decimals first),
    b_g ~ N(0, 0.5²);
    nb_sim:    yᵢ ~ Poisson(λᵢ), λᵢ ~ Gamma(shape 2, scale μᵢ/2)
               (NB2 with θ = 2: mean μ, variance μ + μ²/2);
    gamma_sim: yᵢ ~ Gamma(shape 5, scale μᵢ/5) (mean μ, variance μ²/5),
               rounded to 8 significant digits.

``clmm_sim`` (case ``clmm-1``): ordinal ratings on a 5-point scale, 100,000
rows from 2,000 raters ``rater`` = 1..2000 of 50 consecutive rows each (one
draw, seed 20261210, in the order x1, x2, b, e):

    y*ᵢ = 0.8·x1ᵢ − 0.5·x2ᵢ + b_rater + eᵢ,   x1 ~ N(0, 1) (rounded to 6
    decimals first), x2 ~ Bernoulli(0.4) (0/1, numeric), b_rater ~ N(0, 1²),
    e ~ logistic(0, 1);
    ratingᵢ = 1 + #{j : αⱼ < y*ᵢ},  α = (−2, −0.7, 0.6, 1.9),

i.e. the cumulative logit model P(rating ≤ j | b) = logistic(αⱼ − 0.8·x1 +
0.5·x2 − b) that ``ordinal::clmm`` and ``multilevel.clmm`` fit.
``clmm_sim_20k`` (case ``clmm-1-20k``): its first 20,000 rows (raters 1..400).

Values are rounded before they are written (and written exactly, as the
shortest decimal that reads back to the same double), so every engine reads the
same numbers. Fixed seeds: the files are the same on every machine with the
same numpy.

    python benchmarks/glmm/simulate.py     # (re)write all the files
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("BENCH_GLMM_DATA_DIR", HERE / ".data"))
SEED = 20240611
N_GROUPS = 2_000
N_ROWS = 200_000
BETA = (-0.5, 0.8, -0.4)
SD_U = 1.0

FAMILY_SEED = 20261205
FAMILY_GROUPS, FAMILY_PER_GROUP = 2_000, 100
FAMILY_BETA = (1.0, 0.3)  # log mu = 1 + 0.3 x + b_g
FAMILY_SD_B = 0.5
NB_THETA = 2.0
GAMMA_SHAPE = 5.0

CLMM_SEED = 20261210
CLMM_RATERS, CLMM_PER_RATER = 2_000, 50
CLMM_BETA = (0.8, -0.5)  # x1, x2
CLMM_P_X2 = 0.4
CLMM_SD_B = 1.0
CLMM_THRESHOLDS = (-2.0, -0.7, 0.6, 1.9)


def simulate_binary(seed: int = SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # group sizes 50..150, then nudged so that they add up to exactly N_ROWS
    sizes = rng.integers(50, 151, size=N_GROUPS)
    diff = N_ROWS - sizes.sum()
    step = np.sign(diff)
    while diff != 0:  # at most a few hundred single-row moves, once, offline
        i = rng.integers(N_GROUPS)
        if 50 <= sizes[i] + step <= 150:
            sizes[i] += step
            diff -= step
    g = np.repeat(np.arange(1, N_GROUPS + 1), sizes)
    u = rng.normal(0.0, SD_U, N_GROUPS)
    x1 = rng.normal(size=N_ROWS)
    x2 = rng.integers(0, 2, size=N_ROWS)
    eta = BETA[0] + BETA[1] * x1 + BETA[2] * x2 + u[g - 1]
    y = (rng.random(N_ROWS) < 1.0 / (1.0 + np.exp(-eta))).astype(int)
    return pd.DataFrame({"y": y, "x1": np.round(x1, 6), "x2": x2, "g": g})


def simulate_families(seed: int = FAMILY_SEED) -> dict[str, pd.DataFrame]:
    """``nb_sim`` and ``gamma_sim``: one draw of x, g, b; NB2 and Gamma responses."""
    rng = np.random.default_rng(seed)
    n = FAMILY_GROUPS * FAMILY_PER_GROUP
    g = np.repeat(np.arange(1, FAMILY_GROUPS + 1), FAMILY_PER_GROUP)
    x = np.round(rng.normal(size=n), 6)
    b = rng.normal(0.0, FAMILY_SD_B, FAMILY_GROUPS)
    mu = np.exp(FAMILY_BETA[0] + FAMILY_BETA[1] * x + b[g - 1])
    y_nb = rng.poisson(rng.gamma(NB_THETA, mu / NB_THETA))
    y_gamma = rng.gamma(GAMMA_SHAPE, mu / GAMMA_SHAPE)
    y_gamma = np.array([float(f"{v:.8g}") for v in y_gamma])  # 8 significant digits
    return {
        "nb_sim": pd.DataFrame({"y": y_nb, "x": x, "g": g}),
        "gamma_sim": pd.DataFrame({"y": y_gamma, "x": x, "g": g}),
    }


def simulate_clmm(seed: int = CLMM_SEED) -> pd.DataFrame:
    """``clmm_sim``: 5-point ratings from a random-intercept cumulative logit model."""
    rng = np.random.default_rng(seed)
    n = CLMM_RATERS * CLMM_PER_RATER
    rater = np.repeat(np.arange(1, CLMM_RATERS + 1), CLMM_PER_RATER)
    x1 = np.round(rng.normal(size=n), 6)
    x2 = (rng.random(n) < CLMM_P_X2).astype(int)
    b = rng.normal(0.0, CLMM_SD_B, CLMM_RATERS)
    e = rng.logistic(0.0, 1.0, n)
    latent = CLMM_BETA[0] * x1 + CLMM_BETA[1] * x2 + b[rater - 1] + e
    rating = 1 + (latent[:, None] > np.asarray(CLMM_THRESHOLDS)[None, :]).sum(axis=1)
    return pd.DataFrame({"rating": rating, "x1": x1, "x2": x2, "rater": rater})


CLMM_SUBSET_ROWS = 20_000  # clmm_sim_20k: the first 400 raters

NAMES = ("binary_sim", "nb_sim", "gamma_sim", "clmm_sim", "clmm_sim_20k")


def _write(path: Path, df: pd.DataFrame) -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # pandas writes the shortest decimal that reads back to the same double
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def ensure(name: str = "binary_sim") -> Path:
    """Path of the simulated CSV, written first if it does not exist yet."""
    if name not in NAMES:
        raise KeyError(f"unknown simulated data set {name!r}")
    path = DATA_DIR / f"{name}.csv"
    if not path.exists():
        if name == "binary_sim":
            _write(path, simulate_binary())
        elif name == "clmm_sim":
            _write(path, simulate_clmm())
        elif name == "clmm_sim_20k":
            _write(path, simulate_clmm().iloc[:CLMM_SUBSET_ROWS])
        else:
            _write(path, simulate_families()[name])
    return path


if __name__ == "__main__":
    for name in NAMES:
        (DATA_DIR / f"{name}.csv").unlink(missing_ok=True)
        print(ensure(name))
