"""Checks of input values and sizes that ONNX Runtime would answer with a
kernel's message, or not at all (graphc run only; the model is unchanged).

- Dims written as expressions (``[batch, seq * 2]``) must agree with the plain
  dims other inputs bind, and have a whole-number solution at all.
- Integer inputs with a declared ``range:`` stay inside it.
- The limits recorded at compile time (graphc.ir.run_limits): a dim's largest
  size (position tables), token ids in [0, rows), lengths at most the time axis.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from ..errors import GraphcError
from ..ir import contract, run_limits


def _evaluate(text: str, dims: Mapping[str, int]):
    from ..shapes import parse_expr
    try:
        return parse_expr(text).evaluate(lambda n: dims.get(n))
    except GraphcError:
        return None


def dim_names_in(text: str) -> set[str]:
    """The dim names an axis size written as an expression uses ('seq+1' -> {'seq'})."""
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))


def check_dim_expressions(bound: Mapping[str, tuple[int, str]]) -> dict[str, int]:
    """``bound``: each declared dim text -> (size, input that gave it). Returns
    the plain dims' sizes, with a dim known only through a one-symbol linear
    expression solved (``seq * 2`` given 6 -> seq = 3)."""
    dims = {d: n for d, (n, _) in bound.items() if d.isidentifier()}
    for text, (n, where) in bound.items():
        if text.isidentifier():
            continue
        free = sorted(s for s in dim_names_in(text) if s not in dims)
        if len(free) == 1:
            s = free[0]
            at0, at1, at2 = (_evaluate(text, {**dims, s: v}) for v in (0, 1, 2))
            if all(isinstance(v, int) for v in (at0, at1, at2)) and at2 - at1 == at1 - at0 and at1 != at0:
                slope = at1 - at0
                if (n - at0) % slope == 0 and (n - at0) // slope >= 0:
                    dims[s] = (n - at0) // slope
                else:
                    raise GraphcError(f"input '{where}' has an axis of size {n}, declared as {text}: "
                                      f"no whole size of '{s}' gives that",
                                      hint=f"give the input a size that {text} can take")
        want = _evaluate(text, dims)
        if isinstance(want, int) and want != n:
            shown = ", ".join(f"{k} = {dims[k]}" for k in sorted(dim_names_in(text)) if k in dims)
            raise GraphcError(f"input '{where}' has an axis of size {n}, declared as {text}, which is "
                              f"{want} with {shown}", hint="every input must agree on the dims")
    return dims


def refuse_values_out_of_range(meta: Mapping[str, str], feeds: Mapping[str, np.ndarray],
                               dims: Mapping[str, int]) -> None:
    """Integer inputs against the ``range: [lo, hi)`` their spec declared."""
    ranges = contract.read(meta).input_ranges
    for name, (lo, hi) in sorted(ranges.items()):
        arr = feeds.get(name)
        if arr is None or arr.size == 0 or arr.dtype.kind not in "iu":
            continue
        lo_v = lo if isinstance(lo, int) else _evaluate(str(lo), dims)
        hi_v = hi if isinstance(hi, int) else _evaluate(str(hi), dims)
        if not (isinstance(lo_v, int) and isinstance(hi_v, int)):
            continue
        _refuse_outside(arr, name, lo_v, hi_v, f"the range [{lo}, {hi}) its spec declares"
                        + ("" if isinstance(lo, int) and isinstance(hi, int) else f", [{lo_v}, {hi_v}) here"),
                        "give values inside the declared range")


def refuse_dims_past_limits(meta: Mapping[str, str], dims: Mapping[str, int]) -> None:
    """Dims past their recorded largest size (a declared max, a table's max_len)."""
    limits = run_limits.load(meta)
    for dim, (most, layer) in sorted(limits.get("dim_max", {}).items()):
        size = dims.get(dim) if dim in dims else _evaluate(dim, dims)    # a length may be 'num_patches + 1'
        if isinstance(most, str):       # another dim (a cache buffer's capacity): its size in this run
            bound = _evaluate(most, dims)
            if isinstance(bound, int) and isinstance(size, int) and size > bound:
                raise GraphcError(f"dim '{dim}' is {size}, but layer '{layer}' needs it at most {most} "
                                  f"(= {bound} here)", hint=f"use {dim} <= {most}")
            continue
        if isinstance(most, int) and isinstance(size, int) and size > most:
            dims = {**dims, dim: size}
            if not layer:         # the spec's own `dims: {seq: {max: N}}`
                raise GraphcError(f"dim '{dim}' is {dims[dim]}, but the spec declares it at most {most}",
                                  hint=f"use {dim} <= {most}")
            raise GraphcError(f"dim '{dim}' is {dims[dim]}, but layer '{layer}' accepts at most {most} "
                              f"(its table's max_len)", hint=f"use {dim} <= {most}, or rebuild with a larger max_len")


def refuse_values_past_limits(meta: Mapping[str, str], feeds: Mapping[str, np.ndarray],
                              dims: Mapping[str, int]) -> None:
    refuse_dims_past_limits(meta, dims)
    limits = run_limits.load(meta)
    for name, (rows, layer) in sorted(limits.get("ids", {}).items()):
        arr = feeds.get(name)
        if arr is not None and arr.size and arr.dtype.kind in "iu" and isinstance(rows, int):
            _refuse_outside(arr, name, 0, rows, f"[0, {rows}), the rows of layer '{layer}'",
                            "ONNX Gather would read a negative id as counting from the end, silently")
    for name, (steps, layer) in sorted(limits.get("steps", {}).items()):
        arr = feeds.get(name)
        most = _evaluate(str(steps), dims)
        if arr is not None and arr.size and arr.dtype.kind in "iu" and isinstance(most, int):
            _refuse_outside(arr, name, 1, most + 1, f"1..{steps} = 1..{most}, the time steps of layer '{layer}'",
                            "a length counts the real steps of its sequence, at most the padded length")


def _refuse_outside(arr: np.ndarray, name: str, lo: int, hi: int, allowed: str, hint: str) -> None:
    flat = np.asarray(arr).reshape(-1)
    bad = np.flatnonzero((flat < lo) | (flat >= hi))
    if bad.size:
        at = [int(i) for i in np.unravel_index(int(bad[0]), arr.shape)]
        raise GraphcError(f"input '{name}' has {int(flat[bad[0]])} at {at}, outside {allowed}"
                          + (f" ({bad.size} values are)" if bad.size > 1 else ""), hint=hint)
