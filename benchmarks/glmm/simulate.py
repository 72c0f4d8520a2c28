"""Simulated data for the GLMM benchmark (case ``sim``), written once to ``.data/``.

Binary random-intercept logit model, 200,000 rows in 2,000 groups ``g`` of
50–150 rows (mean 100):

    logit P(yᵢ = 1) = −0.5 + 0.8·x1ᵢ − 0.4·x2ᵢ + u_g,   u_g ~ N(0, 1),

x1 ~ N(0, 1), x2 ~ Bernoulli(0.5) (stored as 0/1, numeric). Fixed seed, so the
file is the same on every machine with the same numpy; every engine reads it.

    python benchmarks/glmm/simulate.py     # (re)write the file
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


def ensure(name: str = "binary_sim") -> Path:
    """Path of the simulated CSV, written first if it does not exist yet."""
    if name != "binary_sim":
        raise KeyError(f"unknown simulated data set {name!r}")
    path = DATA_DIR / f"{name}.csv"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        simulate_binary().to_csv(tmp, index=False)
        tmp.replace(path)
    return path


if __name__ == "__main__":
    p = DATA_DIR / "binary_sim.csv"
    p.unlink(missing_ok=True)
    print(ensure())
