"""End to end: Hugging Face models with random weights (small configs, no downloads), their
state_dict renamed to graphc's parameter names, compiled with `graphc build --kv-cache`,
decoded by `graphc generate` and `graphc.generate`; the ids must equal transformers'
generate() token for token:
- GPT-2-like (learned positions, LayerNorm, gelu_tanh) and LLaMA-like (RoPE half-split,
  GQA, RMSNorm, SwiGLU): greedy, left-padded batches of prompts of different lengths;
- a Marian-like encoder-decoder (post-norm nn.Transformer layout, scaled embeddings, HF's
  sinusoidal position table loaded into learned_pe): greedy and beam search."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import graphc  # noqa: E402
from helpers import cli  # noqa: E402

BOS, EOS, PAD = 1, 2, 0

GPT_SPEC = """graphc: 1
name: tiny_gpt
dims: {batch: 2, seq: 8}
params: {vocab: 96, d_model: 64, heads: 4, max_len: 64}
inputs:
  tokens: {dtype: int64, shape: [batch, seq], range: [0, vocab]}
layers:
  - {name: wte, kind: embedding, input: tokens, num_embeddings: vocab, embedding_dim: d_model}
  - {name: wpe, kind: learned_pe, input: wte, max_len: max_len}
  - {name: blocks, kind: transformer_encoder, input: wpe, causal: true, norm_first: true, final_norm: true,
     layers: 2, heads: heads, d_ff: 256, activation: gelu_tanh}
  - {name: lm_head, kind: linear, input: blocks, out_features: vocab, bias: false}
outputs:
  logits: lm_head
generation: {tokens: tokens, logits: logits, bos: 1, eos: 2, pad: 0}
"""

LLAMA_SPEC = """graphc: 1
name: tiny_llama
dims: {batch: 2, seq: 8}
params: {vocab: 96, d_model: 64, heads: 4, kv_heads: 2}
inputs:
  tokens: {dtype: int64, shape: [batch, seq], range: [0, vocab]}
layers:
  - {name: embed_tokens, kind: embedding, input: tokens, num_embeddings: vocab, embedding_dim: d_model}
  - {name: layers, kind: transformer_encoder, input: embed_tokens, causal: true, norm_first: true,
     final_norm: true, layers: 2, heads: heads, kv_heads: kv_heads, d_ff: 128, activation: swiglu,
     norm: rms_norm, eps: 1.0e-6, bias: false, rope: half, rope_max_len: 64}
  - {name: lm_head, kind: linear, input: layers, out_features: vocab, bias: false}
outputs:
  logits: lm_head
generation: {tokens: tokens, logits: logits, bos: 1, eos: [2, 3], pad: 0}
"""

MARIAN_SPEC = """graphc: 1
name: tiny_marian
dims: {batch: 2, src_seq: 7, tgt_seq: 5}
params: {vocab: 60, d_model: 32, heads: 4, d_ff: 64, max_len: 64}
inputs:
  src_tokens: {dtype: int64, shape: [batch, src_seq], range: [0, vocab]}
  tgt_tokens: {dtype: int64, shape: [batch, tgt_seq], range: [0, vocab]}
layers:
  - {name: embed, kind: embedding, input: src_tokens, num_embeddings: vocab, embedding_dim: d_model, scale: true}
  - {name: tgt_embed, kind: embedding, input: tgt_tokens, num_embeddings: vocab, embedding_dim: d_model,
     scale: true, tie: embed.weight}
  - {name: src_pos, kind: learned_pe, input: embed, max_len: max_len}
  - {name: tgt_pos, kind: learned_pe, input: tgt_embed, max_len: max_len}
  - {name: src_pad, kind: padding_mask, input: src_tokens, pad: 1}
  - name: transformer
    kind: transformer
    inputs: {src: src_pos, tgt: tgt_pos, src_key_padding_mask: src_pad}
    heads: heads
    d_ff: d_ff
    encoder_layers: 2
    decoder_layers: 2
    final_norms: false
  - {name: generator, kind: linear, input: transformer, out_features: vocab, bias: true}
  - {name: log_probs, kind: log_softmax, input: generator}
outputs:
  log_probs: log_probs
generation: {tokens: tgt_tokens, source: src_tokens, logits: log_probs, bos: 3, eos: 2, pad: 1}
"""


def _randomize(model, std, seed=0, norm_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_(norm_scale * (1 + 0.1 * torch.randn(p.shape, generator=g)))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _np(t):
    return t.detach().float().numpy().copy()


def gpt2_weights(m) -> dict:
    sd = m.state_dict()
    w = {"wte.weight": _np(sd["transformer.wte.weight"]), "wpe.weight": _np(sd["transformer.wpe.weight"]),
         "lm_head.weight": _np(sd["lm_head.weight"]),
         "blocks.norm.weight": _np(sd["transformer.ln_f.weight"]), "blocks.norm.bias": _np(sd["transformer.ln_f.bias"])}
    for i in range(m.config.n_layer):
        h, o = f"transformer.h.{i}.", f"blocks.layers.{i}."
        for a, b in [("ln_1", "norm1"), ("ln_2", "norm2")]:
            w[o + b + ".weight"], w[o + b + ".bias"] = _np(sd[h + a + ".weight"]), _np(sd[h + a + ".bias"])
        for a, b in [("attn.c_attn", "self_attn.in_proj"), ("attn.c_proj", "self_attn.out_proj."),
                     ("mlp.c_fc", "linear1."), ("mlp.c_proj", "linear2.")]:
            wname = o + b + ("_weight" if b.endswith("in_proj") else "weight")
            bname = o + b + ("_bias" if b.endswith("in_proj") else "bias")
            w[wname] = _np(sd[h + a + ".weight"].T)                    # HF Conv1D stores [in, out]
            w[bname] = _np(sd[h + a + ".bias"])
    return w


def llama_weights(m) -> dict:
    sd = m.state_dict()
    w = {"embed_tokens.weight": _np(sd["model.embed_tokens.weight"]), "layers.norm.weight": _np(sd["model.norm.weight"]),
         "lm_head.weight": _np(sd["lm_head.weight"])}
    for i in range(m.config.num_hidden_layers):
        h, o = f"model.layers.{i}.", f"layers.layers.{i}."
        w[o + "self_attn.in_proj_weight"] = np.concatenate(
            [_np(sd[h + f"self_attn.{p}_proj.weight"]) for p in "qkv"])   # [q; k; v] rows, GQA widths
        w[o + "self_attn.out_proj.weight"] = _np(sd[h + "self_attn.o_proj.weight"])
        w[o + "norm1.weight"] = _np(sd[h + "input_layernorm.weight"])
        w[o + "norm2.weight"] = _np(sd[h + "post_attention_layernorm.weight"])
        for a, b in [("gate_proj", "linear1"), ("up_proj", "linear3"), ("down_proj", "linear2")]:
            w[o + b + ".weight"] = _np(sd[h + f"mlp.{a}.weight"])
    return w


def marian_weights(m) -> dict:
    sd = m.state_dict()
    w = {"embed.weight": _np(sd["model.encoder.embed_tokens.weight"]),
         "src_pos.weight": _np(m.model.encoder.embed_positions.weight),
         "tgt_pos.weight": _np(m.model.decoder.embed_positions.weight),
         "generator.weight": _np(sd["lm_head.weight"]), "generator.bias": _np(sd["final_logits_bias"][0])}

    def attn(src, dst):
        w[dst + ".in_proj_weight"] = np.concatenate([_np(sd[f"{src}.{p}_proj.weight"]) for p in "qkv"])
        w[dst + ".in_proj_bias"] = np.concatenate([_np(sd[f"{src}.{p}_proj.bias"]) for p in "qkv"])
        w[dst + ".out_proj.weight"], w[dst + ".out_proj.bias"] = _np(sd[src + ".out_proj.weight"]), _np(sd[src + ".out_proj.bias"])

    def copy(src, dst):
        w[dst + ".weight"], w[dst + ".bias"] = _np(sd[src + ".weight"]), _np(sd[src + ".bias"])

    for side, n in [("encoder", m.config.encoder_layers), ("decoder", m.config.decoder_layers)]:
        for i in range(n):
            h, o = f"model.{side}.layers.{i}.", f"transformer.{side}.layers.{i}."
            attn(h + "self_attn", o + "self_attn")
            copy(h + "self_attn_layer_norm", o + "norm1")
            copy(h + "fc1", o + "linear1")
            copy(h + "fc2", o + "linear2")
            if side == "encoder":
                copy(h + "final_layer_norm", o + "norm2")
            else:
                attn(h + "encoder_attn", o + "multihead_attn")
                copy(h + "encoder_attn_layer_norm", o + "norm2")
                copy(h + "final_layer_norm", o + "norm3")
    return w


def _bundle(tmp_path, spec_text, weights, name):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(spec_text)
    np.savez(tmp_path / f"{name}.npz", **weights)
    out = tmp_path / f"{name}_bundle"
    rc, _, err = cli("build", spec, "--weights", tmp_path / f"{name}.npz", "--kv-cache", "-o", out)
    assert rc == 0, err
    return out


def _left_padded(rows):
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
    return ids


PROMPTS = [[5, 9, 13, 7, 21, 40, 33], [11, 4], [30, 31, 3 + 60, 17], [8]]


def _hf_greedy(model, ids, eos, new):
    cfg = transformers.GenerationConfig(do_sample=False, max_new_tokens=new, eos_token_id=eos, pad_token_id=PAD,
                                        bos_token_id=BOS)
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy((ids != PAD).astype(np.int64)),
                             generation_config=cfg)
    return out.numpy()[:, ids.shape[1]:]


def _check_decoder_only(tmp_path, model, spec, weights, eos, name):
    bundle = _bundle(tmp_path, spec, weights, name)
    ids = _left_padded(PROMPTS)
    want = _hf_greedy(model, ids, eos, 24)
    got = graphc.generate(bundle, ids, max_new_tokens=24)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 8                     # not a collapsed, repeated-token model
    np.save(tmp_path / "prompts.npy", ids)
    rc, out, err = cli("generate", bundle, "--input-ids", tmp_path / "prompts.npy", "--max-new-tokens", "24")
    assert rc == 0, err
    assert out.split() == [",".join(map(str, r)) for r in want]
    for i, row in enumerate(PROMPTS):                   # each row alone: the same ids as in the batch
        alone = graphc.generate(bundle, row, max_new_tokens=24)[0]
        np.testing.assert_array_equal(alone, want[i, :len(alone)])


def test_gpt2_like_greedy_left_padded_equals_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=256,
                                  activation_function="gelu_new", tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS,
                                  pad_token_id=PAD)
    # untied, larger norm gains: a random GPT-2 otherwise repeats one or two tokens
    model = _randomize(transformers.GPT2LMHeadModel(cfg).eval(), 0.1, norm_scale=3.0)
    _check_decoder_only(tmp_path, model, GPT_SPEC, gpt2_weights(model), EOS, "gpt")


def test_llama_like_greedy_left_padded_equals_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=BOS, eos_token_id=[2, 3],
                                   pad_token_id=PAD, tie_word_embeddings=False)
    model = _randomize(transformers.LlamaForCausalLM(cfg).eval(), 0.2)
    _check_decoder_only(tmp_path, model, LLAMA_SPEC, llama_weights(model), [2, 3], "llama")


def _marian():
    torch.manual_seed(0)
    cfg = transformers.MarianConfig(vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2,
                                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                    decoder_ffn_dim=64, max_position_embeddings=64, activation_function="relu",
                                    scale_embedding=True, pad_token_id=1, eos_token_id=EOS, bos_token_id=3,
                                    decoder_start_token_id=3, forced_eos_token_id=None, share_encoder_decoder_embeddings=True,
                                    tie_word_embeddings=False)
    model = transformers.MarianMTModel(cfg).eval()
    pos = (model.model.encoder.embed_positions.weight.clone(), model.model.decoder.embed_positions.weight.clone())
    _randomize(model, 0.1, norm_scale=3.0)       # untied, larger norm gains: not one repeated token
    with torch.no_grad():                               # the sinusoidal tables are fixed, not weights
        model.model.encoder.embed_positions.weight.copy_(pos[0])
        model.model.decoder.embed_positions.weight.copy_(pos[1])
        for t in (model.model.shared, model.model.decoder.embed_tokens):   # one table, as the spec ties them
            t.weight.copy_(model.model.encoder.embed_tokens.weight)
        model.final_logits_bias[0, EOS] += 1.5          # hypotheses end at different lengths
    model.generation_config = transformers.GenerationConfig(bos_token_id=3, eos_token_id=EOS, pad_token_id=1,
                                                            decoder_start_token_id=3, do_sample=False)
    return model


SOURCES = [[5, 9, 13, 7, 21, 2], [11, 4, 2, 1, 1, 1], [30, 31, 6, 17, 2, 1]]     # right-padded with 1


@pytest.mark.parametrize("case", [dict(num_beams=1), dict(num_beams=3, length_penalty=1.0, early_stopping=False),
                                  dict(num_beams=4, length_penalty=0.6, early_stopping=True)],
                         ids=["greedy", "beam3", "beam4-early"])
def test_marian_like_greedy_and_beam_equal_transformers(tmp_path, case):
    model = _marian()
    bundle = _bundle(tmp_path, MARIAN_SPEC, marian_weights(model), "marian")
    src = np.array(SOURCES, np.int64)
    gen = transformers.GenerationConfig(bos_token_id=3, eos_token_id=EOS, pad_token_id=1, decoder_start_token_id=3,
                                        do_sample=False, max_new_tokens=16, **case)
    with torch.no_grad():
        want = model.generate(input_ids=torch.from_numpy(src), attention_mask=torch.from_numpy((src != 1).astype(np.int64)),
                              generation_config=gen).numpy()[:, 1:]
    got = graphc.generate(bundle, src_ids=src, max_new_tokens=16, **case)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 5
    assert (want == EOS).any() or case.get("early_stopping") is False   # eos paths exercised (greedy, beam4)
    np.save(tmp_path / "src.npy", src)
    flags = [f"--{k.replace('_', '-')}={str(v).lower()}" for k, v in case.items()]
    rc, out, err = cli("generate", bundle, "--src-ids", tmp_path / "src.npy", "--max-new-tokens", "16", *flags)
    assert rc == 0, err
    assert out.split() == [",".join(map(str, r)) for r in want]
