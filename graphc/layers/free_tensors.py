"""Tensors that no input computes: a learned parameter and a constant.

Models carry free tensors besides their layers' weights: ViT's class token
[1, 1, d] (concatenated before the patch vectors), BART's ``final_logits_bias``
[1, vocab] (added to the LM head's logits). In torch they are bare
``nn.Parameter`` attributes, so their state_dict name is the attribute's path
with no ``.weight``: here the layer's own path is the parameter's name, and a
checkpoint's ``final_logits_bias`` loads into a layer named that way.

    parameter: y = P                                   P [s0, s1, ...] learned
    constant:  y = C                                   C from the spec (values or a fill)
    with batch_like: y[n, ...] = P[0, ...] for n < batch(batch_like)   (s0 must be 1)

A free tensor broadcasts where it is used (``add`` follows numpy's rules), so
[1, vocab] needs nothing more. ``concat`` does not broadcast: a class token
joined to [batch, seq, d] needs [batch, 1, d], which ``batch_like: x`` gives
(the leading axis of size 1 repeated to x's run-time batch, as torch's
``cls_token.expand(batch, -1, -1)``). That repetition is a Gather of row 0
batch times (ids = 0 * arange(batch)), so no broadcast primitive is needed.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import Builder, Init, Value
from ..shapes import Dim, format_shape
from ..tensors import DTYPES
from .base import Call, LayerKind, Param, Port

INITS = ("zeros", "ones", "normal", "uniform")
FILLS = ("zeros", "ones", "full", "arange")
FLOAT_DTYPES = ("float32", "float16")
CONST_DTYPES = ("float32", "float16", "int64", "int32", "bool")
# a constant written out in the spec is meant to be small; a big one is a table a layer should compute
MAX_LISTED_VALUES = 4096
MAX_CONSTANT_ELEMENTS = 1 << 24

_BATCH_LIKE = Port("batch_like", "any tensor whose axis 0 is the batch: the result's leading axis (size 1) is "
                                 "repeated to that batch", optional=True)


def _concrete_shape(call: Call) -> tuple[int, ...]:
    out = []
    for d in call["shape"]:
        if not d.is_const:
            raise call.error(f"shape must be fixed numbers, but '{d}' is a symbolic dim", "shape",
                             hint="a free tensor has one size; give it a leading 1 and batch_like: x to follow "
                                  "the batch, or let it broadcast where it is used")
        if d.value < 1:
            raise call.error(f"shape must be positive sizes, got {d.value}", "shape")
        out.append(d.value)
    return tuple(out)


def _batched(b: Builder, call: Call, t: Value, shape: tuple[int, ...]) -> Value:
    """t [1, *rest] -> [batch, *rest], batch read from batch_like at run time."""
    like = call.inputs.get("batch_like")
    if like is None:
        return t
    if not shape or shape[0] != 1:
        raise call.error(f"batch_like repeats a leading axis of size 1, but the shape is {list(shape)}", "shape",
                         hint=f"write shape: [1, {', '.join(map(str, shape))}]" if shape else "give a shape")
    if like.rank == 0:
        raise call.error("batch_like must have a batch axis (axis 0), got a scalar", "batch_like")
    rows = b.op("Arange", [like], axis=0)                                         # [B]: 0..B-1
    zeros = b.op("Mul", [rows, b.const(np.array(0, np.int64), "zero")])          # [B] of 0
    return b.op("Gather", [t, zeros], axis=0)                                     # [1, *rest] -> [B, *rest]


def _np_batched(y: np.ndarray, inputs) -> np.ndarray:
    like = inputs.get("batch_like")
    return y if like is None else np.repeat(y, np.asarray(like).shape[0], axis=0)


class Parameter(LayerKind):
    """A learned tensor of a given shape (an ``nn.Parameter`` attribute): ViT's
    class token, BART's final_logits_bias. Parameter: the layer's own path
    (layer ``final_logits_bias`` -> ``final_logits_bias``; under ``repeat``,
    ``<name>.<i>``), initialised by ``init`` when no weights are given.
    ``batch_like: x`` repeats a leading axis of size 1 to x's batch.
    """

    kind = "parameter"
    summary = "a learned tensor of a given shape (class token, final_logits_bias), optionally repeated over the batch"
    params = (
        Param("shape", "shape", doc="the tensor's shape: fixed sizes (a leading 1 to repeat over the batch)"),
        Param("init", "str", "zeros", "initial values without weights: zeros, ones, normal (N(0, init_scale^2)) "
              "or uniform (U(-init_scale, init_scale))", choices=INITS),
        Param("init_scale", "float", 0.02, "the standard deviation (normal) or bound (uniform) of the init", min=0.0),
        Param("dtype", "str", "float32", "element type", choices=FLOAT_DTYPES),
    )
    inputs = (_BATCH_LIKE,)
    shape_rule = "-> shape; with batch_like [B, *]: [1, *rest] -> [B, *rest]"
    example = "{name: cls_token, kind: parameter, shape: [1, 1, d_model], init: normal, input: patches}"

    def expand(self, b, call):
        shape = _concrete_shape(call)
        init = Init(call["init"], call["init_scale"])
        p = b.param("", shape, init, dtype=call["dtype"], doc=format_shape(tuple(Dim.const(s) for s in shape)))
        return {"y": _batched(b, call, p, shape)}

    def reference(self, args, weights, inputs):
        return {"y": _np_batched(weights[""], inputs)}


def constant_values(args) -> np.ndarray:
    """The constant's array from its arguments (checked by Constant.expand)."""
    shape = tuple(int(getattr(d, "value", d)) for d in args["shape"]) if args["shape"] is not None else None
    dtype = DTYPES[args["dtype"]]
    if args["values"] is not None:
        flat = np.asarray(args["values"], np.float64)
        return flat.astype(dtype).reshape(shape if shape is not None else flat.shape)
    n = math.prod(shape)
    fill = args["fill"]
    if fill == "arange":
        return np.arange(n, dtype=np.float64).astype(dtype).reshape(shape)
    value = {"zeros": 0.0, "ones": 1.0}.get(fill, args["value"])
    return np.full(shape, value, dtype)


class Constant(LayerKind):
    """A tensor fixed in the spec: ``values: [...]`` (a short list, laid out
    row-major into ``shape`` when one is given), or ``fill`` over ``shape``:
    zeros, ones, full (every entry ``value``) or arange (0, 1, 2, ... row-major).
    Stored in the model as a constant, never loaded from weights.
    ``batch_like: x`` repeats a leading axis of size 1 to x's batch.
    """

    kind = "constant"
    summary = "a tensor fixed in the spec (a short list of values, or zeros/ones/full/arange over a shape)"
    params = (
        Param("shape", "shape", None, "the tensor's shape (fixed sizes); default with values: [len(values)]"),
        Param("values", "floats", None, f"the entries, row-major (at most {MAX_LISTED_VALUES})"),
        Param("fill", "str", None, "instead of values: zeros, ones, full (with value) or arange", choices=FILLS),
        Param("value", "float", None, "the entry of fill: full"),
        Param("dtype", "str", "float32", "element type", choices=CONST_DTYPES),
    )
    inputs = (_BATCH_LIKE,)
    shape_rule = "-> shape; with batch_like [B, *]: [1, *rest] -> [B, *rest]"
    example = "{name: offsets, kind: constant, values: [0.5, -0.5], dtype: float32}"

    def expand(self, b, call):
        values, fill, shape = call["values"], call["fill"], call["shape"]
        if (values is None) == (fill is None):
            raise call.error("give either values: [...] or fill: (zeros, ones, full, arange)", "values" if values
                             is not None else None, hint="e.g. values: [1, 2, 3] or fill: zeros with shape: [1, 8]")
        if shape is not None:
            shape = _concrete_shape(call)
        if values is not None:
            if len(values) > MAX_LISTED_VALUES:
                raise call.error(f"values lists {len(values)} entries, more than {MAX_LISTED_VALUES}", "values",
                                 hint="a large constant is a table: use fill:, or make it a parameter loaded "
                                      "from the weights")
            if not values:
                raise call.error("values is empty", "values")
            if shape is not None and math.prod(shape) != len(values):
                raise call.error(f"shape {list(shape)} holds {math.prod(shape)} entries, values has {len(values)}",
                                 "shape")
            if call["value"] is not None:
                raise call.error("value goes with fill: full, not with values", "value")
        else:
            if shape is None:
                raise call.error(f"fill: {fill} needs a shape", "fill", hint="e.g. shape: [1, 8]")
            if (fill == "full") != (call["value"] is not None):
                raise call.error("fill: full needs value: (the entry)" if fill == "full" else
                                 f"value goes with fill: full, not fill: {fill}", "value" if fill != "full" else "fill")
            if math.prod(shape) > MAX_CONSTANT_ELEMENTS:
                raise call.error(f"shape {list(shape)} has {math.prod(shape):,} entries, more than a constant may "
                                 f"({MAX_CONSTANT_ELEMENTS:,})", "shape")
        self._check_representable(call, values, fill, shape)
        array = constant_values({**call.args, "shape": None if shape is None else
                                 tuple(Dim.const(s) for s in shape)})
        return {"y": _batched(b, call, b.const(array, "value"), array.shape)}

    @staticmethod
    def _check_representable(call: Call, values, fill, shape) -> None:
        """Refuse entries the dtype would change (2.5 as int64, 70000 as float16, 2 as bool)."""
        dtype = call["dtype"]
        if values is not None:
            entries, key = list(values), "values"
        elif fill == "full":
            entries, key = [call["value"]], "value"
        elif fill == "arange":
            entries, key = [math.prod(shape) - 1], "fill"
        else:
            return
        for v in entries:
            if dtype == "bool" and v not in (0, 1):
                raise call.error(f"a bool constant takes 0 or 1, got {v}", key)
            if dtype in ("int64", "int32"):
                info = np.iinfo(DTYPES[dtype])
                if float(v) != int(v) or not info.min <= int(v) <= info.max:
                    raise call.error(f"{v} is not an {dtype} value", key, hint="use dtype: float32 for fractions")
            if dtype in FLOAT_DTYPES and abs(v) > float(np.finfo(DTYPES[dtype]).max):
                raise call.error(f"{v} overflows {dtype}", key)
            if fill == "arange" and dtype in FLOAT_DTYPES and v > 2 ** np.finfo(DTYPES[dtype]).nmant + 1:
                raise call.error(f"arange up to {v} is not exact in {dtype}", key)

    def reference(self, args, weights, inputs):
        return {"y": _np_batched(constant_values(args), inputs)}


KINDS = (Parameter, Constant)
