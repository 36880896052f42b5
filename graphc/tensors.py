"""Tensor types: a dtype name and a symbolic shape, and the table of dtypes.

The leaf both the IR (graphc.ir) and the primitives (graphc.prims) build on:
the IR stores a TensorType on every value, and a primitive's shape rule maps
input TensorTypes to output TensorTypes. Keeping them here, below both, is what
lets graphc.ir.builder import the primitive registry at module level (an
import cycle ir <-> prims forced function-level imports before). This module
imports nothing of graphc but graphc.shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import Dim, format_shape

DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "float64": np.dtype(np.float64),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "bool": np.dtype(np.bool_),
    "int8": np.dtype(np.int8),           # quantized weights (graphc.ir.quantize)
    "uint8": np.dtype(np.uint8),
}
FLOAT_DTYPES = ("float32", "float16", "float64")


def np_dtype(name: str) -> np.dtype:
    return DTYPES[name]


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def concrete_shape(self) -> tuple[int, ...] | None:
        vals = [d.value for d in self.shape]
        return None if any(v is None for v in vals) else tuple(vals)

    def __str__(self) -> str:
        return f"{self.dtype}{format_shape(self.shape)}"
