"""BART and Marian (BartModel, BartForConditionalGeneration, MarianModel,
MarianMTModel): a post-norm encoder-decoder with a shared token embedding,
an LM head tied to it plus ``final_logits_bias``.

Where the two differ, and how the spec says it:
- BART's learned position table starts at row 2 (``offset = 2`` in
  transformers): the weight map keeps rows [2, max_len + 2) so graphc's
  positions 0..seq-1 read the rows transformers reads.
- Marian's positions are not stored: they are sinusoids with all sines first,
  then all cosines (graphc's ``sinusoidal_pe`` style ``concat``, same
  frequencies 10000^(-2i/d)).
- BART normalises the embeddings (``layernorm_embedding``); Marian does not.
- ``scale_embedding`` multiplies token embeddings by sqrt(d_model) (the
  embedding kind's ``scale``).
"""
from __future__ import annotations

from .bert import ACTIVATIONS as _BASE_ACTS
from .common import Config, prefix_of, rule, stored_untied
from .generation import generation_section

ACTIVATIONS = {**_BASE_ACTS, "silu": "silu", "swish": "silu"}


def _attention_rules(src: str, dst: str) -> list[str]:
    return [rule([src + "q_proj.weight", src + "k_proj.weight", src + "v_proj.weight"], dst + "in_proj_weight",
                 comment="rows [q; k; v]"),
            rule([src + "q_proj.bias", src + "k_proj.bias", src + "v_proj.bias"], dst + "in_proj_bias"),
            rule(src + "out_proj.*", dst + "out_proj.{2}")]


def _table_sources(cfg: Config, names: dict | None, p: str, shared: bool) -> tuple[str, str, str]:
    """The checkpoint tensors the encoder embedding, the decoder embedding and the
    LM head read, as transformers 5 loads them. Tied (tie_word_embeddings, the
    default): one table, the shared one (Marian without shared embeddings: the
    decoder's, for the head), except a stored copy whose values differ, which
    transformers then leaves untied. Untied: each its own tensor, the one saved
    under its name (a save whose tables were one module stores one name: the
    shared table is then the fallback)."""
    tied = bool(cfg.get("tie_word_embeddings", True))
    S, E, D, H = f"{p}shared.weight", f"{p}encoder.embed_tokens.weight", f"{p}decoder.embed_tokens.weight", \
        "lm_head.weight"
    have = (lambda n: n in names) if names is not None else (lambda n: True)
    if not shared:
        head = H if (not tied and have(H)) or stored_untied(cfg, H, D) else D
        return E, D, head
    if tied:
        return (E if stored_untied(cfg, E, S) else S, D if stored_untied(cfg, D, S) else S,
                H if stored_untied(cfg, H, S) else S)
    enc = E if have(E) else S
    dec = D if have(D) else S
    return enc, dec, H if have(H) else dec


def spec_text(cfg: Config, names: dict | None, source: str) -> str:
    marian = cfg.model_type == "marian"
    family = "Marian" if marian else "BART"
    act = cfg.expect("activation_function", tuple(ACTIVATIONS), "this feed-forward activation", "gelu")
    for key in ("normalize_before", "add_final_layer_norm", "normalize_embedding"):
        if key in cfg.data and cfg.data[key] not in (False, None) and not (key == "normalize_embedding" and not marian):
            raise cfg.unsupported(key, cfg.data[key], f"{family} with {key} (an mBART-style variant)")
    d = cfg.int("d_model")
    heads = cfg.int("encoder_attention_heads")
    if cfg.int("decoder_attention_heads") != heads or cfg.int("decoder_ffn_dim") != cfg.int("encoder_ffn_dim"):
        raise cfg.unsupported("decoder_attention_heads/decoder_ffn_dim",
                              [cfg.get("decoder_attention_heads"), cfg.get("decoder_ffn_dim")],
                              "a decoder whose heads or feed-forward width differ from the encoder's in one spec param")
    vocab = cfg.int("vocab_size")
    shared = True
    if marian:
        shared = cfg.get("share_encoder_decoder_embeddings", True)
        if cfg.int("decoder_vocab_size", vocab) != vocab:
            raise cfg.unsupported("decoder_vocab_size", cfg.get("decoder_vocab_size"),
                                  "a decoder vocabulary of another size than the encoder's")
    max_len = cfg.int("max_position_embeddings")
    scale = bool(cfg.get("scale_embedding", False))
    archs = cfg.get("architectures") or []
    lm = (names is not None and "final_logits_bias" in names) or any(
        a in ("BartForConditionalGeneration", "MarianMTModel") for a in archs)
    # Marian with share_encoder_decoder_embeddings false saves no shared table
    p = prefix_of(names, "shared.weight" if shared else "encoder.embed_tokens.weight", ("model.", ""))
    E, D = f"{p}encoder.", f"{p}decoder."
    enc_src, dec_src, head_src = _table_sources(cfg, names, p, shared)
    s = "true" if scale else "false"
    out = [
        f"# {family} imported by 'graphc import' from {source}",
        "# (config.json; the weight map below loads its safetensors unchanged).",
        f"# Build: graphc build THIS.yaml --weights {source} -o model.onnx",
        "graphc: 1",
        f"name: {cfg.model_type}",
        f"dims: {{batch: 2, src_seq: {min(16, max_len)}, tgt_seq: {min(12, max_len)}}}   # example sizes; symbolic",
        "params:",
        f"  vocab: {vocab}          # vocab_size",
        f"  d_model: {d}          # d_model",
        f"  heads: {heads}            # encoder_attention_heads = decoder_attention_heads",
        f"  enc_layers: {cfg.int('encoder_layers')}       # encoder_layers",
        f"  dec_layers: {cfg.int('decoder_layers')}       # decoder_layers",
        f"  d_ff: {cfg.int('encoder_ffn_dim')}            # encoder_ffn_dim = decoder_ffn_dim",
        f"  max_len: {max_len}         # max_position_embeddings: the longest sequence",
        "inputs:",
        "  input_ids: {dtype: int64, shape: [batch, src_seq], range: [0, vocab]}",
        "  attention_mask: {dtype: int64, shape: [batch, src_seq], doc: \"1 = real token, 0 = padding (HF)\"}",
        "  decoder_input_ids: {dtype: int64, shape: [batch, tgt_seq], range: [0, vocab], "
        "doc: \"starts with decoder_start_token_id\"}",
        "  decoder_attention_mask: {dtype: int64, shape: [batch, tgt_seq], doc: \"1 = real token, 0 = padding\"}",
        "layers:",
        f"  - {{name: shared, kind: embedding, input: input_ids, num_embeddings: vocab, embedding_dim: d_model, "
        f"scale: {s}}}   # scale_embedding",
    ]
    dec_tie = ", tie: shared.weight" if dec_src == enc_src else ""
    out.append(f"  - {{name: dec_embed, kind: embedding, input: decoder_input_ids, num_embeddings: vocab, "
               f"embedding_dim: d_model, scale: {s}{dec_tie}}}")
    # some saves store Marian's fixed tables: then they are loaded as they are
    stored = names is not None and E + "embed_positions.weight" in names and D + "embed_positions.weight" in names
    if marian and stored:
        out += ["  - {name: enc_pos, kind: learned_pe, input: shared, max_len: max_len}   # the stored sinusoid table",
                "  - {name: dec_pos, kind: learned_pe, input: dec_embed, max_len: max_len}"]
        enc_in, dec_in = "enc_pos", "dec_pos"
    elif marian:
        out += ["  - {name: enc_pos, kind: sinusoidal_pe, input: shared, max_len: max_len, style: concat}"
                "   # sines, then cosines",
                "  - {name: dec_pos, kind: sinusoidal_pe, input: dec_embed, max_len: max_len, style: concat}"]
        enc_in, dec_in = "enc_pos", "dec_pos"
    else:
        out += ["  - {name: enc_pos, kind: learned_pe, input: shared, max_len: max_len}   # rows 2.. of the table",
                "  - {name: enc_norm, kind: layer_norm, input: enc_pos}                 # layernorm_embedding",
                "  - {name: dec_pos, kind: learned_pe, input: dec_embed, max_len: max_len}",
                "  - {name: dec_norm, kind: layer_norm, input: dec_pos}"]
        enc_in, dec_in = "enc_norm", "dec_norm"
    common = ["    key_padding_polarity: keep       # attention masks: 1 = attend",
              "    heads: heads",
              "    d_ff: d_ff",
              f"    activation: {ACTIVATIONS[act]}              # activation_function: {act}"]
    out += ["  - name: encoder",
            "    kind: transformer_encoder        # post-norm: x = norm1(x + attn(x)); x = norm2(x + ffn(x))",
            f"    inputs: {{x: {enc_in}, key_padding_mask: attention_mask}}",
            "    layers: enc_layers"] + common
    out += ["  - name: decoder",
            "    kind: transformer_decoder        # causal self-attention, cross-attention, ffn; post-norm",
            f"    inputs: {{x: {dec_in}, memory: encoder, tgt_key_padding_mask: decoder_attention_mask, "
            "memory_key_padding_mask: attention_mask}",
            "    layers: dec_layers"] + common
    outputs = ["outputs:"]
    if lm:
        head_tie = ", tie: shared.weight" if head_src == enc_src else \
            ", tie: dec_embed.weight" if head_src == dec_src else ""
        out.append(f"  - {{name: lm_head, kind: linear, input: decoder, out_features: vocab{head_tie}}}"
                   "   # + final_logits_bias")
        outputs.append("  logits: lm_head                    # [batch, tgt_seq, vocab]")
    else:
        outputs += ["  last_hidden_state: decoder          # [batch, tgt_seq, d_model]",
                    "  encoder_last_hidden_state: encoder  # [batch, src_seq, d_model]"]
    out += outputs
    ignore = []
    if names is not None:
        # tied copies of the table a layer loads, if this save stored them
        used = {enc_src, dec_src, head_src if lm else enc_src}
        ignore = [n for n in (f"{p}shared.weight", E + "embed_tokens.weight", D + "embed_tokens.weight",
                              "lm_head.weight") if n in names and n not in used]
    w = ["weights:"]
    if ignore:
        w.append("  ignore:      # tied copies of the shared embedding")
        w += [f"    - '{n}'" for n in ignore]
    w += ["  map:", rule(enc_src, "shared.weight")]
    if dec_src != enc_src:
        w.append(rule(dec_src, "dec_embed.weight"))
    if lm and head_src not in (enc_src, dec_src):
        w.append(rule(head_src, "lm_head.weight"))
    if marian and stored:
        w += [rule(E + "embed_positions.weight", "enc_pos.weight"), rule(D + "embed_positions.weight", "dec_pos.weight")]
    if not marian:
        rows = f"rows: [2, {max_len + 2}]"
        w += [f"    - {{from: '{E}embed_positions.weight', to: 'enc_pos.weight', {rows}}}"
              "   # transformers reads row position + 2",
              f"    - {{from: '{D}embed_positions.weight', to: 'dec_pos.weight', {rows}}}",
              rule(E + "layernorm_embedding.*", "enc_norm.{1}"),
              rule(D + "layernorm_embedding.*", "dec_norm.{1}")]
    EL, DL = E + "layers.*.", D + "layers.*."
    w += _attention_rules(EL + "self_attn.", "encoder.layers.{1}.self_attn.")
    w += [rule(EL + "self_attn_layer_norm.*", "encoder.layers.{1}.norm1.{2}"),
          rule(EL + "fc1.*", "encoder.layers.{1}.linear1.{2}"),
          rule(EL + "fc2.*", "encoder.layers.{1}.linear2.{2}"),
          rule(EL + "final_layer_norm.*", "encoder.layers.{1}.norm2.{2}")]
    w += _attention_rules(DL + "self_attn.", "decoder.layers.{1}.self_attn.")
    w.append(rule(DL + "self_attn_layer_norm.*", "decoder.layers.{1}.norm1.{2}"))
    w += _attention_rules(DL + "encoder_attn.", "decoder.layers.{1}.multihead_attn.")
    w += [rule(DL + "encoder_attn_layer_norm.*", "decoder.layers.{1}.norm2.{2}"),
          rule(DL + "fc1.*", "decoder.layers.{1}.linear1.{2}"),
          rule(DL + "fc2.*", "decoder.layers.{1}.linear2.{2}"),
          rule(DL + "final_layer_norm.*", "decoder.layers.{1}.norm3.{2}")]
    if lm:
        w.append("    - {from: 'final_logits_bias', to: 'lm_head.bias', reshape: [-1]}   # [1, vocab] -> [vocab]")
    out += w
    if lm:
        out += generation_section(cfg, vocab, "decoder_input_ids", "decoder_attention_mask", "logits",
                                  "input_ids", "attention_mask")
    return "\n".join(out) + "\n"
