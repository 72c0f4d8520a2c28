"""nlme's ``print(summary(lme))`` layout.

Numbers follow R's printing rules: a numeric column is formatted by R's
``format()`` (the fewest significant digits, at most ``digits``, that show
every entry; one common width; scientific notation when it is narrower than
fixed notation), t-values are first passed through R's ``zapsmall()``,
p-values are rounded to 4 decimals, correlations to 3.  Character matrices
are printed left-aligned, data frames and numeric matrices right-aligned, as
R does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from multilevel.formula.parser import Binary, Call, Name, Node, Num, Paren, Parser, Unary
from multilevel.report import abbreviate

if TYPE_CHECKING:
    from multilevel.workflow.nlme import LmeFit

# --------------------------------------------------------------------------- numbers


def _sci_parts(x: float, digits: int) -> tuple[int, int, bool]:
    """(decimal exponent, significant digits needed, rounding widens) of |x|
    shown to ``digits`` significant digits, as R's ``scientific()``."""
    if x == 0:
        return 0, 1, False
    mant, exp = f"{abs(x):.{digits - 1}e}".split("e")
    kp = int(exp)
    sig = mant.replace(".", "").rstrip("0")
    # rounding carried into a new digit (9.9999999 -> 1e1) but x itself has
    # one digit fewer to the left of the point
    widens = 0 < kp and abs(x) < 10.0**kp
    return kp, max(len(sig), 1), widens


def format_real(values: Sequence[float], digits: int = 7) -> list[str]:
    """R's ``format(x, digits=)`` of a numeric vector: common decimals and
    width; scientific notation when fixed notation would be wider."""
    vals = [0.0 if v == 0 else float(v) for v in values]  # no negative zero
    finite = [v for v in vals if math.isfinite(v)]
    na = len(finite) < len(vals)
    if not finite:
        return ["NA" if math.isnan(v) else ("Inf" if v > 0 else "-Inf") for v in vals]
    neg = any(v < 0 for v in finite)
    rgt = mxsl = mxns = mxl = -(10**9)
    mxe, mne = -(10**9), 10**9
    for v in finite:
        kp, nsig, widens = _sci_parts(v, digits)
        left = kp + 1 - (1 if widens else 0)
        sleft = (v < 0) + (left if left > 0 else 1)
        rgt = max(rgt, nsig - left)
        mxl = max(mxl, left)
        mxsl = max(mxsl, sleft)
        mxns = max(mxns, nsig)
        mxe, mne = max(mxe, kp), min(mne, kp)
    if mxl < 0:
        mxsl = 1 + neg
    rgt = max(rgt, 0)
    width_fixed = mxsl + rgt + (rgt != 0)
    edig = 2 if (mxe >= 100 or mne <= -99) else 1
    d = mxns - 1
    width_sci = neg + (d > 0) + d + 4 + edig
    fixed = width_fixed <= width_sci
    width = width_fixed if fixed else width_sci
    if na:
        width = max(width, 2)
    out = []
    for v in vals:
        if math.isnan(v):
            s = "NA"
        elif math.isinf(v):
            s = "Inf" if v > 0 else "-Inf"
        elif fixed:
            s = f"{v:.{rgt}f}"
        else:
            s = f"{v:.{d}e}"
        out.append(s.rjust(width))
    return out


def zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall()``: round to ``digits`` significant digits of the largest entry."""
    x = np.asarray(x, dtype=float)
    finite = x[np.isfinite(x)]
    mx = float(np.abs(finite).max()) if finite.size else 0.0
    dec = max(0, digits - math.ceil(math.log10(mx))) if mx > 0 else digits
    return np.round(x, dec)


# --------------------------------------------------------------------------- formulas

_SPACED = {"+", "-", "*", "|", "||", "%in%", "~"}


def _deparse_node(node: Node, src: str) -> str:
    if isinstance(node, Name):
        return node.name if _is_syntactic(node.name) else f"`{node.name}`"
    if isinstance(node, Num):
        v = float(node.text)
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    if isinstance(node, Paren):
        return "(" + _deparse_node(node.inner, src) + ")"
    if isinstance(node, Unary):
        return node.op + _deparse_node(node.operand, src)
    if isinstance(node, Binary):
        left, right = _deparse_node(node.left, src), _deparse_node(node.right, src)
        if node.op in _SPACED:
            return f"{left} {node.op} {right}"
        return f"{left}{node.op}{right}"
    if isinstance(node, Call):
        return _deparse_call(node.text)
    return " ".join(src[node.pos : node.end].split())  # pragma: no cover


def _is_syntactic(name: str) -> bool:
    return (
        bool(name)
        and (name[0].isalpha() or name[0] == ".")
        and all(c.isalnum() or c in "._" for c in name)
    )


def _deparse_call(text: str) -> str:
    """``f(a+1,b)`` -> ``f(a + 1, b)``; arguments that are not formula-like
    expressions (named arguments, strings) keep their text."""
    open_ = text.index("(")
    func = text[:open_].strip()
    inner = text[open_ + 1 : text.rindex(")")]
    args, depth, start, quote = [], 0, 0, ""
    for i, ch in enumerate(inner):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(inner[start:i])
            start = i + 1
    args.append(inner[start:])
    out = []
    for a in args:
        try:
            p = Parser(a)
            node = p.expression(0)
            if p.peek().kind != "end":
                raise ValueError
            out.append(_deparse_node(node, a))
        except Exception:  # not a formula expression: keep the text
            out.append(" ".join(a.split()))
    return f"{func}({', '.join(x for x in out if x)})"


def deparse_formula(text: str) -> str:
    """R's ``deparse()`` of a formula: spaces around ``~ + - * |``, none around
    ``: / ^``; a one-sided formula prints as ``~x``."""
    p = Parser(text)
    if p.peek().text == "~":
        p.next()
        return "~" + _deparse_node(p.expression(0), text)
    lhs = p.expression(0)
    p.next()  # "~"
    rhs = p.expression(0)
    return f"{_deparse_node(lhs, text)} ~ {_deparse_node(rhs, text)}"


# --------------------------------------------------------------------------- printing


def _left_matrix(rownames: list[str], colnames: list[str], cells: list[list[str]]) -> list[str]:
    """A character matrix as R prints it with quote = FALSE: left-aligned."""
    rw = max(len(r) for r in rownames)
    widths = [
        max([len(colnames[j])] + [len(row[j]) for row in cells]) for j in range(len(colnames))
    ]
    lines = [" " * rw + "".join(" " + c.ljust(w) for c, w in zip(colnames, widths, strict=True))]
    for name, row in zip(rownames, cells, strict=True):
        lines.append(
            name.ljust(rw) + "".join(" " + c.ljust(w) for c, w in zip(row, widths, strict=True))
        )
    return lines


def _right_table(rownames: list[str], colnames: list[str], cols: list[list[str]]) -> list[str]:
    """A data frame or numeric matrix as R prints it: right-aligned columns,
    left-aligned row names."""
    rw = max(len(r) for r in rownames)
    widths = [max([len(h)] + [len(c) for c in col]) for h, col in zip(colnames, cols, strict=True)]
    lines = [" " * rw + "".join(" " + h.rjust(w) for h, w in zip(colnames, widths, strict=True))]
    for i, name in enumerate(rownames):
        lines.append(
            name.ljust(rw)
            + "".join(" " + col[i].rjust(w) for col, w in zip(cols, widths, strict=True))
        )
    return lines


def _named_vector(names: list[str], cells: list[str]) -> list[str]:
    """A named vector as R prints it: one common width, each entry followed by a space."""
    w = max(max(len(n) for n in names), max(len(c) for c in cells))
    return ["".join(n.rjust(w) + " " for n in names), "".join(c.rjust(w) + " " for c in cells)]


def _corr_cells(corr: np.ndarray) -> list[str]:
    """Lower-triangle correlations (by rows), rounded to 3 decimals and
    formatted together."""
    i, j = np.tril_indices(corr.shape[0], -1)
    return format_real(np.round(corr[i, j], 3), 7)


def _level_block(fit: LmeFit, k: int) -> list[str]:
    lv = fit.levels[k]
    last = k == len(fit.levels) - 1
    r = fit.lmer.design.random[lv.term]
    T = fit.lmer._fac.T[lv.term]
    sigma = fit.sigma
    cov = fit.lmer.sigma**2 * (T @ T.T)  # θ is relative to the whitened model's σ
    sd = np.sqrt(np.diag(cov))
    out = [f" Formula: {deparse_formula('~' + lv.rhs)} | {lv.label}"]
    if r.q == 1:
        names = list(r.cnames) + (["Residual"] if last else [])
        values = list(sd) + ([sigma] if last else [])
        cols = [format_real([v], 7) for v in values]
        out.extend(_right_table(["StdDev:"], names, cols))
        return out
    out.append(" Structure: General positive-definite, Log-Cholesky parametrization")
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd, sd)
    rows = list(r.cnames) + (["Residual"] if last else [])
    sd_txt = format_real(list(sd) + ([sigma] if last else []), 7)
    q = r.q
    cells = [[sd_txt[i]] + [""] * (q - 1) for i in range(len(rows))]
    for j in range(q - 1):
        cells[0][1 + j] = abbreviate(r.cnames[j], 6)
    ctxt = iter(_corr_cells(corr))
    for i in range(1, q):
        for j in range(i):
            cells[i][1 + j] = next(ctxt)
    out.extend(_left_matrix(rows, ["StdDev", "Corr"] + [""] * (q - 2), cells))
    return out


def _fixed_table(fit: LmeFit) -> list[str]:
    tt = fit.tTable
    names = list(tt.index)
    cols = [
        format_real(tt["Value"].to_numpy(), 7),
        format_real(tt["Std.Error"].to_numpy(), 7),
        [str(int(v)) for v in tt["DF"].to_numpy()],
        format_real(zapsmall(tt["t-value"].to_numpy(), 7), 7),
        format_real(np.round(tt["p-value"].to_numpy(), 4), 7),
    ]
    return _right_table(names, ["Value", "Std.Error", "DF", "t-value", "p-value"], cols)


def _fixed_correlation(fit: LmeFit) -> list[str]:
    v = fit.vcov.to_numpy()
    d = np.sqrt(np.diag(v))
    corr = v / np.outer(d, d)
    names = list(fit.vcov.index)
    p = len(names)
    cells = [[""] * (p - 1) for _ in range(p - 1)]
    ctxt = iter(_corr_cells(corr))
    for i in range(1, p):
        for j in range(i):
            cells[i - 1][j] = next(ctxt)
    return _left_matrix(names[1:], [abbreviate(nm, 6) for nm in names[:-1]], cells)


def lme_summary(fit: LmeFit) -> str:
    """The text of nlme's ``print(summary(fit))``."""
    method = "REML" if fit.lmer.REML else "maximum likelihood"
    out = [f"Linear mixed-effects model fit by {method}", f"  Data: {fit.lmer.data_name} "]
    cols = [format_real([v], 7) for v in (fit.aic, fit.bic, fit.loglik)]
    out.extend(_right_table([" "], ["AIC", "BIC", "logLik"], cols))
    out.append("")
    out.append("Random effects:")
    for k in range(len(fit.levels)):
        if k:
            out.append("")
        out.extend(_level_block(fit, k))
    out.append("")
    if fit.struct is not None:
        out.extend(structure_blocks(fit.struct, fit.est.omega))
    out.append(f"Fixed effects:  {deparse_formula(fit.fixed_formula)} ")
    out.extend(_fixed_table(fit))
    if len(fit.fixef) > 1:
        out.append(" Correlation: ")
        out.extend(_fixed_correlation(fit))
    out.append("")
    out.append("Standardized Within-Group Residuals:")
    q = np.quantile(fit.residuals(type="pearson").to_numpy(), [0, 0.25, 0.5, 0.75, 1])
    out.extend(_named_vector(["Min", "Q1", "Med", "Q3", "Max"], format_real(q, 7)))
    out.append("")
    out.append(f"Number of Observations: {fit.nobs}")
    ng = fit.ngroups
    if len(fit.levels) == 1:
        out.append(f"Number of Groups: {next(iter(ng.values()))} ")
    else:
        out.append("Number of Groups: ")
        out.extend(
            _named_vector([lv.label for lv in fit.levels], [str(ng[lv.name]) for lv in fit.levels])
        )
    return "\n".join(out)


def structure_blocks(struct, omega) -> list[str]:
    """nlme's "Correlation Structure" and "Variance function" blocks."""
    out: list[str] = []
    cs, vs = struct.coef(omega)
    if cs is not None:
        cor = struct.cor
        out.append(f"Correlation Structure: {cor.describe()}")
        groups = " | " + "/".join(struct.groups) if struct.groups else ""
        cov = " + ".join(cor.form.covariates) if cor.form.covariates else "1"
        out.append(f" Formula: ~{cov}{groups} ")
        if cor.nlme_class == "corSymm":
            out.append(" Parameter estimate(s):")
            out.append(" Correlation: ")
            m = cor.m
            C = cor.matrix(struct.split(omega)[0])
            names = [str(i + 1) for i in range(m)]
            cells = [[""] * (m - 1) for _ in range(m - 1)]
            i, j = np.tril_indices(m, -1)
            txt = iter(format_real(np.round(C[i, j], 3), 7))
            for a in range(1, m):
                for b in range(a):
                    cells[a - 1][b] = next(txt)
            out.extend(_left_matrix(names[1:], names[:-1], cells))
        else:
            out.append(" Parameter estimate(s):")
            out.extend(_named_vector(list(cs.index), format_real(cs.to_numpy(), 7)))
    if vs is not None:
        var = struct.var
        out.append("Variance function:")
        out.append(f" Structure: {var.describe()}")
        form = var.form.text.replace(" ", "") if hasattr(var, "form") else ""
        form = form.replace("~", "~", 1).replace("|", " | ")
        out.append(f" Formula: {form} ")
        if len(vs):
            out.append(" Parameter estimates:")
            out.extend(_named_vector([str(k) for k in vs.index], format_real(vs.to_numpy(), 7)))
    return out


def gls_summary(fit) -> str:
    """The text of nlme's ``print(summary(gls))``."""
    method = "REML" if fit.REML else "maximum likelihood"
    out = [f"Generalized least squares fit by {method}",
           f"  Model: {deparse_formula(fit.model)} ", f"  Data: {fit.data_name} "]  # fmt: skip
    cols = [format_real([v], 7) for v in (fit.aic, fit.bic, fit.loglik)]
    out.extend(_right_table([" "], ["AIC", "BIC", "logLik"], cols))
    out.append("")
    blocks = structure_blocks(fit.struct, fit.est.omega)
    if blocks:
        out.extend(blocks)
        out.append("")
    out.append("Coefficients:")
    tt = fit.tTable
    cols = [
        format_real(tt["Value"].to_numpy(), 7),
        format_real(tt["Std.Error"].to_numpy(), 7),
        format_real(zapsmall(tt["t-value"].to_numpy(), 7), 7),
        format_real(np.round(tt["p-value"].to_numpy(), 4), 7),
    ]
    out.extend(_right_table(list(tt.index), ["Value", "Std.Error", "t-value", "p-value"], cols))
    if len(tt) > 1:
        out.append("")
        out.append(" Correlation: ")
        out.extend(_fixed_correlation(fit))
    out.append("")
    out.append("Standardized residuals:")
    q = np.quantile(fit.residuals(type="pearson").to_numpy(), [0, 0.25, 0.5, 0.75, 1])
    out.extend(_named_vector(["Min", "Q1", "Med", "Q3", "Max"], format_real(q, 7)))
    out.append("")
    out.append(f"Residual standard error: {format_real([fit.sigma], 7)[0].strip()} ")
    out.append(f"Degrees of freedom: {fit.nobs} total; {fit.df_resid} residual")
    return "\n".join(out)


__all__ = [
    "deparse_formula",
    "format_real",
    "gls_summary",
    "lme_summary",
    "structure_blocks",
    "zapsmall",
]
