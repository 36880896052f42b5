"""The primitive registry and broadcasting rules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InternalError
from ..ir.graph import TensorType
from ..shapes import Dim, format_shape


class ShapeError(Exception):
    """A shape rule failed; the builder turns it into a located GraphcError."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass(frozen=True)
class Prim:
    name: str
    infer: Callable[[dict, list[TensorType]], list[TensorType]]
    evaluate: Callable[..., Any] | None
    doc: str = ""


PRIMS: dict[str, Prim] = {}


def prim(name: str, evaluate: Callable[..., Any] | None = None):
    """Register a primitive's shape rule; duplicates are a bug."""
    def deco(infer):
        if name in PRIMS:
            raise InternalError(f"primitive {name} registered twice")
        PRIMS[name] = Prim(name, infer, evaluate, (infer.__doc__ or "").strip())
        return infer
    return deco


def infer_op(op: str, attrs: dict, inputs: list[TensorType]) -> list[TensorType]:
    try:
        p = PRIMS[op]
    except KeyError:
        raise InternalError(f"unknown primitive {op}") from None
    return p.infer(attrs, inputs)


def broadcast(shapes: Sequence[Sequence[Dim]]) -> tuple[Dim, ...]:
    """numpy broadcasting over symbolic dims: equal, or one side is 1."""
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for axis in range(rank):
        dim = Dim.const(1)
        for s in shapes:
            k = axis - (rank - len(s))
            if k < 0:
                continue
            d = s[k]
            if d == 1:
                continue
            if dim == 1:
                dim = d
            elif d != dim:
                raise ShapeError("shapes " + " and ".join(format_shape(x) for x in shapes) +
                                 f" do not broadcast: {dim} vs {d} at axis {axis - rank}")
        out.append(dim)
    return tuple(out)


def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def same_dtype(op: str, types: Sequence[TensorType]) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        hint = None
        if dtypes == {"float16", "float32"}:
            # parameters are float32: a float16 model is the float32 spec built with --dtype float16
            hint = "declare the inputs float32 and build with --dtype float16 for a half-precision model"
        raise ShapeError(f"{op} needs inputs of one dtype, got " + ", ".join(t.dtype for t in types), hint)
    return types[0].dtype


def np_dtype(name: str) -> np.dtype:
    from ..ir.graph import DTYPES
    return DTYPES[name]
