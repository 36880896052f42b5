"""Transformer encoder/decoder layers, stacks and the whole encoder-decoder,
named like torch.nn.TransformerEncoderLayer / TransformerDecoderLayer /
Transformer so a PyTorch state_dict loads unchanged.

Post-norm (the paper, torch's default ``norm_first=False``):
    x = norm1(x + SA(x));  [x = norm2(x + CA(x, memory));]  x = normN(x + FF(x))
Pre-norm (``norm_first: true``):
    x = x + SA(norm1(x));  [x = x + CA(norm2(x), memory);]  x = x + FF(normN(x))
FF = linear2(act(linear1(x))), ReLU and width 2048 by default; LayerNorm eps
1e-5 (or RMSNorm). Dropout is the identity at inference. ``nn.Transformer``
adds a final norm after both stacks (``encoder.norm``, ``decoder.norm``), even
in post-norm mode; a bare ``nn.TransformerEncoder`` has none unless asked.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ..ir import Builder, Value
from .attention import IMPL, ROPE, ROPE_ARGS, MultiheadAttention
from .base import Call, LayerKind, Param, Port
from .basic import last_dim, layer_norm_op, rms_norm_op
from .feed_forward import FFN_ACTIVATIONS, feed_forward_op

_MHA = MultiheadAttention()


def _common_params(d_ff_default: int = 2048) -> tuple[Param, ...]:
    return (
        Param("heads", "int", doc="attention heads (torch nhead)", min=1),
        Param("d_ff", "int", d_ff_default, "feed-forward width (torch dim_feedforward)", min=1),
        Param("activation", "str", "relu", "feed-forward activation", choices=FFN_ACTIVATIONS),
        Param("norm", "str", "layer_norm", "normalisation: layer_norm (torch) or rms_norm", choices=("layer_norm", "rms_norm")),
        Param("norm_first", "bool", False, "pre-norm (true) or post-norm (false: the paper and torch's default)"),
        Param("eps", "float", 1e-5, "norm epsilon (torch layer_norm_eps)", min=0.0),
        Param("bias", "bool", True, "biases in attention, feed-forward and LayerNorm"),
        Param("kv_heads", "int", None, "key/value heads for grouped-query attention (default: heads)", min=1),
        Param("key_padding_polarity", "str", "masked", "padding masks: 'masked' = True is padding (torch), "
              "'keep' = True is a real token (HF attention_mask)", choices=("masked", "keep")),
        *ROPE,          # self-attention only: cross-attention keys are another sequence's positions
        IMPL,
    )


def _cfg(call: Call, d_model: int) -> dict:
    return dict(d=d_model, heads=call["heads"], d_ff=call["d_ff"], act=call["activation"], norm=call["norm"],
                first=call["norm_first"], eps=call["eps"], bias=call["bias"], kv_heads=call["kv_heads"],
                impl=call["impl"], kp_polarity=call["key_padding_polarity"],
                rope={k: call[k] for k in ROPE_ARGS})


def _norm(b: Builder, x: Value, scope: str, cfg: dict) -> Value:
    with b.scope(scope):
        if cfg["norm"] == "rms_norm":
            return rms_norm_op(b, x, cfg["d"], cfg["eps"])
        return layer_norm_op(b, x, cfg["d"], cfg["eps"], cfg["bias"])


def _attention(b: Builder, outer: Call, scope: str, query: Value, key: Value | None,
               masks: Mapping[str, Value | None], cfg: dict, causal: bool) -> Value:
    """Expand multihead_attention under ``scope`` (self_attn / multihead_attn)."""
    args = {p.name: p.default for p in _MHA.params}
    args.update(heads=cfg["heads"], bias=cfg["bias"], causal=causal, kv_heads=cfg["kv_heads"], impl=cfg["impl"],
                key_padding_polarity=cfg["kp_polarity"])
    if key is None:                     # self-attention: rotary positions, if asked for
        args.update(cfg["rope"])
    inputs = {"query": query, "key": key, "value": key, **masks}
    call = Call(outer.name, outer.kind, outer.span, args, outer.arg_spans, inputs, outer.input_spans)
    with b.scope(scope):
        return _MHA.expand(b, call)["y"]


def encoder_layer_op(b: Builder, call: Call, x: Value, masks: Mapping[str, Value | None], cfg: dict,
                     causal: bool = False) -> Value:
    def sa(h):
        return _attention(b, call, "self_attn", h, None, masks, cfg, causal)

    def ff(h):
        return feed_forward_op(b, h, cfg["d"], cfg["d_ff"], cfg["act"], cfg["bias"])
    if cfg["first"]:
        x = b.op("Add", [x, sa(_norm(b, x, "norm1", cfg))])
        return b.op("Add", [x, ff(_norm(b, x, "norm2", cfg))])
    x = _norm(b, b.op("Add", [x, sa(x)]), "norm1", cfg)
    return _norm(b, b.op("Add", [x, ff(x)]), "norm2", cfg)


def decoder_layer_op(b: Builder, call: Call, x: Value, memory: Value, self_masks: Mapping[str, Value | None],
                     mem_masks: Mapping[str, Value | None], cfg: dict, causal: bool) -> Value:
    def sa(h):
        return _attention(b, call, "self_attn", h, None, self_masks, cfg, causal)

    def ca(h):
        return _attention(b, call, "multihead_attn", h, memory, mem_masks, cfg, False)

    def ff(h):
        return feed_forward_op(b, h, cfg["d"], cfg["d_ff"], cfg["act"], cfg["bias"])
    if cfg["first"]:
        x = b.op("Add", [x, sa(_norm(b, x, "norm1", cfg))])
        x = b.op("Add", [x, ca(_norm(b, x, "norm2", cfg))])
        return b.op("Add", [x, ff(_norm(b, x, "norm3", cfg))])
    x = _norm(b, b.op("Add", [x, sa(x)]), "norm1", cfg)
    x = _norm(b, b.op("Add", [x, ca(x)]), "norm2", cfg)
    return _norm(b, b.op("Add", [x, ff(x)]), "norm3", cfg)


def _check_width(call: Call, x: Value, port: str) -> int:
    if x.rank != 3:
        raise call.error(f"{port} must be [batch, seq, d_model], got rank {x.rank}", port)
    return last_dim(call, x, port)


def encoder_stack_op(b, call, x, masks, cfg, n_layers, final_norm, causal=False):
    for i in range(n_layers):
        with b.scope("layers"), b.scope(str(i)):
            x = encoder_layer_op(b, call, x, masks, cfg, causal)
    return _norm(b, x, "norm", cfg) if final_norm else x


def decoder_stack_op(b, call, x, memory, self_masks, mem_masks, cfg, n_layers, final_norm, causal):
    for i in range(n_layers):
        with b.scope("layers"), b.scope(str(i)):
            x = decoder_layer_op(b, call, x, memory, self_masks, mem_masks, cfg, causal)
    return _norm(b, x, "norm", cfg) if final_norm else x


_SELF_PORTS = (Port("key_padding_mask", "bool [batch, seq], True = padding (torch src_key_padding_mask)", True),
               Port("key_lengths", "int [batch]: positions >= length are padding", True),
               Port("attn_mask", "bool (True = masked) or additive float [seq, seq] (torch src_mask)", True))
_MEM_PORTS = (Port("memory_key_padding_mask", "bool [batch, src_seq], True = padding", True),
              Port("memory_lengths", "int [batch]: memory positions >= length are padding", True))
_TGT_PORTS = (Port("tgt_key_padding_mask", "bool [batch, tgt_seq], True = padding", True),
              Port("tgt_lengths", "int [batch]", True),
              Port("tgt_mask", "bool (True = masked) or additive float [tgt_seq, tgt_seq], on top of causal", True))


def _decoder_inputs(call: Call):
    """x, memory, target masks, memory masks and config of a decoder layer or stack,
    with the memory's width checked against d_model."""
    x, mem = call.inputs["x"], call.inputs["memory"]
    d = _check_width(call, x, "x")
    if _check_width(call, mem, "memory") != d:
        raise call.error(f"memory width {mem.shape[-1]} differs from d_model {d}", "memory")
    return (x, mem, _masks(call, "tgt_key_padding_mask", "tgt_lengths", "tgt_mask"),
            _masks(call, "memory_key_padding_mask", "memory_lengths"), _cfg(call, d))


def _masks(call: Call, kpm: str, lengths: str, attn: str | None = None) -> dict:
    out = {"key_padding_mask": call.inputs.get(kpm), "key_lengths": call.inputs.get(lengths)}
    if attn:
        out["attn_mask"] = call.inputs.get(attn)
    return out


def _layer_np(x, w, prefix, cfg, causal, masks, memory=None, mem_masks=None):
    """numpy reference of one encoder (memory None) or decoder layer, from the formulas."""
    mha_args = {p.name: p.default for p in _MHA.params}
    mha_args.update(heads=cfg["heads"], bias=cfg["bias"], kv_heads=cfg["kv_heads"],
                    key_padding_polarity=cfg.get("kp_polarity", "masked"))

    def sub(name):
        return {k[len(prefix + name) + 1:]: v for k, v in w.items() if k.startswith(prefix + name + ".")}

    def norm(h, name):
        p = sub(name)
        h64 = h.astype(np.float64)
        if cfg["norm"] == "rms_norm":
            return h64 / np.sqrt((h64 ** 2).mean(-1, keepdims=True) + cfg["eps"]) * p["weight"]
        mu, var = h64.mean(-1, keepdims=True), h64.var(-1, keepdims=True)
        y = (h64 - mu) / np.sqrt(var + cfg["eps"]) * p["weight"]
        return y + p["bias"] if cfg["bias"] else y

    def attn(h, name, key, m, c):
        rope = cfg.get("rope", {}) if key is None else {}
        return _MHA.reference({**mha_args, **rope, "causal": c}, sub(name), {"query": h, "key": key, **m})["y"]

    def ff(h):
        l1, l2 = sub("linear1"), sub("linear2")
        a = h @ l1["weight"].T + (l1["bias"] if cfg["bias"] else 0)
        if cfg["act"] == "relu":
            a = np.maximum(a, 0)
        elif cfg["act"] in ("gelu", "gelu_tanh"):
            if cfg["act"] == "gelu_tanh":
                a = 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))
            else:
                a = 0.5 * a * (1 + np.vectorize(math.erf)(a / math.sqrt(2)))
        else:
            silu = a / (1 + np.exp(-a))
            if cfg["act"] == "swiglu":
                l3 = sub("linear3")
                silu = silu * (h @ l3["weight"].T + (l3["bias"] if cfg["bias"] else 0))
            a = silu
        return a @ l2["weight"].T + (l2["bias"] if cfg["bias"] else 0)
    last = "norm3" if memory is not None else "norm2"
    if cfg["first"]:
        x = x + attn(norm(x, "norm1"), "self_attn", None, masks, causal)
        if memory is not None:
            x = x + attn(norm(x, "norm2"), "multihead_attn", memory, mem_masks, False)
        return x + ff(norm(x, last))
    x = norm(x + attn(x, "self_attn", None, masks, causal), "norm1")
    if memory is not None:
        x = norm(x + attn(x, "multihead_attn", memory, mem_masks, False), "norm2")
    return norm(x + ff(x), last)


def _np_masks(inputs, kpm, lengths, attn=None):
    out = {"key_padding_mask": inputs.get(kpm), "key_lengths": inputs.get(lengths)}
    if attn:
        out["attn_mask"] = inputs.get(attn)
    return out


def _np_cfg(args, d):
    return dict(d=d, heads=args["heads"], d_ff=args["d_ff"], act=args["activation"], norm=args["norm"],
                first=args["norm_first"], eps=args["eps"], bias=args["bias"], kv_heads=args["kv_heads"],
                kp_polarity=args["key_padding_polarity"],
                rope={k: args[k] for k in ROPE_ARGS})


class TransformerEncoderLayer(LayerKind):
    """One encoder layer (torch.nn.TransformerEncoderLayer, batch_first=True):
    self-attention and a feed-forward block, each with a residual connection
    and a norm, post-norm or pre-norm. ``causal: true`` makes it a decoder-only
    (GPT-style) block. Parameters: self_attn.*, linear1.*, linear2.*, norm1.*, norm2.*."""

    kind = "transformer_encoder_layer"
    summary = "self-attention + FFN with residuals and norms, like nn.TransformerEncoderLayer"
    params = _common_params() + (Param("causal", "bool", False, "causal self-attention (decoder-only models)"),)
    inputs = (Port("x", "[batch, seq, d_model]"),) + _SELF_PORTS
    shape_rule = "[B, S, d_model] -> [B, S, d_model]"
    example = "{name: layer, kind: transformer_encoder_layer, input: x, heads: 8, d_ff: 2048}"

    def expand(self, b, call):
        x = call.inputs["x"]
        cfg = _cfg(call, _check_width(call, x, "x"))
        return {"y": encoder_layer_op(b, call, x, _masks(call, "key_padding_mask", "key_lengths", "attn_mask"),
                                      cfg, call["causal"])}

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        return {"y": _layer_np(x, weights, "", _np_cfg(args, x.shape[-1]), args["causal"],
                               _np_masks(inputs, "key_padding_mask", "key_lengths", "attn_mask"))}


class TransformerDecoderLayer(LayerKind):
    """One decoder layer (torch.nn.TransformerDecoderLayer, batch_first=True):
    masked self-attention, cross-attention on the encoder output ("memory":
    keys and values from the memory, queries from the decoder) and a
    feed-forward block, each with a residual and a norm. Parameters:
    self_attn.*, multihead_attn.*, linear1.*, linear2.*, norm1.*, norm2.*, norm3.*."""

    kind = "transformer_decoder_layer"
    summary = "masked self-attention + cross-attention + FFN, like nn.TransformerDecoderLayer"
    params = _common_params() + (Param("causal", "bool", True, "causal (look-ahead) self-attention mask"),)
    inputs = (Port("x", "[batch, tgt_seq, d_model]"), Port("memory", "encoder output [batch, src_seq, d_model]")) \
        + _TGT_PORTS + _MEM_PORTS
    shape_rule = "[B, T, d_model], [B, S, d_model] -> [B, T, d_model]"
    example = "{name: layer, kind: transformer_decoder_layer, inputs: {x: tgt, memory: enc}, heads: 8}"

    def expand(self, b, call):
        x, mem, self_masks, mem_masks, cfg = _decoder_inputs(call)
        return {"y": decoder_layer_op(b, call, x, mem, self_masks, mem_masks, cfg, call["causal"])}

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        return {"y": _layer_np(x, weights, "", _np_cfg(args, x.shape[-1]), args["causal"],
                               _np_masks(inputs, "tgt_key_padding_mask", "tgt_lengths", "tgt_mask"),
                               inputs["memory"].astype(np.float64),
                               _np_masks(inputs, "memory_key_padding_mask", "memory_lengths"))}


class TransformerEncoder(LayerKind):
    """A stack of ``layers`` encoder layers with distinct weights
    (torch.nn.TransformerEncoder): parameters ``layers.{i}.*`` and, with
    ``final_norm``, ``norm.*``. ``causal: true`` gives a decoder-only stack."""

    kind = "transformer_encoder"
    summary = "N encoder layers (+ optional final norm), like nn.TransformerEncoder"
    params = (Param("layers", "int", 6, "number of layers (torch num_layers)", min=1, max=1024),) + _common_params() + (
        Param("final_norm", "bool", False, "a norm after the last layer (torch's norm= argument)"),
        Param("causal", "bool", False, "causal self-attention (decoder-only models)"))
    inputs = TransformerEncoderLayer.inputs
    shape_rule = "[B, S, d_model] -> [B, S, d_model]"
    example = "{name: encoder, kind: transformer_encoder, input: src, layers: 6, heads: 8, d_ff: 2048}"

    def expand(self, b, call):
        x = call.inputs["x"]
        cfg = _cfg(call, _check_width(call, x, "x"))
        return {"y": encoder_stack_op(b, call, x, _masks(call, "key_padding_mask", "key_lengths", "attn_mask"), cfg,
                                      call["layers"], call["final_norm"], call["causal"])}

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        cfg = _np_cfg(args, x.shape[-1])
        m = _np_masks(inputs, "key_padding_mask", "key_lengths", "attn_mask")
        for i in range(args["layers"]):
            x = _layer_np(x, weights, f"layers.{i}.", cfg, args["causal"], m)
        if args["final_norm"]:
            x = _final_np(x, weights, cfg)
        return {"y": x}


def _final_np(x, w, cfg):
    if cfg["norm"] == "rms_norm":
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + cfg["eps"]) * w["norm.weight"]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + cfg["eps"]) * w["norm.weight"]
    return y + w["norm.bias"] if cfg["bias"] else y


class TransformerDecoder(LayerKind):
    """A stack of ``layers`` decoder layers (torch.nn.TransformerDecoder):
    parameters ``layers.{i}.*`` and, with ``final_norm``, ``norm.*``."""

    kind = "transformer_decoder"
    summary = "N decoder layers (+ optional final norm), like nn.TransformerDecoder"
    params = (Param("layers", "int", 6, "number of layers", min=1, max=1024),) + _common_params() + (
        Param("final_norm", "bool", False, "a norm after the last layer"),
        Param("causal", "bool", True, "causal (look-ahead) self-attention mask"))
    inputs = TransformerDecoderLayer.inputs
    shape_rule = "[B, T, d_model], [B, S, d_model] -> [B, T, d_model]"
    example = "{name: decoder, kind: transformer_decoder, inputs: {x: tgt, memory: encoder}, layers: 6, heads: 8}"

    def expand(self, b, call):
        x, mem, self_masks, mem_masks, cfg = _decoder_inputs(call)
        return {"y": decoder_stack_op(b, call, x, mem, self_masks, mem_masks, cfg,
                                      call["layers"], call["final_norm"], call["causal"])}

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        mem = inputs["memory"].astype(np.float64)
        cfg = _np_cfg(args, x.shape[-1])
        sm = _np_masks(inputs, "tgt_key_padding_mask", "tgt_lengths", "tgt_mask")
        mm = _np_masks(inputs, "memory_key_padding_mask", "memory_lengths")
        for i in range(args["layers"]):
            x = _layer_np(x, weights, f"layers.{i}.", cfg, args["causal"], sm, mem, mm)
        if args["final_norm"]:
            x = _final_np(x, weights, cfg)
        return {"y": x}


class Transformer(LayerKind):
    """The whole encoder-decoder of torch.nn.Transformer (batch_first=True):
    ``encoder.layers.{i}.*``, ``encoder.norm.*``, ``decoder.layers.{i}.*``,
    ``decoder.norm.*`` (both final norms, as torch always adds them). The
    target self-attention is causal by default; the source padding mask also
    masks the memory in cross-attention unless a memory mask is given. That
    default differs from torch on purpose: ``nn.Transformer.forward`` leaves
    ``memory_key_padding_mask`` None, so its decoder attends to the padded
    source positions; pass the source mask there too to compare with torch."""

    kind = "transformer"
    summary = "encoder-decoder Transformer, like nn.Transformer (causal target mask built in)"
    params = (Param("encoder_layers", "int", 6, "torch num_encoder_layers", min=1, max=1024),
              Param("decoder_layers", "int", 6, "torch num_decoder_layers", min=1, max=1024)) + _common_params() + (
        Param("final_norms", "bool", True, "encoder.norm and decoder.norm (nn.Transformer always has them)"),
        Param("causal", "bool", True, "causal target self-attention"))
    inputs = (Port("src", "[batch, src_seq, d_model]"), Port("tgt", "[batch, tgt_seq, d_model]"),
              Port("src_key_padding_mask", "bool [batch, src_seq], True = padding", True),
              Port("src_lengths", "int [batch]", True),
              Port("src_mask", "bool (True = masked) or float [src_seq, src_seq]", True)) + _TGT_PORTS + _MEM_PORTS
    shape_rule = "[B, S, d_model], [B, T, d_model] -> [B, T, d_model]"
    example = "{name: transformer, kind: transformer, inputs: {src: src, tgt: tgt}, heads: 8}"

    def expand(self, b, call):
        src, tgt = call.inputs["src"], call.inputs["tgt"]
        d = _check_width(call, src, "src")
        if _check_width(call, tgt, "tgt") != d:
            raise call.error(f"tgt width {tgt.shape[-1]} differs from src width {d}", "tgt")
        cfg = _cfg(call, d)
        src_masks = _masks(call, "src_key_padding_mask", "src_lengths", "src_mask")
        mem_masks = _masks(call, "memory_key_padding_mask", "memory_lengths")
        if mem_masks["key_padding_mask"] is None and mem_masks["key_lengths"] is None:
            mem_masks = {"key_padding_mask": src_masks["key_padding_mask"], "key_lengths": src_masks["key_lengths"]}
        with b.scope("encoder"):
            memory = encoder_stack_op(b, call, src, src_masks, cfg, call["encoder_layers"], call["final_norms"])
        with b.scope("decoder"):
            y = decoder_stack_op(b, call, tgt, memory, _masks(call, "tgt_key_padding_mask", "tgt_lengths", "tgt_mask"),
                                 mem_masks, cfg, call["decoder_layers"], call["final_norms"], call["causal"])
        return {"y": y}

    def reference(self, args, weights, inputs):
        enc = TransformerEncoder().reference(
            {**args, "layers": args["encoder_layers"], "final_norm": args["final_norms"], "causal": False},
            {k[8:]: v for k, v in weights.items() if k.startswith("encoder.")},
            {"x": inputs["src"], "key_padding_mask": inputs.get("src_key_padding_mask"),
             "key_lengths": inputs.get("src_lengths"), "attn_mask": inputs.get("src_mask")})["y"]
        mem_kpm = inputs.get("memory_key_padding_mask")
        mem_len = inputs.get("memory_lengths")
        if mem_kpm is None and mem_len is None:
            mem_kpm, mem_len = inputs.get("src_key_padding_mask"), inputs.get("src_lengths")
        return TransformerDecoder().reference(
            {**args, "layers": args["decoder_layers"], "final_norm": args["final_norms"]},
            {k[8:]: v for k, v in weights.items() if k.startswith("decoder.")},
            {"x": inputs["tgt"], "memory": enc, "tgt_key_padding_mask": inputs.get("tgt_key_padding_mask"),
             "tgt_lengths": inputs.get("tgt_lengths"), "tgt_mask": inputs.get("tgt_mask"),
             "memory_key_padding_mask": mem_kpm, "memory_lengths": mem_len})


KINDS = (TransformerEncoderLayer, TransformerDecoderLayer, TransformerEncoder, TransformerDecoder, Transformer)
