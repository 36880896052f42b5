"""T5 (T5Model, T5ForConditionalGeneration, T5EncoderModel; T5 v1.1 / Flan
with the gated-GELU feed-forward): pre-norm RMSNorm blocks without biases,
unscaled attention scores with a bucketed relative-position bias, and an LM
head that is either tied to the embedding (scaled by d_model^-0.5) or its own.

Transformers computes the position bias in the first block of each stack and
reuses it in every block; here it is one ``relative_position_bias`` layer per
stack, fed to every block's self-attention, and the weight map reads it from
block 0. The blocks are spec blocks repeated ``n_layers`` times, so the
parameters are named ``enc.{i}...`` / ``dec.{i}...``.
"""
from __future__ import annotations

from .common import Config, prefix_of, rule, stored_untied, yfloat
from .generation import generation_section

FF = {"relu": "relu", "gated-gelu": "gated-gelu"}


def _ff_layers(gated: bool, src: str) -> list[str]:
    if gated:        # T5 v1.1: wo(gelu_new(wi_0 x) * wi_1 x)
        return [f"        - {{name: wi_0, kind: linear, input: {src}, out_features: d_ff, bias: false}}",
                "        - {name: act, kind: gelu, input: wi_0, approximate: tanh}",
                f"        - {{name: wi_1, kind: linear, input: {src}, out_features: d_ff, bias: false}}",
                "        - {name: gated, kind: mul, inputs: [act, wi_1]}",
                "        - {name: wo, kind: linear, input: gated, out_features: d_model, bias: false}"]
    return [f"        - {{name: wi, kind: linear, input: {src}, out_features: d_ff, bias: false}}",
            "        - {name: act, kind: relu, input: wi}",
            "        - {name: wo, kind: linear, input: act, out_features: d_model, bias: false}"]


def _attention(name: str, query: str, extra: str) -> str:
    return (f"        - {{name: {name}, kind: multihead_attention, inputs: {{query: {query}{extra}}}, heads: heads, "
            "head_dim: d_kv, bias: false, scale: 1.0, key_padding_polarity: keep}")


def spec_text(cfg: Config, names: dict | None, source: str) -> str:
    proj = cfg.get("feed_forward_proj", "relu")
    if proj not in FF:
        raise cfg.unsupported("feed_forward_proj", proj, f"T5's '{proj}' feed-forward",
                              hint="supported: \"relu\" (T5) and \"gated-gelu\" (T5 v1.1, Flan-T5)")
    gated = proj == "gated-gelu"
    d = cfg.int("d_model")
    heads = cfg.int("num_heads")
    n_enc = cfg.int("num_layers")
    n_dec = cfg.int("num_decoder_layers", n_enc)
    archs = cfg.get("architectures") or []
    encoder_only = "T5EncoderModel" in archs or (names is not None and not any(n.startswith("decoder.") for n in names))
    lm = not encoder_only and (any(a.endswith("ForConditionalGeneration") for a in archs) or
                               (names is not None and "lm_head.weight" in names))
    # the head's own weights when the file has them (T5 v1.1 saved by transformers 4), else the
    # shared table; the d_model^-0.5 scale is a separate switch (transformers 5 writes
    # scale_decoder_outputs; before, tie_word_embeddings: false meant "v1.1: no scale")
    tied = not (names is not None and "lm_head.weight" in names) and bool(cfg.get("tie_word_embeddings", True))
    scale = cfg.get("scale_decoder_outputs")
    scale = cfg.get("tie_word_embeddings", True) is not False if scale is None else bool(scale)
    p = prefix_of(names, "shared.weight", ("",))
    # the tensors the encoder embedding, the decoder embedding and a tied head read: a stored
    # encoder/decoder copy of the shared table with other values is left untied by transformers 5
    # ("both are present in the checkpoints with different values"), so it loads as its own
    S, E, D = f"{p}shared.weight", f"{p}encoder.embed_tokens.weight", f"{p}decoder.embed_tokens.weight"
    enc_src = E if stored_untied(cfg, E, S) else S
    dec_src = D if stored_untied(cfg, D, S) else S
    head_src = S if tied else "lm_head.weight"
    max_len = cfg.int("n_positions", 512)
    out = [
        f"# T5 imported by 'graphc import' from {source}",
        "# (config.json; the weight map below loads its safetensors unchanged).",
        f"# Build: graphc build THIS.yaml --weights {source} -o model.onnx",
        "graphc: 1",
        f"name: {cfg.model_type}",
        f"dims: {{batch: 2, src_seq: {min(16, max_len)}, tgt_seq: {min(12, max_len)}}}   # example sizes; symbolic",
        "params:",
        f"  vocab: {cfg.int('vocab_size')}          # vocab_size",
        f"  d_model: {d}          # d_model",
        f"  d_kv: {cfg.int('d_kv')}            # d_kv: width of a head",
        f"  heads: {heads}            # num_heads",
        f"  enc_layers: {n_enc}       # num_layers",
        f"  dec_layers: {n_dec}       # num_decoder_layers",
        f"  d_ff: {cfg.int('d_ff')}            # d_ff",
        f"  eps: {yfloat(cfg.float('layer_norm_epsilon', 1e-6))}        # layer_norm_epsilon",
        f"  buckets: {cfg.int('relative_attention_num_buckets', 32)}          # relative_attention_num_buckets",
        f"  max_distance: {cfg.int('relative_attention_max_distance', 128)}     # relative_attention_max_distance",
        f"  max_len: {max_len}         # the longest sequence accepted (n_positions)",
        "inputs:",
        "  input_ids: {dtype: int64, shape: [batch, src_seq], range: [0, vocab]}",
        "  attention_mask: {dtype: int64, shape: [batch, src_seq], doc: \"1 = real token, 0 = padding (HF)\"}",
    ]
    if not encoder_only:
        out += ["  decoder_input_ids: {dtype: int64, shape: [batch, tgt_seq], range: [0, vocab], "
                "doc: \"starts with decoder_start_token_id\"}",
                "  decoder_attention_mask: {dtype: int64, shape: [batch, tgt_seq], doc: \"1 = real token, 0 = padding\"}"]
    out += ["blocks:",
            "  enc_block:                        # x + attn(norm0(x)); x + ffn(norm1(x))",
            "    inputs: [x, bias, mask]",
            "    layers:",
            "        - {name: norm0, kind: rms_norm, input: x, eps: eps}",
            _attention("sa", "norm0", ", attn_mask: bias, key_padding_mask: mask"),
            "        - {name: res0, kind: add, inputs: [x, sa]}",
            "        - {name: norm1, kind: rms_norm, input: res0, eps: eps}"] + _ff_layers(gated, "norm1") + [
            "        - {name: res1, kind: add, inputs: [res0, wo]}",
            "    outputs: {y: res1}"]
    if not encoder_only:
        out += ["  dec_block:                        # + cross-attention on the encoder output",
                "    inputs: [x, bias, mask, memory, memory_mask]",
                "    layers:",
                "        - {name: norm0, kind: rms_norm, input: x, eps: eps}",
                _attention("sa", "norm0", ", attn_mask: bias, key_padding_mask: mask") + "",
                "        - {name: res0, kind: add, inputs: [x, sa]}",
                "        - {name: norm1, kind: rms_norm, input: res0, eps: eps}",
                _attention("ca", "norm1", ", key: memory, key_padding_mask: memory_mask"),
                "        - {name: res1, kind: add, inputs: [res0, ca]}",
                "        - {name: norm2, kind: rms_norm, input: res1, eps: eps}"] + _ff_layers(gated, "norm2") + [
                "        - {name: res2, kind: add, inputs: [res1, wo]}",
                "    outputs: {y: res2}"]
        # the decoder's self-attention is causal
        out = [ln.replace("attn_mask: bias, key_padding_mask: mask}, heads: heads,",
                          "attn_mask: bias, key_padding_mask: mask}, causal: true, heads: heads,")
               if i > out.index("  dec_block:                        # + cross-attention on the encoder output")
               else ln for i, ln in enumerate(out)]
    out += ["layers:",
            "  - {name: shared, kind: embedding, input: input_ids, num_embeddings: vocab, embedding_dim: d_model}",
            "  - {name: enc_bias, kind: relative_position_bias, input: shared, heads: heads, bidirectional: true,",
            "     num_buckets: buckets, max_distance: max_distance, max_len: max_len}",
            "  - {name: enc, kind: enc_block, inputs: [shared, enc_bias, attention_mask], repeat: enc_layers}",
            "  - {name: enc_norm, kind: rms_norm, input: enc, eps: eps}        # encoder.final_layer_norm"]
    outputs = ["outputs:"]
    if encoder_only:
        outputs.append("  last_hidden_state: enc_norm         # [batch, src_seq, d_model]")
    else:
        dec_tie = ", tie: shared.weight" if dec_src == enc_src else ""
        out += ["  - {name: dec_embed, kind: embedding, input: decoder_input_ids, num_embeddings: vocab, "
                f"embedding_dim: d_model{dec_tie}}}",
                "  - {name: dec_bias, kind: relative_position_bias, input: dec_embed, heads: heads, bidirectional: false,",
                "     num_buckets: buckets, max_distance: max_distance, max_len: max_len}",
                "  - {name: dec, kind: dec_block, inputs: [dec_embed, dec_bias, decoder_attention_mask, enc_norm, "
                "attention_mask], repeat: dec_layers}",
                "  - {name: dec_norm, kind: rms_norm, input: dec, eps: eps}        # decoder.final_layer_norm"]
        head_in = "dec_norm"
        if lm and scale:
            out.append(f"  - {{name: rescale, kind: scale, input: dec_norm, factor: {yfloat(d ** -0.5)}}}"
                       "   # d_model^-0.5 (scale_decoder_outputs)")
            head_in = "rescale"
        if lm:
            tie = ", tie: shared.weight" if head_src == enc_src else ", tie: dec_embed.weight" \
                if head_src == dec_src else ""
            out.append(f"  - {{name: lm_head, kind: linear, input: {head_in}, out_features: vocab, bias: false{tie}}}")
        if lm:
            outputs.append("  logits: lm_head                    # [batch, tgt_seq, vocab]")
        else:
            outputs += ["  last_hidden_state: dec_norm         # [batch, tgt_seq, d_model]",
                        "  encoder_last_hidden_state: enc_norm # [batch, src_seq, d_model]"]
    out += outputs
    ignore = []
    if names is not None:
        used = {enc_src} | (set() if encoder_only else {dec_src} | ({head_src} if lm else set()))
        ignore = [n for n in (S, E, D) if n in names and n not in used]
    w = ["weights:"]
    if ignore:
        w.append("  ignore:      # tied copies of the shared embedding")
        w += [f"    - '{n}'" for n in ignore]
    w += ["  map:", rule(enc_src, "shared.weight")]
    if not encoder_only and dec_src != enc_src:
        w.append(rule(dec_src, "dec_embed.weight"))

    def stack(hf: str, g: str, attn: list[tuple[str, str]], ff_at: int) -> list[str]:
        B = f"{p}{hf}.block.*."
        rules = [rule(f"{p}{hf}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", f"{g}_bias.weight",
                      comment="block 0 holds the stack's bias")]
        for at, (module, local) in enumerate(attn):
            a = f"{B}layer.{at}.{module}."
            rules += [rule([a + "q.weight", a + "k.weight", a + "v.weight"], f"{g}.{{1}}.{local}.in_proj_weight",
                           comment="rows [q; k; v]"),
                      rule(a + "o.weight", f"{g}.{{1}}.{local}.out_proj.weight"),
                      rule(f"{B}layer.{at}.layer_norm.weight", f"{g}.{{1}}.norm{at}.weight")]
        f = f"{B}layer.{ff_at}."
        wis = ("wi_0", "wi_1", "wo") if gated else ("wi", "wo")
        rules += [rule(f"{f}DenseReluDense.{n}.weight", f"{g}.{{1}}.{n}.weight") for n in wis]
        rules += [rule(f"{f}layer_norm.weight", f"{g}.{{1}}.norm{ff_at}.weight"),
                  rule(f"{p}{hf}.final_layer_norm.weight", f"{g}_norm.weight")]
        return rules
    w += stack("encoder", "enc", [("SelfAttention", "sa")], 1)
    if not encoder_only:
        w += stack("decoder", "dec", [("SelfAttention", "sa"), ("EncDecAttention", "ca")], 2)
    if lm and head_src not in (enc_src, dec_src):
        w.append(rule(head_src, "lm_head.weight"))
    out += w
    if lm:
        out += generation_section(cfg, cfg.int("vocab_size"), "decoder_input_ids", "decoder_attention_mask",
                                  "logits", "input_ids", "attention_mask")
    return "\n".join(out) + "\n"
