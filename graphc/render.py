"""Pictures of the graph: Graphviz dot, Mermaid, and SVG/PNG through Graphviz.

Two levels. The default is the spec's own layers: one node per top-level
layer (a block use or a ``repeat`` stack stays one node), wired as the spec
wires them, labelled ``name: kind`` and the layer's output shape. It is drawn
from the spec plus the built graph rather than from the ops alone, because
layers that emit no ops (dropout at inference) would otherwise vanish and
their neighbours appear wired to each other. ``ops=True`` draws the primitive
ops instead (compile-time ``Derive`` ops are left out: they are folded into
constants and are not in the ONNX file).

Shapes are symbolic (``[batch, 256]``) unless dims are given.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Mapping

from .analysis import _subst
from .errors import GraphcError
from .ir import Graph
from .shapes import format_shape
from .specfile.refs import split_ref

GRAPHVIZ_HINT = "install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz)"
IMAGE_FORMATS = ("svg", "png")
TEXT_FORMATS = ("dot", "mermaid")


@dataclass
class _Picture:
    """Backend-neutral: nodes (id -> label lines, role) and labelled edges."""

    nodes: dict[str, list[str]] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)       # input | output | layer | op
    edges: list[tuple[str, str, str]] = field(default_factory=list)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)   # node -> its layer path, outermost first

    def node(self, key: str, lines: list[str], role: str) -> None:
        self.nodes[key] = lines
        self.roles[key] = role

    def edge(self, a: str, b: str, label: str = "") -> None:
        if (a, b, label) not in self.edges:
            self.edges.append((a, b, label))


def _shape(t, dims: Mapping[str, int]) -> str:
    return format_shape(tuple(_subst(d, dims) for d in t.shape))


def _top(path: str, tops=()) -> str:
    """The top-level layer owning an op's layer path (the spec's names, dotted ones
    included, when known; else the path's first segment)."""
    return split_ref(path, tops)[0] if path else ""


# ------------------------------------------------------------------ layer level

def _leaving_values(g: Graph, tops=()) -> dict[str, list[str]]:
    """For each top-level layer, the values it produces that something outside
    it reads (another layer or a graph output), in emission order; those are
    its outputs as the rest of the graph sees them."""
    owner: dict[str, str] = {}
    last: dict[str, str] = {}
    for op in g.ops():
        if op.op == "Derive":
            continue
        top = _top(op.layer, tops)
        for o in op.outputs:
            owner[o] = top
            last[top] = o
    leaving: dict[str, list[str]] = {}
    for op in g.ops():
        top = _top(op.layer, tops)
        for i in op.inputs:
            src = owner.get(i)
            if src and src != top and i not in leaving.setdefault(src, []):
                leaving[src].append(i)
    for name in g.outputs.values():
        src = owner.get(name)
        if src and name not in leaving.setdefault(src, []):
            leaving[src].append(name)
    for top, name in last.items():
        if not leaving.get(top):
            leaving[top] = [name]
    return leaving


def _spec_picture(spec, g: Graph, dims: Mapping[str, int]) -> _Picture:
    pic = _Picture()
    decls = {d.name: d for d in spec.layers}
    known = {**decls, **{d.name: d for d in spec.inputs}}
    leaving = _leaving_values(g, decls)
    shapes: dict[str, str] = {}

    def shape_of(name: str, seen: frozenset = frozenset()) -> str:
        """Primary output shape of an input or layer; a layer with no ops of its
        own (dropout) passes its first input's shape through."""
        if name in shapes:
            return shapes[name]
        if name in g.inputs:
            shapes[name] = _shape(g.value(name).type, dims)
        elif leaving.get(name):
            shapes[name] = ", ".join(dict.fromkeys(_shape(g.value(v).type, dims) for v in leaving[name][:3]))
        elif name in decls and decls[name].inputs and name not in seen:
            shapes[name] = shape_of(split_ref(decls[name].inputs[0].ref, known)[0], seen | {name})
        else:
            shapes[name] = "?"
        return shapes[name]

    for decl in spec.inputs:
        pic.node(decl.name, [decl.name, shape_of(decl.name)], "input")
    for d in spec.layers:
        head = f"{d.name}: {d.kind}"
        if d.repeat is not None:
            head += f" ×{d.repeat.value}"
        pic.node(d.name, [head, shape_of(d.name)], "layer")
    for d in spec.layers:
        for ref in d.inputs:
            src, port_out = split_ref(ref.ref, known)
            label = port_out if port_out else ""
            if ref.port:
                label = f"{label} → {ref.port}" if label else ref.port
            pic.edge(src, d.name, label)
    for public, ref in spec.outputs.items():
        key = f"out:{public}"
        pic.node(key, [public, _shape(g.value(g.outputs[public]).type, dims)], "output")
        src, port_out = split_ref(ref.ref, known)
        pic.edge(src, key, port_out)
    return pic


def _graph_picture(g: Graph, dims: Mapping[str, int]) -> _Picture:
    """Layer level from the graph alone (no spec at hand): ops collapsed to
    their top-level layer."""
    pic = _Picture()
    owner = {name: name for name in g.inputs}
    for name in g.inputs:
        pic.node(name, [name, _shape(g.value(name).type, dims)], "input")
    for op in g.ops():
        if op.op == "Derive":
            continue
        layer = _top(op.layer) or "output"
        for o in op.outputs:
            owner[o] = layer
            pic.node(layer, [layer, _shape(g.value(o).type, dims)], "layer")
        for i in op.inputs:
            src = owner.get(i)
            if src is not None and src != layer:
                pic.edge(src, layer)
    for public, name in g.outputs.items():
        pic.node(f"out:{public}", [public, _shape(g.value(name).type, dims)], "output")
        if owner.get(name) is not None:
            pic.edge(owner[name], f"out:{public}")
    return pic


def _op_picture(g: Graph, dims: Mapping[str, int]) -> _Picture:
    pic = _Picture()
    producer: dict[str, str] = {}
    for name in g.inputs:
        pic.node(name, [name, _shape(g.value(name).type, dims)], "input")
        producer[name] = name
    for op in g.ops():
        if op.op == "Derive":
            continue
        shape = _shape(g.value(op.outputs[0]).type, dims) if op.outputs else ""
        pic.node(op.id, [op.op, shape], "op")
        pic.groups[op.id] = _layer_path(op.layer)
        for o in op.outputs:
            producer[o] = op.id
        for i in op.inputs:
            if i in producer:
                pic.edge(producer[i], op.id)
    for public, name in g.outputs.items():
        pic.node(f"out:{public}", [public, _shape(g.value(name).type, dims)], "output")
        if name in producer:
            pic.edge(producer[name], f"out:{public}")
    return pic


def _layer_path(path: str) -> tuple[str, ...]:
    """'encoder.layers.0.self_attn' -> ('encoder', 'encoder.layers.0',
    'encoder.layers.0.self_attn'): the nested layers an op belongs to, a repeat
    index kept with its stack ('layers.0' is one level, as in `graphc info`)."""
    out: list[str] = []
    for part in path.split(".") if path else []:
        if part.isdigit() and out:
            out[-1] += "." + part
        else:
            out.append(f"{out[-1]}.{part}" if out else part)
    return tuple(out)


def _group_tree(pic: _Picture) -> dict:
    """{group: {"nodes": [...], "children": {...}}} from pic.groups, in first-seen order."""
    root: dict = {"nodes": [], "children": {}}
    for n in pic.nodes:
        at = root
        for g in pic.groups.get(n, ()):
            at = at["children"].setdefault(g, {"nodes": [], "children": {}})
        at["nodes"].append(n)
    return root


# ------------------------------------------------------------------ backends

def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


_DOT_STYLE = {
    "input": 'shape=ellipse, style=filled, fillcolor="#e3f2e1"',
    "output": 'shape=ellipse, style=filled, fillcolor="#fdf0d5"',
    "layer": 'shape=box, style="rounded,filled", fillcolor="#e8eef9"',
    "op": 'shape=box, style="rounded,filled", fillcolor="#f2f2f2"',
}


def _to_dot(pic: _Picture, title: str) -> str:
    ids = {n: f"n{i}" for i, n in enumerate(pic.nodes)}
    lines = [f'digraph "{_dot_escape(title)}" {{', "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=11];', '  edge [fontname="Helvetica", fontsize=9];']
    clusters = iter(range(1 << 30))

    def emit(tree: dict, indent: str) -> None:
        for n in tree["nodes"]:
            text = "\\n".join(_dot_escape(x) for x in pic.nodes[n])
            lines.append(f'{indent}{ids[n]} [label="{text}", {_DOT_STYLE[pic.roles[n]]}];')
        for name, sub in tree["children"].items():   # one cluster per layer, nested as the layers nest
            lines.append(f"{indent}subgraph cluster_{next(clusters)} {{")
            lines.append(f'{indent}  label="{_dot_escape(name)}"; style="rounded,dashed"; color="#9aa7bd"; fontsize=10;')
            emit(sub, indent + "  ")
            lines.append(f"{indent}}}")
    emit(_group_tree(pic), "  ")
    for a, b, label in pic.edges:
        if a in ids and b in ids:
            attr = f' [label="{_dot_escape(label)}"]' if label else ""
            lines.append(f"  {ids[a]} -> {ids[b]}{attr};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_escape(text: str) -> str:
    return (text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
            .replace("|", "#124;"))


def _to_mermaid(pic: _Picture) -> str:
    ids = {n: f"n{i}" for i, n in enumerate(pic.nodes)}
    lines = ["flowchart TD"]
    groups = iter(range(1 << 30))

    def emit(tree: dict, indent: str) -> None:
        for n in tree["nodes"]:
            text = "<br/>".join(_mermaid_escape(x) for x in pic.nodes[n])
            if pic.roles[n] in ("input", "output"):
                lines.append(f'{indent}{ids[n]}(["{text}"])')
            else:
                lines.append(f'{indent}{ids[n]}["{text}"]')
        for name, sub in tree["children"].items():   # one subgraph per layer, nested as the layers nest
            lines.append(f'{indent}subgraph g{next(groups)}["{_mermaid_escape(name)}"]')
            emit(sub, indent + "  ")
            lines.append(f"{indent}end")
    emit(_group_tree(pic), "  ")
    for a, b, label in pic.edges:
        if a in ids and b in ids:
            arrow = f'-->|"{_mermaid_escape(label)}"|' if label else "-->"
            lines.append(f"  {ids[a]} {arrow} {ids[b]}")
    return "\n".join(lines) + "\n"


def render_graph(g: Graph, fmt: str = "dot", ops: bool = False, dims: Mapping[str, int] | None = None,
                 spec=None) -> str | bytes:
    """The graph as dot or mermaid text, or svg (text) / png (bytes) through
    Graphviz. Pass ``spec`` for the layer-level view to follow the spec exactly."""
    dims = dims or {}
    if ops:
        pic = _op_picture(g, dims)
    elif spec is not None:
        pic = _spec_picture(spec, g, dims)
    else:
        pic = _graph_picture(g, dims)
    if fmt == "mermaid":
        return _to_mermaid(pic)
    dot = _to_dot(pic, g.name)
    if fmt == "dot":
        return dot
    if fmt in IMAGE_FORMATS:
        data = dot_to_image(dot, fmt)
        return data.decode("utf-8") if fmt == "svg" else data
    raise GraphcError(f"unknown graph format '{fmt}'", hint=f"one of {', '.join(TEXT_FORMATS + IMAGE_FORMATS)}")


FORMAT_OF_SUFFIX = {".dot": "dot", ".gv": "dot", ".mmd": "mermaid", ".mermaid": "mermaid", ".svg": "svg", ".png": "png"}


def choose_format(fmt: str | None, output: str | None) -> str:
    """The picture format: --format if given, else the output file's extension
    (g.svg -> svg), else dot. A --format that contradicts a known extension
    (--format svg -o g.png) is an error: the file would hold the wrong bytes."""
    from pathlib import Path
    suffix = Path(output).suffix.lower() if output else ""
    implied = FORMAT_OF_SUFFIX.get(suffix)
    if fmt is None:
        return implied or "dot"
    if implied is not None and implied != fmt:
        raise GraphcError(f"--format {fmt} contradicts the output file's extension '{suffix}' ({implied})",
                          hint=f"drop --format (the extension decides), or name the file *.{fmt if fmt != 'mermaid' else 'mmd'}")
    return fmt


def dot_to_image(dot_text: str, fmt: str) -> bytes:
    """Run Graphviz's ``dot`` on the text. Graphviz is an optional system
    package, so its absence is a user error with the install command."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphcError("Graphviz 'dot' not found; it is needed for --format svg and png", hint=GRAPHVIZ_HINT)
    try:
        proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise GraphcError("Graphviz 'dot' took more than 120 s; the graph is too large to draw",
                          hint="draw at the layer level (without --ops), or use --format dot") from None
    except OSError as exc:
        raise GraphcError(f"cannot run Graphviz 'dot' ({exc})", hint=GRAPHVIZ_HINT) from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise GraphcError(f"Graphviz 'dot' failed (exit {proc.returncode}): {err[:500]}")
    return proc.stdout
