"""Run all timings, one process at a time: python3 driver.py [PASS ...] [--only k1,k2]
Passes: ml1 glmm mixedlm lme4 ml2 (default all, in that order). Appends to results.jsonl."""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models  # noqa: E402 (beside this file)

PY_SYS = "python3"
PY_BENCH = os.environ.get("BENCH_PYTHON", "/work/benchenv/bin/python")  # glmm, mixedlm
os.makedirs(f"{HERE}/logs", exist_ok=True)
subprocess.run([PY_SYS, f"{HERE}/models.py"], check=True)  # models.json for the R runner
args = [a for a in sys.argv[1:] if not a.startswith("--only")]
only = None
for a in sys.argv[1:]:
    if a.startswith("--only="):
        only = a.split("=", 1)[1].split(",")
passes = args or ["ml1", "glmm", "mixedlm", "lme4", "ml2"]
keys = only or [m[0] for m in models.MODELS]
env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
TIMEOUT = 300
for p in passes:
    for k in keys:
        if p in ("ml1", "ml2"):
            cmd = [PY_SYS, f"{HERE}/run_py.py", "multilevel", k, "7"]
        elif p in ("glmm", "mixedlm"):
            cmd = [PY_BENCH, f"{HERE}/run_py.py", p, k, "5"]
        else:
            cmd = ["Rscript", f"{HERE}/run_lme4.R", k, "3"]
        t0 = time.time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
            out, err = r.stdout, r.stderr
            line = [l for l in out.splitlines() if l.startswith("RESULT")]
            rec = (
                json.loads(line[-1][7:])
                if line
                else dict(
                    engine=p,
                    key=k,
                    error=f"no result (rc {r.returncode}): {err.strip().splitlines()[-1:]}",
                )
            )
        except subprocess.TimeoutExpired:
            out, err = "", ""
            rec = dict(engine=p, key=k, error=f"timeout after {TIMEOUT} s")
        rec["pass"] = p
        rec["round"] = os.environ.get("ROUND", "1")
        rec["wall_process_s"] = time.time() - t0
        rec["loadavg"] = open("/proc/loadavg").read().split()[0]
        rec["other_bench"] = subprocess.run(
            "ps -eo args | grep -c '^[^ ]*python[^ ]* .*benchmarks/run.py'",
            shell=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        with open(f"{HERE}/logs/{p}_{k}.log", "w") as fh:
            fh.write(out + "\n--- stderr ---\n" + err)
        with open(f"{HERE}/results.jsonl", "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")
        print(
            p,
            k,
            rec.get("median_ms"),
            rec.get("criterion"),
            rec.get("error", ""),
            f"{rec['wall_process_s']:.1f}s",
            flush=True,
        )
