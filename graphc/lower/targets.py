"""Lowering targets: which ONNX form each primitive takes for a runtime.

``onnx`` (the default): standard ONNX operators only, the forms in
graphc.lower.ops_* (registered with ``ops_core.lowering``). ``ort``: ONNX
Runtime, which may use its ``com.microsoft`` contrib operators; a target
lowering registered here for (primitive, target) replaces the standard one for
that target, and everything else falls back to the standard form. Every
ORT-specific choice lives in graphc.lower.target_ort, each with the
measurement that justified it (docs/benchmarks.md, "int8 and the ORT target").

Adding a target: a name in TARGETS, a module registering its forms with
``target_lowering(name, prim)``, imported by graphc.lower.model.
"""
from __future__ import annotations

from typing import Callable

from ..errors import GraphcError, InternalError, did_you_mean, known_list
from .ops_core import LOWERINGS

TARGETS = ("onnx", "ort")
TARGET_LOWERINGS: dict[tuple[str, str], Callable] = {}
MS_DOMAIN = "com.microsoft"


def target_lowering(target: str, *prims: str):
    """Register a target's own form of primitives; a duplicate is a bug."""
    if target not in TARGETS:
        raise InternalError(f"unknown target {target}")

    def deco(fn):
        for p in prims:
            if (p, target) in TARGET_LOWERINGS:
                raise InternalError(f"lowering of {p} for target {target} registered twice")
            TARGET_LOWERINGS[(p, target)] = fn
        return fn
    return deco


def lowering_for(prim: str, target: str) -> Callable | None:
    return TARGET_LOWERINGS.get((prim, target)) or LOWERINGS.get(prim)


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise GraphcError(f"unknown target '{target}'",
                          hint=did_you_mean(target, TARGETS) or f"choose {known_list(TARGETS)}")
    return target
