"""Time one engine on one model: python run_py.py ENGINE KEY [REPEATS]
ENGINE in multilevel (system python3), glmm, mixedlm (/work/benchenv/bin/python).
Prints one line 'RESULT {json}'."""

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["RAYON_NUM_THREADS"] = "1"
import json
import statistics
import sys
import time
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models

engine, key = sys.argv[1], sys.argv[2]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
spec = models.SPEC[key]
formula, reml = spec["formula"], spec["reml"]


def g(o, name):
    if isinstance(o, dict):
        return o.get(name)
    return getattr(o, name, None)


if engine == "multilevel":
    import multilevel as ml

    def fit(df):
        return ml.lmer(formula, data=df, REML=reml)

    def info(m):
        oi = m.optinfo
        return dict(
            evals=g(oi, "evals"), criterion=float(g(oi, "criterion")), converged=g(oi, "converged")
        )
elif engine == "glmm":
    import glmm

    def fit(df):
        return glmm.fit(df, formula, reml=reml)

    def info(m):
        return dict(
            evals=m.n_eval,
            ngrad=m.n_grad,
            criterion=-2.0 * float(m.loglik),
            converged=bool(m.converged),
        )
elif engine == "mixedlm":
    import mixedlm

    def fit(df):
        return mixedlm.lmer(formula, df, REML=reml)

    def info(m):
        return dict(
            evals=g(m, "function_evals"), criterion=float(m.REMLcrit()), converged=g(m, "converged")
        )
else:
    raise SystemExit("unknown engine")

res = dict(engine=engine, key=key, reml=reml)
try:
    df = models.load(key)
    res["n"] = len(df)
    with warnings.catch_warnings(record=True) as wl:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        m = fit(df)
        warm = time.perf_counter() - t0
    res["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:150]}" for w in wl})
    n = repeats
    if engine != "multilevel" and warm > 20:
        n = 3
    if warm > 90:
        n = 0
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # at least n fits; small fits repeated up to 25 times or ~1 s in all
        while len(times) < n or (n and len(times) < 25 and sum(times) < 1.0):
            t0 = time.perf_counter()
            m = fit(df)
            times.append(time.perf_counter() - t0)
    res.update(
        warmup_s=warm, times_s=times, median_ms=1000 * statistics.median(times if times else [warm])
    )
    res.update(info(m))
except Exception as e:
    traceback.print_exc()
    res["error"] = f"{type(e).__name__}: {str(e)[:300]}"
print("RESULT " + json.dumps(res, default=str), flush=True)
