"""int8 generation bundles: ``graphc build SPEC --kv-cache --quantize int8``.

The cached graph goes through the same int8 pass as a plain build
(graphc.pipeline's quantize pass, graphc.ir.quantize: per-channel symmetric
int8 weights, activations quantized at run time, the output head float unless
``quantize: {head: true}``). A decode
step reads every weight once for one token per row, so it is bound by the
weight bytes: int8 weights are a quarter of the float bytes (docs/generation.md,
"The decode step, compile side", has the measured steps). With ``--target ort`` the
weights are quantized in blocks of ``BLOCK`` along K for MatMulNBits, whose
activations are quantized per row: a row's logits do not depend on the batch.

The error is measured like a plain build's (graphc.quantized), on a cached step
instead of the spec's example inputs: 2 rows of 4 new tokens after 6 cached
ones (random caches and ids, every position real, positions 6..9), every
output (the logits and each present) against the float bundle.
"""
from __future__ import annotations

import numpy as np

from ..ir.kv_cache import PAST_DIM, TOTAL_DIM

BLOCK = 32                       # --target ort: MatMulNBits blocks along K (as onnxruntime-genai's int8)
STEP_DIMS = {PAST_DIM: 6}        # the measured step: this many cached tokens
STEP_ROWS, STEP_NEW = 2, 4


def step_feeds(session, seed: int) -> dict[str, np.ndarray]:
    """Inputs of one cached step: random ids and caches, a full attention mask and
    the positions that follow the cache."""
    from ..runtime.session import random_inputs
    dims = {**STEP_DIMS}
    past = STEP_DIMS[PAST_DIM]
    shared = any(TOTAL_DIM in info.shape for info in session.get_inputs())
    for info in session.get_inputs():
        if info.name == "input_ids":
            # the shared cache layout (graphc.prims.shared_cache): a buffer longer than what is
            # filled, and one new token per row (GroupQueryAttention's rule for a batch after a cache)
            new = 1 if shared else STEP_NEW
            dims.update({str(info.shape[0]): STEP_ROWS, str(info.shape[1]): new})
            if shared:
                dims.update({PAST_DIM: past + new + 2, TOTAL_DIM: past + new})
    feeds = random_inputs(session, dims, seed)
    if "attention_mask" in feeds:
        feeds["attention_mask"] = np.ones_like(feeds["attention_mask"])
    if "position_ids" in feeds:
        rows, new = feeds["position_ids"].shape
        feeds["position_ids"] = np.broadcast_to(np.arange(past, past + new, dtype=np.int64), (rows, new)).copy()
    return feeds


def measure(quant, float_model: bytes, quant_model: bytes, max_error: float | None) -> None:
    """Fill ``quant.errors`` from one cached step; refuse above ``max_error`` (graphc.quantized)."""
    from .. import quantized
    quantized.measure(quant, float_model, quant_model, max_error, feeds_for=step_feeds)


def summary(quant) -> list[str]:
    """The build's notes: graphc.quantized's lines, with the caches' errors (one line
    per present in it) folded into the worst one."""
    presents = [e for e in quant.errors if e.name.startswith("present.")]
    lines = [line for line in quant.summary() if not any(f"output {e.name}:" in line for e in presents)]
    if presents:
        worst = max(presents, key=lambda e: e.rel_rms)
        lines.append(f"error against float, the {len(presents)} present caches: worst {worst.name}, max abs "
                     f"{worst.max_abs:.3g}, relative RMS {worst.rel_rms:.3%} (one cached step, random inputs)")
    return lines
