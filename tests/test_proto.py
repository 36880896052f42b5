"""graphc.lower.proto against onnx itself: the same messages, byte for byte,
from graphc's helpers as from onnx.helper / onnx.numpy_helper (the oracle),
and a build that never imports onnx (or ml_dtypes) yet writes what onnx reads."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphc.lower import proto
from graphc.lower.model import MAX_OPSET, MIN_OPSET
from graphc.lower.ops_core import ONNX_DTYPE

ROOT = Path(__file__).resolve().parent.parent


def _bytes(m) -> bytes:
    return m.SerializeToString(deterministic=True)


def test_classes_are_onnx_own():
    assert proto.ModelProto is onnx.ModelProto
    assert proto.TensorProto is onnx.TensorProto
    assert proto.NodeProto is onnx.NodeProto


def _graph():
    return helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "g", [],
                             [helper.make_tensor_value_info("b", 1, None)])


ATTRS = [
    dict(axis=1), dict(axis=np.int64(-1)), dict(keepdims=True), dict(alpha=0.5), dict(alpha=np.float32(1e-5)),
    dict(mode="constant"), dict(mode=b"edge"), dict(perm=[0, 2, 1, 3]), dict(perm=(np.int64(1), 0)),
    dict(scales=[1.0, 2.5]), dict(names=["a", "b"]), dict(value=helper.make_tensor("v", 1, [1], [0.0])),
    dict(then_branch=_graph(), else_branch=_graph()), dict(body=[_graph(), _graph()]),
    dict(axis=0, unused=None, to=onnx.TensorProto.FLOAT), {},
]


@pytest.mark.parametrize("attrs", ATTRS, ids=[",".join(a) or "none" for a in ATTRS])
@pytest.mark.parametrize("domain", [None, "", "com.microsoft"])
def test_make_node(attrs, domain):
    ours = proto.make_node("Op", ["x", ""], ["y"], name="n", domain=domain, **attrs)
    theirs = helper.make_node("Op", ["x", ""], ["y"], name="n", domain=domain, **attrs)
    assert _bytes(ours) == _bytes(theirs)


def test_make_node_refuses_what_onnx_refuses():
    for bad in ([], [1, "a"], object()):
        with pytest.raises((ValueError, TypeError)):
            helper.make_node("Op", [], [], a=bad)
        with pytest.raises((ValueError, TypeError)):
            proto.make_node("Op", [], [], a=bad)


@pytest.mark.parametrize("dtype", sorted(set(ONNX_DTYPE.values())))
@pytest.mark.parametrize("vals", [[0], [1], [3, 0, 1, 2]])
def test_make_tensor_every_emitted_dtype(dtype, vals):
    dims = [len(vals)] if len(vals) > 1 else [1]
    assert _bytes(proto.make_tensor("value", dtype, dims, vals)) == \
        _bytes(helper.make_tensor("value", dtype, dims, vals))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64, np.int32, np.int8,
                                   np.uint8, np.bool_, np.int16, np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3)])
def test_from_array(dtype, shape):
    a = (np.arange(int(np.prod(shape)), dtype=np.int64) % 3).astype(dtype).reshape(shape)
    assert _bytes(proto.from_array(a, "c")) == _bytes(numpy_helper.from_array(a, "c"))
    assert proto.np_dtype_to_tensor_dtype(a.dtype) == helper.np_dtype_to_tensor_dtype(a.dtype)
    if a.dtype.itemsize > 1:          # onnx refuses a non-native byte order outright; so does graphc
        big = a.astype(a.dtype.newbyteorder(">"))
        for fn in (proto.from_array, numpy_helper.from_array):
            with pytest.raises(ValueError):
                fn(big, "c")


@pytest.mark.parametrize("shape", [None, [], [2, "batch", None], ["s+1"]])
def test_value_info(shape):
    assert _bytes(proto.make_tensor_value_info("x", 10, shape)) == \
        _bytes(helper.make_tensor_value_info("x", 10, shape))


def test_graph_opset_ir_and_props():
    n = [helper.make_node("Relu", ["a"], ["b"])]
    i = [helper.make_tensor_value_info("a", 1, [2])]
    o = [helper.make_tensor_value_info("b", 1, [2])]
    init = [numpy_helper.from_array(np.ones(2, np.float32), "w")]
    assert _bytes(proto.make_graph(n, "g", i, o, init)) == _bytes(helper.make_graph(n, "g", i, o, init))
    for opset in range(MIN_OPSET, MAX_OPSET + 1):
        for extra in ([], [("com.microsoft", 1)]):
            ids = [("", opset)] + extra
            assert proto.find_min_ir_version_for([proto.make_opsetid(*x) for x in ids]) == \
                helper.find_min_ir_version_for([helper.make_opsetid(*x) for x in ids], ignore_unknown=True)
            assert _bytes(proto.make_opsetid(*ids[-1])) == _bytes(helper.make_opsetid(*ids[-1]))
    a, b = onnx.ModelProto(), onnx.ModelProto()
    proto.set_model_props(a, {"k": "v", "a": "b"})
    helper.set_model_props(b, {"k": "v", "a": "b"})
    assert _bytes(a) == _bytes(b)


def test_build_never_imports_onnx(tmp_path):
    """A fresh process builds a model without onnx or ml_dtypes in sys.modules;
    onnx imported afterwards shares graphc's classes and accepts the file."""
    out = tmp_path / "m.onnx"
    script = textwrap.dedent(f"""
        import sys
        from graphc.cli import main
        code = main(["build", {str(ROOT / 'specs' / 'mha.yaml')!r}, "-o", {str(out)!r}])
        assert code == 0, code
        print("onnx" in sys.modules, "ml_dtypes" in sys.modules, "onnxruntime" in sys.modules)
        from graphc.lower import proto
        import onnx
        print(onnx.ModelProto is proto.ModelProto)
        onnx.checker.check_model(onnx.load({str(out)!r}), full_check=True)
        from onnx import onnx_ml_pb2
        print(onnx_ml_pb2.ModelProto is proto.ModelProto)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-5:] == ["False", "False", "False", "True", "True"], r.stdout
