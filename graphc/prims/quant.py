"""Quantized primitives (made by graphc.ir.quantize, never by layers).

``QuantMatMul(x, w_q, w_scale)``: dynamic int8 matrix product. ``x`` is float32
[..., K]; ``w_q`` int8 [K, N] holds the weights quantized per output column,
symmetric (zero point 0); ``w_scale`` float32 [N]. At run time ``x`` is
quantized per tensor to uint8, asymmetric, exactly as ONNX
``DynamicQuantizeLinear`` does:

    lo = min(0, min x), hi = max(0, max x), s = (hi - lo) / 255
    z = clip(round(-lo / s), 0, 255), x_q = clip(round(x / s) + z, 0, 255)

(round = half to even), and the product is ((x_q - z) @ w_q) * s * w_scale,
accumulated in int32. The float result approximates x @ (w_q * w_scale).
"""
from __future__ import annotations

import numpy as np

from ..tensors import TensorType
from ..shapes import format_shape
from ._flops import matmul_flops
from ._registry import ShapeError, prim


def dynamic_quantize_u8(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """ONNX DynamicQuantizeLinear: (x_q uint8, scale, zero point)."""
    x = x.astype(np.float32)
    lo = np.float32(min(0.0, float(x.min()))) if x.size else np.float32(0)
    hi = np.float32(max(0.0, float(x.max()))) if x.size else np.float32(0)
    scale = np.float32((hi - lo) / np.float32(255))
    if scale == 0:
        return np.zeros(x.shape, np.uint8), scale, np.uint8(0)
    zp = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    q = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    return q, scale, zp


def _quant_matmul(x, w_q, w_scale, **_):
    q, s, z = dynamic_quantize_u8(x)
    acc = np.matmul(q.astype(np.int32) - np.int32(z), w_q.astype(np.int32))
    return (acc.astype(np.float32) * (s * w_scale.astype(np.float32))).astype(np.float32)


@prim("QuantMatMul", _quant_matmul, flops=matmul_flops)   # counted as the float product it stands for
def quant_matmul_infer(attrs, ins):
    """float32 [..., K] x int8 [K, N] (scale float32 [N]) -> float32 [..., N]."""
    x, w, s = ins
    if x.dtype != "float32" or w.dtype != "int8" or s.dtype != "float32":
        raise ShapeError(f"QuantMatMul needs float32, int8 and float32 inputs, got {x.dtype}, {w.dtype}, {s.dtype}")
    if w.rank != 2 or s.rank != 1 or x.rank < 1 or x.shape[-1] != w.shape[0] or s.shape[0] != w.shape[1]:
        raise ShapeError(f"QuantMatMul of {format_shape(x.shape)} and {format_shape(w.shape)} "
                         f"(scale {format_shape(s.shape)}) does not fit")
    return [TensorType("float32", x.shape[:-1] + (w.shape[1],))]


# ``QuantMatMulBlocks(x, w_blocks, scales)``: weight-only int8 in blocks along K,
# the layout of ONNX Runtime's com.microsoft MatMulNBits (bits 8): ``w_blocks``
# uint8 [N, nb, block] (nb = ceil(K / block), a partial last block padded with 0)
# holds round(W[k, n] / scale[n, b]) + 128 for the k of block b, symmetric per block
# (scale = max |W| over the block / 127), ``scales`` float32 [N * nb]. Each row of ``x`` is quantized on its own (MatMulNBits
# with accuracy_level 4 quantizes the activations per row and block), so a row's
# result never depends on the other rows of the batch. The reference here is the
# float product with the dequantized weights.
def dequantize_blocks(w_blocks: np.ndarray, scales: np.ndarray, k: int | None = None) -> np.ndarray:
    """[N, nb, block] uint8, [N * nb] -> float32 W [K, N] (K = nb * block unless given:
    the rows past K pad the last block)."""
    n, nb, bs = w_blocks.shape
    w = (w_blocks.astype(np.float32) - 128) * scales.reshape(n, nb, 1)
    return np.ascontiguousarray(w.reshape(n, nb * bs).T[:nb * bs if k is None else k])


def _quant_matmul_blocks(x, w_blocks, scales, **_):
    return np.matmul(x.astype(np.float32), dequantize_blocks(w_blocks, scales, x.shape[-1])).astype(np.float32)


@prim("QuantMatMulBlocks", _quant_matmul_blocks, flops=matmul_flops)   # as the float product
def quant_matmul_blocks_infer(attrs, ins):
    """float32 [..., K] x uint8 [N, nb, block] (scales float32 [N*nb]) -> float32 [..., N],
    nb = ceil(K / block)."""
    x, w, s = ins
    if x.dtype != "float32" or w.dtype != "uint8" or s.dtype != "float32":
        raise ShapeError(f"QuantMatMulBlocks needs float32, uint8 and float32 inputs, got {x.dtype}, {w.dtype}, "
                         f"{s.dtype}")
    if (w.rank != 3 or s.rank != 1 or x.rank < 1 or not x.shape[-1].is_const
            or not (w.shape[1].value - 1) * w.shape[2].value < x.shape[-1].value <= w.shape[1].value * w.shape[2].value
            or s.shape[0].value != w.shape[0].value * w.shape[1].value):
        raise ShapeError(f"QuantMatMulBlocks of {format_shape(x.shape)} and {format_shape(w.shape)} "
                         f"(scales {format_shape(s.shape)}) does not fit")
    return [TensorType("float32", x.shape[:-1] + (w.shape[0],))]
