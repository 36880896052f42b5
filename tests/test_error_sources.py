"""graphc.errors remembers the texts of the specs it read so a diagnostic can
quote the offending line after the file changed or vanished; a long-running
process compiling spec after spec must not keep every text it ever read."""
from __future__ import annotations

import numpy as np

from graphc import errors
from graphc.compiler import check_spec, compile_spec
from graphc.errors import GraphcError
from graphc.specfile.includes import MAX_INCLUDED_FILES
from helpers import ort_run

SPEC = """graphc: 1
dims: [batch]
inputs: {{x: {{dtype: float32, shape: [batch, 4]}}}}
layers:
  - {{name: fc, kind: linear, input: x, out_features: {n}}}
outputs: {{y: fc}}
"""

LIB = """graphc: 1
blocks:
  twice:
    inputs: {x: {}}
    layers:
      - {name: fc, kind: linear, input: x, out_featurs: 4}
    outputs: {y: fc}
"""

MODEL = """graphc: 1
include: [lib.yaml]
dims: [batch]
inputs: {x: {dtype: float32, shape: [batch, 4]}}
layers:
  - {name: t, kind: twice, input: x}
outputs: {y: t}
"""


def test_one_compile_fits_in_the_bound():
    # the spec plus every file it may include, with room for the previous compile's
    assert errors.MAX_REMEMBERED_SOURCES > MAX_INCLUDED_FILES + 1


def test_many_specs_keep_the_cache_bounded_and_errors_still_quote_their_line(tmp_path, monkeypatch):
    monkeypatch.setattr(errors, "MAX_REMEMBERED_SOURCES", 8, raising=False)
    monkeypatch.setattr(errors, "_SOURCES", type(errors._SOURCES)())
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for n in range(1, 41):
        spec = tmp_path / f"m{n}.yaml"
        spec.write_text(SPEC.format(n=n))
        if n % 10 == 0:          # a full compile now and then, run against numpy
            w = np.full((n, 4), 0.5, np.float32)
            b = np.arange(n, dtype=np.float32)
            y = ort_run(compile_spec(spec, {"fc.weight": w, "fc.bias": b}).to_bytes(), {"x": x})["y"]
            np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-6)
        else:
            check_spec(spec)
        assert len(errors._SOURCES) <= 8
    assert str(tmp_path / "m40.yaml") in errors._SOURCES        # the most recent are kept
    assert str(tmp_path / "m1.yaml") not in errors._SOURCES

    # an error in an included file: quoted from memory even once both files are gone
    (tmp_path / "lib.yaml").write_text(LIB)
    (tmp_path / "model.yaml").write_text(MODEL)
    try:
        compile_spec(tmp_path / "model.yaml")
    except GraphcError as e:
        error = e
    else:
        raise AssertionError("the misspelt parameter was accepted")
    (tmp_path / "lib.yaml").unlink()
    (tmp_path / "model.yaml").unlink()
    text = error.render()
    assert error.span is not None and error.span.path.endswith("lib.yaml") and error.span.line == 6, text
    assert "out_featurs: 4" in text, text
    assert len(errors._SOURCES) <= 8
