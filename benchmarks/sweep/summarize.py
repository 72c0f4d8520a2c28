"""Build REPORT tables from results.jsonl: python3 summarize.py > table.md"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models

R = [
    json.loads(l)
    for l in open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl"))
]
for r in R:
    r.setdefault("round", "1")
keys = [m[0] for m in models.MODELS]
passes = ["ml1", "ml2", "glmm", "mixedlm", "lme4"]


def recs(k, p):
    return [r for r in R if r["key"] == k and r["pass"] == p]


def best_ms(k, p):
    v = [r["median_ms"] for r in recs(k, p) if "median_ms" in r and not r.get("error")]
    return min(v) if v else None


def per_round(k, p):
    return {r["round"]: r.get("median_ms") for r in recs(k, p)}


def last(k, p):
    rs = [r for r in recs(k, p) if not r.get("error")]
    return rs[-1] if rs else None


def fmt(x, d=1):
    if x is None:
        return "—"
    return f"{x:.{d}f}" if x < 100 else f"{x:.0f}"


rows = []
slower = []
worse = []
errors = []
crits = {}
print(
    "| model | n | formula | REML | ml ms (pass 1 / pass 2) | glmm ms | mixedlm ms | lme4 ms | glmm/ml | mixedlm/ml | lme4/ml | evals ml / lme4 | Δcrit ml | Δcrit glmm | Δcrit mixedlm | Δcrit lme4 |"  # noqa: E501 (a table row)
)
print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for k in keys:
    s = models.SPEC[k]
    ms = {p: best_ms(k, p) for p in passes}
    cr = {}
    for p, e in [("ml1", "ml"), ("glmm", "glmm"), ("mixedlm", "mixedlm"), ("lme4", "lme4")]:
        r = last(k, p)
        if r and r.get("criterion") is not None:
            cr[e] = r["criterion"]
    for p in passes:
        for r in recs(k, p):
            if r.get("error"):
                errors.append((k, p, r["error"]))
    best = min(cr.values())
    d = {e: cr.get(e, None) for e in ["ml", "glmm", "mixedlm", "lme4"]}
    dd = {e: (None if v is None else v - best) for e, v in d.items()}
    mlv = [x for x in (ms["ml1"], ms["ml2"]) if x]
    mlm = statistics.mean(mlv)
    rat = {e: (ms[e] / mlm if ms[e] else None) for e in ["glmm", "mixedlm", "lme4"]}
    r_ml, r_l4 = last(k, "ml1"), last(k, "lme4")
    n = r_ml["n"] if r_ml else ""
    ev = f"{r_ml.get('evals') if r_ml else '—'} / {r_l4.get('evals') if r_l4 else '—'}"
    l4flag = ""
    if r_l4:
        msgs = set()
        for r in recs(k, "lme4"):
            msgs |= set(r.get("conv_messages") or [])
        if any("converge" in m for m in msgs):
            l4flag = " ⚠conv"
        elif any("singular" in m for m in msgs):
            l4flag = " (sing.)"

    def fd(x):
        if x is None:
            return "—"
        if x == 0:
            return "**0**"
        return f"{x:+.2e}"

    print(
        f"| {k} | {n} | `{s['formula'].replace('|', chr(92) + '|')}` | {'REML' if s['reml'] else 'ML'} | {fmt(ms['ml1'], 2)} / {fmt(ms['ml2'], 2)} | {fmt(ms['glmm'], 2)} | {fmt(ms['mixedlm'], 2)} | {fmt(ms['lme4'], 1)}{l4flag} | "  # noqa: E501 (a table row)
        f"{fmt(rat['glmm'], 2)} | {fmt(rat['mixedlm'], 2)} | {fmt(rat['lme4'], 1)} | {ev} | {fd(dd['ml'])} | {fd(dd['glmm'])} | {fd(dd['mixedlm'])} | {fd(dd['lme4'])} |"  # noqa: E501 (a table row)
    )
    for e in ["glmm", "mixedlm"]:
        if ms[e] is None:
            continue
        r1 = ms[e] / ms["ml1"] if ms["ml1"] else None
        r2 = ms[e] / ms["ml2"] if ms["ml2"] else None
        if (r1 and r1 < 1) or (r2 and r2 < 1):
            slower.append(
                (
                    k,
                    e,
                    ms["ml1"],
                    ms["ml2"],
                    ms[e],
                    r1,
                    r2,
                    per_round(k, "ml1"),
                    per_round(k, "ml2"),
                    per_round(k, e),
                )
            )
    if dd["ml"] is not None and dd["ml"] > 1e-6:
        other = min((e for e in dd if e != "ml" and dd[e] is not None), key=lambda e: dd[e])
        worse.append((k, dd["ml"], other, cr["ml"], best))
    crits[k] = cr
print("\nSLOWER")
for x in slower:
    k, e, a, b, c, r1, r2, p1, p2, pe = x
    rr = []
    for rd in sorted(pe):
        if pe.get(rd) and p1.get(rd) and p2.get(rd):
            rr.append(f"r{rd} {pe[rd] / p1[rd]:.2f}/{pe[rd] / p2[rd]:.2f}")
    print(
        f"- **{k}**: {e} {c:.3f} ms vs multilevel {a:.3f} / {b:.3f} ms → {e}/ml = {r1:.2f} / {r2:.2f} (per round, {e}/ml1 / {e}/ml2: {'; '.join(rr)})"  # noqa: E501 (a table row)
    )
print("\nWORSE")
for k, d, o, c, b in worse:
    print(f"- {k}: ml {c!r} vs best ({o}) {b!r}: +{d:.3e}")
print("\nERRORS")
for k, p, e in sorted(set(errors)):
    print(f"- {k} [{p}]: {e}")
