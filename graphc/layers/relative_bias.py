"""T5's bucketed relative-position bias, and a constant scale.

relative_position_bias (Raffel et al. 2020, section 2.1; transformers'
``T5Attention._relative_position_bucket``): for query position i and key
position j, r = j - i is put in one of ``num_buckets`` buckets, and each
bucket has a learned bias per head, added to the attention scores:

    bidirectional: half the buckets for r > 0, half for r <= 0; n = |r|
    causal:        n = max(-r, 0)
    bucket(n) = n                                   if n < max_exact (= buckets / 2)
              = max_exact + floor(log(n / max_exact) / log(max_distance / max_exact)
                                  * (buckets - max_exact)), at most buckets - 1
    y[0, h, i, j] = weight[bucket(j - i), h]         shape [1, heads, q_seq, k_seq]

The bucket of every distance a model can see (|r| < max_len) depends only on
the weights, so a [2*max_len - 1, heads] table of biases is folded at compile
time (computed in float32, as transformers does, so a distance on a bucket
boundary lands where it lands there); at run time the distances j - i index it.
Parameter ``<name>.weight`` [num_buckets, heads] (transformers'
``relative_attention_bias.weight``). Feed ``y`` to multihead_attention's
``attn_mask`` (additive), with ``scale: 1.0`` for T5.

scale: y = x * factor (T5 scales the decoder output by d_model^-0.5 before
its tied LM head).
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import Init
from ..ir import run_limits
from ..shapes import Dim, format_shape
from .base import LayerKind, Param, Port
from .positional import MAX_TABLE_LEN


def relative_buckets(relative: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """transformers' T5 bucket function, in numpy (int64 in, int64 out)."""
    rel = relative.astype(np.int64)
    out = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    small = rel < max_exact
    with np.errstate(divide="ignore"):       # log(0) on the small distances, discarded by the where
        large = np.log(rel.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
        large = (large * np.float32(num_buckets - max_exact)).astype(np.float32)
    # truncated toward zero (like .to(long)) before max_exact is added, in integers as transformers does
    large = max_exact + np.where(small, 0, large).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return out + np.where(small, rel, large)


class RelativePositionBias(LayerKind):
    kind = "relative_position_bias"
    summary = "T5's bucketed relative-position bias [1, heads, q, k], for an attention layer's attn_mask"
    params = (
        Param("heads", "int", doc="attention heads (one bias per head and bucket)", min=1),
        Param("bidirectional", "bool", doc="true for an encoder (keys on both sides), false for a causal decoder"),
        Param("num_buckets", "int", 32, "buckets (T5 relative_attention_num_buckets)", min=2),
        Param("max_distance", "int", 128, "distances from here on share the last bucket "
              "(T5 relative_attention_max_distance)", min=1),
        Param("max_len", "int", 512, "the longest query or key sequence accepted", min=1, max=MAX_TABLE_LEN),
    )
    inputs = (Port("query", "[batch, q_seq, ...]: only its length is read"),
              Port("key", "[batch, k_seq, ...]: only its length is read; default: the query", True))
    shape_rule = "[B, Sq, *], [B, Sk, *] -> [1, heads, Sq, Sk]"
    example = "{name: enc_bias, kind: relative_position_bias, input: embed, heads: 8, bidirectional: true}"

    def expand(self, b, call):
        q = call.inputs["query"]
        k = call.inputs.get("key") or q
        for port, t in (("query", q), ("key", k)):
            if t.rank < 2:
                raise call.error(f"{port} must have a sequence axis (axis 1), got {format_shape(t.shape)}", port)
            n = t.shape[1]
            if n.is_const and n.value > call["max_len"]:
                raise call.error(f"{port} has {n.value} positions, more than max_len {call['max_len']}", "max_len")
        heads, buckets, dist, max_len = call["heads"], call["num_buckets"], call["max_distance"], call["max_len"]
        bidir = call["bidirectional"]
        if buckets // (2 if bidir else 1) < 2 or dist <= buckets // (4 if bidir else 2):
            raise call.error(f"max_distance {dist} must exceed the exact buckets ({buckets // (4 if bidir else 2)})",
                             "max_distance", hint="T5 uses num_buckets 32, max_distance 128")
        dtype = q.dtype if q.dtype in ("float32", "float16") else "float32"
        w = b.param("weight", (buckets, heads), Init("normal", 1.0), dtype=dtype, doc="[num_buckets, heads]")
        distances = np.arange(-(max_len - 1), max_len)               # row r + max_len - 1 holds distance r
        rows = relative_buckets(distances, bidir, buckets, dist)
        table = b.derive(lambda t: np.ascontiguousarray(t[rows]), [w], (2 * max_len - 1, heads),
                         "bias_by_distance", dtype=dtype)             # [2L-1, heads]
        for t in (q, k):
            n = t.shape[1]
            if len(n.symbols) == 1 and n == Dim.sym(next(iter(n.symbols))):
                run_limits.record(b.g.metadata, "dim_max", str(n), max_len, b.path)
        gen = getattr(b, "gen", None)
        cached = [gen is not None and gen.applies(t.shape[1]) for t in (q, k)]
        if cached[0] != cached[1]:
            raise call.error("with --kv-cache a relative-position bias between the generated tokens and another "
                             "sequence cannot be cached", "key", hint="build without --kv-cache")
        if cached[0]:
            # the new queries against every key column, cache included: [S, past_seq + S]
            gen.limit_positions(max_len)
            rel, k_len = gen.column_distances(b), gen.total
        else:
            qpos = b.op("Reshape", [b.op("Arange", [q], axis=1)], shape=(q.shape[1], Dim.const(1)))  # [Sq] -> [Sq, 1]
            kpos = b.op("Reshape", [b.op("Arange", [k], axis=1)], shape=(Dim.const(1), k.shape[1]))  # [Sk] -> [1, Sk]
            rel, k_len = b.op("Sub", [kpos, qpos]), k.shape[1]                                        # [Sq, Sk]: j - i
        idx = b.op("Add", [rel, b.const(np.array(max_len - 1, np.int64), "distance_offset")])
        bias = b.op("Gather", [table, idx], axis=0)                                                # [Sq, Sk, heads]
        bias = b.op("Transpose", [bias], perm=(2, 0, 1))                                           # [heads, Sq, Sk]
        y = b.op("Reshape", [bias], shape=(Dim.const(1), Dim.const(heads), q.shape[1], k_len))    # [1, H, Sq, Sk]
        return {"y": y}

    def reference(self, args, weights, inputs):
        q = inputs["query"]
        k = inputs.get("key")
        k = q if k is None else k
        rel = np.arange(k.shape[1])[None, :] - np.arange(q.shape[1])[:, None]
        buckets = relative_buckets(rel, args["bidirectional"], args["num_buckets"], args["max_distance"])
        return {"y": weights["weight"][buckets].transpose(2, 0, 1)[None]}


class Scale(LayerKind):
    """y = x * factor, a constant (T5 scales its decoder output by
    d_model^-0.5 before the LM head tied to the embedding)."""

    kind = "scale"
    summary = "multiply by a constant factor"
    params = (Param("factor", "float", doc="the constant"),)
    shape_rule = "[*] -> [*]"
    example = "{name: rescale, kind: scale, input: decoder, factor: 0.125}"

    def expand(self, b, call):
        x = call.inputs["x"]
        if x.dtype not in ("float32", "float16"):
            raise call.error(f"needs a floating-point input, got {x.dtype}", "x")
        return {"y": b.op("Mul", [x, b.const(np.array(call["factor"], x.dtype), "factor")])}

    def reference(self, args, weights, inputs):
        return {"y": inputs["x"] * np.asarray(args["factor"], inputs["x"].dtype)}


KINDS = (RelativePositionBias, Scale)
