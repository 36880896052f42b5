"""Limits on run-time values that an ONNX file cannot state, recorded while
layers expand and stored in the model's metadata (``graphc.run_limits``), so
that ``graphc run`` refuses inputs past them in graphc's words. Without them
ONNX Runtime either fails deep inside a kernel ("BroadcastIterator ... 8 by
12" for a sequence longer than a position table) or, worse, returns numbers:
ONNX ``Gather`` takes a negative token id as counting from the end, and the
int64 -> int32 cast of LSTM lengths wraps 2**32 + 3 to 3.

Three kinds, each keeping the tightest limit and the layer that sets it:

- ``dim_max``: a symbolic dim's largest size (a position table's max_len), or
  another dim it may not exceed (a shared KV buffer's capacity);
- ``ids``: an integer input's values must lie in [0, n) (an embedding's rows);
- ``steps``: an integer input of sequence lengths, each at most the size of
  a dim (a recurrent layer's time axis).

Other runtimes ignore the metadata; the model itself is unchanged.
"""
from __future__ import annotations

import json
from typing import Mapping

from . import contract
from .contract import load_run_limits_lenient as _load_text

KEY = contract.RUN_LIMITS
KINDS = contract.LIMIT_KINDS


def record(metadata: dict[str, str], kind: str, subject: str, limit: int | str, layer: str) -> None:
    """Note that ``subject`` (a dim or an input name) is limited by ``limit``
    because of ``layer``; of two numeric limits the smaller one is kept."""
    if kind not in KINDS:
        raise ValueError(f"unknown run limit kind {kind!r}")
    data = _load_text(metadata.get(KEY))
    entries = data.setdefault(kind, {})
    old = entries.get(subject)
    if old is None or (isinstance(limit, int) and isinstance(old[0], int) and limit < old[0]):
        entries[subject] = [limit, layer]
    metadata[KEY] = json.dumps(data, sort_keys=True)


def load(metadata: Mapping[str, str]) -> dict[str, dict[str, tuple]]:
    """The recorded limits (empty for a model from elsewhere or an older graphc),
    validated (graphc.ir.contract): a malformed entry is a GraphcError."""
    return contract.read(metadata).run_limits
