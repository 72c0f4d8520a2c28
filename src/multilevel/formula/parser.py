"""lme4 model formulas: tokenizer, parser and R's term algebra.

A formula ``y ~ fixed + (expr | g)`` is parsed into

* the response expression,
* the fixed part as R's ``terms()`` would expand it: an intercept flag and an
  ordered list of terms, each term an ordered tuple of factor expressions
  (``a*b`` = ``a + b + a:b``, ``(a+b+c)^2`` = all interactions up to order 2,
  ``a/b`` = ``a + a:b``, ``b %in% a`` = ``b:a``, ``-`` removes terms,
  ``0``/``-1`` drop the intercept, ``offset()`` is collected separately),
* the random terms ``(expr | g)`` / ``(expr || g)`` with nested grouping
  ``g1/g2`` expanded as lme4 does.

Terms are ordered by degree, stably, and the factors inside an interaction by
their first appearance in the formula, which is what gives R's column names
(``cses:sectorCatholic`` for ``meanses*cses + sector*cses``). Only parsing
happens here; evaluating expressions on data is :mod:`multilevel.formula.design`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from multilevel.errors import FormulaError

# --------------------------------------------------------------------------- tokens

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_.][A-Za-z0-9_.]*|`[^`]*`)
  | (?P<op>%in%|\|\||\*\*|[~+\-*/:^()|,])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "op", "call", "end"
    text: str
    pos: int
    end: int


def _scan_call_args(src: str, start: int) -> int:
    """Return the index just past the parenthesis closing the one at ``start``."""
    depth = 0
    i = start
    quote = ""
    while i < len(src):
        ch = src[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise FormulaError("unclosed parenthesis", src, start)


def tokenize(src: str) -> list[Token]:
    """Split a formula into tokens.  A name directly followed by ``(`` is a
    function call whose whole text, arguments included, is one ``call`` token:
    call arguments are expressions for the evaluator, not formula operators."""
    tokens: list[Token] = []
    i = 0
    while i < len(src):
        m = _TOKEN_RE.match(src, i)
        if m is None:
            raise FormulaError(f"unexpected character {src[i]!r}", src, i)
        kind = m.lastgroup
        assert kind is not None
        if kind == "ws":
            i = m.end()
            continue
        text = m.group()
        if kind == "name" and not text.startswith("`"):
            j = m.end()
            while j < len(src) and src[j] in " \t":
                j += 1
            if j < len(src) and src[j] == "(":
                end = _scan_call_args(src, j)
                tokens.append(Token("call", src[i:end], i, end))
                i = end
                continue
        tokens.append(Token(kind, text, i, m.end()))
        i = m.end()
    tokens.append(Token("end", "", len(src), len(src)))
    return tokens


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Node:
    pos: int
    end: int


@dataclass(frozen=True)
class Name(Node):
    name: str  # column name (backticks removed)


@dataclass(frozen=True)
class Num(Node):
    text: str


@dataclass(frozen=True)
class Call(Node):
    func: str
    text: str  # whole call as written


@dataclass(frozen=True)
class Unary(Node):
    op: str
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Paren(Node):
    inner: Node


# binding powers (left, right) of binary operators, as in R's grammar
_BINARY = {
    "|": (2, 3),
    "||": (2, 3),
    "+": (4, 5),
    "-": (4, 5),
    "*": (6, 7),
    "/": (6, 7),
    "%in%": (8, 9),
    ":": (10, 11),
    "^": (14, 13),  # right associative
    "**": (14, 13),
}
_UNARY_BP = 12


MAX_DEPTH = 100  # nested parentheses, signs and powers in one formula


class Parser:
    def __init__(self, src: str):
        self.src = src
        self.tokens = tokenize(src)
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, message: str, pos: int) -> FormulaError:
        return FormulaError(message, self.src, pos)

    def expression(self, min_bp: int = 0) -> Node:
        # operators chain in the loop below; only parentheses, unary signs and
        # right-associative powers nest, and their depth is bounded
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.error(
                    f"the formula is nested more than {MAX_DEPTH} levels deep", self.peek().pos
                )
            return self._expression(min_bp)
        finally:
            self.depth -= 1

    def _expression(self, min_bp: int) -> Node:
        left = self.atom()
        while True:
            tok = self.peek()
            if tok.kind != "op" or tok.text not in _BINARY:
                break
            lbp, rbp = _BINARY[tok.text]
            if lbp < min_bp:
                break
            self.next()
            if self.peek().kind == "end":
                raise self.error(f"missing right-hand operand of '{tok.text}'", tok.pos)
            right = self.expression(rbp)
            op = "^" if tok.text == "**" else tok.text
            left = Binary(left.pos, right.end, op, left, right)
        return left

    def atom(self) -> Node:
        tok = self.next()
        if tok.kind == "name":
            name = tok.text[1:-1] if tok.text.startswith("`") else tok.text
            if name == ".":
                raise self.error(
                    "'.' (all other columns) is not supported; name the columns", tok.pos
                )
            return Name(tok.pos, tok.end, name)
        if tok.kind == "number":
            return Num(tok.pos, tok.end, tok.text)
        if tok.kind == "call":
            func = tok.text[: tok.text.index("(")].strip()
            return Call(tok.pos, tok.end, func, tok.text)
        if tok.kind == "op" and tok.text in ("-", "+"):
            operand = self.expression(_UNARY_BP)
            return Unary(tok.pos, operand.end, tok.text, operand)
        if tok.kind == "op" and tok.text == "(":
            if self.peek().text == ")":
                raise self.error("empty parentheses", tok.pos)
            inner = self.expression(0)
            close = self.next()
            if close.text != ")":
                raise self.error("expected ')'", close.pos)
            return Paren(tok.pos, close.end, inner)
        if tok.kind == "end":
            raise self.error("unexpected end of formula", tok.pos)
        raise self.error(f"unexpected '{tok.text}'", tok.pos)


# --------------------------------------------------------------------------- terms


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip())


@dataclass(frozen=True)
class Factor:
    """One variable expression of a formula: a column name or a call."""

    label: str  # R-style text used in column names, e.g. "I(x^2)"
    code: str  # Python expression evaluated on the data, e.g. "I(x**2)"
    is_name: bool  # a bare column name


@dataclass
class TermSet:
    """An expanded model formula right-hand side: intercept and ordered terms."""

    intercept: bool = True
    terms: list[tuple[str, ...]] = field(default_factory=list)  # factor labels, ordered
    offsets: list[str] = field(default_factory=list)  # factor labels

    def term_labels(self) -> list[str]:
        return [":".join(t) for t in self.terms]


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(expr | group)`` after expansion."""

    expr: TermSet  # the model matrix of the random effects for this term
    group: tuple[str, ...]  # grouping factor labels; several means their interaction
    # lme4's name for the grouping factor: "school", "a:b"; the inner factor of
    # a/b is "b:a" (group reversed to match), with levels "blevel:alevel"
    group_name: str
    text: str  # the term as written (after || and / expansion)


@dataclass
class ParsedFormula:
    text: str
    response: Factor | None
    fixed: TermSet
    random: list[RandomTerm]
    factors: dict[str, Factor]  # every factor by label, in order of first appearance

    @property
    def variables(self) -> list[str]:
        return list(self.factors)


class Expander:
    """R's term algebra over an AST.  Terms are frozensets of factor labels while
    expanding; they are ordered by degree and appearance afterwards."""

    def __init__(self, src: str, factors: dict[str, Factor]):
        self.src = src
        self.factors = factors

    def error(self, message: str, node: Node) -> FormulaError:
        return FormulaError(message, self.src, node.pos)

    def factor(self, node: Name | Call) -> str:
        if isinstance(node, Name):
            label, code, is_name = node.name, node.name, True
        else:
            label = _norm(node.text)
            code = label.replace("^", "**").replace("****", "**")
            is_name = False
        self.factors.setdefault(label, Factor(label, code, is_name))
        return label

    def expand(self, node: Node, ctx: dict) -> tuple[list[frozenset], bool | None]:
        """Return (terms, intercept) where intercept is True/False if set here."""
        if isinstance(node, Name):
            return [frozenset([self.factor(node)])], None
        if isinstance(node, Call):
            if node.func == "offset":
                if not ctx.get("top"):
                    raise self.error("offset() must be added at the top level", node)
                ctx["offsets"].append(self.factor(node))
                return [], None
            return [frozenset([self.factor(node)])], None
        if isinstance(node, Num):
            if node.text in ("0", "1"):
                return [], node.text == "1"
            raise self.error(f"a number ({node.text}) is not a term; use I() for arithmetic", node)
        if isinstance(node, Paren):
            if isinstance(node.inner, Binary) and node.inner.op in ("|", "||"):
                if not ctx.get("top"):
                    raise self.error("a random-effects term must be added at the top level", node)
                ctx["random"].append(node.inner)
                return [], None
            return self.expand(node.inner, {**ctx, "top": False})
        if isinstance(node, Unary):
            terms, icpt = self.expand(node.operand, {**ctx, "top": False})
            if node.op == "+":
                return terms, icpt
            if terms:
                raise self.error("unary minus applies to 0 or 1 only here", node)
            # "-1" removes the intercept, "-0" keeps it
            return [], None if icpt is None else (not icpt)
        if isinstance(node, Binary):
            return self.binary(node, ctx)
        raise self.error("unsupported expression", node)

    def binary(self, node: Binary, ctx: dict) -> tuple[list[frozenset], bool | None]:
        op = node.op
        if op in ("|", "||"):
            raise self.error(f"'{op}' must be inside parentheses: (expr {op} group)", node)
        top = ctx.get("top", False)
        if op in ("+", "-"):
            # a + b - c + ... is a left-deep chain: walked in a loop, not by
            # recursion, so that a 500-term formula is as easy as a short one
            chain: list[tuple[str, Node]] = []
            left: Node = node
            while isinstance(left, Binary) and left.op in ("+", "-"):
                chain.append((left.op, left.right))
                left = left.left
            terms, icpt = self.expand(left, ctx)
            for op_k, right in reversed(chain):
                rctx = ctx if op_k == "+" else {**ctx, "top": False}
                rt, ri = self.expand(right, rctx)
                if op_k == "+":
                    terms, icpt = _union(terms, rt), ri if ri is not None else icpt
                else:
                    removed = set(rt)
                    terms = [t for t in terms if t not in removed]
                    if ri is not None:
                        icpt = not ri  # "- 1" drops, "- 0" keeps
            return terms, icpt
        sub = {**ctx, "top": False}
        lt, li = self.expand(node.left, sub)
        if op == "^":
            if not isinstance(node.right, Num) or not node.right.text.isdigit():
                raise self.error("the power of a term must be a positive integer", node.right)
            power = int(node.right.text)
            if power < 1:
                raise self.error("the power of a term must be a positive integer", node.right)
            self.no_intercept_number(li, node.left)
            result = list(lt)
            for _ in range(power - 1):
                result = _union(result, [a | b for a in result for b in lt])
            return result, None
        rt, ri = self.expand(node.right, sub)
        self.no_intercept_number(li, node.left)
        self.no_intercept_number(ri, node.right)
        if op == ":":
            return _interact(lt, rt), None
        if op == "*":
            return _union(_union(lt, rt), _interact(lt, rt)), None
        if op == "/":
            allf = frozenset().union(*lt) if lt else frozenset()
            return _union(lt, [allf | t for t in rt]), None
        if op == "%in%":
            allf = frozenset().union(*rt) if rt else frozenset()
            return [t | allf for t in lt], None
        del top
        raise self.error(f"unsupported operator '{op}'", node)

    def no_intercept_number(self, icpt: bool | None, node: Node) -> None:
        if icpt is not None:
            raise self.error("0 or 1 cannot be combined with ':', '*', '/' or '^'", node)

    def termset(self, node: Node, ctx: dict, default_intercept: bool = True) -> TermSet:
        terms, icpt = self.expand(node, ctx)
        return TermSet(
            intercept=default_intercept if icpt is None else icpt,
            terms=self.order_terms(terms),
            offsets=list(ctx.get("offsets", [])),
        )

    def order_terms(self, terms: list[frozenset]) -> list[tuple[str, ...]]:
        rank = {label: i for i, label in enumerate(self.factors)}
        ordered = sorted(
            (t for t in terms if t), key=len
        )  # sorted() is stable: degree first, appearance second
        return [tuple(sorted(t, key=rank.__getitem__)) for t in ordered]


def _union(a: list[frozenset], b: list[frozenset]) -> list[frozenset]:
    out = list(a)
    seen = set(a)
    for t in b:
        if t not in seen:
            out.append(t)
            seen.add(t)
    return out


def _interact(a: list[frozenset], b: list[frozenset]) -> list[frozenset]:
    return _union([], [x | y for x in a for y in b])


def group_specs(exp: Expander, node: Node) -> list[tuple[str, ...]]:
    """Grouping factors of a random term: ``g``, ``a:b`` or nested ``a/b``."""
    if isinstance(node, Paren):
        return group_specs(exp, node.inner)
    if isinstance(node, (Name, Call)):
        return [(exp.factor(node),)]
    if isinstance(node, Binary) and node.op == ":":
        left = group_specs(exp, node.left)
        right = group_specs(exp, node.right)
        if len(left) != 1 or len(right) != 1:
            raise exp.error("cannot interact nested grouping factors", node)
        return [left[0] + right[0]]
    if isinstance(node, Binary) and node.op == "/":
        outer = group_specs(exp, node.left)
        inner = group_specs(exp, node.right)
        if len(inner) != 1:
            raise exp.error("the inner grouping factor of '/' must be a single factor", node.right)
        return outer + [outer[-1] + inner[0]]
    raise exp.error("a grouping factor must be a column, 'a:b' or 'a/b'", node)


def parse_formula(text: str, *, require_response: bool = True) -> ParsedFormula:
    """Parse an lme4 formula such as ``y ~ x + (x | g)``.

    Parses are cached by text (refitting one formula is the common case, and
    on a small model the parse cost a tenth of the fit): the result is shared
    and read-only."""
    if not isinstance(text, str):
        raise FormulaError(f"a formula must be a string, not {type(text).__name__}")
    return _parse(text, require_response)


@lru_cache(maxsize=512)
def _parse(text: str, require_response: bool) -> ParsedFormula:
    if not text.strip():
        raise FormulaError("the formula is empty")
    parser = Parser(text)
    tilde = next((k for k, t in enumerate(parser.tokens) if t.text == "~"), None)
    if tilde is None:
        raise FormulaError("a formula needs '~' between response and predictors", text, 0)
    if sum(t.text == "~" for t in parser.tokens) > 1:
        second = [t for t in parser.tokens if t.text == "~"][1]
        raise FormulaError("only one '~' is allowed", text, second.pos)
    factors: dict[str, Factor] = {}
    exp = Expander(text, factors)
    response = None
    if tilde > 0:
        lhs = parser.expression(0)
        if parser.peek().text != "~":
            raise parser.error(f"unexpected '{parser.peek().text}'", parser.peek().pos)
        if not isinstance(lhs, (Name, Call)):
            raise FormulaError(
                "the response must be a column or a call such as log(y)", text, lhs.pos
            )
        response = factors[exp.factor(lhs)]
    elif require_response:
        raise FormulaError("the formula has no response (left of '~')", text, 0)
    tilde_tok = parser.next()
    if parser.peek().kind == "end":
        raise FormulaError("nothing to the right of '~'", text, tilde_tok.end)
    rhs = parser.expression(0)
    if parser.peek().kind != "end":
        tok = parser.peek()
        raise FormulaError(f"unexpected '{tok.text}'", text, tok.pos)

    ctx: dict = {"top": True, "offsets": [], "random": []}
    fixed = exp.termset(rhs, ctx)
    random: list[RandomTerm] = []
    for bar in ctx["random"]:
        random.extend(_random_terms(exp, bar))
    # the order of factors inside interaction terms depends on all appearances
    fixed.terms = exp.order_terms([frozenset(t) for t in fixed.terms])
    for rt in random:
        rt.expr.terms = exp.order_terms([frozenset(t) for t in rt.expr.terms])
    return ParsedFormula(text, response, fixed, random, factors)


def _random_terms(exp: Expander, bar: Binary) -> list[RandomTerm]:
    inner = {"top": False, "offsets": [], "random": []}
    expr = exp.termset(bar.left, inner)
    specs = group_specs(exp, bar.right)
    nested = isinstance(bar.right, Binary) and bar.right.op == "/"
    out: list[RandomTerm] = []
    # lme4 lists the innermost grouping of a/b first
    for k, group in reversed(list(enumerate(specs))):
        if nested and k > 0:
            group = tuple(reversed(group))
        gname = ":".join(group)
        if bar.op == "||":
            pieces: list[TermSet] = []
            if expr.intercept:
                pieces.append(TermSet(True, []))
            pieces.extend(TermSet(False, [t]) for t in expr.terms)
        else:
            pieces = [expr]
        for piece in pieces:
            if not piece.intercept and not piece.terms:
                raise exp.error("a random-effects term has no columns", bar)
            out.append(RandomTerm(piece, group, gname, _term_text(piece, gname)))
    return out


def _term_text(expr: TermSet, gname: str) -> str:
    parts = (["1"] if expr.intercept else ["0"]) + expr.term_labels()
    return f"({' + '.join(parts)} | {gname})"
