"""The ONNX Runtime target (``--target ort``): contrib-operator choices.

Each form here replaces the standard one (graphc.lower.ops_*) only where it
measured faster on this machine (AVX512-VNNI, ORT 1.31, 2 threads) and agreed
within tolerance; docs/benchmarks.md ("int8 and the ORT target") has the
numbers, including the choices not taken:

- Gelu -> com.microsoft FastGelu (tanh) / Gelu (erf): taken. At opset 17 the
  standard form is a decomposition ORT does not fuse: [8, 256, 512] 0.42 ms
  against 1.90 (tanh), 0.77 against 1.17 (erf); max abs difference 4.8e-7.
- QuantMatMul -> DynamicQuantizeMatMul written directly: not taken. ORT fuses
  the standard DynamicQuantizeLinear/MatMulInteger/Cast/Mul form (and the bias
  Add after it) into the same kernel; written directly, the bias Add stays a
  separate op (30 Adds against 6 in the encoder) and it ran slower.
- SkipLayerNormalization: not taken, 2.7-3.3x slower than Sum + LayerNormalization.
  So a residual Add read only by a LayerNorm is emitted as Sum in every target
  (graphc.lower.ops_core._add) to stop ORT fusing it into that op; moving that
  choice here would change the bytes of every existing build and make standard
  builds slower on ORT.
- MultiHeadAttention: not taken (the slowest attention form measured,
  /work/shared/ANCHORS.md: 4.30 ms against 3.19 decomposed).
- MatMulNBits (weight-only int8/int4): not taken for plain builds; dynamic int8
  is as fast at M=1 and 10-20x faster at M=128. Taken (8 bits, blocks of 32) for
  int8 generation bundles (QuantMatMulBlocks below), where rows must not share
  an activation scale (docs/generation.md, "The decode step, compile side", which
  also has the decode-step contrib forms not taken: SkipSimplifiedLayerNormalization,
  RotaryEmbedding).
- GroupQueryAttention: not taken for the concat cache layout (no faster than the
  decomposed attention there); taken for ``--cache-layout shared``
  (SharedCacheAttention below), whose point is its in-place buffer update.
"""
from __future__ import annotations

import numpy as np

from ..ir import OpNode
from . import proto
from .context import LowerContext
from .ops_core import LOWERINGS
from .targets import MS_DOMAIN, target_lowering


@target_lowering("ort", "Gelu")
def _gelu(ctx: LowerContext, op: OpNode) -> None:
    if ctx.g.value(op.inputs[0]).type.dtype != "float32":     # the CPU kernels are float32 only
        LOWERINGS["Gelu"](ctx, op)
        return
    approximate = op.attrs.get("approximate", "none")
    ctx.node("FastGelu" if approximate == "tanh" else "Gelu", op.inputs, op.outputs, domain=MS_DOMAIN)


@target_lowering("ort", "QuantMatMulBlocks")
def _quant_matmul_blocks(ctx: LowerContext, op: OpNode) -> None:
    """com.microsoft MatMulNBits, 8 bits, accuracy_level 4 (activations quantized to
    int8 per row and block: rows never mix). Used by int8 generation bundles with
    --target ort (graphc.generation.bundle_quant), where a row's tokens must not
    depend on the rest of the batch."""
    x, w, scales = op.inputs
    n, nb, block = (d.value for d in ctx.g.value(w).type.shape)
    k = ctx.g.value(x).type.shape[-1].value            # nb * block, or less: the last block padded
    ctx.node("MatMulNBits", [x, w, scales], op.outputs, domain=MS_DOMAIN, K=k, N=n, bits=8,
             block_size=block, accuracy_level=4)


@target_lowering("ort", "SharedCacheAttention")
def _shared_cache_attention(ctx: LowerContext, op: OpNode) -> None:
    """com.microsoft GroupQueryAttention over the cache buffer (graphc.prims.shared_cache).

    Every row's ``seqlens_k`` is total - 1 and ``total_sequence_length`` the bias's last
    axis: with left padding all rows share one column layout, so the kernel writes
    this step's keys at the same columns in every row, and ``attention_bias`` (not
    seqlens) masks each row's padding. Rotary positions stay outside the kernel: its
    own position handling counts padding as positions. Measured (docs/generation.md,
    "The shared cache buffer"): exact within 2e-7 against the numpy reference,
    prompt and decode steps, left-padded rows included; it refuses a step of several
    new tokens after a cache at batch > 1, which the decoding loop never runs."""
    from .guards import dim_of
    q, k, v, past_k, past_v, bias = op.inputs

    def total_int32() -> str:          # int32 scalar: the bias's last axis
        t = ctx.one("Squeeze", [dim_of(ctx, bias, 3), ctx.const(np.array([0], np.int64))])
        return ctx.one("Cast", [t], to=proto.TensorProto.INT32)

    def seqlens() -> str:              # int32 [B]: total - 1 in every row
        last = ctx.one("Sub", [ctx.shared(("gqa_total",), total_int32), ctx.const(np.array(1, np.int32))])
        return ctx.one("Expand", [last, dim_of(ctx, q, 0)])
    total = ctx.shared(("gqa_total",), total_int32)
    lens = ctx.shared(("gqa_seqlens",), seqlens)
    ctx.node("GroupQueryAttention", [q, k, v, past_k, past_v, lens, total, "", "", "", bias], op.outputs,
             domain=MS_DOMAIN, num_heads=op.attrs["heads"], kv_num_heads=op.attrs["kv_heads"], scale=1.0)
