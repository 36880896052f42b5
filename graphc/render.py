"""Text pictures of the graph: Graphviz dot and Mermaid, at the level of spec
layers (default) or primitive ops."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

from .analysis import _subst
from .ir import Graph
from .shapes import format_shape


def _layer_edges(g: Graph, dims: Mapping[str, int]):
    """Collapse ops to their top-level spec layer; an edge wherever a value crosses layers."""
    def top(path: str) -> str:
        return path.split(".")[0] if path else "output"
    nodes: dict[str, str] = {}
    for name in g.inputs:
        nodes[name] = f"{name}\\n{format_shape(g.value(name).type.shape)}"
    owner = {name: name for name in g.inputs}
    edges: list[tuple[str, str]] = []
    for op in g.ops():
        layer = top(op.layer)
        for o in op.outputs:
            owner[o] = layer
            t = g.value(o).type
            nodes[layer] = f"{layer}\\n{format_shape(tuple(_subst(d, dims) for d in t.shape))}"
        for i in op.inputs:
            src = owner.get(i)
            if src is not None and src != layer and (src, layer) not in edges:
                edges.append((src, layer))
    for public, name in g.outputs.items():
        src = owner.get(name)
        nodes[f"out:{public}"] = f"{public}\\n{format_shape(g.value(name).type.shape)}"
        if src is not None:
            edges.append((src, f"out:{public}"))
    return nodes, edges


def _op_edges(g: Graph, dims: Mapping[str, int]):
    nodes: dict[str, str] = {}
    producer: dict[str, str] = {}
    edges = []
    for name in g.inputs:
        nodes[name] = f"{name}\\n{format_shape(g.value(name).type.shape)}"
        producer[name] = name
    for op in g.ops():
        t = g.value(op.outputs[0]).type if op.outputs else None
        shape = format_shape(tuple(_subst(d, dims) for d in t.shape)) if t else ""
        nodes[op.id] = f"{op.op}\\n{op.layer}\\n{shape}"
        for o in op.outputs:
            producer[o] = op.id
        for i in op.inputs:
            if i in producer:
                edges.append((producer[i], op.id))
    for public, name in g.outputs.items():
        nodes[f"out:{public}"] = public
        edges.append((producer[name], f"out:{public}"))
    return nodes, edges


def render_graph(g: Graph, fmt: str = "dot", ops: bool = False, dims: Mapping[str, int] | None = None) -> str:
    nodes, edges = (_op_edges if ops else _layer_edges)(g, dims or {})
    ids = {n: f"n{i}" for i, n in enumerate(nodes)}
    if fmt == "mermaid":
        lines = ["flowchart TD"]
        for n, label in nodes.items():
            text = label.replace("\\n", "<br/>").replace('"', "'")
            lines.append(f'  {ids[n]}["{text}"]')
        for a, b in edges:
            lines.append(f"  {ids[a]} --> {ids[b]}")
        return "\n".join(lines) + "\n"
    lines = [f'digraph "{g.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    for n, label in nodes.items():
        shape = ', shape=ellipse' if n in g.inputs or n.startswith("out:") else ""
        lines.append(f'  {ids[n]} [label="{label}"{shape}];')
    for a, b in edges:
        lines.append(f"  {ids[a]} -> {ids[b]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".graphc-", dir=p.parent if str(p.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
