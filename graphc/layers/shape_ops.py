"""Layout layers: reshape, transpose, concat, split, slice."""
from __future__ import annotations

import numpy as np

from ..shapes import Dim, format_shape
from .base import LayerKind, Param, Port


def resolve_reshape(call, x, target) -> tuple[Dim, ...]:
    """Fill in one -1 symbolically: total elements / product of the others."""
    total = Dim.const(1)
    for d in x.shape:
        total = total * d
    if sum(1 for d in target if d == -1) > 1:
        raise call.error("at most one -1 in the target shape", "shape")
    known = Dim.const(1)
    for d in target:
        if d != -1:
            if d.is_const and d.value <= 0:
                raise call.error(f"target dims must be positive (or one -1), got {d}", "shape")
            known = known * d
    out = []
    for d in target:
        if d == -1:
            q = total.exact_div(known)
            if q is None:
                raise call.error(f"cannot infer -1: {format_shape(x.shape)} has {total} elements, "
                                 f"not a multiple of {known}", "shape")
            out.append(q)
        else:
            out.append(d)
    return tuple(out)


class Reshape(LayerKind):
    """Reshape to a target shape whose entries are integers, dim names,
    expressions (``heads * head_dim``) or a single -1."""

    kind = "reshape"
    summary = "reshape to a target shape (dims may be symbolic; one -1 allowed)"
    params = (Param("shape", "shape", doc="target shape, e.g. [batch, seq, heads, -1]"),)
    shape_rule = "[*] -> shape (same number of elements)"
    example = "{name: split_heads, kind: reshape, input: q, shape: [batch, seq, 8, 64]}"

    def expand(self, b, call):
        x = call.inputs["x"]
        target = resolve_reshape(call, x, call["shape"])
        return {"y": b.op("Reshape", [x], shape=target)}

    def reference(self, args, weights, inputs):
        return {"y": inputs["x"].reshape(args["concrete_shape"])}


class Transpose(LayerKind):
    """Permute axes: output axis i is input axis perm[i]."""

    kind = "transpose"
    summary = "permute axes"
    params = (Param("perm", "ints", doc="a permutation of the input's axes"),)
    shape_rule = "[d0, d1, ...] -> [d_perm[0], d_perm[1], ...]"
    example = "{name: heads_first, kind: transpose, input: q, perm: [0, 2, 1, 3]}"

    def expand(self, b, call):
        return {"y": b.op("Transpose", [call.inputs["x"]], perm=list(call["perm"]))}

    def reference(self, args, weights, inputs):
        return {"y": np.transpose(inputs["x"], args["perm"])}


class Concat(LayerKind):
    """Join any number of tensors along one axis (other axes must match)."""

    kind = "concat"
    summary = "join tensors along an axis"
    params = (Param("axis", "int", -1, "the axis to join along"),)
    inputs = (Port("x", "the first tensor; list more under 'inputs'"),)
    variadic = True
    shape_rule = "[.., a, ..] + [.., b, ..] -> [.., a + b, ..]"
    example = "{name: both, kind: concat, inputs: [fwd, bwd], axis: -1}"

    def expand(self, b, call):
        xs = [v for v in call.inputs.values() if v is not None]
        return {"y": b.op("Concat", xs, axis=call["axis"])}

    def reference(self, args, weights, inputs):
        return {"y": np.concatenate(list(inputs.values()), axis=args["axis"])}


class Split(LayerKind):
    """Cut a tensor along one axis into pieces of the given sizes; the pieces
    are the outputs ``y0``, ``y1``, ... (refer to them as ``name.y1``)."""

    kind = "split"
    summary = "cut along an axis into outputs y0, y1, ..."
    params = (
        Param("sizes", "ints", doc="the size of each piece; they must add up to the axis"),
        Param("axis", "int", -1, "the axis to cut"),
    )
    outputs = (Port("y0", "the first piece"), Port("y1", "the second piece; and so on"))
    shape_rule = "[.., a + b, ..] -> [.., a, ..], [.., b, ..]"
    example = "{name: halves, kind: split, input: x, sizes: [256, 256]}"

    def expand(self, b, call):
        sizes = list(call["sizes"])
        if not sizes or any(s <= 0 for s in sizes):
            raise call.error("sizes must be positive integers", "sizes")
        parts = b.op("Split", [call.inputs["x"]], n_out=len(sizes), axis=call["axis"], sizes=sizes)
        parts = parts if isinstance(parts, tuple) else (parts,)
        return {f"y{i}": p for i, p in enumerate(parts)}

    def reference(self, args, weights, inputs):
        idx = np.cumsum(args["sizes"])[:-1]
        return {f"y{i}": p for i, p in enumerate(np.split(inputs["x"], idx, axis=args["axis"]))}


class Slice(LayerKind):
    """Take [start, end) along one axis (Python slice semantics; end may be omitted)."""

    kind = "slice"
    summary = "take [start, end) along an axis"
    params = (
        Param("axis", "int", doc="the axis to slice"),
        Param("start", "int", 0, "first index (negative counts from the end)"),
        Param("end", "int", None, "one past the last index; omitted = to the end"),
    )
    shape_rule = "[.., n, ..] -> [.., len(range(n)[start:end]), ..]"
    example = "{name: first, kind: slice, input: x, axis: 1, start: 0, end: 1}"

    def expand(self, b, call):
        x = call.inputs["x"]
        if not -x.rank <= call["axis"] < x.rank:
            raise call.error(f"axis {call['axis']} is out of range for rank {x.rank}", "axis")
        start, end = call["start"], call["end"]
        size = x.shape[call["axis"]]
        # an empty slice (or, on a symbolic axis, end before start) would give a
        # zero or negative dim that only fails, obscurely, at run time
        if size.is_const:
            empty = len(range(*slice(start, end).indices(size.value))) == 0
        else:
            empty = end is not None and (start >= 0) == (end >= 0) and end <= start
        if empty:
            raise call.error(f"[{start}:{'' if end is None else end}] of an axis of size {size} is empty",
                             "end" if end is not None else "start")
        return {"y": b.op("Slice", [x], axis=call["axis"], start=start, end=end)}

    def reference(self, args, weights, inputs):
        index = [slice(None)] * inputs["x"].ndim
        index[args["axis"]] = slice(args["start"], args["end"])
        return {"y": inputs["x"][tuple(index)]}


KINDS = (Reshape, Transpose, Concat, Split, Slice)
