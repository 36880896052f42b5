"""Compile-time weight layouts: the transposes that store weights the way the
runtime reads them (linear weights as [in, out], attention projections as
per-head [n, width, head_dim]).

They run once per build, but on every weight byte, so they set a large part of
a big model's compile time. numpy's own ``ascontiguousarray(w.T)`` walks the
source by columns and touches a new cache line for every element it writes;
copying a band of rows at a time writes whole lines: measured 4x faster on this
project's shapes with bands one cache line (64 bytes, 16 float32 rows) wide
(2048x512 float32: 2.56 ms -> 0.57 ms; 4096x1024: 24 -> 2.8 ms). Bands of 256
bytes (64 float32 rows: the band of the source, 64 rows of up to 8 KB, still
sits in L2) halve the number of numpy calls and of short inner loops: the
6+6 Transformer's transposes took 34-38 ms instead of 54-58 (min of 7, every
output freshly allocated as in a build; 128 bytes: 42-50, 512 bytes: 39-47).
"""
from __future__ import annotations

import numpy as np

_BAND_BYTES = 256


def transpose_into(out: np.ndarray, src: np.ndarray) -> None:
    """out[:] = src.T for 2-D arrays, in bands of rows 256 bytes of ``out`` wide."""
    band = max(1, _BAND_BYTES // src.itemsize)
    for i in range(0, src.shape[0], band):
        out[:, i:i + band] = src[i:i + band].T


def transposed(w: np.ndarray) -> np.ndarray:
    """A new C-contiguous w.T of a 2-D array."""
    out = np.empty(w.shape[::-1], dtype=w.dtype)
    transpose_into(out, w)
    return out


def heads_from_rows(blocks: list[tuple[np.ndarray, float]], head_dim: int) -> np.ndarray:
    """Per-head matrices [n, width, head_dim] from torch-style row blocks.

    Each block is (rows [k * head_dim, width], scale): k heads of a projection
    y = x @ rows.T, head h owning rows h*head_dim:(h+1)*head_dim. The result
    stacks every block's heads in order, each as rows.T (so x @ out[h] is head
    h's part of y), times the block's scale (the query's 1/sqrt(d) folded in)."""
    width = blocks[0][0].shape[1]
    n = sum(rows.shape[0] // head_dim for rows, _ in blocks)
    out = np.empty((n, width, head_dim), dtype=blocks[0][0].dtype)
    h = 0
    for rows, scale in blocks:
        for lo in range(0, rows.shape[0], head_dim):
            transpose_into(out[h], rows[lo:lo + head_dim])          # [D, W] -> [W, D]
            if scale != 1:
                out[h] *= out.dtype.type(scale)
            h += 1
    return out
