"""repeat with 'first:': copy 0 takes other arguments (its own input width, no
bias, another block parameter), checked against torch modules whose
state_dicts load without a map; bad uses refused at their place."""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import cli, compile_text, ort_run, user_error

SPEC = """graphc: 1
dims: {batch: 2}
inputs:
  x: {dtype: float32, shape: [batch, 8]}
blocks:
  ffn:
    params: {d_ff: 6, d: 16}
    inputs: [x]
    layers:
      - {name: fc1, kind: linear, input: x, out_features: d_ff}
      - {name: act, kind: relu, input: fc1}
      - {name: fc2, kind: linear, input: act, out_features: d}
    outputs: {y: fc2}
layers:
  - {name: mlp, kind: linear, input: x, out_features: 16, repeat: 3, first: {bias: false}}
  - {name: ff, kind: ffn, input: mlp, repeat: 2, first: {d_ff: 5}}
outputs: {y: ff}
"""


def test_first_copy_differs_and_a_torch_state_dict_loads(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    nn = torch.nn
    torch.manual_seed(0)

    def ffn(d_ff):
        m = nn.Module()
        m.fc1, m.fc2 = nn.Linear(16, d_ff), nn.Linear(d_ff, 16)
        return m

    mlp = nn.Sequential(nn.Linear(8, 16, bias=False), nn.Linear(16, 16), nn.Linear(16, 16))
    ff = nn.ModuleList([ffn(5), ffn(6)])
    state = {**{f"mlp.{k}": v for k, v in mlp.state_dict().items()},
             **{f"ff.{k}": v for k, v in ff.state_dict().items()}}
    save_file(state, str(tmp_path / "w.safetensors"))
    (spec := tmp_path / "s.yaml").write_text(SPEC)
    rc, _, err = cli("build", spec, "--weights", tmp_path / "w.safetensors", "-o", tmp_path / "m.onnx")
    assert rc == 0, err
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    got = ort_run((tmp_path / "m.onnx").read_bytes(), {"x": x})["y"]
    with torch.no_grad():
        h = mlp(torch.from_numpy(x))
        for m in ff:
            h = m.fc2(torch.relu(m.fc1(h)))
    np.testing.assert_allclose(got, h.numpy(), atol=1e-5)


def test_without_first_the_copies_are_alike():
    _, g, w = compile_text(SPEC.replace(", first: {d_ff: 5}", ""), weights="random")
    assert w["ff.0.fc1.weight"].shape == w["ff.1.fc1.weight"].shape == (6, 16)
    assert "mlp.0.bias" not in w and "mlp.1.bias" in w


@pytest.mark.parametrize("old, new, message, at", [
    ("repeat: 2, first: {d_ff: 5}", "first: {d_ff: 5}", "has 'first' but no 'repeat'", "name: ff,"),
    ("first: {d_ff: 5}", "first: [5]", "'first' (arguments for copy 0) must be a mapping", "name: ff,"),
    ("first: {d_ff: 5}", "first: {d_fff: 5}", "has no parameter 'd_fff'", "name: ff,"),
    ("first: {bias: false}", "first: {out_features: 0}", "must be at least 1", "name: mlp,"),
    ("first: {bias: false}", "first: {input: x}", "not 'input'", "name: mlp,"),
    ("first: {bias: false}", "first: {biass: false}", "unknown argument 'biass'", "name: mlp,"),
    ("first: {bias: false}", "first: {out_features: 12}", "repeat", "name: mlp,"),
])
def test_bad_first_is_located(old, new, message, at):
    text = SPEC.replace(old, new)
    assert text != SPEC
    user_error(text, message, at=at)
