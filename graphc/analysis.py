"""Per-layer summaries: output shapes at given dims, parameter counts, FLOPs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .ir import Graph, OpNode
from .shapes import Dim, format_shape


def _numel(shape, env) -> int | None:
    total = 1
    for d in shape:
        try:
            total *= d.evaluate(env)
        except KeyError:
            return None
    return total


def op_flops(g: Graph, op: OpNode, env: Mapping[str, int]) -> int | None:
    """Multiply-adds count as 2 FLOPs; elementwise ops as 1 per output element."""
    outs = [g.value(o).type for o in op.outputs]
    if op.op == "MatMul":
        a = g.value(op.inputs[0]).type
        n = _numel(outs[0].shape, env)
        k = a.shape[-1].evaluate(env) if a.shape[-1].symbols <= set(env) else None
        return None if n is None or k is None else 2 * n * k
    if op.op in ("Reshape", "Transpose", "Identity", "Concat", "Split", "Slice", "SliceLike", "Gather", "Cast",
                 "Derive"):   # Derive runs once at compile time, not per inference
        return 0
    if op.op == "Derive":     # runs once at compile time on the weights, never at inference
        return 0
    custom = op.attrs.get("flops")
    if callable(custom):
        return custom(g, op, env)
    n = _numel(outs[0].shape, env) if outs else 0
    return n


@dataclass
class LayerRow:
    layer: str
    kind: str
    shape: str
    params: int
    flops: int | None


def layer_rows(g: Graph, env: Mapping[str, int], depth: int | None = None) -> list[LayerRow]:
    rows: dict[str, LayerRow] = {}
    counted_params: set[str] = set()

    def key_of(path: str) -> str:
        if not path:
            return "(outputs)"
        parts = path.split(".")
        if depth is None:
            return path
        # keep numeric indices with their parent ('layers.0' is one level)
        out, level = [], 0
        for p in parts:
            if p.isdigit() and out:
                out[-1] += "." + p
                continue
            if level == depth:
                break
            out.append(p)
            level += 1
        return ".".join(out)

    for op in g.ops():
        key = key_of(op.layer)
        row = rows.setdefault(key, LayerRow(key, "", "", 0, 0))
        out = g.value(op.outputs[0]).type if op.outputs else None
        if out is not None:
            row.shape = format_shape(tuple(_subst(d, env) for d in out.shape))
        f = op_flops(g, op, env)
        row.flops = None if f is None or row.flops is None else row.flops + f
        for name in op.inputs:
            if name and g.has_value(name):
                v = g.value(name)
                if v.kind in ("param", "const") and name not in counted_params and v.type.concrete_shape() is not None:
                    if v.kind == "param" or v.data is not None:
                        pass
                    if v.kind == "param":
                        counted_params.add(name)
                        row.params += _numel(v.type.shape, {}) or 0
    return list(rows.values())


def layer_kind(spec, path: str) -> str:
    """The spec kind of a layer path ('encoder.layers.0.self_attn' -> the kind
    declared for self_attn in its block), following blocks and repeat indices.
    Empty for the internals of a built-in kind, which have no declaration."""
    layers, kind = spec.layers, ""
    parts = path.split(".") if path else []
    i = 0
    while i < len(parts):
        decl = next((d for d in layers if d.name == parts[i]), None)
        if decl is None:
            return ""
        kind, i = decl.kind, i + 1
        if decl.repeat is not None and i < len(parts) and parts[i].isdigit():
            i += 1
        block = spec.blocks.get(decl.kind)
        if block is None:
            return kind if i == len(parts) else ""
        layers = block.layers
    return kind


def _subst(d: Dim, env: Mapping[str, int]):
    if d.symbols and d.symbols <= set(env):
        return Dim.const(d.evaluate(env))
    return d


def param_count_by_derivation(g: Graph) -> int:
    return sum(_numel(p.type.shape, {}) or 0 for p in g.params())
