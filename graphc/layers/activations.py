"""Pointwise activations and (log-)softmax."""
from __future__ import annotations

import math

import numpy as np

from .base import LayerKind, Param


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x.astype(np.float64))


class _Pointwise(LayerKind):
    prim = ""
    shape_rule = "[*] -> [*]"

    def expand(self, b, call):
        x = call.inputs["x"]
        if x.dtype not in ("float32", "float16"):
            raise call.error(f"needs a floating-point input, got {x.dtype}", "x")
        return {"y": b.op(self.prim, [x])}


class Relu(_Pointwise):
    """max(x, 0)."""
    kind, prim, summary = "relu", "Relu", "max(x, 0)"
    example = "{name: act, kind: relu, input: fc1}"

    def reference(self, args, weights, inputs):
        return {"y": np.maximum(inputs["x"], 0)}


class Tanh(_Pointwise):
    """Hyperbolic tangent."""
    kind, prim, summary = "tanh", "Tanh", "tanh(x)"
    example = "{name: act, kind: tanh, input: fc1}"

    def reference(self, args, weights, inputs):
        return {"y": np.tanh(inputs["x"])}


class Sigmoid(_Pointwise):
    """1 / (1 + exp(-x))."""
    kind, prim, summary = "sigmoid", "Sigmoid", "1 / (1 + exp(-x))"
    example = "{name: gate, kind: sigmoid, input: fc1}"

    def reference(self, args, weights, inputs):
        return {"y": 1 / (1 + np.exp(-inputs["x"].astype(np.float64)))}


class Silu(_Pointwise):
    """x * sigmoid(x) (a.k.a. swish)."""
    kind, prim, summary = "silu", "Silu", "x * sigmoid(x)"
    example = "{name: act, kind: silu, input: fc1}"

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        return {"y": x / (1 + np.exp(-x))}


class Gelu(LayerKind):
    """Gaussian error linear unit: x * Phi(x), exact (erf) or tanh-approximated,
    as torch.nn.GELU(approximate=...)."""
    kind, summary = "gelu", "x * Phi(x), exact or tanh approximation"
    params = (Param("approximate", "str", "none", "'none' (erf, torch default) or 'tanh'", choices=("none", "tanh")),)
    shape_rule = "[*] -> [*]"
    example = "{name: act, kind: gelu, input: fc1}"

    def expand(self, b, call):
        x = call.inputs["x"]
        if x.dtype not in ("float32", "float16"):
            raise call.error(f"needs a floating-point input, got {x.dtype}", "x")
        return {"y": b.op("Gelu", [x], approximate=call["approximate"])}

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        if args["approximate"] == "tanh":
            return {"y": 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))}
        return {"y": 0.5 * x * (1 + _erf(x / math.sqrt(2)))}


class _SoftmaxLike(LayerKind):
    prim = ""
    params = (Param("axis", "int", -1, "the axis that sums to one"),)
    shape_rule = "[*] -> [*]"

    def expand(self, b, call):
        x = call.inputs["x"]
        if not -x.rank <= call["axis"] < x.rank:
            raise call.error(f"axis {call['axis']} is out of range for rank {x.rank}", "axis")
        return {"y": b.op(self.prim, [x], axis=call["axis"])}


class Softmax(_SoftmaxLike):
    """exp(x) / sum(exp(x)) along an axis."""
    kind, prim, summary = "softmax", "Softmax", "exp(x) / sum(exp(x)) along an axis"
    example = "{name: probs, kind: softmax, input: logits}"

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        e = np.exp(x - x.max(args["axis"], keepdims=True))
        return {"y": e / e.sum(args["axis"], keepdims=True)}


class LogSoftmax(_SoftmaxLike):
    """log(softmax(x)) computed stably."""
    kind, prim, summary = "log_softmax", "LogSoftmax", "log(softmax(x)) along an axis"
    example = "{name: logp, kind: log_softmax, input: logits}"

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        s = x - x.max(args["axis"], keepdims=True)
        return {"y": s - np.log(np.exp(s).sum(args["axis"], keepdims=True))}


KINDS = (Relu, Gelu, Tanh, Sigmoid, Silu, Softmax, LogSoftmax)
