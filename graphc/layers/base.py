"""What a layer kind is: documented parameters, ports, a shape rule, an
expansion into primitives and a numpy reference written from the math.

A kind is one small module with one ``LayerKind`` subclass, registered
explicitly in ``graphc/layers/__init__.py``. The parameter descriptors are the
single source for argument checking, ``graphc layers``, docs/layers.md and the
JSON Schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import GraphcError, Span
from ..ir import Builder, Value


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """One layer argument.

    type: ``int``, ``float``, ``bool``, ``str``, ``ints`` (list of integers), ``floats`` (list of numbers),
    ``shape`` (list of dims: integers, dim names or expressions; -1 allowed
    where documented).
    """

    name: str
    type: str
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Port:
    name: str
    doc: str = ""
    optional: bool = False


@dataclass
class Call:
    """One use of a layer kind, with its arguments checked and evaluated."""

    name: str
    kind: str
    span: Span
    args: dict[str, Any]
    arg_spans: dict[str, Span]
    inputs: dict[str, Value | None]
    input_spans: dict[str, Span] = field(default_factory=dict)

    def error(self, message: str, key: str | None = None, hint: str | None = None) -> GraphcError:
        span = self.arg_spans.get(key, self.span) if key else self.span
        if key and key in self.input_spans:
            span = self.input_spans[key]
        return GraphcError(f"{self.kind} '{self.name}': {message}", span, hint)

    def warning(self, message: str, key: str | None = None, hint: str | None = None):
        """A located warning (see graphc.errors.GraphcWarning); append it to ``b.g.warnings``."""
        from ..errors import GraphcWarning
        err = self.error(message, key, hint)
        return GraphcWarning(err.message, err.span, err.hint)

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


class LayerKind:
    kind: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    inputs: ClassVar[tuple[Port, ...]] = (Port("x", "the input tensor"),)
    outputs: ClassVar[tuple[Port, ...]] = (Port("y", "the output tensor"),)
    shape_rule: ClassVar[str] = ""
    example: ClassVar[str] = ""
    variadic: ClassVar[bool] = False   # inputs beyond the declared ports are allowed (concat)

    def expand(self, b: Builder, call: Call) -> dict[str, Value]:
        raise NotImplementedError

    def reference(self, args: dict[str, Any], weights: dict[str, np.ndarray],
                  inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The layer's forward pass in numpy, written from the math (not from expand)."""
        raise NotImplementedError

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or cls.summary).strip()
