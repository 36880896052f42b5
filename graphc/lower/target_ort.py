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
  also has the decode-step contrib forms not taken: GroupQueryAttention,
  SkipSimplifiedLayerNormalization, RotaryEmbedding).
"""
from __future__ import annotations

from ..ir import OpNode
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
    ctx.node("MatMulNBits", [x, w, scales], op.outputs, domain=MS_DOMAIN, K=nb * block, N=n, bits=8,
             block_size=block, accuracy_level=4)
