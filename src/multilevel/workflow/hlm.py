r"""Level-wise (HLM-style) model specification: equations per level, expanded
to one lme4 formula, fitted by :func:`multilevel.lmer`, printed back as
equations with the estimates filled in.

Two levels (Raudenbush & Bryk's notation; i = unit, j = group)::

    Level 1:  y_ij = β0j + β1j·x_ij + r_ij                 r_ij ~ N(0, σ²)
    Level 2:  β0j  = γ00 + γ01·w_j + u0j                   (u0j, u1j) ~ N(0, T)
              β1j  = γ10 + γ11·w_j + u1j

Substituting gives the combined mixed model
``y ~ w*x + (x | g)``: every level-2 coefficient γpq multiplies the
product of its level-2 predictor and the level-1 variable of βp (a
cross-level interaction), every uₚⱼ multiplies the level-1 variable of βp.
Three levels (i in j in k; e.g. students in schools in districts) continue
the same substitution one level up: π (level 1) = β (level 2) with random
r, β = γ (level 3) with random u, and the level-2 random term groups by the
nested factor ``school:district``.

API::

    spec = Multilevel(
        level1="mathach ~ cses",
        level2={"(Intercept)": "~ meanses + sector", "cses": "~ meanses + sector"},
        group="school",
        random=["(Intercept)", "cses"],
        correlated=True,
    )
    spec.formula()   # 'mathach ~ meanses * cses + sector * cses + (cses | school)'
    print(spec)      # the symbolic level-1 / level-2 / combined equations
    fit = spec.fit(data, REML=True)   # -> MultilevelFit
    print(fit)       # equations, estimated equations, variance components
    fit.to_latex()   # the same as an amsmath align* environment
    fit.coefficients # γ table: symbol, equation, predictor, R name, estimate, SE, t
    fit.lmer         # the LmerFit; fit.fixef, fit.loglik, ... are forwarded to it

* ``level1``: ``"response ~ terms"`` (intercept implied; ``0 +`` removes it;
  ``offset()`` allowed).  No random-effects terms here.
* ``level2``: ``{level-1 term: one-sided formula}``; keys are ``"(Intercept)"``
  and level-1 term labels (``"cses"``, ``"cses:female"`` in any factor
  order).  A missing key means ``"~ 1"`` (a fixed coefficient γp0);
  ``"~ 0 + sector"`` drops γp0.  A single string applies to every
  coefficient.  A categorical level-1 term's equation applies to all its
  contrast columns (β per column).
* ``group``: the level-2 grouping column; ``random``: level-1 terms whose
  coefficients get a random effect u (default: the intercept);
  ``correlated=False`` makes them independent (lme4's ``||``).
* Three levels: ``group3`` (the outer grouping column), ``level3`` =
  ``{level-1 term: {level-2 term: one-sided formula}}`` (or tuple keys
  ``(level-1 term, level-2 term)``), ``random3`` = level-2 coefficients with
  a level-3 random effect, each a pair ``(level-1 term, level-2 term)`` or a
  level-1 term alone, meaning its level-2 intercept (default: the
  intercept ``"(Intercept)"``), ``correlated3``.

Expansion rule (it reproduces the formula R users write, so lmer's column
names and order are R's): with E(x) the predictor products of the equations
of level-1 term x (level-3 factors first, e.g. ``z:w``) and E(1) those of the
intercept, the fixed part is, in this order: ``e * x`` for each e in E(1) and
each slope x whose equation contains e (``e + e:x`` when x's equation has no
intercept), ``e`` alone for e in E(1) moderating no slope, then the level-1
terms not yet written, then ``e:x`` for the remaining e in E(x).  lme4 then
orders terms by degree and names interactions by first appearance, exactly as
R does for the same formula.

Checks (before any numerical work): unknown coefficient names, a variable
used at two levels, level-2/3 predictors that vary within their groups
(:class:`DataError`, computed groupwise with min/max), and categorical codings
that lme4 would not split into level-wise products (e.g. a random slope of a
factor without a random intercept, which lme4 codes with all indicator
columns): :class:`ModelError`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from multilevel.errors import DataError, FormulaError, ModelError
from multilevel.formula.design import Design, FactorSpec, build_design, to_pandas
from multilevel.formula.parser import ParsedFormula, TermSet, parse_formula
from multilevel.lmm.fit import fit_design
from multilevel.lmm.results import LmerFit
from multilevel.mixedfit import warn_about
from multilevel.workflow.equations import (
    Equation,
    Section,
    Symbol,
    Term,
    Variable,
    VarianceRow,
    render_latex,
    render_text,
)

Key = frozenset  # a term as the set of its factor labels; frozenset() = intercept
Path = tuple  # (level-1 key, level-2 key[, level-3 key])

INTERCEPT = "(Intercept)"
_NAME_RE = re.compile(r"^[A-Za-z.][A-Za-z0-9._]*$")
_EMPTY: frozenset = frozenset()


def _quote(label: str, is_name: bool) -> str:
    """A factor label as formula text (backticks for non-syntactic names)."""
    if is_name and not _NAME_RE.match(label):
        return f"`{label}`"
    return label


def _parse_rhs(text: Any, where: str) -> ParsedFormula:
    """Parse a one-sided level-2/3 equation (``"~ w1 + w2"``, ``"w1 + w2"``, ``"~ 1"``)."""
    if not isinstance(text, str):
        raise FormulaError(f"{where}: an equation must be a string such as '~ w', not {text!r}")
    src = text.strip()
    if not src:
        raise FormulaError(f"{where}: the equation is empty; write '~ 1' for no predictors")
    if not src.startswith("~"):
        if "~" in src:
            raise FormulaError(
                f"{where}: {text!r} has a response; a level-2/3 equation is one-sided, "
                "e.g. '~ meanses + sector'"
            )
        src = "~ " + src
    try:
        parsed = parse_formula(src, require_response=False)
    except FormulaError as exc:
        raise FormulaError(f"{where}: {exc.reason}", src, exc.position) from None
    if parsed.random:
        raise FormulaError(
            f"{where}: random-effects terms do not belong in an equation; list the "
            "coefficients with random effects in random= / random3="
        )
    if parsed.fixed.offsets:
        raise FormulaError(f"{where}: offset() belongs in the level-1 formula")
    return parsed


def _term_key(key: Any, where: str) -> Key:
    """A coefficient name ("(Intercept)", "cses", "cses:female") as a factor set."""
    if not isinstance(key, str) or not key.strip():
        raise FormulaError(f"{where}: a coefficient name must be a non-empty string, not {key!r}")
    if key.strip() in (INTERCEPT, "1"):
        return _EMPTY
    try:
        parsed = parse_formula("~ " + key, require_response=False)
    except FormulaError:
        raise FormulaError(f"{where}: {key!r} is not a term label such as 'cses'") from None
    terms = parsed.fixed.terms
    if parsed.random or parsed.fixed.offsets or len(terms) != 1:
        raise FormulaError(f"{where}: {key!r} is not a single term label such as 'cses'")
    return frozenset(terms[0])


def _check_group(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise FormulaError(f"{what} must be the name of a grouping column, not {name!r}")
    name = name.strip()
    if not _NAME_RE.match(name) and any(ch in name for ch in "`|~()"):
        raise FormulaError(f"{what} {name!r} is not a usable column name")
    return name


@dataclass(frozen=True)
class _Col:
    """One coefficient column of a level's model matrix."""

    idx: int  # β/γ index (0 = intercept)
    key: Key  # the term it belongs to
    name: str  # R's name within its own level ("sectorCatholic")
    atom: tuple[tuple[str, str], ...]  # (factor, suffix) pairs; () = intercept


class Multilevel:
    """A two- or three-level model given level by level (see the module docstring)."""

    def __init__(
        self,
        level1: str,
        level2: Mapping[str, str] | str | None = None,
        group: str | None = None,
        random: Sequence[str] | str = (INTERCEPT,),
        correlated: bool = True,
        *,
        level3: Mapping[Any, Any] | str | None = None,
        group3: str | None = None,
        random3: Sequence[Any] | str | None = None,
        correlated3: bool = True,
    ):
        if group is None:
            raise ModelError("group= (the level-2 grouping column) is required")
        self.group = _check_group(group, "group")
        self.group3 = None if group3 is None else _check_group(group3, "group3")
        if self.group3 is not None and self.group3 == self.group:
            raise ModelError(f"group and group3 are both {self.group!r}; they must differ")
        for flag, name in ((correlated, "correlated"), (correlated3, "correlated3")):
            if not isinstance(flag, (bool, np.bool_)):
                raise ModelError(f"{name} must be True or False, not {flag!r}")
        self.correlated = bool(correlated)
        self.correlated3 = bool(correlated3)
        self.nlevels = 2 if self.group3 is None else 3
        if self.nlevels == 2 and (level3 is not None or random3 is not None):
            raise ModelError("level3= and random3= need group3= (the level-3 grouping column)")

        # level 1
        if not isinstance(level1, str):
            raise FormulaError(f"level1 must be a formula string such as 'y ~ x', not {level1!r}")
        p1 = parse_formula(level1)
        if p1.random:
            raise FormulaError(
                "the level-1 formula has random-effects terms; give the level-2 equations in "
                "level2= and the coefficients with random effects in random=",
                level1,
            )
        assert p1.response is not None
        self.level1 = level1
        self.response = p1.response.label
        self._is_name: dict[str, bool] = {lab: f.is_name for lab, f in p1.factors.items()}
        self._l1 = p1.fixed
        self._offsets = list(p1.fixed.offsets)
        keys1: list[Key] = ([_EMPTY] if p1.fixed.intercept else []) + [
            frozenset(t) for t in p1.fixed.terms
        ]
        self._keys1 = keys1
        self._label: dict[Key, str] = {_EMPTY: INTERCEPT}
        self._tuple: dict[Key, tuple[str, ...]] = {_EMPTY: ()}
        for t in p1.fixed.terms:
            self._label[frozenset(t)] = ":".join(t)
            self._tuple[frozenset(t)] = tuple(t)

        # level 2
        self._eq2: dict[Key, TermSet] = {}
        self._eq2_text: dict[Key, str] = {}
        given2 = self._equation_map(level2, "level2")
        for key, (text, where) in given2.items():
            self._eq2[key] = self._equation(text, where)
            self._eq2_text[key] = text
        for key in keys1:
            if key not in self._eq2:
                self._eq2[key] = TermSet(True, [])
                self._eq2_text[key] = "~ 1"
        self._keys2: dict[Key, list[Key]] = {}
        for key in keys1:
            eq = self._eq2[key]
            self._keys2[key] = ([_EMPTY] if eq.intercept else []) + [frozenset(t) for t in eq.terms]
            self._register(eq)
        self.random = self._random_list(random, "random")

        # level 3
        self._eq3: dict[tuple[Key, Key], TermSet] = {}
        self._eq3_text: dict[tuple[Key, Key], str] = {}
        self.random3: list[tuple[Key, Key]] = []
        if self.nlevels == 3:
            for (k1, k2), (text, where) in self._equation_map3(level3).items():
                self._eq3[(k1, k2)] = self._equation(text, where)
                self._eq3_text[(k1, k2)] = text
            for k1 in keys1:
                for k2 in self._keys2[k1]:
                    if (k1, k2) not in self._eq3:
                        self._eq3[(k1, k2)] = TermSet(True, [])
                        self._eq3_text[(k1, k2)] = "~ 1"
                    self._register(self._eq3[(k1, k2)])
            self.random3 = self._random3_list(random3)
        self._validate_levels()
        if not self.random and not self.random3:
            raise ModelError("the model has no random effects; list coefficients in random=")
        self._formula = self._build_formula()
        self._verify_expansion()

    # -- specification helpers ------------------------------------------------------
    def _equation(self, text: Any, where: str) -> TermSet:
        parsed = _parse_rhs(text, where)
        for lab, f in parsed.factors.items():
            self._is_name.setdefault(lab, f.is_name)
        return parsed.fixed

    def _register(self, eq: TermSet) -> None:
        for t in eq.terms:
            key = frozenset(t)
            self._tuple.setdefault(key, tuple(t))
            self._label.setdefault(key, ":".join(t))

    def _level1_key(self, name: Any, where: str) -> Key:
        key = _term_key(name, where)
        if key not in self._keys1:
            known = ", ".join(self._label[k] for k in self._keys1)
            if key == _EMPTY:
                raise ModelError(f"{where}: the level-1 formula has no intercept (known: {known})")
            raise ModelError(
                f"{where}: {name!r} is not a coefficient of the level-1 formula "
                f"{self.level1!r}; the coefficients are: {known}"
            )
        return key

    def _equation_map(self, level2: Any, where: str) -> dict[Key, tuple[str, str]]:
        if level2 is None:
            return {}
        if isinstance(level2, str):
            return {k: (level2, f"{where}[{self._label[k]!r}]") for k in self._keys1}
        if not isinstance(level2, Mapping):
            raise ModelError(
                f"{where} must map coefficient names to equations, e.g. "
                "{'(Intercept)': '~ meanses', 'cses': '~ meanses'}"
            )
        out: dict[Key, tuple[str, str]] = {}
        for name, text in level2.items():
            key = self._level1_key(name, where)
            if key in out:
                raise ModelError(f"{where}: two equations for {self._label[key]!r}")
            out[key] = (text, f"{where}[{name!r}]")
        return out

    def _level2_key(self, k1: Key, name: Any, where: str) -> Key:
        key = _term_key(name, where)
        if key not in self._keys2[k1]:
            known = ", ".join(self._label.get(k, INTERCEPT) for k in self._keys2[k1])
            raise ModelError(
                f"{where}: {name!r} is not a coefficient of the level-2 equation of "
                f"{self._label[k1]!r} ({self._eq2_text[k1]!r}); its coefficients are: {known}"
            )
        return key

    def _equation_map3(self, level3: Any) -> dict[tuple[Key, Key], tuple[str, str]]:
        if level3 is None:
            return {}
        if isinstance(level3, str):
            return {
                (k1, k2): (level3, f"level3[{self._label[k1]!r}][{self._label[k2]!r}]")
                for k1 in self._keys1
                for k2 in self._keys2[k1]
            }
        if not isinstance(level3, Mapping):
            raise ModelError(
                "level3 must map level-1 coefficients to {level-2 coefficient: equation}, e.g. "
                "{'(Intercept)': {'(Intercept)': '~ z'}}"
            )
        out: dict[tuple[Key, Key], tuple[str, str]] = {}
        for name1, inner in level3.items():
            if isinstance(name1, tuple):
                if len(name1) != 2:
                    raise ModelError(f"level3 key {name1!r} must be (level-1 term, level-2 term)")
                items = [(name1[0], name1[1], inner)]
            elif isinstance(inner, Mapping):
                items = [(name1, name2, text) for name2, text in inner.items()]
            elif isinstance(inner, str):
                items = [(name1, INTERCEPT, inner)]
            else:
                raise ModelError(
                    f"level3[{name1!r}] must be a mapping {{level-2 coefficient: equation}}"
                )
            for a, b, text in items:
                where = f"level3[{a!r}][{b!r}]"
                k1 = self._level1_key(a, where)
                k2 = self._level2_key(k1, b, where)
                if (k1, k2) in out:
                    raise ModelError(f"{where}: two equations for the same coefficient")
                out[(k1, k2)] = (text, where)
        return out

    def _random_list(self, random: Any, where: str) -> list[Key]:
        if isinstance(random, str):
            random = [random]
        if random is None:
            return []
        keys = []
        for name in random:
            key = self._level1_key(name, where)
            if key in keys:
                raise ModelError(f"{where}: {name!r} is listed twice")
            keys.append(key)
        return [k for k in self._keys1 if k in keys]

    def _random3_list(self, random3: Any) -> list[tuple[Key, Key]]:
        if random3 is None:
            random3 = [INTERCEPT] if (_EMPTY, _EMPTY) in self._paths2() else []
        if isinstance(random3, (str, tuple)):
            random3 = [random3]
        chosen: list[tuple[Key, Key]] = []
        for item in random3:
            if isinstance(item, str):
                a, b = item, INTERCEPT
            elif isinstance(item, tuple) and len(item) == 2:
                a, b = item
            else:
                raise ModelError(
                    f"random3: {item!r} must be a level-1 term or a pair "
                    "(level-1 term, level-2 term)"
                )
            where = f"random3 entry {item!r}"
            k1 = self._level1_key(a, where)
            k2 = self._level2_key(k1, b, where)
            if (k1, k2) in chosen:
                raise ModelError(f"random3: {item!r} is listed twice")
            chosen.append((k1, k2))
        return [p for p in self._paths2() if p in chosen]

    def _paths2(self) -> list[tuple[Key, Key]]:
        return [(k1, k2) for k1 in self._keys1 for k2 in self._keys2[k1]]

    def _keys3(self, k1: Key, k2: Key) -> list[Key]:
        if self.nlevels == 2:
            return [_EMPTY]
        eq = self._eq3[(k1, k2)]
        return ([_EMPTY] if eq.intercept else []) + [frozenset(t) for t in eq.terms]

    def paths(self) -> list[Path]:
        """The fixed coefficients as paths of term keys, level-1 term first."""
        out: list[Path] = []
        for k1, k2 in self._paths2():
            for k3 in self._keys3(k1, k2):
                out.append((k1, k2, k3) if self.nlevels == 3 else (k1, k2))
        return out

    def _level_vars(self) -> list[set[str]]:
        v1 = {f for k in self._keys1 for f in k}
        v2 = {f for k1 in self._keys1 for k in self._keys2[k1] for f in k}
        v3 = {f for eq in self._eq3.values() for t in eq.terms for f in t}
        return [v1, v2, v3]

    def _validate_levels(self) -> None:
        names = ["level-1 variable", "level-2 predictor", "level-3 predictor"]
        vars_ = self._level_vars()
        for a in range(3):
            for b in range(a + 1, 3):
                both = sorted(vars_[a] & vars_[b])
                if both:
                    raise ModelError(
                        f"{both[0]!r} is used both as a {names[a]} and as a {names[b]}; "
                        "each variable belongs to one level"
                    )
        for level, vs in enumerate(vars_, start=1):
            if self.response in vs:
                raise ModelError(f"the response {self.response!r} is used as a level-{level} term")
            for g in (self.group, self.group3):
                if g is not None and g in vs:
                    raise ModelError(
                        f"the grouping column {g!r} is used as a level-{level} term; "
                        "a grouping factor cannot also be a predictor"
                    )
        for key in self._keys1:
            fixed = bool(self._keys2[key])
            if not fixed and key not in self.random and not any(p[0] == key for p in self.random3):
                raise ModelError(
                    f"the coefficient of {self._label[key]!r} has neither a fixed part "
                    "(its equation is '~ 0') nor a random effect"
                )

    # -- the combined formula -------------------------------------------------------
    def _text(self, key: Key) -> str:
        return ":".join(_quote(f, self._is_name.get(f, True)) for f in self._tuple[key])

    def _effective(self, k1: Key) -> list[tuple[Key, str]]:
        """The predictor products of the coefficient of ``k1``: level-2 term w
        times level-3 term z, written ``z:w`` (higher level first)."""
        out = []
        for k2 in self._keys2[k1]:
            for k3 in self._keys3(k1, k2):
                parts = [self._text(k) for k in (k3, k2) if k]
                out.append((k2 | k3, ":".join(parts)))
        return out

    def _build_formula(self) -> str:
        slopes = [k for k in self._keys1 if k]
        eff = {k: self._effective(k) for k in self._keys1}
        e0 = eff.get(_EMPTY, [])
        e0_keys = {e for e, _ in e0}
        intercept = _EMPTY in e0_keys
        chunks: list[str] = []
        written: set[Key] = set()
        for e, etext in e0:
            if not e:
                continue
            moderated = [x for x in slopes if any(e == f for f, _ in eff[x])]
            if not moderated:
                chunks.append(etext)
            for x in moderated:
                has_main = any(not f for f, _ in eff[x])
                if has_main:
                    chunks.append(f"{etext} * {self._text(x)}")
                    written.add(x)
                else:
                    chunks.append(f"{etext} + {etext}:{self._text(x)}")
        for x in slopes:
            if x not in written and any(not f for f, _ in eff[x]):
                chunks.append(self._text(x))
        for x in slopes:
            for e, etext in eff[x]:
                if e and e not in e0_keys:
                    chunks.append(f"{etext}:{self._text(x)}")
        chunks.extend(self._offsets)
        if not intercept:
            rhs = " + ".join(["0"] + chunks)
        elif chunks:
            rhs = " + ".join(chunks)
        else:
            rhs = "1"
        resp = _quote(self.response, self._is_name.get(self.response, True))
        bars = self._random_text()
        return f"{resp} ~ {rhs} + {' + '.join(bars)}"

    def _verify_expansion(self) -> None:
        """The generated formula must hold exactly the level-wise products; a
        mismatch is a bug in the expansion rule, not a user error."""
        parsed = parse_formula(self._formula)
        got = {frozenset(t) for t in parsed.fixed.terms}
        if parsed.fixed.intercept:
            got.add(_EMPTY)
        want = {frozenset().union(*p) for p in self.paths()}
        rand = {
            (rt.group_name, frozenset(t))
            for rt in parsed.random
            for t in ([()] if rt.expr.intercept else []) + list(rt.expr.terms)
        }
        g2, *g3 = self.group_names
        want_rand = {(g2, k) for k in self.random} | {(g3[0], a | b) for a, b in self.random3}
        if got != want or rand != want_rand:  # pragma: no cover - internal consistency
            raise RuntimeError(f"level-wise expansion mismatch in {self._formula!r}")

    @staticmethod
    def _bar(terms: list[str], intercept: bool, correlated: bool, group: str) -> str:
        if intercept:
            inner = " + ".join(terms) if terms else "1"
        else:
            inner = " + ".join(["0"] + terms)
        op = "|" if correlated or len(terms) + intercept < 2 else "||"
        return f"({inner} {op} {group})"

    def _random_text(self) -> list[str]:
        g2 = _quote(self.group, True)
        terms2 = [self._text(k) for k in self.random if k]
        icpt2 = _EMPTY in self.random
        if self.nlevels == 2:
            return [self._bar(terms2, icpt2, self.correlated, g2)]
        g3 = _quote(self.group3 or "", True)
        terms3 = [
            ":".join(self._text(k) for k in (k2, k1) if k) for k1, k2 in self.random3 if k1 | k2
        ]
        icpt3 = (_EMPTY, _EMPTY) in self.random3
        same_cols = {k for k in self.random} == {k1 | k2 for k1, k2 in self.random3}
        if (
            self.random
            and same_cols
            and len(self.random3) == len(self.random)
            and (self.correlated == self.correlated3 or len(self.random) < 2)
        ):
            return [self._bar(terms2, icpt2, self.correlated, f"{g3}/{g2}")]
        out = []
        if self.random3:
            out.append(self._bar(terms3, icpt3, self.correlated3, g3))
        if self.random:
            out.append(self._bar(terms2, icpt2, self.correlated, f"{g2}:{g3}"))
        return out

    def formula(self) -> str:
        """The combined lme4 formula, e.g.
        ``mathach ~ meanses * cses + sector * cses + (cses | school)``."""
        return self._formula

    @property
    def group_names(self) -> tuple[str, ...]:
        """lme4's names of the grouping factors, innermost first: ``("school",)``
        or ``("school:district", "district")``."""
        if self.nlevels == 2:
            return (self.group,)
        return (f"{self.group}:{self.group3}", self.group3 or "")

    # -- symbolic equations -------------------------------------------------------------
    def _term_columns(self) -> _Columns:
        """One column per term (the spec before data are seen)."""

        def cols(keys: list[Key]) -> list[_Col]:
            start = 0 if keys and keys[0] == _EMPTY else 1
            return [
                _Col(start + i, k, self._label.get(k, INTERCEPT), ()) for i, k in enumerate(keys)
            ]

        c1 = cols(self._keys1)
        c2 = {c.idx: cols(self._keys2[c.key]) for c in c1}
        c3 = {}
        if self.nlevels == 3:
            for a in c1:
                for b in c2[a.idx]:
                    c3[(a.idx, b.idx)] = cols(self._keys3(a.key, b.key))
        return _Columns(c1, c2, c3)

    def sections(self) -> list[Section]:
        """The symbolic level-wise and combined equations."""
        cols = self._term_columns()
        parsed = parse_formula(self._formula)
        order = []
        by_term = {}
        for path in cols.paths(self.nlevels):
            term = frozenset().union(*(c.key for c in path))
            by_term[term] = path
        for t in ([()] if parsed.fixed.intercept else []) + list(parsed.fixed.terms):
            order.append(by_term[frozenset(t)])
        return _symbolic_sections(self, cols, order)

    def __str__(self) -> str:
        header = f"{self.nlevels}-level model; lme4 formula: {self._formula}"
        return render_text(self.sections(), header=header)

    def __repr__(self) -> str:
        return f"Multilevel({self._formula!r})"

    def to_latex(self) -> str:
        """The symbolic equations as an amsmath ``align*`` environment."""
        return render_latex(self.sections())

    # -- fitting -----------------------------------------------------------------------
    def fit(
        self,
        data: Any,
        REML: bool = True,
        *,
        weights: Any = None,
        offset: Any = None,
        levels: dict[str, list] | None = None,
        na_action: str = "omit",
        namespace: dict | None = None,
        start: Any = None,
        correlation: Any = None,
    ) -> MultilevelFit:
        """Fit the combined model exactly as ``lmer(self.formula(), data, ...)``
        would, after checking that level-2/3 predictors are constant within their
        groups and that lme4's coding of the combined formula is the product of
        the level-wise codings.  ``correlation`` (``corAR1()``...) and a variance
        function as ``weights`` give the level-1 errors nlme's structures, as
        :func:`multilevel.lme` does (groups: the innermost grouping)."""
        from multilevel.longitudinal.variance import VarFunc
        from multilevel.workflow.gls import structure_frame
        from multilevel.workflow.nlme import fit_structured

        var = weights if isinstance(weights, VarFunc) else None
        structured = var is not None or correlation is not None
        parsed = parse_formula(self._formula)
        if structured:
            data = structure_frame(to_pandas(data), correlation, var)
        design = build_design(
            parsed,
            data,
            weights=None if var is not None else weights,
            offset=offset,
            levels=levels,
            na_action=na_action,
            namespace=namespace,
        )
        self._check_constant(data, levels, namespace)
        cols = self._data_columns(design.factor_specs)
        fixmap = _map_fixed(self, cols, parsed, design)
        _map_random(self, cols, parsed, design)  # refuse before fitting
        if not structured:
            lfit = fit_design(design, REML=REML, start=start)
            return MultilevelFit(self, lfit, cols, fixmap, parsed)
        inner = (self.group3, self.group) if self.nlevels == 3 else (self.group,)
        lfit, struct, est = fit_structured(design, data, correlation, var, inner, REML, "data")
        warn_about(lfit)
        out = MultilevelFit(self, lfit, cols, fixmap, parsed)
        out.struct, out.est = struct, est
        return out

    def _check_constant(self, data: Any, levels: Any, namespace: Any) -> None:
        """A level-2 (level-3) predictor must not vary within a level-2 (level-3)
        group: groupwise min and max of every column it contributes agree."""
        frame = to_pandas(data)
        vars_ = self._level_vars()
        checks = [(vars_[1], 2, self.group if self.nlevels == 2 else f"{self.group3}:{self.group}")]
        if self.nlevels == 3:
            checks.append((vars_[2], 3, self.group3 or ""))
        resp = _quote(self.response, self._is_name.get(self.response, True))
        for variables, level, gspec in checks:
            gname = self.group_names[0] if level == 2 else (self.group3 or "")
            for f in sorted(variables):
                text = f"{resp} ~ 0 + {_quote(f, self._is_name.get(f, True))} + (1 | {gspec})"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    helper = build_design(
                        parse_formula(text),
                        frame,
                        levels=levels,
                        namespace=namespace,
                        numeric_response=False,
                        check_nobs=False,
                    )
                r = helper.random[0]
                bad = _varying_groups(helper.X, r.codes, r.nlevels)
                if bad.any():
                    first = r.levels[int(np.flatnonzero(bad)[0])]
                    raise DataError(
                        f"{f!r} is not a level-{level} variable: it varies within "
                        f"{int(bad.sum())} of {r.nlevels} {gname!r} groups (e.g. {first!r}); "
                        f"a level-{level} predictor must be constant within each group"
                    )

    def _data_columns(self, specs: dict[str, FactorSpec]) -> _Columns:
        c1 = _level_columns(self._l1, specs)
        c2: dict[int, list[_Col]] = {}
        for a in c1:
            c2[a.idx] = _level_columns(self._eq2[a.key], specs)
        c3: dict[tuple[int, int], list[_Col]] = {}
        if self.nlevels == 3:
            for a in c1:
                for b in c2[a.idx]:
                    c3[(a.idx, b.idx)] = _level_columns(self._eq3[(a.key, b.key)], specs)
        return _Columns(c1, c2, c3)


# --------------------------------------------------------------------------- columns


@dataclass
class _Columns:
    c1: list[_Col]
    c2: dict[int, list[_Col]]
    c3: dict[tuple[int, int], list[_Col]]

    def paths(self, nlevels: int) -> list[tuple[_Col, ...]]:
        out: list[tuple[_Col, ...]] = []
        for a in self.c1:
            for b in self.c2[a.idx]:
                if nlevels == 2:
                    out.append((a, b))
                else:
                    out.extend((a, b, c) for c in self.c3[(a.idx, b.idx)])
        return out


def _level_columns(tset: TermSet, specs: dict[str, FactorSpec]) -> list[_Col]:
    """Columns of one level's own model matrix, with R's coding rules: a
    categorical factor is coded by contrasts when the term without it is in the
    level's model (intercept = empty term), by indicators otherwise; the first
    factor of an interaction varies fastest."""
    present = {frozenset(t) for t in tset.terms}
    if tset.intercept:
        present.add(_EMPTY)
    cols: list[_Col] = [_Col(0, _EMPTY, INTERCEPT, ())] if tset.intercept else []
    for term in tset.terms:
        combos: list[tuple[tuple[str, str], ...]] = [()]
        for f in term:
            spec = specs[f]
            if spec.categorical:
                labels = list(spec.labels or [])
                contrast = frozenset(term) - {f} in present
                suffixes = labels[1:] if contrast else labels
            else:
                suffixes = list(spec.suffixes or [""])
            combos = [c + ((f, s),) for s in suffixes for c in combos]
        for atom in combos:
            # β/γ numbering: 0 is the intercept, slopes count from 1 either way
            idx = len(cols) + (0 if tset.intercept else 1)
            cols.append(_Col(idx, frozenset(term), ":".join(f + s for f, s in atom), atom))
    return cols


def _combined_name(atoms: Sequence[tuple[tuple[str, str], ...]], rank: dict[str, int]) -> str:
    pairs = sorted((p for a in atoms for p in a), key=lambda p: rank[p[0]])
    return ":".join(f + s for f, s in pairs) if pairs else INTERCEPT


def _varying_groups(X: np.ndarray, codes: np.ndarray, ngroups: int) -> np.ndarray:
    """Boolean (ngroups,): groups in which some column of X is not constant."""
    k = X.shape[1]
    lo = np.full((ngroups, k), np.inf)
    hi = np.full((ngroups, k), -np.inf)
    np.minimum.at(lo, codes, X)
    np.maximum.at(hi, codes, X)
    tol = 1e-9 * (1.0 + np.abs(X).max(axis=0, initial=0.0))
    return ((hi - lo) > tol).any(axis=1)


def _map_fixed(
    spec: Multilevel, cols: _Columns, parsed: ParsedFormula, design: Design
) -> dict[str, tuple[_Col, ...]]:
    """R name of each fixed-effect column -> its path of level-wise columns."""
    rank = {lab: i for i, lab in enumerate(parsed.factors)}
    expected = {_combined_name([c.atom for c in p], rank): p for p in cols.paths(spec.nlevels)}
    names = design.fixef_names
    total = len(design.xspec.keep) if design.xspec.keep is not None else len(names)
    extra = [n for n in names if n not in expected]
    if extra or total != len(expected):
        raise ModelError(
            "lme4's coding of the combined formula does not split into level-wise products: "
            f"its columns {extra or names} are not among the products {list(expected)} of "
            "level-1 and level-2 columns. This happens when a "
            "categorical level-1 variable's slope equation has a predictor the intercept "
            "equation lacks; add it to the (Intercept) equation or code the variable as "
            "numeric indicator columns"
        )
    return {n: expected[n] for n in names} | {n: p for n, p in expected.items() if n not in names}


def _map_random(
    spec: Multilevel, cols: _Columns, parsed: ParsedFormula, design: Design
) -> dict[tuple[str, str], tuple[_Col, ...]]:
    """(group name, column name) of each random effect -> the coefficient path it
    perturbs: (β column,) at level 2, (β column, γ column) at level 3."""
    rank = {lab: i for i, lab in enumerate(parsed.factors)}
    g2, *rest = spec.group_names
    want2 = {_combined_name([a.atom], rank): (a,) for a in cols.c1 if a.key in spec.random}
    want3 = {}
    for a in cols.c1:
        for b in cols.c2[a.idx]:
            if (a.key, b.key) in spec.random3:
                want3[_combined_name([a.atom, b.atom], rank)] = (a, b)
    out: dict[tuple[str, str], tuple[_Col, ...]] = {}
    for r in design.random:
        want = want2 if r.name == g2 else want3
        for cn in r.cnames:
            if cn not in want:
                raise ModelError(
                    f"the random-effects term {r.term.text} has a column {cn!r} that is not "
                    f"one of the level-wise coefficients {list(want)}: lme4 codes a categorical "
                    "variable by all its indicators when the term has no intercept (or terms "
                    "are uncorrelated); give that level a random intercept with "
                    "correlated=True, or code the variable as numeric indicator columns"
                )
            out[(r.name, cn)] = want[cn]
    return out


# --------------------------------------------------------------------------- notation


def _notation(nlevels: int) -> dict[str, Any]:
    if nlevels == 2:
        return {
            "letters": ["ij", "j"],
            "coef": ["beta", "gamma"],
            "coef_letters": ["j", ""],
            "random": ["u"],
            "random_letters": ["j"],
            "residual": Symbol("r", (), "ij"),
        }
    return {
        "letters": ["ijk", "jk", "k"],
        "coef": ["pi", "beta", "gamma"],
        "coef_letters": ["jk", "k", ""],
        "random": ["r", "u"],
        "random_letters": ["jk", "k"],
        "residual": Symbol("e", (), "ijk"),
    }


def _symbolic_sections(
    spec: Multilevel,
    cols: _Columns,
    order: Sequence[tuple[_Col, ...]],
    values: Mapping[tuple[int, ...], float] | None = None,
    variances: list[VarianceRow] | None = None,
    note: str = "",
) -> list[Section]:
    """Level-1, level-2(, level-3) and combined equations; with ``values`` also
    the estimated equations and, with ``variances``, the variance components."""
    L = spec.nlevels
    nt = _notation(L)
    letters = nt["letters"]

    def var(col: _Col, level: int) -> Variable:
        return Variable(col.name, letters[level - 1])

    def coef(path: tuple[_Col, ...]) -> Symbol:
        lev = len(path)
        return Symbol(nt["coef"][lev - 1], tuple(c.idx for c in path), nt["coef_letters"][lev - 1])

    def rand(path: tuple[_Col, ...]) -> Symbol:
        lev = len(path)  # random effect in the level-(lev+1) equation
        return Symbol(
            nt["random"][lev - 1], tuple(c.idx for c in path), nt["random_letters"][lev - 1]
        )

    def value(path: tuple[_Col, ...]) -> float | None:
        return None if values is None else values.get(tuple(c.idx for c in path), float("nan"))

    rand2 = [a for a in cols.c1 if a.key in spec.random]
    rand3 = [(a, b) for a in cols.c1 for b in cols.c2[a.idx] if (a.key, b.key) in spec.random3]

    level1 = Equation(
        Variable(spec.response, letters[0]),
        [Term(coef((a,)), (var(a, 1),) if a.key else ()) for a in cols.c1],
        residual=nt["residual"],
    )

    def level2_eqs(with_values: bool) -> list[Equation]:
        eqs = []
        for a in cols.c1:
            fixed = []
            for b in cols.c2[a.idx]:
                vs = (var(b, 2),) if b.key else ()
                v = value((a, b)) if (with_values and L == 2) else None
                fixed.append(Term(coef((a, b)), vs, v))
            rnd = [Term(rand((a,)))] if a in rand2 else []
            eqs.append(Equation(coef((a,)), fixed, rnd))
        return eqs

    def level3_eqs(with_values: bool) -> list[Equation]:
        eqs = []
        for a in cols.c1:
            for b in cols.c2[a.idx]:
                fixed = []
                for c in cols.c3[(a.idx, b.idx)]:
                    vs = (var(c, 3),) if c.key else ()
                    fixed.append(
                        Term(coef((a, b, c)), vs, value((a, b, c)) if with_values else None)
                    )
                rnd = [Term(rand((a, b)))] if (a, b) in rand3 else []
                eqs.append(Equation(coef((a, b)), fixed, rnd))
        return eqs

    def combined(with_values: bool) -> Equation:
        fixed = []
        for path in order:
            vs = tuple(var(c, lev) for lev, c in reversed(list(enumerate(path, start=1))) if c.key)
            fixed.append(Term(coef(path), vs, value(path) if with_values else None))
        rnd = [Term(rand((a,)), (var(a, 1),) if a.key else ()) for a in rand2]
        rnd += [
            Term(rand((a, b)), tuple(var(c, lev) for lev, c in ((2, b), (1, a)) if c.key))
            for a, b in rand3
        ]
        return Equation(Variable(spec.response, letters[0]), fixed, rnd, nt["residual"])

    sections = [Section("Level 1", [level1]), Section("Level 2", level2_eqs(False))]
    if L == 3:
        sections.append(Section("Level 3", level3_eqs(False)))
    sections.append(Section("Combined", [combined(False)], note=note))
    if values is not None:
        top = Section("Estimated level-3 equations" if L == 3 else "Estimated level-2 equations")
        top.estimates = True
        top.equations = level3_eqs(True) if L == 3 else level2_eqs(True)
        sections.append(top)
        sections.append(Section("Estimated combined equation", [combined(True)], estimates=True))
    if variances is not None:
        sections.append(Section("Variance components", variances=variances))
    return sections


# --------------------------------------------------------------------------- fit


class MultilevelFit:
    """A level-wise model fitted by :meth:`Multilevel.fit`.

    ``lmer`` is the underlying :class:`~multilevel.lmm.results.LmerFit`; attributes
    not defined here (``fixef``, ``se``, ``loglik``, ``varcorr``, ``ranef``,
    ``summary()``, ...) are forwarded to it.
    """

    def __init__(
        self,
        spec: Multilevel,
        lfit: LmerFit,
        cols: _Columns,
        fixmap: dict[str, tuple[_Col, ...]],
        parsed: ParsedFormula,
    ):
        self.spec = spec
        self.lmer = lfit
        self._cols = cols
        self._fixmap = fixmap
        self._randmap = _map_random(spec, cols, parsed, lfit.design)
        self.struct = None  # nlme's level-1 correlation / variance structure, if any
        self.est = None

    @property
    def corstruct(self) -> pd.Series | None:
        """The level-1 correlation parameters (nlme's constrained scale), or None."""
        return None if self.struct is None else self.struct.coef(self.est.omega)[0]

    @property
    def varstruct(self) -> pd.Series | None:
        """The level-1 variance function's parameters, or None."""
        return None if self.struct is None else self.struct.coef(self.est.omega)[1]

    @property
    def sigma(self) -> float:
        if self.struct is None:
            return self.lmer.sigma
        return self.lmer.sigma / self.struct.scale(self.est.omega)

    @property
    def df_model(self) -> int:
        extra = 0 if self.struct is None else int(self.struct.free.sum())
        return self.lmer.df_model + extra

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "lmer" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["lmer"], name)

    @property
    def formula(self) -> str:
        return self.spec.formula()

    def _values(self) -> dict[tuple[int, ...], float]:
        fe = self.lmer.fixef
        return {
            tuple(c.idx for c in path): float(fe[name]) if name in fe.index else float("nan")
            for name, path in self._fixmap.items()
        }

    @property
    def coefficients(self) -> pd.DataFrame:
        """One row per top-level coefficient (γ), in level-wise order: its symbol,
        the equation it belongs to, its predictor, lme4's fixed-effect name,
        estimate, standard error and t value."""
        nt = _notation(self.spec.nlevels)
        fe, se = self.lmer.fixef, self.lmer.se
        by_idx = {tuple(c.idx for c in p): (n, p) for n, p in self._fixmap.items()}
        rows = []
        for path in self._cols.paths(self.spec.nlevels):
            idx = tuple(c.idx for c in path)
            name, _ = by_idx[idx]
            L = len(path)
            sym = Symbol(nt["coef"][L - 1], idx, nt["coef_letters"][L - 1])
            outcome = Symbol(nt["coef"][L - 2], idx[:-1], nt["coef_letters"][L - 2])
            last = path[-1]
            pred = INTERCEPT if not last.key else Variable(last.name, nt["letters"][L - 1]).text()
            est = float(fe[name]) if name in fe.index else float("nan")
            s = float(se[name]) if name in se.index else float("nan")
            rows.append((sym.text(), outcome.text(), pred, name, est, s, est / s))
        return pd.DataFrame(
            rows,
            columns=["symbol", "equation", "predictor", "fixef", "estimate", "se", "t"],
        ).set_index("symbol")

    def variance_rows(self) -> list[VarianceRow]:
        """Variances and covariances of the random effects by level-wise symbol
        (u0j, r0jk, u00k, ...), then the residual variance."""
        nt = _notation(self.spec.nlevels)
        vc = self.lmer.varcorr
        rows: list[VarianceRow] = []
        k = 0
        for r in self.lmer.design.random:
            syms = []
            for cn in r.cnames:
                path = self._randmap[(r.name, cn)]
                lev = len(path)
                syms.append(
                    Symbol(
                        nt["random"][lev - 1],
                        tuple(c.idx for c in path),
                        nt["random_letters"][lev - 1],
                    )
                )
            q = r.q
            level2 = self.spec.nlevels == 2
            for i in range(q):
                row = vc.iloc[k + i]
                tau = Symbol("tau", syms[i].indices * 2) if level2 else None
                rows.append(VarianceRow("var", (syms[i],), tau, float(row.vcov), float(row.sdcor)))
            k += q
            for i in range(q):
                for j in range(i + 1, q):
                    row = vc.iloc[k]
                    k += 1
                    tau = Symbol("tau", syms[i].indices + syms[j].indices) if level2 else None
                    rows.append(
                        VarianceRow(
                            "cov", (syms[i], syms[j]), tau, float(row.vcov), float(row.sdcor)
                        )
                    )
        last = vc.iloc[k]
        rows.append(
            VarianceRow(
                "var",
                (_notation(self.spec.nlevels)["residual"],),
                Symbol("sigma2"),
                float(last.vcov),
                float(last.sdcor),
            )
        )
        return rows

    def sections(self) -> list[Section]:
        order = [self._fixmap[n] for n in self.lmer.fixef.index]
        return _symbolic_sections(
            self.spec,
            self._cols,
            order,
            values=self._values(),
            variances=self.variance_rows(),
            note=self.spec.formula(),
        )

    def _header(self) -> str:
        lf = self.lmer
        groups = ", ".join(f"{n} {g}" for g, n in lf.ngroups.items())
        return (
            f"{self.spec.nlevels}-level model for {self.spec.response} fit by "
            f"{'REML' if lf.REML else 'maximum likelihood'}: {lf.nobs} observations; "
            f"groups: {groups}; logLik {lf.loglik:.2f}"
        )

    def to_text(self, digits: int = 4) -> str:
        """Level-wise equations, estimated equations and variance components."""
        return render_text(self.sections(), header=self._header(), digits=digits)

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(self.to_text())}</pre>"

    def _repr_latex_(self) -> str:
        return self.to_latex()

    def to_latex(self, digits: int = 4) -> str:
        """The same as :meth:`to_text`, as an amsmath ``align*`` environment."""
        return render_latex(self.sections(), digits=digits)

    def equations(self, digits: int = 4, estimates: bool = True) -> str:
        """The estimated level-2/3 equations (``estimates=True``) or the symbolic ones."""
        secs = [s for s in self.sections() if s.estimates == estimates and s.equations]
        return render_text(secs, digits=digits)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"<MultilevelFit {self.spec.formula()!r}>"


__all__ = ["Multilevel", "MultilevelFit"]
