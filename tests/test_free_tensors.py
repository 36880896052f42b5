"""parameter, constant and cast: ONNX Runtime against the numpy math (and
torch for the class-token pattern), a checkpoint whose bare names
(final_logits_bias, cls_token) load into parameter layers, integer masks in
the mask-taking layers, and every bad argument refused at its place."""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import cli, compile_text, layer_parity, ort_run, user_error

F, I = "float32", "int64"

VIT_HEAD = """graphc: 1
dims: {batch: 2, seq: 3}
params: {d: 4, vocab: 5}
inputs:
  x: {dtype: float32, shape: [batch, seq, d]}
layers:
  - {name: cls_token, kind: parameter, shape: [1, 1, d], init: normal, input: x}
  - {name: joined, kind: concat, inputs: [cls_token, x], axis: 1}
  - {name: lm_head, kind: linear, input: joined, out_features: vocab, bias: false}
  - {name: final_logits_bias, kind: parameter, shape: [1, vocab]}
  - {name: logits, kind: add, inputs: [lm_head, final_logits_bias]}
outputs: {logits: logits}
"""


@pytest.mark.parametrize("shape, init", [([1, 1, 4], "normal"), ([1, 3], "uniform"), ([1], "zeros")])
def test_parameter_over_the_batch_matches_the_reference(shape, init):
    d = layer_parity("parameter", {"shape": shape, "init": init}, {"x": (F, ["batch", "seq", 4])},
                     dims={"batch": 5, "seq": 2})
    assert d["reference"] == 0.0 and d["onnx.reference"] == 0.0


def test_class_token_and_final_logits_bias_match_torch():
    torch = pytest.importorskip("torch")
    model, g, w = compile_text(VIT_HEAD, weights="random")
    assert sorted(w) == ["cls_token", "final_logits_bias", "lm_head.weight"]
    x = np.random.default_rng(1).standard_normal((3, 7, 4)).astype(np.float32)   # other batch and length
    got = ort_run(model, {"x": x})["logits"]
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    xt = torch.from_numpy(x)
    joined = torch.cat([t["cls_token"].expand(xt.shape[0], -1, -1), xt], dim=1)
    want = (torch.nn.functional.linear(joined, t["lm_head.weight"]) + t["final_logits_bias"]).numpy()
    assert got.shape == (3, 8, 5)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)


def test_bare_parameter_names_load_from_a_checkpoint(tmp_path):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(2)
    w = {"cls_token": rng.standard_normal((1, 1, 4)).astype(np.float32),
         "final_logits_bias": rng.standard_normal((1, 5)).astype(np.float32),
         "lm_head.weight": rng.standard_normal((5, 4)).astype(np.float32)}
    save_file(w, str(tmp_path / "w.safetensors"))
    (spec := tmp_path / "s.yaml").write_text(VIT_HEAD)
    rc, _, err = cli("build", spec, "--weights", tmp_path / "w.safetensors", "-o", tmp_path / "m.onnx")
    assert rc == 0, err
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    got = ort_run((tmp_path / "m.onnx").read_bytes(), {"x": x})["logits"]
    joined = np.concatenate([np.repeat(w["cls_token"], 2, axis=0), x], axis=1)
    np.testing.assert_allclose(got, joined @ w["lm_head.weight"].T + w["final_logits_bias"], atol=1e-6)


def test_parameter_under_repeat_is_one_per_copy():
    text = VIT_HEAD.replace("shape: [1, vocab]}", "shape: [1, vocab], repeat: 2}")
    from graphc.expand import build_graph
    from graphc.specfile import parse_spec_text
    g = build_graph(parse_spec_text(text, "<test>"))
    assert {"final_logits_bias.0", "final_logits_bias.1"} <= {p.name for p in g.params()}


def test_parameter_init_without_weights():
    _, g, _ = compile_text(VIT_HEAD.replace("init: normal", "init: ones"))
    from graphc.weight_init import initial_value
    assert np.array_equal(initial_value(g.value("cls_token"), 0), np.ones((1, 1, 4), np.float32))
    assert np.array_equal(initial_value(g.value("final_logits_bias"), 0), np.zeros((1, 5), np.float32))


CONST = """graphc: 1
dims: {batch: 2}
inputs:
  x: {dtype: float32, shape: [batch, 2, 3]}
layers:
  - {name: c, kind: constant, %s}
  - {name: y, kind: add, inputs: [x, c]}
outputs: {y: y, c: c}
"""


@pytest.mark.parametrize("args, want", [
    ("values: [1, 2.5, -3]", np.array([1, 2.5, -3], np.float32)),
    ("values: [1, 2, 3, 4, 5, 6], shape: [2, 3]", np.arange(1, 7, dtype=np.float32).reshape(2, 3)),
    ("fill: arange, shape: [2, 3]", np.arange(6, dtype=np.float32).reshape(2, 3)),
    ("fill: ones, shape: [1, 3]", np.ones((1, 3), np.float32)),
    ("fill: full, value: -0.5, shape: [2, 1]", np.full((2, 1), -0.5, np.float32)),
])
def test_constant_values(args, want):
    model, _, _ = compile_text(CONST % args)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    got = ort_run(model, {"x": x})
    assert np.array_equal(got["c"], want)
    np.testing.assert_allclose(got["y"], x + want, atol=1e-7)


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool", "float16"])
def test_constant_dtypes(dtype):
    text = CONST.replace("  - {name: y, kind: add, inputs: [x, c]}\n", "").replace("y: y, ", "")
    model, _, _ = compile_text(text % f"values: [0, 1, 1, 0], shape: [2, 2], dtype: {dtype}")
    got = ort_run(model, {"x": np.zeros((2, 2, 3), np.float32)})["c"]
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, np.array([[0, 1], [1, 0]], dtype))


def test_constant_over_the_batch():
    d = layer_parity("constant", {"fill": "arange", "shape": [1, 2, 3], "dtype": "int64"},
                     {"x": (F, ["batch", "seq", 4])}, dims={"batch": 3, "seq": 2})
    assert d["reference"] == 0.0


@pytest.mark.parametrize("x, to", [((F, ["batch", "seq"]), "int64"), ((I, ["batch", "seq"]), "bool"),
                                   ((I, ["batch", "seq"]), "float32"), ((F, ["batch", "seq"]), "float16"),
                                   ((I, ["batch", "seq"]), "int32")])
def test_cast_matches_numpy(x, to):
    rng = np.random.default_rng(3)
    feeds = {"x": (rng.standard_normal((3, 4)) * 3).astype(x[0]) if x[0] == F else
             rng.integers(-2, 3, size=(3, 4)).astype(x[0])}
    d = layer_parity("cast", {"to": to}, {"x": x}, feeds=feeds, tol=0)
    assert d["reference"] == 0.0


def test_cast_of_an_int_mask_feeds_a_bool_port():
    """HF's int64 1/0 attention_mask, cast to bool, against the int mask given directly."""
    text = """graphc: 1
dims: {batch: 2, seq: 5}
inputs:
  x: {dtype: float32, shape: [batch, seq, 3]}
  attention_mask: {dtype: int64, shape: [batch, seq]}
layers:
  - {name: keep, kind: cast, input: attention_mask, to: bool}
  - {name: a, kind: mean_pool, inputs: {x: x, mask: keep}, polarity: keep}
  - {name: b, kind: mean_pool, inputs: {x: x, mask: attention_mask}, polarity: keep}
outputs: {a: a, b: b}
"""
    model, _, _ = compile_text(text)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    m = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int64)
    got = ort_run(model, {"x": x, "attention_mask": m})
    want = np.stack([x[0, :3].mean(0), x[1].mean(0)])
    np.testing.assert_allclose(got["a"], want, atol=1e-6)
    np.testing.assert_allclose(got["b"], want, atol=1e-6)


def test_masked_softmax_takes_an_int_mask():
    text = """graphc: 1
dims: {batch: 2, seq: 4}
inputs:
  x: {dtype: float32, shape: [batch, seq]}
  m: {dtype: int64, shape: [batch, seq]}
layers:
  - {name: s, kind: masked_softmax, inputs: {x: x, mask: m}, polarity: masked}
outputs: {s: s}
"""
    x = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
    m = np.array([[1, 1, 0, 0], [0, 1, 0, 0]], np.int64)            # 1 = padding here
    got = ort_run(compile_text(text)[0], {"x": x, "m": m})["s"]
    e = np.where(m == 0, np.exp(x - x.max(-1, keepdims=True)), 0)
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("text, message, at", [
    (VIT_HEAD.replace("shape: [1, 1, d]", "shape: [1, seq, d]"), "'seq' is a symbolic dim", "cls_token"),
    (VIT_HEAD.replace("shape: [1, 1, d]", "shape: [2, 1, d]"), "a leading axis of size 1", "cls_token"),
    (VIT_HEAD.replace("init: normal", "init: xavier"), "must be one of zeros, ones, normal, uniform", "cls_token"),
    (VIT_HEAD.replace("init: normal", "dtype: float64"), "must be one of float32, float16", "cls_token"),
    (VIT_HEAD.replace("shape: [1, 1, d]", "shape: [1, 1, 3]"), "concat", "name: joined"),
    (CONST % "values: [1, 2], fill: ones", "either values", None),
    (CONST % "fill: ones", "needs a shape", "kind: constant"),
    (CONST % "fill: twos, shape: [2]", "must be one of zeros, ones, full, arange", "kind: constant"),
    (CONST % "fill: full, shape: [2]", "fill: full needs value", "kind: constant"),
    (CONST % "fill: zeros, value: 3, shape: [2]", "value goes with fill: full", "kind: constant"),
    (CONST % "values: [1, 2, 3], shape: [2, 2]", "holds 4 entries, values has 3", "kind: constant"),
    (CONST % "values: [1.5], dtype: int64", "1.5 is not an int64 value", "kind: constant"),
    (CONST % "values: [70000], dtype: float16", "overflows float16", "kind: constant"),
    (CONST % "values: [2], dtype: bool", "takes 0 or 1", "kind: constant"),
    (CONST % "values: [1], dtype: complex64", "must be one of float32", "kind: constant"),
    (CONST % "values: [a, 2]", "unknown name", "kind: constant"),
    (CONST % "values: 3", "must be a list of numbers", "kind: constant"),
    (CONST % "fill: zeros, shape: [100000, 100000]", "more than a constant may", "kind: constant"),
    (CONST.replace("{name: c, kind: constant, %s}", "{name: c, kind: cast, input: x, to: int8}"),
     "must be one of float32, float16, int64, int32, bool", "kind: cast"),
])
def test_bad_arguments_are_located(text, message, at):
    user_error(text, message, at=at)


def test_bad_constant_through_the_cli(tmp_path):
    (spec := tmp_path / "s.yaml").write_text(CONST % "fill: twos, shape: [2]")
    user_error(cli("check", spec), "must be one of zeros, ones, full, arange", located=str(spec))
