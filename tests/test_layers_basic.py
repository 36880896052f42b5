"""Per-layer parity: ONNX Runtime output of each basic layer kind against the
layer's numpy reference (written from the math), and ORT against the ONNX
reference evaluator. Tolerances: 1e-5 absolute in float32."""
import numpy as np
import pytest

from helpers import compile_text, layer_parity, ort_run, single_layer_spec

RNG = np.random.default_rng(0)
F = "float32"

CASES = [
    ("linear", {"out_features": 7}, {"x": (F, ["batch", "seq", 5])}),
    ("linear", {"out_features": 7, "bias": False, "in_features": 5}, {"x": (F, ["batch", 5])}),
    ("embedding", {"num_embeddings": 11, "embedding_dim": 6}, {"ids": ("int64", ["batch", "seq"])}),
    ("embedding", {"num_embeddings": 11, "embedding_dim": 6, "scale": True}, {"ids": ("int64", ["batch", "seq"])}),
    ("layer_norm", {}, {"x": (F, ["batch", "seq", 8])}),
    ("layer_norm", {"eps": 1e-3, "bias": False}, {"x": (F, ["batch", 8])}),
    ("rms_norm", {}, {"x": (F, ["batch", "seq", 8])}),
    ("relu", {}, {"x": (F, ["batch", 9])}),
    ("gelu", {}, {"x": (F, ["batch", 9])}),
    ("gelu", {"approximate": "tanh"}, {"x": (F, ["batch", 9])}),
    ("tanh", {}, {"x": (F, ["batch", 9])}),
    ("sigmoid", {}, {"x": (F, ["batch", 9])}),
    ("silu", {}, {"x": (F, ["batch", 9])}),
    ("softmax", {}, {"x": (F, ["batch", 9])}),
    ("softmax", {"axis": 0}, {"x": (F, ["batch", 9])}),
    ("log_softmax", {}, {"x": (F, ["batch", 9])}),
    ("dropout", {"p": 0.3}, {"x": (F, ["batch", 9])}),
    ("add", {}, {"a": (F, ["batch", 4]), "b": (F, [4])}),
    ("mul", {}, {"a": (F, ["batch", 4]), "b": (F, ["batch", 4])}),
    ("matmul", {}, {"a": (F, ["batch", 3, 4]), "b": (F, [4, 5])}),
    ("matmul", {"transpose_b": True}, {"a": (F, ["batch", 3, 4]), "b": (F, ["batch", 6, 4])}),
    ("transpose", {"perm": [1, 0, 2]}, {"x": (F, ["batch", 3, 4])}),
    ("concat", {"axis": -1}, {"a": (F, ["batch", 3]), "b": (F, ["batch", 5])}),
    ("split", {"sizes": [2, 3]}, {"x": (F, ["batch", 5])}),
    ("slice", {"axis": 1, "start": 1, "end": 3}, {"x": (F, ["batch", 5])}),
]


@pytest.mark.parametrize("kind,args,inputs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("opset", [17, 23])
def test_layer_matches_numpy_reference(kind, args, inputs, opset):
    outputs = {"y": "l"} if kind != "split" else {"y0": "l.y0", "y1": "l.y1"}
    layer_parity(kind, args, inputs, opset=opset, outputs=outputs, rng=RNG)


def test_reshape_with_symbolic_dims_and_minus_one():
    text = """
graphc: 1
dims: [batch, seq]
params: {heads: 4, d: 12}
inputs: {x: {dtype: float32, shape: [batch, seq, d]}}
layers:
  - {name: split_heads, kind: reshape, input: x, shape: [batch, seq, heads, -1]}
  - {name: swap, kind: transpose, input: split_heads, perm: [0, 2, 1, 3]}
  - {name: back, kind: transpose, input: swap, perm: [0, 2, 1, 3]}
  - {name: merge, kind: reshape, input: back, shape: [batch, seq, heads * 3]}
outputs: {y: merge, h: split_heads}
"""
    model, g, _ = compile_text(text)
    assert str(g.value(g.outputs["h"]).type) == "float32[batch, seq, 4, 3]"
    x = RNG.standard_normal((2, 5, 12)).astype(np.float32)
    out = ort_run(model, {"x": x})
    np.testing.assert_array_equal(out["y"], x)
    np.testing.assert_array_equal(out["h"], x.reshape(2, 5, 4, 3))


@pytest.mark.parametrize("padding_idx", [0, 10])
def test_embedding_padding_idx_row_starts_at_zero(padding_idx):
    """torch's nn.Embedding(padding_idx=i) initialises row i to zeros; graphc's
    seeded init does the same, and only that row (the lookup of id i gives zeros)."""
    text = single_layer_spec("embedding", {"num_embeddings": 11, "embedding_dim": 6, "padding_idx": padding_idx},
                             {"ids": ("int64", ["batch", "seq"])})
    model, _, _ = compile_text(text, seed=3)
    ids = np.array([[padding_idx, (padding_idx + 1) % 11]], np.int64)
    y = ort_run(model, {"ids": ids})["y"]
    np.testing.assert_array_equal(y[0, 0], np.zeros(6, np.float32))
    assert np.all(y[0, 1] != 0)
