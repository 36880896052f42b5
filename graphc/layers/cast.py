"""Element type conversion (cast): int 1/0 masks to bool, bool to float, int32 to int64.

The conversions are ONNX ``Cast``'s (and numpy's ``astype``): to bool, zero is
False and anything else True (HF's int64 1/0 attention_mask becomes a bool
mask with True = real token); from float to an integer type the fraction is
dropped (truncated toward zero); from bool, False/True become 0/1. A value
outside the target's range (NaN or 1e10 to int32) has no defined result, as
in ONNX. Casting to the input's own type is the identity.
"""
from __future__ import annotations

import numpy as np

from ..tensors import DTYPES
from .base import LayerKind, Param

CAST_DTYPES = ("float32", "float16", "int64", "int32", "bool")


class Cast(LayerKind):
    """Convert x to another element type (ONNX Cast): int masks to bool
    (nonzero = True), bool masks to float, token ids between int32 and int64."""

    kind = "cast"
    summary = "convert to another element type (int 1/0 mask -> bool, bool -> float, int32 <-> int64)"
    params = (Param("to", "str", doc="the element type: " + ", ".join(CAST_DTYPES), choices=CAST_DTYPES),)
    shape_rule = "[*] -> [*]"
    example = "{name: keep, kind: cast, input: attention_mask, to: bool}"

    def expand(self, b, call):
        x = call.inputs["x"]
        if x.dtype == call["to"]:
            return {"y": x}
        return {"y": b.op("Cast", [x], to=call["to"])}

    def reference(self, args, weights, inputs):
        return {"y": np.asarray(inputs["x"]).astype(DTYPES[args["to"]])}


KINDS = (Cast,)
