"""Compiled.save refuses, like `graphc build` (check_output_path), to write over
the spec it was compiled from, a file that spec includes, or its weights:
GraphcError, and nothing written."""
from __future__ import annotations

import re

import numpy as np
import pytest

from graphc.compiler import compile_spec
from graphc.errors import GraphcError
from helpers import ort_run

LIB = """graphc: 1
blocks:
  fc:
    inputs: {x: {}}
    layers:
      - {name: fc, kind: linear, input: x, out_features: 3}
    outputs: {y: fc}
"""

MODEL = """graphc: 1
include: [lib.yaml]
dims: [batch]
inputs: {x: {dtype: float32, shape: [batch, 4]}}
layers:
  - {name: m, kind: fc, input: x}
outputs: {y: m}
"""


def test_save_refuses_its_own_inputs_and_writes_elsewhere(tmp_path):
    (tmp_path / "lib.yaml").write_text(LIB)
    spec = tmp_path / "model.yaml"
    spec.write_text(MODEL)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    weights = tmp_path / "w.npz"
    np.savez(weights, **{"m.fc.weight": w, "m.fc.bias": b})
    for keep in (True, False):
        compiled = compile_spec(spec, weights, keep_weights=keep)
        for victim in (spec, tmp_path / "lib.yaml", weights):
            before = victim.read_bytes()
            with pytest.raises(GraphcError, match=re.escape(f"refusing to write the output over the input {victim}")):
                compiled.save(victim)
            assert victim.read_bytes() == before
            assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["lib.yaml", "model.yaml", "w.npz"]
        out = tmp_path / "out" / "m.onnx"
        out.parent.mkdir(exist_ok=True)
        assert compiled.save(out) == out.stat().st_size
        x = rng.standard_normal((2, 4)).astype(np.float32)
        np.testing.assert_allclose(ort_run(out.read_bytes(), {"x": x})["y"], x @ w.T + b, rtol=1e-5, atol=1e-6)


def test_save_of_a_compile_from_arrays_checks_the_spec_only(tmp_path):
    (tmp_path / "lib.yaml").write_text(LIB)
    spec = tmp_path / "model.yaml"
    spec.write_text(MODEL)
    compiled = compile_spec(spec, {"m.fc.weight": np.zeros((3, 4), np.float32),
                                   "m.fc.bias": np.zeros(3, np.float32)})
    with pytest.raises(GraphcError, match="refusing to write the output over the input"):
        compiled.save(tmp_path / "lib.yaml")
    assert (tmp_path / "lib.yaml").read_text() == LIB
    compiled.save(tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").stat().st_size > 0
