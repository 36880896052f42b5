"""Cached self-attention over a shared, preallocated KV buffer (``--cache-layout shared``).

``SharedCacheAttention(q, k, v, past_k, past_v, bias) -> (y, present_k, present_v)``

- q [B, S, H*D], k and v [B, S, Hkv*D]: this step's projected (and rotated) heads,
  flat, as onnxruntime's GroupQueryAttention takes them; or, with k and v omitted
  (empty slots), q packed [B, S, (H + 2 Hkv) D] holding queries, keys and values in
  that order (what graphc's one q/k/v GEMM gives). The 1/sqrt(D) scale is already
  folded into the queries (graphc.layers.attention).
- past_k, past_v [B, Hkv, C, D]: the cache *buffer*; C is its capacity, fixed for a
  whole generation. Its first P columns hold the earlier tokens, P = T - S.
- bias [B, 1, S, T] additive float (0 = visible, the dtype's lowest value = masked;
  graphc.ir.kv_cache builds it once from attention_mask: padding). T, the total length
  so far, is read from its last axis at run time. The causal rule is part of the op
  (as in GroupQueryAttention): query j (column P + j) sees key columns 0..P + j.
- present_k, present_v [B, Hkv, C, D]: the buffer with columns P..T-1 replaced by
  this step's keys/values. A runtime that binds present to the same memory as past
  gets the update in place (no copy of the cache per step: onnxruntime-genai's
  ``past_present_share_buffer``); one that does not gets a copy, same numbers.
- y [B, S, H*D]: softmax(q k^T + bias) v over the first T columns; query head h
  reads kv head h // (H / Hkv).

Why a primitive of its own rather than Concat + Attention: the concat contract
(present = past ++ new, graphc.ir.kv_cache) makes every step allocate and copy the
whole cache, and ONNX has no in-place update to express the buffer; only ORT's
GroupQueryAttention writes into a buffer bound as both past and present, so this
primitive has an ``ort`` lowering (graphc.lower.target_ort) and no standard one.

Rows whose keys are all masked (a left-padded prompt's pad positions) average the
values uniformly, as GroupQueryAttention does with a finite lowest-value bias
(scores + bias round to the same float32 number); nothing reads those rows.
"""
from __future__ import annotations

import numpy as np

from ..shapes import format_shape
from ..tensors import FLOAT_DTYPES, TensorType
from ._flops import numel
from ._registry import ShapeError, prim


def shared_cache_reference(q, k, v, past_k, past_v, bias, heads: int, kv_heads: int):
    """numpy from the math: the buffer update, then grouped attention in float64
    with scores rounded to the input dtype before the bias is added (as the kernel
    adds it), so fully masked rows come out uniform like the kernel's."""
    b, s, _ = q.shape
    d = past_k.shape[3]
    if k is None:                                                  # packed [B, S, (H + 2 Hkv) D]
        q, k, v = np.split(q, [heads * d, (heads + kv_heads) * d], axis=2)
    total = bias.shape[3]
    start = total - s
    if start < 0 or total > past_k.shape[2]:
        raise ValueError(f"a step of {s} new tokens to a total of {total} does not fit a cache buffer of "
                         f"{past_k.shape[2]} columns")
    present_k, present_v = past_k.copy(), past_v.copy()
    present_k[:, :, start:total] = k.reshape(b, s, kv_heads, d).transpose(0, 2, 1, 3)   # [B, S, Hkv*D] -> [B, Hkv, S, D]
    present_v[:, :, start:total] = v.reshape(b, s, kv_heads, d).transpose(0, 2, 1, 3)
    qh = q.reshape(b, s, heads, d).transpose(0, 2, 1, 3).astype(np.float64)           # -> [B, H, S, D]
    rep = heads // kv_heads
    kh = np.repeat(present_k[:, :, :total].astype(np.float64), rep, axis=1)           # [B, H, T, D]
    vh = np.repeat(present_v[:, :, :total].astype(np.float64), rep, axis=1)
    scores = (qh @ kh.transpose(0, 1, 3, 2)).astype(q.dtype) + bias.astype(q.dtype)    # [B, H, S, T]
    scores = scores.astype(np.float64)
    later = np.arange(total)[None, :] > (start + np.arange(s))[:, None]               # [S, T]: key after query
    scores[..., later] = -np.inf
    e = np.exp(scores - scores.max(-1, keepdims=True))
    y = (e / e.sum(-1, keepdims=True)) @ vh                                           # [B, H, S, D]
    y = y.transpose(0, 2, 1, 3).reshape(b, s, heads * d).astype(q.dtype)              # -> [B, S, H*D]
    return y, present_k, present_v


def _eval(q, k, v, past_k, past_v, bias, *, heads, kv_heads, **_):
    return shared_cache_reference(q, k, v, past_k, past_v, bias, heads, kv_heads)


def _flops(attrs, ins, outs, dims) -> int | None:
    """2·B·H·S·T·2D for the two products plus one per score (the softmax); the
    buffer write is a copy."""
    bias = ins[5]
    scores = numel(bias.shape[:1] + (ins[3].shape[1],) + bias.shape[2:], dims)      # B * Hkv * S * T
    width = numel(ins[3].shape[3:], dims)
    if scores is None or width is None:
        return None
    return scores * (attrs["heads"] // attrs["kv_heads"]) * (4 * width + 1)


@prim("SharedCacheAttention", _eval, flops=_flops)
def shared_cache_infer(attrs, ins):
    """[B, S, H*D], [B, S, Hkv*D] x2 (or [B, S, (H + 2 Hkv) D], -, -), [B, Hkv, C, D] x2, [B, 1, S, T]
    -> [B, S, H*D], [B, Hkv, C, D] x2."""
    if len(ins) != 6:
        raise ShapeError(f"SharedCacheAttention takes 6 inputs, got {len(ins)}")
    q, k, v, pk, pv, bias = ins
    heads, kvh = attrs["heads"], attrs["kv_heads"]
    if heads % kvh:
        raise ShapeError(f"{kvh} key/value heads do not divide {heads} query heads")
    for name, t in (("query", q), ("key", k), ("value", v), ("past key", pk), ("past value", pv), ("bias", bias)):
        if t is not None and (t.dtype not in FLOAT_DTYPES or t.dtype != q.dtype):
            raise ShapeError(f"the {name} must be floating point like the query ({q.dtype}), got {t.dtype}")
    if pk.rank != 4 or pk.shape != pv.shape or pk.shape[1].value != kvh:
        raise ShapeError(f"the cache buffers must be [batch, {kvh}, capacity, head_dim], got "
                         f"{format_shape(pk.shape)} and {format_shape(pv.shape)}")
    d = pk.shape[3]
    b, s = q.shape[0], q.shape[1]
    if (k is None) != (v is None):
        raise ShapeError("give both key and value, or neither (a packed query)")
    checks = ((("packed query", q, heads + 2 * kvh),) if k is None else
              (("query", q, heads), ("key", k, kvh), ("value", v, kvh)))
    for name, t, n in checks:
        if t.rank != 3 or t.shape[0] != b or t.shape[1] != s or t.shape[2] != d * n:
            raise ShapeError(f"the {name} must be [batch, seq, {n}*head_dim], got {format_shape(t.shape)}")
    if bias.rank != 4 or bias.shape[0] != b or bias.shape[1].value != 1 or bias.shape[2] != s:
        raise ShapeError(f"the bias must be [batch, 1, seq, total], got {format_shape(bias.shape)}")
    return [TensorType(q.dtype, (b, s, d * heads)), TensorType(pk.dtype, pk.shape), TensorType(pv.dtype, pv.shape)]
