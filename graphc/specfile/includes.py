"""Reading a spec file and the files it includes (``include:``).

An included file contributes its blocks and nothing else. Includes are
resolved relative to the including file and must stay inside the root spec's
directory or an ``--include-dir``; cycles, depth and file count are bounded
(MAX_INCLUDE_DEPTH, MAX_INCLUDED_FILES) because a spec is untrusted input. Each
file is parsed once, so a diamond defines its blocks once. The parsing of each
file's own content is graphc.specfile.parse's.
"""
from __future__ import annotations

import os
import stat as _stat
from pathlib import Path
from typing import Iterable

from ..errors import GraphcError, Span
from ..source import Node, load_yaml_file
from ..source.yaml_loader import os_error_reason
from .model import BlockDecl, Spec
from .parse import TOP_KEYS, build_spec, check_keys, check_version, expect_map, parse_blocks

MAX_INCLUDE_DEPTH = 16
MAX_INCLUDED_FILES = 256
# an included file makes its blocks available; anything else in it would be ignored
INCLUDED_KEYS = ("graphc", "name", "doc", "include", "blocks")


def _resolve(path: Path, display: str, span: Span | None, what: str = "spec file") -> Path:
    """path.resolve(), with a symlink loop or an impossible name as a user error
    (Python 3.11 raises RuntimeError for a loop, later versions OSError)."""
    try:
        return path.resolve()
    except RuntimeError:
        reason = "too many levels of symbolic links (a symlink loop?)"
    except OSError as exc:
        reason = os_error_reason(exc)
    except ValueError:
        reason = "the name contains a NUL character"
    raise GraphcError(f"cannot read {what} {display}: {reason}", span)


def _is_file(path: Path, display: str, span: Span | None) -> bool:
    """False when nothing is there; an error when something is there that is
    not a file (a directory or a FIFO is not "not found")."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError) as exc:
        reason = os_error_reason(exc) if isinstance(exc, OSError) else "the name contains a NUL character"
        raise GraphcError(f"cannot read included file {display}: {reason}", span) from None
    if _stat.S_ISDIR(mode):
        raise GraphcError(f"included file {display} is a directory, not a spec file", span)
    if not _stat.S_ISREG(mode):
        raise GraphcError(f"included file {display} is not a regular file (a FIFO, socket or device)", span,
                          hint="include a spec file; only the root spec may be read from a pipe")
    return True


def _check_included(root: Node, display: str) -> None:
    """An included file makes its blocks available and nothing else: its dims,
    params, inputs, layers and outputs would be silently ignored."""
    for key, span in root.key_spans.items():
        if key in TOP_KEYS and key not in INCLUDED_KEYS:
            raise GraphcError(f"included file '{display}' has '{key}', but only its blocks are used", span,
                              hint="an included file may have graphc, name, doc, include and blocks; move "
                                   f"'{key}' to the spec that includes it" + (
                                       ", or make it a block parameter" if key == "params" else ""))
    check_keys(root, INCLUDED_KEYS, f"included file '{display}'")
    check_version(root, f"included file '{display}'", required=False)


class _Loader:
    """Reads a spec file and, depth first, the files it includes, each once."""

    def __init__(self, root: Path, include_dirs: Iterable[Path]):
        self.root_dir = _resolve(root, str(root), None).parent
        self.allowed = [self.root_dir] + [_resolve(Path(d), str(d), None, "include directory")
                                          for d in include_dirs]
        self.texts: list[tuple[str, str]] = []
        self.stack: list[Path] = []
        # each file is parsed once: a diamond (two includes of one file) must not
        # define its blocks twice, and a fan-out of includes must not multiply work
        self.done: dict[Path, tuple[Node, dict[str, BlockDecl]]] = {}

    def blocks_from(self, path: Path, display: str, span: Span | None) -> tuple[Node, dict[str, BlockDecl]]:
        resolved = _resolve(path, display, span, "spec file" if span is None else "included file")
        if resolved in self.stack:
            cycle = self.stack[self.stack.index(resolved):] + [resolved]
            chain = " -> ".join(p.name for p in cycle)
            raise GraphcError(f"include cycle: {chain}", span, hint="remove one of these includes")
        if resolved in self.done:
            return self.done[resolved]
        if len(self.stack) > MAX_INCLUDE_DEPTH:
            raise GraphcError(f"includes nested more than {MAX_INCLUDE_DEPTH} deep", span)
        if len(self.done) >= MAX_INCLUDED_FILES:
            raise GraphcError(f"more than {MAX_INCLUDED_FILES} files included", span)
        if span is None:
            root, text = load_yaml_file(path)
        else:
            if not any(_within(resolved, d) for d in self.allowed):
                raise GraphcError(f"include '{display}' is outside the spec's directory", span,
                                  hint="pass --include-dir DIR to allow includes from another directory")
            if not _is_file(resolved, display, span):
                raise GraphcError(f"included file not found: {display}", span,
                                  hint=f"includes are resolved relative to {self.stack[-1].parent}")
            root, text = load_yaml_file(resolved)
        self.texts.append((str(path), text))
        self.stack.append(resolved)
        try:
            expect_map(root, "a spec")
            if span is not None:
                _check_included(root, display)
            blocks: dict[str, BlockDecl] = {}
            inc = root.value.get("include")
            if inc is not None:
                items = inc.value if inc.is_list else [inc]
                for item in items:
                    if not isinstance(item.value, str) or not item.value:
                        raise GraphcError("'include' takes file names", item.span)
                    target = resolved.parent / item.value
                    _, inner = self.blocks_from(target, item.value, item.span)
                    _merge_blocks(blocks, inner)
            _merge_blocks(blocks, parse_blocks(root))
            self.done[resolved] = (root, blocks)
            return root, blocks
        finally:
            self.stack.pop()


def _within(path: Path, directory: Path) -> bool:
    try:
        path.relative_to(directory)
        return True
    except ValueError:
        return False


def _merge_blocks(into: dict[str, BlockDecl], new: dict[str, BlockDecl]) -> None:
    for name, block in new.items():
        if name in into and into[name] is not block:
            raise GraphcError(f"block '{name}' is defined twice", block.span,
                              notes=[f"first defined at {into[name].span}"])
        into[name] = block


def load_spec(path: str | os.PathLike, include_dirs: Iterable[str | os.PathLike] = ()) -> Spec:
    """Read a spec file and everything it includes."""
    loader = _Loader(Path(path), [Path(d) for d in include_dirs])
    root, blocks = loader.blocks_from(Path(path), str(path), None)
    return build_spec(root, blocks, str(path), loader.texts)
