"""Seeded initialisation: the value of a parameter no weights file gives.

Each parameter draws from its own generator, seeded by the build's seed and its
name, so adding a layer never changes the others' values and the model's bytes
do not depend on order or on the threads that draw them.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from .errors import InternalError
from .ir import DTYPES, ValueInfo
from .ir.builder import Init

def _rng_for(name: str, seed: int) -> np.random.Generator:
    # Seeded per parameter name, not by position: adding a layer does not
    # change the initial weights of the others, and order never matters.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _uniform(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    out = rng.random(size=shape, dtype=np.float32)
    out *= np.float32(2 * bound)
    out -= np.float32(bound)
    return out


# Below this many bytes of parameters, drawing them on one thread is as fast.
PARALLEL_INIT_BYTES = 16 << 20
INIT_THREADS = 4


def initial_values(params: list[ValueInfo], seed: int, total: int):
    """Each parameter's seeded value (``initial_value``), in order, drawn on a
    few threads when there is much to draw: drawing 44M values was a fifth of
    the 6+6 Transformer's build. numpy's generators release the GIL while
    they fill an array, and every parameter has its own generator seeded by
    its name, so the values, and the model's bytes, are the same whatever the
    threads do (tests/test_init.py builds with 1 and 4 threads and compares)."""
    threads = min(INIT_THREADS, os.cpu_count() or 1)
    if total < PARALLEL_INIT_BYTES or threads < 2 or len(params) < 2:
        yield from (initial_value(p, seed) for p in params)
        return
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(threads, thread_name_prefix="graphc-init")
    try:
        yield from pool.map(initial_value, params, [seed] * len(params))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)     # on Ctrl-C: nothing new starts


def initial_value(info: ValueInfo, seed: int) -> np.ndarray:
    init: Init = info.init or Init("zeros")
    out = _drawn(info, init, seed)
    if init.zero_row is not None:
        out[init.zero_row] = 0
    return out


def _drawn(info: ValueInfo, init: Init, seed: int) -> np.ndarray:
    shape = info.type.concrete_shape()
    dtype = DTYPES[info.type.dtype]
    if init.kind == "zeros":
        return np.zeros(shape, dtype)
    if init.kind == "ones":
        return np.ones(shape, dtype)
    rng = _rng_for(info.name, seed)
    # drawn in float32 directly: float64 draws + a cast doubled the init time of big models
    if init.kind == "uniform":
        return _uniform(rng, shape, init.a).astype(dtype, copy=False)
    if init.kind == "normal":
        return (rng.standard_normal(size=shape, dtype=np.float32) * np.float32(init.a)).astype(dtype, copy=False)
    if init.kind == "xavier_uniform":
        fan_out, fan_in = shape[0], shape[1]
        bound = init.a * np.sqrt(6.0 / (fan_in + fan_out))
        return _uniform(rng, shape, bound).astype(dtype, copy=False)
    raise InternalError(f"unknown init {init.kind}")
