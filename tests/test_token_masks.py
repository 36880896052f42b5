"""padding_mask: (ids == pad), or its negation with polarity keep; ORT and the
ONNX reference evaluator against numpy written from the formula, and against
the layer's own reference()."""
import numpy as np
import pytest

from graphc.layers import LAYERS
from helpers import compile_text, ort_run, ref_run, single_layer_spec


@pytest.mark.parametrize("dtype", ["int64", "int32"])
@pytest.mark.parametrize("polarity", ["masked", "keep"])
def test_padding_mask(dtype, polarity):
    text = single_layer_spec("padding_mask", {"pad": 3, "polarity": polarity}, {"ids": (dtype, ["batch", "seq"])})
    model, _, _ = compile_text(text)
    ids = np.array([[5, 3, 3], [3, 7, 0]], dtype)
    want = (ids == 3) if polarity == "masked" else (ids != 3)
    for run in (ort_run, ref_run):
        got = run(model, {"ids": ids})["y"]
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, want)
    ref = LAYERS["padding_mask"].reference({"pad": 3, "polarity": polarity}, {}, {"ids": ids})["y"]
    np.testing.assert_array_equal(ref, want)


def test_padding_mask_needs_integer_ids():
    from graphc.errors import GraphcError
    text = single_layer_spec("padding_mask", {"pad": 0}, {"ids": ("float32", ["batch", "seq"])})
    with pytest.raises(GraphcError, match="needs integer token ids"):
        compile_text(text)
