"""User-facing errors that know where in a spec they come from.

Every mistake a user can make is reported as a :class:`GraphcError` carrying a
:class:`Span`; the CLI renders it as ``path:line:col: error: message`` followed
by the offending line, a caret and an optional hint, and exits with code 2.
Anything else that escapes is a bug in graphc (exit code 1).
"""
from __future__ import annotations

import difflib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class Span:
    """A position in a source file; lines and columns are 1-based."""

    path: str
    line: int
    col: int
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


# Texts of the spec files read recently, so diagnostics can quote the offending
# line even when the file changed on disk since (or never existed). Least
# recently read first: a long-running process compiling spec after spec keeps
# only the last MAX_REMEMBERED_SOURCES texts, not every spec it ever read.
# The bound exceeds what one compile reads (its spec plus at most
# graphc.specfile.includes.MAX_INCLUDED_FILES = 256 includes), so every file
# of the compile in flight can still be quoted; an older one is re-read from
# disk when an error about it is rendered.
MAX_REMEMBERED_SOURCES = 512
_SOURCES: "OrderedDict[str, str]" = OrderedDict()
_SOURCES_LOCK = threading.Lock()      # threads may compile at once (docs/python.md)


def remember_source(path: str, text: str) -> None:
    with _SOURCES_LOCK:
        _SOURCES[path] = text
        _SOURCES.move_to_end(path)
        while len(_SOURCES) > MAX_REMEMBERED_SOURCES:
            _SOURCES.popitem(last=False)


class GraphcError(Exception):
    """A user error: bad spec, bad weights, bad inputs. Exit code 2."""

    exit_code = 2
    severity = "error"        # GraphcWarning: "warning"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 notes: Iterable[str] = ()):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = list(notes)

    def render(self, source_text: str | None = None) -> str:
        """Render like a compiler diagnostic; reads the source line if it can."""
        where = str(self.span) if self.span and self.span.line else "graphc"
        head = f"{where}: {self.severity}: {self.message}"
        lines = [head]
        text_line = _source_line(self.span, source_text)
        if text_line is not None:
            # control characters (a stray BEL, an escape) are shown as '?', one column each
            visible = _CONTROL.sub("?", text_line.rstrip("\n").expandtabs(1))
            shown, offset = _window(visible, self.span.col - 1)
            width = 1
            if self.span.end_col is not None:
                width = max(1, self.span.end_col - self.span.col)
            width = min(width, max(1, len(shown) - offset))
            lines.append("  " + shown)
            lines.append("  " + " " * offset + "^" + "~" * (width - 1))
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:  # so tests and logs see the located form
        return self.render()


class GraphcWarning(GraphcError):
    """Something legal that is probably not what the user meant (an RNN run along
    a dim named 'batch'): located and rendered like an error, printed to stderr,
    and the command goes on. Collected in ``Graph.warnings`` while a spec expands."""

    severity = "warning"


class GraphcErrors(GraphcError):
    """Several independent errors of one spec, reported together (graphc.specfile
    collects them up to a limit): each rendered in turn, then a count."""

    def __init__(self, errors: list[GraphcError], more: int = 0):
        super().__init__(errors[0].message, errors[0].span, errors[0].hint, errors[0].notes)
        self.errors = list(errors)
        self.more = more

    def render(self, source_text: str | None = None) -> str:
        parts = [e.render(source_text) for e in self.errors]
        n = len(self.errors) + self.more
        tail = f"{n} errors" + (f" ({self.more} more not shown)" if self.more else "")
        return "\n".join(parts + [tail])


class InternalError(Exception):
    """A bug in graphc. Exit code 1."""

    exit_code = 1


QUOTE_WIDTH = 160
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _window(line: str, col0: int) -> tuple[str, int]:
    """The part of a long source line around 0-based column ``col0`` (a
    generated or minified spec can have a line of a megabyte; quoting all of
    it buries the message). Returns the text and the caret's offset in it."""
    if len(line) <= QUOTE_WIDTH:
        return line, col0
    start = max(0, min(col0 - QUOTE_WIDTH // 2, len(line) - QUOTE_WIDTH))
    text = line[start:start + QUOTE_WIDTH]
    offset = col0 - start
    if start > 0:
        text, offset = "..." + text, offset + 3
    if start + QUOTE_WIDTH < len(line):
        text += "..."
    return text, offset


def _source_line(span: Span | None, source_text: str | None) -> str | None:
    if span is None or span.line <= 0:
        return None
    if source_text is None:
        source_text = _SOURCES.get(span.path)
    if source_text is None:
        try:
            p = Path(span.path)
            if not p.is_file() or p.stat().st_size > 16 * 1024 * 1024:
                return None
            source_text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    # lines as editors and graphc's spans count them: str.splitlines() would also
    # break at U+0085, U+2028, form feeds, ... and quote the wrong line
    all_lines = re.split(r"\r\n|\r|\n", source_text)
    if span.line > len(all_lines):
        return None
    return all_lines[span.line - 1]


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean X?' hint for a misspelt name, or None (never the name
    itself: when the name is known but unusable, the message must say why)."""
    matches = difflib.get_close_matches(str(word), sorted(set(candidates) - {word}), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


def known_list(candidates: Iterable[str], limit: int = 12) -> str:
    names = sorted(set(candidates))
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return shown
