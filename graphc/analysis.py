"""Per-layer summaries: output shapes at given dims, parameter counts, FLOPs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .ir import Graph, OpNode
from .prims import PRIMS
from .prims._flops import numel
from .shapes import Dim, format_shape
from .specfile.refs import split_ref


def op_flops(g: Graph, op: OpNode, env: Mapping[str, int]) -> int | None:
    """The op's FLOPs at dims ``env``, by its primitive's registered rule
    (graphc.prims._flops states the conventions); None if a dim is not given."""
    ins = g.input_types(op)             # None for an omitted optional input
    outs = [g.value(n).type for n in op.outputs]
    return PRIMS[op.op].flops(op.attrs, ins, outs, env)


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
                if v.kind == "param" and name not in counted_params and v.type.concrete_shape() is not None:
                    counted_params.add(name)
                    row.params += numel(v.type.shape, {}) or 0
    return list(rows.values())


# The sub-modules of the built-in composite kinds, named as their expansion
# scopes them ('#' a stack index, '<norm>' the layer_norm or rms_norm the
# declaration's `norm` chooses), so `graphc info --depth 2` can name the kind of
# a stack member the spec never declares.
_NORMS = {"norm": "<norm>", "norm1": "<norm>", "norm2": "<norm>", "norm3": "<norm>"}
BUILT_IN_MEMBERS = {
    "transformer": {"encoder": "transformer_encoder", "decoder": "transformer_decoder"},
    "transformer_encoder": {"layers.#": "transformer_encoder_layer", **_NORMS},
    "transformer_decoder": {"layers.#": "transformer_decoder_layer", **_NORMS},
    "transformer_encoder_layer": {"self_attn": "multihead_attention", "linear1": "linear", "linear2": "linear",
                                  **_NORMS},
    "transformer_decoder_layer": {"self_attn": "multihead_attention", "multihead_attn": "multihead_attention",
                                  "linear1": "linear", "linear2": "linear", **_NORMS},
    "multihead_attention": {"out_proj": "linear"},
}


def with_opless_layers(rows: list[LayerRow], spec, g: Graph, env: Mapping[str, int]) -> list[LayerRow]:
    """Top-level rows plus the declared layers that emit no ops (dropout at
    inference passes its input through), each placed after the row of its first
    input with that input's shape: `graphc check` lists every layer the spec declares."""
    out = list(rows)
    tops = {d.name for d in spec.layers} | {d.name for d in spec.inputs}
    have = {split_ref(r.layer, tops)[0] for r in rows}
    for decl in spec.layers:
        if decl.name in have or not decl.inputs:
            continue
        src = split_ref(decl.inputs[0].ref, tops)[0]
        at = max((i for i, r in enumerate(out) if split_ref(r.layer, tops)[0] == src), default=-1)
        if at >= 0:
            shape = out[at].shape
        elif src in g.inputs:
            shape = format_shape(tuple(_subst(d, env) for d in g.value(src).type.shape))
        else:
            continue
        out.insert(at + 1, LayerRow(decl.name, decl.kind, shape, 0, 0))
        have.add(decl.name)
    return out


def layer_kind(spec, path: str) -> str:
    """The spec kind of a layer path ('encoder.layers.0.self_attn' -> the kind
    declared for self_attn in its block), following blocks and repeat indices,
    and into the members of built-in composite kinds (BUILT_IN_MEMBERS).
    Empty where neither names one."""
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
            return _member_kind(kind, parts[i:], getattr(decl, "args", {}) or {})
        layers = block.layers
    return kind


def _member_kind(kind: str, rest: list[str], args) -> str:
    while rest:
        members = BUILT_IN_MEMBERS.get(kind, {})
        key, n = (f"{rest[0]}.#", 2) if len(rest) > 1 and rest[1].isdigit() else (rest[0], 1)
        if key not in members:
            return ""
        kind, rest = members[key], rest[n:]
        if kind == "<norm>":
            chosen = getattr(args.get("norm"), "value", None)    # a literal; a param reference reads as layer_norm
            kind = chosen if chosen in ("layer_norm", "rms_norm") else "layer_norm"
    return kind


def shape_list(text: str) -> list:
    """'[2, seq, 512]' -> [2, 'seq', 512], the form `graphc params --json` uses."""
    inner = text.strip()[1:-1].strip()
    return [int(p) if p.strip().lstrip("-").isdigit() else p.strip() for p in inner.split(",")] if inner else []


def _subst(d: Dim, env: Mapping[str, int]):
    if d.symbols and d.symbols <= set(env):
        return Dim.const(d.evaluate(env))
    return d
