"""Layer names with dotted and numeric segments (block.0.layer.1): a torch
module's state_dict loads without a weight map, references read the longest
layer name then an output, and ambiguous or malformed names are refused."""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import cli, compile_text, ort_run, user_error

SPEC = """graphc: 1
dims: {batch: 2, seq: 3}
inputs:
  x: {dtype: float32, shape: [batch, seq, 4]}
blocks:
  t5ish:
    inputs: [x]
    layers:
      - {name: layer.0, kind: linear, input: x, out_features: 4}
      - {name: layer.1, kind: layer_norm, input: layer.0}
    outputs: {y: layer.1}
layers:
  - {name: block.0, kind: t5ish, input: x}
  - {name: block.1, kind: t5ish, input: block.0}
  - {name: rnn.0, kind: gru, input: block.1, hidden_size: 3, batch_first: true}
outputs: {y: rnn.0, h: rnn.0.h_n}
"""


def test_a_torch_state_dict_with_numeric_segments_loads_without_a_map(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    nn = torch.nn
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.ModuleList([nn.Linear(4, 4), nn.LayerNorm(4)])

        def forward(self, x):
            return self.layer[1](self.layer[0](x))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.ModuleList([Block(), Block()])
            self.rnn = nn.ModuleList([nn.GRU(4, 3, batch_first=True)])

        def forward(self, x):
            return self.rnn[0](self.block[1](self.block[0](x)))

    m = Model().eval()
    with torch.no_grad():                    # LayerNorm's ones/zeros would hide a mix-up
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_file(m.state_dict(), str(tmp_path / "w.safetensors"))
    (spec := tmp_path / "s.yaml").write_text(SPEC)
    rc, _, err = cli("build", spec, "--weights", tmp_path / "w.safetensors", "-o", tmp_path / "m.onnx")
    assert rc == 0, err
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    got = ort_run((tmp_path / "m.onnx").read_bytes(), {"x": x})
    with torch.no_grad():
        y, h = m(torch.from_numpy(x))
    np.testing.assert_allclose(got["y"], y.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["h"], h.numpy(), atol=1e-5)
    rc, out, _ = cli("params", spec)
    assert rc == 0 and "block.0.layer.1.weight" in out and "rnn.0.weight_ih_l0" in out


def test_the_layer_picture_keeps_dotted_layers_apart(tmp_path):
    (spec := tmp_path / "s.yaml").write_text(SPEC)
    rc, out, err = cli("check", spec)
    assert rc == 0, err
    assert "block.0" in out and "block.1" in out


@pytest.mark.parametrize("old, new, message, at", [
    ("name: rnn.0,", "name: block,", "extends layer name 'block'", "kind: gru"),
    ("name: block.1,", "name: block.0.x,", "extends layer name 'block.0'", "name: block.0.x"),
    ("name: rnn.0,", "name: 0.rnn,", "must start with a letter", "name: 0.rnn"),
    ("name: rnn.0,", "name: rnn..0,", "a layer name", "name: rnn..0"),
    ("name: rnn.0,", "name: rnn.0a,", "a layer name", "name: rnn.0a"),
    ("h: rnn.0.h_n", "h: rnn.0.hn", "has no output 'hn'", "h: rnn.0.hn"),
    ("h: rnn.0.h_n", "h: rnn.1", "unknown name 'rnn'", "h: rnn.1"),
])
def test_bad_names_are_located(old, new, message, at):
    text = SPEC.replace(old, new)
    if "block.0.x" in new:
        text = text.replace("input: block.0}", "input: block.0.x}").replace("block.1", "block.0.x")
    if new == "name: block,":
        text = text.replace("rnn.0", "block").replace("{y: block, h: block.h_n}", "{y: block}")
    user_error(text, message, at=at)
