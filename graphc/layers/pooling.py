"""Pooling over the sequence axis that ignores padding.

Mean pooling of token vectors is how sentence encoders (sentence-transformers)
turn [batch, seq, d] into one vector per sentence; over a padded batch the
padding must count neither in the sum nor in the divisor:

    y[n] = sum_s keep[n, s] x[n, s] / max(1, sum_s keep[n, s])

A sequence with no real position gives a zero vector (never NaN). The sums are
two batched MatMuls with the 0/1 mask ([B, 1, S] @ [B, S, d] and the count as
[B, 1, S] @ [B, S, 1]), so no reduction primitive is needed.
"""
from __future__ import annotations

import numpy as np

from ..shapes import Dim, format_shape
from .base import LayerKind, Param, Port
from .masking import POLARITIES, POLARITY_DOC, keep_from_lengths, keep_from_mask, reference_keep


class MeanPool(LayerKind):
    """Mean over the sequence axis of x [batch, seq, d], counting only the
    positions kept by ``lengths`` (positions < lengths[n]) and/or a bool
    ``mask`` [batch, seq] with its ``polarity`` named; without either, the
    plain mean over seq. An all-padding row gives zeros.
    """

    kind = "mean_pool"
    summary = "mean over the sequence axis, padding excluded (lengths or mask): [batch, seq, d] -> [batch, d]"
    params = (Param("polarity", "str", None, POLARITY_DOC + "; required with mask", choices=POLARITIES),)
    inputs = (Port("x", "[batch, seq, d], float"),
              Port("lengths", "int64 or int32 [batch]: positions >= length are padding", optional=True),
              Port("mask", "bool or int 1/0 [batch, seq], polarity as named", optional=True))
    shape_rule = "[batch, seq, d] -> [batch, d]"
    example = "{name: sentence, kind: mean_pool, inputs: {x: encoder, mask: attention_mask}, polarity: keep}"

    def expand(self, b, call):
        x = call.inputs["x"]
        if x.dtype not in ("float32", "float16"):
            raise call.error(f"needs a floating-point input, got {x.dtype}", "x")
        if x.rank != 3:
            raise call.error(f"x must be [batch, seq, d], got {format_shape(x.shape)}", "x")
        batch, seq, d = x.shape
        keep = None
        if call.inputs.get("lengths") is not None:
            keep = keep_from_lengths(b, call, call.inputs["lengths"], x, 1)
        if call.inputs.get("mask") is not None:
            m = keep_from_mask(b, call, call.inputs["mask"], (batch, seq))
            keep = m if keep is None else b.op("And", [keep, m])
        one = Dim.const(1)
        if keep is None:                                               # the plain mean: every position
            pos = b.op("Arange", [x], axis=1)                          # [S]
            w = b.op("Cast", [b.op("Equal", [pos, pos])], to=x.dtype)  # [S] of ones
            n = one
        else:
            w = b.op("Cast", [keep], to=x.dtype)                        # [B, S] of 0/1
            n = batch
        row = b.op("Reshape", [w], shape=(n, one, seq))                # -> [B or 1, 1, S]
        col = b.op("Reshape", [row], shape=(n, seq, one))              # [B or 1, 1, S] -> [B or 1, S, 1]
        total = b.op("MatMul", [row, x])                               # [B, 1, S] @ [B, S, d] -> [B, 1, d]
        count = b.op("MatMul", [row, col])                             # [B or 1, 1, S] @ [.., S, 1] -> [.., 1, 1]
        unit = b.const(np.array(1, dtype=x.dtype), "one")
        count = b.op("Where", [b.op("Less", [count, unit]), unit, count])   # max(count, 1): empty rows -> 0
        y = b.op("Div", [total, count])                                # [B, 1, d]
        return {"y": b.op("Reshape", [y], shape=(batch, d))}            # [B, 1, d] -> [B, d]

    def reference(self, args, weights, inputs):
        x = np.asarray(inputs["x"], dtype=np.float64)
        keep = reference_keep(args, inputs, x.shape[0], x.shape[1]).astype(np.float64)
        total = (keep[:, :, None] * x).sum(1)
        return {"y": total / np.maximum(keep.sum(1), 1)[:, None]}


KINDS = (MeanPool,)
