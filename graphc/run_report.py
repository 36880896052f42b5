"""What `graphc run` tells the user about inputs it made up.

With --random (or --bench and no --input) the run's numbers depend on inputs the
user never saw; one line per drawn input says its dtype, shape and where the
values came from, so a surprising output can be traced to its input (a token
range, a padding mask) and the same run repeated with --seed."""
from __future__ import annotations

from typing import Mapping

import numpy as np


def describe_drawn(meta: Mapping[str, str], feeds: Mapping[str, np.ndarray], drawn, seed: int) -> str:
    from .ir import contract
    ranges = contract.read(meta).input_ranges          # validated (graphc.ir.contract)
    parts = []
    for name in drawn:
        arr = feeds[name]
        head = f"{name} {arr.dtype}{list(arr.shape)}"
        if arr.dtype.kind == "f":
            parts.append(f"{head} N(0, 1)")
        elif arr.dtype == np.bool_:
            parts.append(f"{head} {int(arr.sum())} of {arr.size} True")
        else:
            lo, hi = ranges.get(name, (0, 2))
            shown = f"[{lo}, {hi})"
            if arr.size:
                shown += f", drawn {int(arr.min())}..{int(arr.max())}"
            parts.append(f"{head} in {shown}")
    return f"random inputs (seed {seed}): " + "; ".join(parts)
