"""Symbolic dimensions as integer polynomials over named dims.

A dim is ``512``, ``batch``, ``seq + 1`` or ``batch * seq``. We keep them in a
canonical form (a sum of monomials with integer coefficients) so that equality
is structural: ``2 * seq`` and ``seq + seq`` are the same dim, while ``src_seq``
and ``tgt_seq`` are different dims even when a run gives them the same value.
That is the rule that lets graphc reject, at compile time, adding two tensors
whose sequence axes are not known to agree.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Union

from ..errors import GraphcError

Monomial = tuple[str, ...]          # sorted symbol names; () is the constant term

# A real model's sizes are small polynomials (seq + 1, batch * seq, 2 * d * heads).
# Without bounds a spec of a few lines (a chain of layers that each multiply a
# size, repeated) grows them exponentially: minutes of arithmetic and megabytes
# of shape text. Past these the dim is refused where it is made.
MAX_TERMS = 32
MAX_DEGREE = 8
MAX_COEF = 1 << 62                  # an int64 with room: products of axes, not axes


class DimTooLarge(GraphcError):
    """A symbolic size past MAX_TERMS / MAX_DEGREE / MAX_COEF; the caller adds
    the location (the layer or the expression that made it)."""


class Dim:
    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[Monomial, int]):
        self.terms = {m: c for m, c in terms.items() if c != 0}
        if len(self.terms) > MAX_TERMS:
            raise DimTooLarge(f"a symbolic size grows to {len(self.terms)} terms, more than {MAX_TERMS}",
                              hint="sizes of real models are small expressions of their dims; check what "
                                   "multiplies or adds them layer after layer")
        for m, c in self.terms.items():
            if len(m) > MAX_DEGREE:
                raise DimTooLarge(f"a symbolic size grows to a product of {len(m)} dims, more than {MAX_DEGREE}",
                                  hint="check what multiplies the dims layer after layer")
            if not -MAX_COEF <= c <= MAX_COEF:
                raise DimTooLarge(f"a size grows past 2**62 (a number of {c.bit_length()} bits)",
                                  hint="no axis of a real model is that large; check what multiplies it")

    # construction -------------------------------------------------------
    @staticmethod
    def const(n: int) -> "Dim":
        return Dim({(): int(n)})

    @staticmethod
    def sym(name: str) -> "Dim":
        return Dim({(name,): 1})

    # queries -------------------------------------------------------------
    @property
    def is_const(self) -> bool:
        return all(m == () for m in self.terms)

    @property
    def value(self) -> int | None:
        return self.terms.get((), 0) if self.is_const else None

    @property
    def symbols(self) -> set[str]:
        return {s for m in self.terms for s in m}

    def evaluate(self, env: Mapping[str, int]) -> int:
        total = 0
        for mono, coef in self.terms.items():
            term = coef
            for s in mono:
                term *= env[s]
            total += term
        return total

    # arithmetic -----------------------------------------------------------
    def __add__(self, other: "DimLike") -> "Dim":
        other = as_dim(other)
        out = dict(self.terms)
        for m, c in other.terms.items():
            out[m] = out.get(m, 0) + c
        return Dim(out)

    __radd__ = __add__

    def __neg__(self) -> "Dim":
        return Dim({m: -c for m, c in self.terms.items()})

    def __sub__(self, other: "DimLike") -> "Dim":
        return self + (-as_dim(other))

    def __rsub__(self, other: "DimLike") -> "Dim":
        return as_dim(other) - self

    def __mul__(self, other: "DimLike") -> "Dim":
        other = as_dim(other)
        out: dict[Monomial, int] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in other.terms.items():
                m = tuple(sorted(m1 + m2))
                out[m] = out.get(m, 0) + c1 * c2
        return Dim(out)

    __rmul__ = __mul__

    def exact_div(self, other: "DimLike") -> "Dim | None":
        """self / other when it divides exactly (by a constant or a single symbol), else None."""
        other = as_dim(other)
        if other.is_const:
            d = other.value
            if d == 0 or any(c % d for c in self.terms.values()):
                return None
            return Dim({m: c // d for m, c in self.terms.items()})
        if len(other.terms) == 1:
            (mono, coef), = other.terms.items()
            out = {}
            for m, c in self.terms.items():
                rest = list(m)
                for s in mono:
                    if s not in rest:
                        return None
                    rest.remove(s)
                if c % coef:
                    return None
                out[tuple(rest)] = c // coef
            return Dim(out)
        return None

    # equality and display -------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, (int, str, Dim)):
            return self.terms == as_dim(other).terms
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.terms.items())))

    def __repr__(self) -> str:
        return f"Dim({self})"

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for mono, coef in sorted(self.terms.items(), key=lambda mc: (-len(mc[0]), mc[0])):
            body = "*".join(mono)
            if not mono:
                text = str(abs(coef))
            elif abs(coef) == 1:
                text = body
            else:
                text = f"{abs(coef)}*{body}"
            sign = "-" if coef < 0 else "+"
            parts.append((sign, text))
        out = ("-" if parts[0][0] == "-" else "") + parts[0][1]
        for sign, text in parts[1:]:
            out += f" {sign} {text}"
        return out


DimLike = Union[Dim, int, str]


def as_dim(d: DimLike) -> Dim:
    if isinstance(d, Dim):
        return d
    if isinstance(d, bool):
        raise TypeError("a boolean is not a dimension")
    if isinstance(d, int):
        return Dim.const(d)
    if isinstance(d, str):
        return Dim.sym(d)
    raise TypeError(f"not a dimension: {d!r}")


def format_shape(shape: Iterable[Dim] | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join(str(d) for d in shape) + "]"
