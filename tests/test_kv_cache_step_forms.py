"""The decode-step forms of a --kv-cache build (docs/generation.md, "The decode step,
compile side"): what the bundle's graph looks like, and int8 bundles.

The exactness of the float forms (one flat q/k/v GEMM, rope on the query and key
heads at once, the fusable RMSNorm) is what tests/test_kv_cache.py checks: every
cached step's logits equal the plain build's full forward within 1e-5. Here: that
those forms are the ones emitted (no per-head batched projection, no empty-batch
If, RMSNorm fused by ONNX Runtime), and int8 bundles against the plain int8
build (the oracle: an int8 plain build, whose own error tests/test_quantize.py
checks) and against the float bundle.
"""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort

from graphc.compiler import compile_spec
from helpers import cli, user_error
from kv_helpers import Decoder, build_both, session
from test_kv_cache import LLAMA, TOL, _incremental

SPEC = LLAMA.format(rope="half")


def _ops(path) -> collections.Counter:
    m = onnx.load(str(path), load_external_data=False)
    return collections.Counter(n.op_type for n in m.graph.node)


def _ort_ops(path, tmp_path) -> collections.Counter:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return _ops(tmp_path / "optimized.onnx")


def test_decode_graph_has_flat_projections_and_fused_norms(tmp_path):
    plain, bundle, config, _ = build_both(tmp_path, SPEC)
    ops = _ops(bundle / "decoder.onnx")
    assert ops["If"] == 0                                  # no empty-batch guard around the projections
    # per layer: qkv, out_proj, 3 FFN products, 2 attention products; + lm_head
    assert ops["MatMul"] == 2 * 7 + 1
    fused = _ort_ops(bundle / "decoder.onnx", tmp_path)
    assert fused["SimplifiedLayerNormalization"] == 2 * 2 + 1    # every RMSNorm fused by ORT
    assert fused["ReduceMean"] == 0
    # and the plain build keeps its own forms (golden bytes)
    plain_ops = collections.Counter(n.op_type for n in onnx.load_from_string(plain).graph.node)
    assert plain_ops["Reciprocal"] == 5 and plain_ops["Pow"] == 0


def _int8_bundle(tmp_path, text, weights, head=False):
    spec = tmp_path / "q.yaml"
    spec.write_text(text + ("quantize: {mode: int8, head: true}\n" if head else "quantize: {mode: int8}\n"))
    np.savez(tmp_path / "w.npz", **weights)
    rc, _, err = cli("build", spec, "--kv-cache", "--weights", tmp_path / "w.npz", "-o", tmp_path / "q8")
    assert rc == 0, err
    return tmp_path / "q8", err


def test_int8_bundle_prompt_equals_plain_int8_build(tmp_path):
    """The prompt step of an int8 bundle quantizes the same activations with the same
    weights as the plain int8 build run on the prompt: the same logits (float32
    rounding apart); later steps stay near the float bundle."""
    _, fbundle, config, weights = build_both(tmp_path, SPEC, scale=0.1)
    qbundle, err = _int8_bundle(tmp_path, SPEC, weights)
    assert "quantized 10 layers to int8" in err      # per layer: qkv, out_proj, linear1, linear2, linear3
    assert "kept float (output head" in err and "error against float, output logits" in err
    assert "depend on the other rows of the batch; --target ort" in err
    plain_q = compile_spec(tmp_path / "q.yaml", dict(weights)).to_bytes()      # the spec's quantize: int8
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 80, (2, 9))
    prompt = 5
    full = session(plain_q)
    ref = full.run(None, {"tokens": ids[:, :prompt]})[0]
    q = Decoder(qbundle, config, 2)
    f = Decoder(fbundle, config, 2)
    got = q.step(ids[:, :prompt], np.tile(np.arange(prompt), (2, 1)))
    assert np.abs(got - ref).max() < 1e-4
    worst_rel = 0.0
    f.step(ids[:, :prompt], np.tile(np.arange(prompt), (2, 1)))
    for t in range(prompt, ids.shape[1]):
        pos = np.full((2, 1), t)
        a, b = q.step(ids[:, t:t + 1], pos), f.step(ids[:, t:t + 1], pos)
        worst_rel = max(worst_rel, float(np.sqrt(((a - b) ** 2).sum() / (b ** 2).sum())))
    assert 0 < worst_rel < 0.05


def test_int8_bundle_max_error_refuses_and_writes_nothing(tmp_path):
    _, _, _, weights = build_both(tmp_path, SPEC, scale=0.1)
    spec = tmp_path / "q.yaml"
    spec.write_text(SPEC + "quantize: {mode: int8}\n")
    np.savez(tmp_path / "w.npz", **weights)
    user_error(cli("build", spec, "--kv-cache", "--weights", tmp_path / "w.npz", "-o", tmp_path / "q8",
                   "--max-error", "1e-9"), "above --max-error")
    assert not (tmp_path / "q8").exists()


def test_ort_target_bundle_steps_equal_full_forward(tmp_path):
    """--kv-cache --target ort (contrib FastGelu in a GPT-like decoder): every cached
    step equals the plain standard-ONNX build's full forward within 1e-5."""
    from test_kv_cache import GPT
    from graphc.generation.bundle_write import build_bundle
    text = GPT.format(pos="learned_pe")
    plain, _, _, weights = build_both(tmp_path, text)
    bundle = tmp_path / "ort"
    config = build_bundle(tmp_path / "model.yaml", bundle, dict(weights), target="ort", verify=True)
    assert _ops(bundle / "decoder.onnx")["FastGelu"] == 2
    ids = np.random.default_rng(5).integers(3, 64, (2, 10))
    assert _incremental(plain, bundle, config, ids, prompt=4) < TOL


def test_int8_ort_bundle_blocks_rows_independent_and_near_float(tmp_path):
    """--kv-cache --quantize int8 --target ort: weight-only int8 in blocks of 32
    (MatMulNBits). Against a numpy oracle written from the block math, a row's logits
    equal the row run alone bit for bit (activations are quantized per row: with
    per-tensor dynamic int8, another row changes them), and they stay near the float
    bundle."""
    from graphc.generation.bundle_write import build_bundle
    from graphc.ir.quantize import quantize_weight_blocks
    from graphc.prims.quant import dequantize_blocks
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    q, s = quantize_weight_blocks(w, 32)
    assert q.shape == (24, 2, 32) and s.shape == (48,) and q.dtype == np.uint8
    back = dequantize_blocks(q, s)
    step = np.abs(w).reshape(2, 32, 24).max(axis=1) / 127              # per block of 32 rows, per column
    assert np.all(np.abs(back - w).reshape(2, 32, 24) <= step[:, None, :] / 2 + 1e-7)

    _, fbundle, config, weights = build_both(tmp_path, SPEC, scale=0.1)
    qbundle = tmp_path / "q8"
    build_bundle(tmp_path / "model.yaml", qbundle, dict(weights), quantize="int8", target="ort", verify=True)
    assert _ops(qbundle / "decoder.onnx")["MatMulNBits"] == 2 * 5          # qkv, out_proj, 3 FFN per layer
    ids = rng.integers(3, 80, (3, 6))
    outs = []
    for bundle in (qbundle, fbundle):
        d = Decoder(bundle, config, 3)
        outs.append(np.concatenate([d.step(ids[:, :4], np.tile(np.arange(4), (3, 1)))[:, -1:],
                                    d.step(ids[:, 4:5], np.full((3, 1), 4))], axis=1))
    alone = Decoder(qbundle, config, 1)
    a0 = alone.step(ids[:1, :4], np.arange(4)[None])[:, -1:]
    assert np.array_equal(a0, outs[0][:1, :1])                            # row 0 alone == row 0 in the batch
    rel = np.sqrt(((outs[0] - outs[1]) ** 2).sum() / (outs[1] ** 2).sum())
    assert 0 < rel < 0.05


def test_decode_graph_runs_on_empty_batches_and_steps(tmp_path):
    """The shared run-time dims and the flat projection keep empty tensors legal: a
    batch of 0 rows, a step of 0 new tokens, an empty cache."""
    _, bundle, config, _ = build_both(tmp_path, SPEC)
    s = session(bundle / "decoder.onnx")
    for batch, past, new in [(0, 3, 1), (2, 3, 0), (2, 0, 0), (0, 0, 0)]:
        feeds = {"input_ids": np.ones((batch, new), np.int64),
                 "attention_mask": np.ones((batch, past + new), np.int64),
                 "position_ids": np.tile(np.arange(past, past + new), (batch, 1)).astype(np.int64)}
        for e in config["cache"]:
            for k in ("past_key", "past_value"):
                feeds[e[k]] = np.zeros((batch, e["kv_heads"], past, e["head_dim"]), np.float32)
        logits, present = s.run(["logits", config["cache"][0]["present_key"]], feeds)
        assert logits.shape == (batch, new, 80) and present.shape == (batch, 2, past + new, 16)


def test_block_int8_standard_form_equals_the_numpy_reference():
    """QuantMatMulBlocks lowered with standard operators (any target) computes the
    float product with the dequantized weights, as its numpy reference does."""
    from graphc.ir.quantize import quantize_weight_blocks
    from graphc.prims.quant import dequantize_blocks
    from graphc.ir.graph import Graph, OpNode, TensorType, ValueInfo
    from graphc.lower import lower
    from graphc.lower.model import serialize
    from graphc.shapes import Dim
    from helpers import ort_run
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    x = rng.standard_normal((3, 5, 64)).astype(np.float32)
    q, s = quantize_weight_blocks(w, 32)
    g = Graph("blocks")
    shape = lambda *ds: tuple(Dim.const(d) if isinstance(d, int) else Dim.sym(d) for d in ds)  # noqa: E731
    g.add_value(ValueInfo("x", TensorType("float32", shape("b", 5, 64)), "input"))
    g.inputs.append("x")
    g.add_value(ValueInfo("w", TensorType("uint8", shape(24, 2, 32)), "const", data=q))
    g.add_value(ValueInfo("s", TensorType("float32", shape(48)), "const", data=s))
    g.add_value(ValueInfo("y", TensorType("float32", shape("b", 5, 24))))
    g.add_op(OpNode("mm", "QuantMatMulBlocks", ["x", "w", "s"], ["y"]))
    g.outputs["y"] = "y"
    got = ort_run(serialize(lower(g, 17)), {"x": x})["y"]
    assert np.abs(got - x @ dequantize_blocks(q, s)).max() < 1e-5


def test_last_logits_bundle_equals_the_last_position_of_the_default(tmp_path):
    """--logits last (opt-in): logits [batch, 1, vocab] equal to the default bundle's last
    position at every step (prompt, then one token), float and int8 (the head quantized
    too), and the config says so; a plain build refuses the flag."""
    from graphc.generation.bundle_write import build_bundle
    _, fbundle, config, weights = build_both(tmp_path, SPEC)
    lbundle = tmp_path / "last"
    lconfig = build_bundle(tmp_path / "model.yaml", lbundle, dict(weights), logits="last", verify=True)
    assert lconfig["logits_positions"] == "last" and "logits_positions" not in config
    ids = np.random.default_rng(7).integers(3, 80, (2, 7))
    full, last = Decoder(fbundle, config, 2), Decoder(lbundle, lconfig, 2)
    for t0, t1 in [(0, 5), (5, 6), (6, 7)]:
        pos = np.tile(np.arange(t0, t1), (2, 1))
        a, b = full.step(ids[:, t0:t1], pos), last.step(ids[:, t0:t1], pos)
        assert b.shape == (2, 1, 80) and np.abs(a[:, -1:] - b).max() < TOL
    (tmp_path / "q.yaml").write_text(SPEC + "quantize: {mode: int8, head: true}\n")
    qconfig = build_bundle(tmp_path / "q.yaml", tmp_path / "q8", dict(weights), logits="last")
    assert any("error against float, output logits" in n for n in qconfig["notes"])
    q = Decoder(tmp_path / "q8", qconfig, 2)
    assert q.step(ids[:, :5], np.tile(np.arange(5), (2, 1))).shape == (2, 1, 80)
    user_error(cli("build", tmp_path / "model.yaml", "--logits", "last", "-o", tmp_path / "m.onnx"),
               "--logits last needs --kv-cache")


def test_last_logits_with_a_tied_head(tmp_path):
    """A head tied to the embedding (its weight a run-time Transpose of the table)."""
    from graphc.generation.bundle_write import build_bundle
    from test_kv_cache import GPT
    _, fbundle, config, weights = build_both(tmp_path, GPT.format(pos="learned_pe"))
    lconfig = build_bundle(tmp_path / "model.yaml", tmp_path / "last", dict(weights), logits="last")
    ids = np.random.default_rng(8).integers(3, 64, (2, 6))
    full, last = Decoder(fbundle, config, 2), Decoder(tmp_path / "last", lconfig, 2)
    for t0, t1 in [(0, 4), (4, 5)]:
        pos = np.tile(np.arange(t0, t1), (2, 1))
        a, b = full.step(ids[:, t0:t1], pos), last.step(ids[:, t0:t1], pos)
        assert b.shape == (2, 1, 64) and np.abs(a[:, -1:] - b).max() < TOL


def test_generate_runs_last_logits_bundles_unchanged(tmp_path):
    """graphc.generate (greedy and beam search, left-padded rows) gives the same ids with
    a --logits last bundle as with the default one."""
    import graphc
    from graphc.generation.bundle_write import build_bundle
    _, fbundle, _, weights = build_both(tmp_path, SPEC, scale=0.3)
    build_bundle(tmp_path / "model.yaml", tmp_path / "last", dict(weights), logits="last")
    ids = np.array([[0, 0, 5, 17, 30], [9, 8, 7, 6, 5]])
    for beams in (1, 3):
        a = graphc.generate(fbundle, input_ids=ids, max_new_tokens=6, num_beams=beams)
        b = graphc.generate(tmp_path / "last", input_ids=ids, max_new_tokens=6, num_beams=beams)
        assert np.array_equal(a, b) and a.shape[0] == 2


def test_int8_ort_blocks_take_a_k_that_is_not_a_multiple_of_the_block(tmp_path):
    """A product over K = 80 (d_ff) is 2.5 blocks of 32: the last block is padded with
    zero rows, as MatMulNBits lays it out. Such a product fell back silently to
    per-tensor dynamic int8 (DynamicQuantizeLinear + MatMulInteger), so a row's logits
    depended on the other rows of the batch (up to 0.01 on a tiny LLaMA-like import),
    which is what --target ort's blocks are there to prevent. Oracles: the block math
    in numpy, the standard-form lowering against it, and each row run alone."""
    from graphc.generation.bundle_write import build_bundle
    from graphc.ir.graph import Graph, OpNode, TensorType, ValueInfo
    from graphc.ir.quantize import quantize_weight_blocks
    from graphc.lower import lower
    from graphc.lower.model import serialize
    from graphc.prims.quant import dequantize_blocks
    from graphc.shapes import Dim
    from helpers import ort_run
    rng = np.random.default_rng(2)
    w = rng.standard_normal((40, 24)).astype(np.float32)
    q, s = quantize_weight_blocks(w, 32)
    assert q.shape == (24, 2, 32) and s.shape == (48,)
    assert (q[:, 1, 8:] == 128).all()                                   # the padding: zero, stored + 128
    back = dequantize_blocks(q, s, 40)
    for b, rows in ((0, slice(0, 32)), (1, slice(32, 40))):             # per block, per column: half a step
        step = np.abs(w[rows]).max(axis=0) / 127
        assert np.all(np.abs(back[rows] - w[rows]) <= step / 2 + 1e-7), b
    g = Graph("blocks")
    shape = lambda *ds: tuple(Dim.const(d) if isinstance(d, int) else Dim.sym(d) for d in ds)  # noqa: E731
    g.add_value(ValueInfo("x", TensorType("float32", shape("b", 40)), "input"))
    g.inputs.append("x")
    g.add_value(ValueInfo("w", TensorType("uint8", shape(24, 2, 32)), "const", data=q))
    g.add_value(ValueInfo("s", TensorType("float32", shape(48)), "const", data=s))
    g.add_value(ValueInfo("y", TensorType("float32", shape("b", 24))))
    g.add_op(OpNode("mm", "QuantMatMulBlocks", ["x", "w", "s"], ["y"]))
    g.outputs["y"] = "y"
    x = rng.standard_normal((3, 40)).astype(np.float32)
    assert np.abs(ort_run(serialize(lower(g, 17)), {"x": x})["y"] - x @ back).max() < 1e-5

    _, fbundle, config, weights = build_both(tmp_path, SPEC.replace("d_ff: 96", "d_ff: 80"), scale=0.1)
    qbundle = tmp_path / "q8"
    build_bundle(tmp_path / "model.yaml", qbundle, dict(weights), quantize="int8", target="ort", verify=True)
    ops = _ops(qbundle / "decoder.onnx")
    assert ops["MatMulNBits"] == 2 * 5 and ops["MatMulInteger"] == 0
    ids = rng.integers(3, 80, (3, 6))
    outs = []
    for bundle in (qbundle, fbundle):
        d = Decoder(bundle, config, 3)
        outs.append(np.concatenate([d.step(ids[:, :4], np.tile(np.arange(4), (3, 1)))[:, -1:],
                                    d.step(ids[:, 4:5], np.full((3, 1), 4))], axis=1))
    for r in range(3):
        alone = Decoder(qbundle, config, 1)
        got = np.concatenate([alone.step(ids[r:r + 1, :4], np.arange(4)[None])[:, -1:],
                              alone.step(ids[r:r + 1, 4:5], np.full((1, 1), 4))], axis=1)
        assert np.array_equal(got[0], outs[0][r])                     # a row alone == the row in the batch
    rel = np.sqrt(((outs[0] - outs[1]) ** 2).sum() / (outs[1] ** 2).sum())
    assert 0 < rel < 0.05
