"""Shared test helpers: compile spec text, run it on ORT and on the ONNX reference evaluator."""
from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from graphc.build import build_graph
from graphc.lower import check_model, lower, serialize
from graphc.pipeline import Options, run_passes
from graphc.spec import parse_spec_text

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


def graphc_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphc", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=120)


def cli(*args) -> tuple[int, str, str]:
    """graphc's entry point in-process (a subprocess costs a second of imports):
    (exit code, stdout, stderr); argparse's SystemExit becomes its code."""
    from graphc.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()
