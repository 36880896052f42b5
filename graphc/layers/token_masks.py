"""Masks derived from token ids.

A batch of id sequences of different lengths is padded with a ``pad`` id;
attention must not read the padding. ``padding_mask`` turns the ids into the
boolean mask the attention kinds take, inside the model, so a translation
model compiled for generation needs no separate mask input: its encoder
derives the source mask from the source ids (and, in a --kv-cache bundle,
passes it to the decoder's cross-attention as an encoder output).

    mask[b, s] = (ids[b, s] == pad)          polarity 'masked' (torch: True = padding)
    mask[b, s] = (ids[b, s] != pad)          polarity 'keep'   (True = real token)

Example: ``{name: src_pad, kind: padding_mask, input: src_tokens, pad: 0}``,
then ``src_key_padding_mask: src_pad`` on a ``transformer``.
"""
from __future__ import annotations

import numpy as np

from .base import LayerKind, Param, Port


class PaddingMask(LayerKind):
    """mask = (ids == pad): True where a position holds the padding id (the
    polarity of torch's ``key_padding_mask``), or its negation with
    ``polarity: keep``. No parameters."""

    kind = "padding_mask"
    summary = "bool mask of the positions holding the pad id (True = padding), from token ids"
    params = (
        Param("pad", "int", doc="the padding token id", min=0),
        Param("polarity", "str", "masked", "'masked': True = padding (torch key_padding_mask); "
              "'keep': True = real token", choices=("masked", "keep")),
    )
    inputs = (Port("ids", "int64 or int32 token ids, any shape (usually [batch, seq])"),)
    outputs = (Port("y", "bool, the shape of ids"),)
    shape_rule = "[*] int -> [*] bool"
    example = "{name: src_pad, kind: padding_mask, input: src_tokens, pad: 0}"

    def expand(self, b, call):
        ids = call.inputs["ids"]
        if ids.dtype not in ("int64", "int32"):
            raise call.error(f"needs integer token ids, got {ids.dtype}", "ids")
        pad = b.const(np.array(call["pad"], ids.dtype), "pad_id")
        m = b.op("Equal", [ids, pad])
        return {"y": m if call["polarity"] == "masked" else b.op("Not", [m])}

    def reference(self, args, weights, inputs):
        m = inputs["ids"] == args["pad"]
        return {"y": m if args["polarity"] == "masked" else ~m}


KINDS = (PaddingMask,)
