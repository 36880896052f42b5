"""Shared test helpers: compile spec text, run it on ORT and on the ONNX reference evaluator."""
from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from graphc.expand import build_graph
from graphc.lower import check_model, lower, serialize
from graphc.pipeline import Options, run_passes
from graphc.specfile import parse_spec_text

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

# the smallest useful spec, for the tests of files, signals and errors around a build
TINY = """graphc: 1
dims: {batch: 2}
inputs:
  x: {dtype: float32, shape: [batch, 4]}
layers:
  - {name: fc, kind: linear, input: x, out_features: 3}
  - {name: act, kind: relu, input: fc}
outputs: {y: act}
"""

# the smallest decoder for --kv-cache builds (no generation: section; TINY_DECODER_GEN adds it)
TINY_DECODER = """graphc: 1
dims: {batch: 2, seq: 8}
params: {vocab: 40}
inputs:
  tokens: {dtype: int64, shape: [batch, seq], range: [0, vocab]}
layers:
  - {name: emb, kind: embedding, input: tokens, num_embeddings: vocab, embedding_dim: 16}
  - {name: attn, kind: multihead_attention, input: emb, heads: 2, causal: true}
  - {name: head, kind: linear, input: attn, out_features: vocab}
outputs:
  logits: head
"""
TINY_DECODER_GEN = "generation: {tokens: tokens, logits: logits, bos: 1, eos: 2, pad: 0}\n"


def random_weights(graph, seed: int = 0, scale: float | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for p in graph.params():
        shape = p.type.concrete_shape()
        fan = shape[-1] if shape else 1
        s = scale if scale is not None else 1 / np.sqrt(max(fan, 1))
        out[p.name] = (rng.standard_normal(shape) * s).astype(np.float32)
        if p.name.endswith(("norm.weight",)) or ".norm" in p.name and p.name.endswith(".weight"):
            out[p.name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return out


def compile_text(text: str, weights=None, seed: int = 0, opset: int = 17, check: bool = True,
                 simplified: bool = True):
    """Returns (model bytes, graph, the weights used): the passes of
    compiler.compile_spec, from the one list in graphc.pipeline
    (``simplified=False`` skips its simplify pass, for comparisons)."""
    spec = parse_spec_text(text, "<test>")
    g = build_graph(spec)
    if weights == "random":
        weights = random_weights(g, seed)
    used = dict(weights) if weights is not None else None
    run_passes(g, Options(weights, seed, spec=spec, opset=opset), skip=() if simplified else ("simplify",))
    model = lower(g, opset)
    if check:
        check_model(model)
    return serialize(model), g, used


def ort_run(model: bytes, feeds: dict, threads: int = 1) -> dict[str, np.ndarray]:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds)))


def ref_run(model: bytes, feeds: dict) -> dict[str, np.ndarray]:
    """The ONNX reference evaluator: an independent second runtime."""
    from onnx.reference import ReferenceEvaluator
    import onnx
    m = onnx.load_from_string(model)
    ev = ReferenceEvaluator(m)
    names = [o.name for o in m.graph.output]
    return dict(zip(names, ev.run(None, feeds)))


def single_layer_spec(kind: str, args: dict, inputs: dict, dims=("batch", "seq"), ports: dict | None = None,
                      outputs=None) -> str:
    """A one-layer spec; inputs maps name -> (dtype, shape list)."""
    layer = {"name": "l", "kind": kind, **args}
    if ports is not None:
        layer["inputs"] = ports
    else:
        layer["inputs"] = list(inputs)
    spec = {
        "graphc": 1,
        "dims": list(dims),
        "inputs": {n: {"dtype": dt, "shape": list(shape)} for n, (dt, shape) in inputs.items()},
        "layers": [layer],
        "outputs": outputs or {"y": "l"},
    }
    return yaml.safe_dump(spec, sort_keys=False)


def graphc_cli(*args: str, cwd=None, env=None, text: bool = True) -> subprocess.CompletedProcess:
    """graphc as a real subprocess (``python -m graphc``), output captured;
    ``text=False``: stdout and stderr as bytes (a model written to /dev/stdout)."""
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], capture_output=True, text=text,
                          cwd=cwd or ROOT, env=env, timeout=120)


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang()


def cli(*args, hang_s: float | None = None) -> tuple[int, str, str]:
    """graphc's entry point in-process (a subprocess costs a second of imports):
    (exit code, stdout, stderr); argparse's SystemExit becomes its code.
    ``hang_s``: a hard time bound (SIGALRM), so a hang fails the test instead
    of stalling CI (the fuzz tests feed it hostile specs)."""
    import pytest
    from graphc.cli import main
    out, err = io.StringIO(), io.StringIO()
    if hang_s is not None:
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, hang_s)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as exc:
                rc = exc.code
    except _Hang:
        pytest.fail(f"graphc {' '.join(map(str, args))} ran for more than {hang_s} s")
    finally:
        if hang_s is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    return rc, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- layer parity (one table-driven check)

def random_feeds(inputs: dict, dims: dict, rng: np.random.Generator | None = None,
                 id_range: int = 11) -> dict[str, np.ndarray]:
    """Random arrays for ``inputs`` (name -> (dtype, shape list)) with the
    symbolic dims of ``dims``: standard normal floats, integer ids in [0, id_range)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    feeds = {}
    for name, (dt, shape) in inputs.items():
        concrete = [dims.get(d, d) for d in shape]
        if dt in ("int64", "int32"):
            feeds[name] = rng.integers(0, id_range, size=concrete).astype(dt)
        else:
            feeds[name] = rng.standard_normal(concrete).astype(dt)
    return feeds


def layer_parity(kind: str, args: dict, inputs: dict, *, opset: int = 17, outputs: dict | None = None,
                 dims: dict | None = None, feeds: dict | None = None, tol: float = 1e-5,
                 rng: np.random.Generator | None = None, ports: dict | None = None,
                 spec_dims=("batch", "seq"), rtol: float | None = None,
                 shape: tuple | None = None) -> dict[str, float]:
    """The per-layer parity check: a one-layer spec (``single_layer_spec``)
    with random weights, run on ONNX Runtime, must match (1) the kind's numpy
    ``reference`` written from the math and (2) the ONNX reference evaluator, a
    second runtime, within ``tol`` (absolute and relative, as
    ``np.testing.assert_allclose``). ``outputs`` maps model outputs to
    ``l`` (the first port) or ``l.PORT``; the reference gets the feeds by the
    kind's input ports (all of them, by name, for a variadic kind; with
    ``ports``, port -> input name, as ``single_layer_spec``'s). ``spec_dims``:
    the spec's symbolic dims. ``rtol``: the relative part of the tolerance
    (default ``tol``; 0 makes it a pure max-abs bound). ``shape``: the shape
    every checked output must have.
    Returns the max abs differences {"reference": .., "onnx.reference": ..}."""
    from graphc.layers import LAYERS
    outputs = outputs or {"y": "l"}
    model, _, weights = compile_text(single_layer_spec(kind, args, inputs, dims=spec_dims, ports=ports,
                                                       outputs=outputs), weights="random", opset=opset)
    if feeds is None:
        feeds = random_feeds(inputs, dims or {"batch": 3, "seq": 4}, rng)
    got = ort_run(model, feeds)
    layer = LAYERS[kind]
    full_args = {p.name: args.get(p.name, p.default) for p in layer.params}
    local = {k[len("l."):]: v for k, v in weights.items()}
    if ports is not None:
        ref_inputs = {port: feeds[n] for port, n in ports.items()}
    else:
        ref_inputs = dict(feeds) if getattr(layer, "variadic", False) else \
            {p.name: feeds[n] for p, n in zip(layer.inputs, inputs)}
    rtol = tol if rtol is None else rtol
    want = layer.reference(full_args, local, ref_inputs)
    second = ref_run(model, feeds)
    diffs = {"reference": 0.0, "onnx.reference": 0.0}
    for out_name, key in outputs.items():
        port = key.split(".", 1)[1] if "." in key else layer.outputs[0].name
        assert shape is None or got[out_name].shape == tuple(shape), (out_name, got[out_name].shape, shape)
        np.testing.assert_allclose(got[out_name], want[port], rtol=rtol, atol=tol, err_msg=f"{kind} {out_name} vs reference")
        np.testing.assert_allclose(got[out_name], second[out_name], rtol=rtol, atol=tol,
                                   err_msg=f"{kind} {out_name} vs onnx.reference")
        diffs["reference"] = max(diffs["reference"], _max_abs(got[out_name], want[port]))
        diffs["onnx.reference"] = max(diffs["onnx.reference"], _max_abs(got[out_name], second[out_name]))
    return diffs


def _max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# ---------------------------------------------------------------- user errors (one checker)

def user_error(source, message, *, at: str | None = None, hint: str | None = None,
               located=None, where: str | None = None, usage: bool = False):
    """Check that graphc refuses something as a *user* error, and return the error.

    ``source`` is one of: spec text (compiled with ``compile_text``), a
    callable (called), the ``(rc, stdout, stderr)`` of ``cli(...)`` or the
    CompletedProcess of ``graphc_cli(...)``. ``message``: a text, or a tuple
    of texts that must all appear. In
    process: a GraphcError (not any other exception) whose message holds
    ``message``; with ``at``, its span is on the first line of the spec text
    that contains ``at``. Through the CLI: exit code 2, no traceback and no
    "internal error", the
    first stderr line ``located:LINE:COL: error: ...`` (``located`` given: the
    file, a str or Path) or ``graphc: error: ...`` (not located), ``message``
    in stderr; ``where`` ('LINE:COL', with ``located``): the exact place.
    ``usage``: a command-line error refused by argparse instead: ``usage:
    graphc ...`` first, then one ``graphc COMMAND: error: ...`` line, last.
    ``hint``: text the hint must hold. Returns the GraphcError, or stderr."""
    from graphc.errors import GraphcError
    messages = (message,) if isinstance(message, str) else tuple(message)
    assert messages, "user_error needs a message to look for"
    if located is not None:
        located = str(located)
    if isinstance(source, subprocess.CompletedProcess):
        source = (source.returncode, source.stdout, source.stderr)
    if isinstance(source, tuple):
        rc, _, err = source
        assert rc == 2, err
        assert "Traceback" not in err and "internal error" not in err, err
        first = (err.splitlines() or [""])[0]
        if usage:
            assert located is None and where is None, "an argparse error has no location"
            last = err.splitlines()[-1]
            assert first.startswith("usage: graphc"), first
            assert last.startswith("graphc") and ": error: " in last, last
        elif located is not None:
            assert first.startswith(f"{located}:") and ": error: " in first, first
            _, line, col = first.split(": error: ")[0].rsplit(":", 2)
            assert int(line) >= 1 and int(col) >= 1, first
            assert where is None or first.startswith(f"{located}:{where}: error: "), first
        else:
            assert where is None, "where needs located"
            assert first.startswith("graphc: error: "), first
        for m in messages:
            assert m in err, (m, err)
        assert hint is None or hint in err, err
        return err
    run = source if callable(source) else (lambda: compile_text(source))
    try:
        run()
    except GraphcError as exc:
        error = exc
    else:
        raise AssertionError(f"expected a user error containing {messages!r}; nothing was refused")
    for m in messages:
        assert m in error.message, (m, error.message)
    assert hint is None or (error.hint and hint in error.hint), error.hint
    if at is not None:
        assert isinstance(source, str) and error.span is not None, "no spec location"
        want = next(i for i, line in enumerate(source.splitlines(), 1) if at in line)
        assert error.span.line == want, (error.span, want, source.splitlines()[error.span.line - 1])
    return error
