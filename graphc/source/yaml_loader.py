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
MAX_NODES = 100_000             # YAML values after alias expansion; real specs have a few thousand
MAX_DEPTH = 64                  # specs are shallow; deep nesting is an attack or a mistake
# libyaml reports syntax errors tersely ("did not find expected ','"); when the error lies
# this close to the start, the pure-Python parser re-reads the text to name the culprit
# character. It is ~50x slower, so it is not used for the whole of a large file.
PY_REPARSE_LIMIT = 64 * 1024

_PLAIN_TAGS = ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")
_FAST_LOADER = getattr(yaml, "CSafeLoader", None) if getattr(yaml, "__with_libyaml__", False) else None


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
        self.constructor = yaml.SafeLoader("")  # used only to type scalars

    def convert(self, node: yaml.Node, depth: int) -> Node:
        # _measure has bounded the expanded size and depth; these checks are a backstop
        span = _span(self.path, node.start_mark, node.end_mark)
        if depth > MAX_DEPTH:
            raise GraphcError(f"the spec is nested more than {MAX_DEPTH} levels deep", span)
        if isinstance(node, yaml.ScalarNode):
            try:
                value = self.constructor.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                raise GraphcError(f"cannot read this value: {getattr(exc, 'problem', None) or exc}", span) from None
            except (ValueError, OverflowError, TypeError) as exc:
                # e.g. an integer of more than 4300 digits (Python's int/str conversion limit)
                why = "the number is too long" if "digits" in str(exc) else str(exc).split(";")[0]
                raise GraphcError(f"cannot read this value: {why}", span) from None
            if isinstance(value, (bytes, bytearray)) or not isinstance(value, (str, int, float, bool, type(None))):
                raise GraphcError(f"unsupported YAML value of type {type(value).__name__}", span,
                                  hint="use plain numbers, strings, booleans, lists and mappings")
            return Node(value, span)
        if node.tag not in _PLAIN_TAGS:
            # e.g. '!!python/object/apply' on a list, '!!set', '!!omap': never constructed,
            # but silently reading them as plain lists would hide what the author meant
            raise GraphcError(f"unsupported YAML tag '{node.tag}'", span,
                              hint="use plain numbers, strings, booleans, lists and mappings")
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


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def _measure(root: yaml.Node, path: str) -> None:
    """Refuse alias bombs, recursive aliases and deep nesting before converting.

    PyYAML composes an alias as a second reference to the anchored node, so the
    composed graph stays as small as the text; the danger is in expanding it.
    The expanded size and depth of every distinct node are computed once each
    (memoised, iteratively: an alias chain can be longer than Python's stack),
    so a "billion laughs" document is refused in time linear in its text."""
    memo: dict[int, tuple[int, int]] = {}
    gray: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            gray.discard(key)
            kids = _children(node)
            size = 1 + sum(memo[id(k)][0] for k in kids)
            depth = 1 + max((memo[id(k)][1] for k in kids), default=0)
            span = _span(path, node.start_mark, node.end_mark)
            if size > MAX_NODES:
                raise GraphcError(f"the spec expands to more than {MAX_NODES} YAML values", span,
                                  hint="aliases ('*name') that expand recursively are refused; write the values out")
            if depth > MAX_DEPTH + 1:
                raise GraphcError(f"the spec is nested more than {MAX_DEPTH} levels deep", span)
            memo[key] = (size, depth)
            continue
        if key in memo:
            continue
        if key in gray:
            raise GraphcError("an alias refers to a value that contains it (a recursive structure)",
                              _span(path, node.start_mark, node.end_mark),
                              hint="a spec is a tree; write the values out")
        gray.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) not in memo:
                stack.append((kid, False))


def _precheck_events(loader: Any, path: str) -> None:
    """One pass over the parser's events (a state machine, no recursion) that
    refuses deep nesting and huge documents before PyYAML's composer, which
    recurses once per level, ever sees them."""
    depth = values = 0
    while True:
        event = loader.get_event()
        if event is None or isinstance(event, yaml.StreamEndEvent):
            return
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise GraphcError(f"the spec is nested more than {MAX_DEPTH} levels deep",
                                  _span(path, event.start_mark))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if isinstance(event, yaml.NodeEvent):
            values += 1
            if values > MAX_NODES:
                raise GraphcError(f"the spec has more than {MAX_NODES} YAML values", _span(path, event.start_mark),
                                  hint="specs describe models, not data")


def _compose(loader_cls: Any, text: str, path: str) -> Any:
    loader = loader_cls(text)
    try:
        _precheck_events(loader, path)
    finally:
        loader.dispose()
    loader = loader_cls(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _syntax_error(exc: yaml.YAMLError, path: str) -> GraphcError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        span = _span(path, mark) if mark is not None else Span(path, 1, 1)
        problem = exc.problem or exc.context or "malformed YAML"
        return GraphcError(f"malformed YAML: {problem}", span,
                           hint="check indentation, colons and quotes around this position")
    return GraphcError(f"malformed YAML: {exc}", Span(path, 1, 1))


def _parse(text: str, path: str) -> Any:
    """Text -> composed yaml.Node (or None for an empty document), with
    libyaml when available (fast) and PyYAML's messages for early errors."""
    if _FAST_LOADER is not None:
        try:
            return _compose(_FAST_LOADER, text, path)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            if mark is None or getattr(mark, "index", PY_REPARSE_LIMIT) >= PY_REPARSE_LIMIT:
                raise _syntax_error(exc, path) from None
            fast_error = _syntax_error(exc, path)
        try:
            _compose(yaml.SafeLoader, text, path)
        except yaml.YAMLError as exc:
            raise _syntax_error(exc, path) from None
        raise fast_error  # pragma: no cover  (the two parsers disagree on validity)
    try:
        return _compose(yaml.SafeLoader, text, path)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, path) from None


def load_yaml_text(text: str, path: str) -> Node:
    """Parse one YAML document into a located :class:`Node` tree.

    Safe by construction: only PyYAML's safe loader's parser, composer and
    scalar constructors are used (no Python object tags), and size, nesting
    and alias expansion are bounded before anything is built from them."""
    remember_source(path, text)
    if len(text) > MAX_SPEC_BYTES or len(text.encode("utf-8", errors="replace")) > MAX_SPEC_BYTES:
        raise GraphcError(f"spec file is larger than {MAX_SPEC_BYTES // 1024} KiB", Span(path, 1, 1),
                          hint="specs describe models, not data; keep weights in --weights files")
    try:
        root = _parse(text, path)
        if root is None:
            raise GraphcError("the spec is empty", Span(path, 1, 1),
                              hint="a spec starts with 'graphc: 1' and has 'inputs', 'layers' and 'outputs'")
        _measure(root, path)
        return _Converter(path).convert(root, 0)
    except RecursionError:  # pragma: no cover  (the limits above should make this unreachable)
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
