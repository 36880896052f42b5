"""A one-line progress display for long builds, on stderr.

Why: initialising or loading hundreds of megabytes of weights, folding and
serialising take long enough that a silent terminal looks hung. The line is
drawn only when the stream is a terminal (logs and pipes stay clean) and not
with --quiet; it is redrawn in place with a carriage return, throttled so a
model with thousands of tensors does not spend its time printing, and erased
when the work ends so it leaves nothing behind.

The compiler knows nothing about terminals: it calls an optional callback
``progress(stage, done=None, total=None, detail="")``; :class:`Progress` is
one such callback.

Stages, in order: ``check`` (parse and shape-check), ``read`` (a weights
file, when given), ``weights`` (per tensor; done/total in bytes), ``fold``
(compile-time derived tensors), ``lower`` (to ONNX), ``write`` (the file).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

from .interrupt import checkpoint

ProgressFn = Callable[..., None]

STAGE_TEXT = {
    "check": "parsing and checking the spec",
    "read": "reading weights",
    "weights": "weights",
    "fold": "folding derived tensors",
    "float16": "converting to float16",
    "quantize": "quantizing to int8",
    "measure": "measuring the int8 error",
    "lower": "lowering to ONNX",
    "onnx_check": "running the ONNX checker",
    "write": "writing",
}


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


class Progress:
    """Callable progress line. ``enabled`` defaults to "stream is a TTY"."""

    MIN_INTERVAL = 0.1          # seconds between redraws within one stage

    def __init__(self, stream: Optional[TextIO] = None, enabled: Optional[bool] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            try:
                enabled = bool(isatty()) if isatty is not None else False
            except (ValueError, OSError):    # a closed stream
                enabled = False
        self.enabled = enabled
        self.clock = clock
        self._stage = ""
        self._last = float("-inf")
        self._width = 0
        self._t0 = clock()

    def __call__(self, stage: str, done: Optional[int] = None, total: Optional[int] = None,
                 detail: str = "") -> None:
        if not self.enabled:
            return
        now = self.clock()
        final = done is not None and total is not None and done >= total
        if stage == self._stage and not final and now - self._last < self.MIN_INTERVAL:
            return
        self._stage, self._last = stage, now
        text = STAGE_TEXT.get(stage, stage)
        if done is not None and total:
            pct = 100 * done / total
            amount = f"{_mb(done)} / {_mb(total)}" if stage == "weights" else f"{done:,} / {total:,}"
            text += f" {amount} ({pct:3.0f}%)"
        if detail:
            text += f"  {detail}"
        self._draw(f"graphc: {text}  [{now - self._t0:.1f} s]")

    def _draw(self, line: str) -> None:
        cols = 100
        line = line if len(line) <= cols else line[:cols - 3] + "..."
        pad = max(0, self._width - len(line))
        try:
            self.stream.write("\r" + line + " " * pad)
            self.stream.flush()
        except (OSError, ValueError):   # the terminal went away: stop drawing, never fail the build
            self.enabled = False
        self._width = len(line)

    def close(self) -> None:
        """Erase the line (the caller prints its own summary afterwards)."""
        if self.enabled and self._width:
            try:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        self._width = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def report(progress: Optional[ProgressFn], stage: str, done: Optional[int] = None,
           total: Optional[int] = None, detail: str = "") -> None:
    """Call ``progress`` if there is one (so callers need no ``if`` at each stage).
    Also a checkpoint for a Ctrl-C that Python had to swallow (graphc.interrupt)."""
    checkpoint()
    if progress is not None:
        progress(stage, done, total, detail)
