"""Ctrl-C that is never lost.

Python turns SIGINT into KeyboardInterrupt at whatever bytecode runs next. When
that is a finalizer or a weakref callback (importlib's module-lock cleanup runs
one on every lazy import), the exception cannot propagate: the interpreter
prints "Exception ignored in ..." with a traceback and carries on, so the build
the user tried to stop runs to the end. This module remembers every SIGINT,
silences the interpreter's report of a swallowed one, and raises it again at the
next checkpoint: graphc.progress.report (every stage and every weight tensor)
and the moment before a build's output is renamed into place.

Only the CLI installs it (``honoured``); a library caller keeps its own
handlers, and ``checkpoint`` is then a no-op.

Two guards work the other way round, holding a signal back where acting on it
would do harm: ``deferred`` (a few system calls that must not be split, and the
initialisation of onnx's C extension, which crashes with SIGSEGV when a
KeyboardInterrupt is raised inside it: onnx 1.23, seen on this machine) and
``terminate_as_interrupt`` (SIGTERM cleans up like Ctrl-C while a file is written).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

_pending = False


def _on_sigint(signum, frame) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def _swallowed(previous):
    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return            # remembered by _on_sigint; checkpoint() raises it again
        previous(unraisable)
    return hook


@contextlib.contextmanager
def honoured():
    """For the duration: SIGINT is remembered as well as raised, and a
    KeyboardInterrupt the interpreter had to swallow is not printed."""
    global _pending
    if not _in_main_thread():
        yield
        return
    _pending = False
    old_handler = signal.signal(signal.SIGINT, _on_sigint)
    old_hook = sys.unraisablehook
    sys.unraisablehook = _swallowed(old_hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_handler)
        sys.unraisablehook = old_hook
        _pending = False


def checkpoint() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived and was swallowed."""
    if _pending:
        raise KeyboardInterrupt


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred():
    """Hold SIGINT/SIGTERM over code that must not be split; a signal that
    arrives meanwhile takes effect (KeyboardInterrupt) right after.
    Done with Python-level handlers rather than a thread signal mask: the
    kernel may deliver a process signal to any thread (ONNX Runtime and BLAS
    start several), and Python runs handlers in the main thread regardless."""
    if not _in_main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame):
        pending.append(signum)
    old = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if pending:
            handler = old[pending[0]]
            if callable(handler):
                handler(pending[0], None)          # default_int_handler raises KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), pending[0])    # the default action, now that it is safe


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM's and SIGHUP's default action kills the process on the spot,
    leaving a temporary file behind; meanwhile, turn them into
    KeyboardInterrupt so the caller's cleanup runs. (SIGKILL cannot be caught:
    graphc.atomic_write removes what such a process left on the next write.)"""
    if not _in_main_thread():
        yield
        return
    signals = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None))
               if s is not None and signal.getsignal(s) is signal.SIG_DFL]

    def handler(signum, frame):
        raise KeyboardInterrupt
    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in signals:
            signal.signal(s, signal.SIG_DFL)
