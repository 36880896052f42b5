"""Empty batches and sequences: an attention model run with batch = 0 or a
sequence length of 0 returns correctly shaped empty outputs (or, with no keys
to attend to, zeros), never an ONNX Runtime failure and never NaN; on both
attention forms (the decomposed MatMul/Softmax and the opset-23 Attention op).
Recurrent layers cannot run on empty sequences: graphc refuses them, and a
length of 0, with a clear error (exit 2) instead of an ORT crash."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graphc.errors import GraphcError
from graphc.layers import LAYERS
from graphc.runtime.session import make_session, model_meta, random_inputs
from graphc.shapes import parse_expr
from helpers import SPECS, compile_text, graphc_cli, ort_run, ref_run, single_layer_spec, user_error

ATTENTION_SPECS = ["mha", "mha_causal", "cross_attention", "gqa", "seed_mha_concat", "transformer_encoder",
                   "transformer", "gpt_decoder_only", "bert_encoder"]
_MODELS: dict = {}


def _model(spec: str, opset: int):
    if (spec, opset) not in _MODELS:
        model, g, _ = compile_text((SPECS / f"{spec}.yaml").read_text(), opset=opset)
        _MODELS[(spec, opset)] = model, g
    return _MODELS[(spec, opset)]


def _env(session, dims: dict) -> dict[str, int]:
    return {**json.loads(model_meta(session).get("graphc.dim_examples", "{}")), **dims}


def _shape(session, info, dims: dict) -> tuple[int, ...]:
    env = _env(session, dims)
    return tuple(n if isinstance(n, int) else int(parse_expr(n).evaluate(lambda k: env.get(k))) for n in info.shape)


def _feeds(session, dims: dict) -> dict[str, np.ndarray]:
    """--random inputs; where a declared range is empty at these dims (key lengths
    in [1, src_seq + 1) with src_seq = 0), integers are 0 and masks False."""
    try:
        return random_inputs(session, dims)
    except GraphcError:
        pass
    rng, feeds = np.random.default_rng(0), {}
    for info in session.get_inputs():
        shape = _shape(session, info, dims)
        feeds[info.name] = (rng.standard_normal(shape).astype(np.float32) if info.type == "tensor(float)" else
                            np.zeros(shape, bool if info.type == "tensor(bool)" else np.int64))
    return feeds


@pytest.mark.parametrize("opset", [17, 23])
@pytest.mark.parametrize("spec", ATTENTION_SPECS)
def test_attention_specs_run_on_empty_batches_and_sequences(spec, opset):
    model, g = _model(spec, opset)
    session = make_session(model)
    for dim in g.dim_examples:
        dims = {dim: 0}
        feeds = _feeds(session, dims)
        got = ort_run(model, feeds)
        want = ref_run(model, feeds)                       # the ONNX reference evaluator, independently
        for out in session.get_outputs():
            shape = _shape(session, out, dims)
            y = got[out.name]
            assert y.shape == shape, (spec, dim, out.name, y.shape, shape)
            assert not np.isnan(y).any(), (spec, dim, out.name)
            np.testing.assert_allclose(y, want[out.name], rtol=1e-4, atol=1e-4)


def _mha_case(kv_heads=None, causal=False, impl="auto", key_len="seq"):
    inputs = {"x": ("float32", ["batch", "seq", 8]), "kv": ("float32", ["batch", key_len, 8]),
              "kpm": ("bool", ["batch", key_len])}
    args = {"heads": 4, "causal": causal, "impl": impl} | ({"kv_heads": kv_heads} if kv_heads else {})
    ports = {"query": "x", "key": "kv", "value": "kv", "key_padding_mask": "kpm"}
    dims = ("batch", "seq") if key_len == "seq" else ("batch", "seq", key_len)
    return single_layer_spec("multihead_attention", args, inputs, dims=dims, ports=ports), args


CASES = [  # batch, query length, key length
    (0, 3, 3), (2, 0, 0), (0, 0, 0), (2, 3, 0), (2, 0, 3), (0, 3, 5),
]


@pytest.mark.parametrize("opset,impl", [(17, "auto"), (23, "fused"), (23, "decomposed")])
@pytest.mark.parametrize("kv_heads", [None, 2])
def test_attention_layer_matches_the_numpy_reference_when_empty(opset, impl, kv_heads):
    """Including no keys at all (key length 0, queries present): every query row
    is fully masked, so attention is 0 and y is the output projection's bias."""
    text, args = _mha_case(kv_heads=kv_heads, impl=impl, key_len="k_seq")
    model, _, weights = compile_text(text, weights="random", opset=opset)
    layer = LAYERS["multihead_attention"]
    full = {p.name: args.get(p.name, p.default) for p in layer.params}
    rng = np.random.default_rng(0)
    for b, sq, sk in CASES:
        feeds = {"x": rng.standard_normal((b, sq, 8)).astype(np.float32),
                 "kv": rng.standard_normal((b, sk, 8)).astype(np.float32),
                 "kpm": rng.random((b, sk)) < 0.3}
        got = ort_run(model, feeds)["y"]
        ports = {"query": feeds["x"], "key": feeds["kv"], "value": feeds["kv"], "key_padding_mask": feeds["kpm"]}
        want = layer.reference(full, {k[2:]: v for k, v in weights.items()}, ports)["y"]
        assert got.shape == (b, sq, 8) and not np.isnan(got).any(), (b, sq, sk)
        np.testing.assert_allclose(got, want, atol=1e-5)
        if sk == 0 and b and sq:
            np.testing.assert_allclose(got, np.broadcast_to(weights["l.out_proj.bias"], got.shape), atol=1e-6)


@pytest.mark.parametrize("opset", [17, 23])
def test_causal_self_attention_on_empty_inputs(opset):
    text, _ = _mha_case(causal=True)
    model, _, _ = compile_text(text, weights="random", opset=opset)
    for b, s in ((0, 4), (2, 0)):
        feeds = {"x": np.zeros((b, s, 8), np.float32), "kv": np.zeros((b, s, 8), np.float32),
                 "kpm": np.zeros((b, s), bool)}
        assert ort_run(model, feeds)["y"].shape == (b, s, 8)


def _reshape_targets(model: bytes) -> list[str]:
    """For each Reshape: 'const' if its target is an initializer, else the op making it."""
    m = onnx.load_from_string(model)
    inits = {t.name for t in m.graph.initializer}
    producer = {o: n.op_type for n in m.graph.node for o in n.output}
    return ["const" if n.input[1] in inits else producer[n.input[1]] for n in m.graph.node if n.op_type == "Reshape"]


def test_reshape_targets_stay_static_where_the_batch_cannot_make_them_ambiguous():
    """[B, Sk] -> [B, 1, 1, Sk] (the key padding mask) is an Unsqueeze, head splits
    copy B and S in place: no run-time shape arithmetic in the usual models."""
    for spec in ("mha", "transformer_encoder", "bert_encoder"):
        model, _ = _model(spec, 17)
        assert set(_reshape_targets(model)) == {"const"}, spec


def test_a_reshape_that_must_infer_a_dim_beside_the_batch_works_on_an_empty_batch():
    # [batch, seq, 4] -> [batch, seq * 4]: ONNX cannot infer a -1 next to a copied batch of 0
    text = single_layer_spec("reshape", {"shape": ["batch", -1]}, {"x": ("float32", ["batch", "seq", 4])})
    model, _, _ = compile_text(text)
    assert _reshape_targets(model) != ["const"]
    for b, s in ((0, 3), (2, 0), (2, 3), (0, 0)):
        x = np.arange(b * s * 4, dtype=np.float32).reshape(b, s, 4)
        y = ort_run(model, {"x": x})["y"]
        np.testing.assert_array_equal(y, x.reshape(b, s * 4))
        np.testing.assert_array_equal(ref_run(model, {"x": x})["y"], y)


# ------------------------------------------------------------------ recurrent


RNN_SPEC = """graphc: 1
dims: {batch: 2, seq: 5}
inputs:
  x: {dtype: float32, shape: [batch, seq, 4]}
  lengths: {dtype: int64, shape: [batch], range: [1, seq + 1]}
layers:
  - {name: rnn, kind: KIND, inputs: {x: x, lengths: lengths}, hidden_size: 3, bidirectional: true, batch_first: true}
outputs: {y: rnn, h: rnn.h_n}
"""


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_layers_refuse_empty_inputs_and_zero_lengths(kind, tmp_path):
    spec = tmp_path / "rnn.yaml"
    spec.write_text(RNN_SPEC.replace("KIND", kind))
    np.save(x := tmp_path / "x.npy", np.ones((2, 5, 4), np.float32))
    for lengths, ok in (([5, 2], True), ([0, 2], False), ([3, 0], False)):
        np.save(lens := tmp_path / "l.npy", np.array(lengths, np.int64))
        r = graphc_cli("run", str(spec), "--input", f"x={x}", "--input", f"lengths={lens}")
        if ok:
            assert r.returncode == 0, r.stderr
            continue
        user_error(r, "length of 0")
        assert r.stderr.startswith("graphc: error: input 'lengths' gives sequence"), r.stderr
    # seq=0: the declared lengths range [1, seq + 1) is empty; batch=0: x is [0, 5, 4]
    for dim, message in (("seq=0", "input 'lengths': its range [1, 1) is empty"),
                         ("batch=0", "input 'x' is empty (shape [0, 5, 4])")):
        r = graphc_cli("run", str(spec), "--random", "--dim", dim)           # a crash would be rc -6/-11
        user_error(r, message)


def test_lengths_inputs_are_recorded_for_the_run_time_check():
    model, _, _ = compile_text(RNN_SPEC.replace("KIND", "lstm"))
    assert model_meta(make_session(model)).get("graphc.sequence_lengths") == "lengths"
    model, _, _ = compile_text((SPECS / "gru_classifier.yaml").read_text())
    assert "graphc.sequence_lengths" not in model_meta(make_session(model))
