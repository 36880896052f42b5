"""Run-time guards around ONNX Runtime kernels that reject empty tensors.

A batch of 0 or a sequence of 0 is a valid input (tests/test_empty.py), but
some ORT 1.31 CPU kernels fail on it where the answer is simply an empty (or
all-zero) tensor: the opset-23 ``Attention`` ('Q sequence length must be
greater than 0') and a ``MatMul`` whose batch dims broadcast against a 0
('left operand cannot broadcast on dim 0', e.g. [0, 1, S, W] @ [H, W, D]).
Such a node is wrapped in an ``If``: one scalar test per call, then either the
node or a ``ConstantOfShape`` of the expected output shape.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from . import proto

from .context import LowerContext


def _collect(ctx: LowerContext, build: Callable[[], str]) -> tuple[list[proto.NodeProto], str]:
    """The nodes `build` emits, diverted into a list (a subgraph body), and its result.
    Values memoised inside the branch are forgotten after it: they do not exist
    in the enclosing graph."""
    saved, saved_memo = ctx.nodes, dict(ctx.memo)
    ctx.nodes = []
    try:
        result = build()
        return ctx.nodes, result
    finally:
        ctx.nodes, ctx.memo = saved, saved_memo


def dim_of(ctx: LowerContext, name: str, axis: int) -> str:
    """One run-time dim of `name`, int64 [1].

    In a decode graph (a --kv-cache build) a symbolic dim is read once and shared:
    equal symbolic dims are equal at run time, so the layers of a stack need not
    each read the batch or the cache length again (8 fewer nodes per attention
    layer; docs/generation.md, "The decode step, compile side"). Plain builds keep
    one Shape per use (their bytes are unchanged)."""
    t = ctx.g.value(name).type
    d = t.shape[axis]
    if ctx.g.generation is not None and not d.is_const:
        axis %= t.rank
        return ctx.shared(("dim", d), lambda: ctx.one("Shape", [name], start=axis, end=axis + 1))
    return ctx.one("Shape", [name], start=axis, end=axis + 1)


def any_empty(ctx: LowerContext, tensors: list[str]) -> str:
    """bool scalar: some tensor in `tensors` has no elements. One test per distinct
    tuple of symbolic shapes (equal symbolic shapes are equal at run time)."""
    key = ("empty",) + tuple(ctx.g.value(t).type.shape for t in tensors)

    def test() -> str:
        sizes = [ctx.one("Size", [t]) for t in tensors]
        n = sizes[0] if len(sizes) == 1 else ctx.one("Mul", sizes)
        return ctx.one("Equal", [n, ctx.const(np.array(0, np.int64))])
    return ctx.shared(key, test)


def unless_empty(ctx: LowerContext, tensors: list[str], output: str, elem_type: int,
                 zeros_shape: Callable[[], str], body: Callable[[], str]) -> None:
    """output = body() unless some of `tensors` is empty at run time, else zeros
    of zeros_shape() (built inside the 'then' branch, so the normal path pays
    only for the test)."""
    empty = any_empty(ctx, tensors)
    then_nodes, shape = _collect(ctx, zeros_shape)
    zeros = ctx.fresh("zeros")
    then_nodes.append(proto.make_node("ConstantOfShape", [shape], [zeros], name=ctx.fresh("ConstantOfShape_node"),
                                       value=proto.make_tensor("value", elem_type, [1], [0])))
    else_nodes, result = _collect(ctx, body)
    info = lambda name: proto.make_tensor_value_info(name, elem_type, None)   # noqa: E731
    ctx.node("If", [empty], [output],
             then_branch=proto.make_graph(then_nodes, ctx.fresh("empty"), [], [info(zeros)]),
             else_branch=proto.make_graph(else_nodes, ctx.fresh("nonempty"), [], [info(result)]))
