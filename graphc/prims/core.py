"""Elementwise, linear-algebra, normalisation and layout primitives.

These mirror ONNX operators closely so that lowering is one node each (or a
short decomposition at older opsets), but their shapes are symbolic Dims and
their attributes are plain Python values.
"""
from __future__ import annotations

import math

import numpy as np

from ..tensors import FLOAT_DTYPES, TensorType
from ..shapes import Dim, format_shape
from ..tensors import np_dtype
from ._flops import matmul_flops, no_flops, per_output_element
from ._registry import ShapeError, broadcast, norm_axis, present, prim, same_dtype

# ---------------------------------------------------------------- elementwise

def _erf(x):
    # numpy has no erf; math.erf vectorised is exact enough for folding/interpreting
    return np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return (0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))).astype(x.dtype)
    return (0.5 * x * (1 + _erf(x / np.sqrt(2).astype(x.dtype)))).astype(x.dtype)


_UNARY = {
    "Relu": lambda x, **a: np.maximum(x, 0).astype(x.dtype),
    "Tanh": lambda x, **a: np.tanh(x),
    "Sigmoid": lambda x, **a: (1 / (1 + np.exp(-x))).astype(x.dtype),
    "Silu": lambda x, **a: (x / (1 + np.exp(-x))).astype(x.dtype),
    "Gelu": lambda x, approximate="none", **a: _gelu(x, approximate),
    "Neg": lambda x, **a: -x,
    "Sqrt": lambda x, **a: np.sqrt(x),
    "Exp": lambda x, **a: np.exp(x),
    "Not": lambda x, **a: np.logical_not(x),
    "Identity": lambda x, **a: x,
}


def _unary_infer(attrs, ins):
    (x,) = ins
    return [x]


for _name, _fn in _UNARY.items():
    prim(_name, _fn, flops=no_flops if _name == "Identity" else per_output_element)(_unary_infer)

_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
    "And": np.logical_and, "Or": np.logical_or,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
}
_LOGICAL = ("And", "Or")
_COMPARE = ("Equal", "Less", "Greater", "LessOrEqual")


def _binary(name, fn):
    def evaluate(a, b, **attrs):
        out = fn(a, b)
        return out if name in _LOGICAL + _COMPARE else out.astype(a.dtype)

    def infer(attrs, ins):
        a, b = ins
        dtype = same_dtype(name, ins)
        if name in _LOGICAL and dtype != "bool":
            raise ShapeError(f"{name} needs boolean inputs, got {dtype}")
        if name not in _LOGICAL + ("Equal",) and dtype == "bool":
            # ONNX arithmetic and ordering take numbers only
            raise ShapeError(f"{name} needs numeric inputs, got bool",
                             hint="bool tensors are masks: give them to an attention layer's mask inputs; arithmetic needs numbers")
        shape = broadcast([a.shape, b.shape])
        return [TensorType("bool" if name in _LOGICAL + _COMPARE else dtype, shape)]
    prim(name, evaluate, flops=per_output_element)(infer)


for _name, _fn in _BINARY.items():
    _binary(_name, _fn)


@prim("Where", lambda c, a, b, **_: np.where(c, a, b), flops=per_output_element)
def where_infer(attrs, ins):
    """Where(cond, a, b): cond is bool; a and b share a dtype; all broadcast."""
    c, a, b = ins
    if c.dtype != "bool":
        raise ShapeError(f"Where needs a boolean condition, got {c.dtype}")
    dtype = same_dtype("Where", [a, b])
    return [TensorType(dtype, broadcast([c.shape, a.shape, b.shape]))]


@prim("Cast", lambda x, to, **_: x.astype(np_dtype(to)), flops=no_flops)
def cast_infer(attrs, ins):
    return [TensorType(attrs["to"], ins[0].shape)]


# ---------------------------------------------------------------- linear algebra

@prim("MatMul", lambda a, b, **_: np.matmul(a, b), flops=matmul_flops)
def matmul_infer(attrs, ins):
    """numpy matmul: [..., n, k] @ [..., k, m] -> [..., n, m], batch dims broadcast."""
    a, b = ins
    dtype = same_dtype("MatMul", ins)
    if a.rank < 1 or b.rank < 1:
        raise ShapeError("MatMul needs tensors of rank >= 1")
    a_shape = a.shape if a.rank > 1 else (Dim.const(1),) + a.shape
    b_shape = b.shape if b.rank > 1 else b.shape + (Dim.const(1),)
    if a_shape[-1] != b_shape[-2]:
        raise ShapeError(f"MatMul of {format_shape(a.shape)} and {format_shape(b.shape)}: "
                         f"inner dims {a_shape[-1]} and {b_shape[-2]} differ")
    batch = broadcast([a_shape[:-2], b_shape[:-2]]) if (a.rank > 2 or b.rank > 2) else ()
    out = batch + (a_shape[-2], b_shape[-1])
    if a.rank == 1:
        out = out[:-2] + out[-1:]
    if b.rank == 1:
        out = out[:-1]
    return [TensorType(dtype, tuple(out))]


# ---------------------------------------------------------------- normalisation and softmax

def _softmax(x, axis=-1, **_):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


def _log_softmax(x, axis=-1, **_):
    m = np.max(x, axis=axis, keepdims=True)
    s = x - m
    return (s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))).astype(x.dtype)


def _float_same_shape(name):
    def infer(attrs, ins):
        x = ins[0]
        if x.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"{name} needs a floating-point input, got {x.dtype}")
        norm_axis(attrs.get("axis", -1), x.rank)
        return [x]
    return infer


prim("Softmax", _softmax, flops=per_output_element)(_float_same_shape("Softmax"))
prim("LogSoftmax", _log_softmax, flops=per_output_element)(_float_same_shape("LogSoftmax"))


def _layer_norm(x, scale, bias=None, axis=-1, eps=1e-5, **_):
    x32 = x.astype(np.float32)
    mean = x32.mean(axis=-1, keepdims=True)
    var = ((x32 - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (x32 - mean) / np.sqrt(var + eps) * scale
    return (y + bias if bias is not None else y).astype(x.dtype)


def _rms_norm(x, scale, axis=-1, eps=1e-6, **_):
    x32 = x.astype(np.float32)
    y = x32 / np.sqrt((x32 ** 2).mean(axis=-1, keepdims=True) + eps) * scale
    return y.astype(x.dtype)


def _norm_infer(name):
    def infer(attrs, ins):
        x, scale = ins[0], ins[1]
        if x.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"{name} needs a floating-point input, got {x.dtype}")
        same_dtype(name, present(ins))
        for p in present(ins[1:]):              # LayerNorm's bias (slot 2) is optional
            if p.shape != x.shape[-1:]:
                raise ShapeError(f"{name} over the last axis of {format_shape(x.shape)} needs "
                                 f"weights of shape {format_shape(x.shape[-1:])}, got {format_shape(p.shape)}")
        return [x]
    return infer


prim("LayerNorm", _layer_norm, flops=per_output_element)(_norm_infer("LayerNorm"))
prim("RMSNorm", _rms_norm, flops=per_output_element)(_norm_infer("RMSNorm"))


@prim("ReduceMax", lambda x, axes, keepdims=1, **_: np.max(x, axis=tuple(axes), keepdims=bool(keepdims)),
      flops=per_output_element)
def reduce_infer(attrs, ins):
    (x,) = ins
    axes = sorted(norm_axis(a, x.rank) for a in attrs["axes"])
    keep = attrs.get("keepdims", 1)
    shape = tuple(Dim.const(1) if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
    return [TensorType(x.dtype, shape)]


# ---------------------------------------------------------------- layout

def _reshape_eval(x, shape, **_):
    return x.reshape(tuple(int(d.value) for d in shape))


@prim("Reshape", _reshape_eval, flops=no_flops)
def reshape_infer(attrs, ins):
    """Reshape to a symbolic target; the element counts must agree symbolically."""
    (x,) = ins
    target = tuple(attrs["shape"])
    before, after = Dim.const(1), Dim.const(1)
    for d in x.shape:
        before = before * d
    for d in target:
        after = after * d
    if before != after:
        raise ShapeError(f"cannot reshape {format_shape(x.shape)} ({before} elements) "
                         f"to {format_shape(target)} ({after} elements)")
    return [TensorType(x.dtype, target)]


@prim("Transpose", lambda x, perm, **_: np.transpose(x, perm), flops=no_flops)
def transpose_infer(attrs, ins):
    (x,) = ins
    perm = list(attrs["perm"])
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"perm {perm} is not a permutation of the {x.rank} axes of {format_shape(x.shape)}")
    return [TensorType(x.dtype, tuple(x.shape[p] for p in perm))]


@prim("Concat", lambda *xs, axis, **_: np.concatenate(xs, axis=axis), flops=no_flops)
def concat_infer(attrs, ins):
    dtype = same_dtype("Concat", ins)
    rank = ins[0].rank
    axis = norm_axis(attrs["axis"], rank)
    total = Dim.const(0)
    for t in ins:
        if t.rank != rank:
            raise ShapeError("Concat needs inputs of one rank, got " + ", ".join(format_shape(t.shape) for t in ins))
        for i in range(rank):
            if i != axis and t.shape[i] != ins[0].shape[i]:
                raise ShapeError(f"Concat along axis {attrs['axis']}: {format_shape(ins[0].shape)} and "
                                 f"{format_shape(t.shape)} differ at axis {i}")
        total = total + t.shape[axis]
    return [TensorType(dtype, ins[0].shape[:axis] + (total,) + ins[0].shape[axis + 1:])]


def _split_eval(x, axis, sizes, **_):
    idx = np.cumsum(sizes)[:-1]
    return list(np.split(x, idx, axis=axis))


@prim("Split", _split_eval, flops=no_flops)
def split_infer(attrs, ins):
    (x,) = ins
    axis = norm_axis(attrs["axis"], x.rank)
    sizes = attrs["sizes"]
    if Dim.const(sum(sizes)) != x.shape[axis]:
        raise ShapeError(f"split sizes {list(sizes)} do not add up to {x.shape[axis]} (axis {attrs['axis']} "
                         f"of {format_shape(x.shape)})")
    return [TensorType(x.dtype, x.shape[:axis] + (Dim.const(s),) + x.shape[axis + 1:]) for s in sizes]


def _slice_eval(x, axis, start, end, **_):
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, end)
    return x[tuple(index)]


@prim("Slice", _slice_eval, flops=no_flops)
def slice_infer(attrs, ins):
    """Static slice [start, end) on one axis; end may be None for 'to the end'."""
    (x,) = ins
    axis = norm_axis(attrs["axis"], x.rank)
    start, end = attrs["start"], attrs["end"]
    size = x.shape[axis]
    if size.is_const:
        n = size.value
        new = len(range(*slice(start, end).indices(n)))
    elif start >= 0 and end is None:
        new = size - start
    elif start >= 0 and end is not None and end >= 0:
        new = end - start        # the caller promises end <= size (checked at run time by ORT)
    else:
        raise ShapeError(f"cannot slice symbolic axis {size} with [{start}:{end}]")
    return [TensorType(x.dtype, x.shape[:axis] + (Dim.const(new) if isinstance(new, int) else new,) + x.shape[axis + 1:])]


def _slice_like_eval(table, ref, axis, ref_axis, **_):
    return _slice_eval(table, axis, 0, ref.shape[ref_axis])


@prim("SliceLike", _slice_like_eval, flops=no_flops)
def slice_like_infer(attrs, ins):
    """table[..., :len(ref along ref_axis), ...]: slices a precomputed table (sinusoids,
    a causal mask) to a run-time length, so one compiled model serves any length."""
    table, ref = ins
    axis = norm_axis(attrs["axis"], table.rank)
    n = ref.shape[norm_axis(attrs["ref_axis"], ref.rank)]
    cap = table.shape[axis]
    if n.is_const and cap.is_const and n.value > cap.value:
        raise ShapeError(f"length {n} exceeds the table size {cap}")
    return [TensorType(table.dtype, table.shape[:axis] + (n,) + table.shape[axis + 1:])]


def _gather_eval(data, idx, axis=0, **_):
    return np.take(data, idx, axis=axis)


@prim("Gather", _gather_eval, flops=no_flops)
def gather_infer(attrs, ins):
    data, idx = ins
    if idx.dtype not in ("int64", "int32"):
        raise ShapeError(f"indices must be int64 or int32, got {idx.dtype}")
    axis = norm_axis(attrs.get("axis", 0), data.rank)
    return [TensorType(data.dtype, data.shape[:axis] + idx.shape + data.shape[axis + 1:])]


@prim("Derive", flops=no_flops)     # runs once at compile time, never at inference
def derive_infer(attrs, ins):
    """A compile-time computation over parameters (gate reordering, transposes,
    folded scales). ``fn`` runs once when weights are known; the result is stored
    as an initializer, so the runtime never repeats it."""
    return [TensorType(attrs["dtype"], tuple(attrs["shape"]))]
