"""The builder through which layer expansions emit primitives.

It keeps the current spec location and parameter prefix, so that every op it
creates is stamped with both, and it runs each primitive's shape rule at once:
a shape error surfaces while the responsible layer is being expanded, at that
layer's YAML line, instead of in some later pass with no location.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import GraphcError, InternalError, Span, did_you_mean
from ..prims import PRIMS, ShapeError, infer_op
from ..shapes import Dim, DimLike, as_dim
from .graph import DTYPES, Graph, OpNode, TensorType, ValueInfo


@dataclass(frozen=True)
class Value:
    """A handle on a graph value, as layer code sees it."""

    name: str
    type: TensorType

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def rank(self) -> int:
        return self.type.rank


@dataclass(frozen=True)
class Init:
    """How a parameter is initialised when no weights are given, following the
    defaults of the equivalent torch.nn module (so untrained models behave alike).

    kind: ``uniform`` (U(-a, a)), ``normal`` (N(0, a^2)), ``zeros``, ``ones``,
    ``xavier_uniform`` (a = gain; bound from the first two dims). ``zero_row``:
    a row of the first axis set to zero after the draw (nn.Embedding's
    padding_idx, whose vector torch initialises to zeros).
    """

    kind: str
    a: float = 0.0
    zero_row: int | None = None


class Builder:
    def __init__(self, graph: Graph):
        self.g = graph
        self._prefix: list[str] = []
        self._span: Span | None = None
        self._kind: str = ""
        self._counter = 0
        self._derived: dict[tuple, Value] = {}
        # graphc.ir.kv_cache.CacheContext while a spec expands for --kv-cache; layer
        # kinds consult it (cached self-attention, positions from position_ids)
        self.gen = None

    # context -----------------------------------------------------------------
    @contextlib.contextmanager
    def layer(self, name: str, span: Span, kind: str = "") -> Iterator[None]:
        """Enter a layer: its name extends the parameter prefix; ops get its span."""
        saved = (list(self._prefix), self._span, self._kind)
        if name:
            self._prefix.append(name)
        self._span, self._kind = span, kind or self._kind
        try:
            yield
        finally:
            self._prefix, self._span, self._kind = saved

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """A sub-module inside a layer (``self_attn``, ``linear1``): prefix only."""
        self._prefix.append(name)
        try:
            yield
        finally:
            self._prefix.pop()

    @property
    def path(self) -> str:
        return ".".join(self._prefix)

    @property
    def span(self) -> Span | None:
        return self._span

    def qualified(self, local: str) -> str:
        return ".".join(self._prefix + [local]) if local else self.path

    def error(self, message: str, hint: str | None = None, span: Span | None = None) -> GraphcError:
        where = f"{self._kind} '{self.path}'" if self._kind and self.path else (self.path or "")
        return GraphcError(f"{where}: {message}" if where else message, span or self._span, hint)

    def _fresh(self, hint: str) -> str:
        self._counter += 1
        base = f"{self.path}/{hint}" if self.path else hint
        return f"{base}_{self._counter}"

    # values --------------------------------------------------------------------
    def input(self, name: str, dtype: str, shape: Sequence[DimLike], span: Span) -> Value:
        t = TensorType(dtype, tuple(as_dim(d) for d in shape))
        self.g.add_value(ValueInfo(name, t, "input", span=span))
        self.g.inputs.append(name)
        return Value(name, t)

    def param(self, local: str, shape: Sequence[int], init: Init, dtype: str = "float32", doc: str = "") -> Value:
        """Declare a trainable parameter named after the torch.nn state_dict convention."""
        name = self.qualified(local)
        t = TensorType(dtype, tuple(Dim.const(int(s)) for s in shape))
        if self.g.has_value(name):
            existing = self.g.value(name)
            raise self.error(f"parameter '{name}' is defined twice",
                             hint=f"first defined at {existing.span}; give the layers different names")
        self.g.add_value(ValueInfo(name, t, "param", init=init, span=self._span, doc=doc))
        return Value(name, t)

    def existing_param(self, name: str, span: Span | None = None) -> Value:
        """A parameter declared by an earlier layer, for weight tying."""
        if not self.g.has_value(name) or self.g.value(name).kind != "param":
            known = [p.name for p in self.g.params()]
            raise self.error(f"no parameter named '{name}' to tie to", span=span,
                             hint=did_you_mean(name, known) or "tie to a parameter of an earlier layer")
        return Value(name, self.g.value(name).type)

    def const(self, array: np.ndarray, hint: str = "const") -> Value:
        array = np.ascontiguousarray(array)
        dtype = next(k for k, v in DTYPES.items() if v == array.dtype)
        t = TensorType(dtype, tuple(Dim.const(int(s)) for s in array.shape))
        name = self._fresh(hint)
        self.g.add_value(ValueInfo(name, t, "const", data=array, span=self._span))
        return Value(name, t)

    # ops ----------------------------------------------------------------------
    def op(self, prim: str, inputs: Sequence[Value | None], n_out: int = 1, name_hint: str | None = None,
           lowering: dict[str, Any] | None = None, **attrs: Any) -> Any:
        """Emit one primitive; returns a Value (or a tuple when n_out > 1).

        ``attrs`` are the primitive's semantics. ``lowering`` holds the layer's
        choices of ONNX form (only names the primitive declares in
        ``lowering_options``); they go to ``Graph.lowering_options``, not the op.
        ``None`` in ``inputs`` omits an optional slot (graphc.prims._registry
        states the convention): it becomes ``""`` in the op, the shape rule sees
        None there, and trailing omitted slots are dropped."""
        if lowering:
            unknown = sorted(set(lowering) - set(PRIMS[prim].lowering_options))
            if unknown:
                raise InternalError(f"{prim} declares no lowering option {', '.join(unknown)}")
        inputs = list(inputs)
        while inputs and inputs[-1] is None:
            inputs.pop()
        in_types = [v.type if v is not None else None for v in inputs]
        try:
            out_types = infer_op(prim, attrs, in_types)
        except ShapeError as exc:
            raise self.error(exc.message, exc.hint) from None
        node_id = self._fresh(name_hint or prim)
        outs = []
        for i, t in enumerate(out_types[:n_out] if n_out else out_types):
            vname = node_id if len(out_types) == 1 else f"{node_id}:{i}"
            self.g.add_value(ValueInfo(vname, t, span=self._span))
            outs.append(Value(vname, t))
        self.g.add_op(OpNode(node_id, prim, [v.name if v is not None else "" for v in inputs],
                             [o.name for o in outs], dict(attrs), self._span, self.path))
        if lowering:
            self.g.lowering_options[node_id] = dict(lowering)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def derive(self, fn: Callable[..., np.ndarray], inputs: Sequence[Value], shape: Sequence[int],
               label: str, dtype: str = "float32", key: tuple | None = None) -> Value:
        """A value computed from parameters once, at compile time (see prims.core Derive).
        With ``key``, layers that derive the same thing (a tied, scaled embedding
        table) share one result instead of storing two copies."""
        if key is not None and key in self._derived:
            return self._derived[key]
        out = self.op("Derive", inputs, name_hint=label, fn=fn, label=label, dtype=dtype,
                      shape=tuple(Dim.const(int(s)) for s in shape))
        if key is not None:
            self._derived[key] = out
        return out
