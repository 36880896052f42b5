"""Redundant work removed from the IR before the lowering: common
subexpressions merged, and ops whose results nothing reads dropped.

Common subexpressions.

Layers expand one at a time, so work that depends only on the model's inputs
is repeated in every layer that needs it: each of the six encoder layers (and
the decoder's six cross-attentions) reshapes the same key-padding mask to
[B, 1, 1, S], and everything the lowering derives from it (the additive mask,
the "some key is visible" row factor) is then emitted once per layer too.
ONNX Runtime merges such copies when it loads a model; other runtimes and a
person reading the graph should not have to. Merging them here, before the
lowering, also lets the lowering share what it builds per distinct mask.

Two ops are the same computation when they have the same primitive, the same
(already merged) inputs and equal attributes: primitives are pure functions of
their inputs and attributes. Their lowering options (Graph.lowering_options)
must be equal too: merging two attentions a spec asked to lower differently
would silently drop one request. Derive ops (compile-time numpy closures) are
left alone, and so are ops that produce a graph output (each output keeps its
own name).

Dead ops. A layer computes all of its outputs, and a spec may read only some:
a GRU encoder whose per-step output `y` is never read still reshaped it to
batch-first. Ops none of whose outputs is read (nor a graph output) are
dropped, last first, so chains of them go too.
"""
from __future__ import annotations

from typing import Any, Hashable

import numpy as np

from .graph import Graph, verify


class _NoKey(Exception):
    """An attribute value with no canonical form: that op is never merged."""


def _canonical(v: Any) -> Hashable:
    """A hashable stand-in for an attribute value that is equal exactly when
    the values are (tagged with the type: 1, 1.0 and True are different attributes)."""
    if isinstance(v, dict):
        return ("dict",) + tuple(sorted((str(k), _canonical(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return (type(v).__name__,) + tuple(_canonical(x) for x in v)
    if isinstance(v, np.ndarray):
        return ("ndarray", v.dtype.str, v.shape, v.tobytes())
    if v is None or isinstance(v, (bool, int, float, str, np.generic)):
        return (type(v).__name__, v)
    try:
        hash(v)
    except TypeError:
        raise _NoKey from None
    if callable(v):
        raise _NoKey                      # a function compares by identity only: never "equal" by value
    return (type(v).__name__, v)


def merge_common_subexpressions(g: Graph) -> int:
    """Merge ops that compute the same thing into their first occurrence;
    returns how many ops were removed. The op order is topological, so an
    op's inputs have already been merged when it is looked at."""
    first: dict[Hashable, Any] = {}
    graph_outputs = set(g.outputs.values())
    merged = 0
    for op in g.ops():
        if op.op == "Derive" or any(o in graph_outputs for o in op.outputs):
            continue
        try:
            key = (op.op, tuple(op.inputs), _canonical(op.attrs), _canonical(g.lowering_options.get(op.id, {})))
        except _NoKey:
            continue
        kept = first.setdefault(key, op)
        if kept is op:
            continue
        for dup, same in zip(op.outputs, kept.outputs):
            g.replace_uses(dup, same)
        g.drop_op(op.id)
        merged += 1
    if merged:
        verify(g)
    return merged


def remove_dead_ops(g: Graph) -> int:
    """Drop ops whose outputs nothing reads and that produce no graph output,
    then the weights and constants only they read (run after the weights are
    loaded and checked against the spec, so a weights file still has to match
    the whole spec); returns how many ops went. Walks the ops last to first, so
    an op that only fed dead ops is dead by the time it is looked at."""
    graph_outputs = set(g.outputs.values())
    removed = 0
    for op in reversed(g.ops()):
        if any(g.users(o) or o in graph_outputs for o in op.outputs):
            continue
        g.drop_op(op.id)
        removed += 1
    if removed:
        remove_unread_weights(g)
        verify(g)
    return removed


def remove_unread_weights(g: Graph) -> None:
    """Drop parameters and constants that no op reads and that are no graph output."""
    graph_outputs = set(g.outputs.values())
    for v in list(g.values()):
        if v.kind in ("param", "const") and not g.users(v.name) and v.name not in graph_outputs:
            g.remove_value(v.name)


def simplify(g: Graph) -> None:
    """Both passes, as compile_spec runs them."""
    merge_common_subexpressions(g)
    remove_dead_ops(g)
