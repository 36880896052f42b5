"""BERT (BertModel, BertForMaskedLM, BertForSequenceClassification) and
DistilBERT (DistilBertModel, DistilBertForMaskedLM): token (+ token type) and
learned position embeddings, an embedding LayerNorm, post-norm encoder
layers with GELU, and the heads the checkpoint holds.

HF keeps query/key/value as separate Linear layers: the weight map
concatenates them into torch's packed ``in_proj_weight`` rows [W_q; W_k; W_v].
"""
from __future__ import annotations

from .common import Config, prefix_of, rule, stored_untied, yfloat

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "relu": "relu"}


def _has(names: dict | None, start: str) -> bool:
    return names is not None and any(n.startswith(start) for n in names)


def _encoder(x: str, act: str, act_key: str) -> list[str]:
    return [
        "  - name: encoder",
        "    kind: transformer_encoder        # post-norm: x = norm1(x + attn(x)); x = norm2(x + ffn(x))",
        f"    inputs: {{x: {x}, key_padding_mask: attention_mask}}",
        "    key_padding_polarity: keep       # attention_mask 1 = attend",
        "    layers: n_layers",
        "    heads: heads",
        "    d_ff: d_ff",
        f"    activation: {ACTIVATIONS[act]}              # {act_key}: {act}",
        "    eps: eps",
    ]


def _qkv(L: str, q: str, k: str, v: str) -> list[str]:
    return [rule([L + q + ".weight", L + k + ".weight", L + v + ".weight"],
                 "encoder.layers.{1}.self_attn.in_proj_weight", comment="rows [q; k; v]"),
            rule([L + q + ".bias", L + k + ".bias", L + v + ".bias"], "encoder.layers.{1}.self_attn.in_proj_bias")]


def _header(family: str, cfg: Config, source: str, max_len: int) -> list[str]:
    return [f"# {family} imported by 'graphc import' from {source}",
            "# (config.json; the weight map below loads its safetensors unchanged).",
            f"# Build: graphc build THIS.yaml --weights {source} -o model.onnx",
            "graphc: 1",
            f"name: {cfg.model_type}",
            f"dims: {{batch: 2, seq: {min(16, max_len)}}}      # example sizes; both stay symbolic"]


def _act_layer(act: str) -> str:
    """The layer kind (and option) of a standalone activation: the tanh GELU is
    the gelu kind's approximate form, not a kind of its own."""
    kind = ACTIVATIONS[act]
    return "gelu, approximate: tanh" if kind == "gelu_tanh" else kind


def _tied(cfg: Config) -> bool:
    """tie_word_embeddings (default true): false means the MLM decoder has its own
    matrix (transformers then neither ties nor overwrites it)."""
    return bool(cfg.get("tie_word_embeddings", True))


def _mlm_head(src: str, act: str, vocab_tie: str | None) -> list[str]:
    decoder = (f"  - {{name: decoder, kind: linear, input: transform_norm, out_features: vocab, tie: {vocab_tie}}}"
               "   # tied to the word embeddings; its own bias" if vocab_tie else
               "  - {name: decoder, kind: linear, input: transform_norm, out_features: vocab}"
               "   # tie_word_embeddings false: its own matrix")
    return [f"  - {{name: transform, kind: linear, input: {src}, out_features: d_model}}",
            f"  - {{name: transform_act, kind: {_act_layer(act)}, input: transform}}",
            "  - {name: transform_norm, kind: layer_norm, input: transform_act, eps: eps}",
            decoder]


def spec_text(cfg: Config, names: dict | None, source: str) -> str:
    act = cfg.expect("hidden_act", tuple(ACTIVATIONS), "this feed-forward activation", "gelu")
    cfg.expect("position_embedding_type", ("absolute",), "relative position embeddings in BERT", "absolute")
    cfg.expect("is_decoder", (False,), "BERT as a decoder", False)
    cfg.expect("add_cross_attention", (False,), "BERT with cross-attention", False)
    max_len = cfg.int("max_position_embeddings")
    archs = cfg.get("architectures") or []
    p = prefix_of(names, "embeddings.word_embeddings.weight", ("bert.", ""))
    mlm = _has(names, "cls.predictions.") or (names is None and "BertForMaskedLM" in archs)
    classifier = _has(names, "classifier.") or (names is None and "BertForSequenceClassification" in archs)
    pooler = _has(names, p + "pooler.") or (names is None and not mlm)
    tied = _tied(cfg) and not stored_untied(cfg, "cls.predictions.decoder.weight",
                                             f"{p}embeddings.word_embeddings.weight") \
        and not stored_untied(cfg, "cls.predictions.decoder.bias", "cls.predictions.bias")
    if classifier and not pooler:
        raise cfg.unsupported("architectures", archs, "a classifier on a BERT without its pooler")
    out = _header("BERT", cfg, source, max_len) + [
        "params:",
        f"  vocab: {cfg.int('vocab_size')}          # vocab_size",
        f"  type_vocab: {cfg.int('type_vocab_size', 2)}        # type_vocab_size",
        f"  d_model: {cfg.int('hidden_size')}          # hidden_size",
        f"  heads: {cfg.int('num_attention_heads')}            # num_attention_heads",
        f"  n_layers: {cfg.int('num_hidden_layers')}         # num_hidden_layers",
        f"  d_ff: {cfg.int('intermediate_size')}            # intermediate_size",
        f"  max_len: {max_len}         # max_position_embeddings: the longest sequence",
        f"  eps: {yfloat(cfg.float('layer_norm_eps', 1e-12))}        # layer_norm_eps",
    ]
    if classifier:
        labels = names["classifier.weight"][0] if names and "classifier.weight" in names else \
            len(cfg.get("id2label") or {}) or 2
        out.append(f"  num_labels: {labels}       # classifier rows (id2label)")
    out += [
        "inputs:",
        "  input_ids: {dtype: int64, shape: [batch, seq], range: [0, vocab]}",
        "  token_type_ids: {dtype: int64, shape: [batch, seq], range: [0, type_vocab], "
        "doc: \"segment ids; all 0 for one sentence (HF's default)\"}",
        "  attention_mask: {dtype: int64, shape: [batch, seq], doc: \"1 = real token, 0 = padding (HF)\"}",
        "layers:",
        "  - {name: word_embeddings, kind: embedding, inputs: {ids: input_ids, token_type_ids: token_type_ids},",
        "     num_embeddings: vocab, embedding_dim: d_model, type_vocab_size: type_vocab}   # W[ids] + T[types]",
        "  - {name: position_embeddings, kind: learned_pe, input: word_embeddings, max_len: max_len}   # + P[0..seq-1]",
        "  - {name: embed_norm, kind: layer_norm, input: position_embeddings, eps: eps}",
    ] + _encoder("embed_norm", act, "hidden_act")
    outputs = ["outputs:", "  last_hidden_state: encoder          # [batch, seq, d_model]"]
    if pooler:
        out += ["  - {name: first_token, kind: slice, input: encoder, axis: 1, start: 0, end: 1}   # [batch, 1, d_model]",
                "  - {name: first, kind: reshape, input: first_token, shape: [batch, d_model]}",
                "  - {name: pooler, kind: linear, input: first, out_features: d_model}",
                "  - {name: pooler_act, kind: tanh, input: pooler}"]
        outputs.append("  pooler_output: pooler_act         # [batch, d_model]")
    if classifier:
        out.append("  - {name: classifier, kind: linear, input: pooler_act, out_features: num_labels}")
        outputs.append("  logits: classifier                 # [batch, num_labels]")
    if mlm:
        out += _mlm_head("encoder", act, "word_embeddings.weight" if tied else None)
        outputs.append("  logits: decoder                    # [batch, seq, vocab]")
    out += outputs
    E, L = f"{p}embeddings.", f"{p}encoder.layer.*."
    ignore = []
    if names is not None:
        ignore += [n for n in sorted(names) if n.endswith("embeddings.position_ids")]   # an old buffer
        if mlm:     # tied: the decoder's copies; untied: the decoder reads its own bias, not this one
            ignore += [n for n in (("cls.predictions.decoder.weight", "cls.predictions.decoder.bias") if tied
                                   else ("cls.predictions.bias",)) if n in names]
    w = ["weights:"]
    if ignore:
        w.append("  ignore:      # tied copies (the word embeddings, cls.predictions.bias) and buffers" if tied
                 else "  ignore:      # buffers, and cls.predictions.bias (untied: the decoder has its own)")
        w += [f"    - '{n}'" for n in ignore]
    w += ["  map:",
          rule(E + "word_embeddings.weight", "word_embeddings.weight"),
          rule(E + "token_type_embeddings.weight", "word_embeddings.token_type.weight"),
          rule(E + "position_embeddings.weight", "position_embeddings.weight"),
          rule(E + "LayerNorm.*", "embed_norm.{1}")]
    w += _qkv(L, "attention.self.query", "attention.self.key", "attention.self.value")
    w += [rule(L + "attention.output.dense.*", "encoder.layers.{1}.self_attn.out_proj.{2}"),
          rule(L + "attention.output.LayerNorm.*", "encoder.layers.{1}.norm1.{2}"),
          rule(L + "intermediate.dense.*", "encoder.layers.{1}.linear1.{2}"),
          rule(L + "output.dense.*", "encoder.layers.{1}.linear2.{2}"),
          rule(L + "output.LayerNorm.*", "encoder.layers.{1}.norm2.{2}")]
    if pooler:
        w.append(rule(f"{p}pooler.dense.*", "pooler.{1}"))
    if classifier:
        w.append(rule("classifier.*", "classifier.{1}"))
    if mlm:
        w += [rule("cls.predictions.transform.dense.*", "transform.{1}"),
              rule("cls.predictions.transform.LayerNorm.*", "transform_norm.{1}"),
              rule("cls.predictions.bias", "decoder.bias") if tied else
              rule("cls.predictions.decoder.*", "decoder.{1}")]
    return "\n".join(out + w) + "\n"


def distilbert_spec_text(cfg: Config, names: dict | None, source: str) -> str:
    act = cfg.expect("activation", tuple(ACTIVATIONS), "this feed-forward activation", "gelu")
    max_len = cfg.int("max_position_embeddings")
    archs = cfg.get("architectures") or []
    p = prefix_of(names, "embeddings.word_embeddings.weight", ("distilbert.", ""))
    mlm = _has(names, "vocab_projector.") or _has(names, "vocab_transform.") or \
        (names is None and "DistilBertForMaskedLM" in archs)
    tied = _tied(cfg) and not stored_untied(cfg, "vocab_projector.weight", f"{p}embeddings.word_embeddings.weight")
    out = _header("DistilBERT", cfg, source, max_len) + [
        "params:",
        f"  vocab: {cfg.int('vocab_size')}          # vocab_size",
        f"  d_model: {cfg.int('dim')}          # dim",
        f"  heads: {cfg.int('n_heads')}            # n_heads",
        f"  n_layers: {cfg.int('n_layers')}         # n_layers",
        f"  d_ff: {cfg.int('hidden_dim')}            # hidden_dim",
        f"  max_len: {max_len}         # max_position_embeddings: the longest sequence",
        "  eps: 1.0e-12       # DistilBERT's LayerNorms (fixed in its code)",
        "inputs:",
        "  input_ids: {dtype: int64, shape: [batch, seq], range: [0, vocab]}",
        "  attention_mask: {dtype: int64, shape: [batch, seq], doc: \"1 = real token, 0 = padding (HF)\"}",
        "layers:",
        "  - {name: word_embeddings, kind: embedding, input: input_ids, num_embeddings: vocab, embedding_dim: d_model}",
        "  - {name: position_embeddings, kind: learned_pe, input: word_embeddings, max_len: max_len}"
        "   # the stored table (sinusoidal_pos_embds too)",
        "  - {name: embed_norm, kind: layer_norm, input: position_embeddings, eps: eps}",
    ] + _encoder("embed_norm", act, "activation")
    outputs = ["outputs:", "  last_hidden_state: encoder          # [batch, seq, d_model]"]
    if mlm:
        out += _mlm_head("encoder", act, "word_embeddings.weight" if tied else None)
        outputs.append("  logits: decoder                    # [batch, seq, vocab]")
    out += outputs
    E, L = f"{p}embeddings.", f"{p}transformer.layer.*."
    w = ["weights:"]
    if mlm and tied and names is not None and "vocab_projector.weight" in names:
        w += ["  ignore: ['vocab_projector.weight']   # tied: the word embeddings"]
    w += ["  map:",
          rule(E + "word_embeddings.weight", "word_embeddings.weight"),
          rule(E + "position_embeddings.weight", "position_embeddings.weight"),
          rule(E + "LayerNorm.*", "embed_norm.{1}")]
    w += _qkv(L, "attention.q_lin", "attention.k_lin", "attention.v_lin")
    w += [rule(L + "attention.out_lin.*", "encoder.layers.{1}.self_attn.out_proj.{2}"),
          rule(L + "sa_layer_norm.*", "encoder.layers.{1}.norm1.{2}"),
          rule(L + "ffn.lin1.*", "encoder.layers.{1}.linear1.{2}"),
          rule(L + "ffn.lin2.*", "encoder.layers.{1}.linear2.{2}"),
          rule(L + "output_layer_norm.*", "encoder.layers.{1}.norm2.{2}")]
    if mlm:
        w += [rule("vocab_transform.*", "transform.{1}"),
              rule("vocab_layer_norm.*", "transform_norm.{1}"),
              rule("vocab_projector.bias", "decoder.bias") if tied else rule("vocab_projector.*", "decoder.{1}")]
    return "\n".join(out + w) + "\n"
