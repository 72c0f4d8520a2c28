"""Simulated data sets for the benchmark cases (d), (e), (i) and (j).

Each generator is deterministic (fixed seed) and writes a CSV into the cache
directory (``benchmarks/.data`` by default, or ``$BENCH_DATA_DIR``), so every
engine reads byte-identical data. A small JSON file next to each CSV records
the generator version and parameters; a CSV whose record does not match is
regenerated.

Run ``python benchmarks/simulate.py`` to (re)build all files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

VERSION = 1
DATA_DIR = Path(os.environ.get("BENCH_DATA_DIR", Path(__file__).resolve().parent / ".data"))

# (d) InstEval-shaped crossed design; variance components close to lme4's
# estimates on the real InstEval data (sd s 0.33, d 0.52, dept 0.1, sigma 1.18).
INSTEVAL = {
    "seed": 20240601,
    "n_rows": 73_421,
    "n_s": 2_972,
    "n_d": 1_128,
    "n_dept": 14,
    "intercept": 3.2,
    "service_effect": -0.07,
    "p_service": 0.43,
    "sd_s": 0.33,
    "sd_d": 0.52,
    "sd_dept": 0.10,
    "sigma": 1.18,
}

# (e) large two-level design with a correlated random intercept and slope.
LARGE = {
    "seed": 20240602,
    "n_rows": 1_000_000,
    "n_groups": 10_000,
    "beta": [1.0, 0.5],
    "sd_intercept": 1.0,
    "sd_slope": 0.5,
    "corr": 0.3,
    "sigma": 1.0,
}

# (i) MovieLens-100k-shaped users x items design: power-law item popularity and
# user activity, every user >= 20 ratings, no user-item pair twice; ratings are
# a rounded latent score on the 1-5 scale (mean 3.5 as in MovieLens-100k).
MOVIELENS = {
    "seed": 20240603,
    "n_rows": 100_000,
    "n_users": 943,
    "n_items": 1_682,
    "min_per_user": 20,
    "user_zipf": 1.0,  # extra ratings of the user of activity rank r ~ (r + user_offset)^-1
    "user_offset": 40,
    "item_zipf": 1.6,  # popularity of the item of rank r ~ (r + item_offset)^-1.6
    "item_offset": 60,
    "intercept": 3.55,
    "sd_user": 0.45,
    "sd_item": 0.55,
    "sigma": 0.95,
}

# (j) random 5,000 x 5,000 crossed design: both factors drawn uniformly.
CROSSED_5000 = {
    "seed": 20240604,
    "n_rows": 30_000,
    "n_a": 5_000,
    "n_b": 5_000,
    "beta": [1.0, 0.5],
    "sd_a": 1.0,
    "sd_b": 0.7,
    "sigma": 1.0,
}


def _group_sizes(rng: np.random.Generator, n_rows: int, n_groups: int, minimum: int) -> np.ndarray:
    """Random group sizes, each at least ``minimum``, summing to ``n_rows``."""
    extra = rng.multinomial(n_rows - minimum * n_groups, np.full(n_groups, 1.0 / n_groups))
    return extra + minimum


def simulate_insteval(p: dict) -> pd.DataFrame:
    """Students ``s`` rate lecturers ``d`` (about 25 each); each ``d`` is in one ``dept``."""
    rng = np.random.default_rng(p["seed"])
    n_s, n_d, n_dept = p["n_s"], p["n_d"], p["n_dept"]
    # Each lecturer belongs to one department; the first n_dept lecturers
    # guarantee every department is used.
    dept_of_d = rng.integers(0, n_dept, n_d)
    dept_of_d[:n_dept] = np.arange(n_dept)
    # Lecturer popularity varies (lognormal weights); each student rates a
    # distinct set of lecturers.
    weight = rng.lognormal(0.0, 0.8, n_d)
    weight /= weight.sum()
    sizes = _group_sizes(rng, p["n_rows"], n_s, minimum=5)
    d_lists = [rng.choice(n_d, size=k, replace=False, p=weight) for k in sizes]
    _cover_all_lecturers(rng, d_lists, n_d)
    s = np.repeat(np.arange(n_s), sizes)
    d = np.concatenate(d_lists)
    service = (rng.random(len(s)) < p["p_service"]).astype(np.int64)
    b_s = rng.normal(0.0, p["sd_s"], n_s)
    b_d = rng.normal(0.0, p["sd_d"], n_d)
    b_dept = rng.normal(0.0, p["sd_dept"], n_dept)
    dept = dept_of_d[d]
    y = (
        p["intercept"]
        + p["service_effect"] * service
        + b_s[s]
        + b_d[d]
        + b_dept[dept]
        + rng.normal(0.0, p["sigma"], len(s))
    )
    return pd.DataFrame({"y": y, "service": service, "s": s + 1, "d": d + 1, "dept": dept + 1})


def _cover_all_lecturers(rng: np.random.Generator, d_lists: list[np.ndarray], n_d: int) -> None:
    """Make every lecturer (item) rated at least once by swapping in unrated ones."""
    counts = np.bincount(np.concatenate(d_lists), minlength=n_d)
    for missing in np.flatnonzero(counts == 0):
        while True:
            i = int(rng.integers(len(d_lists)))
            j = int(rng.integers(len(d_lists[i])))
            old = int(d_lists[i][j])
            if counts[old] > 1 and missing not in d_lists[i]:
                d_lists[i][j] = missing
                counts[old] -= 1
                counts[missing] += 1
                break


def simulate_large(p: dict) -> pd.DataFrame:
    """``y = (b0 + u0) + (b1 + u1) x + e`` with correlated (u0, u1) per group ``g``."""
    rng = np.random.default_rng(p["seed"])
    n_g = p["n_groups"]
    sizes = _group_sizes(rng, p["n_rows"], n_g, minimum=20)
    g = np.repeat(np.arange(n_g), sizes)
    sd = np.array([p["sd_intercept"], p["sd_slope"]])
    cov = np.outer(sd, sd) * np.array([[1.0, p["corr"]], [p["corr"], 1.0]])
    u = rng.multivariate_normal(np.zeros(2), cov, n_g)
    x = rng.normal(0.0, 1.0, len(g))
    b0, b1 = p["beta"]
    y = b0 + u[g, 0] + (b1 + u[g, 1]) * x + rng.normal(0.0, p["sigma"], len(g))
    return pd.DataFrame({"y": y, "x": x, "g": g + 1})


def _zipf_weights(n: int, exponent: float, offset: float) -> np.ndarray:
    w = (np.arange(1, n + 1) + offset) ** -exponent
    return w / w.sum()


def simulate_movielens(p: dict) -> pd.DataFrame:
    """Users rate distinct items; activity and popularity follow shifted Zipf laws.

    User u (activity rank random) rates ``min_per_user`` + a multinomial share
    (Zipf weights) of the remaining ratings; the items are drawn without
    replacement with Zipf popularity weights; unrated items are swapped in.
    ``y`` = intercept + user + item effects + noise, rounded and clipped to 1..5.
    """
    rng = np.random.default_rng(p["seed"])
    n_u, n_i, n = p["n_users"], p["n_items"], p["n_rows"]
    extra = n - p["min_per_user"] * n_u
    w_user = _zipf_weights(n_u, p["user_zipf"], p["user_offset"])[rng.permutation(n_u)]
    sizes = p["min_per_user"] + rng.multinomial(extra, w_user)
    w_item = _zipf_weights(n_i, p["item_zipf"], p["item_offset"])[rng.permutation(n_i)]
    lists = [rng.choice(n_i, size=k, replace=False, p=w_item) for k in sizes]
    _cover_all_lecturers(rng, lists, n_i)
    user = np.repeat(np.arange(n_u), sizes)
    item = np.concatenate(lists)
    b_u = rng.normal(0.0, p["sd_user"], n_u)
    b_i = rng.normal(0.0, p["sd_item"], n_i)
    latent = p["intercept"] + b_u[user] + b_i[item] + rng.normal(0.0, p["sigma"], n)
    y = np.clip(np.rint(latent), 1, 5).astype(np.int64)
    return pd.DataFrame({"y": y, "user": user + 1, "item": item + 1})


def simulate_crossed(p: dict) -> pd.DataFrame:
    """``y = b0 + b1 x + a + b + e`` with factors ``a`` and ``b`` drawn uniformly
    (so a few levels of each may not occur; pairs may repeat)."""
    rng = np.random.default_rng(p["seed"])
    n = p["n_rows"]
    a = rng.integers(0, p["n_a"], n)
    b = rng.integers(0, p["n_b"], n)
    x = rng.normal(0.0, 1.0, n)
    u_a = rng.normal(0.0, p["sd_a"], p["n_a"])
    u_b = rng.normal(0.0, p["sd_b"], p["n_b"])
    b0, b1 = p["beta"]
    y = b0 + b1 * x + u_a[a] + u_b[b] + rng.normal(0.0, p["sigma"], n)
    return pd.DataFrame({"y": y, "x": x, "a": a + 1, "b": b + 1})


GENERATORS = {
    "insteval_sim": (simulate_insteval, INSTEVAL),
    "large_sim": (simulate_large, LARGE),
    "movielens_sim": (simulate_movielens, MOVIELENS),
    "crossed5000_sim": (simulate_crossed, CROSSED_5000),
}


def ensure(name: str, data_dir: Path = DATA_DIR) -> Path:
    """Return the CSV path of data set ``name``, generating it if needed."""
    func, params = GENERATORS[name]
    csv, meta = data_dir / f"{name}.csv", data_dir / f"{name}.json"
    record = {"version": VERSION, "params": params}
    if csv.exists() and meta.exists() and json.loads(meta.read_text()) == record:
        return csv
    data_dir.mkdir(parents=True, exist_ok=True)
    df = func(params)
    tmp = csv.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False, float_format="%.10g")
    tmp.replace(csv)
    meta.write_text(json.dumps(record, indent=1) + "\n")
    return csv


FACTORS = ("s", "d", "dept", "g", "user", "item", "a", "b")


def main() -> None:
    for name in GENERATORS:
        path = ensure(name)
        df = pd.read_csv(path)
        levels = {c: df[c].nunique() for c in df.columns if c in FACTORS}
        print(f"{path}: {len(df)} rows, levels {levels}")


if __name__ == "__main__":
    main()
