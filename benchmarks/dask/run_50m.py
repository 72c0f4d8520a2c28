"""Out-of-core LMM: 50,000,000 rows in 100,000 groups (random intercept and
slope) written as Parquet and fitted with `multilevel.lmer` on a local
dask.distributed cluster; plus the in-memory fit of a smaller size.

    python benchmarks/dask/run_50m.py [--rows 50000000] [--groups 100000]
        [--workers 2] [--memory-limit 3GB] [--inmem-rows 10000000]

Prints and writes benchmarks/dask/results.json: wall times per phase, peak
resident memory per worker and in the client, the estimates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import multilevel as ml  # noqa: E402

FORMULA = "y ~ 1 + x + (1 + x | g)"


def write_parquet(path: Path, rows: int, groups: int, chunk: int = 1_000_000) -> None:
    """Chunks of rows with fixed seeds: u0 ~ N(0,1), u1 ~ N(0, 0.5²), corr 0.3."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    cov = np.array([[1.0, 0.15], [0.15, 0.25]])
    u = rng.multivariate_normal([0, 0], cov, size=groups)
    for i, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        r = np.random.default_rng(i)
        g = r.integers(0, groups, n)
        x = r.normal(size=n)
        y = 1 + 0.5 * x + u[g, 0] + u[g, 1] * x + r.normal(size=n)
        pd.DataFrame({"y": y, "x": x, "g": g.astype(np.int64)}).to_parquet(
            path / f"part-{i:04d}.parquet", index=False
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000_000)
    ap.add_argument("--groups", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="3GB")
    ap.add_argument("--inmem-rows", type=int, default=10_000_000)
    ap.add_argument(
        "--data", default=os.environ.get("BENCH_DATA_DIR", str(ROOT / "benchmarks/.data"))
    )
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    path = Path(args.data) / f"lmm_{args.rows}_{args.groups}.parquet"
    out: dict = {
        "rows": args.rows,
        "groups": args.groups,
        "workers": args.workers,
        "memory_limit": args.memory_limit,
        "formula": FORMULA,
    }
    t = time.perf_counter()
    if not path.exists():
        write_parquet(path, args.rows, args.groups)
    out["write_s"] = time.perf_counter() - t

    warnings.simplefilter("ignore")
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=args.memory_limit,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        t = time.perf_counter()
        fit = ml.lmer(FORMULA, str(path))
        out["fit_s"] = time.perf_counter() - t
        out["evals"] = fit.optinfo.evals
        out["worker_peak_rss_mb"] = client.run(
            lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
    out["client_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["fixef"] = fit.fixef.to_dict()
    out["varcorr"] = fit.varcorr.assign(
        var1=fit.varcorr.var1.astype(str), var2=fit.varcorr.var2.astype(str)
    ).to_dict("records")
    out["loglik"] = fit.loglik

    if args.inmem_rows:
        import subprocess

        code = f"""
import sys, time, resource, warnings, numpy as np, pandas as pd
sys.path.insert(0, {str(ROOT / "src")!r})
import multilevel as ml
warnings.simplefilter('ignore')
import glob
files = sorted(glob.glob({str(path)!r} + '/*.parquet'))
need = {args.inmem_rows}
parts, n = [], 0
for f in files:
    parts.append(pd.read_parquet(f)); n += len(parts[-1])
    if n >= need: break
df = pd.concat(parts, ignore_index=True).iloc[:need]
t = time.perf_counter(); fit = ml.lmer({FORMULA!r}, df); el = time.perf_counter() - t
print(el, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(df))
"""
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        el, rss, n = res.stdout.split()
        out["inmem"] = {"rows": int(n), "fit_s": float(el), "peak_rss_mb": float(rss)}
    print(json.dumps(out, indent=2))
    (ROOT / "benchmarks/dask/results.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
