"""ONNX forms of the core primitives, chosen by target opset."""
from __future__ import annotations

import math

import numpy as np
from .proto import TensorProto

from ..errors import InternalError
from ..ir import DTYPES, OpNode
from .context import LowerContext
from .guards import dim_of, unless_empty

LOWERINGS: dict[str, callable] = {}

ONNX_DTYPE = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE,
              "int64": TensorProto.INT64, "int32": TensorProto.INT32, "bool": TensorProto.BOOL,
              "int8": TensorProto.INT8, "uint8": TensorProto.UINT8}
INT64_MAX = np.iinfo(np.int64).max


def lowering(*names: str):
    """Register the standard (target "onnx") form of primitives; a duplicate is
    a bug, as for primitives and target forms (graphc.lower.targets)."""
    def deco(fn):
        for n in names:
            if n in LOWERINGS:
                raise InternalError(f"standard lowering of {n} registered twice")
            LOWERINGS[n] = fn
        return fn
    return deco


@lowering("Relu", "Tanh", "Sigmoid", "Neg", "Sqrt", "Exp", "Not", "Identity",
          "Sub", "Mul", "Div", "Pow", "And", "Or", "Equal", "Less", "Greater", "LessOrEqual",
          "Where")
def _direct(ctx: LowerContext, op: OpNode) -> None:
    ctx.node(op.op, op.inputs, op.outputs)


@lowering("MatMul")
def _matmul(ctx: LowerContext, op: OpNode) -> None:
    """A MatMul whose batch dims broadcast ([B, 1, S, W] @ [H, W, D]) and may be 0
    at run time is guarded: ORT rejects a broadcast against a 0 batch dim
    (graphc/lower/guards.py). Same-batch and [.., K] @ [K, N] products are plain."""
    a, b = op.inputs
    ta, tb, out = (ctx.g.value(n).type for n in (a, b, op.outputs[0]))
    # both operands have batch dims and they differ (ORT handles [..., K] @ [K, N] and [M, K] @ [..., K, N])
    broadcasts = ta.rank >= 3 and tb.rank >= 3 and ta.shape[:-2] != tb.shape[:-2]
    symbolic = [x for x, t in ((a, ta), (b, tb)) if not all(d.is_const for d in t.shape)]
    if not (broadcasts and symbolic):
        ctx.node("MatMul", op.inputs, op.outputs)
        return

    def source(i: int) -> str:
        """Run-time dim i of the product: from the operand that has it."""
        r = out.rank
        if i == r - 1:
            return dim_of(ctx, b, tb.rank - 1)
        if i == r - 2:
            return dim_of(ctx, a, ta.rank - 2)
        for name, t in ((a, ta), (b, tb)):
            j = i - (r - 2) + (t.rank - 2)
            if j >= 0 and t.shape[j] == out.shape[i]:
                return dim_of(ctx, name, j)
        raise ctx.error(f"internal: no operand holds dim {i} of the MatMul product")

    unless_empty(ctx, symbolic, op.outputs[0], ONNX_DTYPE[out.dtype],
                 lambda: shape_vector(ctx, [d.value if d.is_const else source(i) for i, d in enumerate(out.shape)]),
                 lambda: ctx.one("MatMul", [a, b]))


@lowering("Add")
def _add(ctx: LowerContext, op: OpNode) -> None:
    """A residual sum read only by a LayerNorm is emitted as ``Sum`` (the same
    function): ONNX Runtime rewrites ``Add -> LayerNormalization`` into its
    contrib SkipLayerNormalization, whose CPU kernel measured 9x slower than
    the two ops it replaces (ORT 1.31, [8, 256, 512] float32, 2 threads:
    3.95 ms against 0.44 ms; docs/benchmarks.md), and it does not match Sum."""
    users = ctx.g.users(op.outputs[0])
    if users and all(u.op == "LayerNorm" for u in users) and op.outputs[0] not in ctx.g.outputs.values():
        ctx.node("Sum", op.inputs, op.outputs)
    else:
        ctx.node("Add", op.inputs, op.outputs)


@lowering("Softmax", "LogSoftmax")
def _softmax(ctx, op):
    """In float32 for float16 models: exp and the sum overflow or lose the
    small probabilities in half precision."""
    axis = op.attrs.get("axis", -1)
    if _dtype_of(ctx, op.inputs[0]) == np.float16:
        y = ctx.one(op.op, [ctx.one("Cast", op.inputs, to=TensorProto.FLOAT)], axis=axis)
        ctx.node("Cast", [y], op.outputs, to=TensorProto.FLOAT16)
        return
    ctx.node(op.op, op.inputs, op.outputs, axis=axis)


@lowering("Cast")
def _cast(ctx, op):
    ctx.node("Cast", op.inputs, op.outputs, to=ONNX_DTYPE[op.attrs["to"]])


def _dtype_of(ctx, name: str) -> np.dtype:
    return DTYPES[ctx.g.value(name).type.dtype]


@lowering("Silu")
def _silu(ctx, op):
    (x,) = op.inputs
    ctx.node("Mul", [x, ctx.one("Sigmoid", [x])], op.outputs)


@lowering("Gelu")
def _gelu(ctx, op):
    (x,) = op.inputs
    approximate = op.attrs.get("approximate", "none")
    if ctx.opset >= 20:
        ctx.node("Gelu", [x], op.outputs, approximate=approximate)
        return
    dt = _dtype_of(ctx, x)
    half = ctx.const(np.array(0.5, dt))
    one = ctx.const(np.array(1.0, dt))
    if approximate == "tanh":
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = ctx.one("Mul", [ctx.one("Mul", [x, x]), x])
        inner = ctx.one("Add", [x, ctx.one("Mul", [x3, ctx.const(np.array(0.044715, dt))])])
        t = ctx.one("Tanh", [ctx.one("Mul", [inner, ctx.const(np.array(math.sqrt(2 / math.pi), dt))])])
    else:
        # 0.5 x (1 + erf(x / sqrt 2))
        t = ctx.one("Erf", [ctx.one("Mul", [x, ctx.const(np.array(1 / math.sqrt(2), dt))])])
    ctx.node("Mul", [ctx.one("Mul", [x, half]), ctx.one("Add", [t, one])], op.outputs)


@lowering("LayerNorm")
def _layer_norm(ctx, op):
    # stash_type=1: statistics in float32 even for float16 models
    ctx.node("LayerNormalization", op.inputs, op.outputs, axis=-1, epsilon=float(op.attrs["eps"]), stash_type=1)


def _reduce_mean_last(ctx, x: str) -> str:
    if ctx.opset >= 18:
        return ctx.one("ReduceMean", [x, ctx.const(np.array([-1], np.int64))], keepdims=1)
    return ctx.one("ReduceMean", [x], axes=[-1], keepdims=1)


@lowering("RMSNorm")
def _rms_norm(ctx, op):
    x, scale = op.inputs
    eps = float(op.attrs["eps"])
    if ctx.opset >= 23:
        ctx.node("RMSNormalization", [x, scale], op.outputs, axis=-1, epsilon=eps, stash_type=1)
        return
    dt = _dtype_of(ctx, x)
    if dt == np.float32 and ctx.g.generation is not None:
        # a decode step (--kv-cache): the Pow/Div form, which ONNX Runtime fuses into one
        # SimplifiedLayerNormalization kernel (7 nodes -> 1 per norm; docs/generation.md,
        # "The decode step, compile side"). Plain builds keep their bytes
        ms = _reduce_mean_last(ctx, ctx.one("Pow", [x, ctx.const(np.array(2.0, np.float32))]))
        rms = ctx.one("Sqrt", [ctx.one("Add", [ms, ctx.const(np.array(eps, np.float32))])])
        ctx.node("Mul", [ctx.one("Div", [x, rms]), scale], op.outputs)
        return
    xf = ctx.one("Cast", [x], to=TensorProto.FLOAT) if dt != np.float32 else x
    ms = _reduce_mean_last(ctx, ctx.one("Mul", [xf, xf]))
    inv = ctx.one("Reciprocal", [ctx.one("Sqrt", [ctx.one("Add", [ms, ctx.const(np.array(eps, np.float32))])])])
    y = ctx.one("Mul", [xf, inv])
    if dt != np.float32:
        y = ctx.one("Cast", [y], to=ONNX_DTYPE[ctx.g.value(x).type.dtype])
    ctx.node("Mul", [y, scale], op.outputs)


@lowering("ReduceMax")
def _reduce_max(ctx, op):
    axes = list(op.attrs["axes"])
    keep = int(op.attrs.get("keepdims", 1))
    if ctx.opset >= 18:
        ctx.node("ReduceMax", [op.inputs[0], ctx.const(np.array(axes, np.int64))], op.outputs, keepdims=keep)
    else:
        ctx.node("ReduceMax", op.inputs, op.outputs, axes=axes, keepdims=keep)


@lowering("Reshape")
def _reshape(ctx, op):
    """Static target shapes: 0 copies an input dim in place, -1 infers one;
    no run-time Shape/Gather glue, so ORT sees a constant shape.

    One exception: a -1 cannot be inferred when another target dim is 0 at run
    time (ORT fails on an empty batch: 0 elements / 0 is no size). So a -1
    beside copied symbolic dims is lowered as Squeeze/Unsqueeze where the
    reshape only moves size-1 axes (the usual case: [B, Sk] -> [B, 1, 1, Sk]),
    and otherwise that one dim is computed from the input's run-time shape."""
    (x,) = op.inputs
    in_shape = ctx.g.value(x).type.shape
    target = op.attrs["shape"]
    out: list[int] = []
    unresolved = []
    for i, d in enumerate(target):
        if d.is_const:
            out.append(d.value)
        elif i < len(in_shape) and in_shape[i] == d:
            out.append(0)
        else:
            out.append(-1)
            unresolved.append(d)
    if len(unresolved) > 1:
        if _squeeze_unsqueeze(ctx, x, in_shape, target, op.outputs):
            return
        raise ctx.error(f"cannot lower a reshape to [{', '.join(map(str, target))}]: "
                        f"more than one symbolic dim moves ({', '.join(map(str, unresolved))})")
    if unresolved and 0 in out:
        if _squeeze_unsqueeze(ctx, x, in_shape, target, op.outputs):
            return
        ctx.node("Reshape", [x, reshape_target(ctx, x, len(in_shape), out)], op.outputs, allowzero=1)
        return
    ctx.node("Reshape", [x, ctx.const(np.array(out, np.int64))], op.outputs)


def shape_vector(ctx, pieces: list) -> str:
    """A run-time shape, int64 [n], from pieces that are ints (constants, merged
    into one initializer per run) or names of int64 [k] tensors; for Reshape
    with allowzero=1 (every dim explicit, so an empty batch is no ambiguity).

    Explicit values rather than 0 (copy) and -1 (infer): ORT's ReshapeFusion
    rewrites a Concat of constants and one computed element into a constant
    target with -1 in that place, which brings back the failure on empty tensors."""
    parts: list[str] = []
    run: list[int] = []
    for p in pieces:
        if isinstance(p, (int, np.integer)):
            run.append(int(p))
            continue
        if run:
            parts.append(ctx.const(np.array(run, np.int64)))
            run = []
        parts.append(p)
    if run:
        parts.append(ctx.const(np.array(run, np.int64)))
    if len(parts) == 1:
        return parts[0]
    if ctx.g.generation is not None:        # a decode graph: one vector per distinct shape (see guards.dim_of)
        return ctx.shared(("shape_vector",) + tuple(parts), lambda: ctx.one("Concat", parts, axis=0))
    return ctx.one("Concat", parts, axis=0)


def reshape_target(ctx, x: str, rank: int, out: list[int]) -> str:
    """The run-time target (for allowzero=1) of a reshape to `out` (0 = copy the
    input dim in place, one -1, the rest constants): a -1 next to a copied dim
    that is 0 at run time (an empty batch) is no size ONNX can infer, so copied
    dims are read from the input's shape and the inferred one is computed as the
    product of the input dims that are not copied over the constant target dims
    (exact: copied dims are equal on both sides)."""
    j = out.index(-1)
    rest = [i for i in range(rank) if not (i < len(out) and out[i] == 0)]
    known = int(np.prod([v for v in out if v > 0], dtype=np.int64))
    if not rest:                                # every input dim copied: the rest is 1
        size = ctx.const(np.array([1], np.int64))
    elif rest == list(range(rest[0], rest[-1] + 1)):
        size = ctx.one("Shape", [x], start=rest[0], end=rest[-1] + 1)
    else:
        size = ctx.one("Gather", [ctx.one("Shape", [x]), ctx.const(np.array(rest, np.int64))], axis=0)
    if len(rest) > 1:
        size = ctx.one("ReduceProd", [size], keepdims=1)                                 # [1]
    if known != 1:
        size = ctx.one("Div", [size, ctx.const(np.array([known], np.int64))])
    pieces: list = []
    i = 0
    while i < len(out):
        if i == j:
            pieces.append(size)
            i += 1
        elif out[i] == 0:                       # a run of copied dims: one Shape slice
            k = i
            while k < len(out) and k != j and out[k] == 0:
                k += 1
            pieces.append(ctx.one("Shape", [x], start=i, end=k))
            i = k
        else:
            pieces.append(out[i])
            i += 1
    return shape_vector(ctx, pieces)


def _squeeze_unsqueeze(ctx, x, in_shape, target, outputs) -> bool:
    """A reshape that only removes or inserts size-1 axes ([Sq, Sk] -> [1, 1, Sq, Sk]):
    Squeeze + Unsqueeze keep it free of run-time shape arithmetic."""
    core_in = [d for d in in_shape if d != 1]
    core_out = [d for d in target if d != 1]
    if core_in != core_out:
        return False
    ones_in = [i for i, d in enumerate(in_shape) if d == 1]
    ones_out = [i for i, d in enumerate(target) if d == 1]
    if ones_in and ones_out:
        y = ctx.one("Squeeze", [x, ctx.const(np.array(ones_in, np.int64))])
        ctx.node("Unsqueeze", [y, ctx.const(np.array(ones_out, np.int64))], outputs)
    elif ones_in:
        ctx.node("Squeeze", [x, ctx.const(np.array(ones_in, np.int64))], outputs)
    elif ones_out:
        ctx.node("Unsqueeze", [x, ctx.const(np.array(ones_out, np.int64))], outputs)
    else:
        ctx.node("Identity", [x], outputs)
    return True


@lowering("Transpose")
def _transpose(ctx, op):
    ctx.node("Transpose", op.inputs, op.outputs, perm=list(op.attrs["perm"]))


@lowering("Concat")
def _concat(ctx, op):
    ctx.node("Concat", op.inputs, op.outputs, axis=op.attrs["axis"])


@lowering("Split")
def _split(ctx, op):
    ctx.node("Split", [op.inputs[0], ctx.const(np.array(op.attrs["sizes"], np.int64))], op.outputs,
             axis=op.attrs["axis"])


@lowering("Slice")
def _slice(ctx, op):
    end = op.attrs["end"]
    ctx.node("Slice", [op.inputs[0], ctx.const(np.array([op.attrs["start"]], np.int64)),
                       ctx.const(np.array([INT64_MAX if end is None else end], np.int64)),
                       ctx.const(np.array([op.attrs["axis"]], np.int64))], op.outputs)


@lowering("SliceLike")
def _slice_like(ctx, op):
    table, ref = op.inputs
    ra = op.attrs["ref_axis"] % ctx.g.value(ref).type.rank
    n = ctx.one("Shape", [ref], start=ra, end=ra + 1)            # [1] int64: the run-time length
    ctx.node("Slice", [table, ctx.const(np.array([0], np.int64)), n,
                       ctx.const(np.array([op.attrs["axis"]], np.int64))], op.outputs)


@lowering("Gather")
def _gather(ctx, op):
    ctx.node("Gather", op.inputs, op.outputs, axis=op.attrs.get("axis", 0))
