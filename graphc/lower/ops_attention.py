"""ONNX forms of the attention core: the portable MatMul/Softmax decomposition
(every opset) or the opset-23 ``Attention`` operator.

The choice ('auto'), from measurements on ORT 1.31 CPU (shared/ANCHORS.md and
docs/benchmarks.md): with no mask or only a causal mask the fused operator is
as fast or faster (causal: 3.30 ms fused vs 4.41 ms decomposed at B8 H8 S256
d64), so it is used when the target opset is >= 23; with padding or user masks
the decomposed form is used, because ORT rejects broadcast key-padding masks on
``Attention`` and expanding them costs a [B, 1, Sq, Sk] tensor per call.
"""
from __future__ import annotations

import numpy as np
from . import proto as helper
from .proto import TensorProto

from ..ir import OpNode
from ..prims import slot
from .context import LowerContext
from .guards import dim_of, unless_empty
from .ops_core import ONNX_DTYPE, lowering, shape_vector


def _dtype(ctx: LowerContext, name: str) -> np.dtype:
    from ..ir.graph import DTYPES
    return DTYPES[ctx.g.value(name).type.dtype]


def use_fused(ctx: LowerContext, op: OpNode) -> bool:
    """The layer's ``impl:`` request (a lowering option, not an attribute of the
    op: both forms compute the same function), resolved against the opset."""
    impl = ctx.option(op, "impl", "auto")
    if ctx.opset < 23:
        if impl == "fused":
            raise ctx.error("impl: fused needs --opset 23 or newer (the ONNX Attention operator)")
        return False
    if impl == "fused":
        return True
    if impl == "decomposed":
        return False
    return _mask_inputs(op) == (None, None)


@lowering("Attention")
def _attention(ctx: LowerContext, op: OpNode) -> None:
    if use_fused(ctx, op):
        _fused(ctx, op)
    else:
        _decomposed(ctx, op)


def _mask_inputs(op: OpNode) -> tuple[str | None, str | None]:
    """(boolean mask, additive mask): the optional slots 3 and 4, None when omitted."""
    return slot(op.inputs, 3), slot(op.inputs, 4)


def _fused(ctx: LowerContext, op: OpNode) -> None:
    q, k, v = op.inputs[:3]
    masked, bias = _mask_inputs(op)
    inputs = [q, k, v]
    mask = None
    if masked is not None:
        keep = ctx.one("Not", [masked])                               # ONNX Attention: True = may attend
        # ORT rejects broadcast [B,1,1,Sk] masks on Attention: expand to [B, 1, Sq, Sk]
        shape = ctx.one("Concat", [dim_of(ctx, q, 0), ctx.const(np.array([1], np.int64)),
                                   dim_of(ctx, q, 2), dim_of(ctx, k, 2)], axis=0)
        mask = ctx.one("Expand", [keep, shape])
        if bias is not None:
            # masked keys get -inf, not the dtype's lowest finite value: a row that is
            # all -inf gives zeros in ORT's Attention at every opset, while a row of
            # lowest values gave the mean of the values from opset 25 on (0.74 max abs
            # difference), and a finite fill can lose to a kept score near it
            neg_inf = ctx.const(np.array(-np.inf, _dtype(ctx, q)))
            mask = ctx.one("Where", [mask, bias, neg_inf])
    elif bias is not None:
        mask = bias
    if mask is not None:
        inputs.append(mask)
    _guard_empty(ctx, q, k, v, op.outputs[0],
                 helper.make_node("Attention", inputs, [ctx.fresh("attention")], name=ctx.fresh("Attention_node"),
                                  scale=float(op.attrs.get("scale", 1.0)), is_causal=int(bool(op.attrs.get("causal")))))


def _guard_empty(ctx: LowerContext, q: str, k: str, v: str, output: str, node) -> None:
    """Run `node` (the fused Attention) unless the batch, the query length or the key
    length is 0 at run time: ORT's Attention kernel rejects those ('Q sequence length
    must be greater than 0'), where the answer is an empty (or, with no keys, all-zero)
    [B, H, Sq, Dv] tensor."""
    def attend() -> str:
        ctx.nodes.append(node)
        return node.output[0]
    unless_empty(ctx, [q, k], output, ONNX_DTYPE[str(np.dtype(_dtype(ctx, q)))],
                 lambda: ctx.one("Concat", [ctx.one("Shape", [q], start=0, end=3), ctx.one("Shape", [v], start=3, end=4)],
                                 axis=0),
                 attend)


MASK_FILL = float("-inf")    # additive fill of masked scores (float32); see _decomposed


def _decomposed(ctx: LowerContext, op: OpNode) -> None:
    q, k, v = op.inputs[:3]
    masked, bias = _mask_inputs(op)
    qt, kt = ctx.g.value(q).type, ctx.g.value(k).type
    dt = _dtype(ctx, q)
    hq, hkv = qt.shape[1].value, kt.shape[1].value
    group = hq // hkv if hq and hkv else 1
    scale = float(op.attrs.get("scale", 1.0))
    if scale != 1.0:
        q = ctx.one("Mul", [q, ctx.const(np.array(scale, dt))])       # scale the smaller operand
    if group > 1:
        # GQA without materialising repeated KV: query heads of one group share a KV head.
        # Run-time targets with every dim explicit (allowzero=1): a static [0, Hkv, -1, 0]
        # cannot infer its -1 when the batch is 0
        b, sq = dim_of(ctx, op.inputs[0], 0), dim_of(ctx, op.inputs[0], 2)
        gsq = ctx.shared(("times", sq, group), lambda: ctx.one("Mul", [sq, ctx.const(np.array([group], np.int64))]))
        sk = dim_of(ctx, k, 2)
        d, dv = (t.shape[3].value if t.shape[3].is_const else dim_of(ctx, n, 3)
                 for t, n in ((qt, q), (ctx.g.value(v).type, v)))
        q = ctx.one("Reshape", [q, shape_vector(ctx, [b, hkv, gsq, d])], allowzero=1)   # [B,Hq,Sq,D] -> [B,Hkv,G*Sq,D]
    if dt == np.float16:
        # scores, mask and softmax in float32: q.k of float16 inputs near 6e4 overflows
        # float16 (65504) on a runtime that multiplies in float16; casting q and k
        # ([.., S, D]) costs less than casting the scores ([.., Sq, Sk]) did
        q = ctx.one("Cast", [q], to=TensorProto.FLOAT)
        k = ctx.one("Cast", [k], to=TensorProto.FLOAT)
    k_t = ctx.one("Transpose", [k], perm=[0, 1, 3, 2])                  # [B,Hkv,Sk,D] -> [B,Hkv,D,Sk]
    scores = ctx.one("MatMul", [q, k_t])                                # [B,Hkv,G*Sq,Sk]
    if group > 1:
        scores = ctx.one("Reshape", [scores, shape_vector(ctx, [b, hq, sq, sk])], allowzero=1)   # -> [B,Hq,Sq,Sk]
    # what is derived from the masks alone is built once per distinct mask (the
    # layers of a stack share their masks after graphc.ir.simplify), not once per layer
    if bias is not None:
        bias32 = bias if dt != np.float16 else ctx.shared(
            ("float32", bias), lambda: ctx.one("Cast", [bias], to=TensorProto.FLOAT))
        scores = ctx.one("Add", [scores, bias32])
        # on the float32 copy: IsInf takes float16 only from opset 20
        neg_inf = ctx.shared(("neg_inf", bias), lambda: ctx.one("IsInf", [bias32], detect_positive=0))
        masked = neg_inf if masked is None else ctx.shared(("or", masked, neg_inf),
                                                        lambda m=masked: ctx.one("Or", [m, neg_inf]))
    if op.attrs.get("causal"):
        causal = _causal_masked(ctx, op.inputs[0], op.inputs[1])
        masked = causal if masked is None else ctx.shared(("or", masked, causal),
                                                       lambda m=masked: ctx.one("Or", [m, causal]))
    # rows where every key is masked give zeros: their output is multiplied by 0 below
    zero_rows = masked is not None and _mask_inputs(op) != (None, None)
    rank = max([ctx.g.value(n).type.rank for n in op.inputs[3:] if n] + [2])
    if masked is not None:
        # Masked scores become exactly -inf, so no finite score, however large, can
        # give a masked key weight (a finite fill added to 3e38 outweighed an attended
        # -1e38), and no sum overflows into a tie. Rows with no key at all would then
        # be all -inf (softmax 0/0 = NaN, and NaN * 0 is NaN): their fill is 0
        # instead, so they compute finite numbers that the zeroing below discards.
        # Everything here is built on the mask's own small shape ([B|1, 1, Sq|1, Sk]),
        # once per distinct mask, and applied to the scores in one broadcast op.
        def fill_values() -> str:
            neg_inf = ctx.const(np.array(-np.inf, np.float32))
            if not zero_rows:       # a causal mask alone leaves every row key 0
                return neg_inf
            any_key = ctx.shared(("any_key", masked, str(np.dtype(dt)), rank),      # also zeroes the rows below
                                 lambda: _any_key(ctx, masked, rank, dt))
            has_key = ctx.shared(("has_key", masked, rank),
                                 lambda: ctx.one("Cast", [any_key], to=TensorProto.BOOL))    # [.., 1]
            return ctx.one("Where", [has_key, neg_inf, ctx.const(np.array(0, np.float32))])
        if bias is None:
            # an additive mask broadcast in one Add: ORT runs that twice as fast as a
            # Where over [B, H, Sq, Sk] (docs/benchmarks.md); finite + -inf = -inf
            fill = ctx.shared(("fill", masked, rank), lambda: ctx.one("Where", [
                masked, fill_values(), ctx.const(np.array(0, np.float32))]))
            scores = ctx.one("Add", [scores, fill])
        else:
            # a user's float mask was added (it may hold -inf, and finite + finite may
            # overflow): replace the masked scores, do not add to them
            fill = ctx.shared(("row_fill", masked, rank), fill_values)
            scores = ctx.one("Where", [masked, fill, scores])
    probs = ctx.one("Softmax", [scores], axis=-1)
    if dt == np.float16:
        probs = ctx.one("Cast", [probs], to=TensorProto.FLOAT16)
    if group > 1:
        probs = ctx.one("Reshape", [probs, shape_vector(ctx, [b, hkv, gsq, sk])], allowzero=1)  # -> [B,Hkv,G*Sq,Sk]
    result = None if zero_rows else op.outputs[0]
    out = ctx.one("MatMul", [probs, v], None if group > 1 else result)   # [B,Hkv,G*Sq,Dv]
    if group > 1:
        out = ctx.one("Reshape", [out, shape_vector(ctx, [b, hq, sq, dv])], result, allowzero=1)  # -> [B,Hq,Sq,Dv]
    if zero_rows:
        any_key = ctx.shared(("any_key", masked, str(np.dtype(dt)), rank),
                          lambda: _any_key(ctx, masked, rank, dt))
        ctx.node("Mul", [out, any_key], op.outputs)


def _any_key(ctx: LowerContext, masked: str, rank: int, dt) -> str:
    """1 where a query row may attend to some key, else 0: [B|1, 1, Sq|1, 1].

    Safe for empty tensors, where ORT returns a Reduce's input unreduced (an
    [0, 1, 1, Sk] 'maximum' would not broadcast against [0, H, Sq, Dv]): one 0
    column is padded onto the keys (so no keys at all gives 0, not an empty
    maximum) and the result is sliced to one column. Both touch only the mask,
    not the [B, H, Sq, Sk] probabilities."""
    keep = ctx.one("Cast", [ctx.one("Not", [masked])], to=ONNX_DTYPE[str(np.dtype(dt))])
    keep = ctx.one("Pad", [keep, ctx.const(np.array([0] * (2 * rank - 1) + [1], np.int64))])   # [.., Sk + 1]
    if ctx.opset >= 18:
        any_key = ctx.one("ReduceMax", [keep, ctx.const(np.array([-1], np.int64))], keepdims=1)
    else:
        any_key = ctx.one("ReduceMax", [keep], axes=[-1], keepdims=1)
    return ctx.one("Slice", [any_key, ctx.const(np.array([0], np.int64)), ctx.const(np.array([1], np.int64)),
                             ctx.const(np.array([-1], np.int64))])                               # [.., 1]


def _causal_masked(ctx: LowerContext, q: str, k: str) -> str:
    """True above the diagonal (query i may see keys 0..i: PyTorch's top-left
    alignment), built at run time for the actual [Sq, Sk]. One per pair of
    symbolic lengths: the decoder's layers share it (and ONNX Runtime then
    merges their identical mask arithmetic)."""
    def build() -> str:
        shape = ctx.one("Concat", [dim_of(ctx, q, 2), dim_of(ctx, k, 2)], axis=0)
        ones = ctx.one("ConstantOfShape", [shape], value=_int_tensor(1))
        lower = ctx.one("Trilu", [ones], upper=0)                                # 1 on and below the diagonal
        return ctx.one("Equal", [lower, ctx.const(np.array(0, np.int64))])       # True = masked
    return ctx.shared(("causal", ctx.g.value(q).type.shape[2], ctx.g.value(k).type.shape[2]), build)


def _int_tensor(v: int):
    return helper.make_tensor("value", TensorProto.INT64, [1], [v])


@lowering("Arange")
def _arange(ctx: LowerContext, op: OpNode) -> None:
    (ref,) = op.inputs
    axis = op.attrs["axis"] % ctx.g.value(ref).type.rank
    n = ctx.one("Squeeze", [dim_of(ctx, ref, axis), ctx.const(np.array([0], np.int64))])
    if op.attrs.get("reverse"):
        last = ctx.one("Sub", [n, ctx.const(np.array(1, np.int64))])
        ctx.node("Range", [last, ctx.const(np.array(-1, np.int64)), ctx.const(np.array(-1, np.int64))], op.outputs)
        return
    ctx.node("Range", [ctx.const(np.array(0, np.int64)), n, ctx.const(np.array(1, np.int64))], op.outputs)


@lowering("SharedCacheAttention")
def _shared_cache_attention(ctx: LowerContext, op: OpNode) -> None:
    """Standard ONNX cannot update a buffer in place, which is the point of this
    primitive (graphc.prims.shared_cache): only the ort target lowers it."""
    raise ctx.error("the shared cache layout (--cache-layout shared) is lowered with ONNX Runtime's "
                    "GroupQueryAttention: build with --target ort")
