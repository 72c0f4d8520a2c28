"""Safe evaluation of the variable expressions of a formula.

A formula names columns and a documented set of transformations; it never
runs arbitrary code.  An expression is parsed with Python's :mod:`ast` (after
R's ``^`` became ``**``) and only these nodes are accepted: column names,
numbers, strings, arithmetic (``+ - * / ** % //``, unary minus), comparisons,
``&``/``|``/``~`` on booleans and calls of

``I, log, log2, log10, log1p, exp, expm1, sqrt, abs, sin, cos, tan, floor,
ceiling, round, sign, scale, center, poly, offset, cbind, pi``.

``scale(x)``, ``center(x)`` and ``poly(x, degree)`` (orthogonal polynomials)
are stateful: the constants computed on the fitting data are remembered so
that ``predict`` on new data applies the same transformation (as R's
``makepredictcall`` does).
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from multilevel.errors import DataError, FormulaError, MultilevelError


def _scale(state: dict, x: np.ndarray, center: bool = True, scale: bool = True) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if "mean" not in state:
        state["mean"] = float(np.nanmean(x)) if center else 0.0
        state["sd"] = float(np.nanstd(x, ddof=1)) if scale else 1.0
    return (x - state["mean"]) / state["sd"]


def _center(state: dict, x: np.ndarray) -> np.ndarray:
    return _scale(state, x, center=True, scale=False)


def _poly(state: dict, x: np.ndarray, degree: int = 1) -> np.ndarray:
    """Orthogonal polynomials of x (columns 1..degree), by the three-term
    recurrence p_{k+1} = (x − a_k) p_k − (n_k / n_{k−1}) p_{k−1} with
    a_k = Σ x p_k² / n_k and n_k = Σ p_k² computed on the fitting data and kept
    for new data; columns are scaled to unit length on the fitting data."""
    x = np.asarray(x, dtype=float)
    degree = int(degree)
    if degree < 1:
        raise FormulaError("poly() needs a degree of at least 1")
    if "alpha" not in state:
        ok = x[np.isfinite(x)]
        if np.unique(ok).size <= degree:
            raise FormulaError(f"poly(): degree {degree} needs more than {degree} distinct values")
        alpha, norm = [], [1.0, float(ok.size)]
        p_prev, p = np.zeros_like(ok), np.ones_like(ok)
        for _ in range(degree):
            alpha.append(float(np.sum(ok * p * p) / norm[-1]))
            p_prev, p = p, (ok - alpha[-1]) * p - (norm[-1] / norm[-2]) * p_prev
            norm.append(float(np.sum(p * p)))
        state["alpha"], state["norm"] = alpha, norm
    alpha, norm = state["alpha"], state["norm"]
    out = np.empty((x.size, degree))
    p_prev, p = np.zeros_like(x), np.ones_like(x)
    for k in range(degree):  # the degree, not rows
        p_prev, p = p, (x - alpha[k]) * p - (norm[k + 1] / norm[k]) * p_prev
        out[:, k] = p / np.sqrt(norm[k + 2])
    return out


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "I": lambda x: x,
    "offset": lambda x: x,  # the parser accepts offset() only at the top level
    "cbind": lambda *cols: np.column_stack(cols),  # binomial responses: successes, failures
    "log": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "log1p": np.log1p,
    "exp": np.exp,
    "expm1": np.expm1,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "floor": np.floor,
    "ceiling": np.ceil,
    "round": np.round,
    "sign": np.sign,
}
_STATEFUL = {"scale": _scale, "center": _center, "poly": _poly}
_CONSTANTS = {"pi": np.pi, "TRUE": True, "FALSE": False, "True": True, "False": False}
ALLOWED_FUNCTIONS = sorted([*_FUNCTIONS, *_STATEFUL])

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.Pow: np.power,
    ast.Mod: np.mod,
    ast.FloorDiv: np.floor_divide,
    ast.BitAnd: np.logical_and,
    ast.BitOr: np.logical_or,
}
_CMPOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
}


def closest(name: str, options: list[str]) -> str:
    """' (did you mean ...?)' text for a misspelt column."""
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


MAX_EXPRESSION = 20_000  # characters of one expression


def _r_names(code: str) -> tuple[str, dict[str, str]]:
    """R names Python cannot parse, replaced by placeholders: backticked names
    (`my var`) and dotted ones (Sepal.Width).  Returns the code and a map from
    placeholder back to the name."""
    names: dict[str, str] = {}

    def hold(name: str) -> str:
        key = f"_rname{len(names)}_"
        names[key] = name
        return key

    out, i, n = [], 0, len(code)
    while i < n:
        ch = code[i]
        if ch == "`":
            j = code.find("`", i + 1)
            if j < 0:
                break
            out.append(hold(code[i + 1 : j]))
            i = j + 1
        elif ch in "'\"":  # a string literal: copied as it is
            j = i + 1
            while j < n and code[j] != ch:
                j += 2 if code[j] == "\\" else 1
            out.append(code[i : j + 1])
            i = j + 1
        elif ch.isalpha() or ch == "_" or (ch == "." and i + 1 < n and not code[i + 1].isdigit()):
            j = i
            while j < n and (code[j].isalnum() or code[j] in "._"):
                j += 1
            word = code[i:j]
            out.append(hold(word) if "." in word else word)
            i = j
        else:
            out.append(ch)
            i += 1
    out.append(code[i:])
    return "".join(out), names


@lru_cache(maxsize=1024)
def _checked(code: str, label: str, own: frozenset[str]) -> tuple[ast.Expression, tuple[str, ...]]:
    """The expression's syntax tree, checked against the allowed functions and
    nodes (``own``: the caller's functions), and the names it reads as
    variables (not called), in order of first appearance.  Cached by text: a
    formula's expressions are parsed and checked on every fit, and refits of
    one formula are the common case.  The tree is shared: evaluation only
    reads it."""
    if len(code) > MAX_EXPRESSION:
        raise FormulaError(
            f"the expression {label[:40]!r}... is {len(code)} characters long "
            f"(limit {MAX_EXPRESSION}); build the column in the data instead"
        )
    code, names = _r_names(code)
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"cannot parse the expression {label!r}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise FormulaError(
            f"the expression {label[:40]!r}... is nested too deeply to evaluate"
        ) from None
    nodes = list(ast.walk(tree))
    if names:
        for node in nodes:
            if isinstance(node, ast.Name) and node.id in names:
                node.id = names[node.id]
    called = set()
    for node in nodes:
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or (
                node.func.id not in _FUNCTIONS
                and node.func.id not in _STATEFUL
                and node.func.id not in own
            ):
                fname = ast.unparse(node.func)
                raise FormulaError(
                    f"function {fname!r} in {label!r} is not allowed in a formula; "
                    f"allowed: {', '.join(ALLOWED_FUNCTIONS)} (pass namespace= to add "
                    "functions of your own)"
                )
            called.add(id(node.func))
        elif not isinstance(node, _ALLOWED_NODES):
            raise FormulaError(
                f"{type(node).__name__} is not allowed in formula expression {label!r}"
            )
    variables: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Name) and id(node) not in called and node.id not in variables:
            variables.append(node.id)
    return tree, tuple(variables)


class Evaluator:
    """Evaluates factor expressions on a mapping of column arrays.

    ``states`` keeps the data-dependent constants of stateful transforms by
    expression, so the same Evaluator reproduces them on new data.
    ``namespace`` (explicit opt-in) adds the caller's own functions.
    """

    def __init__(self, namespace: Mapping[str, Any] | None = None):
        self.namespace = dict(namespace or {})
        self.states: dict[str, dict] = {}

    def columns_used(self, code: str, columns: list[str], label: str) -> list[str]:
        """Names of data columns referenced by ``code``; refuses anything unsafe."""
        used: list[str] = []
        for name in _checked(code, label, frozenset(self.namespace))[1]:
            if name in columns:
                used.append(name)
            elif name not in _CONSTANTS and name not in self.namespace:
                raise DataError(
                    f"column {name!r} (in {label!r}) is not in the data" + closest(name, columns)
                )
        return used

    def _parse(self, code: str, label: str) -> ast.Expression:
        return _checked(code, label, frozenset(self.namespace))[0]

    def evaluate(self, code: str, data: Mapping[str, np.ndarray], label: str) -> np.ndarray:
        tree = self._parse(code, label)
        state = self.states.setdefault(label, {})
        counter = iter(range(1_000_000))
        try:
            value = self._eval(tree.body, data, state, counter)
        except RecursionError:
            raise FormulaError(f"the expression {label[:40]!r}... is nested too deeply") from None
        except MultilevelError:
            raise
        except (TypeError, ValueError) as exc:
            raise DataError(f"cannot evaluate {label!r} on the data: {exc}") from None
        value = np.asarray(value)
        if value.ndim == 0 and value.dtype.kind in "USO":
            raise DataError(f"{label!r} is a constant {value.item()!r}, not a column of the data")
        return value

    def _eval(self, node: ast.AST, data: Mapping[str, np.ndarray], state: dict, counter) -> Any:
        if isinstance(node, ast.Constant):
            value = node.value
            # R's numbers are doubles: 10^20 must not wrap around, 2^-1 is 0.5
            return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(node, ast.Name):
            if node.id in data:
                return data[node.id]
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            return self.namespace[node.id]
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](
                self._eval(node.left, data, state, counter),
                self._eval(node.right, data, state, counter),
            )
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, data, state, counter)
            if isinstance(node.op, ast.USub):
                return np.negative(value)
            if isinstance(node.op, ast.UAdd):
                return value
            return np.logical_not(value)
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, data, state, counter)
            result = None
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comp, data, state, counter)
                part = _CMPOPS[type(op)](left, right)
                result = part if result is None else np.logical_and(result, part)
                left = right
            return result
        if isinstance(node, ast.Call):
            fname = node.func.id  # type: ignore[attr-defined]
            args = [self._eval(a, data, state, counter) for a in node.args]
            kwargs = {k.arg: self._eval(k.value, data, state, counter) for k in node.keywords}
            if fname in self.namespace:  # the caller's own functions override built-ins
                return self.namespace[fname](*args, **kwargs)
            if fname in _STATEFUL:
                sub = state.setdefault(f"{fname}#{next(counter)}", {})
                return _STATEFUL[fname](sub, *args, **kwargs)
            with np.errstate(all="ignore"):
                return _FUNCTIONS[fname](*args, **kwargs)
        raise FormulaError(f"unsupported expression {ast.unparse(node)!r}")


_ALLOWED_NODES = (
    ast.Expression,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.Call,
    ast.keyword,
    *_BINOPS,
    *_CMPOPS,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.Invert,
)
