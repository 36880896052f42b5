"""Split one graph in two: what depends only on some inputs, and the rest.

An encoder-decoder compiled for generation is built once, as a whole cached
graph; this pass then cuts it. An op belongs to the first part ("encoder")
when every run-time value it reads depends only on the ``first`` inputs (and
weights and constants): the encoder stack, and also everything the decoder
derives from the encoder alone, such as each layer's cross-attention keys and
values projected from the memory, and the source padding mask reshaped for
the scores. The values the first part computes and the second part reads (the
boundary) become the first part's outputs and the second part's inputs, so
the decoding loop runs the first part once per source and feeds its outputs
to every step. Nothing about encoders or attention is known here: the split
follows the data flow alone.

Ops that read only weights and constants are copied into each part that
needs them (they are cheap; folding has removed the expensive ones).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from ..errors import InternalError
from .graph import Graph, OpNode, ValueInfo, verify


def _subgraph(g: Graph, name: str, ops: list[OpNode], inputs: list[str], outputs: dict[str, str],
              rename: dict[str, str]) -> Graph:
    """A new Graph with `ops` (in g's order), `inputs` (renamed by `rename`) and
    `outputs` (public -> value). Values and weights are shared, not copied."""
    sub = Graph(name)
    sub.metadata = dict(g.metadata)
    needed: list[str] = []
    seen: set[str] = set()

    def need(v: str) -> None:
        if v and v not in seen:
            seen.add(v)
            needed.append(v)
    for v in inputs:
        need(v)
    for op in ops:
        for v in op.inputs + op.outputs:
            need(rename.get(v, v) if v in rename else v)
    for v in outputs.values():
        need(v)
    originals = {new: old for old, new in rename.items()}
    for v in needed:
        info = g.value(originals.get(v, v))
        kind = "input" if v in inputs else info.kind
        if kind == "input" and info.kind != "input" and v not in rename.values():
            raise InternalError(f"partition: '{v}' is an input of the part but not of the graph")
        sub.add_value(dataclasses.replace(info, name=v, kind=kind, producer=None,
                                          data=info.data if kind in ("param", "const") else None))
    sub.inputs = list(inputs)
    for op in ops:
        sub.add_op(dataclasses.replace(op, inputs=[rename.get(i, i) for i in op.inputs],
                                       outputs=list(op.outputs), attrs=dict(op.attrs)))
        if op.id in g.lowering_options:
            sub.lowering_options[op.id] = dict(g.lowering_options[op.id])
    sub.outputs = dict(outputs)
    sub.dim_examples = dict(g.dim_examples)
    sub.input_ranges = {k: v for k, v in g.input_ranges.items() if k in inputs}
    verify(sub)
    return sub


def _needed_ops(g: Graph, targets: Iterable[str], stop: set[str]) -> list[OpNode]:
    """The ops that compute `targets`, walking back and stopping at `stop` values."""
    wanted: set[str] = set()
    todo = [t for t in targets if t not in stop]
    while todo:
        v = todo.pop()
        producer = g.value(v).producer
        if producer is None or producer in wanted:
            continue
        wanted.add(producer)
        todo.extend(i for i in g.op(producer).inputs if i and i not in stop)
    return [op for op in g.ops() if op.id in wanted]


def split_by_inputs(g: Graph, first: set[str], boundary_name: Callable[[int, ValueInfo], str],
                    late: Callable[[OpNode], bool] | None = None) -> tuple[Graph, Graph, list[tuple[str, str]]]:
    """(first part, second part, [(IR value, boundary name)]). The first part's outputs
    are the boundary values; the second part's inputs are g's other inputs, then the
    boundary values under their boundary names. ``late(op)`` true keeps an op (and so
    what depends on it) in the second part: tools/bench_encdec_split.py uses it to
    measure the cut at the encoder memory against the default cut."""
    dynamic = set(g.inputs)
    only_first = set(first)
    first_ops: set[str] = set()
    for op in g.ops():
        read = [i for i in op.inputs if i in dynamic]
        if not read:
            continue                # weights and constants only: copied where needed
        dynamic.update(op.outputs)
        if all(i in only_first for i in read) and not (late is not None and late(op)):
            only_first.update(op.outputs)
            first_ops.add(op.id)
    boundary: list[str] = []
    for op in g.ops():
        if op.id in first_ops:
            continue
        for i in op.inputs:
            if i in only_first and i not in boundary:
                boundary.append(i)
    for v in g.outputs.values():
        if v in only_first and v not in boundary:
            boundary.append(v)
    names = [(v, boundary_name(k, g.value(v))) for k, v in enumerate(boundary)]
    rename = dict(names)
    # the first part: the boundary values (a graph input passed straight through gets an Identity)
    enc_outputs: dict[str, str] = {}
    extra_ops: list[OpNode] = []
    for v, public in names:
        if v in g.inputs:
            ident = f"{public}/identity"
            g.add_value(ValueInfo(ident, g.value(v).type, span=g.value(v).span))
            node = OpNode(ident, "Identity", [v], [ident], {}, g.value(v).span, "")
            g.add_op(node)
            extra_ops.append(node)
            enc_outputs[public] = ident
        else:
            enc_outputs[public] = v
    enc_ops = _needed_ops(g, list(enc_outputs.values()), set())
    enc = _subgraph(g, g.name + "_encoder", enc_ops, [i for i in g.inputs if i in first], enc_outputs, {})
    dec_ops = [op for op in _needed_ops(g, list(g.outputs.values()), set(boundary)) if op.id not in first_ops]
    dec_inputs = [i for i in g.inputs if i not in first] + [rename[v] for v in boundary]
    dec_outputs = {k: rename.get(v, v) for k, v in g.outputs.items()}
    dec = _subgraph(g, g.name + "_decoder", dec_ops, dec_inputs, dec_outputs, rename)
    for node in extra_ops:
        g.drop_op(node.id)
    return enc, dec, names
