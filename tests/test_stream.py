"""Streamed writing (graphc.lower.stream) and mapped weight files.

The oracle is onnx's own serialiser: a streamed file, parsed by onnx and
serialised again, must give exactly the bytes of the whole-proto route
(``lower`` + ``SerializeToString``); ONNX Runtime must give the same outputs.
"""
import io

import numpy as np
import onnx
import pytest

from graphc.compiler import check_spec, compile_spec
from graphc.lower import model as lower_model
from graphc.lower import serialize
from graphc.lower.stream import varint, write_model
from graphc.weight_files import load_weights
from helpers import SPECS, graphc_cli, ort_run, user_error


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**21, 2**35 + 5])
def test_varint_matches_protobufs_encoding(n):
    t = onnx.TensorProto()
    t.dims.append(n)                       # TensorProto.dims = field 1, a varint
    assert t.SerializeToString() == b"\x08" + varint(n)


@pytest.mark.parametrize("name", ["mlp", "mha", "gru_classifier", "positional_demo", "lstm_uni"])
def test_streamed_model_parses_to_the_same_proto(name):
    full = compile_spec(SPECS / f"{name}.yaml", seed=1)
    streamed = compile_spec(SPECS / f"{name}.yaml", seed=1, keep_weights=False)
    assert streamed.weights and not any(t.raw_data for t in streamed.model.graph.initializer
                                        if t.name in dict(streamed.weights))
    data = streamed.to_bytes()
    assert serialize(onnx.load_from_string(data)) == serialize(full.model)
    assert data == streamed.to_bytes(), "streaming is deterministic"


def test_streamed_bool_int_and_float16_tensors_round_trip():
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    arrays = [("a_bool", np.array([[True, False, True]])), ("b_i64", np.arange(5, dtype=np.int64)),
              ("c_f16", np.linspace(-2, 2, 7, dtype=np.float16)), ("d_empty", np.zeros((0, 4), np.float32)),
              ("e_scalar", np.array(3.5, np.float32)), ("f_strided", np.arange(12, dtype=np.float32).reshape(3, 4).T)]
    buf = io.BytesIO()
    write_model(buf, model, arrays)
    back = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load_from_string(buf.getvalue()).graph.initializer}
    for name, arr in arrays:
        assert back[name].dtype == arr.dtype and np.array_equal(back[name], arr), name


def test_cli_build_streams_and_matches_the_in_memory_model(tmp_path):
    out = tmp_path / "mha.onnx"
    r = graphc_cli("build", "specs/mha.yaml", "--seed", "4", "-o", str(out), "--check")
    assert r.returncode == 0, r.stderr
    assert serialize(onnx.load(str(out))) == serialize(compile_spec(SPECS / "mha.yaml", seed=4).model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mha.onnx"]


def test_external_data_is_streamed_for_big_models(tmp_path, monkeypatch):
    monkeypatch.setattr(lower_model, "EXTERNAL_DATA_THRESHOLD", 1000)
    c = compile_spec(SPECS / "mlp.yaml", seed=2, keep_weights=False)
    out = tmp_path / "mlp.onnx"
    size = c.save(out)
    data = tmp_path / "mlp.onnx.data"
    assert data.exists() and size == out.stat().st_size + data.stat().st_size
    loaded = onnx.load(str(out))                     # reads the external data back in
    for t in loaded.graph.initializer:               # what onnx.load leaves of the external references
        t.ClearField("data_location")
        t.ClearField("external_data")
    assert serialize(loaded) == serialize(compile_spec(SPECS / "mlp.yaml", seed=2).model)
    t = next(t for t in onnx.load(str(out), load_external_data=False).graph.initializer
             if t.data_location == onnx.TensorProto.EXTERNAL)
    offset = int(next(e.value for e in t.external_data if e.key == "offset"))
    assert offset % 4096 == 0
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 784)).astype(np.float32)}
    got = ort_run(str(out), feeds)
    want = ort_run(compile_spec(SPECS / "mlp.yaml", seed=2).to_bytes(), feeds)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("how", ["savez", "savez_compressed", "fortran", "big_endian", "safetensors"])
def test_weight_files_map_or_read_to_the_same_model(tmp_path, how):
    _, g = check_spec(SPECS / "mha.yaml")
    rng = np.random.default_rng(5)
    w = {p.name: rng.standard_normal(p.type.concrete_shape()).astype(np.float32) for p in g.params()}
    path = tmp_path / ("w.safetensors" if how == "safetensors" else "w.npz")
    if how == "safetensors":
        st = pytest.importorskip("safetensors.numpy")
        st.save_file(w, str(path))
    elif how == "savez_compressed":
        np.savez_compressed(path, **w)
    elif how == "fortran":
        np.savez(path, **{k: np.asfortranarray(v) for k, v in w.items()})
    elif how == "big_endian":
        np.savez(path, **{k: v.astype(">f4") for k, v in w.items()})
    else:
        np.savez(path, **w)
    loaded = load_weights(path)
    for k, v in w.items():
        assert np.array_equal(loaded[k], v), k
    assert compile_spec(SPECS / "mha.yaml", path).to_bytes() == compile_spec(SPECS / "mha.yaml", w).to_bytes()


def test_truncated_stored_npz_is_an_error(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, a=np.zeros(10000, np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[:20000])
    user_error(graphc_cli("build", "specs/mlp.yaml", "--weights", str(path), "-o", str(tmp_path / "m.onnx")), "w.npz")
