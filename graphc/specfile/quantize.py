"""The spec's optional ``quantize:`` section: which layers an int8 build quantizes.

    quantize:
      mode: int8                      # int8 (the default once the section is there) or none
      include: ["encoder.*"]          # layer path patterns; default: every projection / FFN
      exclude: ["encoder.layers.5"]   # kept float (wins over include)
      head: false                     # the output head (a top-level linear feeding an output) too

A pattern is a shell-style glob (``*``, ``?``, ``[..]``) over dotted layer
paths (``encoder.layers.3.self_attn``); it matches a layer and everything
inside it. Patterns are checked against the built graph by graphc.ir.quantize,
which reports one that matches no quantizable layer at its span here.
``--quantize`` on the command line overrides ``mode``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import GraphcError, Span, did_you_mean, known_list
from ..source import Node

# int8: dynamic int8 (weights per output channel, activations per tensor at run time).
# Weight-only MatMulNBits (int8/int4) was measured and not taken: docs/benchmarks.md.
MODES = ("none", "int8")
QUANTIZE_KEYS = ("mode", "include", "exclude", "head", "doc")
PATTERN_RE = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+$")


@dataclass(frozen=True)
class Pattern:
    text: str
    span: Span | None


@dataclass
class QuantizeDecl:
    span: Span | None = None
    mode: str | None = None
    mode_span: Span | None = None
    include: list[Pattern] | None = None     # None: every quantizable layer
    exclude: list[Pattern] = field(default_factory=list)
    head: bool = False


def check_mode(mode: str, span: Span | None = None, what: str = "quantize mode") -> str:
    if mode not in MODES:
        raise GraphcError(f"unknown {what} '{mode}'", span,
                          hint=did_you_mean(mode, MODES) or f"choose one of {known_list(MODES)}")
    return mode


def _patterns(node: Node, key: str) -> list[Pattern]:
    items = node.value if node.is_list else [node]
    out = []
    for item in items:
        if not isinstance(item.value, str) or not item.value:
            raise GraphcError(f"quantize: '{key}' takes layer name patterns (text), not {item.type_name()}",
                              item.span, hint='e.g. include: ["encoder.layers.*.linear1"]')
        if not PATTERN_RE.match(item.value):
            raise GraphcError(f"quantize: pattern {item.value!r} has characters a layer path cannot have",
                              item.span, hint="layer paths are names joined by '.'; patterns may use * ? [..]")
        out.append(Pattern(item.value, item.span))
    if not out:
        raise GraphcError(f"quantize: '{key}' is empty", node.span, hint=f"remove '{key}' or give a pattern")
    return out


def parse_quantize(node: Node) -> QuantizeDecl:
    if not node.is_map:
        raise GraphcError(f"'quantize' must be a mapping, not {node.type_name()}", node.span,
                          hint="e.g. quantize: {mode: int8, exclude: [decoder.layers.5]}")
    for key, span in node.key_spans.items():
        if key not in QUANTIZE_KEYS:
            raise GraphcError(f"unknown key '{key}' in 'quantize'", span,
                              hint=did_you_mean(key, QUANTIZE_KEYS) or f"allowed keys: {known_list(QUANTIZE_KEYS)}")
    m = node.value
    decl = QuantizeDecl(span=node.span)
    if "mode" in m:
        mode = m["mode"]
        if not isinstance(mode.value, str):
            raise GraphcError(f"quantize: 'mode' must be text, not {mode.type_name()}", mode.span,
                              hint=f"one of {known_list(MODES)}")
        decl.mode, decl.mode_span = check_mode(mode.value, mode.span), mode.span
    else:
        decl.mode = "int8"
    if "include" in m:
        decl.include = _patterns(m["include"], "include")
    if "exclude" in m:
        decl.exclude = _patterns(m["exclude"], "exclude")
    if "head" in m:
        if not isinstance(m["head"].value, bool):
            raise GraphcError(f"quantize: 'head' must be true or false, not {m['head'].type_name()}", m["head"].span)
        decl.head = m["head"].value
    if "doc" in m and not isinstance(m["doc"].value, str):
        raise GraphcError(f"'doc' must be text, not {m['doc'].type_name()}", m["doc"].span)
    return decl


def quantize_schema() -> dict:
    """The JSON schema of the section (graphc.schema)."""
    patterns = {"anyOf": [{"type": "string", "pattern": PATTERN_RE.pattern},
                          {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": PATTERN_RE.pattern}}]}
    props = {
        "mode": {"enum": list(MODES), "description": "int8: dynamic int8 (the default once the section is there); none: float"},
        "include": {**patterns, "description": "layer path patterns to quantize (default: every projection and FFN)"},
        "exclude": {**patterns, "description": "layer path patterns kept float (wins over include)"},
        "head": {"type": "boolean", "description": "also quantize the output head (default false)"},
        "doc": {"type": "string"},
    }
    return {"type": "object", "additionalProperties": False, "properties": props,
            "description": "which layers an int8 build quantizes (graphc build --quantize)"}
