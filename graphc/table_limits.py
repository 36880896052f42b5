"""Sequence lengths against the tables that hold one row per position.

A position table (sinusoidal, learned, RoPE, ALiBi) holds max_len rows and is
cut to the input's length at run time by a ``SliceLike`` op; a longer input has
no rows to read, and ONNX Runtime fails deep in a kernel ("BroadcastIterator").
The layers record the limit of a plain symbolic length (``seq``) for `graphc
run`; this module finds every such slice after expansion, so a length written
as an expression (``num_patches + 1``, a class token in front of the patches)
gets the same run-time check, and `graphc check --dim seq=1100` fails where
the table holds 1024, located at the layer that owns the table."""
from __future__ import annotations

from typing import Mapping

from .errors import GraphcError
from .ir import Graph, run_limits


def _table_slices(g: Graph):
    """(op, rows, length Dim) for each SliceLike that cuts a fixed-size table to a symbolic length."""
    for op in g.ops():
        if op.op != "SliceLike":
            continue
        table, ref = g.value(op.inputs[0]).type, g.value(op.inputs[1]).type
        rows, length = table.shape[op.attrs["axis"]], ref.shape[op.attrs["ref_axis"]]
        if rows.is_const and not length.is_const:
            yield op, rows.value, length


def record_table_limits(g: Graph) -> None:
    """Store each table's rows as the run-time limit of the length it is cut to
    (graphc.ir.run_limits 'dim_max'; the subject may be an expression)."""
    for op, rows, length in _table_slices(g):
        run_limits.record(g.metadata, "dim_max", str(length), rows, op.layer)


def check_table_limits(g: Graph, dims: Mapping[str, int]) -> None:
    """Refuse dim sizes that make a length longer than its table, at the layer."""
    for op, rows, length in _table_slices(g):
        if not length.symbols <= set(dims):
            continue
        n = length.evaluate(dims)
        if n > rows:
            given = ", ".join(f"{s}={dims[s]}" for s in sorted(length.symbols))
            what = f"{length} is {n}" if str(length) in dims else f"{length} is {n} ({given})"
            raise GraphcError(f"layer '{op.layer}': its table holds {rows} positions, but {what}",
                              op.span, hint=f"use sizes where {length} <= {rows}, or raise the layer's max_len")
