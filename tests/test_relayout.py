"""Compile-time weight layouts (graphc.layers.relayout) against numpy's own
transpose and reshape: the banded copies must be exact, for any row count
(bands of 16 rows do not divide every shape) and for half precision."""
import numpy as np
import pytest

from graphc.layers.relayout import heads_from_rows, transposed


@pytest.mark.parametrize("shape", [(2048, 512), (512, 2048), (17, 5), (1, 7), (7, 1), (0, 3), (3, 0), (33, 64)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_transposed_is_exact(shape, dtype):
    w = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    t = transposed(w)
    assert t.flags["C_CONTIGUOUS"] and t.dtype == w.dtype and t.shape == shape[::-1]
    np.testing.assert_array_equal(t, w.T)


def test_transposed_reads_strided_views():
    w = np.random.default_rng(1).standard_normal((40, 30)).astype(np.float32)
    view = w[3:37:2, ::3]                       # a non-contiguous source
    np.testing.assert_array_equal(transposed(view), view.T)


def test_heads_from_rows_matches_reshape_and_scale():
    rng = np.random.default_rng(2)
    d, width = 8, 12
    q = rng.standard_normal((3 * d, width)).astype(np.float32)
    kv = rng.standard_normal((4 * d, width)).astype(np.float32)
    scale = 1 / np.sqrt(d)
    out = heads_from_rows([(q, scale), (kv, 1.0)], d)
    expect = np.concatenate([(q * np.float32(scale)).reshape(3, d, width).transpose(0, 2, 1),
                             kv.reshape(4, d, width).transpose(0, 2, 1)])
    assert out.shape == (7, width, d) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, expect)
    # the defining property: x @ out[h] is head h's slice of x @ rows.T
    x = rng.standard_normal((5, width)).astype(np.float32)
    np.testing.assert_allclose(x @ out[4], (x @ kv.T)[:, d:2 * d], rtol=1e-5, atol=1e-6)
