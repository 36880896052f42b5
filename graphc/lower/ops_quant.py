"""Standard ONNX form of the quantized primitives (graphc.prims.quant).

QuantMatMul(x, W_q, w_scale) is

    x_q, s, z = DynamicQuantizeLinear(x)          # uint8, per tensor, asymmetric
    acc = MatMulInteger(x_q, W_q, z)              # int32; W_q int8 symmetric: no b_zero_point
    y = Cast(acc, float) * (s * w_scale)          # w_scale [N], per output column

the pattern ONNX Runtime's MatMulIntegerToFloat / DynamicQuantizeMatMul fusions
recognise (one fused kernel on x86 with u8 x s8 VNNI). Measured on this
machine against the contrib op written directly and against uint8 weights
(docs/benchmarks.md): the same speed as the contrib op, and 5-7x faster than
uint8 x uint8 (which takes no VNNI path).
"""
from __future__ import annotations

from .proto import TensorProto

from ..ir import OpNode
from .context import LowerContext
from .ops_core import lowering


@lowering("QuantMatMul")
def _quant_matmul(ctx: LowerContext, op: OpNode) -> None:
    x, wq, ws = op.inputs
    xq, xs, xz = ctx.node("DynamicQuantizeLinear", [x], n_out=3)
    acc = ctx.one("MatMulInteger", [xq, wq, xz])
    accf = ctx.one("Cast", [acc], to=TensorProto.FLOAT)
    ctx.node("Mul", [accf, ctx.one("Mul", [xs, ws])], op.outputs)


@lowering("QuantMatMulBlocks")
def _quant_matmul_blocks(ctx: LowerContext, op: OpNode) -> None:
    """The standard form: the weight blocks dequantized at run time, then a float
    MatMul (the reference's math). graphc emits this primitive for --target ort
    generation bundles, whose lowering is com.microsoft MatMulNBits
    (graphc.lower.target_ort); this form keeps the primitive valid for any target."""
    import numpy as np
    x, w, scales = op.inputs
    n, nb, block = (d.value for d in ctx.g.value(w).type.shape)
    k = ctx.g.value(x).type.shape[-1].value
    wf = ctx.one("Sub", [ctx.one("Cast", [w], to=TensorProto.FLOAT), ctx.const(np.array(128, np.float32))])
    wf = ctx.one("Mul", [wf, ctx.one("Reshape", [scales, ctx.const(np.array([n, nb, 1], np.int64))])])
    wf = ctx.one("Reshape", [wf, ctx.const(np.array([n, nb * block], np.int64))])      # [N, nb, block] -> [N, nb*block]
    if k != nb * block:                                                               # the last block's padding
        wf = ctx.one("Slice", [wf, ctx.const(np.array([0], np.int64)), ctx.const(np.array([k], np.int64)),
                               ctx.const(np.array([1], np.int64))])                     # -> [N, K]
    ctx.node("MatMul", [x, ctx.one("Transpose", [wf], perm=[1, 0])], op.outputs)     # x @ [K, N]
