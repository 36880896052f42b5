"""A Ctrl-C that lands in a finalizer or weakref callback (where Python can only
print "Exception ignored" and carry on) still stops a build: graphc.interrupt."""
from __future__ import annotations

import signal
import sys
import weakref

import pytest

import graphc.compiler
import graphc.pipeline
from graphc.interrupt import checkpoint, honoured
from helpers import TINY, cli



class _Thing:
    pass


def ctrl_c_inside_a_weakref_callback() -> None:
    """What importlib's module-lock cleanup suffers when SIGINT arrives at the wrong bytecode."""
    thing = _Thing()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))
    del thing                 # the callback runs here; its KeyboardInterrupt cannot propagate
    assert ref() is None


@pytest.fixture
def unraisable(monkeypatch) -> list:
    """What reaches the interpreter's unraisable-exception hook (pytest installs its own)."""
    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(type(u.exc_value).__name__))
    return seen


def test_plain_python_loses_such_a_ctrl_c(unraisable):
    """The problem, shown: without graphc.interrupt the interrupt is reported and dropped."""
    ctrl_c_inside_a_weakref_callback()          # returns normally: nothing stops
    assert unraisable == ["KeyboardInterrupt"]


def test_a_swallowed_ctrl_c_is_raised_at_the_next_checkpoint(unraisable):
    previous = signal.getsignal(signal.SIGINT), sys.unraisablehook
    with honoured():
        ctrl_c_inside_a_weakref_callback()
        with pytest.raises(KeyboardInterrupt):
            checkpoint()
    assert unraisable == []                       # no "Exception ignored ... Traceback" printed
    checkpoint()                                  # forgotten once the CLI is done
    assert (signal.getsignal(signal.SIGINT), sys.unraisablehook) == previous


def test_other_unraisable_errors_are_still_reported(unraisable):
    with honoured():
        thing = _Thing()
        ref = weakref.ref(thing, lambda _: 1 / 0)
        del thing
        assert ref() is None
        checkpoint()                              # nothing pending
    assert unraisable == ["ZeroDivisionError"]


def test_a_build_interrupted_that_way_stops_and_writes_nothing(tmp_path, monkeypatch):
    (spec := tmp_path / "tiny.yaml").write_text(TINY)
    (out := tmp_path / "model.onnx").write_bytes(b"precious")
    real = graphc.pipeline.simplify

    def simplify_then_ctrl_c(graph):              # mid-compile, before lowering
        real(graph)
        ctrl_c_inside_a_weakref_callback()
    monkeypatch.setattr(graphc.pipeline, "simplify", simplify_then_ctrl_c)
    rc, _, err = cli("build", spec, "-o", out)
    assert rc == 130
    assert err == "graphc: interrupted; no output was written\n"
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "tiny.yaml"]   # no temporary left
