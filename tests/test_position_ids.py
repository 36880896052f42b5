"""sinusoidal_pe and learned_pe with an explicit position_ids input: each token
is encoded at its given position (left-padded rows at cumsum(mask) - 1) instead
of 0..seq-1. ORT and the ONNX reference evaluator against numpy from the
formula (PE(pos, 2i) = sin(pos / 10000^(2i/d)), cos on odd channels; a learned
table's row pos)."""
import numpy as np
import pytest

from graphc.layers import LAYERS
from helpers import compile_text, ort_run, ref_run, single_layer_spec

POS = np.array([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]], np.int64)      # row 0 left-padded by 2


def _paper_pe(pos, d):
    i = np.arange(d) // 2
    angle = pos[..., None].astype(np.float64) / 10000.0 ** (2.0 * i / d)
    return np.where(np.arange(d) % 2 == 0, np.sin(angle), np.cos(angle))


@pytest.mark.parametrize("kind", ["sinusoidal_pe", "learned_pe"])
def test_position_ids_port(kind):
    text = single_layer_spec(kind, {"max_len": 16}, {"x": ("float32", ["batch", "seq", 8]),
                                                     "p": ("int64", ["batch", "seq"])},
                             ports={"x": "x", "position_ids": "p"})
    model, g, weights = compile_text(text, "random")
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    if kind == "sinusoidal_pe":
        want = x + _paper_pe(POS, 8)
    else:
        want = x + weights["l.weight"][POS]
    for run in (ort_run, ref_run):
        np.testing.assert_allclose(run(model, {"x": x, "p": POS})["y"], want, rtol=1e-6, atol=1e-6)
    args = {p.name: p.default for p in LAYERS[kind].params} | {"max_len": 16}
    ref = LAYERS[kind].reference(args, {"weight": weights["l.weight"]} if weights else {}, {"x": x, "position_ids": POS})
    np.testing.assert_allclose(ref["y"], want, rtol=1e-6, atol=1e-6)


def test_position_ids_must_match_the_input():
    from graphc.errors import GraphcError
    text = single_layer_spec("sinusoidal_pe", {}, {"x": ("float32", ["batch", "seq", 8]), "p": ("int64", ["batch"])},
                             ports={"x": "x", "position_ids": "p"})
    with pytest.raises(GraphcError, match=r"position_ids must be int64 \[batch, seq\]"):
        compile_text(text)
