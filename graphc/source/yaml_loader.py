"""Located YAML: every mapping key and every value keeps its file position.

PyYAML's safe composer gives us nodes with marks; we convert them ourselves
into :class:`Node` trees instead of letting PyYAML construct Python objects,
because (a) errors must point at a line and column, (b) duplicate keys must be
rejected (PyYAML silently keeps the last one), and (c) alias expansion must be
bounded: a "billion laughs" document is a few hundred bytes that expands to
billions of nodes, so we count nodes as we expand and stop early.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from bisect import bisect_right
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
    # where the value was copied into the document by an alias ('*name'): the
    # outermost alias, for the value and everything inside it; None elsewhere
    alias_span: Span | None = None

    @property
    def use_span(self) -> Span:
        """Where this occurrence of the value is in the document: the alias that
        copied it there, or its own position."""
        return self.alias_span or self.span

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


# Only these break lines, as in editors and in the quoted source line. YAML 1.1
# (PyYAML, libyaml) also counts NEL (U+0085) and LS/PS (U+2028/9) as breaks,
# so its marks' line numbers drift after one; positions are computed here from
# the marks' character index instead.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# the characters YAML allows in a document (YAML 1.1 'c-printable', as PyYAML checks)
_NOT_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


def split_lines(text: str) -> list[str]:
    """The lines of a text as an editor shows them (breaks: \\n, \\r\\n, \\r)."""
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "" and len(lines) > 1:
        lines.pop()
    return lines


class _Positions:
    """Character index -> 1-based (line, column) as an editor shows them."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.starts = [0] + [m.end() for m in _LINE_BREAK.finditer(text)]

    def at(self, index: int) -> tuple[int, int]:
        i = bisect_right(self.starts, index) - 1
        return i + 1, index - self.starts[i] + 1

    def span(self, mark: Any, end_mark: Any = None) -> Span:
        if mark is None:
            return Span(self.path, 1, 1)
        line, col = self.at(mark.index)
        end_col = None
        if end_mark is not None:
            end_line, end = self.at(end_mark.index)
            if end_line == line and end > col:
                end_col = end
        return Span(self.path, line, col, end_col)


class _Converter:
    def __init__(self, pos: _Positions, aliases: list[tuple[Any, Any]]):
        self.pos = pos
        self.constructor = yaml.SafeLoader("")  # used only to type scalars
        # The composer hands an alias back as the anchored node itself, so its
        # position is lost. The nodes are converted in document order; outside an
        # alias's expansion, meeting a node a second time is meeting the next
        # alias of the document, whose position the event pass recorded.
        self.seen: set[int] = set()
        self.aliases = iter(aliases)

    def _visit(self, node: yaml.Node, via: Span | None) -> Span | None:
        key = id(node)
        if key not in self.seen:
            self.seen.add(key)
            return via
        if via is not None:         # inside an alias's expansion: no alias in the text here
            return via
        marks = next(self.aliases, None)
        return self.pos.span(*marks) if marks is not None else None

    def convert(self, node: yaml.Node, depth: int, via: Span | None = None) -> Node:
        # _measure has bounded the expanded size and depth; these checks are a backstop
        span = self.pos.span(node.start_mark, node.end_mark)
        via = self._visit(node, via)
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
            return Node(value, span, alias_span=via)
        if node.tag not in _PLAIN_TAGS:
            # e.g. '!!python/object/apply' on a list, '!!set', '!!omap': never constructed,
            # but silently reading them as plain lists would hide what the author meant
            raise GraphcError(f"unsupported YAML tag '{node.tag}'", span,
                              hint="use plain numbers, strings, booleans, lists and mappings")
        if isinstance(node, yaml.SequenceNode):
            return Node([self.convert(item, depth + 1, via) for item in node.value], span, alias_span=via)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Node] = {}
            key_spans: dict[str, Span] = {}
            for key_node, value_node in node.value:
                kspan = self.pos.span(key_node.start_mark, key_node.end_mark)
                kvia = self._visit(key_node, via)
                if kvia is not None and via is None:
                    kspan = kvia        # an alias as a key ('*k: 1'): the key is where the alias is
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
                out[key] = self.convert(value_node, depth + 1, via)
            return Node(out, span, key_spans, alias_span=via)
        raise GraphcError("unsupported YAML construct", span)  # pragma: no cover


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def _measure(root: yaml.Node, pos: _Positions) -> None:
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
            span = pos.span(node.start_mark, node.end_mark)
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
                              pos.span(node.start_mark, node.end_mark),
                              hint="a spec is a tree; write the values out")
        gray.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) not in memo:
                stack.append((kid, False))


def _precheck_events(loader: Any, pos: _Positions) -> list[tuple[Any, Any]]:
    """One pass over the parser's events (a state machine, no recursion) that
    refuses deep nesting and huge documents before PyYAML's composer, which
    recurses once per level, ever sees them. Returns the positions of the
    aliases, in document order."""
    depth = values = 0
    aliases: list[tuple[Any, Any]] = []
    while True:
        event = loader.get_event()
        if event is None or isinstance(event, yaml.StreamEndEvent):
            return aliases
        if isinstance(event, yaml.AliasEvent):
            aliases.append((event.start_mark, event.end_mark))
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise GraphcError(f"the spec is nested more than {MAX_DEPTH} levels deep",
                                  pos.span(event.start_mark))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if isinstance(event, yaml.NodeEvent):
            values += 1
            if values > MAX_NODES:
                raise GraphcError(f"the spec has more than {MAX_NODES} YAML values", pos.span(event.start_mark),
                                  hint="specs describe models, not data")


def _compose(loader_cls: Any, text: str, pos: _Positions) -> tuple[Any, list]:
    loader = loader_cls(text)
    try:
        aliases = _precheck_events(loader, pos)
    finally:
        loader.dispose()
    loader = loader_cls(text)
    try:
        return loader.get_single_node(), aliases
    finally:
        loader.dispose()


def _in_our_words(exc: yaml.MarkedYAMLError) -> tuple[str, str] | None:
    """PyYAML's half-sentences for the mistakes people make most, reworded: its
    problem alone ("but found another document", "second occurrence") loses the
    context that says what is wrong. (message, hint), or None to keep PyYAML's."""
    problem, context = exc.problem or "", exc.context or ""
    if problem == "but found another document":
        return ("a second YAML document starts here; a spec is one document",
                "remove this '---' line (or what follows it), or split the file in two")
    if problem.startswith("found character '\\t'"):
        return ("a tab character; YAML indents and separates with spaces only",
                "replace the tab with spaces (most editors can insert spaces for the Tab key)")
    if context.startswith("found duplicate anchor"):
        name = context.split("'")[1] if context.count("'") >= 2 else ""
        return (f"the anchor '&{name}' is defined twice", "give each anchor its own name")
    return None


def _syntax_error(exc: yaml.YAMLError, pos: _Positions) -> GraphcError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        span = pos.span(mark)
        ours = _in_our_words(exc)
        if ours is not None:
            return GraphcError(f"malformed YAML: {ours[0]}", span, hint=ours[1])
        problem = (exc.problem or exc.context or "malformed YAML").replace("'<stream end>'", "the end of the file")
        return GraphcError(f"malformed YAML: {problem}", span,
                           hint="check indentation, colons and quotes around this position")
    if isinstance(exc, yaml.reader.ReaderError):   # a character YAML does not allow
        line, col = pos.at(max(0, exc.position))
        return GraphcError(f"malformed YAML: {exc.reason}", Span(pos.path, line, col))
    return GraphcError(f"malformed YAML: {str(exc).splitlines()[0]}", Span(pos.path, 1, 1))


def _parse(text: str, pos: _Positions) -> tuple[Any, list]:
    """Text -> composed yaml.Node (or None for an empty document) and the
    positions of its aliases, with libyaml when available (fast) and PyYAML's
    messages for early errors."""
    if _FAST_LOADER is not None:
        try:
            return _compose(_FAST_LOADER, text, pos)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            if mark is None or getattr(mark, "index", PY_REPARSE_LIMIT) >= PY_REPARSE_LIMIT:
                raise _syntax_error(exc, pos) from None
            fast_error = _syntax_error(exc, pos)
        try:
            _compose(yaml.SafeLoader, text, pos)
        except yaml.YAMLError as exc:
            raise _syntax_error(exc, pos) from None
        raise fast_error  # pragma: no cover  (the two parsers disagree on validity)
    try:
        return _compose(yaml.SafeLoader, text, pos)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, pos) from None


def _check_characters(text: str, pos: _Positions) -> None:
    """YAML refuses control characters anywhere, even inside quotes; say so at
    the character, in our words (the parsers report an offset into their
    buffer, and libyaml's message names '<unicode string>')."""
    m = _NOT_PRINTABLE.search(text)
    if m is None:
        return
    ch = m.group()
    line, col = pos.at(m.start())
    code = f"U+{ord(ch):04X}"
    if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
        what = f"the control character {code}"
        hint = (f"remove it; in a double-quoted string it can be written as an escape, "
                f"e.g. \"\\x{ord(ch):02x}\"" if ord(ch) < 0x100 else "remove it")
    else:
        what = f"the character {code}"
        hint = "remove it"
    raise GraphcError(f"{what} is not allowed in a spec (YAML refuses it, even inside quotes)",
                      Span(pos.path, line, col, col + 1), hint=hint)


def load_yaml_text(text: str, path: str) -> Node:
    """Parse one YAML document into a located :class:`Node` tree.

    Safe by construction: only PyYAML's safe loader's parser, composer and
    scalar constructors are used (no Python object tags), and size, nesting
    and alias expansion are bounded before anything is built from them."""
    remember_source(path, text)
    if len(text) > MAX_SPEC_BYTES or len(text.encode("utf-8", errors="replace")) > MAX_SPEC_BYTES:
        raise GraphcError(f"spec file is larger than {MAX_SPEC_BYTES // 1024} KiB", Span(path, 1, 1),
                          hint="specs describe models, not data; keep weights in --weights files")
    pos = _Positions(path, text)
    _check_characters(text, pos)
    try:
        root, aliases = _parse(text, pos)
        if root is None:
            raise GraphcError("the spec is empty", Span(path, 1, 1),
                              hint="a spec starts with 'graphc: 1' and has 'inputs', 'layers' and 'outputs'")
        _measure(root, pos)
        return _Converter(pos, aliases).convert(root, 0)
    except RecursionError:  # pragma: no cover  (the limits above should make this unreachable)
        raise GraphcError(f"the spec is nested too deeply (more than {MAX_DEPTH} levels)", Span(path, 1, 1)) from None


def os_error_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop?)"
    if exc.errno == errno.ENAMETOOLONG:
        return "the file name is too long"
    return exc.strerror or str(exc)


def read_spec_bytes(path: str | Path, shown: str) -> bytes:
    """The bytes of a spec file, at most MAX_SPEC_BYTES of them: whatever the
    path is (a regular file, a pipe, /dev/zero, a FIFO), at most one byte past
    the limit is read, so nothing can make graphc read without end."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise GraphcError(f"spec file not found: {shown}") from None
    except IsADirectoryError:
        raise GraphcError(f"{shown} is a directory, not a spec file") from None
    except OSError as exc:
        raise GraphcError(f"cannot read spec file {shown}: {os_error_reason(exc)}") from None
    except ValueError:          # a NUL in the path
        raise GraphcError(f"cannot read spec file {shown!r}: the name contains a NUL character") from None
    try:
        with os.fdopen(fd, "rb") as f:
            fd = -1
            if stat.S_ISDIR(os.fstat(f.fileno()).st_mode):
                raise GraphcError(f"{shown} is a directory, not a spec file")
            chunks, total = [], 0
            while total <= MAX_SPEC_BYTES:
                chunk = f.read(MAX_SPEC_BYTES + 1 - total)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            raw = b"".join(chunks)
    except IsADirectoryError:   # os.fdopen refuses a directory before the fstat above can say so
        raise GraphcError(f"{shown} is a directory, not a spec file") from None
    except OSError as exc:
        raise GraphcError(f"cannot read spec file {shown}: {os_error_reason(exc)}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(raw) > MAX_SPEC_BYTES:
        raise GraphcError(f"spec file is larger than {MAX_SPEC_BYTES // 1024} KiB", Span(shown, 1, 1),
                          hint="specs describe models, not data; keep weights in --weights files")
    return raw


def load_yaml_file(path: str | Path) -> tuple[Node, str]:
    """Read and parse a spec file; returns the tree and the text (for error display)."""
    shown = str(path)
    raw = read_spec_bytes(path, shown)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(_LINE_BREAK.findall(raw[: exc.start].decode("utf-8", errors="replace"))) + 1
        raise GraphcError("spec file is not UTF-8 text", Span(shown, line, 1)) from None
    if "\x00" in text:
        raise GraphcError("spec file contains NUL bytes; is it a binary file?", Span(shown, 1, 1))
    return load_yaml_text(text, shown), text
