"""Text reports in the layouts R users know (lme4's ``summary(merMod)``).

Numbers follow R's ``format()`` rule: a column is printed with the fewest
decimals that show every entry to ``digits`` significant digits (trailing
zeros not counted), so the tables read like R's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from multilevel.lmm.results import LmerFit


def decimals_needed(x: float, digits: int) -> int:
    """Decimals that show ``x`` to ``digits`` significant digits, as R's formatReal."""
    if not math.isfinite(x) or x == 0:
        return 0
    e = math.floor(math.log10(abs(x)))
    dec = max(0, digits - 1 - e)
    s = f"{abs(x):.{dec}f}"
    # rounding may carry into a new digit (9.9996 -> 10.000)
    if "." in s:
        s = s.rstrip("0")
        dec = len(s.split(".")[1]) if "." in s and not s.endswith(".") else 0
    return dec


def format_r(values: Sequence[float], digits: int = 4) -> list[str]:
    """Format a column as R's ``format(x, digits=)`` does (fixed notation)."""
    vals = [float(v) for v in values]
    dec = max((decimals_needed(v, digits) for v in vals), default=0)
    dec = min(dec, 15)
    out = []
    for v in vals:
        if math.isnan(v):
            out.append("NA")
        else:
            out.append(f"{v:.{dec}f}")
    return out


def abbreviate(name: str, minlength: int) -> str:
    """R's ``abbreviate()``: drop lower-case vowels from the right, then lower-case
    letters from the right (never the first character), then truncate."""
    if len(name) <= minlength:
        return name
    chars = list(name)
    for pool in ("aeiou", "abcdefghijklmnopqrstuvwxyz"):
        i = len(chars) - 1
        while len(chars) > minlength and i > 0:
            if chars[i] in pool:
                del chars[i]
            i -= 1
        if len(chars) <= minlength:
            return "".join(chars)
    return "".join(chars[:minlength])


def table(rows: list[list[str]], header: list[str] | None, align_left_first: bool = True) -> str:
    """Right-aligned columns, the first (row names) left-aligned."""
    allrows = ([header] if header is not None else []) + rows
    ncol = max(len(r) for r in allrows)
    allrows = [r + [""] * (ncol - len(r)) for r in allrows]
    widths = [max(len(r[j]) for r in allrows) for j in range(ncol)]
    lines = []
    for r in allrows:
        cells = []
        for j, cell in enumerate(r):
            if j == 0 and align_left_first:
                cells.append(cell.ljust(widths[j]))
            else:
                cells.append(cell.rjust(widths[j]))
        lines.append(" ".join(cells))
    return "\n".join(lines)


def quantile_line(q: np.ndarray, digits: int = 4) -> str:
    labels = ["Min", "1Q", "Median", "3Q", "Max"]
    vals = format_r(q, digits)
    width = max(max(len(v) for v in vals), max(len(lab) for lab in labels))
    return (
        " ".join(lab.rjust(width) for lab in labels)
        + " \n"
        + " ".join(v.rjust(width) for v in vals)
        + " "
    )


def correlation_block(names: list[str], corr: np.ndarray) -> str:
    """Lower triangle of a correlation matrix with R's abbreviated labels."""
    p = len(names)
    rows_names = [abbreviate(nm, 11) for nm in names[1:]]
    col_names = [abbreviate(nm, 6) for nm in names[:-1]]
    rows = []
    for i in range(1, p):
        row = [rows_names[i - 1]]
        for j in range(p - 1):
            row.append(f"{corr[i, j]:.3f}" if j < i else "")
        rows.append(row)
    widths = [max(len(c), 6) for c in col_names]
    lines = [
        " " * max(len(r) for r in rows_names)
        + " "
        + " ".join(c.ljust(w) for c, w in zip(col_names, widths, strict=True))
    ]
    rw = max(len(r) for r in rows_names)
    for row in rows:
        cells = [row[0].ljust(rw)]
        for j, w in enumerate(widths):
            v = row[j + 1]
            cells.append(v.rjust(w) if v else " " * w)
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _format_sci(values: list[float], digits: int) -> list[str]:
    """R's scientific format: the fewest significant digits (at most ``digits``)
    that show every value to ``digits`` significant digits, exponent ≥ 2 digits."""
    sig = 1
    for v in values:
        target = float(f"{v:.{digits - 1}e}")
        for d in range(1, digits + 1):
            if float(f"{v:.{d - 1}e}") == target:
                sig = max(sig, d)
                break
    out = []
    for v in values:
        mant, exp = f"{v:.{sig - 1}e}".split("e")
        out.append(f"{mant}e{int(exp):+03d}")
    return out


def format_numbers(values: list[float], digits: int) -> list[str]:
    """R's ``format(x, digits=)``: fixed notation unless scientific is narrower."""
    fixed = format_r(values, digits)
    sci = _format_sci(values, digits)
    if max(map(len, fixed)) <= max(map(len, sci)):
        return fixed
    return sci


def format_pvalues(p: np.ndarray, digits: int = 3) -> list[str]:
    """R's ``format.pval``: p-values down to 1e-4 (exponent ≥ −4 when digits > 1)
    formatted together, smaller ones together, those below machine epsilon as
    ``< 2e-16``."""
    out = ["NA"] * len(p)
    eps = np.finfo(float).eps
    ok = [i for i, v in enumerate(p) if np.isfinite(v) and v >= eps]
    lim = -4 if digits > 1 else -3
    fixed = [i for i in ok if math.floor(math.log10(p[i])) >= lim]
    small = [i for i in ok if math.floor(math.log10(p[i])) < lim]
    for group in (fixed, small):
        if group:
            for i, txt in zip(group, format_numbers([p[i] for i in group], digits), strict=True):
                out[i] = txt
    for i, v in enumerate(p):
        if np.isfinite(v) and v < eps:
            out[i] = "< 2e-16"
    return out


def stars(p: float) -> str:
    if not np.isfinite(p):
        return ""
    for cut, s in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p <= cut:
            return s
    return ""


def lmer_summary(fit: LmerFit, coefs=None, ddf: str | None = None) -> str:
    """lme4's ``print(summary(fit))`` layout; with a ``coefs`` table holding df
    and p-values, lmerTest's fixed-effects table."""
    method = "REML" if fit.REML else "maximum likelihood "
    out = [f"Linear mixed model fit by {method} ['lmerMod']"]
    out.append(f"Formula: {fit.formula}")
    out.append(f"   Data: {fit.data_name}")
    if fit.design.n_dropped:
        out.append(f"   ({fit.design.n_dropped} observations deleted due to missingness)")
    out.append("")
    if fit.REML:
        out.append(f"REML criterion at convergence: {fit.reml_criterion:.1f}")
    else:
        vals = [fit.aic, fit.bic, fit.loglik, fit.deviance, float(fit.df_resid)]
        labels = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
        cells = [f"{v:.1f}" for v in vals[:4]] + [str(int(vals[4]))]
        w = max(len(c) for c in labels + cells)
        out.append(" ".join(a.rjust(w) for a in labels) + " ")
        out.append(" ".join(a.rjust(w) for a in cells) + " ")
    out.append("")
    q = fit.residual_quantiles()
    out.append("Scaled residuals: ")
    out.append(quantile_line(q))
    out.append("")
    out.append("Random effects:")
    out.append(random_effects_block(fit))
    groups = "; ".join(f"{g}, {n}" for g, n in fit.ngroups.items())
    out.append(f"Number of obs: {fit.nobs}, groups:  {groups}")
    out.append("")
    out.append("Fixed effects:" if coefs is None else f"Fixed effects ({ddf} df):")
    est = fit.fixef.to_numpy()
    se = fit.se.to_numpy()
    both = format_r(np.concatenate([est, se]), 4)
    tv = format_r(est / se, 4)
    names = list(fit.fixef.index)
    if coefs is None:
        rows = [[nm, both[i], both[len(est) + i], tv[i]] for i, nm in enumerate(names)]
        out.append(table(rows, ["", "Estimate", "Std. Error", "t value"]))
    else:
        dfs = format_r(coefs["df"].to_numpy(), 4)
        ps = coefs["Pr(>|t|)"].to_numpy()
        ptxt = format_pvalues(ps)
        rows = [
            [nm, both[i], both[len(est) + i], dfs[i], tv[i], ptxt[i], stars(ps[i])]
            for i, nm in enumerate(names)
        ]
        out.append(table(rows, ["", "Estimate", "Std. Error", "df", "t value", "Pr(>|t|)", ""]))
        out.append("---")
        out.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
    if len(names) > 1:
        out.append("")
        out.append("Correlation of Fixed Effects:")
        v = fit.vcov.to_numpy()
        d = np.sqrt(np.diag(v))
        out.append(correlation_block(names, v / np.outer(d, d)))
    notes = []
    if fit.singular:
        notes.append(fit.singular_message)
    notes.extend(fit.optinfo.messages)
    if notes:
        out.append("")
        out.extend(notes)
    return "\n".join(out)


def random_effects_block(fit) -> str:
    """lme4's random-effects table: Groups, Name, Variance, Std.Dev. (and Corr),
    with the Residual row for models that have a scale parameter."""
    vc = fit.varcorr
    variances = vc[vc["var2"].isna()]
    var_txt = format_numbers(list(variances["vcov"]), 4)
    sd_txt = format_numbers(list(variances["sdcor"]), 4)
    show_corr = any(r.q > 1 for r in fit.design.random)
    rows: list[list[str]] = []
    k = 0
    for name, cnames, corr in fit._varcorr_blocks():
        for i, cn in enumerate(cnames):
            row = [name if i == 0 else "", cn, var_txt[k], sd_txt[k]]
            if show_corr:
                row.append(" ".join(f"{corr[i, j]:.2f}" for j in range(i)))
            rows.append(row)
            k += 1
    if fit._has_residual:
        rows.append(["Residual", "", var_txt[k], sd_txt[k]] + ([""] if show_corr else []))
    header = ["Groups", "Name", "Variance", "Std.Dev."] + (["Corr"] if show_corr else [])
    for j in (2, 3):  # numbers share the column's width and align right inside it
        w = max(len(r[j]) for r in rows)
        for r in rows:
            r[j] = r[j].rjust(w)
    widths = [max(len(r[j]) for r in rows + [header]) for j in range(len(header))]
    return "\n".join(
        " " + " ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header] + rows
    )


def varcorr_records(vc) -> list[dict]:
    """The rows of a fit's ``varcorr`` table as plain dicts (JSON-ready)."""
    return [
        {
            "grp": r.grp,
            "var1": r.var1 if isinstance(r.var1, str) else None,
            "var2": r.var2 if isinstance(r.var2, str) else None,
            "vcov": float(r.vcov),
            "sdcor": float(r.sdcor),
        }
        for r in vc.itertuples()
    ]


def table_records(df: pd.DataFrame) -> dict:
    """A table as JSON-ready columns, row labels and rows of values."""
    return {
        "columns": [str(c) for c in df.columns],
        "rows": [str(i) for i in df.index],
        "data": [[_plain(v) for v in row] for row in df.itertuples(index=False)],
    }


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v if isinstance(v, (int, str, bool)) or v is None else str(v)


def ranef_records(ranef: dict[str, pd.DataFrame], condsd: dict[str, pd.DataFrame] | None) -> dict:
    """Per grouping factor: its levels, the terms, the conditional modes and
    (where known) their conditional standard deviations, row by level."""
    out = {}
    for g, df in ranef.items():
        entry = {
            "levels": [str(i) for i in df.index],
            "terms": [str(c) for c in df.columns],
            "values": df.to_numpy(dtype=float).tolist(),
        }
        if condsd is not None and g in condsd:
            entry["condsd"] = condsd[g].to_numpy(dtype=float).tolist()
        out[g] = entry
    return out


def optimizer_record(rec) -> dict:
    """How the search ended: optimizer, status, evaluations, criterion, largest |gradient|."""
    g = getattr(rec, "gradient", None)
    gmax = None
    if g is not None and np.size(g):
        gmax = float(np.max(np.abs(np.asarray(g, dtype=float))))
    return {
        "name": rec.optimizer,
        "status": rec.status,
        "converged": bool(rec.converged),
        "evals": int(rec.evals),
        "criterion": float(rec.criterion),
        "max_abs_gradient": gmax,
    }


def _frame(obj) -> pd.DataFrame | None:
    if isinstance(obj, pd.DataFrame):
        return obj
    if isinstance(obj, pd.Series):
        return obj.to_frame(obj.name or "value")
    return None


def fit_messages(fit) -> list[str]:
    """What a fit has to say: dropped rows and columns, convergence, boundary."""
    out = list(fit.design.messages) + list(fit.optinfo.messages)
    if getattr(fit, "singular", False):
        out.append(fit.singular_message)
    return out


def fit_html(fit) -> str:
    """A fit as HTML tables for a notebook: the summary's heading lines, fit
    statistics, the variance components, the coefficient table, the
    residual structures and the fit's messages."""
    import html

    text = str(fit.summary())
    head = []
    for line in text.splitlines():
        if not line.strip():
            break
        head.append(line.strip())
    parts = [f"<p><b>{html.escape(head[0])}</b></p>"] if head else []
    parts += [f"<p>{html.escape(h)}</p>" for h in head[1:] if ":" in h]  # Formula:, Data: ...
    stats = {}
    for key, label in (("aic", "AIC"), ("bic", "BIC"), ("loglik", "logLik"),
                       ("deviance", "deviance"), ("df_resid", "df.resid")):  # fmt: skip
        v = getattr(fit, key, None)
        if isinstance(v, (int, float, np.integer, np.floating)):
            stats[label] = v
    tables: list[tuple[str, pd.DataFrame | None]] = [
        ("Fit statistics", pd.DataFrame([stats], index=[""]) if stats else None)
    ]
    vc = getattr(fit, "varcorr", None)
    tables.append(("Random effects", vc if isinstance(vc, pd.DataFrame) else None))
    summ = fit.summary()
    coef = getattr(summ, "coefficients", None)
    if coef is None:
        coef = getattr(summ, "tTable", None)
    tables.append(("Fixed effects", _frame(coef)))
    for key, label in (("corstruct", "Correlation structure"), ("varstruct", "Variance function")):
        tables.append((label, _frame(getattr(fit, key, None))))
    for title, df in tables:
        if df is not None and len(df):
            parts.append(f"<h4>{title}</h4>" + df.to_html(float_format=lambda x: f"{x:.6g}"))
    messages = fit_messages(fit)
    parts += [f"<p><i>{html.escape(str(m))}</i></p>" for m in messages]
    return "<div>" + "\n".join(parts) + "</div>"


class TextExport:
    """``to_json`` of a fit's ``to_dict()`` and the notebook view of its summary."""

    def to_json(self, **kwargs) -> str:
        """Every number of the summary as JSON (non-finite values as null)."""
        return to_json(self.to_dict(), **kwargs)

    def _repr_html_(self) -> str:
        return fit_html(self)


def to_json(d: dict, **kwargs) -> str:
    """JSON of a fit's numbers; NaN and infinities become null (strict JSON
    has no token for them)."""
    import json

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(d), allow_nan=False, **kwargs)
