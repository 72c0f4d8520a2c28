"""Rendering of level-wise model equations as plain text and LaTeX.

The objects here are purely presentational: :mod:`multilevel.workflow.hlm` builds
them from a model specification (symbolic) or a fit (with estimates) and this
module turns them into lines such as ::

    β0j = γ00 + γ01·meanses_j + γ02·sectorCatholic_j + u0j
    β0j = 12.128 + 5.333·meanses_j + 1.227·sectorCatholic_j + u0j

or ``\\beta_{0j} = \\gamma_{00} + \\gamma_{01}\\,\\text{meanses}_{j} + …``.

Numbers in one equation are formatted together by R's ``format()`` rule (the
fewest decimals that show every entry to ``digits`` significant digits), so a
row of coefficients reads like a column of R output; a number that this rule
would round to zero is written in scientific notation instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from multilevel.report import decimals_needed

_GREEK_TEXT = {"beta": "β", "gamma": "γ", "pi": "π", "tau": "τ", "sigma": "σ"}
_GREEK_LATEX = {
    "beta": r"\beta",
    "gamma": r"\gamma",
    "pi": r"\pi",
    "tau": r"\tau",
    "sigma": r"\sigma",
}
_MAX_DECIMALS = 8
_SIMPLE_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "_": r"\_",
    "^": r"\^{}",
    "%": r"\%",
    "#": r"\#",
    "&": r"\&",
    "$": r"\$",
    "~": r"\textasciitilde{}",
}


@dataclass(frozen=True)
class Symbol:
    """A model symbol such as β_{0j}, γ_{01}, u_{0j}, r_{ij} or σ²."""

    base: str  # "beta", "gamma", "pi", "u", "r", "e", "tau", "sigma2"
    indices: tuple[int, ...] = ()
    letters: str = ""  # unit subscripts, e.g. "j", "ij", "jk"

    def _index_text(self) -> str:
        sep = "," if any(i >= 10 for i in self.indices) else ""
        idx = sep.join(str(i) for i in self.indices)
        if idx and self.letters:
            return idx + sep + self.letters
        return idx or self.letters

    def text(self) -> str:
        if self.base == "sigma2":
            return "σ²"
        base = _GREEK_TEXT.get(self.base, self.base)
        sub = self._index_text()
        if not self.indices and self.letters:
            return f"{base}_{sub}"
        return base + sub

    def latex(self) -> str:
        if self.base == "sigma2":
            return r"\sigma^{2}"
        base = _GREEK_LATEX.get(self.base, self.base)
        sub = self._index_text()
        return f"{base}_{{{sub}}}" if sub else base


@dataclass(frozen=True)
class Variable:
    """A data variable with its unit subscripts, e.g. cses_ij or meanses_j."""

    name: str
    letters: str

    def text(self) -> str:
        name = self.name if _SIMPLE_NAME.match(self.name) else f"({self.name})"
        return f"{name}_{self.letters}" if self.letters else name

    def latex(self) -> str:
        body = rf"\text{{{latex_escape(self.name)}}}"
        return f"{body}_{{{self.letters}}}" if self.letters else body


@dataclass
class Term:
    """coefficient × product of variables; ``value`` replaces the coefficient's
    symbol when estimates are shown (NaN for an aliased, dropped column)."""

    coef: Symbol
    variables: tuple[Variable, ...] = ()
    value: float | None = None


@dataclass
class Equation:
    """``lhs = Σ fixed terms + Σ random terms (+ residual)``."""

    lhs: Symbol | Variable
    fixed: list[Term]
    random: list[Term] = field(default_factory=list)
    residual: Symbol | None = None


@dataclass
class VarianceRow:
    """One variance or covariance of the random effects (or the residual)."""

    kind: str  # "var" or "cov"
    symbols: tuple[Symbol, ...]  # the random effect(s): (u0j,) or (u0j, u1j)
    tau: Symbol | None  # τ00, τ01, σ² (None where the notation has no name)
    value: float
    scale: float  # standard deviation (var) or correlation (cov)


# --------------------------------------------------------------------------- numbers


def format_numbers(values: Sequence[float], digits: int = 4) -> list[str]:
    """Format numbers together: the decimals R's ``format(x, digits=)`` would
    use for the whole set (capped), scientific notation for entries that would
    otherwise show no significant digit."""
    if digits < 1:
        raise ValueError("digits must be at least 1")
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    # entries needing more than _MAX_DECIMALS go to scientific notation and do not
    # widen the others
    dec = max(
        (d for d in (decimals_needed(v, digits) for v in finite) if d <= _MAX_DECIMALS),
        default=0,
    )
    out = []
    for v in values:
        if v is None or not math.isfinite(float(v)):
            out.append("NA" if v is None or math.isnan(float(v)) else str(v))
        elif v != 0 and (
            abs(v) < 0.5 * 10.0**-dec or decimals_needed(float(v), digits) > _MAX_DECIMALS
        ):
            out.append(f"{v:.{digits - 1}e}")
        else:
            out.append(f"{v:.{dec}f}")
    return out


def _latex_number(s: str) -> str:
    m = re.fullmatch(r"(-?[0-9.]+)e([+-])0*([0-9]+)", s)
    if m is None:
        return s
    sign = "-" if m.group(2) == "-" else ""
    return rf"{m.group(1)} \times 10^{{{sign}{m.group(3)}}}"


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in a variable name."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


# --------------------------------------------------------------------------- equations


def _split_sign(s: str) -> tuple[bool, str]:
    return (True, s[1:]) if s.startswith("-") else (False, s)


def render_equation(
    eq: Equation, *, latex: bool = False, estimates: bool = False, digits: int = 4
) -> str:
    """One equation as text or LaTeX, symbolic or with the estimates filled in."""
    use_values = estimates and any(t.value is not None for t in eq.fixed)
    numbers = format_numbers([t.value for t in eq.fixed], digits) if use_values else []
    dot = r"\," if latex else "·"
    times = r" \cdot " if latex else "·"
    pieces: list[tuple[bool, str]] = []  # (negative, text)
    for k, term in enumerate(eq.fixed):
        vars_text = times.join(v.latex() if latex else v.text() for v in term.variables)
        if use_values and term.value is not None:
            neg, num = _split_sign(numbers[k])
            if latex:
                num = _latex_number(num)
            body = f"{num}{dot}{vars_text}" if vars_text else num
        else:
            neg = False
            sym = term.coef.latex() if latex else term.coef.text()
            body = f"{sym}{dot}{vars_text}" if vars_text else sym
        pieces.append((neg, body))
    for term in eq.random:
        sym = term.coef.latex() if latex else term.coef.text()
        vars_text = times.join(v.latex() if latex else v.text() for v in term.variables)
        pieces.append((False, f"{sym}{dot}{vars_text}" if vars_text else sym))
    if eq.residual is not None:
        pieces.append((False, eq.residual.latex() if latex else eq.residual.text()))
    rhs = ""
    for k, (neg, body) in enumerate(pieces):
        if k == 0:
            rhs = f"-{body}" if neg else body
        else:
            rhs += f" - {body}" if neg else f" + {body}"
    if not rhs:
        rhs = "0"
    lhs = eq.lhs.latex() if latex else eq.lhs.text()
    return f"{lhs} = {rhs}"


def _variance_label(row: VarianceRow, latex: bool) -> str:
    syms = ", ".join(s.latex() if latex else s.text() for s in row.symbols)
    if latex:
        op = r"\operatorname{Var}" if row.kind == "var" else r"\operatorname{Cov}"
    else:
        op = "Var" if row.kind == "var" else "Cov"
    return f"{op}({syms})"


def render_variances(
    rows: Sequence[VarianceRow], *, latex: bool = False, digits: int = 4
) -> list[str]:
    """Lines ``Var(u0j) = τ00 = 2.380 (SD 1.543)``, ``Cov(u0j, u1j) = … (corr …)``."""
    out = []
    labels = [_variance_label(r, latex) for r in rows]
    taus = ["" if r.tau is None else (r.tau.latex() if latex else r.tau.text()) for r in rows]
    values = [format_numbers([r.value], digits)[0] for r in rows]
    scales = [
        format_numbers([r.scale], min(digits, 3) if r.kind == "cov" else digits)[0] for r in rows
    ]
    if latex:
        for lab, tau, val, sc, r in zip(labels, taus, values, scales, rows, strict=True):
            what = r"\text{SD}" if r.kind == "var" else r"\text{corr}"
            mid = f" = {tau}" if tau else ""
            out.append(f"{lab}{mid} &= {_latex_number(val)} \\quad ({what}\\ {_latex_number(sc)})")
        return out
    wl = max((len(s) for s in labels), default=0)
    wt = max((len(s) for s in taus), default=0)
    wv = max((len(s) for s in values), default=0)
    for lab, tau, val, sc, r in zip(labels, taus, values, scales, rows, strict=True):
        what = "SD" if r.kind == "var" else "corr"
        mid = (f" = {tau.ljust(wt)}" if tau else " " * (wt + 3)) if wt else ""
        out.append(f"{lab.ljust(wl)}{mid} = {val.rjust(wv)}  ({what} {sc})")
    return out


@dataclass
class Section:
    """A titled block of equations (or of variance lines)."""

    title: str
    equations: list[Equation] = field(default_factory=list)
    estimates: bool = False
    variances: list[VarianceRow] = field(default_factory=list)
    note: str = ""  # e.g. the lme4 formula, shown in text only


def render_text(sections: Sequence[Section], *, header: str = "", digits: int = 4) -> str:
    lines = [header] if header else []
    for sec in sections:
        title = f"{sec.title}: {sec.note}" if sec.note else f"{sec.title}:"
        lines.append(title)
        for eq in sec.equations:
            lines.append("  " + render_equation(eq, estimates=sec.estimates, digits=digits))
        for line in render_variances(sec.variances, digits=digits):
            lines.append("  " + line)
    return "\n".join(lines)


def render_latex(sections: Sequence[Section], *, digits: int = 4) -> str:
    r"""An amsmath ``align*`` environment: section titles as ``\intertext``,
    one row per equation aligned at the ``=`` sign."""
    rows: list[str] = []
    for sec in sections:
        rows.append(rf"\intertext{{{latex_escape(sec.title)}:}}")
        for eq in sec.equations:
            text = render_equation(eq, latex=True, estimates=sec.estimates, digits=digits)
            lhs, rhs = text.split(" = ", 1)
            rows.append(f"{lhs} &= {rhs}")
        rows.extend(render_variances(sec.variances, latex=True, digits=digits))
    out = []
    last_row = max((k for k, r in enumerate(rows) if not r.startswith(r"\intertext")), default=-1)
    for k, row in enumerate(rows):
        is_eq = not row.startswith(r"\intertext")
        out.append(row + (r" \\" if is_eq and k < last_row else ""))
    return "\\begin{align*}\n" + "\n".join(out) + "\n\\end{align*}"
