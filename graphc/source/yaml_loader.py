"""Located YAML: every mapping key and every value keeps its file position.

PyYAML's safe composer gives us nodes with marks; we convert them ourselves
into :class:`Node` trees instead of letting PyYAML construct Python objects,
because (a) errors must point at a line and column, (b) duplicate keys must be
rejected (PyYAML silently keeps the last one), and (c) alias expansion must be
bounded: a "billion laughs" document is a few hundred bytes that expands to
billions of nodes, so we count nodes as we expand and stop early.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import GraphcError, Span, remember_source

MAX_SPEC_BYTES = 1 << 20        # a hand-written spec is kilobytes; 1 MiB is generous
MAX_NODES = 200_000             # after alias expansion
MAX_DEPTH = 64                  # specs are shallow; deep nesting is an attack or a mistake


@dataclass
class Node:
    """A YAML value with its position. ``value`` is a scalar, a list of Node,
    or a dict of str -> Node (with ``key_spans`` giving each key's position)."""

    value: Any
    span: Span
    key_spans: dict[str, Span] = field(default_factory=dict)

    @property
    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_list(self) -> bool:
        return isinstance(self.value, list)

    @property
    def is_scalar(self) -> bool:
        return not (self.is_map or self.is_list)

    def plain(self) -> Any:
        """The value with all positions stripped (for hashing and display)."""
        if self.is_map:
            return {k: v.plain() for k, v in self.value.items()}
        if self.is_list:
            return [v.plain() for v in self.value]
        return self.value

    def type_name(self) -> str:
        return type_name(self.value)


def type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return "a string"


def _span(path: str, mark: Any, end_mark: Any = None) -> Span:
    end_col = None
    if end_mark is not None and end_mark.line == mark.line and end_mark.column > mark.column:
        end_col = end_mark.column + 1
    return Span(path, mark.line + 1, mark.column + 1, end_col)


class _Converter:
    def __init__(self, path: str):
        self.path = path
        self.count = 0
        self.constructor = yaml.SafeLoader("")  # used only to type scalars

    def convert(self, node: yaml.Node, depth: int) -> Node:
        self.count += 1
        span = _span(self.path, node.start_mark, node.end_mark)
        if self.count > MAX_NODES:
            raise GraphcError(f"the spec expands to more than {MAX_NODES} YAML values", span,
                              hint="aliases ('*name') that expand recursively are refused; write the values out")
        if depth > MAX_DEPTH:
            raise GraphcError(f"the spec is nested more than {MAX_DEPTH} levels deep", span)
        if isinstance(node, yaml.ScalarNode):
            try:
                value = self.constructor.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                raise GraphcError(f"cannot read this value: {getattr(exc, 'problem', exc)}", span) from None
            if isinstance(value, (bytes, bytearray)) or not isinstance(value, (str, int, float, bool, type(None))):
                raise GraphcError(f"unsupported YAML value of type {type(value).__name__}", span,
                                  hint="use plain numbers, strings, booleans, lists and mappings")
            return Node(value, span)
        if isinstance(node, yaml.SequenceNode):
            return Node([self.convert(item, depth + 1) for item in node.value], span)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Node] = {}
            key_spans: dict[str, Span] = {}
            for key_node, value_node in node.value:
                kspan = _span(self.path, key_node.start_mark, key_node.end_mark)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise GraphcError("YAML merge keys ('<<') are not supported", kspan,
                                      hint="write the keys out, or use a block")
                if not isinstance(key_node, yaml.ScalarNode):
                    raise GraphcError("mapping keys must be plain names", kspan)
                key = key_node.value
                if key in out:
                    raise GraphcError(f"duplicate key '{key}'", kspan,
                                      notes=[f"first defined at {key_spans[key]}"])
                key_spans[key] = kspan
                out[key] = self.convert(value_node, depth + 1)
            return Node(out, span, key_spans)
        raise GraphcError("unsupported YAML construct", span)  # pragma: no cover


def load_yaml_text(text: str, path: str) -> Node:
    """Parse one YAML document into a located :class:`Node` tree."""
    remember_source(path, text)
    if len(text.encode("utf-8", errors="replace")) > MAX_SPEC_BYTES:
        raise GraphcError(f"spec file is larger than {MAX_SPEC_BYTES // 1024} KiB", Span(path, 1, 1),
                          hint="specs describe models, not data; keep weights in --weights files")
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        span = _span(path, mark) if mark is not None else Span(path, 1, 1)
        problem = exc.problem or exc.context or "malformed YAML"
        raise GraphcError(f"malformed YAML: {problem}", span,
                          hint="check indentation, colons and quotes around this position") from None
    except yaml.YAMLError as exc:
        raise GraphcError(f"malformed YAML: {exc}", Span(path, 1, 1)) from None
    except RecursionError:
        raise GraphcError(f"the spec is nested too deeply (more than {MAX_DEPTH} levels)", Span(path, 1, 1)) from None
    if root is None:
        raise GraphcError("the spec is empty", Span(path, 1, 1),
                          hint="a spec starts with 'graphc: 1' and has 'inputs', 'layers' and 'outputs'")
    try:
        return _Converter(path).convert(root, 0)
    except RecursionError:
        raise GraphcError(f"the spec is nested too deeply (more than {MAX_DEPTH} levels)", Span(path, 1, 1)) from None


def load_yaml_file(path: str | Path) -> tuple[Node, str]:
    """Read and parse a spec file; returns the tree and the text (for error display)."""
    p = Path(path)
    shown = str(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise GraphcError(f"spec file not found: {shown}") from None
    except OSError as exc:
        raise GraphcError(f"cannot read spec file {shown}: {exc.strerror}") from None
    if p.is_dir():
        raise GraphcError(f"{shown} is a directory, not a spec file")
    if size > MAX_SPEC_BYTES:
        raise GraphcError(f"spec file is larger than {MAX_SPEC_BYTES // 1024} KiB", Span(shown, 1, 1),
                          hint="specs describe models, not data; keep weights in --weights files")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise GraphcError(f"cannot read spec file {shown}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise GraphcError("spec file is not UTF-8 text", Span(shown, line, 1)) from None
    if "\x00" in text:
        raise GraphcError("spec file contains NUL bytes; is it a binary file?", Span(shown, 1, 1))
    return load_yaml_text(text, shown), text
