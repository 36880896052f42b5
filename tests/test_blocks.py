"""Blocks, repeat and includes: a model built from small layers equals the
high-level layer (same parameter names, same numbers); optional block inputs;
includes resolve relative to the including file."""
import numpy as np

from graphc.compiler import check_spec, compile_spec
from helpers import SPECS, ort_run, user_error

RNG = np.random.default_rng(11)


def test_blocks_and_high_level_layer_give_same_names_and_numbers():
    _, g_blocks = check_spec(SPECS / "encoder_from_blocks.yaml")
    _, g_high = check_spec(SPECS / "transformer_encoder.yaml")
    names = [(p.name, p.type.concrete_shape()) for p in g_blocks.params()]
    assert names == [(p.name, p.type.concrete_shape()) for p in g_high.params()]
    assert "encoder.layers.5.norm2.bias" in dict(names)
    weights = {n: (RNG.standard_normal(s) * 0.05).astype(np.float32) for n, s in names}
    x = RNG.standard_normal((2, 5, 512)).astype(np.float32)
    kpm = np.zeros((2, 5), bool)
    kpm[1, 3:] = True
    a = ort_run(compile_spec(SPECS / "encoder_from_blocks.yaml", dict(weights)).to_bytes(),
                {"src": x, "src_key_padding_mask": kpm})["memory"]
    b = ort_run(compile_spec(SPECS / "transformer_encoder.yaml", dict(weights)).to_bytes(),
                {"src": x, "src_key_padding_mask": kpm})["memory"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


BLOCK_LIB = """
graphc: 1
blocks:
  mlp:
    params: {hidden: null, out: 4}
    inputs: {x: {}, gate: {optional: true}}
    layers:
      - {name: fc1, kind: linear, input: x, out_features: hidden}
      - {name: act, kind: relu, input: fc1}
      - {name: fc2, kind: linear, input: act, out_features: out}
    outputs: {y: fc2}
"""


def test_include_repeat_and_optional_inputs(tmp_path):
    _write(tmp_path, "lib/blocks.yaml", BLOCK_LIB)
    spec = _write(tmp_path, "model.yaml", """
graphc: 1
include: [lib/blocks.yaml]
dims: [batch]
inputs: {x: {dtype: float32, shape: [batch, 4]}}
layers:
  - {name: stack, kind: mlp, input: x, hidden: 8, repeat: 3}
outputs: {y: stack}
""")
    _, g = check_spec(spec)
    names = [p.name for p in g.params()]
    assert names[:2] == ["stack.0.fc1.weight", "stack.0.fc1.bias"] and "stack.2.fc2.bias" in names
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    out = ort_run(compile_spec(spec).to_bytes(), {"x": x})["y"]
    assert out.shape == (3, 4)


def test_block_parameter_errors_are_located(tmp_path):
    _write(tmp_path, "lib/blocks.yaml", BLOCK_LIB)
    spec = _write(tmp_path, "model.yaml", """graphc: 1
include: [lib/blocks.yaml]
dims: [batch]
inputs: {x: {dtype: float32, shape: [batch, 4]}}
layers:
  - {name: m, kind: mlp, input: x, hiden: 8}
outputs: {y: m}
""")
    error = user_error(lambda: check_spec(spec), "has no parameter 'hiden'")
    assert error.span.line == 6
    assert "did you mean 'hidden'" in error.render()
    spec.write_text(spec.read_text().replace(", hiden: 8", ""))
    user_error(lambda: check_spec(spec), "needs parameter 'hidden'")


def test_unconnected_optional_block_input_into_required_port_is_an_error(tmp_path):
    spec = _write(tmp_path, "m.yaml", """graphc: 1
dims: [batch]
inputs: {x: {dtype: float32, shape: [batch, 4]}}
blocks:
  b:
    inputs: {x: {}, extra: {optional: true}}
    layers:
      - {name: s, kind: add, inputs: [x, extra]}
    outputs: {y: s}
layers:
  - {name: l, kind: b, input: x}
outputs: {y: l}
""")
    assert user_error(lambda: check_spec(spec), "needs input 'b'").span.line == 8
