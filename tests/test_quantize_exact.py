"""int8 builds keep a `matmul` layer against a spec `constant` float: the
constant (an averaging or selection matrix) is meant to be exact, and quantizing
the product adds the activation's uint8 rounding to it. Recorded at expansion
(Graph.exact_products), since folding makes a constant look like any weight.

Oracle: the int8 model's own float input to the product, multiplied in numpy by
the constant written here; an exact float product agrees to float32 rounding
(rel 1e-6), a quantized one is off by the uint8 activation step (~1e-2)."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.compiler import compile_spec
from helpers import ort_run, user_error

SEL = np.zeros((8, 4), np.float32)
SEL[[0, 2, 4, 6], [0, 1, 2, 3]] = 1.0           # selection columns
SEL[:, 3] += 0.125                              # plus an average of all 8

SPEC = """graphc: 1
dims: {{batch: 3, seq: 5}}
inputs:
  x: {{dtype: float32, shape: [batch, seq, 16]}}
layers:
  - {{name: fc1, kind: linear, input: x, out_features: 8}}
  - {{name: act, kind: relu, input: fc1}}
  - {{name: mix, kind: constant, shape: {shape}, values: {values}}}
  - {{name: pool, kind: matmul, inputs: [act, mix]{transpose}}}
  - {{name: head, kind: linear, input: pool, out_features: 6}}
outputs: {{h: act, pooled: pool, y: head}}
quantize: {{head: true{extra}}}
"""


def _spec(tmp_path, transpose: bool, extra: str = ""):
    m = SEL.T if transpose else SEL
    p = tmp_path / "m.yaml"
    p.write_text(SPEC.format(shape=list(m.shape), values=[float(v) for v in m.ravel()],
                             transpose=", transpose_b: true" if transpose else "", extra=extra))
    return p


def _run(compiled):
    x = np.random.default_rng(5).standard_normal((3, 5, 16)).astype(np.float32)
    out = ort_run(compiled.to_bytes(), {"x": x})
    return out["h"], out["pooled"]


def _rel(a, b):
    return float(np.sqrt(((a - b) ** 2).sum() / (b ** 2).sum()))


@pytest.mark.parametrize("transpose", [False, True])
def test_matmul_against_a_spec_constant_stays_exact(tmp_path, transpose):
    compiled = compile_spec(_spec(tmp_path, transpose), quantize="int8")
    report = compiled.quantization.report
    assert report.quantized == ["fc1", "head"] and report.kept_exact == ["pool"] and report.kept_tied == []
    assert any("kept float (a matmul against a spec constant" in line and "pool" in line
               for line in compiled.quantization.summary())
    ops = [n.op_type for n in compiled.model.graph.node]
    assert ops.count("MatMulInteger") == 2
    h, pooled = _run(compiled)
    assert _rel(pooled, h @ SEL) < 1e-6


def test_an_include_pattern_opts_in_and_exclude_still_matches(tmp_path):
    transpose = False           # with transpose_b the constant is read through a run-time Transpose: no site
    compiled = compile_spec(_spec(tmp_path, transpose, ", include: [fc1, pool, head]"), quantize="int8")
    assert compiled.quantization.report.quantized == ["fc1", "pool", "head"]
    h, pooled = _run(compiled)
    assert 1e-4 < _rel(pooled, h @ SEL) < 0.05          # the oracle sees a quantized product
    # the documented workaround before this change still builds (the pattern matches a layer)
    compiled = compile_spec(_spec(tmp_path, transpose, ", exclude: [pool]"), quantize="int8")
    assert compiled.quantization.report.kept_excluded == ["pool"]


def test_a_matmul_against_a_parameter_is_still_quantized(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(SPEC.format(shape=[8, 4], values=[0.0] * 32, transpose="", extra="")
                 .replace("kind: constant, shape: [8, 4], values: " + str([0.0] * 32), "kind: parameter, shape: [8, 4]"))
    compiled = compile_spec(p, quantize="int8")
    assert compiled.quantization.report.quantized == ["fc1", "pool", "head"]


def test_only_exact_products_left_is_refused_with_the_way_in(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("""graphc: 1
dims: {batch: 2}
inputs: {x: {dtype: float32, shape: [batch, 2]}}
layers:
  - {name: mix, kind: constant, values: [1, 0, 0, 1], shape: [2, 2]}
  - {name: pool, kind: matmul, inputs: [x, mix]}
outputs: {y: pool}
""")
    user_error(lambda: compile_spec(p, quantize="int8"), "every quantizable layer of the model is kept float",
               hint="a matmul against a spec constant stays exact")
