"""The Transformer feed-forward block.

``feed_forward``: FFN(x) = linear2(act(linear1(x))), with SwiGLU as an option.
``feed_forward_op`` is also the FFN inside the ``transformer_*_layer`` kinds
(transformer.py). Split out of positional.py: one concept per module.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import Builder, Value
from ..shapes import Dim
from . import basic
from .base import Call, LayerKind, Param, Port

FLOAT_INPUTS = ("float32", "float16")
FFN_ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu")


def feed_forward_op(b: Builder, x: Value, d_model: int, d_ff: int, activation: str, bias: bool) -> Value:
    """The position-wise FFN inside the current scope, with torch's module names:

    ``linear1`` (d_model -> d_ff), ``linear2`` (d_ff -> d_model) and, for swiglu
    only, ``linear3`` (d_model -> d_ff, the linear "up" branch):

        relu / gelu / gelu_tanh / silu:  y = linear2(act(linear1(x)))
        swiglu:                          y = linear2(silu(linear1(x)) * linear3(x))

    (LLaMA's w1, w2, w3 are linear1, linear2, linear3.) Errors are GraphcErrors
    located at the current layer.
    """
    if activation not in FFN_ACTIVATIONS:
        raise b.error(f"unknown feed-forward activation {activation!r}", hint="one of " + ", ".join(FFN_ACTIVATIONS))
    last = x.shape[-1] if x.rank else None
    if last is None or last != Dim.const(d_model):
        raise b.error(f"the feed-forward block expects width {d_model} on the last axis, got "
                      f"{'a scalar' if last is None else last}")
    with b.scope("linear1"):
        w1, b1 = basic.declare_linear(b, d_model, d_ff, bias)
        h = basic.linear_op(b, x, w1, b1)                    # [*, d_model] -> [*, d_ff]
    if activation == "relu":
        h = b.op("Relu", [h])
    elif activation in ("gelu", "gelu_tanh"):
        h = b.op("Gelu", [h], approximate="tanh" if activation == "gelu_tanh" else "none")
    else:
        h = b.op("Silu", [h])
    if activation == "swiglu":
        with b.scope("linear3"):
            w3, b3 = basic.declare_linear(b, d_model, d_ff, bias)
            h = b.op("Mul", [h, basic.linear_op(b, x, w3, b3)])   # silu(gate) * up, [*, d_ff]
    with b.scope("linear2"):
        w2, b2 = basic.declare_linear(b, d_ff, d_model, bias)
        return basic.linear_op(b, h, w2, b2)                 # [*, d_ff] -> [*, d_model]


def _float_input(call: Call, x: Value, port: str = "x") -> None:
    if x.dtype not in FLOAT_INPUTS:
        raise call.error(f"needs a floating-point input, got {x.dtype}", port)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


class FeedForward(LayerKind):
    """Position-wise feed-forward network of the Transformer (section 3.3) and its
    gated variant:

        FFN(x)    = linear2(act(linear1(x)))                 act: relu (the paper), gelu,
                                                               gelu_tanh, silu
        SwiGLU(x) = linear2(silu(linear1(x)) * linear3(x))   (Shazeer 2020, LLaMA)

    Parameter names follow nn.TransformerEncoderLayer so its state_dict loads
    directly: ``<name>.linear1.weight`` [d_ff, d_model], ``.linear1.bias`` [d_ff],
    ``.linear2.weight`` [d_model, d_ff], ``.linear2.bias`` [d_model]; swiglu adds
    ``.linear3.weight`` [d_ff, d_model] (and ``.linear3.bias``). LLaMA's w1/w2/w3
    map to linear1/linear2/linear3 (set bias: false for LLaMA). Dropout is the
    identity at inference and is left out.
    """

    kind = "feed_forward"
    summary = "Transformer FFN linear2(act(linear1(x))), relu/gelu/silu or SwiGLU"
    params = (
        Param("d_ff", "int", 2048, "hidden width (2048 in the paper and nn.TransformerEncoderLayer)", min=1),
        Param("activation", "str", "relu", "relu (the paper, torch default), gelu (erf), gelu_tanh, silu, "
              "or swiglu (gated: silu(linear1(x)) * linear3(x))", choices=FFN_ACTIVATIONS),
        Param("bias", "bool", True, "biases on every linear (false for LLaMA-style SwiGLU)"),
    )
    inputs = (Port("x", "[*, d_model]"),)
    shape_rule = "[*, d_model] -> [*, d_model]"
    example = "{name: ffn, kind: feed_forward, input: x, d_ff: 2048, activation: relu}"

    def expand(self, b, call):
        x = call.inputs["x"]
        _float_input(call, x)
        d = basic.last_dim(call, x)
        return {"y": feed_forward_op(b, x, d, call["d_ff"], call["activation"], call["bias"])}

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        bias = args["bias"]

        def lin(name, v):
            y = v @ weights[name + ".weight"].astype(np.float64).T
            return y + weights[name + ".bias"] if bias else y
        h = lin("linear1", x)
        act = args["activation"]
        if act == "relu":
            h = np.maximum(h, 0)
        elif act == "gelu":
            h = 0.5 * h * (1 + _erf(h / math.sqrt(2)))
        elif act == "gelu_tanh":
            h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        elif act == "silu":
            h = _silu(h)
        else:
            h = _silu(h) * lin("linear3", x)
        return {"y": lin("linear2", h).astype(inputs["x"].dtype)}


KINDS = (FeedForward,)
