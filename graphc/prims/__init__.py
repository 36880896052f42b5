"""Primitive ops: the closed set that layers expand into and the lowering knows.

Each primitive has a named shape rule (``infer``) and a numpy implementation
(``evaluate``, used for constant folding and the IR interpreter). Their ONNX
forms live in ``graphc.lower``; primitives never import onnx.
"""
from ._registry import PRIMS, Prim, ShapeError, prim, infer_op, present, slot
from . import core, attention_core, recurrent, quant, shared_cache  # noqa: F401  (registration)

__all__ = ["PRIMS", "Prim", "ShapeError", "prim", "infer_op", "present", "slot"]
