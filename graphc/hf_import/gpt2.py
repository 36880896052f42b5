"""GPT-2 (GPT2Model, GPT2LMHeadModel): learned positions, pre-norm causal
blocks with GELU (tanh), a final LayerNorm, an LM head tied to wte.

GPT-2 stores its projections as Conv1D, [in, out]: every one of them is
mapped with ``transpose: true``. Nothing guesses this from shapes, because the
square ``attn.c_proj`` would load transposed without any error.
"""
from __future__ import annotations

from .common import Config, prefix_of, rule, stored_untied, yfloat
from .generation import generation_section

# transformers' ACT2FN names -> graphc's; gelu_fast is the same tanh formula as gelu_new
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu",
               "relu": "relu", "silu": "silu", "swish": "silu"}


def spec_text(cfg: Config, names: dict | None, source: str) -> str:
    act = cfg.expect("activation_function", tuple(ACTIVATIONS), "this feed-forward activation", "gelu_new")
    if cfg.get("scale_attn_by_inverse_layer_idx", False) is not False:
        raise cfg.unsupported("scale_attn_by_inverse_layer_idx", cfg.get("scale_attn_by_inverse_layer_idx"),
                              "a per-layer attention scale (layer i's scores divided by i + 1)",
                              hint="graphc's repeated blocks share one scale, 1/sqrt(head_dim)")
    cfg.expect("add_cross_attention", (False,), "GPT-2's add_cross_attention variant", False)
    # reorder_and_upcast_attn computes the scores in float32 (and only with eager attention in
    # transformers 5): what graphc's float32 build computes anyway; no change to the graph
    cfg.expect("reorder_and_upcast_attn", (False, True), "", False)
    cfg.expect("scale_attn_weights", (True,), "unscaled attention scores", True)
    d = cfg.int("n_embd")
    heads = cfg.int("n_head")
    d_ff = cfg.int("n_inner", None) or 4 * d
    max_len = cfg.int("n_positions")
    archs = cfg.get("architectures") or []
    # a tied head is not saved (it is wte): the architecture says whether there is one
    lm = "GPT2LMHeadModel" in archs or (names is not None and any(n.startswith("lm_head.") for n in names))
    p = prefix_of(names, "wte.weight", ("transformer.", ""))
    tied = bool(cfg.get("tie_word_embeddings", True)) and not stored_untied(cfg, "lm_head.weight",
                                                                                  f"{p}wte.weight")
    ignore = []
    if names is not None:
        ignore = sorted({n.rsplit(".", 1)[0] + ".*" for n in names
                         if n.endswith((".attn.bias", ".attn.masked_bias"))})
    out = [
        f"# GPT-2 imported by 'graphc import' from {source}",
        "# (config.json; the weight map below loads its model.safetensors unchanged).",
        f"# Build: graphc build THIS.yaml --weights {source} -o model.onnx",
        "graphc: 1",
        "name: gpt2",
        f"dims: {{batch: 2, seq: {min(16, max_len)}}}      # example sizes; both stay symbolic",
        "params:",
        f"  vocab: {cfg.int('vocab_size')}          # vocab_size",
        f"  d_model: {d}          # n_embd",
        f"  heads: {heads}            # n_head",
        f"  n_layers: {cfg.int('n_layer')}         # n_layer",
        f"  d_ff: {d_ff}            # n_inner (null: 4 * n_embd)",
        f"  max_len: {max_len}         # n_positions: the longest sequence",
        f"  eps: {yfloat(cfg.float('layer_norm_epsilon', 1e-5))}        # layer_norm_epsilon",
        "inputs:",
        "  input_ids: {dtype: int64, shape: [batch, seq], range: [0, vocab]}",
        "  attention_mask: {dtype: int64, shape: [batch, seq], doc: \"1 = real token, 0 = padding (HF)\"}",
        "layers:",
        "  - {name: wte, kind: embedding, input: input_ids, num_embeddings: vocab, embedding_dim: d_model}",
        "  - {name: wpe, kind: learned_pe, input: wte, max_len: max_len}      # + wpe[0..seq-1]",
        "  - name: h",
        "    kind: transformer_encoder        # self-attention blocks; causal makes them a decoder",
        "    inputs: {x: wpe, key_padding_mask: attention_mask}",
        "    key_padding_polarity: keep       # attention_mask 1 = attend",
        "    causal: true",
        "    norm_first: true                 # x + attn(ln_1(x)); x + mlp(ln_2(x))",
        "    final_norm: true                 # ln_f",
        "    layers: n_layers",
        "    heads: heads",
        "    d_ff: d_ff",
        f"    activation: {ACTIVATIONS[act]}         # activation_function: {act}",
        "    eps: eps",
    ]
    outputs = ["outputs:"]
    if lm:
        if tied:
            out.append("  - {name: lm_head, kind: linear, input: h, out_features: vocab, bias: false, "
                       "tie: wte.weight}   # tied to the token embedding")
        else:
            out.append("  - {name: lm_head, kind: linear, input: h, out_features: vocab, bias: false}")
        outputs.append("  logits: lm_head                    # [batch, seq, vocab]")
    else:
        outputs.append("  last_hidden_state: h               # [batch, seq, d_model]")
    out += outputs
    L = f"{p}h.*."
    w = ["weights:"]
    if lm and tied and names is not None and "lm_head.weight" in names:
        ignore.append("lm_head.weight")
    if ignore:
        w.append("  ignore:      # tied copies and the causal-mask buffers some GPT-2 files store")
        w += [f"    - {q_}" for q_ in (f"'{i}'" for i in ignore)]
    w += ["  map:         # GPT-2 Conv1D weights are [in, out]: each is transposed, explicitly",
          rule(f"{p}wte.weight", "wte.weight"),
          rule(f"{p}wpe.weight", "wpe.weight"),
          rule(L + "ln_1.*", "h.layers.{1}.norm1.{2}"),
          rule(L + "attn.c_attn.weight", "h.layers.{1}.self_attn.in_proj_weight", True, "rows [q; k; v]"),
          rule(L + "attn.c_attn.bias", "h.layers.{1}.self_attn.in_proj_bias"),
          rule(L + "attn.c_proj.weight", "h.layers.{1}.self_attn.out_proj.weight", True, "square: no error would catch it"),
          rule(L + "attn.c_proj.bias", "h.layers.{1}.self_attn.out_proj.bias"),
          rule(L + "ln_2.*", "h.layers.{1}.norm2.{2}"),
          rule(L + "mlp.c_fc.weight", "h.layers.{1}.linear1.weight", True),
          rule(L + "mlp.c_fc.bias", "h.layers.{1}.linear1.bias"),
          rule(L + "mlp.c_proj.weight", "h.layers.{1}.linear2.weight", True),
          rule(L + "mlp.c_proj.bias", "h.layers.{1}.linear2.bias"),
          rule(f"{p}ln_f.*", "h.norm.{1}")]
    if lm and not tied:
        w.append(rule("lm_head.weight", "lm_head.weight"))
    out += w
    if lm:
        out += generation_section(cfg, cfg.int("vocab_size"), "input_ids", "attention_mask", "logits")
    return "\n".join(out) + "\n"
