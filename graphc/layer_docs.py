"""The layer reference, rendered from the registry at run time.

``graphc layers``, ``graphc layers KIND`` and docs/layers.md all come from the
``LayerKind`` descriptors in ``graphc.layers.LAYERS`` (summary, docstring,
``Param``/``Port`` tuples, shape rule, example), so a new layer kind is
documented the moment it is registered and the docs cannot drift from what the
argument checker accepts. Nothing here is hand-maintained per kind.
"""
from __future__ import annotations

import inspect
import math
import re
import sys
from typing import Any

from .layers import LAYERS, LayerKind, Param

TYPE_NAMES = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "str": "str",
    "ints": "list of int",
    "floats": "list of numbers",
    "shape": "list of dims",
}


# ------------------------------------------------------------------ helpers

def yaml_literal(value: Any) -> str:
    """A default value as it would be written in a spec (null, true, 1.0e-05)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(yaml_literal(v) for v in value) + "]"
    return str(value)


def param_type(p: Param) -> str:
    return TYPE_NAMES.get(p.type, p.type)


def param_default(p: Param) -> str:
    return "required" if p.required else yaml_literal(p.default)


def param_allowed(p: Param) -> str:
    """Allowed values in words: choices, or a numeric range."""
    if p.choices:
        return " | ".join(yaml_literal(c) for c in p.choices)
    lo = None if p.min is None else yaml_literal(p.min)
    hi = None if p.max is None else yaml_literal(p.max)
    if lo is not None and hi is not None:
        return f"{lo} .. {hi}"
    if lo is not None:
        return f">= {lo}"
    if hi is not None:
        return f"<= {hi}"
    return ""


def describe_text(kind: LayerKind) -> str:
    """The kind's docstring (the math), dedented; the summary when it has none."""
    doc = type(kind).__doc__
    return inspect.cleandoc(doc) if doc else kind.summary


def families() -> list[tuple[str, list[LayerKind]]]:
    """Registered kinds grouped by the module that defines them, in
    registration order; a family's title is its module docstring's first line,
    so a new family module needs no edit here."""
    groups: dict[str, list[LayerKind]] = {}
    for kind in LAYERS.values():
        groups.setdefault(type(kind).__module__, []).append(kind)
    out = []
    for module, kinds in groups.items():
        mod = sys.modules.get(module)
        title = _first_sentence(mod.__doc__ if mod is not None else None) or module.rsplit(".", 1)[-1]
        out.append((title, kinds))
    return out


def _first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    if not doc:
        return ""
    para = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    head, sep, _ = para.partition(". ")
    head = head.rstrip(".") if sep or head.endswith(".") else head
    if len(head) > 80 and ", " in head[:80]:     # a heading, not a paragraph
        head = head[:head[:80].rindex(", ")]
    return head


def _rst_to_md(text: str) -> str:
    # a reST "para::" introduces the indented block below; in Markdown the colon alone does
    return re.sub(r"::$", ":", text.replace("``", "`"), flags=re.MULTILINE)


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths[:-1])] + [r[-1]]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


# ------------------------------------------------------------------ terminal text

def layers_list_text() -> str:
    """`graphc layers`: every kind with its one-line summary, by family."""
    width = max([len(k) for k in LAYERS] + [4])
    lines = [f"{len(LAYERS)} layer kinds; 'graphc layers KIND' shows parameters, shapes and an example.",
             "A spec's own blocks (under 'blocks:') are used as kinds too."]
    for title, kinds in families():
        lines.append("")
        lines.append(f"{title}:")
        for k in kinds:
            lines.append(f"  {k.kind:<{width}}  {k.summary}")
    return "\n".join(lines) + "\n"


def layer_detail_text(kind: LayerKind) -> str:
    """`graphc layers KIND`: the math, parameters, ports, shape rule, example."""
    lines = [f"{kind.kind}: {kind.summary}", ""]
    lines += ["  " + ln if ln else "" for ln in describe_text(kind).splitlines()]
    lines.append("")
    if kind.params:
        lines.append("parameters:")
        rows = [["name", "type", "default", "allowed", "doc"]]
        rows += [[p.name, param_type(p), param_default(p), param_allowed(p), p.doc] for p in kind.params]
        lines += _table(rows)
    else:
        lines.append("parameters: none")
    lines.append("inputs:" + ("  (more may follow under 'inputs:')" if kind.variadic else ""))
    lines += _table([[p.name, p.doc + (" (optional)" if p.optional else "")] for p in kind.inputs])
    lines.append("outputs:  (the first is what 'input: NAME' reads; others as NAME.OUTPUT)")
    lines += _table([[p.name, p.doc] for p in kind.outputs])
    if kind.shape_rule:
        lines.append(f"shape: {kind.shape_rule}")
    if kind.example:
        lines += ["example:", "  layers:", f"    - {kind.example}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ markdown

def _md_cell(text: str) -> str:
    return _rst_to_md(text).replace("|", "\\|").replace("\n", " ")


def _anchor(kind: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", kind.lower().replace(" ", "-"))


def layer_markdown(kind: LayerKind) -> str:
    out = [f"### `{kind.kind}`", "", f"*{_rst_to_md(kind.summary)}*", "", _rst_to_md(describe_text(kind)), ""]
    if kind.params:
        out += ["| parameter | type | default | allowed | description |", "|---|---|---|---|---|"]
        for p in kind.params:
            allowed = param_allowed(p)
            out.append(f"| `{p.name}` | {param_type(p)} | {'**required**' if p.required else '`' + param_default(p) + '`'} "
                       f"| {_md_cell(allowed) if allowed else ''} | {_md_cell(p.doc)} |")
        out.append("")
    else:
        out += ["No parameters.", ""]
    ins = ", ".join(f"`{p.name}`{' (optional)' if p.optional else ''}: {_md_cell(p.doc)}" for p in kind.inputs)
    says_so = any("inputs" in p.doc for p in kind.inputs)      # the port's own doc may say it already
    out.append(f"**Inputs:** {ins}" + ("; more may follow in `inputs:`" if kind.variadic and not says_so else ""))
    out.append("")
    outs = ", ".join(f"`{p.name}`: {_md_cell(p.doc)}" for p in kind.outputs)
    out.append(f"**Outputs:** {outs}")
    out.append("")
    if kind.shape_rule:
        out += [f"**Shape:** `{kind.shape_rule}`", ""]
    if kind.example:
        out += ["```yaml", "layers:", f"  - {kind.example}", "```", ""]
    return "\n".join(out)


def layers_markdown() -> str:
    """docs/layers.md. Deterministic: same registry, same bytes."""
    out = ["# Layer reference", "",
           "<!-- generated by tools/gen_docs.py from the layer registry (graphc/layers); do not edit. -->", "",
           f"{len(LAYERS)} layer kinds. The same text is printed by `graphc layers KIND`. Every parameter that "
           "takes a number also accepts a hyperparameter name or an expression such as `d_model / heads`; "
           "`bool` and `str` parameters accept the name of a hyperparameter holding such a value; an optional "
           "parameter may be given as `null` for its default.", ""]
    for title, kinds in families():
        out.append(f"- **{title}**: " + ", ".join(f"[`{k.kind}`](#{_anchor(k.kind)})" for k in kinds))
    out.append("")
    for title, kinds in families():
        out += [f"## {title}", ""]
        for k in kinds:
            out.append(layer_markdown(k))
    return "\n".join(out).rstrip("\n") + "\n"
