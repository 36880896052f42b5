"""Whole-model float16: the pass behind ``graphc build --dtype float16``.

Why a pass over the finished IR rather than a float16 path through every layer:
layers build their graphs in float32 (the dtype weights are checked and folded
in), and what changes for a half-precision model is only where float tensors
come from: inputs, parameters, constants and casts. So this pass flips those
sources to float16, retargets ``Cast(to=float32)``, then re-runs every op's
shape rule in graph order. The shape rules already demand matching dtypes, so
a value the pass missed cannot slip through silently: it is an internal error.

The numerically delicate spots keep float32 inside the lowering, where the
ONNX form is chosen: softmax and log-softmax (attention's and the layers'),
LayerNormalization and RMSNormalization (``stash_type=1``). Parameters and
constants are checked against float16's range (a weight of 1e5 would become
inf) and refused with
the parameter's YAML location; values below float16's smallest subnormal
round to zero, which is what ``torch.Tensor.half()`` does too.
"""
from __future__ import annotations

import numpy as np

from ..errors import GraphcError, InternalError
from ..prims import ShapeError, infer_op
from .graph import Graph, TensorType

FLOAT16_MAX = float(np.finfo(np.float16).max)     # 65504
PRECISIONS = ("float32", "float16")


def convert_to_float16(g: Graph) -> None:
    """Rewrite a materialized graph (parameters have data, Derive ops folded)
    so that every float32 tensor is float16. Integer and bool tensors are
    untouched. Each parameter is converted and its float32 copy released at
    once, so the pass adds at most one tensor's worth of memory."""
    for v in g.values():
        if v.type.dtype != "float32" or v.kind not in ("input", "param", "const"):
            continue
        if v.kind != "input":
            if v.data is None:
                raise InternalError(f"{v.kind} '{v.name}' has no data: convert after materialize()")
            v.data = _to_float16(v.name, v.kind, v.data, v.span)
        v.type = TensorType("float16", v.type.shape)
    for op in g.ops():
        if op.op == "Derive":
            raise InternalError("convert_to_float16 runs after Derive ops are folded")
        if op.op == "Cast" and op.attrs.get("to") == "float32":
            op.attrs["to"] = "float16"
        in_types = g.input_types(op)
        try:
            out_types = infer_op(op.op, op.attrs, in_types)
        except ShapeError as exc:
            raise InternalError(f"float16 conversion left {op.op} '{op.id}' inconsistent: {exc.message}") from None
        for name, t in zip(op.outputs, out_types):
            info = g.value(name)
            if t.shape != info.type.shape:
                raise InternalError(f"float16 conversion changed the shape of '{name}'")
            info.type = t
    g.metadata["graphc.dtype"] = "float16"


def check_float16_range(values) -> None:
    """Refuse tensors float16 cannot hold (they would become inf), at the YAML
    line of the layer that owns them. Run on the parameters before Derive ops
    are folded, so the message names the weight the user supplied; the pass
    checks again what folding computed from them (a scaled embedding)."""
    for v in values:
        if v.data is not None and v.data.dtype.kind == "f":
            _check_range(v.name, "parameter" if v.kind == "param" else "tensor", v.data, v.span)


def _check_range(name: str, what: str, data: np.ndarray, span) -> None:
    # only finite values can overflow: an infinity (a layer's -inf mask fill) is
    # one in float16 too (weights with NaN or infinity are refused on reading)
    finite = np.abs(data[np.isfinite(data)]) if data.size else data
    if finite.size:
        peak = float(np.max(finite))
        if peak > FLOAT16_MAX:
            raise GraphcError(
                f"{what} '{name}' has values up to {peak:.6g}, beyond float16's range "
                f"(largest finite value {FLOAT16_MAX:g})",
                span, hint="build this model in float32 (drop --dtype float16), or rescale the weights")


def _to_float16(name: str, kind: str, data: np.ndarray, span) -> np.ndarray:
    if kind == "const" and data.size and np.all(data == np.finfo(np.float32).min):
        # a masking sentinel ("the dtype's lowest finite value", the shared KV cache's
        # padding bias): it becomes float16's lowest, not inf (which would make a
        # fully masked row 0/0 = NaN) and not an error (no weight is exactly this)
        return np.full(data.shape, np.finfo(np.float16).min, np.float16)
    _check_range(name, "parameter" if kind == "param" else "tensor computed from the weights", data, span)
    return np.ascontiguousarray(data.astype(np.float16))
