"""A tiny, safe arithmetic language for hyperparameters and dims.

Specs write ``d_model / heads`` or ``4 * d_model``. We parse these with a
recursive-descent parser over a fixed grammar instead of ``eval``: a spec from
someone else must never run code. Grammar::

    expr  := term (('+' | '-') term)*
    term  := unary (('*' | '/' | '//' | '%') unary)*
    unary := '-' unary | atom
    atom  := INT | FLOAT | NAME | '(' expr ')'

``/`` on integers must divide exactly (``512 / 7`` is an error, not 73.14):
a silently truncated head width is exactly the kind of bug a spec checker
exists to catch. ``//`` is floor division for when truncation is meant.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Union

from ..errors import GraphcError, Span, did_you_mean
from .dim import Dim, DimTooLarge

Value = Union[int, float, Dim]

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>//|[-+*/%()]))")
MAX_EXPR_CHARS = 256
MAX_EXPR_DEPTH = 50
# every integer an expression computes stays within this: params that square the
# param above them (a1: a0 * a0, a2: a1 * a1, ...) double their digits each time
# and reach gigabytes in 40 lines; Python's ints would follow them there
MAX_EXPR_INT = 1 << 63


@dataclass(frozen=True)
class Expr:
    """A parsed expression: a tree of tuples, kept with its source text."""

    text: str
    tree: tuple

    def names(self) -> set[str]:
        out: set[str] = set()

        def walk(t: tuple) -> None:
            if t[0] == "name":
                out.add(t[1])
            elif t[0] in ("bin", "neg"):
                for sub in t[2:] if t[0] == "bin" else t[1:]:
                    walk(sub)
        walk(self.tree)
        return out

    def evaluate(self, lookup: Callable[[str], Value | None], span: Span | None = None,
                 known: Mapping[str, object] | None = None) -> Value:
        return _eval(self.tree, lookup, span, self.text, known or {})


def parse_expr(text: str, span: Span | None = None) -> Expr:
    if len(text) > MAX_EXPR_CHARS:
        raise GraphcError(f"expression longer than {MAX_EXPR_CHARS} characters", span,
                          hint="give parts of it names under 'params:'")
    if "**" in text:
        raise GraphcError(f"'**' (power) is not an operator of expressions: '{text}'", span,
                          hint="write the product out (2 * 2 * 2) or the number; "
                               "expressions use + - * / // % and parentheses")
    tokens: list[tuple[str, str]] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if not m or m.end() == pos:
            bad = stripped[pos:].lstrip()[:1]
            raise GraphcError(f"unexpected character '{bad}' in expression '{text}'", span,
                              hint="expressions use names, integers, + - * / // % and parentheses")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    parser = _Parser(tokens, text, span)
    tree = parser.expr()
    if parser.i != len(tokens):
        raise GraphcError(f"unexpected '{tokens[parser.i][1]}' in expression '{text}'", span)
    return Expr(text, tree)


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], text: str, span: Span | None):
        self.tokens, self.text, self.span, self.i = tokens, text, span, 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def expr(self) -> tuple:
        self.depth += 1
        if self.depth > MAX_EXPR_DEPTH:
            raise GraphcError(f"expression '{self.text}' is nested more than {MAX_EXPR_DEPTH} levels deep", self.span)
        left = self.term()
        while self.peek() in ("+", "-"):
            op = self.tokens[self.i][1]
            self.i += 1
            left = ("bin", op, left, self.term())
        self.depth -= 1
        return left

    def term(self) -> tuple:
        left = self.unary()
        while self.peek() in ("*", "/", "//", "%"):
            op = self.tokens[self.i][1]
            self.i += 1
            left = ("bin", op, left, self.unary())
        return left

    def unary(self) -> tuple:
        if self.peek() == "-":
            self.i += 1
            self.depth += 1
            if self.depth > MAX_EXPR_DEPTH:
                raise GraphcError(f"expression '{self.text}' is nested more than {MAX_EXPR_DEPTH} levels deep",
                                  self.span)
            out = ("neg", self.unary())
            self.depth -= 1
            return out
        return self.atom()

    def atom(self) -> tuple:
        if self.i >= len(self.tokens):
            raise GraphcError(f"expression '{self.text}' ends too early", self.span)
        kind, tok = self.tokens[self.i]
        self.i += 1
        if kind == "num":
            return ("num", float(tok) if any(c in tok for c in ".eE") else int(tok))
        if kind == "name":
            return ("name", tok)
        if tok == "(":
            inner = self.expr()
            if self.peek() != ")":
                raise GraphcError(f"missing ')' in expression '{self.text}'", self.span)
            self.i += 1
            return inner
        raise GraphcError(f"unexpected '{tok}' in expression '{self.text}'", self.span)


def _eval(t: tuple, lookup, span, text, known) -> Value:
    kind = t[0]
    if kind == "num":
        if isinstance(t[1], int) and t[1] > MAX_EXPR_INT:
            raise GraphcError(f"'{text}' has a number of {t[1].bit_length()} bits, larger than 2**63", span)
        return t[1]
    if kind == "name":
        v = lookup(t[1])
        if v is None:
            if t[1] in known:     # known, but not a number here: say why, never "did you mean" itself
                raise _not_a_number(t[1], known, text, span)
            raise GraphcError(f"unknown name '{t[1]}' in expression '{text}'", span,
                              hint=did_you_mean(t[1], known) or "define it under 'params:' or 'dims:'")
        return v
    if kind == "neg":
        v = _eval(t[1], lookup, span, text, known)
        return -v
    op, a, b = t[1], _eval(t[2], lookup, span, text, known), _eval(t[3], lookup, span, text, known)
    if isinstance(a, Dim) or isinstance(b, Dim):
        try:
            return _dim_op(op, a, b, span, text)
        except DimTooLarge as exc:
            raise GraphcError(f"'{text}': {exc.message}", span, hint=exc.hint) from None
    v = _arith(op, a, b, span, text)
    if isinstance(v, int) and not -MAX_EXPR_INT <= v <= MAX_EXPR_INT:
        raise GraphcError(f"'{text}' is a number of {v.bit_length()} bits, larger than 2**63", span,
                          hint="no size or hyperparameter is that large; check for a parameter that "
                               "multiplies itself")
    return v


def _arith(op: str, a, b, span, text) -> Value:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op in ("/", "//", "%") and b == 0:
        raise GraphcError(f"division by zero in expression '{text}'", span)
    if op == "/":
        if isinstance(a, int) and isinstance(b, int):
            if a % b:
                raise GraphcError(f"'{text}': {a} / {b} is not a whole number", span,
                                  hint="use // if truncation is intended")
            return a // b
        return a / b
    if op == "//":
        return a // b
    return a % b


def _not_a_number(name: str, known, text: str, span) -> GraphcError:
    """The error for a name that is defined but has no number to give here.
    ``known`` maps names to their values when the caller has them."""
    value = known[name] if isinstance(known, Mapping) else ...
    if value is None:
        return GraphcError(f"'{name}' has no value (it is null), in expression '{text}'", span,
                           hint=f"give '{name}' a number under 'params:'")
    if isinstance(value, bool):
        return GraphcError(f"'{name}' is {str(value).lower()}, not a number, in expression '{text}'", span)
    if isinstance(value, str):
        return GraphcError(f"'{name}' is the text {value!r}, not a number, in expression '{text}'", span)
    if isinstance(value, Dim):
        return GraphcError(f"'{name}' is a symbolic dim, which is not allowed here: '{text}' must be a fixed "
                           f"number", span, hint="a dim's size is known only at run time; use a number or a "
                                                 "parameter from 'params:'")
    return GraphcError(f"'{name}' cannot be used in expression '{text}'", span)


def _dim_op(op: str, a, b, span, text) -> Dim:
    if isinstance(a, float) or isinstance(b, float):
        raise GraphcError(f"'{text}': a dimension cannot be combined with a fraction", span)
    da = a if isinstance(a, Dim) else Dim.const(a)
    if op == "+":
        return da + b
    if op == "-":
        return da - b
    if op == "*":
        return da * b
    separate = ("its number under 'dims:' is only an example size; for an axis of another length "
                "declare a dim of its own (e.g. dims: [seq, half_seq])")
    if op == "/":
        q = da.exact_div(b)
        if q is None:
            if isinstance(b, Dim) and not b.is_const:
                raise GraphcError(f"'{text}': {a} is not known to be a multiple of {b}", span,
                                  hint="'/' on symbolic dims must divide exactly whatever their sizes")
            raise GraphcError(f"'{text}': {a} is a symbolic dim, which cannot be divided by {b}", span,
                              hint="'/' divides a symbolic dim only by a factor it is known to have "
                                   "(e.g. '(2 * seq) / 2'), and '//' only fixed integers; " + separate)
        return q
    raise GraphcError(f"'{text}': operator '{op}' is not allowed on symbolic dimensions", span,
                      hint="'//' and '%' are for fixed integers only; a symbolic dim's " + separate)
