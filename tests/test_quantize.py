"""int8 builds (graphc.ir.quantize, graphc.quantized) and the ORT target.

The oracle for the int8 math is a numpy reference written here from the
definitions (ONNX DynamicQuantizeLinear for activations: uint8, per tensor,
asymmetric; weights: int8 per output channel, symmetric, zero point 0), not
graphc's own prim. Tolerances: graphc on ORT may round an activation that
sits on a quantization tie the other way (x / s against x * (1 / s)), so a
few elements may differ by one activation step; the comparison allows that
(rel RMS <= 2e-4) and checks the int8 error against float is far larger, so
the test would see a float product, or a wrong scale, at once.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from graphc.compiler import compile_spec
from graphc.schema import spec_schema

from helpers import cli, ort_run, user_error

RNG = np.random.default_rng(0)

MLP = """graphc: 1
dims: {batch: 3, seq: 5}
inputs:
  x: {dtype: float32, shape: [batch, seq, 16]}
layers:
  - {name: fc1, kind: linear, input: x, out_features: 32}
  - {name: act, kind: relu, input: fc1}
  - {name: fc2, kind: linear, input: act, out_features: 24}
outputs: {y: fc2}
"""

MHA = """graphc: 1
dims: {batch: 2, seq: 7}
inputs:
  x: {dtype: float32, shape: [batch, seq, 32]}
layers:
  - {name: attn, kind: multihead_attention, input: x, heads: 4}
outputs: {y: attn}
"""

ENCODER = """graphc: 1
dims: {batch: 2, seq: 12}
inputs:
  x: {dtype: float32, shape: [batch, seq, 64]}
layers:
  - {name: enc, kind: transformer_encoder, input: x, layers: 2, heads: 4, d_ff: 128, activation: gelu}
  - {name: head, kind: linear, input: enc, out_features: 10}
outputs: {y: head}
"""


def write(tmp_path, text, name="m.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------ numpy reference from the math

def quant_act(x):
    """ONNX DynamicQuantizeLinear: (x_q, scale, zero point)."""
    x = x.astype(np.float32)
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    s = np.float32((hi - lo) / 255)
    z = np.clip(np.rint(-lo / s), 0, 255)
    q = np.clip(np.rint(x / s) + z, 0, 255)
    return q, s, z


def quant_weight_t(w):
    """torch layout W [out, in] -> int8 [in, out] per output channel, symmetric, and the scales [out]."""
    wt = w.T.astype(np.float32)
    s = np.abs(wt).max(axis=0) / 127
    return np.clip(np.rint(wt / s), -127, 127), s.astype(np.float32)


def int8_linear(x, w, b=None):
    q, s, z = quant_act(x)
    wq, ws = quant_weight_t(w)
    y = ((q - z) @ wq) * (np.float64(s) * ws)
    return y + (0 if b is None else b)


def rel_rms(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.sqrt(np.sum((a - ref) ** 2) / np.sum(ref ** 2)))


def weights_for(params: dict[str, tuple]) -> dict[str, np.ndarray]:
    return {k: (RNG.standard_normal(s) / math.sqrt(s[-1])).astype(np.float32) for k, s in params.items()}


# ------------------------------------------------------------------ math

@pytest.mark.parametrize("head", [False, True])
def test_linear_layers_match_the_int8_math(tmp_path, head):
    text = MLP + ("quantize: {head: true}\n" if head else "")
    w = weights_for({"fc1.weight": (32, 16), "fc1.bias": (32,), "fc2.weight": (24, 32), "fc2.bias": (24,)})
    c = compile_spec(write(tmp_path, text), w, quantize="int8")
    x = RNG.standard_normal((3, 5, 16)).astype(np.float32)
    y = ort_run(c.to_bytes(), {"x": x})["y"]
    h = np.maximum(int8_linear(x, w["fc1.weight"], w["fc1.bias"]), 0)
    ref = int8_linear(h, w["fc2.weight"], w["fc2.bias"]) if head else h @ w["fc2.weight"].T + w["fc2.bias"]
    flt = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0) @ w["fc2.weight"].T + w["fc2.bias"]
    assert rel_rms(y, ref) < 2e-4
    assert rel_rms(y, flt) > 20 * rel_rms(y, ref)        # the int8 effect is real and it is what we see
    assert c.quantization.report.quantized == (["fc1", "fc2"] if head else ["fc1"])
    assert c.quantization.report.kept_head == ([] if head else ["fc2"])
    ops = [n.op_type for n in c.model.graph.node]
    assert ops.count("MatMulInteger") == (2 if head else 1) and ops.count("MatMul") == (0 if head else 1)


def test_attention_projections_match_the_int8_math(tmp_path):
    """The per-head QKV product is quantized as one [E, 3E] product (x quantized once)."""
    e, heads, d = 32, 4, 8
    w = weights_for({"attn.in_proj_weight": (3 * e, e), "attn.in_proj_bias": (3 * e,),
                     "attn.out_proj.weight": (e, e), "attn.out_proj.bias": (e,)})
    c = compile_spec(write(tmp_path, MHA), w, quantize="int8")
    assert c.quantization.report.quantized == ["attn", "attn.out_proj"]
    x = RNG.standard_normal((2, 7, e)).astype(np.float32)
    y = ort_run(c.to_bytes(), {"x": x})["y"]

    def forward(proj):
        qkv = proj(x, w["attn.in_proj_weight"], w["attn.in_proj_bias"])             # [B, S, 3E]
        q, k, v = (t.reshape(2, 7, heads, d).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        o = (p / p.sum(-1, keepdims=True)) @ v                                        # [B, H, S, D]
        o = o.transpose(0, 2, 1, 3).reshape(2, 7, e)
        return proj(o, w["attn.out_proj.weight"], w["attn.out_proj.bias"])

    ref = forward(int8_linear)
    flt = forward(lambda a, ww, b: a @ ww.T + b)
    assert rel_rms(y, ref) < 2e-4
    assert rel_rms(y, flt) > 20 * rel_rms(y, ref)


def test_encoder_error_against_float_is_reported_and_small(tmp_path):
    p = write(tmp_path, ENCODER)
    c = compile_spec(p, quantize="int8")
    f = compile_spec(p)
    (err,) = c.quantization.errors
    x = np.random.default_rng(5).standard_normal((2, 12, 64)).astype(np.float32)
    yq, yf = ort_run(c.to_bytes(), {"x": x})["y"], ort_run(f.to_bytes(), {"x": x})["y"]
    # the reported error (graphc's random inputs) and one measured here agree in size, and are small
    assert 0.001 < err.rel_rms < 0.03 and 0.001 < rel_rms(yq, yf) < 0.03
    assert err.max_abs > 0
    assert c.quantization.report.kept_head == ["head"]
    assert len(c.quantization.report.quantized) == 8          # 2 x (qkv, out_proj, linear1, linear2)


def test_builds_are_deterministic(tmp_path):
    p = write(tmp_path, ENCODER)
    a = compile_spec(p, quantize="int8").to_bytes()
    b = compile_spec(p, quantize="int8").to_bytes()
    assert a == b


def test_float_builds_carry_no_quantize_or_target_metadata(tmp_path):
    c = compile_spec(write(tmp_path, MLP))
    keys = {p.key for p in c.model.metadata_props}
    assert "graphc.quantize" not in keys and "graphc.target" not in keys
    assert [o.domain for o in c.model.opset_import] == [""]


# ------------------------------------------------------------------ the quantize: section

def test_section_include_exclude(tmp_path):
    text = ENCODER + 'quantize:\n  include: ["enc.layers.*"]\n  exclude: ["*.linear2", enc.layers.1.self_attn]\n'
    c = compile_spec(write(tmp_path, text))                       # the section alone turns int8 on
    r = c.quantization.report
    # a pattern covers a layer and everything inside it: enc.layers.1.self_attn takes its out_proj along
    assert r.quantized == ["enc.layers.0.self_attn", "enc.layers.0.self_attn.out_proj", "enc.layers.0.linear1",
                           "enc.layers.1.linear1"]
    assert {"enc.layers.0.linear2", "enc.layers.1.self_attn", "enc.layers.1.self_attn.out_proj",
            "head"} <= set(r.kept_excluded)
    f = compile_spec(write(tmp_path, text), quantize="none")      # the command line wins
    assert f.quantization is None
    assert not any(n.op_type == "MatMulInteger" for n in f.model.graph.node)


def test_schema_has_the_section():
    q = spec_schema()["properties"]["quantize"]
    assert set(q["properties"]) == {"mode", "include", "exclude", "head", "doc"}
    assert q["properties"]["mode"]["enum"] == ["none", "int8"]


# ------------------------------------------------------------------ errors

def test_unknown_mode_is_an_error(tmp_path):
    p = write(tmp_path, MLP)
    out = tmp_path / "m.onnx"
    user_error(cli("build", p, "-o", out, "--quantize", "int3"), "unknown --quantize mode 'int3'")
    assert not out.exists()


def test_unknown_mode_in_the_section_is_located(tmp_path):
    p = write(tmp_path, MLP + "quantize:\n  mode: int4x\n")
    user_error(cli("build", p, "-o", tmp_path / "m.onnx"), "unknown quantize mode 'int4x'", located=str(p), where="11:9")


def test_pattern_matching_no_layer_is_located(tmp_path):
    p = write(tmp_path, MLP + "quantize:\n  exclude: [fc1, fc9]\n")
    out = tmp_path / "m.onnx"
    err = user_error(cli("build", p, "-o", out), "quantize pattern 'fc9' matches no quantizable layer",
                     located=str(p), where="11:18")
    assert "fc1, fc2" in err and not out.exists()


def test_pattern_on_a_norm_matches_no_quantizable_layer(tmp_path):
    p = write(tmp_path, ENCODER + "quantize: {include: [enc.layers.0.norm1]}\n")
    user_error(cli("build", p, "-o", tmp_path / "m.onnx"), "matches no quantizable layer", located=str(p))


@pytest.mark.parametrize("section, message", [
    ("quantize: [int8]", "'quantize' must be a mapping"),
    ("quantize: {modes: int8}", "unknown key 'modes' in 'quantize'"),
    ("quantize: {head: yes please}", "'head' must be true or false"),
    ("quantize: {include: [3]}", "'include' takes layer name patterns"),
    ("quantize: {include: 'fc 1'}", "has characters a layer path cannot have"),
])
def test_bad_sections(tmp_path, section, message):
    p = write(tmp_path, MLP + section + "\n")
    err = user_error(cli("build", p, "-o", tmp_path / "m.onnx"), message, located=str(p))
    assert err.startswith(f"{p}:10:"), err


def test_max_error_refuses_and_writes_nothing(tmp_path):
    p = write(tmp_path, MLP)
    out = tmp_path / "m.onnx"
    err = user_error(cli("build", p, "-o", out, "--quantize", "int8", "--max-error", "1e-6"),
                     "error is above --max-error 1e-06")
    assert "output 'y'" in err
    assert not out.exists()
    rc, _, err = cli("build", p, "-o", out, "--quantize", "int8", "--max-error", "0.05")
    assert rc == 0 and out.exists() and "relative RMS" in err


def test_float16_with_int8_is_an_error(tmp_path):
    """A command-line conflict: not located (it was once placed at a float32 input's line)."""
    out = tmp_path / "m.onnx"
    user_error(cli("build", write(tmp_path, MLP), "-o", out, "--quantize", "int8", "--dtype", "float16"),
               "int8 needs a float32 model, not --dtype float16", hint="leave out --dtype")
    assert not out.exists()


def test_float16_with_the_spec_section_is_located_at_it(tmp_path):
    p = write(tmp_path, MLP + "quantize: {exclude: [fc2]}\n")
    user_error(cli("build", p, "-o", tmp_path / "m.onnx", "--dtype", "float16"),
               "the spec's quantize: section asks for int8", located=str(p), where="10:11",
               hint="--quantize none")
    rc, _, _ = cli("build", p, "-o", tmp_path / "m.onnx", "--dtype", "float16", "--quantize", "none")
    assert rc == 0


def test_max_error_without_int8_is_an_error(tmp_path):
    """--max-error on a float build was ignored: a bound nobody checked, and exit 0."""
    out = tmp_path / "m.onnx"
    user_error(cli("build", write(tmp_path, MLP), "-o", out, "--max-error", "0.01"),
               "--max-error bounds the error of an int8 build", hint="--quantize int8")
    assert not out.exists()
    user_error(cli("build", write(tmp_path, MLP + "quantize: {mode: none}\n"), "-o", out, "--max-error", "0.01"),
               "this build is float")


@pytest.mark.parametrize("bound", ["-0.5", "nan"])
def test_max_error_must_be_a_non_negative_number(tmp_path, bound):
    """Refused before the build, not by a misleading 'error is above --max-error nan' after it."""
    out = tmp_path / "m.onnx"
    user_error(cli("build", write(tmp_path, MLP), "-o", out, "--quantize", "int8", "--max-error", bound),
               "--max-error must be a number >= 0")
    assert not out.exists()


RECURRENT_ONLY = """graphc: 1
dims: {batch: 2, seq: 5}
inputs:
  x: {dtype: float32, shape: [seq, batch, 8]}
layers:
  - {name: lstm, kind: lstm, input: x, hidden_size: 16}
  - {name: gru, kind: gru, input: lstm, hidden_size: 8}
outputs: {y: gru}
"""

HEAD_ONLY = """graphc: 1
dims: {batch: 2}
inputs:
  x: {dtype: float32, shape: [batch, 8]}
layers:
  - {name: n, kind: layer_norm, input: x}
  - {name: head, kind: linear, input: n, out_features: 3}
outputs: {y: head}
"""


@pytest.mark.parametrize("text, message, hint, where", [
    (RECURRENT_ONLY, "the model has no layer to quantize", "recurrent layers", None),
    (HEAD_ONLY, "every quantizable layer of the model is kept float", "quantize: {head: true}", None),
    (MLP + "quantize: {exclude: [fc1]}\n", "every quantizable layer of the model is kept float", "leave out fc1",
     "10:11"),                                              # at the spec's section when there is one
], ids=["recurrent_only", "head_only", "all_excluded"])
def test_an_int8_build_that_quantizes_nothing_is_refused(tmp_path, text, message, hint, where):
    """It used to write the float model labelled int8 ('quantized 0 layers')."""
    out, p = tmp_path / "m.onnx", write(tmp_path, text)
    user_error(cli("build", p, "-o", out, "--quantize", "int8"), message, hint=hint,
               located=p if where else None, where=where)
    assert not out.exists()


TIED = """graphc: 1
dims: {batch: 2, seq: 6}
params: {vocab: 50, d: 32}
inputs:
  ids: {dtype: int64, shape: [batch, seq], range: [0, vocab]}
layers:
  - {name: embed, kind: embedding, input: ids, num_embeddings: vocab, embedding_dim: d}
  - {name: ff, kind: linear, input: embed, out_features: d}
  - {name: lm_head, kind: linear, input: ff, out_features: vocab, bias: false, tie: embed.weight}
outputs: {logits: lm_head}
quantize: {head: true}
"""


def test_a_tied_head_stays_float_and_the_build_says_so(tmp_path):
    """A linear tied to the embedding reads the table through a run-time Transpose;
    it stays float even with head: true (docs/quantize.md), and the summary names it."""
    w = weights_for({"embed.weight": (50, 32), "ff.weight": (32, 32), "ff.bias": (32,)})
    p = write(tmp_path, TIED)
    rc, _, err = cli("build", p, "-o", tmp_path / "m.onnx", "--weights", _npz(tmp_path, w))
    assert rc == 0, err
    assert "quantized 1 layer to int8" in err
    assert "kept float (tied to a table the model also reads as float): lm_head" in err
    ids = np.random.default_rng(1).integers(0, 50, (2, 6)).astype(np.int64)
    got = ort_run((tmp_path / "m.onnx").read_bytes(), {"ids": ids})["logits"]
    e = w["embed.weight"][ids]
    ref = int8_linear(e, w["ff.weight"], w["ff.bias"]) @ w["embed.weight"].T      # the head's product in float
    assert rel_rms(got, ref) < 2e-4


def _npz(tmp_path, w):
    path = tmp_path / "w.npz"
    np.savez(path, **w)
    return path


@pytest.mark.parametrize("target", ["onnx", "ort"])
def test_reported_errors_are_the_measured_ones(tmp_path, target):
    """The printed max abs and relative RMS, recomputed here from the float and int8
    models on the inputs the build says it used (random, seed 0, example dims)."""
    from graphc.runtime import make_session, random_inputs
    p = write(tmp_path, ENCODER)
    q, f = compile_spec(p, quantize="int8", target=target), compile_spec(p, target=target)
    feeds = random_inputs(make_session(f.to_bytes()), {}, 0)
    yq, yf = ort_run(q.to_bytes(), feeds)["y"], ort_run(f.to_bytes(), feeds)["y"]
    (err,) = q.quantization.errors
    d = yq.astype(np.float64) - yf
    assert err.max_abs == pytest.approx(float(np.abs(d).max()), rel=1e-3)
    assert err.rel_rms == pytest.approx(rel_rms(yq, yf), rel=1e-3)


def test_unknown_target(tmp_path):
    user_error(cli("build", write(tmp_path, MLP), "-o", tmp_path / "m.onnx", "--target", "ortt"),
               "unknown target 'ortt'", hint="did you mean 'ort'")


# ------------------------------------------------------------------ --target ort

@pytest.mark.parametrize("quantize", [None, "int8"])
def test_ort_target_runs_and_matches_the_standard_target(tmp_path, quantize):
    p = write(tmp_path, ENCODER.replace("activation: gelu", "activation: gelu_tanh"))
    std = compile_spec(p, quantize=quantize)
    ort_t = compile_spec(p, quantize=quantize, target="ort")
    assert any(n.domain == "com.microsoft" for n in ort_t.model.graph.node)
    assert not any(n.domain for n in std.model.graph.node)
    assert {p.key: p.value for p in ort_t.model.metadata_props}["graphc.target"] == "ort"
    onnx.checker.check_model(ort_t.model)
    x = RNG.standard_normal((2, 12, 64)).astype(np.float32)
    a, b = ort_run(std.to_bytes(), {"x": x})["y"], ort_run(ort_t.to_bytes(), {"x": x})["y"]
    assert np.abs(a - b).max() < 1e-4 * max(1.0, float(np.abs(a).max()))


def test_run_refuses_compile_options_on_a_compiled_model(tmp_path):
    """`graphc run model.onnx --quantize int8` ran the float model and exited 0."""
    model = tmp_path / "m.onnx"
    assert cli("build", write(tmp_path, MLP), "-o", model, "-q")[0] == 0
    user_error(cli("run", model, "--random", "--quantize", "int8", "--max-error", "0.1"),
               ("--quantize, --max-error apply when graphc run compiles a spec", "already compiled"))
    user_error(cli("run", model, "--random", "--target", "ort"), "--target applies")
    rc, out, err = cli("run", model, "--random", "--seed", "3")          # run's own options still work
    assert rc == 0 and "seed 3" in out, err
    rc, out, err = cli("run", write(tmp_path, MLP), "--random", "--quantize", "int8")   # a spec compiles with them
    assert rc == 0 and "quantized 1 layer to int8" in err, err


CHAIN = """graphc: 1
dims: {batch: 3, seq: 5}
inputs:
  x: {dtype: float32, shape: [batch, seq, 16]}
layers:
  - {name: fc1, kind: linear, input: x, out_features: 24}
  - {name: fc2, kind: linear, input: fc1, out_features: 16}
  - {name: fc3, kind: linear, input: fc2, out_features: 8}
outputs: {y: fc3}
quantize: {head: true}
"""


def test_back_to_back_linears_are_each_quantized(tmp_path):
    """linear -> linear with nothing between: the second product's input is the first's
    bias Add, which the first rewrite replaces (it was an internal error)."""
    w = weights_for({"fc1.weight": (24, 16), "fc1.bias": (24,), "fc2.weight": (16, 24), "fc2.bias": (16,),
                     "fc3.weight": (8, 16), "fc3.bias": (8,)})
    c = compile_spec(write(tmp_path, CHAIN), w)
    assert c.quantization.report.quantized == ["fc1", "fc2", "fc3"]
    x = RNG.standard_normal((3, 5, 16)).astype(np.float32)
    y = ort_run(c.to_bytes(), {"x": x})["y"]
    h = x
    for k in (1, 2, 3):
        h = int8_linear(h, w[f"fc{k}.weight"], w[f"fc{k}.bias"])
    assert rel_rms(y, h) < 2e-4


def test_a_linear_feeding_attention_is_quantized_with_it(tmp_path):
    text = MHA.replace("layers:\n  - {name: attn, kind: multihead_attention, input: x,",
                       "layers:\n  - {name: proj, kind: linear, input: x, out_features: 32}\n"
                       "  - {name: attn, kind: multihead_attention, input: proj,")
    c = compile_spec(write(tmp_path, text), quantize="int8")
    assert c.quantization.report.quantized == ["proj", "attn", "attn.out_proj"]
    assert sum(n.op_type == "MatMulInteger" for n in c.model.graph.node) == 3
    (err,) = c.quantization.errors
    assert 0 < err.rel_rms < 0.05
