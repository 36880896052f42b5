"""Small JSON files written by other tools (a checkpoint's config.json, a
sharded checkpoint's index): read with a size bound, so a huge or endless
file (/dev/zero) is refused after ``max_bytes`` instead of filling memory,
and every failure is a GraphcError naming the file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import GraphcError, Span


def read_json(path: Path, max_bytes: int, what: str) -> Any:
    """The parsed JSON of ``path``; ``what`` names the file in errors ("model config")."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise GraphcError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise GraphcError(f"{path}: larger than {max_bytes >> 20} MiB; not a {what}")
    if not raw.strip():
        raise GraphcError(f"{path}: the file is empty; not a {what}")
    try:
        return json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        # located like a spec error, so the line and a caret show where it broke
        # (a hand edit's missing comma), in place of Python's "(char 22)"
        raise GraphcError(f"not a valid JSON {what}: {exc.msg}", Span(str(path), exc.lineno, exc.colno)) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise GraphcError(f"{path}: not a valid JSON {what} ({str(exc)[:200]})") from None
