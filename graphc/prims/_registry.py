"""The primitive registry and broadcasting rules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import InternalError
from ..tensors import TensorType, np_dtype  # noqa: F401  (np_dtype: for the rules)
from ..shapes import Dim, format_shape


class ShapeError(Exception):
    """A shape rule failed; the builder turns it into a located GraphcError."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


FlopRule = Callable[[dict, list[TensorType], list[TensorType], Mapping[str, int]], "int | None"]


@dataclass(frozen=True)
class Prim:
    """Everything graphc knows about a primitive except its ONNX forms (those
    are keyed by (primitive, target) in graphc.lower.targets: primitives never
    import onnx).

    ``infer(attrs, input types) -> output types``: the shape rule, run when the
    op is built. ``evaluate(*arrays, **attrs)``: numpy, for folding and tests.
    ``flops(attrs, input types, output types, dims) -> int | None``: what
    ``graphc info`` counts (multiply-adds as 2; None when a dim it needs is
    not given). ``lowering_options``: the names of the choices between ONNX
    forms of the same function (Attention's ``impl``). They are not attributes:
    a layer passes them as ``Builder.op(..., lowering={...})``, they live in
    ``Graph.lowering_options`` keyed by op id, and only the lowering reads
    them (``LowerContext.option``); the shape rule and ``evaluate`` never see them.

    Optional inputs are positional slots, as in ONNX: an omitted one is ``""``
    in ``OpNode.inputs`` and reaches ``infer``, ``evaluate``, ``flops`` and the
    lowering as ``None`` (an ``""`` name there), so a rule tells which optional
    input is which by its position, with no flag attribute. Trailing omitted
    slots are dropped (the builder does it, ``verify()`` checks it), so the
    lists may be shorter than the primitive's full signature: read an optional
    slot with ``slot(ins, i)`` (a lowering too, on ``op.inputs``).
    """
    name: str
    infer: Callable[[dict, list[TensorType]], list[TensorType]]
    evaluate: Callable[..., Any] | None
    flops: FlopRule
    doc: str = ""
    lowering_options: tuple[str, ...] = ()


PRIMS: dict[str, Prim] = {}


def prim(name: str, evaluate: Callable[..., Any] | None = None, *, flops: FlopRule | None = None,
         lowering_options: tuple[str, ...] = ()):
    """Register a primitive's shape rule with its FLOP rule (graphc.prims._flops
    has the common ones). A duplicate, or a primitive without a FLOP rule, is a
    bug: a new op must say what it costs rather than be counted by some default."""
    def deco(infer):
        if name in PRIMS:
            raise InternalError(f"primitive {name} registered twice")
        if not callable(flops):
            raise InternalError(f"primitive {name} registered without a FLOP rule "
                                f"(flops=...; see graphc.prims._flops)")
        PRIMS[name] = Prim(name, infer, evaluate, flops, (infer.__doc__ or "").strip(), tuple(lowering_options))
        return infer
    return deco


def infer_op(op: str, attrs: dict, inputs: list[TensorType]) -> list[TensorType]:
    try:
        p = PRIMS[op]
    except KeyError:
        raise InternalError(f"unknown primitive {op}") from None
    return p.infer(attrs, inputs)


def slot(items: Sequence[Any], i: int) -> Any:
    """Optional input ``i`` of a primitive, or None when it is omitted: ``None``
    or ``""`` in its place (types and arrays in the rules, value names in
    ``OpNode.inputs`` for the lowering), or past the end of the list (trailing
    omitted slots are dropped)."""
    x = items[i] if i < len(items) else None
    return None if isinstance(x, str) and x == "" else x


def present(items: Sequence[Any]) -> list[Any]:
    """The inputs that are there (omitted optional slots left out), for rules
    that treat them alike (one dtype for all)."""
    return [x for x in items if x is not None]


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
