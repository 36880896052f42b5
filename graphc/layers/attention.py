"""Scaled dot-product and multi-head attention, with every mask a user meets.

Math (Vaswani et al. 2017, eq. 1; torch.nn.MultiheadAttention):
    Attention(Q, K, V) = softmax(Q K^T * scale + M) V,   scale = 1/sqrt(head_dim)
    head_h = Attention(x W_q[h], m W_k[h'], m W_v[h'])     h' = floor(h * kv_heads / heads)
    MHA(x, m) = concat(head_1 .. head_H) W_o^T + b_o       (W_o optional)

Mask polarity (the place exporters ship wrong numbers) is converted once, in
``build_masks``, to a single boolean "True = masked out" tensor:
- ``key_padding_mask`` [batch, key_seq] bool: True = padding (torch MHA) by
  default; ``key_padding_polarity: keep`` for HF-style 1 = real token.
- ``key_lengths`` [batch] int: keys at positions >= length are padding.
- ``attn_mask`` bool [q, k] / [batch, q, k] / [batch, heads, q, k]: True =
  masked (torch MHA) by default for ``multihead_attention``, True = may attend
  (F.scaled_dot_product_attention, ONNX Attention) by default for
  ``scaled_dot_product_attention``; set ``attn_mask_polarity`` to say which.
  A float ``attn_mask`` is added to the scores (-inf entries count as masked).
- ``causal: true``: query i sees keys 0..i (torch's top-left alignment).
Rows with every key masked give zeros, never NaN, in float32 and float16.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import Builder, Init, Value
from ..prims.attention_core import attention_reference
from ..shapes import Dim, format_shape
from .base import Call, LayerKind, Param, Port
from .basic import declare_linear, last_dim, linear_op
from .positional import MAX_TABLE_LEN, Rope, apply_rope, apply_rope_packed
from .relayout import heads_from_rows, transposed

ROPE = (
    Param("rope", "str", None, "rotary position embedding of queries and keys, after the projection: "
          "'half' (GPT-NeoX, HF LLaMA) or 'interleaved' (GPT-J, Meta LLaMA); positions 0..seq-1",
          choices=("half", "interleaved")),
    Param("rope_base", "float", 10000.0, "with rope: theta_i = rope_base^(-2i/head_dim)"),
    Param("rope_max_len", "int", 4096, "with rope: the longest sequence accepted (rows of the cos/sin tables)",
          min=1, max=MAX_TABLE_LEN),
    Param("rope_scaling", "str", None, "with rope: scaled frequencies, as transformers' rope_type names them: "
          "'linear' (every theta_i / rope_factor) or 'llama3' (Llama 3.1: wavelengths above rope_original_max_len"
          " / rope_low_freq_factor divided by rope_factor, below rope_original_max_len / rope_high_freq_factor "
          "kept, blended between)", choices=("linear", "llama3")),
    Param("rope_factor", "float", 1.0, "with rope_scaling: the factor the frequencies are divided by"),
    Param("rope_low_freq_factor", "float", 1.0, "with rope_scaling llama3: low_freq_factor"),
    Param("rope_high_freq_factor", "float", 4.0, "with rope_scaling llama3: high_freq_factor"),
    Param("rope_original_max_len", "int", 8192, "with rope_scaling llama3: original_max_position_embeddings",
          min=1),
)
ROPE_ARGS = tuple(p.name for p in ROPE)


def rope_scaling(args) -> tuple | None:
    """The ``scaling`` tuple of graphc.layers.positional.rope_theta, from a call's (or
    a reference's) arguments; None without rope_scaling."""
    if args["rope_scaling"] is None:
        return None
    return (args["rope_scaling"], float(args["rope_factor"]), float(args["rope_low_freq_factor"]),
            float(args["rope_high_freq_factor"]), int(args["rope_original_max_len"]))

IMPL = Param("impl", "str", "auto", "attention lowering: auto (measured choice), decomposed (MatMul/Softmax, "
             "any opset) or fused (ONNX Attention, opset >= 23)", choices=("auto", "decomposed", "fused"))


def _polarity(name: str, default: str) -> Param:
    return Param(name, "str", default, "boolean mask meaning: 'masked' = True masks a position out, "
                 "'keep' = True lets it be attended", choices=("masked", "keep"))


# --------------------------------------------------------------------------- masks

def build_masks(b: Builder, call: Call, batch: Dim, q_len: Dim, k_len: Dim, heads: int, dtype: str,
                kp_polarity: str = "masked", am_polarity: str = "masked") -> tuple[Value | None, Value | None]:
    """All mask inputs -> (masked: bool, True = masked out, rank 4; bias: float additive, rank 4)."""
    masked: Value | None = None
    bias: Value | None = None

    def add(m: Value) -> None:
        nonlocal masked
        masked = m if masked is None else b.op("Or", [masked, m])

    kpm = call.inputs.get("key_padding_mask")
    if kpm is not None:
        if kpm.dtype in ("int64", "int32"):     # HF's int64 1/0 attention_mask: nonzero reads as True
            kpm = b.op("Cast", [kpm], to="bool")
        if kpm.dtype != "bool":
            raise call.error(f"key_padding_mask must be bool or int ({'True/1 = padding' if kp_polarity == 'masked' else 'True/1 = real token'}), "
                             f"got {kpm.dtype}", "key_padding_mask",
                             hint="for HF-style 1 = real token / 0 = padding masks (bool or int64), "
                                  "set key_padding_polarity: keep")
        if kpm.rank != 2 or kpm.shape[0] != batch or kpm.shape[1] != k_len:
            raise call.error(f"key_padding_mask must be [batch, key_seq] = {format_shape((batch, k_len))}, "
                             f"got {format_shape(kpm.shape)}", "key_padding_mask")
        m = kpm if kp_polarity == "masked" else b.op("Not", [kpm])
        add(b.op("Reshape", [m], shape=(batch, Dim.const(1), Dim.const(1), k_len)))   # [B, Sk] -> [B, 1, 1, Sk]
    lengths = call.inputs.get("key_lengths")
    if lengths is not None:
        if lengths.dtype not in ("int64", "int32") or lengths.rank != 1 or lengths.shape[0] != batch:
            raise call.error(f"key_lengths must be int64 [batch] = {format_shape((batch,))}, got "
                             f"{lengths.dtype}{format_shape(lengths.shape)}", "key_lengths")
        if lengths.dtype != "int64":
            lengths = b.op("Cast", [lengths], to="int64")
        key_ref = call.inputs.get("key") or call.inputs.get("k") or call.inputs.get("query") or call.inputs.get("q")
        pos = b.op("Arange", [key_ref], axis=-2 if key_ref.rank == 4 else 1)                 # [Sk]
        lens = b.op("Reshape", [lengths], shape=(batch, Dim.const(1)))                      # [B] -> [B, 1]
        pad = b.op("LessOrEqual", [lens, pos])                                              # [B, Sk]: pos >= len
        add(b.op("Reshape", [pad], shape=(batch, Dim.const(1), Dim.const(1), k_len)))      # -> [B, 1, 1, Sk]
    am = call.inputs.get("attn_mask")
    if am is not None:
        am_masked, bias = attn_mask_terms(b, call, am, batch, q_len, k_len, heads, dtype, am_polarity)
        if am_masked is not None:
            add(am_masked)
    return masked, bias


def attn_mask_terms(b: Builder, call: Call, am: Value, batch: Dim, q_len: Dim, k_len: Dim, heads: int, dtype: str,
                    am_polarity: str) -> tuple[Value | None, Value | None]:
    """attn_mask -> (masked: bool rank 4, True = masked out; or bias: float additive rank 4);
    shared by the plain masks and a cached attention (whose keys are past + new)."""
    masked = bias = None
    if am.rank == 2:
        shape4 = (Dim.const(1), Dim.const(1)) + am.shape                                # [Sq, Sk] -> [1, 1, Sq, Sk]
    elif am.rank == 3:
        shape4 = (am.shape[0], Dim.const(1)) + am.shape[1:]                             # [B, Sq, Sk] -> [B, 1, Sq, Sk]
    elif am.rank == 4:
        shape4 = am.shape
    else:
        raise call.error(f"attn_mask must be [q, k], [batch, q, k] or [batch, heads, q, k], "
                         f"got {format_shape(am.shape)}", "attn_mask")
    want = (batch, Dim.const(heads), q_len, k_len)
    for got, full, what in zip(shape4, want, ("batch", "heads", "query length", "key length")):
        if got != 1 and got != full:
            raise call.error(f"attn_mask {format_shape(am.shape)} does not fit the scores "
                             f"{format_shape(want)}: its {what} is {got}, expected {full} or 1", "attn_mask")
    am4 = b.op("Reshape", [am], shape=shape4) if am.rank != 4 else am
    if am.dtype in ("int64", "int32"):      # a 1/0 mask, read like a bool one (additive masks are float)
        am4 = b.op("Cast", [am4], to="bool")
    if am4.dtype == "bool":
        masked = am4 if am_polarity == "masked" else b.op("Not", [am4])
    elif am.dtype == dtype:
        bias = am4
    else:
        raise call.error(f"attn_mask must be bool, int (1/0, read as bool) or {dtype} (additive), "
                         f"got {am.dtype}", "attn_mask")
    return masked, bias


def _np_masks(args, inputs, batch, heads, sq, sk, kp_pol, am_pol):
    masked = np.zeros((batch, 1, 1, sk), bool)
    bias = None
    if inputs.get("key_padding_mask") is not None:
        kpm = inputs["key_padding_mask"].astype(bool)
        masked = masked | (kpm if kp_pol == "masked" else ~kpm)[:, None, None, :]
    if inputs.get("key_lengths") is not None:
        masked = masked | (np.arange(sk)[None, :] >= inputs["key_lengths"][:, None])[:, None, None, :]
    am = inputs.get("attn_mask")
    if am is not None:
        am4 = am.reshape((1, 1) + am.shape) if am.ndim == 2 else am[:, None] if am.ndim == 3 else am
        if am.dtype == bool or am.dtype.kind in "iu":
            am4 = am4.astype(bool)
            masked = masked | (am4 if am_pol == "masked" else ~am4)
        else:
            bias = am4
    return masked, bias


# --------------------------------------------------------------------------- SDPA

class ScaledDotProductAttention(LayerKind):
    """softmax(Q K^T * scale + mask) V on [batch, heads, seq, head_dim] tensors,
    like torch.nn.functional.scaled_dot_product_attention (with ``enable_gqa``
    when key/value have fewer heads). No parameters.

    Boolean ``attn_mask`` defaults to SDPA's polarity: True = may attend."""

    kind = "scaled_dot_product_attention"
    summary = "softmax(Q K^T * scale + mask) V over [batch, heads, seq, head_dim]"
    params = (
        Param("scale", "float", None, "score scale; default 1/sqrt(head_dim)", min=0.0),
        Param("causal", "bool", False, "query i attends to keys 0..i only"),
        _polarity("attn_mask_polarity", "keep"),
        _polarity("key_padding_polarity", "masked"),
        IMPL,
    )
    inputs = (Port("q", "queries [batch, heads, q_seq, head_dim]"),
              Port("k", "keys [batch, kv_heads, k_seq, head_dim]"),
              Port("v", "values [batch, kv_heads, k_seq, v_dim]"),
              Port("attn_mask", "bool or additive float mask, [q, k] / [batch, q, k] / [batch, heads, q, k]", True),
              Port("key_padding_mask", "bool [batch, k_seq]", True),
              Port("key_lengths", "int [batch]: keys at positions >= length are padding", True))
    shape_rule = "[B, H, Sq, D], [B, Hkv, Sk, D], [B, Hkv, Sk, Dv] -> [B, H, Sq, Dv]"
    example = "{name: attn, kind: scaled_dot_product_attention, inputs: [q, k, v], causal: true}"

    def expand(self, b, call):
        q, k, v = call.inputs["q"], call.inputs["k"], call.inputs["v"]
        for port, t in (("q", q), ("k", k), ("v", v)):
            if t.rank != 4:
                raise call.error(f"{port} must be [batch, heads, seq, head_dim], got {format_shape(t.shape)}", port)
        d = q.shape[3]
        if not d.is_const:
            raise call.error(f"head_dim must be a fixed number, got '{d}'", "q")
        scale = call["scale"] if call["scale"] is not None else 1 / math.sqrt(d.value)
        heads = q.shape[1].value if q.shape[1].is_const else 1
        masked, bias = build_masks(b, call, q.shape[0], q.shape[2], k.shape[2], heads, q.dtype,
                                   call["key_padding_polarity"], call["attn_mask_polarity"])
        # optional slots by position: None omits one (a bias with no mask leaves slot 3 empty)
        y = b.op("Attention", [q, k, v, masked, bias], scale=float(scale), causal=call["causal"],
                 lowering={"impl": call["impl"]})
        return {"y": y}

    def reference(self, args, weights, inputs):
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        scale = args["scale"] if args["scale"] is not None else 1 / math.sqrt(q.shape[-1])
        masked, bias = _np_masks(args, inputs, q.shape[0], q.shape[1], q.shape[2], k.shape[2],
                                 args["key_padding_polarity"], args["attn_mask_polarity"])
        return {"y": attention_reference(q, k, v, masked, bias, scale, args["causal"])}


# --------------------------------------------------------------------------- MHA

def _cached_self_attention(b: Builder, call: Call, c: dict, sq: Dim) -> bool:
    """Whether this attention reads and extends a KV cache (a --kv-cache build's
    causal self-attention over the generated tokens: graphc.ir.kv_cache)."""
    gen = getattr(b, "gen", None)
    if gen is None:
        return False
    key = call.inputs.get("key") or call.inputs["query"]
    if not c["self_attn"] and gen.applies(key.shape[1]):
        raise call.error("attention whose keys run over the generated tokens must be self-attention (key and "
                         "value the query itself) to be cached", "key",
                         hint="a --kv-cache build caches causal self-attention only; build without --kv-cache")
    if not c["self_attn"] or not gen.applies(sq):
        return False
    if not call["causal"]:
        raise call.error("non-causal self-attention over the generated tokens cannot be cached: each token "
                         "would see later ones", "causal",
                         hint="decoders attend causally (causal: true); build without --kv-cache otherwise")
    kpm = call.inputs.get("key_padding_mask")
    if kpm is not None and kpm.name == gen.attention_mask.name:
        # the spec's tokens_mask: the shared cache mask already applies it
        if call["key_padding_polarity"] != "keep":
            raise call.error("the generation tokens_mask (1 = real token) is read here with key_padding_polarity "
                             "'masked' (True = padding)", "key_padding_mask",
                             hint="set key_padding_polarity: keep, or give the attention a mask of the "
                                  "padding (True = padding) that is not the tokens_mask")
        kpm = None
    for port in ("key_padding_mask", "key_lengths"):
        if (kpm if port == "key_padding_mask" else call.inputs.get(port)) is not None:
            raise call.error(f"with --kv-cache the bundle's attention_mask input [batch, past + seq] masks the "
                             f"generated tokens: leave {port} unconnected", port)
    return True


def _decode_projection(b: Builder, call: Call, x: Value, w_in: Value, b_in: Value | None, heads: int,
                       kvh: int, hd: int, scale: np.float32) -> tuple[Value, Value, Value, bool]:
    """q, k, v heads [B, n, S, D] of a cached (decode-step) self-attention, rope applied
    (the shared cache layout: the packed [B, S, (H + 2 Hkv) D] projection, and None, None).

    One flat [B*S, W] @ [W, (H + 2 Hkv) D] GEMM, then a reshape and a transpose
    into the head layout. The batched per-head form of plain builds
    ([B, 1, S, W] @ [n, W, D]) is n GEMVs at one new token, needs a guard
    against an empty batch (an If around every projection) and measured 3x
    slower at batch 4 (docs/generation.md, "The decode step, compile side").
    Rope rotates the query and key heads together (one set of rotation ops
    on [B, H + Hkv, S, D], then a split): elementwise, so the same numbers."""
    nq, nk = heads * hd, kvh * hd
    n = heads + 2 * kvh
    bsz, sq, width = x.shape[0], x.shape[1], x.shape[2].value
    one = Dim.const

    def flat_weight(w: np.ndarray) -> np.ndarray:             # [N, W] rows [W_q; W_k; W_v] -> [W, N]
        out = transposed(w)
        out[:, :nq] *= scale                                    # 1/sqrt(d) folded into the query columns
        return out
    w = b.derive(flat_weight, [w_in], (width, nq + 2 * nk), label="qkv_weight_t")
    y = b.op("MatMul", [x, w])                                                  # [B, S, W] @ [W, N] -> [B, S, N]
    if b_in is not None:
        bias = b.derive(lambda bb: np.concatenate([bb[:nq] * scale, bb[nq:]]).astype(bb.dtype), [b_in],
                        (nq + 2 * nk,), label="qkv_bias")
        y = b.op("Add", [y, bias])
    def too_long(message, hint):
        return call.error("rope: " + message, "rope_max_len", hint=hint)
    if b.gen.shared:
        # the shared buffer's kernel (graphc.prims.shared_cache) takes the packed [B, S, N]
        # projection as it is: rope turns its query and key columns in place, no reshapes
        if call["rope"] is not None:
            y = apply_rope_packed(b, y, call["rope"], call["rope_base"], call["rope_max_len"], heads + kvh, kvh, hd,
                                  b.gen.positions(call["rope_max_len"]), too_long, rope_scaling(call))
        return y, None, None, call["rope"] is not None
    y = b.op("Reshape", [y], shape=(bsz, sq, one(n), one(hd)))                  # -> [B, S, n, D]
    y = b.op("Transpose", [y], perm=[0, 2, 1, 3])                               # -> [B, n, S, D]
    if call["rope"] is None:
        qh, kh, vh = b.op("Split", [y], n_out=3, axis=1, sizes=[heads, kvh, kvh])
        return qh, kh, vh, False
    qk, vh = b.op("Split", [y], n_out=2, axis=1, sizes=[heads + kvh, kvh])      # [B, H + Hkv, S, D], [B, Hkv, S, D]
    # rotated (linear: commutes with the scale)
    qk = apply_rope(b, qk, call["rope"], call["rope_base"], call["rope_max_len"], -2, too_long,
                    b.gen.positions(call["rope_max_len"]), rope_scaling(call))
    qh, kh = b.op("Split", [qk], n_out=2, axis=1, sizes=[heads, kvh])
    return qh, kh, vh, True


class MultiheadAttention(LayerKind):
    """Multi-head attention like torch.nn.MultiheadAttention(batch_first=True),
    plus grouped-query heads and an optional output projection.

    Inputs are [batch, seq, width]. Parameters (torch names):
    ``in_proj_weight`` [(heads + 2*kv_heads) * head_dim, embed_dim] and
    ``in_proj_bias`` when key and value have the query's width (torch packs
    q, k, v rows as [W_q; W_k; W_v]); otherwise ``q_proj_weight``,
    ``k_proj_weight``, ``v_proj_weight`` and ``in_proj_bias``;
    ``out_proj.weight`` [embed_dim, heads * head_dim] and ``out_proj.bias``.
    Head h uses the feature slice [h*head_dim, (h+1)*head_dim). Without the
    output projection the output is the concatenation of the heads, width
    heads * head_dim (the tutorial: 8 heads of width 3 give 24).

    A 3-D ``attn_mask`` is [batch, q, k], one mask for every head of a batch
    row; torch's 3-D form is [batch * heads, q, k] (head-major within each
    batch row): give that one as [batch, heads, q, k] (a reshape). ``causal``
    with q_seq != k_seq is aligned top-left, as torch's ``is_causal``: query i
    sees keys 0..i, whatever the key length.

    ``rope`` rotates queries and keys after the projection (RoFormer; the
    ``rope`` kind's math, positions 0..seq-1), as GPT-NeoX/LLaMA-style models
    do; it adds no parameters.

    The 1/sqrt(head_dim) scale is folded into the query weights at compile
    time. The projections are stored per head ([heads, width, head_dim]) and
    produce the [batch, heads, seq, head_dim] layout directly; self-attention
    runs one batched QKV MatMul.
    """

    kind = "multihead_attention"
    summary = "multi-head attention like torch.nn.MultiheadAttention (GQA, masks, optional out_proj)"
    params = (
        Param("heads", "int", doc="number of query heads", min=1),
        Param("head_dim", "int", None, "width of each head; default embed_dim / heads (must divide)", min=1),
        Param("kv_heads", "int", None, "key/value heads (grouped-query attention); default heads; must divide heads", min=1),
        Param("embed_dim", "int", None, "query width; inferred from the query when omitted", min=1),
        Param("bias", "bool", True, "biases on the input and output projections"),
        Param("out_proj", "bool", True, "apply the output projection (false: output the concatenated heads)"),
        Param("scale", "float", None, "score scale; default 1/sqrt(head_dim)", min=0.0),
        Param("causal", "bool", False, "query i attends to keys 0..i only (look-ahead mask)"),
        _polarity("key_padding_polarity", "masked"),
        _polarity("attn_mask_polarity", "masked"),
        *ROPE,
        IMPL,
    )
    inputs = (Port("query", "[batch, q_seq, embed_dim]"),
              Port("key", "[batch, k_seq, kdim]; default: the query (self-attention)", True),
              Port("value", "[batch, k_seq, vdim]; default: the key", True),
              Port("key_padding_mask", "bool [batch, k_seq]; True = padding unless key_padding_polarity: keep", True),
              Port("key_lengths", "int [batch]: keys at positions >= length are padding", True),
              Port("attn_mask", "bool (True = masked unless attn_mask_polarity: keep) or additive float; "
                   "[q, k], [batch, q, k] or [batch, heads, q, k]", True))
    shape_rule = "[B, Sq, E] (+ [B, Sk, kdim], [B, Sk, vdim]) -> [B, Sq, E] (or [B, Sq, heads*head_dim] without out_proj)"
    example = "{name: attn, kind: multihead_attention, input: x, heads: 8}"

    def config(self, call: Call) -> dict:
        q = call.inputs["query"]
        if q.rank != 3:
            raise call.error(f"query must be [batch, seq, embed_dim], got {format_shape(q.shape)}", "query")
        e = last_dim(call, q, "query")
        if call["embed_dim"] is not None and call["embed_dim"] != e:
            raise call.error(f"embed_dim is {call['embed_dim']} but the query has width {e}", "embed_dim")
        heads = call["heads"]
        hd = call["head_dim"]
        if hd is None:
            if e % heads:
                raise call.error(f"{heads} heads do not divide embed_dim {e}", "heads",
                                 hint="choose heads dividing the width, or set head_dim explicitly")
            hd = e // heads
        kvh = call["kv_heads"] or heads
        if heads % kvh:
            raise call.error(f"kv_heads {kvh} does not divide heads {heads}", "kv_heads")
        key = call.inputs.get("key") or q
        value = call.inputs.get("value") or key
        for port, t in (("key", key), ("value", value)):
            if t.rank != 3 or t.shape[0] != q.shape[0]:
                raise call.error(f"{port} must be [batch, seq, width] with the query's batch {q.shape[0]}, "
                                 f"got {format_shape(t.shape)}", port)
        if key.shape[1] != value.shape[1]:
            raise call.error(f"key length {key.shape[1]} differs from value length {value.shape[1]}", "value")
        kdim, vdim = last_dim(call, key, "key"), last_dim(call, value, "value")
        if call["rope"] is None and call["rope_scaling"] is not None:
            raise call.error("rope_scaling scales rotary frequencies, but this attention has no rope", "rope_scaling",
                             hint="add rope: half (HF LLaMA) or rope: interleaved")
        if call["rope"] is not None:
            if hd % 2:
                raise call.error(f"rope rotates channel pairs and needs an even head_dim, got {hd}", "rope")
            if not call["rope_base"] > 1.0:
                raise call.error(f"rope_base must be greater than 1, got {call['rope_base']}", "rope_base")
            if call["rope_scaling"] is not None and not call["rope_factor"] > 0:
                raise call.error(f"rope_factor must be positive, got {call['rope_factor']}", "rope_factor")
            if call["rope_scaling"] == "llama3" and \
                    not 0 < call["rope_low_freq_factor"] < call["rope_high_freq_factor"]:
                raise call.error("rope_scaling llama3 needs 0 < rope_low_freq_factor < rope_high_freq_factor, got "
                                 f"{call['rope_low_freq_factor']} and {call['rope_high_freq_factor']}",
                                 "rope_high_freq_factor")
            for port, t in (("query", q), ("key", key)):
                n = t.shape[1]
                if n.is_const and n.value > call["rope_max_len"]:
                    raise call.error(f"the {port} sequence has length {n.value}, longer than rope_max_len "
                                     f"{call['rope_max_len']}", "rope_max_len",
                                     hint=f"set rope_max_len to at least {n.value}")
        return dict(e=e, heads=heads, hd=hd, kvh=kvh, kdim=kdim, vdim=vdim, packed=(kdim == e and vdim == e),
                    self_attn=(key.name == q.name and value.name == q.name),
                    scale=call["scale"] if call["scale"] is not None else 1 / math.sqrt(hd))

    def expand(self, b, call):
        c = self.config(call)
        x = call.inputs["query"]
        key = call.inputs.get("key") or x
        value = call.inputs.get("value") or key
        e, heads, hd, kvh = c["e"], c["heads"], c["hd"], c["kvh"]
        nq, nk = heads * hd, kvh * hd
        bias_on = call["bias"]
        scale = np.float32(c["scale"])
        xavier = Init("xavier_uniform", 1.0)
        if c["packed"]:
            w_in = b.param("in_proj_weight", (nq + 2 * nk, e), xavier, doc="rows [W_q; W_k; W_v]")
            w_parts = [w_in]
        else:
            w_parts = [b.param("q_proj_weight", (nq, e), xavier), b.param("k_proj_weight", (nk, c["kdim"]), xavier),
                       b.param("v_proj_weight", (nk, c["vdim"]), xavier)]
        b_in = b.param("in_proj_bias", (nq + 2 * nk,), Init("zeros")) if bias_on else None

        bsz, sq, sk = x.shape[0], x.shape[1], key.shape[1]
        one = Dim.const

        def head_projection(parts: list[tuple[int, int, bool]], label: str) -> tuple[Value, Value | None]:
            """Rows lo:hi of the packed projection, for each (lo, hi, fold) part, as one
            stack of per-head matrices [n, width, head_dim] (and the bias as [n, 1, head_dim]),
            the query part pre-scaled: one Derive that writes each head straight into place."""
            sources: list[Value] = []
            plan = []                                   # (source index, first row, last row, scale)
            for lo, hi, fold in parts:
                if c["packed"]:
                    src, off = w_parts[0], 0
                else:
                    src, off = ((w_parts[0], 0) if lo < nq else (w_parts[1], nq) if lo < nq + nk
                                else (w_parts[2], nq + nk))
                if src not in sources:
                    sources.append(src)
                plan.append((sources.index(src), lo - off, hi - off, float(scale) if fold else 1.0))
            width = sources[0].shape[1].value
            n = sum((hi - lo) // hd for lo, hi, _ in parts)
            span_tag = f"{parts[0][0]}_{parts[0][1]}_heads"        # the label of a single part
            # W[rows] [n*D, W] -> n x [D, W] -> [n, W, D]: head h's columns of x @ W^T
            wh = b.derive(lambda *ws, plan=tuple(plan): heads_from_rows(
                [(ws[i][a:z], s) for i, a, z, s in plan], hd), sources, (n, width, hd),
                label=f"w{span_tag}" if len(parts) == 1 else f"{label}_weight_heads")
            bh = None
            if b_in is not None:
                spans = tuple((lo, hi, scale if fold else np.float32(1)) for lo, hi, fold in parts)
                bh = b.derive(lambda bb, spans=spans: np.concatenate(
                    [(bb[lo:hi] * s).reshape(-1, 1, hd) for lo, hi, s in spans]), [b_in], (n, 1, hd),
                    label=f"b{span_tag}" if len(parts) == 1 else f"{label}_bias_heads")
            return wh, bh

        def project_heads(inp: Value, s: Dim, parts: list[tuple[int, int, bool]], label: str) -> list[Value]:
            """Project straight into [B, n, S, D] head layout: one batched MatMul of the
            input against per-head weights, so no Reshape/Transpose of the product is
            needed (measured 11% faster than MatMul + Split + 3 Transposes for the
            attention block at b8 s256, docs/benchmarks.md). Several parts (q, k, v)
            sharing an input share one MatMul, split along the head axis."""
            w, bb = head_projection(parts, label)
            width = w.shape[1]
            x4 = b.op("Reshape", [inp], shape=(bsz, one(1), s, width))       # [B, S, W] -> [B, 1, S, W]
            y = b.op("MatMul", [x4, w])                                        # [B, 1, S, W] @ [n, W, D] -> [B, n, S, D]
            if bb is not None:
                y = b.op("Add", [y, bb])                                       # + [n, 1, D]
            if len(parts) == 1:
                return [y]
            sizes = [(hi - lo) // hd for lo, hi, _ in parts]
            return list(b.op("Split", [y], n_out=len(parts), axis=1, sizes=sizes))

        q_part, k_part, v_part = (0, nq, True), (nq, nq + nk, False), (nq + nk, nq + 2 * nk, False)
        cached = _cached_self_attention(b, call, c, sq)
        rope_done = False
        if cached and c["packed"]:
            # a decode step: one flat GEMM, and rope on the query and key heads at once
            qh, kh, vh, rope_done = _decode_projection(b, call, x, w_parts[0], b_in, heads, kvh, hd, scale)
        elif c["self_attn"] and c["packed"]:
            qh, kh, vh = project_heads(x, sq, [q_part, k_part, v_part], "qkv")     # one MatMul for q, k and v
        else:
            (qh,) = project_heads(x, sq, [q_part], "q")
            if key.name == value.name and c["packed"]:
                kh, vh = project_heads(key, sk, [k_part, v_part], "kv")
            else:
                (kh,) = project_heads(key, sk, [k_part], "k")
                (vh,) = project_heads(value, sk, [v_part], "v")
        if call["rope"] is not None and not rope_done:
            # the rotation is linear, so it commutes with the 1/sqrt(d) folded into the query heads
            def too_long(message, hint):
                return call.error("rope: " + message, "rope_max_len", hint=hint)
            positions = b.gen.positions(call["rope_max_len"]) if cached else None
            qh, kh = (apply_rope(b, t, call["rope"], call["rope_base"], call["rope_max_len"], -2, too_long,
                                 positions, rope_scaling(call)) for t in (qh, kh))      # [B, n, S, D], rotated
        if cached and b.gen.shared:
            # one buffer per layer updated in place (graphc.prims.shared_cache): [B, S, H*D] out
            if call.inputs.get("attn_mask") is not None or not c["packed"]:
                raise call.error("the shared cache layout takes self-attention with one packed q/k/v "
                                 "projection and no attn_mask (relative-position biases need the concat layout)",
                                 "attn_mask" if call.inputs.get("attn_mask") is not None else None,
                                 hint="build without --cache-layout shared")
            y = b.gen.shared_attention(b, qh, kh, vh, heads, kvh, hd)
        elif cached:
            # [B, Hkv, S, D] -> [B, Hkv, past + S, D]; the mask is bottom-right causal + attention_mask
            kh, vh = b.gen.self_attention(b, kh, vh, heads)
            masked, bias = b.gen.mask(b), None
            if call.inputs.get("attn_mask") is not None:
                # over the cached keys too ([.., seq, past_seq + seq], e.g. T5's relative-position bias)
                extra, bias = attn_mask_terms(b, call, call.inputs["attn_mask"], bsz, sq, b.gen.total, heads,
                                              x.dtype, call["attn_mask_polarity"])
                masked = masked if extra is None else b.op("Or", [masked, extra])
        else:
            masked, bias = build_masks(b, call, bsz, sq, sk, heads, x.dtype,
                                       call["key_padding_polarity"], call["attn_mask_polarity"])
        if not (cached and b.gen.shared):
            att = b.op("Attention", [qh, kh, vh, masked, bias], scale=1.0, causal=call["causal"] and not cached,
                       lowering={"impl": call["impl"]})                         # [B, H, Sq, D]
            att = b.op("Transpose", [att], perm=[0, 2, 1, 3])                   # -> [B, Sq, H, D]
            y = b.op("Reshape", [att], shape=(bsz, sq, one(nq)))                # -> [B, Sq, H*D]
        if call["out_proj"]:
            with b.scope("out_proj"):
                w, bb = declare_linear(b, nq, e, bias_on)
                y = linear_op(b, y, w, bb)                                      # -> [B, Sq, E]
        return {"y": y}

    def reference(self, args, weights, inputs):
        x = inputs["query"].astype(np.float64)
        key = inputs.get("key")
        key = x if key is None else key.astype(np.float64)
        value = inputs.get("value")
        value = key if value is None else value.astype(np.float64)
        e = x.shape[-1]
        heads = args["heads"]
        hd = args["head_dim"] or e // heads
        kvh = args["kv_heads"] or heads
        nq, nk = heads * hd, kvh * hd
        if "in_proj_weight" in weights:
            w = weights["in_proj_weight"]
            wq, wk, wv = w[:nq], w[nq:nq + nk], w[nq + nk:]
        else:
            wq, wk, wv = weights["q_proj_weight"], weights["k_proj_weight"], weights["v_proj_weight"]
        bq = bk = bv = 0
        if args["bias"]:
            bb = weights["in_proj_bias"]
            bq, bk, bv = bb[:nq], bb[nq:nq + nk], bb[nq + nk:]
        q, k, v = x @ wq.T + bq, key @ wk.T + bk, value @ wv.T + bv
        bsz, sq, sk = x.shape[0], x.shape[1], key.shape[1]
        qh = q.reshape(bsz, sq, heads, hd).transpose(0, 2, 1, 3)
        kh = k.reshape(bsz, sk, kvh, hd).transpose(0, 2, 1, 3)
        vh = v.reshape(bsz, sk, kvh, hd).transpose(0, 2, 1, 3)
        if args.get("rope") is not None:
            rope_args = dict(style=args["rope"], base=args["rope_base"], seq_axis=-2, scaling=rope_scaling(args))
            qh, kh = (Rope().reference(rope_args, {}, {"x": t})["y"] for t in (qh, kh))
        scale = args["scale"] if args["scale"] is not None else 1 / math.sqrt(hd)
        masked, bias = _np_masks(args, inputs, bsz, heads, sq, sk, args["key_padding_polarity"],
                                 args["attn_mask_polarity"])
        o = attention_reference(qh, kh, vh, masked, bias, scale, args["causal"])
        o = o.transpose(0, 2, 1, 3).reshape(bsz, sq, nq)
        if args["out_proj"]:
            o = o @ weights["out_proj.weight"].T
            if args["bias"]:
                o = o + weights["out_proj.bias"]
        return {"y": o}


KINDS = (ScaledDotProductAttention, MultiheadAttention)
