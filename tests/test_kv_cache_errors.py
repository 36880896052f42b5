"""Bad input to --kv-cache builds and to the generation: section: located
errors (path:line:col at the offending key or value), exit 2, a hint, no
traceback, and nothing written (no bundle directory, no temporary left)."""
from __future__ import annotations

import pytest

from helpers import TINY_DECODER, TINY_DECODER_GEN, cli, user_error

BASE, GEN = TINY_DECODER, TINY_DECODER_GEN

CASES = {
    # name: (spec text, expected 'line:col: error: ...' prefix, a fragment of the hint or None)
    "no_section": (BASE, "1:1: error: --kv-cache needs a 'generation:' section", "generation:"),
    "unknown_input": (BASE + GEN.replace("tokens: tokens", "tokens: token"),
                      "12:22: error: generation 'tokens' names 'token', which is not an input", "did you mean 'tokens'"),
    "float_tokens": (BASE.replace("tokens: {dtype: int64", "tokens: {dtype: float32") + GEN,
                     "12:22: error: generation 'tokens': input 'tokens' must hold token ids", "declared at"),
    "unknown_output": (BASE + GEN.replace("logits: logits", "logits: logit"),
                       "12:38: error: generation 'logits' names 'logit', which is not an output", "did you mean"),
    "eos_outside_vocab": (BASE + GEN.replace("eos: 2", "eos: 40"),
                          "12:59: error: generation 'eos' is 40, outside the vocabulary of 40 tokens", "last axis"),
    "unknown_key": (BASE + GEN.replace("pad: 0", "pad: 0, bso: 1"),
                    "12:70: error: unknown key 'bso' in 'generation'", "did you mean 'bos'"),
    "no_causal_attention": (BASE.replace(", causal: true", "").replace(
        "- {name: attn, kind: multihead_attention, input: emb, heads: 2}",
        "- {name: attn, kind: relu, input: emb}") + GEN,
        "12:13: error: --kv-cache: the model has no causal self-attention", "causal: true"),
    "non_causal_attention": (BASE.replace(", causal: true", "") + GEN,
                             "8:12: error: multihead_attention 'attn': non-causal self-attention over the generated",
                             "causal: true"),
    "logits_not_per_token": (BASE.replace("outputs:\n  logits: head", "  - {name: pooled, kind: reshape, input: head, shape: [batch, -1]}\n"
                                          "outputs:\n  logits: pooled") + GEN,
                             "13:38: error: generation 'logits': output 'logits' must be float [batch, seq, vocab]",
                             None),
    "cross_attention_over_tokens": (BASE.replace(
        "- {name: attn, kind: multihead_attention, input: emb, heads: 2, causal: true}",
        "- {name: other, kind: linear, input: emb, out_features: 16}\n"
        "  - {name: attn, kind: multihead_attention, inputs: {query: emb, key: other}, heads: 2, causal: true}")
        .replace("outputs:\n  logits: head", "outputs:\n  logits: head") + GEN,
        "9:71: error: multihead_attention 'attn': attention whose keys run over the generated tokens", "self-attention"),
    "static_seq": (BASE.replace("shape: [batch, seq]", "shape: [batch, 8]") + GEN,
                   "12:22: error: the tokens input's sequence length must be a symbolic dim", "different number"),
}


SHARED_DIM = """graphc: 1
dims: {batch: 2, seq: 8}
inputs:
  src: {dtype: int64, shape: [batch, seq]}
  tgt: {dtype: int64, shape: [batch, seq]}
layers:
  - {name: e, kind: embedding, input: src, num_embeddings: 30, embedding_dim: 16}
  - {name: f, kind: embedding, input: tgt, num_embeddings: 30, embedding_dim: 16}
  - {name: t, kind: transformer, inputs: {src: e, tgt: f}, heads: 2, encoder_layers: 1, decoder_layers: 1, d_ff: 32}
  - {name: head, kind: linear, input: t, out_features: 30}
outputs: {logits: head}
generation: {tokens: tgt, source: src, logits: logits, bos: 1, pad: 0}
"""
CASES["source_shares_the_tokens_dim"] = (SHARED_DIM, "12:35: error: generation 'source' and 'tokens' share the "
                                         "sequence length 'seq'", "src_seq")

# a spec for plain builds too: its causal attention reads the tokens' padding mask (Hugging Face style)
MASKED = BASE.replace("layers:\n", "  mask: {dtype: int64, shape: [batch, seq]}\nlayers:\n", 1).replace(
    "input: emb, heads: 2, causal: true}",
    "inputs: {query: emb, key_padding_mask: mask}, key_padding_polarity: keep, heads: 2, causal: true}")
MASK_GEN = GEN.replace("tokens: tokens,", "tokens: tokens, tokens_mask: mask,")
CASES.update({
    "mask_without_role": (MASKED + GEN, "13:22: error: input 'mask' has no role in generation", "tokens_mask"),
    "tokens_mask_float": (MASKED.replace("mask: {dtype: int64", "mask: {dtype: float32") + MASK_GEN,
                          "13:43: error: generation 'tokens_mask': input 'mask' must be int64 or int32", "declared at"),
    "tokens_mask_shape": (MASKED.replace("mask: {dtype: int64, shape: [batch, seq]}",
                                         "mask: {dtype: int64, shape: [seq, batch]}") + MASK_GEN,
                          "13:43: error: generation 'tokens_mask': input 'mask' must have the tokens' shape "
                          "[batch, seq], got [seq, batch]", "declared at"),
    "tokens_mask_is_tokens": (MASKED + MASK_GEN.replace("tokens_mask: mask", "tokens_mask: tokens"),
                              "13:43: error: generation 'tokens_mask' names the tokens input", None),
    "tokens_mask_read_as_padding": (MASKED.replace("key_padding_polarity: keep, ", "") + MASK_GEN,
                                    "9:84: error: multihead_attention 'attn': the generation tokens_mask (1 = real "
                                    "token) is read here with key_padding_polarity 'masked'", "keep"),
})


@pytest.mark.parametrize("name", sorted(CASES))
def test_kv_cache_bad_input_is_located(tmp_path, name):
    text, expect, hint = CASES[name]
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    out = tmp_path / "bundle"
    where, message = expect.split(": error: ", 1)
    stderr = user_error(cli("build", spec, "--kv-cache", "-o", out), message, located=spec, where=where, hint=hint)
    assert stderr.startswith(f"{spec}:{expect}"), stderr      # the message leads the first line
    assert hint is None or "hint:" in stderr, stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]          # no temporary left behind


def test_plain_check_reports_generation_problems_too(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(BASE + GEN.replace("pad: 0", "pad: 99"))
    user_error(cli("check", spec), "generation 'pad' is 99, outside the vocabulary of 40 tokens", located=spec)


def test_a_directory_that_is_not_a_bundle_is_not_replaced(tmp_path):
    spec = tmp_path / "ok.yaml"
    spec.write_text(BASE + GEN)
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    user_error(cli("build", spec, "--kv-cache", "-o", out), "not a bundle")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # an earlier bundle is replaced whole
    rc, _, stderr = cli("build", spec, "--kv-cache", "-o", tmp_path / "b")
    assert rc == 0, stderr
    rc, _, stderr = cli("build", spec, "--kv-cache", "-o", tmp_path / "b", "--seed", "3")
    assert rc == 0, stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir())[:2] == ["decoder.onnx", "genai_config.json"] or \
        sorted(p.name for p in (tmp_path / "b").iterdir()) == ["decoder.onnx", "graphc_generation.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "ok.yaml", "stuff"]


def test_bad_weights_leave_nothing(tmp_path):
    import numpy as np
    spec = tmp_path / "ok.yaml"
    spec.write_text(BASE + GEN)
    np.savez(tmp_path / "w.npz", nothing=np.zeros(3, np.float32))
    user_error(cli("build", spec, "--kv-cache", "-o", tmp_path / "b", "--weights", tmp_path / "w.npz"),
               ("do not match the spec's parameters", "unexpected: nothing [3]", "missing: emb.weight"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml", "w.npz"]


def test_int8_bundle_builds_and_reports_its_error(tmp_path):
    """--kv-cache with int8 (the spec's quantize: section) builds and says its measured
    error (tests/test_kv_cache_step_forms.py checks the numbers)."""
    spec = tmp_path / "q.yaml"
    spec.write_text(BASE + GEN + "quantize: {mode: int8}\n")
    rc, _, stderr = cli("build", spec, "--kv-cache", "-o", tmp_path / "b")
    assert rc == 0, stderr
    assert "quantized" in stderr and "error against float, output logits" in stderr
    assert (tmp_path / "b" / "decoder.onnx").is_file()


def test_weights_file_with_ignored_names(tmp_path):
    """A weights file loads as in a plain build: --ignore-weights drops extra tensors."""
    import numpy as np
    from graphc.expand import build_graph
    from graphc.specfile import load_spec
    spec = tmp_path / "ok.yaml"
    spec.write_text(BASE + GEN)
    g = build_graph(load_spec(spec))
    rng = np.random.default_rng(0)
    w = {p.name: rng.standard_normal(p.type.concrete_shape()).astype(np.float32) for p in g.params()}
    np.savez(tmp_path / "w.npz", extra_thing=np.zeros(2, np.float32), **w)
    rc, _, stderr = cli("build", spec, "--kv-cache", "-o", tmp_path / "b", "--weights", tmp_path / "w.npz",
                        "--ignore-weights", "extra_thing")
    assert rc == 0, stderr
    import onnx
    m = onnx.load(str(tmp_path / "b" / "decoder.onnx"))
    emb = next(t for t in m.graph.initializer if t.name == "emb.weight")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(emb), w["emb.weight"])
