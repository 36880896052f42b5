"""relative_position_bias (T5) and scale: the bucket function against
transformers' own, the layer on ONNX Runtime against the numpy math, at
run-time lengths other than the compiled example, encoder (bidirectional) and
decoder (causal) buckets, query and key of different lengths."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.layers.relative_bias import relative_buckets
from tests.helpers import cli, compile_text, ort_run, user_error

SPEC = """graphc: 1
dims: {batch: 2, q: 5, k: 7}
inputs:
  a: {dtype: float32, shape: [batch, q, 8]}
  b: {dtype: float32, shape: [batch, k, 8]}
layers:
  - {name: bias, kind: relative_position_bias, inputs: {query: a, key: b}, heads: 3, bidirectional: %s,
     num_buckets: %d, max_distance: %d, max_len: 64}
outputs: {y: bias}
"""


def _buckets_from_the_paper(r: int, bidirectional: bool, n: int, max_distance: int) -> int:
    """T5's bucket of one distance r = key - query, written from the definition."""
    import math
    out = 0
    if bidirectional:
        n //= 2
        out = n if r > 0 else 0
        r = abs(r)
    else:
        r = max(-r, 0)
    exact = n // 2
    if r < exact:
        return out + r
    large = exact + int(math.log(r / exact) / math.log(max_distance / exact) * (n - exact))
    return out + min(large, n - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("n, max_distance", [(32, 128), (8, 20)])
def test_buckets(bidirectional, n, max_distance):
    rel = np.arange(-300, 300)
    got = relative_buckets(rel, bidirectional, n, max_distance)
    want = [_buckets_from_the_paper(int(r), bidirectional, n, max_distance) for r in rel]
    # float32 (transformers' precision) and float64 (this oracle) may disagree only on a boundary
    assert (got != np.array(want)).sum() <= 2
    torch = pytest.importorskip("torch")
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    exact = t5.T5Attention._relative_position_bucket(torch.from_numpy(rel), bidirectional=bidirectional,
                                                     num_buckets=n, max_distance=max_distance).numpy()
    assert np.array_equal(got, exact)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("q, k", [(5, 7), (9, 3), (1, 40)])
def test_layer_matches_the_math(bidirectional, q, k):
    model, g, used = compile_text(SPEC % (str(bidirectional).lower(), 8, 20), weights="random")
    a = np.zeros((2, q, 8), np.float32)
    b = np.zeros((2, k, 8), np.float32)
    got = ort_run(model, {"a": a, "b": b})["y"]
    w = used["bias.weight"]                                   # [num_buckets, heads]
    want = np.empty((1, 3, q, k), np.float32)
    for i in range(q):
        for j in range(k):
            want[0, :, i, j] = w[_buckets_from_the_paper(j - i, bidirectional, 8, 20)]
    assert got.shape == (1, 3, q, k)
    assert np.array_equal(got, want)


def test_longer_than_max_len_is_refused(tmp_path):
    (spec := tmp_path / "s.yaml").write_text((SPEC % ("true", 8, 20)).replace("[batch, q, 8]", "[batch, 65, 8]"))
    user_error(cli("check", spec), "query has 65 positions, more than max_len 64", located=str(spec))


def test_scale():
    text = """graphc: 1
dims: {batch: 2}
inputs: {x: {dtype: float32, shape: [batch, 4]}}
layers: [{name: s, kind: scale, input: x, factor: 0.125}]
outputs: {y: s}
"""
    model, _, _ = compile_text(text)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(ort_run(model, {"x": x})["y"], x * np.float32(0.125))
