"""KV-cache decoders (graphc build --kv-cache), decoder-only: at every step the
cached decoder's logits equal the plain (no-cache) build's logits at that
position, run on the whole sequence, within 1e-5 (float32): the oracle is the
plain build, which has no cache, no position_ids and a top-left causal mask, so
the two share only the weights and the layer math.

Covered: learned and sinusoidal positions, rope (half and interleaved) with
grouped-query attention, RMSNorm and SwiGLU (LLaMA-like), attention inside a
'repeat' block, and left-padded batches, whose rows are compared with each
row run alone through the plain build (positions = cumsum(mask) - 1)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import compile_text
from kv_helpers import Decoder, build_both, read_config, session

TOL = 1e-5

GPT = """graphc: 1
name: tiny_gpt
dims: {{batch: 2, seq: 8}}
params: {{vocab: 64, d_model: 32, heads: 4, max_len: 48}}
inputs:
  tokens: {{dtype: int64, shape: [batch, seq], range: [0, vocab]}}
layers:
  - {{name: wte, kind: embedding, input: tokens, num_embeddings: vocab, embedding_dim: d_model}}
  - {{name: wpe, kind: {pos}, input: wte, max_len: max_len}}
  - {{name: blocks, kind: transformer_encoder, input: wpe, causal: true, norm_first: true, final_norm: true,
     layers: 2, heads: heads, d_ff: 64, activation: gelu_tanh}}
  - {{name: lm_head, kind: linear, input: blocks, out_features: vocab, bias: false, tie: wte.weight}}
outputs:
  logits: lm_head
generation: {{tokens: tokens, logits: logits, bos: 1, eos: 2, pad: 0}}
"""

LLAMA = """graphc: 1
name: tiny_llama
dims: {{batch: 2, seq: 8}}
params: {{vocab: 80, d_model: 64, heads: 4, kv_heads: 2}}
inputs:
  tokens: {{dtype: int64, shape: [batch, seq], range: [0, vocab]}}
layers:
  - {{name: embed_tokens, kind: embedding, input: tokens, num_embeddings: vocab, embedding_dim: d_model}}
  - {{name: layers, kind: transformer_encoder, input: embed_tokens, causal: true, norm_first: true,
     final_norm: true, layers: 2, heads: heads, kv_heads: kv_heads, d_ff: 96, activation: swiglu,
     norm: rms_norm, eps: 1.0e-6, bias: false, rope: {rope}, rope_max_len: 64}}
  - {{name: lm_head, kind: linear, input: layers, out_features: vocab, bias: false}}
outputs:
  logits: lm_head
generation: {{tokens: tokens, logits: logits, bos: 1, eos: [2, 3], pad: 0}}
"""

REPEAT = """graphc: 1
name: tiny_blocks
dims: {batch: 2, seq: 8}
params: {vocab: 50, d_model: 32}
inputs:
  tokens: {dtype: int64, shape: [batch, seq], range: [0, vocab]}
blocks:
  block:
    inputs: [x]
    layers:
      - {name: ln, kind: layer_norm, input: x}
      - {name: attn, kind: multihead_attention, input: ln, heads: 4, kv_heads: 2, causal: true, rope: interleaved}
      - {name: res, kind: add, inputs: [x, attn]}
    outputs: {y: res}
layers:
  - {name: emb, kind: embedding, input: tokens, num_embeddings: vocab, embedding_dim: d_model}
  - {name: body, kind: block, input: emb, repeat: 2}
  - {name: head, kind: linear, input: body, out_features: vocab}
  - {name: lp, kind: log_softmax, input: head}
outputs:
  log_probs: lp
generation: {tokens: tokens, logits: log_probs, eos: 2, pad: 0}
"""


def _incremental(plain: bytes, bundle, config, ids: np.ndarray, prompt: int) -> float:
    """Worst |cached - full| over a prompt step then one token per step."""
    full = session(plain)
    ref = full.run(None, {full.get_inputs()[0].name: ids})[0]
    dec = Decoder(bundle, config, ids.shape[0])
    b, n = ids.shape
    worst = 0.0
    t = 0
    for size in [prompt] + [1] * (n - prompt):
        pos = np.tile(np.arange(t, t + size), (b, 1))
        got = dec.step(ids[:, t:t + size], pos)
        worst = max(worst, float(np.abs(got - ref[:, t:t + size]).max()))
        t += size
    return worst


@pytest.mark.parametrize("pos", ["learned_pe", "sinusoidal_pe"])
def test_gpt_steps_equal_full_forward(tmp_path, pos):
    plain, bundle, config, _ = build_both(tmp_path, GPT.format(pos=pos))
    assert config["max_positions"] == 48 and config["vocab_size"] == 64
    ids = np.random.default_rng(1).integers(3, 64, (2, 11))
    assert _incremental(plain, bundle, config, ids, prompt=4) <= TOL


@pytest.mark.parametrize("rope", ["half", "interleaved"])
def test_llama_like_gqa_rope_steps_equal_full_forward(tmp_path, rope):
    plain, bundle, config, _ = build_both(tmp_path, LLAMA.format(rope=rope))
    assert [(e["kv_heads"], e["head_dim"]) for e in config["cache"]] == [(2, 16), (2, 16)]   # GQA cache
    assert config["eos"] == [2, 3] and config["max_positions"] == 64
    ids = np.random.default_rng(2).integers(3, 80, (2, 10))
    assert _incremental(plain, bundle, config, ids, prompt=3) <= TOL


def test_fused_attention_opset23_steps_equal_full_forward(tmp_path):
    """impl: fused (the ONNX Attention operator, opset 23, inside an If that guards empty
    inputs): its branch reads the present key/value, which are graph outputs."""
    text = LLAMA.format(rope="interleaved").replace("rope_max_len: 64", "rope_max_len: 64, impl: fused")
    plain, bundle, config, _ = build_both(tmp_path, text, opset=23)
    ids = np.random.default_rng(6).integers(3, 80, (2, 7))
    assert _incremental(plain, bundle, config, ids, prompt=2) <= TOL


def test_attention_in_repeat_block_steps_equal_full_forward(tmp_path):
    plain, bundle, config, _ = build_both(tmp_path, REPEAT)
    assert len(config["cache"]) == 2 and config["logits_kind"] == "log_probs"
    ids = np.random.default_rng(3).integers(3, 50, (2, 9))
    assert _incremental(plain, bundle, config, ids, prompt=1) <= TOL


@pytest.mark.parametrize("text", [GPT.format(pos="learned_pe"), LLAMA.format(rope="half")], ids=["gpt", "llama"])
def test_left_padded_batch_rows_equal_each_row_alone(tmp_path, text):
    """Rows of different lengths, left-padded with pad: each row's logits at its real
    tokens, prompt and every new token, equal the plain build run on that row alone."""
    plain, bundle, config, _ = build_both(tmp_path, text)
    full = session(plain)
    rng = np.random.default_rng(4)
    vocab = config["vocab_size"]
    lengths, new = [5, 2, 3], 4
    rows = [rng.integers(3, vocab, n + new) for n in lengths]          # prompt + the tokens fed later
    width = max(lengths)
    prompt = np.zeros((3, width), np.int64)
    real = np.zeros((3, width), np.int64)
    for r, n in enumerate(lengths):
        prompt[r, width - n:] = rows[r][:n]
        real[r, width - n:] = 1
    positions = np.maximum(np.cumsum(real, axis=1) - 1, 0)             # transformers' left-padding positions
    dec = Decoder(bundle, config, 3)
    got = [dec.step(prompt, positions, real)]
    last = positions[:, -1:]
    for k in range(new):
        last = last + 1
        step_ids = np.array([[rows[r][lengths[r] + k]] for r in range(3)])
        got.append(dec.step(step_ids, last))
    worst = 0.0
    for r, n in enumerate(lengths):
        alone = full.run(None, {full.get_inputs()[0].name: rows[r][None, :]})[0][0]    # [n + new, vocab]
        cached = np.concatenate([got[0][r, width - n:]] + [g[r] for g in got[1:]])
        worst = max(worst, float(np.abs(cached - alone).max()))
    assert worst <= TOL


def test_bundle_io_names_and_shapes(tmp_path):
    """The decoder's I/O is the bundle contract (docs/generation.md)."""
    import onnx
    _, bundle, config, _ = build_both(tmp_path, LLAMA.format(rope="half"))
    assert sorted(p.name for p in bundle.iterdir()) == ["decoder.onnx", "graphc_generation.json"] or \
        "genai_config.json" in [p.name for p in bundle.iterdir()]
    m = onnx.load(str(bundle / "decoder.onnx"))

    def dims(v):
        return [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
    ins = {i.name: dims(i) for i in m.graph.input}
    outs = {o.name: dims(o) for o in m.graph.output}
    assert ins == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "past_seq+seq"],
                   "position_ids": ["batch", "seq"],
                   **{f"past_key_values.{i}.{kv}": ["batch", 2, "past_seq", 16] for i in range(2) for kv in ("key", "value")}}
    assert outs == {"logits": ["batch", "seq", 80],
                    **{f"present.{i}.{kv}": ["batch", 2, "past_seq+seq", 16] for i in range(2) for kv in ("key", "value")}}
    assert read_config(bundle) == {k: v for k, v in config.items() if k != "notes"}


GENERATING_SPECS = ["gpt_decoder_only", "llama_decoder", "translation_base"]


@pytest.mark.parametrize("name", GENERATING_SPECS)
def test_example_specs_expand_in_cache_mode(name):
    """Shape-checked cached graphs of the example specs (no weights allocated)."""
    from graphc.expand import build_graph
    from graphc.specfile import load_spec
    from helpers import SPECS
    g = build_graph(load_spec(SPECS / f"{name}.yaml"), kv_cache=True)
    layers = {"gpt_decoder_only": 4, "llama_decoder": 8, "translation_base": 6}[name]
    assert len(g.generation.entries) == layers
    assert [i for i in g.inputs if not i.startswith("past_")] == \
        (["src_tokens"] if name == "translation_base" else []) + ["input_ids", "attention_mask", "position_ids"]
    assert list(g.outputs)[0] == "logits" and len(g.outputs) == 1 + 2 * layers


def test_generation_section_leaves_the_plain_build_unchanged():
    """A plain build of a spec with a generation: section is the build of the same
    spec without it, byte for byte, but for the spec's own hash in the metadata."""
    import onnx
    from helpers import SPECS
    text = (SPECS / "gpt_decoder_only.yaml").read_text()
    without = text[:text.index("generation:")]
    assert without != text
    small = {"vocab: 8000, d_model: 256": "vocab: 100, d_model: 32"}
    models = []
    for t in (text, without):
        for a, b in small.items():
            t = t.replace(a, b)
        m = onnx.load_from_string(compile_text(t)[0])
        del m.metadata_props[:]
        models.append(m.SerializeToString(deterministic=True))
    assert models[0] == models[1]


def test_bundle_is_deterministic(tmp_path):
    """Same spec and seed: byte-identical files, encoder-decoder split included."""
    from graphc.generation.bundle_write import build_bundle
    from test_kv_cache_encdec import TRANSLATION
    spec = tmp_path / "m.yaml"
    spec.write_text(TRANSLATION.format(final_norms="false"))
    for out in ("a", "b"):
        build_bundle(spec, tmp_path / out, seed=7)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files[:2] == ["decoder.onnx", "encoder.onnx"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


T5_DECODER = """graphc: 1
name: tiny_t5_decoder
dims: {batch: 2, seq: 8}
params: {vocab: 60, d_model: 32}
inputs:
  tokens: {dtype: int64, shape: [batch, seq], range: [0, vocab]}
  mask: {dtype: int64, shape: [batch, seq], doc: "1 = real token"}
blocks:
  block:
    inputs: [x, bias, mask]
    layers:
      - {name: ln, kind: rms_norm, input: x}
      - {name: attn, kind: multihead_attention, inputs: {query: ln, attn_mask: bias, key_padding_mask: mask},
         key_padding_polarity: keep, heads: 4, causal: true, scale: 1.0, bias: false}
      - {name: res, kind: add, inputs: [x, attn]}
    outputs: {y: res}
layers:
  - {name: emb, kind: embedding, input: tokens, num_embeddings: vocab, embedding_dim: d_model}
  - {name: rel, kind: relative_position_bias, input: emb, heads: 4, bidirectional: false, num_buckets: 8,
     max_distance: 12, max_len: 40}
  - {name: body, kind: block, inputs: [emb, rel, mask], repeat: 2}
  - {name: head, kind: linear, input: body, out_features: vocab}
outputs:
  logits: head
generation: {tokens: tokens, tokens_mask: mask, logits: logits, eos: 2, pad: 0}
"""


def test_relative_position_bias_and_tokens_mask_steps_equal_full_forward(tmp_path):
    """T5's decoder pattern: a relative-position bias as the attention's attn_mask and
    the tokens' padding mask (generation tokens_mask) on a causal self-attention.
    Cached, the bias covers the cache's key columns and the mask input is the bundle's
    attention_mask; the plain build (bias [seq, seq], mask all ones) is the oracle,
    over distances past max_distance (the last, logarithmic buckets)."""
    plain, bundle, config, _ = build_both(tmp_path, T5_DECODER, scale=0.3)
    assert config["max_positions"] == 40
    dec = Decoder(bundle, config, 2)
    assert [i.name for i in dec.s.get_inputs()][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert "mask" not in [i.name for i in dec.s.get_inputs()]
    ids = np.random.default_rng(7).integers(3, 60, (2, 16))
    ref = session(plain).run(None, {"tokens": ids, "mask": np.ones_like(ids)})[0]
    worst, t = 0.0, 0
    for size in [5] + [1] * 11:
        got = dec.step(ids[:, t:t + size], np.tile(np.arange(t, t + size), (2, 1)))
        worst = max(worst, float(np.abs(got - ref[:, t:t + size]).max()))
        t += size
    assert worst <= TOL
