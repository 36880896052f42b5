"""Whether graphc owns the process (the ``graphc`` command) or is a library
inside someone else's (a training script, a server).

Why: some settings are process-wide and cannot be read back to be restored
(ONNX Runtime's default logger severity has a setter and no getter). The CLI
may set them, since the process is its own; a library call must leave them as
the caller had them: a script's own ONNX Runtime sessions would otherwise lose
their warnings after its first ``graphc.generate``. graphc.cli.main sets
``cli`` for the duration of a command.
"""
from __future__ import annotations

import contextlib

cli = False


@contextlib.contextmanager
def as_cli():
    """For the duration, graphc may change process-wide settings (graphc.cli.main)."""
    global cli
    before, cli = cli, True
    try:
        yield
    finally:
        cli = before
