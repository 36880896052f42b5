"""The scaled dot-product attention core and the mask helpers it needs.

``Attention(q, k, v, masked?, bias?)`` with q [B, Hq, Sq, D], k [B, Hkv, Sk, D],
v [B, Hkv, Sk, Dv] -> [B, Hq, Sq, Dv]. ``masked`` is boolean with **True =
masked out**, broadcastable to [B, Hq, Sq, Sk]; ``bias`` is an additive float
mask; both are optional positional slots (a bias without a mask leaves slot 3
omitted: ``""`` in the op, None for the rules; graphc.prims._registry). Every
mask convention of the spec is converted to this one form in one place
(``graphc.layers.attention.build_masks``), so the lowering has exactly one
polarity to get right. Query head h reads KV head floor(h * Hkv / Hq).

Rows in which every key is masked give zeros (never NaN): PyTorch's SDPA
returns zeros there, a naive -inf mask gives 0/0 in ONNX Runtime.
"""
from __future__ import annotations

import numpy as np

from ..errors import InternalError
from ..tensors import FLOAT_DTYPES, TensorType
from ..shapes import format_shape
from ._flops import numel, per_output_element
from ._registry import ShapeError, broadcast, prim, slot


def attention_reference(q, k, v, masked=None, bias=None, scale=1.0, causal=False):
    """numpy SDPA from the math, in float64; fully masked rows -> 0."""
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    hq, hkv = q.shape[1], k.shape[1]
    if hkv != hq:
        rep = hq // hkv
        k64 = np.repeat(k64, rep, axis=1)    # head h uses kv head h // rep (repeat-interleave)
        v64 = np.repeat(v64, rep, axis=1)
    s = q64 @ np.swapaxes(k64, -1, -2) * scale
    sq, sk = s.shape[-2], s.shape[-1]
    m = np.zeros(s.shape, bool)
    if masked is not None:
        m = m | masked
    if bias is not None:
        s = s + bias
        m = m | np.isneginf(bias)
    if causal:
        m = m | ~np.tril(np.ones((sq, sk), bool))
    s = np.where(m, -np.inf, s)
    row_max = np.max(np.where(m, -np.inf, s), axis=-1, keepdims=True, initial=-np.inf)   # no keys: -inf
    row_max = np.where(np.isfinite(row_max), row_max, 0)
    e = np.where(m, 0, np.exp(s - row_max))
    denom = e.sum(-1, keepdims=True)
    p = np.divide(e, denom, out=np.zeros_like(e), where=denom > 0)
    return (p @ v64).astype(q.dtype)


def _eval(q, k, v, masked=None, bias=None, *, scale=1.0, causal=False, **_):
    return attention_reference(q, k, v, masked, bias, scale, causal)


def attention_flops(attrs, ins, outs, dims) -> int | None:
    """The two products, 2·B·Hq·Sq·Sk·(D + Dv), plus one per score for the
    softmax (as the Softmax primitive counts it)."""
    q, k, v = ins[:3]
    scores = numel(q.shape[:3] + k.shape[2:3], dims)
    widths = numel(q.shape[3:], dims), numel(v.shape[3:], dims)
    if scores is None or None in widths:
        return None
    return scores * (2 * (widths[0] + widths[1]) + 1)


# lowering option ``impl`` (auto, decomposed, fused; Graph.lowering_options) picks the ONNX form in
# graphc.lower.ops_attention; every form computes the same function.
@prim("Attention", _eval, flops=attention_flops, lowering_options=("impl",))
def attention_infer(attrs, ins):
    """[B, Hq, Sq, D] x [B, Hkv, Sk, D] x [B, Hkv, Sk, Dv] -> [B, Hq, Sq, Dv]; Hkv divides Hq."""
    q, k, v = ins[:3]
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.rank != 4:
            raise ShapeError(f"attention {name} must be [batch, heads, seq, head_dim], got {format_shape(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"attention {name} must be floating point, got {t.dtype}")
    if len({q.dtype, k.dtype, v.dtype}) != 1:
        raise ShapeError(f"query, key and value dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    b, hq, sq, d = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ShapeError(f"batch differs between query {format_shape(q.shape)}, key {format_shape(k.shape)} "
                         f"and value {format_shape(v.shape)}")
    if k.shape[3] != d:
        raise ShapeError(f"query head width {d} differs from key head width {k.shape[3]}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ShapeError(f"key {format_shape(k.shape)} and value {format_shape(v.shape)} disagree on heads or length")
    hkv = k.shape[1]
    if hq.is_const and hkv.is_const and hq.value % hkv.value:
        raise ShapeError(f"{hkv.value} key/value heads do not divide {hq.value} query heads")
    full = (b, hq, sq, k.shape[2])
    if len(ins) > 5:
        raise InternalError(f"Attention takes at most 5 inputs (query, key, value, mask, additive mask), got {len(ins)}")
    m, bias = slot(ins, 3), slot(ins, 4)
    if m is not None:
        if m.dtype != "bool":
            raise ShapeError(f"the attention mask must be boolean here, got {m.dtype}")
        _fits(m, full, "mask")
    if bias is not None:
        if bias.dtype != q.dtype:
            raise ShapeError(f"the additive mask has dtype {bias.dtype}, the attention runs in {q.dtype}")
        _fits(bias, full, "additive mask")
    return [TensorType(q.dtype, (b, hq, sq, v.shape[3]))]


def _fits(m: TensorType, full, what: str) -> None:
    if m.rank != 4:
        raise ShapeError(f"the {what} must have rank 4 here, got {format_shape(m.shape)}")
    try:
        out = broadcast([m.shape, full])
    except ShapeError:
        raise ShapeError(f"the {what} of shape {format_shape(m.shape)} does not fit scores of shape "
                         f"{format_shape(full)} [batch, heads, query, key]") from None
    if tuple(out) != tuple(full):
        raise ShapeError(f"the {what} of shape {format_shape(m.shape)} is larger than the scores "
                         f"{format_shape(full)}")


def _arange_eval(ref, axis, reverse=False, **_):
    r = np.arange(ref.shape[axis], dtype=np.int64)
    return r[::-1].copy() if reverse else r


@prim("Arange", _arange_eval, flops=per_output_element)
def arange_infer(attrs, ins):
    """[0, 1, ..., n-1] with n the run-time length of ``ref`` along ``axis`` (int64);
    ``reverse``: [n-1, ..., 0] (distances from the end: the KV-cache mask)."""
    (ref,) = ins
    axis = attrs["axis"] % ref.rank
    return [TensorType("int64", (ref.shape[axis],))]
