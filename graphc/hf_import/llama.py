"""LLaMA and Mistral (LlamaModel/LlamaForCausalLM, MistralModel/...ForCausalLM):
pre-norm RMSNorm blocks, rotary positions (HF's half split), grouped-query
attention, a SwiGLU feed-forward, a final RMSNorm and an LM head.

HF keeps q/k/v as separate Linear layers; graphc's attention packs them as
torch's ``in_proj_weight`` rows [W_q; W_k; W_v], so the weight map
concatenates the three (GQA: k and v have kv_heads * head_dim rows each).
"""
from __future__ import annotations

from ..errors import GraphcError
from .common import Config, prefix_of, rule, stored_untied, yfloat
from .generation import generation_section


# rope kinds graphc reproduces: the plain rotation, 'dynamic' (the plain angles at every
# position graphc accepts), and the scaled frequencies of the rope layer's rope_scaling
PLAIN_ROPE = ("default", "dynamic")
SCALED_ROPE = {"linear": ("factor",),
               "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
ROPE_HINT = ("supported: 'default', 'linear', 'llama3', and 'dynamic' (the plain angles below "
             "max_position_embeddings); transformers' angles for this kind would differ")


def _rope(cfg: Config) -> tuple[float, list[str]]:
    """rope_theta and the rope_scaling lines of the blocks, from rope_parameters
    (transformers 5) or rope_theta + rope_scaling (4.x).

    'dynamic' (NTK) scaling is the plain rotation here: transformers recomputes its
    frequencies only once a position reaches max_position_embeddings (below that
    they are the plain ones, exactly), and graphc refuses positions from there on
    (rope_max_len = max_position_embeddings). 'linear' and 'llama3' scale the
    frequencies at every position: the rope layer's rope_scaling, with the config's
    factors. Others ('yarn', 'longrope', ...) also rescale cos/sin: refused."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict):
        key, scaling = "rope_parameters", params
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise cfg.unsupported("partial_rotary_factor", params["partial_rotary_factor"], "partial rotary embeddings")
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    else:
        key, scaling = "rope_scaling", cfg.get("rope_scaling")
        theta = cfg.get("rope_theta", 10000.0)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise GraphcError(f"{cfg.path}: rope_theta must be a positive number, got {theta!r}")
    if scaling is None:
        return float(theta), []
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else scaling
    if kind in PLAIN_ROPE:
        return float(theta), []
    if kind not in SCALED_ROPE:
        raise cfg.unsupported(f"{key}.rope_type" if key == "rope_parameters" else key, kind if key ==
                              "rope_parameters" else scaling, f"the '{kind}' rotary scaling", hint=ROPE_HINT)
    values = []
    for name in SCALED_ROPE[kind]:
        v = scaling.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise GraphcError(f"{cfg.path}: {key}.{name} must be a positive number for rope_type '{kind}', got {v!r}")
        values.append(v)
    if kind == "llama3" and not values[1] < values[2]:
        raise GraphcError(f"{cfg.path}: {key}: low_freq_factor {values[1]} must be below high_freq_factor "
                          f"{values[2]}")
    lines = [f"    rope_scaling: {kind}               # {key}.rope_type: frequencies scaled",
             f"    rope_factor: {yfloat(values[0])}                # {key}.factor"]
    if kind == "llama3":
        if not isinstance(values[3], int):
            raise GraphcError(f"{cfg.path}: {key}.original_max_position_embeddings must be an integer, "
                              f"got {values[3]!r}")
        lines += [f"    rope_low_freq_factor: {yfloat(values[1])}       # {key}.low_freq_factor",
                  f"    rope_high_freq_factor: {yfloat(values[2])}      # {key}.high_freq_factor",
                  f"    rope_original_max_len: {values[3]}     # {key}.original_max_position_embeddings"]
    return float(theta), lines


def spec_text(cfg: Config, names: dict | None, source: str) -> str:
    family = "Mistral" if cfg.model_type == "mistral" else "LLaMA"
    cfg.expect("hidden_act", ("silu",), "this feed-forward activation (graphc's SwiGLU uses silu)", "silu")
    bias = cfg.get("attention_bias", False)
    if bias not in (False, True) or cfg.get("mlp_bias", False) != bias:
        raise cfg.unsupported("attention_bias/mlp_bias", [bias, cfg.get("mlp_bias", False)],
                              "biases in attention but not the feed-forward (or the reverse)",
                              hint="graphc's transformer layers have biases everywhere or nowhere")
    if cfg.int("pretraining_tp", 1) != 1:
        raise cfg.unsupported("pretraining_tp", cfg.get("pretraining_tp"), "tensor-parallel slicing")
    d = cfg.int("hidden_size")
    heads = cfg.int("num_attention_heads")
    kv_heads = cfg.int("num_key_value_heads", heads)
    if heads == 0 or d % heads:
        raise GraphcError(f"{cfg.path}: hidden_size {d} is not a multiple of num_attention_heads {heads}")
    head_dim = cfg.int("head_dim", d // heads)
    if head_dim != d // heads:
        raise cfg.unsupported("head_dim", head_dim, f"a head width other than hidden_size / num_attention_heads "
                              f"= {d // heads}")
    theta, rope_lines = _rope(cfg)
    max_len = cfg.int("max_position_embeddings")
    window = cfg.get("sliding_window")
    why_len = "max_position_embeddings"
    if cfg.model_type == "mistral" and isinstance(window, int) and window < max_len:
        # up to the window, sliding-window attention is plain causal attention
        max_len, why_len = window, "sliding_window: graphc has no sliding-window mask, so longer inputs are refused"
    archs = cfg.get("architectures") or []
    lm = (names is not None and any(n.startswith("lm_head.") for n in names)) or \
        any(a.endswith("ForCausalLM") for a in archs)
    p = prefix_of(names, "embed_tokens.weight", ("model.", ""))
    tied = bool(cfg.get("tie_word_embeddings", False)) and not stored_untied(cfg, "lm_head.weight",
                                                                             f"{p}embed_tokens.weight")
    name = cfg.model_type
    out = [
        f"# {family} imported by 'graphc import' from {source}",
        "# (config.json; the weight map below loads its safetensors unchanged).",
        f"# Build: graphc build THIS.yaml --weights {source} -o model.onnx",
        "graphc: 1",
        f"name: {name}",
        f"dims: {{batch: 2, seq: {min(16, max_len)}}}      # example sizes; both stay symbolic",
        "params:",
        f"  vocab: {cfg.int('vocab_size')}          # vocab_size",
        f"  d_model: {d}          # hidden_size",
        f"  heads: {heads}            # num_attention_heads",
        f"  kv_heads: {kv_heads}         # num_key_value_heads (grouped-query attention)",
        f"  n_layers: {cfg.int('num_hidden_layers')}         # num_hidden_layers",
        f"  d_ff: {cfg.int('intermediate_size')}            # intermediate_size",
        f"  max_len: {max_len}         # {why_len}",
        f"  eps: {yfloat(cfg.float('rms_norm_eps', 1e-6))}        # rms_norm_eps",
        f"  rope_theta: {yfloat(theta)}   # rope_theta",
        "inputs:",
        "  input_ids: {dtype: int64, shape: [batch, seq], range: [0, vocab]}",
        "  attention_mask: {dtype: int64, shape: [batch, seq], doc: \"1 = real token, 0 = padding (HF)\"}",
        "layers:",
        "  - {name: embed, kind: embedding, input: input_ids, num_embeddings: vocab, embedding_dim: d_model}",
        "  - name: blocks",
        "    kind: transformer_encoder        # self-attention blocks; causal makes them a decoder",
        "    inputs: {x: embed, key_padding_mask: attention_mask}",
        "    key_padding_polarity: keep       # attention_mask 1 = attend",
        "    causal: true",
        "    norm_first: true                 # x + attn(input_layernorm(x)); x + mlp(post_attention_layernorm(x))",
        "    norm: rms_norm",
        "    final_norm: true                 # model.norm",
        "    layers: n_layers",
        "    heads: heads",
        "    kv_heads: kv_heads",
        "    d_ff: d_ff",
        "    activation: swiglu               # down(silu(gate(x)) * up(x))",
        f"    bias: {'true' if bias else 'false'}                      # attention_bias, mlp_bias",
        "    eps: eps",
        "    rope: half                       # HF's rotate_half (GPT-NeoX style)",
        "    rope_base: rope_theta",
        "    rope_max_len: max_len",
        *rope_lines,
    ]
    outputs = ["outputs:"]
    if lm:
        tie = ", tie: embed.weight" if tied else ""
        out.append(f"  - {{name: lm_head, kind: linear, input: blocks, out_features: vocab, bias: false{tie}}}")
        outputs.append("  logits: lm_head                    # [batch, seq, vocab]")
    else:
        outputs.append("  last_hidden_state: blocks          # [batch, seq, d_model]")
    out += outputs
    L = f"{p}layers.*."
    A = L + "self_attn."
    w = ["weights:"]
    ignore = []
    if lm and tied and names is not None and "lm_head.weight" in names:
        ignore.append("  - 'lm_head.weight'                # tied: the same table as embed_tokens")
    if names is not None and any(n.endswith(".rotary_emb.inv_freq") for n in names):
        # saves before transformers 4.31 stored the rotary frequencies, a buffer the rope layer computes
        ignore.append(f"  - '{A}rotary_emb.inv_freq'")
    if ignore:
        w += ["  ignore:"] + ["  " + i for i in ignore]
    w += ["  map:",
          rule(f"{p}embed_tokens.weight", "embed.weight"),
          rule(L + "input_layernorm.weight", "blocks.layers.{1}.norm1.weight"),
          rule([A + "q_proj.weight", A + "k_proj.weight", A + "v_proj.weight"],
               "blocks.layers.{1}.self_attn.in_proj_weight", comment="rows [q; k; v]")]
    if bias:
        w.append(rule([A + "q_proj.bias", A + "k_proj.bias", A + "v_proj.bias"],
                      "blocks.layers.{1}.self_attn.in_proj_bias"))
    w.append(rule(A + "o_proj.*", "blocks.layers.{1}.self_attn.out_proj.{2}"))
    w += [rule(L + "post_attention_layernorm.weight", "blocks.layers.{1}.norm2.weight"),
          rule(L + "mlp.gate_proj.*", "blocks.layers.{1}.linear1.{2}", comment="silu(gate) ..."),
          rule(L + "mlp.up_proj.*", "blocks.layers.{1}.linear3.{2}", comment="... * up"),
          rule(L + "mlp.down_proj.*", "blocks.layers.{1}.linear2.{2}"),
          rule(f"{p}norm.weight", "blocks.norm.weight")]
    if lm and not tied:
        w.append(rule("lm_head.weight", "lm_head.weight"))
    out += w
    if lm:
        out += generation_section(cfg, cfg.int("vocab_size"), "input_ids", "attention_mask", "logits")
    return "\n".join(out) + "\n"
