"""Small Hugging Face models and their graphc specs, for the generation parity tests
(tests/test_generation_e2e.py) and tools/bench_generate.py: each HF state_dict is renamed
to graphc's parameter names here, in one place. torch and transformers are the oracles;
graphc itself never imports them."""
from __future__ import annotations

import numpy as np


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

LLAMA_TEMPLATE = """graphc: 1
name: llama_like
dims: {{batch: 2, seq: 8}}
params: {{vocab: {vocab}, d_model: {d_model}, heads: {heads}, kv_heads: {kv_heads}}}
inputs:
  tokens: {{dtype: int64, shape: [batch, seq], range: [0, vocab]}}
layers:
  - {{name: embed_tokens, kind: embedding, input: tokens, num_embeddings: vocab, embedding_dim: d_model}}
  - {{name: layers, kind: transformer_encoder, input: embed_tokens, causal: true, norm_first: true,
     final_norm: true, layers: {layers}, heads: heads, kv_heads: kv_heads, d_ff: {d_ff}, activation: swiglu,
     norm: rms_norm, eps: 1.0e-6, bias: false, rope: half, rope_max_len: {max_len}}}
  - {{name: lm_head, kind: linear, input: layers, out_features: vocab, bias: false}}
outputs:
  logits: lm_head
generation: {{tokens: tokens, logits: logits, bos: 1, eos: {eos}, pad: 0}}
"""
LLAMA_TINY = dict(vocab=96, d_model=64, heads=4, kv_heads=2, layers=2, d_ff=128, max_len=64, eos="[2, 3]")
LLAMA_BENCH = dict(vocab=32000, d_model=512, heads=8, kv_heads=4, layers=8, d_ff=1376, max_len=2048, eos=2)
LLAMA_SPEC = LLAMA_TEMPLATE.format(**LLAMA_TINY)


def hf_llama(vocab, d_model, heads, kv_heads, layers, d_ff, max_len, eos):
    import transformers
    return transformers.LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=d_ff,
                                    num_hidden_layers=layers, num_attention_heads=heads,
                                    num_key_value_heads=kv_heads, max_position_embeddings=max_len,
                                    rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=1,
                                    eos_token_id=parse_ids(eos), pad_token_id=0, tie_word_embeddings=False)


def parse_ids(text):
    """'[2, 3]' or 2 -> the HF form (a list or an int), (no eval)."""
    if isinstance(text, int):
        return text
    return [int(t) for t in text.strip("[]").split(",")]

MARIAN_TEMPLATE = """graphc: 1
name: marian_like
dims: {{batch: 2, src_seq: 7, tgt_seq: 5}}
params: {{vocab: {vocab}, d_model: {d_model}, heads: {heads}, d_ff: {d_ff}, max_len: {max_len}}}
inputs:
  src_tokens: {{dtype: int64, shape: [batch, src_seq], range: [0, vocab]}}
  tgt_tokens: {{dtype: int64, shape: [batch, tgt_seq], range: [0, vocab]}}
layers:
  - {{name: embed, kind: embedding, input: src_tokens, num_embeddings: vocab, embedding_dim: d_model, scale: true}}
  - {{name: tgt_embed, kind: embedding, input: tgt_tokens, num_embeddings: vocab, embedding_dim: d_model,
     scale: true, tie: embed.weight}}
  - {{name: src_pos, kind: learned_pe, input: embed, max_len: max_len}}
  - {{name: tgt_pos, kind: learned_pe, input: tgt_embed, max_len: max_len}}
  - {{name: src_pad, kind: padding_mask, input: src_tokens, pad: 1}}
  - name: transformer
    kind: transformer
    inputs: {{src: src_pos, tgt: tgt_pos, src_key_padding_mask: src_pad}}
    heads: heads
    d_ff: d_ff
    encoder_layers: {layers}
    decoder_layers: {layers}
    final_norms: false
  - {{name: generator, kind: linear, input: transformer, out_features: vocab, bias: true}}
  - {{name: log_probs, kind: log_softmax, input: generator}}
outputs:
  log_probs: log_probs
generation: {{tokens: tgt_tokens, source: src_tokens, logits: log_probs, bos: 3, eos: 2, pad: 1}}
"""
MARIAN_TINY = dict(vocab=60, d_model=32, heads=4, d_ff=64, layers=2, max_len=64)
# the paper's base model (N=6, d_model 512, d_ff 2048, h 8, shared vocabulary ~37000) in Marian's layout
MARIAN_BASE = dict(vocab=37000, d_model=512, heads=8, d_ff=2048, layers=6, max_len=1024)
MARIAN_SPEC = MARIAN_TEMPLATE.format(**MARIAN_TINY)


def hf_marian(vocab, d_model, heads, d_ff, layers, max_len):
    import transformers
    return transformers.MarianConfig(vocab_size=vocab, d_model=d_model, encoder_layers=layers,
                                     decoder_layers=layers, encoder_attention_heads=heads,
                                     decoder_attention_heads=heads, encoder_ffn_dim=d_ff, decoder_ffn_dim=d_ff,
                                     max_position_embeddings=max_len, activation_function="relu",
                                     scale_embedding=True, pad_token_id=1, eos_token_id=2, bos_token_id=3,
                                     decoder_start_token_id=3, forced_eos_token_id=None,
                                     share_encoder_decoder_embeddings=True, tie_word_embeddings=False)


def marian_model(cfg, std, norm_scale=1.0, eos_bias=0.0):
    """A random Marian model whose layout graphc's MARIAN_TEMPLATE reproduces: one token
    table (encoder, decoder), HF's fixed sinusoidal position tables kept as they are."""
    import torch
    import transformers
    model = transformers.MarianMTModel(cfg).eval()
    pos = (model.model.encoder.embed_positions.weight.clone(), model.model.decoder.embed_positions.weight.clone())
    randomize(model, std, norm_scale=norm_scale)
    with torch.no_grad():                               # the sinusoidal tables are fixed, not weights
        model.model.encoder.embed_positions.weight.copy_(pos[0])
        model.model.decoder.embed_positions.weight.copy_(pos[1])
        for t in (model.model.shared, model.model.decoder.embed_tokens):   # one table, as the spec ties them
            t.weight.copy_(model.model.encoder.embed_tokens.weight)
        model.final_logits_bias[0, 2] += eos_bias
    model.generation_config = transformers.GenerationConfig(bos_token_id=3, eos_token_id=2, pad_token_id=1,
                                                            decoder_start_token_id=3, do_sample=False)
    return model


def randomize(model, std, seed=0, norm_scale=1.0):
    import torch
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
