"""The IR graph: op nodes and value nodes in one networkx DiGraph.

Values and ops are separate node kinds (as in onnx-ir): a value knows its
producer and its users through the edges, an op keeps its *ordered* inputs and
outputs as a list because a DiGraph cannot hold ``Mul(x, x)`` twice. Every op
carries the spec location and the layer path that produced it, as real
fields, so every later error can still point at a YAML line.

An op's attributes say only what it computes. How it is to be lowered (a
layer's ``impl:`` request for its attention core) is a lowering option, kept
apart in ``Graph.lowering_options`` keyed by op id: the lowering reads it
(``LowerContext.option``), the shape rules and numpy evaluations never see it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx
import numpy as np

from ..errors import InternalError, Span
from ..tensors import DTYPES, FLOAT_DTYPES, TensorType  # noqa: F401  (re-exported: the IR's types)


@dataclass
class ValueInfo:
    """A tensor in the graph. ``kind`` is input, param, const or intermediate."""

    name: str
    type: TensorType
    kind: str = "intermediate"
    producer: str | None = None
    data: np.ndarray | None = None       # params (after materialization) and consts
    init: Any = None                     # params: how to initialise without weights
    span: Span | None = None
    doc: str = ""


@dataclass
class OpNode:
    id: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    span: Span | None = None
    layer: str = ""                      # the layer path, e.g. "encoder.layers.3.self_attn"


class Graph:
    """A thin facade over ``networkx.DiGraph``; node ids are 'v:<value>' and 'op:<id>'."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nx = nx.DiGraph()
        self.inputs: list[str] = []
        self.outputs: dict[str, str] = {}          # public output name -> value name
        self.metadata: dict[str, str] = {}
        self.dim_examples: dict[str, int] = {}     # dim name -> example size (for --random runs)
        self.input_ranges: dict[str, tuple[int, int]] = {}
        self.warnings: list = []                   # graphc.errors.GraphcWarning, printed by the CLI
        self._op_order: dict[str, None] = {}   # insertion-ordered set: O(1) removal (CSE, folding)
        self.generation = None                  # a --kv-cache build's graphc.ir.kv_cache.CacheContext
        # op id -> {option: value}: per-op choices between ONNX forms of the same function
        # (the names a primitive declares in Prim.lowering_options); absent = the lowering's default
        self.lowering_options: dict[str, dict[str, Any]] = {}
        # MatMul op ids whose right operand the spec fixed (a `matmul` layer against a
        # `constant`: an averaging or selection matrix meant to be exact), recorded
        # at expansion, when a constant is still told apart from a layer's weight;
        # the int8 pass keeps them float (graphc.ir.quantize)
        self.exact_products: set[str] = set()

    # values ---------------------------------------------------------------
    def add_value(self, info: ValueInfo) -> ValueInfo:
        key = "v:" + info.name
        if key in self.nx:
            raise InternalError(f"value '{info.name}' defined twice")
        self.nx.add_node(key, value=info)
        return info

    def value(self, name: str) -> ValueInfo:
        try:
            return self.nx.nodes["v:" + name]["value"]
        except KeyError:
            raise InternalError(f"no value named '{name}'") from None

    def has_value(self, name: str) -> bool:
        return ("v:" + name) in self.nx

    def values(self) -> Iterator[ValueInfo]:
        for key, data in self.nx.nodes(data=True):
            if key.startswith("v:"):
                yield data["value"]

    def params(self) -> list[ValueInfo]:
        return [v for v in self.values() if v.kind == "param"]

    def remove_value(self, name: str) -> None:
        self.nx.remove_node("v:" + name)

    # ops -------------------------------------------------------------------
    def add_op(self, node: OpNode) -> OpNode:
        key = "op:" + node.id
        if key in self.nx:
            raise InternalError(f"op '{node.id}' defined twice")
        self.nx.add_node(key, op=node)
        for name in node.inputs:
            if name:                         # "" = an omitted optional input (ONNX convention)
                self.nx.add_edge("v:" + name, key)
        for name in node.outputs:
            self.value(name).producer = node.id
            self.nx.add_edge(key, "v:" + name)
        self._op_order[node.id] = None
        return node

    def op(self, op_id: str) -> OpNode:
        return self.nx.nodes["op:" + op_id]["op"]

    def ops(self) -> list[OpNode]:
        """Ops in insertion order, which the builder keeps topological."""
        return [self.nx.nodes["op:" + i]["op"] for i in self._op_order]

    def remove_op(self, op_id: str) -> None:
        """Remove an op (its lowering options go with it)."""
        node = self.op(op_id)
        for name in node.outputs:
            self.value(name).producer = None
        self.nx.remove_node("op:" + op_id)
        del self._op_order[op_id]
        self.lowering_options.pop(op_id, None)
        self.exact_products.discard(op_id)

    def drop_op(self, op_id: str) -> None:
        """Remove an op and the values it produces (their readers must be gone or rewired)."""
        outputs = self.op(op_id).outputs
        self.remove_op(op_id)
        for name in outputs:
            self.remove_value(name)

    def place_after(self, anchor: str, op_ids: list[str]) -> None:
        """Move ops (added last) to just after ``anchor`` in the op order: a pass
        that rewrites an op in place keeps the order topological this way."""
        moved = set(op_ids)
        order: dict[str, None] = {}
        for i in self._op_order:
            if i in moved:
                continue
            order[i] = None
            if i == anchor:
                order.update(dict.fromkeys(op_ids))
        self._op_order = order

    def input_types(self, op: OpNode) -> list[TensorType | None]:
        """The types of an op's inputs as its primitive's rules take them: None
        for an omitted optional slot (``""``)."""
        return [self.value(n).type if n else None for n in op.inputs]

    def users(self, value_name: str) -> list[OpNode]:
        return [self.nx.nodes[k]["op"] for k in self.nx.successors("v:" + value_name)]

    def replace_uses(self, old: str, new: str) -> None:
        for user in self.users(old):
            user.inputs = [new if i == old else i for i in user.inputs]
            self.nx.remove_edge("v:" + old, "op:" + user.id)
            self.nx.add_edge("v:" + new, "op:" + user.id)
        for k, v in self.outputs.items():
            if v == old:
                self.outputs[k] = new

    # display -----------------------------------------------------------------
    def dump(self) -> str:
        """A stable text form, for golden tests and debugging."""
        lines = [f"graph {self.name}"]
        for name in self.inputs:
            lines.append(f"  input {name}: {self.value(name).type}")
        for v in self.values():
            if v.kind in ("param", "const"):
                lines.append(f"  {v.kind} {v.name}: {v.type}")
        for op in self.ops():
            attrs = ", ".join(f"{k}={_attr_text(v)}" for k, v in sorted(op.attrs.items()))
            outs = ", ".join(f"{o}: {self.value(o).type}" for o in op.outputs)
            options = ", ".join(f"{k}={_attr_text(v)}" for k, v in sorted(self.lowering_options.get(op.id, {}).items()))
            lines.append(f"  {outs} = {op.op}({', '.join(op.inputs)}){' {' + attrs + '}' if attrs else ''}"
                         f"{' lowering {' + options + '}' if options else ''}")
        for k, v in self.outputs.items():
            lines.append(f"  output {k} = {v}")
        return "\n".join(lines)


def _attr_text(v: Any) -> str:
    if callable(v):
        return getattr(v, "__name__", "fn")
    if isinstance(v, np.ndarray):
        return f"array{list(v.shape)}"
    return repr(v)


def verify(g: Graph) -> None:
    """Invariants every pass must keep. Raises InternalError: a broken invariant is a graphc bug."""
    seen: set[str] = set()
    for v in g.values():
        if v.kind in ("input", "param", "const"):
            seen.add(v.name)
            if v.producer is not None:
                raise InternalError(f"{v.kind} '{v.name}' has a producer")
            if v.kind == "const" and v.data is None:
                raise InternalError(f"const '{v.name}' has no data")
    for op in g.ops():
        if op.span is None:
            raise InternalError(f"op {op.id} ({op.op}) has no spec location")
        if op.inputs and op.inputs[-1] == "":
            raise InternalError(f"op {op.id} ({op.op}) ends in an omitted input: trailing omitted slots are dropped")
        for name in op.inputs:
            if name == "":
                continue
            if name not in seen:
                raise InternalError(f"op {op.id} ({op.op}) reads '{name}' before it is defined")
        for name in op.outputs:
            if name in seen:
                raise InternalError(f"value '{name}' is written twice")
            if g.value(name).producer != op.id:
                raise InternalError(f"value '{name}' does not name {op.id} as its producer")
            seen.add(name)
    for op_id in g.lowering_options:
        if "op:" + op_id not in g.nx:
            raise InternalError(f"lowering options recorded for op {op_id}, which is not in the graph")
    for public, name in g.outputs.items():
        if name not in seen:
            raise InternalError(f"output '{public}' refers to undefined value '{name}'")
    if not nx.is_directed_acyclic_graph(g.nx):
        raise InternalError("the IR graph has a cycle")
