"""nlme's interface: ``lme(fixed, random, data)`` on the lme4 engine.

``lme("mathach ~ meanses*cses + sector*cses", random="~ cses | school", data)``
is the model ``mathach ~ meanses*cses + sector*cses + (cses | school)``: the
likelihood, the estimates and the covariance parametrisation are the same, so
the model is translated to one lme4 formula, fitted by
:func:`multilevel.lmm.fit.fit_design`, and wrapped in an :class:`LmeFit` with
nlme's accessors on top of the :class:`~multilevel.lmm.results.LmerFit` (kept as
``.lmer``).

Nested grouping ``~ 1 | district/school`` has nlme's meaning: random effects
for district and for school within district, i.e. lme4's
``(1 | district) + (1 | school:district)``.  A dict
``{"district": "~ 1", "school": "~ cses"}`` (outermost first) gives each level
its own random-effects expression, as nlme's ``list(district = ~1, school =
~cses)``.

What nlme adds:

* denominator degrees of freedom by the between/within rule (Pinheiro & Bates
  2000, sec. 2.4.2): with grouping levels 1..Q (outermost first), m₀ = 1,
  m_i the number of groups at level i and m_{Q+1} = n, a fixed-effects term is
  *estimated at level i* when it is constant within the groups of level i but
  not within those of level i−1 (level Q+1 when it varies within the
  innermost groups).  With p_i the number of columns of the terms estimated at
  level i, their DF is m_i − (m_{i−1} + p_i).  The intercept is not counted
  in any p_i and gets the innermost DF;
* BIC with log(n − p) as the sample size for REML fits (log n for ML);
* ``intervals()``: fixed effects β̂ ± t_{DF, 0.975}·SE; standard deviations,
  correlations and σ by Wald intervals on the log / Fisher-z scale, from the
  inverse Hessian of the (REML) log-likelihood in the parameters
  (log sd_j, log((1+ρ)/(1−ρ)), log σ).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from multilevel.errors import FormulaError, ModelError
from multilevel.formula.design import build_design, term_columns, to_pandas
from multilevel.formula.parser import Binary, Name, Node, Paren, Parser, parse_formula, tokenize
from multilevel.inference.nlme_df import between_within_df
from multilevel.lmm.fit import fit_design
from multilevel.lmm.results import LmerFit
from multilevel.longitudinal.correlation import CorStruct
from multilevel.longitudinal.estimate import StructuredEstimate, estimate_lmm
from multilevel.longitudinal.variance import VarFunc, varFixed
from multilevel.longitudinal.whiten import ResidualStructure
from multilevel.mixedfit import warn_about
from multilevel.optimize.hessian import fd_hessian
from multilevel.report import fit_html, ranef_records, table_records
from multilevel.threads import single_threaded_blas
from multilevel.workflow.gls import normalized, structure_frame, structure_intervals

_PLAIN_NAME = re.compile(r"^[A-Za-z.][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class LmeLevel:
    """One level of nlme's grouping: the groups of ``groups`` (outermost first)."""

    groups: tuple[str, ...]  # e.g. ("district", "school")
    rhs: str  # the random-effects expression, e.g. "1" or "cses"
    term: int  # index of the term in ``fit.lmer.design.random``

    @property
    def name(self) -> str:
        """nlme's name of the level: its innermost grouping factor."""
        return self.groups[-1]

    @property
    def label(self) -> str:
        """nlme's printed name, ``school %in% district``."""
        return " %in% ".join(reversed(self.groups))

    @property
    def lme4_name(self) -> str:
        """lme4's name of the grouping factor, ``school:district``."""
        return ":".join(reversed(self.groups))


# --------------------------------------------------------------------------- formulas


def _quote(name: str) -> str:
    return name if _PLAIN_NAME.match(name) else f"`{name}`"


def _rhs_check(src: str, start: int, end: int) -> str:
    """Validate the random-effects expression ``src[start:end]``; errors point
    into ``src``."""
    rhs = src[start:end]
    if not rhs.strip():
        raise FormulaError("no random-effects expression before '|' (e.g. '~ 1 | g')", src, start)
    try:
        parsed = parse_formula("~" + rhs, require_response=False)
    except FormulaError as exc:
        pos = None if exc.position is None else start + max(exc.position - 1, 0)
        raise FormulaError(exc.reason, src, pos) from None
    if parsed.random:
        raise FormulaError("a random-effects expression cannot contain '|' terms", src, start)
    return rhs.strip()


def _tilde(src: str, tokens: list) -> Any:
    first = tokens[0]
    if first.text != "~":
        raise FormulaError(
            "a random-effects formula starts with '~' (one-sided, e.g. '~ 1 | g')", src, first.pos
        )
    second = next((t for t in tokens[1:] if t.text == "~"), None)
    if second is not None:
        raise FormulaError("only one '~' is allowed", src, second.pos)
    return first


def _random_levels(random: Any) -> list[tuple[tuple[str, ...], str]]:
    """nlme's random argument -> [(groups outermost first, rhs)] per level."""
    if isinstance(random, dict):
        if not random:
            raise FormulaError("random= has no grouping levels")
        out = []
        groups: tuple[str, ...] = ()
        for g, f in random.items():
            if not isinstance(g, str) or not isinstance(f, str):
                raise FormulaError("random= as a dict maps grouping columns to '~ expr' strings")
            tokens = tokenize(f)
            tilde = _tilde(f, tokens)
            bar = next((t for t in tokens if t.text in ("|", "||")), None)
            if bar is not None:
                raise FormulaError(
                    f"in the dict form the grouping factor is the key ({g!r}); "
                    "give the expression only, e.g. '~ 1'",
                    f,
                    bar.pos,
                )
            groups = groups + (g,)
            out.append((groups, _rhs_check(f, tilde.end, len(f))))
        return out
    if not isinstance(random, str):
        raise FormulaError(
            f"random= must be a formula string such as '~ 1 | g', not {type(random).__name__}"
        )
    src = random
    if not src.strip():
        raise FormulaError("the random-effects formula is empty")
    tokens = tokenize(src)
    tilde = _tilde(src, tokens)
    depth = 0
    bars = []
    for t in tokens:
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        elif t.text in ("|", "||") and depth == 0:
            bars.append(t)
    if not bars:
        raise FormulaError(
            "the random-effects formula needs '| group' (e.g. '~ 1 | school')",
            src,
            len(src.rstrip()),
        )
    bar = bars[0]
    if bar.text == "||":
        raise FormulaError(
            "'||' is lme4 syntax; lme's random= takes '|' (general covariance)", src, bar.pos
        )
    if len(bars) > 1:
        raise FormulaError("only one '|' is allowed in a random-effects formula", src, bars[1].pos)
    rhs = _rhs_check(src, tilde.end, bar.pos)
    # grouping: name ('/' name)*, nlme's nesting from outermost to innermost
    names: list[str] = []
    expect_name = True
    for t in tokens[tokens.index(bar) + 1 :]:
        if t.kind == "end":
            break
        if expect_name and t.kind == "name":
            names.append(t.text[1:-1] if t.text.startswith("`") else t.text)
            expect_name = False
        elif not expect_name and t.text == "/":
            expect_name = True
        else:
            raise FormulaError(
                "the grouping after '|' must be a column or nested columns 'outer/inner'",
                src,
                t.pos,
            )
    if expect_name:
        raise FormulaError("a grouping factor is missing after '|' or '/'", src, len(src.rstrip()))
    if len(set(names)) != len(names):
        raise FormulaError("a grouping factor appears twice in the nesting", src, bar.end)
    return [(tuple(names[: k + 1]), rhs) for k in range(len(names))]


def lme4_formula(fixed: str, random: Any) -> str:
    """The lme4 formula of ``lme(fixed, random)``: ``~ x | a/b`` becomes
    ``(x | a) + (x | b:a)`` (lme4's name of the inner grouping)."""
    fparsed = parse_formula(fixed)
    if fparsed.random:
        bar = next(t for t in tokenize(fixed) if t.text in ("|", "||"))
        raise FormulaError(
            "lme's fixed formula has no random-effects terms; give them in random=",
            fixed,
            bar.pos,
        )
    terms = [
        f"({rhs} | {':'.join(_quote(g) for g in reversed(groups))})"
        for groups, rhs in _random_levels(random)
    ]
    return fixed.strip() + " + " + " + ".join(terms)


# --------------------------------------------------------------------------- fitting


def lme(
    fixed: str,
    random: Any,
    data: Any,
    method: str = "REML",
    weights: Any = None,
    na_action: str = "omit",
    levels: dict[str, list] | None = None,
    *,
    correlation: CorStruct | None = None,
    data_name: str | None = None,
    namespace: dict | None = None,
) -> LmeFit:
    """Fit a linear mixed-effects model with nlme's ``lme()`` syntax.

    ``fixed`` is a two-sided formula (``"y ~ x*z"``); ``random`` a one-sided
    formula with grouping (``"~ x | g"``, ``"~ 1 | outer/inner"``) or a dict
    ``{group: "~ expr"}`` from the outermost level in.  ``method`` is
    ``"REML"`` or ``"ML"``.  ``weights`` is a variance function
    (``varIdent(form="~ 1 | Sex")``, ``varPower()``, ``varExp``,
    ``varConstPower``, ``varFixed``, ``varComb``) or prior weights as in
    :func:`multilevel.lmer` (Var(εᵢ) = σ²/wᵢ).  ``correlation`` is a
    within-group correlation structure (``corAR1()``, ``corCAR1(form="~ t")``,
    ``corARMA(p=1, q=1)``, ``corCompSymm()``, ``corSymm()``, the spatial
    ``corExp``...); its groups default to the innermost grouping factor, its
    positions to the order of the rows within them (nlme's defaults).
    ``levels`` fixes factor level orders (first = reference); ``data_name``
    is the name printed on the ``Data:`` line (default: ``data.attrs["name"]``
    or ``"data"``).

    The model y = Xβ + Σ_k Z_k b_k + ε, b_k ~ N(0, Ψ_k) per group, ε ~ N(0, σ²I)
    is the one :func:`multilevel.lmer` fits; the estimates are the same.
    """
    if method not in ("REML", "ML"):
        raise ModelError(f"method must be 'REML' or 'ML', not {method!r}")
    formula = lme4_formula(fixed, random)
    level_specs = _random_levels(random)
    parsed = parse_formula(formula)
    var = weights if isinstance(weights, VarFunc) else None
    structured = var is not None or correlation is not None
    frame = to_pandas(data)
    if structured:
        frame = structure_frame(frame, correlation, var)
    design = build_design(
        parsed,
        frame,
        weights=None if var is not None else weights,
        levels=levels,
        na_action=na_action,
        namespace=namespace,
    )
    if data_name is None:
        data_name = getattr(frame, "attrs", {}).get("name", "data")
    struct = est = None
    with warnings.catch_warnings():
        # re-issued below so that they point at the caller
        warnings.simplefilter("ignore")
        if structured:
            fit, struct, est = fit_structured(
                design, frame, correlation, var, level_specs[-1][0], method == "REML", data_name
            )
        else:
            fit = fit_design(design, REML=method == "REML", data_name=data_name)
    warn_about(fit)
    lvls = []
    for groups, rhs in level_specs:
        key = frozenset(groups)
        idx = next(i for i, r in enumerate(design.random) if frozenset(r.term.group) == key)
        lvls.append(LmeLevel(groups, rhs, idx))
    return LmeFit(fit, lvls, fixed=fixed, random=random, struct=struct, est=est)


def fit_structured(
    design, frame, correlation, var, default_groups: tuple[str, ...], REML: bool, data_name: str
) -> tuple[LmerFit, ResidualStructure, StructuredEstimate]:
    """The LMM of ``design`` with a residual correlation structure and/or
    variance function (:mod:`multilevel.longitudinal`): the structure bound to
    the design's rows (correlation groups by default ``default_groups``, the
    innermost grouping), ω and θ estimated, the fit at ω̂.  Prior weights
    given with a structure become nlme's ``varFixed``."""
    rows = frame.loc[design.row_index]
    if design.weights is not None:
        rows = rows.assign(__prior_variance__=1.0 / design.weights)
        var = varFixed("~ __prior_variance__")
        design.weights = None
    with single_threaded_blas():
        struct = ResidualStructure(correlation, var, rows, default_groups)
        est = estimate_lmm(design, struct, REML)
        fit = LmerFit(design, est.crit, est.theta_record, REML=REML, data_name=data_name)
    fit.optinfo.messages.extend(est.record.messages)
    if not est.record.converged:
        fit.optinfo.converged = False
    return fit, struct, est


def _chain(node: Node) -> list[tuple[str, Node]]:
    """A top-level ``a + b - c`` chain as (sign, operand) pairs."""
    if isinstance(node, Binary) and node.op in ("+", "-"):
        left = _chain(node.left)
        return left + [(node.op, node.right)]
    return [("+", node)]


def _group_chain(node: Node, src: str) -> list[str] | None:
    """Columns of a grouping ``a``, ``a/b``, ``b:a`` (None for anything else)."""
    if isinstance(node, Paren):
        return _group_chain(node.inner, src)
    if isinstance(node, Name):
        return [node.name]
    if isinstance(node, Binary) and node.op in ("/", ":"):
        left, right = _group_chain(node.left, src), _group_chain(node.right, src)
        if left is None or right is None:
            return None
        return left + right
    return None


def nlme_random(formula: str) -> tuple[str, Any]:
    """Split an lme4 formula into lme's ``fixed`` and ``random`` arguments.

    The random terms must be one term or a nested hierarchy:
    ``(x | g)`` -> ``"~ x | g"``; ``(1 | a/b)`` -> ``"~ 1 | a/b"``;
    ``(1 | a) + (x | a:b)`` -> ``{"a": "~ 1", "b": "~ x"}``.
    """
    parser = Parser(formula)
    tokens = parser.tokens
    if not any(t.text == "~" for t in tokens) or tokens[0].text == "~":
        raise FormulaError("the formula needs a response and '~'", formula, 0)
    lhs = parser.expression(0)
    parser.next()
    rhs = parser.expression(0)
    if parser.peek().kind != "end":
        tok = parser.peek()
        raise FormulaError(f"unexpected '{tok.text}'", formula, tok.pos)
    fixed_parts: list[str] = []
    randoms: list[tuple[str, list[str], int, bool]] = []  # rhs, groups, pos, nested
    for sign, node in _chain(rhs):
        inner = node.inner if isinstance(node, Paren) else None
        if isinstance(inner, Binary) and inner.op in ("|", "||"):
            if inner.op == "||":
                raise FormulaError(
                    "lme takes general covariance terms only; '||' has no nlme counterpart here",
                    formula,
                    node.pos,
                )
            groups = _group_chain(inner.right, formula)
            if groups is None:
                raise FormulaError(
                    "lme needs grouping by columns: 'g', 'a/b' or 'b:a'", formula, inner.right.pos
                )
            nested = isinstance(inner.right, Binary) and inner.right.op == "/"
            text = formula[inner.left.pos : inner.left.end]
            randoms.append((text, groups, node.pos, nested))
        else:
            piece = formula[node.pos : node.end]
            fixed_parts.append(piece if not fixed_parts and sign == "+" else f"{sign} {piece}")
    if not randoms:
        raise FormulaError("the formula has no random-effects term '(expr | group)'", formula, 0)
    fixed = f"{formula[lhs.pos : lhs.end]} ~ {' '.join(fixed_parts) if fixed_parts else '1'}"
    if len(randoms) == 1:
        text, groups, _, nested = randoms[0]
        return fixed, f"~ {text} | {'/'.join(groups) if nested else ':'.join(groups)}"
    if any(r[3] for r in randoms):
        pos = next(r[2] for r in randoms if r[3])
        raise FormulaError("lme style: give nested grouping 'a/b' as the only term", formula, pos)
    # a nested hierarchy: every term adds one grouping column to the previous one
    ordered = sorted(randoms, key=lambda r: len(r[1]))
    levels: dict[str, str] = {}
    seen: set[str] = set()
    for text, groups, pos, _ in ordered:
        new = set(groups) - seen
        if len(groups) != len(seen) + 1 or not seen <= set(groups) or len(new) != 1:
            raise ModelError(
                f"lme style needs nested grouping levels (g, g:h, ...); {formula[pos:]!r} "
                "does not nest in the other terms (crossed factors: use lmer)"
            )
        seen |= new
        levels[new.pop()] = f"~ {text}"
    return fixed, levels


def lme_from_formula(formula: str, data: Any, method: str = "REML", **kwargs: Any) -> LmeFit:
    """:func:`lme` from one lme4 formula with nested random terms, e.g.
    ``"y ~ x + (x | school)"`` or ``"y ~ 1 + (1 | district/school)"``."""
    fixed, random = nlme_random(formula)
    return lme(fixed, random, data, method=method, **kwargs)


# --------------------------------------------------------------------------- results


class LmeFit:
    """A model fitted by :func:`lme`: nlme's accessors on an :class:`LmerFit`.

    Attributes not defined here (``theta``, ``condvar``, ``predict``,
    ``varcorr`` with lme4's group names, ...) are those of ``.lmer``.
    """

    nlme_style = True  # anova() compares as nlme's: in the order given, no refit

    def __init__(
        self,
        lmer: LmerFit,
        levels: list[LmeLevel],
        *,
        fixed: str,
        random: Any,
        struct: ResidualStructure | None = None,
        est: StructuredEstimate | None = None,
    ):
        self.lmer = lmer
        self.levels = levels  # outermost first
        self.fixed_formula = fixed
        self.random_formula = random
        self.struct = struct  # residual correlation / variance function (None: iid)
        self.est = est

    @property
    def corstruct(self) -> pd.Series | None:
        """nlme's ``coef(corStruct, unconstrained = FALSE)`` (None without one)."""
        return None if self.struct is None else self.struct.coef(self.est.omega)[0]

    @property
    def varstruct(self) -> pd.Series | None:
        """nlme's ``coef(varStruct, unconstrained = FALSE, allCoef = TRUE)``."""
        return None if self.struct is None else self.struct.coef(self.est.omega)[1]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "lmer":
            raise AttributeError(name)
        return getattr(self.lmer, name)

    # -- basic quantities -------------------------------------------------------
    @property
    def method(self) -> str:
        return "REML" if self.lmer.REML else "ML"

    @property
    def nobs(self) -> int:
        return self.lmer.nobs

    @property
    def fixef(self) -> pd.Series:
        return self.lmer.fixef.rename("Value")

    @property
    def sigma(self) -> float:
        """σ̂ on nlme's scale (with a variance function: Var(εᵢ) = σ²sᵢ²)."""
        if self.struct is None:
            return self.lmer.sigma
        return self.lmer.sigma / self.struct.scale(self.est.omega)

    @property
    def loglik(self) -> float:
        """Log-likelihood (REML log-likelihood for REML fits), as nlme's ``logLik``."""
        return self.lmer.loglik

    @property
    def df_model(self) -> int:
        """Fixed effects + covariance parameters + σ (+ the estimated correlation
        and variance parameters)."""
        return self.lmer.df_model + (0 if self.struct is None else int(self.struct.free.sum()))

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.df_model

    @property
    def bic(self) -> float:
        """−2ℓ + log(N)·df with N = n − p for REML (nlme), n for ML."""
        n = self.nobs - (len(self.fixef) if self.lmer.REML else 0)
        return -2.0 * self.loglik + np.log(n) * self.df_model

    @cached_property
    def vcov(self) -> pd.DataFrame:
        """Covariance of β̂ as nlme reports it: σ̃²(XᵀV⁻¹X)⁻¹ with σ̃² = r²/(n − p)
        for REML and ML fits alike (for ML this is lme4's vcov × n/(n − p))."""
        V = self.lmer.vcov
        if not self.lmer.REML:
            n, p = self.nobs, len(V)
            V = V * (n / (n - p))
        return V

    @property
    def se(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov)), index=self.vcov.index, name="Std.Error")

    @property
    def ngroups(self) -> dict[str, int]:
        """Number of groups per level (nlme's names), outermost first."""
        return {lv.name: self.lmer.design.random[lv.term].nlevels for lv in self.levels}

    # -- denominator DF, t-tests ----------------------------------------------------
    @cached_property
    def _df(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.lmer.design
        codes = [d.random[lv.term].codes for lv in self.levels]
        return between_within_df(d.X, term_columns(d), codes, d.xspec.intercept)

    @property
    def df(self) -> pd.Series:
        """Denominator degrees of freedom of the t-tests (between/within rule)."""
        return pd.Series(self._df[0], index=self.lmer.design.fixef_names, name="DF")

    @property
    def fixef_level(self) -> pd.Series:
        """Grouping level at which each coefficient is estimated (1 = outermost
        grouping, Q+1 = within the innermost groups)."""
        return pd.Series(self._df[1], index=self.lmer.design.fixef_names, name="level")

    @property
    def tTable(self) -> pd.DataFrame:
        """Value, Std.Error, DF, t-value, p-value (two-sided t tests)."""
        from scipy import stats  # scipy.stats costs 0.5 s to import: when used

        est = self.fixef.to_numpy()
        se = self.se.to_numpy()
        df = self._df[0]
        t = est / se
        p = 2.0 * stats.t.sf(np.abs(t), df)
        return pd.DataFrame(
            {"Value": est, "Std.Error": se, "DF": df, "t-value": t, "p-value": p},
            index=self.lmer.design.fixef_names,
        )

    # -- random effects -----------------------------------------------------------
    @cached_property
    def _group_order(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per level: (lmer level index of each nlme group in nlme's order,
        nlme labels 'outer/inner' in that order)."""
        d = self.lmer.design
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for k, lv in enumerate(self.levels):
            r = d.random[lv.term]
            labels = np.asarray(r.levels, dtype=object)
            if k == 0:
                order = np.arange(r.nlevels)
                out.append((order, labels))
                continue
            pr = d.random[self.levels[k - 1].term]
            parent = np.empty(r.nlevels, dtype=np.int64)
            parent[r.codes] = pr.codes  # nested: every group has one parent
            p_order, p_labels = out[-1]
            p_pos = np.empty(pr.nlevels, dtype=np.int64)
            p_pos[p_order] = np.arange(pr.nlevels)
            # lme4's label of the group is "own:parent's lme4 label"
            p_lme4 = np.asarray(pr.levels, dtype=object)[parent]
            own = np.array(
                [lab[: len(lab) - len(pl) - 1] for lab, pl in zip(labels, p_lme4, strict=True)],
                dtype=object,
            )
            # outer level slowest, then the inner level's own order
            order = np.lexsort((np.arange(r.nlevels), p_pos[parent]))
            nl = p_labels[p_pos[parent[order]]] + "/" + own[order]
            out.append((order, nl))
        return out

    @cached_property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes per level (nlme's names; inner groups 'outer/inner')."""
        out = {}
        for lv, (order, labels) in zip(self.levels, self._group_order, strict=True):
            r = self.lmer.design.random[lv.term]
            b = self.lmer._b[lv.term][order]
            out[lv.name] = pd.DataFrame(b, index=pd.Index(labels, name=lv.name), columns=r.cnames)
        return out

    @cached_property
    def coef(self) -> dict[str, pd.DataFrame]:
        """Per level: fixed effects plus the random effects of that level and of
        the levels outside it (nlme's ``coef``)."""
        fe = self.fixef
        out = {}
        for k, lv in enumerate(self.levels):
            order, labels = self._group_order[k]
            r = self.lmer.design.random[lv.term]
            df = pd.DataFrame(
                np.tile(fe.to_numpy(), (r.nlevels, 1)), index=pd.Index(labels), columns=fe.index
            )
            # any row of a group names the group's parents at the outer levels
            rep = np.empty(r.nlevels, dtype=np.int64)
            rep[r.codes] = np.arange(len(r.codes))
            rows = rep[order]
            for j in range(k + 1):
                rj = self.lmer.design.random[self.levels[j].term]
                bj = self.lmer._b[self.levels[j].term][rj.codes[rows]]
                for c, cn in enumerate(rj.cnames):
                    if cn in df.columns:
                        df[cn] = df[cn] + bj[:, c]
                    else:
                        df[cn] = bj[:, c]
            out[lv.name] = df
        return out

    # -- fitted values and residuals ------------------------------------------------
    def fitted(self, level: int | None = None) -> pd.Series:
        """Xβ̂ plus the random effects of levels 1..``level`` (default: all)."""
        d = self.lmer.design
        lvl = len(self.levels) if level is None else int(level)
        if not 0 <= lvl <= len(self.levels):
            raise ModelError(f"level must be between 0 and {len(self.levels)}")
        eta = d.X @ self.lmer.fixef.to_numpy()
        if d.offset is not None:
            eta = eta + d.offset
        for lv in self.levels[:lvl]:
            r = d.random[lv.term]
            eta = eta + np.einsum("nq,nq->n", r.Z, self.lmer._b[lv.term][r.codes])
        return pd.Series(eta, index=d.row_index, name="fitted")

    def residuals(self, type: str = "response", level: int | None = None) -> pd.Series:
        """y − fitted(level); ``type="pearson"`` divides by σ̂/√wᵢ (nlme's
        standardized residuals; σ̂sᵢ with a variance function), ``"normalized"``
        also whitens them within groups (L⁻¹r/σ̂: independent N(0, 1) under
        the model)."""
        d = self.lmer.design
        res = d.y - self.fitted(level).to_numpy()
        if self.struct is not None:
            out = normalized(self.struct, self.est.omega, res, self.lmer.sigma, type)
            return pd.Series(out, index=d.row_index, name="residuals")
        if type == "normalized":
            type = "pearson"
        if type == "pearson":
            res = res / self.sigma
            if d.weights is not None:
                res = res * np.sqrt(d.weights)
        elif type != "response":
            raise ValueError(f"type must be 'response', 'pearson' or 'normalized', not {type!r}")
        return pd.Series(res, index=d.row_index, name="residuals")

    # -- approximate intervals ------------------------------------------------------
    def _natural(self) -> tuple[np.ndarray, list[tuple[LmeLevel, list[str]]]]:
        """Natural parameters (log sd, log((1+ρ)/(1−ρ)) per level, log σ) at the fit."""
        fac = self.lmer._fac
        sigma = self.lmer.sigma
        phi: list[float] = []
        names = []
        for lv in self.levels:
            r = self.lmer.design.random[lv.term]
            T = fac.T[lv.term]
            cov = sigma**2 * (T @ T.T)
            sd = np.sqrt(np.diag(cov))
            with np.errstate(divide="ignore", invalid="ignore"):
                corr = cov / np.outer(sd, sd)
                phi.extend(np.log(sd))
            iu, ju = _pairs(r.q)
            rho = corr[iu, ju]
            with np.errstate(divide="ignore"):
                phi.extend(np.log((1 + rho) / (1 - rho)))
            cn = r.cnames
            names.append(
                (
                    lv,
                    [f"sd({c})" for c in cn]
                    + [f"cor({cn[i]},{cn[j]})" for i, j in zip(iu, ju, strict=True)],
                )
            )
        if self.struct is not None:
            phi.extend(np.asarray(self.est.omega, float)[self.struct.free])
            sigma = self.sigma  # nlme's σ (the structure's scale taken out)
        phi.append(np.log(sigma))
        return np.asarray(phi, dtype=float), names

    def _criterion_at(self, omega: np.ndarray):
        key = np.asarray(omega, float).tobytes()
        cache = self.__dict__.setdefault("_crit_cache", {})
        if key not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[key] = self.est.whitened.criterion(omega, self.lmer.REML)
        return cache[key]

    def _deviance_natural(self, phi: np.ndarray) -> float:
        """−2 × (REML) log-likelihood at natural parameters, β profiled out;
        with a residual structure phi also holds ω's free entries before log σ
        (nlme's σ: the whitened model's is σ times the variance function's scale)."""
        crit = self.lmer.criterion
        sigma2 = float(np.exp(2.0 * phi[-1]))
        if self.struct is not None:
            k = int(self.struct.free.sum())
            omega = np.array(self.est.omega, float)
            omega[self.struct.free] = phi[len(phi) - 1 - k : len(phi) - 1]
            crit = self._criterion_at(omega)
            if crit is None:
                return np.inf
            sigma2 *= self.struct.scale(omega) ** 2
        theta = np.zeros(len(self.lmer.optinfo.theta))
        pos = 0
        for lv in self.levels:
            q = self.lmer.design.random[lv.term].q
            sd = np.exp(phi[pos : pos + q])
            pos += q
            iu, ju = _pairs(q)
            corr = np.eye(q)
            corr[iu, ju] = corr[ju, iu] = np.tanh(phi[pos : pos + len(iu)] / 2.0)
            pos += len(iu)
            try:
                T = np.linalg.cholesky(corr * np.outer(sd, sd) / sigma2)
            except np.linalg.LinAlgError:
                return np.inf
            tm = crit.tmpl[lv.term]
            theta[tm.offset : tm.offset + tm.size] = T[tm.rows, tm.cols]
        f = crit.factor(theta)
        if f is None:
            return np.inf
        dof = crit.n - crit.p if crit.reml else crit.n
        dev = f.logdet_Z + dof * np.log(2 * np.pi * sigma2) + f.r2 / sigma2 - crit.sum_log_w
        if crit.reml:
            dev += f.logdet_X
        return float(dev)

    @cached_property
    def apVar(self) -> pd.DataFrame:
        """Approximate covariance of the natural parameters (log sd, Fisher-z
        of correlations as log((1+ρ)/(1−ρ)), log σ): the inverse of the Hessian
        of −ℓ, by central differences of the exact likelihood."""
        phi, names = self._natural()
        labels = [f"{lv.name}.{nm}" for lv, nms in names for nm in nms]
        if self.struct is not None:
            snames = (self.struct.cor.names() if self.struct.cor else []) + (
                self.struct.var.names() if self.struct.var else []
            )
            labels += [f"struct.{n}" for n, f in zip(snames, self.struct.free, strict=True) if f]
        labels += ["log(sigma)"]
        if not np.isfinite(phi).all() or self.lmer.singular:
            raise ModelError(
                "cannot get intervals on the variance components: the fit is on the "
                "boundary (a zero variance or a correlation of ±1), so the approximate "
                "covariance is not positive definite; use intervals(which='fixed')"
            )
        # a step of 1e-3 on the log scale: smaller steps drown in rounding of the
        # likelihood for weakly determined parameters (nlme's own step of
        # about 6e-6 does, which shrinks its intervals for such parameters)
        H = fd_hessian(self._deviance_natural, phi, 1e-3)[0] / 2.0
        try:
            V = np.linalg.inv(H)
            np.linalg.cholesky(V)
        except np.linalg.LinAlgError:
            raise ModelError(
                "the approximate covariance of the variance components is not positive "
                "definite; use intervals(which='fixed')"
            ) from None
        return pd.DataFrame(V, index=labels, columns=labels)

    def intervals(self, level: float = 0.95, which: str = "all") -> dict[str, Any]:
        """nlme's approximate confidence intervals.

        ``fixed``: β̂ ± t_{DF,(1+level)/2}·SE (DataFrame lower / est. / upper),
        SE from σ̂ of the fit (for ML fits smaller than the t-table's by
        √((n − p)/n), as in nlme).
        ``reStruct`` (per level) and ``sigma``: Wald intervals of the natural
        parameters with normal quantiles, transformed back (exp for SDs and σ,
        tanh(z/2) for correlations).  ``which`` is "all", "fixed" or "var-cov".
        """
        from scipy import stats  # scipy.stats costs 0.5 s to import: when used

        if which not in ("all", "fixed", "var-cov"):
            raise ValueError("which must be 'all', 'fixed' or 'var-cov'")
        if not 0 < level < 1:
            raise ValueError("level must be between 0 and 1")
        out: dict[str, Any] = {}
        cols = ["lower", "est.", "upper"]
        if which in ("all", "fixed"):
            # nlme's intervals take SEs from σ̂ of the fit (the ML σ̂ for ML
            # fits), unlike its t-table
            se = self.lmer.se.to_numpy()
            half = stats.t.ppf(0.5 + level / 2, self._df[0]) * se
            est = self.fixef.to_numpy()
            out["fixed"] = pd.DataFrame(
                np.column_stack([est - half, est, est + half]), index=self.fixef.index, columns=cols
            )
        if which in ("all", "var-cov"):
            phi, names = self._natural()
            V = self.apVar.to_numpy()
            z = stats.norm.ppf(0.5 + level / 2) * np.sqrt(np.diag(V))
            lo, hi = phi - z, phi + z
            re: dict[str, pd.DataFrame] = {}
            pos = 0
            for lv, nms in names:
                q = self.lmer.design.random[lv.term].q
                k = len(nms)
                block = np.column_stack([lo[pos : pos + k], phi[pos : pos + k], hi[pos : pos + k]])
                block[:q] = np.exp(block[:q])
                block[q:] = np.tanh(block[q:] / 2.0)
                re[lv.name] = pd.DataFrame(block, index=nms, columns=cols)
                pos += k
            out["reStruct"] = re
            out["sigma"] = pd.Series(np.exp([lo[-1], phi[-1], hi[-1]]), index=cols, name="sigma")
            if self.struct is not None:
                free = self.struct.free
                k = int(free.sum())
                Vs = np.zeros((free.size + 1, free.size + 1))
                idx = np.r_[np.flatnonzero(free), free.size]
                Vs[np.ix_(idx, idx)] = V[pos:, pos:][: k + 1, : k + 1]
                si = structure_intervals(self.struct, self.est.omega, self.sigma, Vs, level)
                out.update({key: v for key, v in si.items() if key != "sigma"})
        return out

    # -- export -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every number of the summary as plain Python types (JSON-ready):
        the lme4 fit's, with nlme's SEs, t-table, DF and BIC."""
        tt = self.tTable
        out = self.lmer.to_dict()
        out.update(
            {
                "model": "lme",
                "fixed": self.fixed_formula,
                "random": self.random_formula,
                "ngroups": dict(self.ngroups),
                "se": {k: float(v) for k, v in tt["Std.Error"].items()},
                "t": {k: float(v) for k, v in tt["t-value"].items()},
                "df": {k: int(v) for k, v in tt["DF"].items()},
                "p": {k: float(v) for k, v in tt["p-value"].items()},
                "vcov": self.vcov.to_numpy().tolist(),
                "bic": self.bic,
                "coefficients": table_records(tt),
                "ranef": ranef_records(self.ranef, None),
                "fitted": [float(v) for v in self.fitted()],
            }
        )
        return out

    def to_json(self, **kwargs: Any) -> str:
        """Every number of the summary as JSON (non-finite values as null)."""
        from multilevel.report import to_json

        return to_json(self.to_dict(), **kwargs)

    # -- printing -------------------------------------------------------------------
    def _repr_html_(self) -> str:
        return fit_html(self)

    def summary(self) -> LmeSummary:
        """nlme's summary; ``print(fit.summary())`` shows it."""
        return LmeSummary(self)

    def __repr__(self) -> str:
        return (
            f"<LmeFit {self.method}: {self.fixed_formula}, random={self.random_formula!r}; "
            f"nobs={self.nobs}, loglik={self.loglik:.4f}>"
        )


class LmeSummary:
    """nlme's ``summary(fit)``: the text, and the t-table."""

    def __init__(self, fit: LmeFit):
        self.fit = fit

    @property
    def tTable(self) -> pd.DataFrame:
        return self.fit.tTable

    def __str__(self) -> str:
        from multilevel.workflow.nlme_report import lme_summary

        return lme_summary(self.fit)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.fit._repr_html_()


def _pairs(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of the correlations in nlme's order: (1,2), (1,3), (2,3), ..."""
    i, j = np.triu_indices(q, 1)
    order = np.lexsort((i, j))
    return i[order], j[order]


__all__ = [
    "LmeFit",
    "LmeLevel",
    "LmeSummary",
    "lme",
    "lme4_formula",
    "lme_from_formula",
    "nlme_random",
]
