"""Sequence masks and the softmax that respects them.

Padded batches need two things outside attention layers: a boolean mask built
from per-sequence lengths, and a softmax over positions that gives padding
exactly zero weight. Additive (Bahdanau) attention is the classic user:

    e = v^T tanh(W q + U k)            scores [batch, src_seq]
    a = masked_softmax(e, lengths)     weights, zero on padding
    c = a @ values                     context [batch, d]

Both kinds name the polarity of a boolean mask explicitly (``polarity: keep``,
True = a real position, as HF's attention_mask and tf.sequence_mask; or
``polarity: masked``, True = padding, as torch's key_padding_mask), because the
two conventions are both common and a swapped mask gives plausible numbers.

A row whose every position is masked (a sequence of length 0) gets all-zero
weights, never NaN: masked scores are set to -inf (MASK_FILL) and the weights
of masked positions are replaced by exact zeros after the softmax, so the
0/0 of an empty row is never read.
"""
from __future__ import annotations

import numpy as np

from ..ir import Builder, Value
from ..shapes import Dim, format_shape
from .base import Call, LayerKind, Param, Port

POLARITIES = ("keep", "masked")
# Masked scores become -inf, in either dtype (float16 holds it: --dtype float16
# converts it unchanged). A finite fill is not safe: float16's lowest value
# (-65504, used before) outweighed kept float32 scores below it, and a row of
# kept scores near -1e5 came out all zeros instead of summing to one. With -inf
# a masked term is exactly 0 whatever the kept scores are; an empty row's
# softmax is 0/0 = NaN, but every one of its positions is masked, so the final
# Where never reads it.
MASK_FILL = float("-inf")
POLARITY_DOC = ("what True means in the mask: 'keep' (True = real position: HF attention_mask, tf.sequence_mask) "
                "or 'masked' (True = padding: torch key_padding_mask)")


def keep_from_lengths(b: Builder, call: Call, lengths: Value, ref: Value, axis: int) -> Value:
    """bool [batch, S]: position s < lengths[n], S the run-time length of ``ref`` along ``axis``."""
    batch = ref.shape[0]
    if lengths.dtype not in ("int64", "int32") or lengths.rank != 1 or lengths.shape[0] != batch:
        raise call.error(f"lengths must be int64 or int32 [batch] = {format_shape((batch,))}, got "
                         f"{lengths.dtype}{format_shape(lengths.shape)}", "lengths")
    if lengths.dtype != "int64":
        lengths = b.op("Cast", [lengths], to="int64")
    pos = b.op("Arange", [ref], axis=axis)                                  # [S]
    lens = b.op("Reshape", [lengths], shape=(batch, Dim.const(1)))          # [B] -> [B, 1]
    return b.op("Less", [pos, lens])                                        # [B, S]: s < length


def keep_from_mask(b: Builder, call: Call, mask: Value, want: tuple) -> Value:
    """The mask as True = keep, checked against the shape it must have."""
    if mask.dtype not in ("bool", "int64", "int32"):
        raise call.error(f"mask must be bool or an int 1/0 mask, got {mask.dtype}", "mask",
                         hint="a float mask is additive, not a padding mask; convert a 1/0 one with kind: cast")
    if mask.shape != tuple(want):
        raise call.error(f"mask must be {format_shape(want)}, got {format_shape(mask.shape)}", "mask")
    if call["polarity"] is None:
        raise call.error("a mask needs its polarity named", "mask",
                         hint="polarity: keep (True/1 = real position, HF's attention_mask) or polarity: masked "
                              "(True/1 = padding)")
    if mask.dtype != "bool":        # HF's int64 1/0 attention_mask: nonzero reads as True, as in attention
        mask = b.op("Cast", [mask], to="bool")
    return mask if call["polarity"] == "keep" else b.op("Not", [mask])


def reference_keep(args, inputs, batch: int, steps: int) -> np.ndarray:
    """The numpy reference's keep mask [batch, steps] (all True without mask or lengths)."""
    keep = np.ones((batch, steps), dtype=bool)
    if inputs.get("lengths") is not None:
        keep &= np.arange(steps)[None, :] < np.asarray(inputs["lengths"])[:, None]
    if inputs.get("mask") is not None:
        m = np.asarray(inputs["mask"], dtype=bool)
        keep &= m if args["polarity"] == "keep" else ~m
    return keep


class SequenceMask(LayerKind):
    """A boolean padding mask from per-sequence lengths (tf.sequence_mask):
    y[n, s] = s < lengths[n] with ``polarity: keep``, or s >= lengths[n] with
    ``polarity: masked`` (the form torch's key_padding_mask takes). The length
    of the time axis is read at run time from ``like`` along ``axis``.
    """

    kind = "sequence_mask"
    summary = "bool [batch, seq] padding mask from lengths (tf.sequence_mask), polarity named"
    params = (
        Param("polarity", "str", doc=POLARITY_DOC, choices=POLARITIES),
        Param("axis", "int", 1, "the time axis of 'like' (1 for [batch, seq, ...])", min=1),
    )
    inputs = (Port("lengths", "int64 or int32 [batch]: real positions per sequence"),
              Port("like", "a tensor [batch, seq, ...] whose axis 'axis' is the time axis"))
    outputs = (Port("y", "bool [batch, seq]"),)
    shape_rule = "lengths [batch], like [batch, seq, ...] -> [batch, seq] (bool)"
    example = "{name: pad, kind: sequence_mask, inputs: {lengths: lengths, like: x}, polarity: masked}"

    def expand(self, b, call):
        like = call.inputs["like"]
        if not 1 <= call["axis"] < like.rank:
            raise call.error(f"axis {call['axis']} is out of range for 'like' of rank {like.rank}", "axis")
        keep = keep_from_lengths(b, call, call.inputs["lengths"], like, call["axis"])
        return {"y": keep if call["polarity"] == "keep" else b.op("Not", [keep])}

    def reference(self, args, weights, inputs):
        steps = np.asarray(inputs["like"]).shape[args["axis"]]
        keep = np.arange(steps)[None, :] < np.asarray(inputs["lengths"])[:, None]
        return {"y": keep if args["polarity"] == "keep" else ~keep}


class MaskedSoftmax(LayerKind):
    """Softmax over the last axis of x [batch, ..., seq] that gives masked
    positions exactly zero weight: y = softmax(x where kept, else -inf), with
    a fully masked row all zeros (no NaN). Positions are masked by ``lengths``
    (positions >= lengths[n] of batch row n), by a bool ``mask`` [batch, seq]
    with its ``polarity`` named, or by both.
    """

    kind = "masked_softmax"
    summary = "softmax over the last axis with padding masked out (lengths or mask); empty rows give zeros"
    params = (Param("polarity", "str", None, POLARITY_DOC + "; required with mask", choices=POLARITIES),)
    inputs = (Port("x", "scores [batch, ..., seq], float"),
              Port("lengths", "int64 or int32 [batch]: positions >= length are masked", optional=True),
              Port("mask", "bool or int 1/0 [batch, seq], polarity as named", optional=True))
    shape_rule = "[batch, ..., seq] -> [batch, ..., seq]"
    example = "{name: weights, kind: masked_softmax, inputs: {x: scores, lengths: src_lengths}}"

    def expand(self, b, call):
        x = call.inputs["x"]
        if x.dtype not in ("float32", "float16"):
            raise call.error(f"needs floating-point scores, got {x.dtype}", "x")
        if x.rank < 2:
            raise call.error(f"x must be [batch, ..., seq] (rank >= 2), got {format_shape(x.shape)}", "x")
        keep = None
        if call.inputs.get("lengths") is not None:
            keep = keep_from_lengths(b, call, call.inputs["lengths"], x, x.rank - 1)
        if call.inputs.get("mask") is not None:
            m = keep_from_mask(b, call, call.inputs["mask"], (x.shape[0], x.shape[-1]))
            keep = m if keep is None else b.op("And", [keep, m])
        if keep is None:
            raise call.error("needs lengths or mask (without them it is the softmax kind)", None,
                             hint="bind inputs: {x: scores, lengths: lengths} or {x: scores, mask: mask}")
        if x.rank > 2:   # [B, S] -> [B, 1.., S] so it broadcasts over x's middle axes
            keep = b.op("Reshape", [keep], shape=(x.shape[0],) + (Dim.const(1),) * (x.rank - 2) + (x.shape[-1],))
        lowest = b.const(np.array(MASK_FILL, dtype=x.dtype), "mask_fill")
        zero = b.const(np.array(0, dtype=x.dtype), "zero")
        scores = b.op("Where", [keep, x, lowest])                # masked -> -inf: weight exactly 0
        probs = b.op("Softmax", [scores], axis=-1)
        return {"y": b.op("Where", [keep, probs, zero])}         # padding (and empty rows' NaN) -> exactly 0

    def reference(self, args, weights, inputs):
        x = np.asarray(inputs["x"], dtype=np.float64)
        keep = reference_keep(args, inputs, x.shape[0], x.shape[-1])
        keep = keep.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],))
        kept = np.where(keep, x, -np.inf)
        top = kept.max(-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)               # an empty row: any shift, its weights are 0
        e = np.where(keep, np.exp(np.where(keep, x, top) - top), 0.0)
        total = e.sum(-1, keepdims=True)
        return {"y": np.divide(e, total, out=np.zeros_like(e), where=total > 0)}


KINDS = (SequenceMask, MaskedSoftmax)
