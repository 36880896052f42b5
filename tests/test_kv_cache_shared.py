"""The shared cache layout (graphc build --kv-cache --target ort --cache-layout shared):
one buffer per layer that GroupQueryAttention updates in place.

Oracles: the primitive's numpy reference against attention written from the math over
concatenated caches (graphc.prims.attention_core's reference, fully masked rows left
out: the two conventions differ only there and nothing reads those rows); the bundle's
steps against the plain (no-cache) build's full forward, within 1e-5; a left-padded
batch and beam search against the default (concat) bundle of the same weights, whose
steps and ids are themselves checked against the full forward and transformers
(test_kv_cache.py, test_hf_generate.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphc
from graphc.expand import build_graph
from graphc.generation.bundle import load_bundle
from graphc.generation.bundle_write import build_bundle
from graphc.generation.runner import DecoderRunner
from graphc.prims.attention_core import attention_reference
from graphc.prims.shared_cache import shared_cache_reference
from graphc.specfile import load_spec
from helpers import cli, compile_text, random_weights, user_error
from kv_helpers import session
from test_kv_cache import GPT, LLAMA, T5_DECODER, TOL


def test_reference_is_attention_over_the_concatenated_cache():
    """Prompt (one row left-padded by 2), then 3 one-token steps, H=4 query heads on Hkv=2."""
    rng = np.random.default_rng(0)
    b, h, hkv, d, cap = 2, 4, 2, 8, 12
    pk, pv = np.zeros((b, hkv, cap, d), np.float32), np.zeros((b, hkv, cap, d), np.float32)
    keys, values = np.zeros((b, hkv, 0, d), np.float32), np.zeros((b, hkv, 0, d), np.float32)
    real = np.zeros((b, 0), bool)
    for s, pads in ((5, (0, 2)), (1, (0, 0)), (1, (0, 0)), (1, (0, 0))):
        q = rng.standard_normal((b, s, h * d)).astype(np.float32)
        k = rng.standard_normal((b, s, hkv * d)).astype(np.float32)
        v = rng.standard_normal((b, s, hkv * d)).astype(np.float32)
        new_real = np.ones((b, s), bool)
        for row, p in enumerate(pads):
            new_real[row, :p] = False
        real = np.concatenate([real, new_real], 1)
        total = real.shape[1]
        masked = (np.arange(total)[None, :] > (total - s + np.arange(s))[:, None])[None, None] | ~real[:, None, None, :]
        # the bias carries the padding only: the causal rule is the primitive's own
        bias = np.broadcast_to(np.where(~real[:, None, None, :], np.finfo(np.float32).min, 0),
                               (b, 1, s, total)).astype(np.float32)
        y, pk, pv = shared_cache_reference(q, k, v, pk, pv, bias, h, hkv)
        heads = lambda t, n: t.reshape(b, s, n, d).transpose(0, 2, 1, 3)     # [B, S, n*D] -> [B, n, S, D]
        keys, values = np.concatenate([keys, heads(k, hkv)], 2), np.concatenate([values, heads(v, hkv)], 2)
        want = attention_reference(heads(q, h), keys, values, masked=masked).transpose(0, 2, 1, 3).reshape(b, s, h * d)
        rows = new_real                                      # queries with at least one visible key
        assert np.abs(y[rows] - want[rows]).max() < 1e-5
        np.testing.assert_array_equal(pk[:, :, :total], keys)
        np.testing.assert_array_equal(pv[:, :, :total], values)
        assert not pk[:, :, total:].any()                    # nothing written past the filled columns


def _bundles(tmp_path, text, seed=0):
    """(plain model bytes, concat bundle, shared bundle) with the same weights."""
    spec = tmp_path / "model.yaml"
    spec.write_text(text)
    weights = random_weights(build_graph(load_spec(spec)), seed, 0.15)
    plain, _, _ = compile_text(text, dict(weights))
    build_bundle(spec, tmp_path / "concat", dict(weights))
    config = build_bundle(spec, tmp_path / "shared", dict(weights), target="ort", cache_layout="shared", verify=True)
    assert config["cache_layout"] == "shared"
    return plain, tmp_path / "concat", tmp_path / "shared"


@pytest.mark.parametrize("text", [LLAMA.format(rope="half"), LLAMA.format(rope="interleaved"),
                                  GPT.format(pos="learned_pe")], ids=["rope-half", "rope-interleaved", "gpt"])
def test_steps_equal_full_forward(tmp_path, text):
    plain, _, shared = _bundles(tmp_path, text)
    ids = np.random.default_rng(3).integers(3, 60, (2, 10))
    full = session(plain)
    ref = full.run(None, {full.get_inputs()[0].name: ids})[0]            # [B, S, V]
    for capacity in (7, 0):                                              # 0: the buffers grow as it goes
        dec = DecoderRunner(load_bundle(shared), threads=1)
        got = dec.start(ids[:, :3], np.ones((2, 3), np.int64), capacity)
        worst = float(np.abs(got - ref[:, 2]).max())
        for t in range(3, ids.shape[1]):
            got = dec.step(ids[:, t])
            worst = max(worst, float(np.abs(got - ref[:, t]).max()))
        assert worst <= TOL, f"capacity {capacity}: max abs diff {worst:.2e}"


def test_left_padded_batch_and_beams_equal_the_concat_bundle(tmp_path):
    _, concat, shared = _bundles(tmp_path, LLAMA.format(rope="half"), seed=4)
    prompts = [[1, 17, 40, 8, 33, 25], [1, 60, 4], [1, 33, 71, 12]]
    a = DecoderRunner(load_bundle(concat), threads=1)
    b = DecoderRunner(load_bundle(shared), threads=1)
    ids = np.zeros((3, 6), np.int64)
    mask = np.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, 6 - len(p):], mask[r, 6 - len(p):] = p, 1
    worst = float(np.abs(a.start(ids, mask, 4) - b.start(ids, mask, 4)).max())
    rng = np.random.default_rng(5)
    for step in range(4):
        tokens = rng.integers(3, 80, 3)
        worst = max(worst, float(np.abs(a.step(tokens) - b.step(tokens)).max()))
        if step == 1:                                                    # a beam reorder in the middle
            a.reorder([2, 2, 0])
            b.reorder([2, 2, 0])
    assert worst <= TOL
    for kw in ({}, {"num_beams": 3}, {"num_beams": 2, "length_penalty": 0.5}):
        want = graphc.generate(concat, input_ids=ids, max_new_tokens=8, **kw)
        got = graphc.generate(shared, input_ids=ids, max_new_tokens=8, **kw)
        np.testing.assert_array_equal(got, want)
    for r, p in enumerate(prompts):                                    # a row alone: the same ids
        alone = graphc.generate(shared, input_ids=[p], max_new_tokens=8)[0]
        np.testing.assert_array_equal(alone, graphc.generate(shared, input_ids=ids, max_new_tokens=8)[r, :len(alone)])


def test_genai_config_shares_the_buffer(tmp_path):
    _, _, shared = _bundles(tmp_path, GPT.format(pos="learned_pe"))
    cfg = json.loads((shared / "genai_config.json").read_text())
    assert cfg["search"]["past_present_share_buffer"] is True
    plain = json.loads((tmp_path / "concat" / "genai_config.json").read_text())
    assert plain["search"]["past_present_share_buffer"] is False


def test_layout_errors(tmp_path):
    spec = tmp_path / "gpt.yaml"
    spec.write_text(GPT.format(pos="learned_pe"))
    user_error(cli("build", spec, "--kv-cache", "--cache-layout", "shared", "-o", tmp_path / "b"),
               "--cache-layout shared needs --target ort")
    user_error(cli("build", spec, "--cache-layout", "shared", "--target", "ort", "-o", tmp_path / "m.onnx"),
               "--cache-layout needs --kv-cache")
    t5 = tmp_path / "t5.yaml"
    t5.write_text(T5_DECODER)
    lines = T5_DECODER.splitlines()
    row = next(i for i, line in enumerate(lines) if "attn_mask: bias" in line)
    user_error(cli("build", t5, "--kv-cache", "--target", "ort", "--cache-layout", "shared", "-o", tmp_path / "c"),
               "no attn_mask", located=str(t5),
               where=f"{row + 1}:{lines[row].index('attn_mask: bias') + len('attn_mask: ') + 1}")   # at the port's value
    assert not any(p.name in ("b", "c", "m.onnx") for p in tmp_path.iterdir())


def test_run_refuses_more_filled_columns_than_the_buffer_holds(tmp_path):
    """The contract records total_seq <= past_seq (the buffer's capacity) and seq <= total_seq,
    so `graphc run` refuses in graphc's words what GroupQueryAttention would refuse in its own."""
    _, _, shared = _bundles(tmp_path, GPT.format(pos="learned_pe"))
    model = shared / "decoder.onnx"
    user_error(cli("run", model, "--random", "--dim", "past_seq=4", "--dim", "total_seq=9", "--dim", "seq=1"),
               "dim 'total_seq' is 9, but layer", hint="use total_seq <= past_seq")
    user_error(cli("run", model, "--random", "--dim", "past_seq=12", "--dim", "total_seq=3", "--dim", "seq=5"),
               "dim 'seq' is 5", hint="use seq <= total_seq")
    rc, out, err = cli("run", model, "--random", "--dim", "past_seq=12", "--dim", "total_seq=9", "--dim", "seq=1")
    assert rc == 0, err
    assert "present.1.key: float32[2, 4, 12, 8]" in out


def test_last_position_logits_and_int8_combine_with_the_shared_layout(tmp_path):
    """--logits last and --quantize int8 (MatMulNBits) on a shared-layout bundle: the last
    position's logits equal the full-logits shared bundle's (float), and the int8 bundle's
    rows do not depend on the rest of the batch (MatMulNBits quantizes per row)."""
    spec = tmp_path / "model.yaml"
    spec.write_text(LLAMA.format(rope="half"))
    weights = random_weights(build_graph(load_spec(spec)), 6, 0.15)
    kw = dict(target="ort", cache_layout="shared")
    build_bundle(spec, tmp_path / "all", dict(weights), **kw)
    build_bundle(spec, tmp_path / "last", dict(weights), logits="last", **kw)
    build_bundle(spec, tmp_path / "int8", dict(weights), quantize="int8", **kw)
    ids = np.array([[0, 0, 5, 6, 7, 8], [4, 3, 2, 5, 6, 7]])
    mask = (ids != 0).astype(np.int64)
    a, b = (DecoderRunner(load_bundle(tmp_path / d), threads=1) for d in ("all", "last"))
    worst = float(np.abs(a.start(ids, mask, 3) - b.start(ids, mask, 3)).max())
    for t in (9, 11, 13):
        worst = max(worst, float(np.abs(a.step(np.array([t, t])) - b.step(np.array([t, t]))).max()))
    assert worst <= 1e-6
    batch = graphc.generate(tmp_path / "int8", input_ids=ids, max_new_tokens=6)
    for r in range(2):
        alone = graphc.generate(tmp_path / "int8", input_ids=[ids[r][mask[r] == 1].tolist()], max_new_tokens=6)[0]
        np.testing.assert_array_equal(alone, batch[r, :len(alone)])


def test_flop_rule_counts_both_products_and_the_softmax():
    from graphc.prims import PRIMS
    from graphc.shapes import Dim
    from graphc.tensors import TensorType
    t = lambda *s: TensorType("float32", tuple(Dim.sym(d) if isinstance(d, str) else Dim.const(d) for d in s))
    ins = [t("b", "s", (4 + 2 * 2) * 8), None, None, t("b", 2, "c", 8), t("b", 2, "c", 8), t("b", 1, "s", "t")]
    dims = {"b": 3, "s": 5, "t": 11, "c": 16}
    b, h, s, tt, d = 3, 4, 5, 11, 8          # 4 query heads on 2 kv heads of width 8, packed q/k/v
    got = PRIMS["SharedCacheAttention"].flops({"heads": h, "kv_heads": 2}, ins, [], dims)
    assert got == b * h * s * tt * (2 * d + 2 * d + 1)     # q·kᵀ, p·v (one multiply-add = 2), softmax
