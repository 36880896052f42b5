"""The ONNX Runtime target (``--target ort``): contrib-operator choices.

Each form here replaces the standard one (graphc.lower.ops_*) only where it
measured faster on this machine (AVX512-VNNI, ORT 1.31, 2 threads) and agreed
within tolerance; the numbers and the choices not taken are in
docs/benchmarks.md ("int8 and the ORT target"). ORT-specific choices that the
standard target keeps too, because graphc's own runtime is ORT:
- a residual Add read only by a LayerNorm is emitted as Sum in every target
  (graphc.lower.ops_core._add): ORT would otherwise fuse it into its contrib
  SkipLayerNormalization, measured slower on CPU. Moving that choice here
  would change the bytes of every existing build, and make standard builds
  slower on ORT; the ORT target uses the same form.
"""
from __future__ import annotations

from ..ir import OpNode
from .context import LowerContext
from .targets import MS_DOMAIN, target_lowering


@target_lowering("ort", "QuantMatMul")
def _dynamic_quantize_matmul(ctx: LowerContext, op: OpNode) -> None:
    """com.microsoft.DynamicQuantizeMatMul(x, W_q int8, w_scale [N]): quantizes x
    to uint8 per tensor and multiplies in one kernel."""
    x, wq, ws = op.inputs
    ctx.node("DynamicQuantizeMatMul", [x, wq, ws], op.outputs, domain=MS_DOMAIN)
