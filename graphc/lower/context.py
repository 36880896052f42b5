"""The state one lowering run shares between per-op lowerings."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from . import proto

from ..errors import GraphcError
from ..ir import Graph, OpNode


class LowerContext:
    def __init__(self, graph: Graph, opset: int, target: str = "onnx"):
        self.g = graph
        self.opset = opset
        self.target = target                # graphc.lower.targets
        self.nodes: list[proto.NodeProto] = []
        self.extra_initializers: list[proto.TensorProto] = []
        self._consts: dict[tuple, str] = {}
        self._count = 0
        self.current: OpNode | None = None
        self.memo: dict[tuple, str] = {}    # run-time values shared between ops (e.g. an emptiness test per shape)

    def fresh(self, hint: str) -> str:
        self._count += 1
        base = self.current.id if self.current else "graphc"
        return f"{base}/{hint}_{self._count}"

    def node(self, op_type: str, inputs: list[str], outputs: list[str] | None = None, n_out: int = 1,
             domain: str = "", **attrs: Any) -> list[str]:
        outputs = outputs or [self.fresh(op_type) for _ in range(n_out)]
        self.nodes.append(proto.make_node(op_type, inputs, outputs, name=self.fresh(op_type + "_node"),
                                           domain=domain or None, **attrs))
        return outputs

    def one(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        return self.node(op_type, inputs, [output] if output else None, **attrs)[0]

    def shared(self, key: tuple, build: Callable[[], str]) -> str:
        """``build()`` once per key in this lowering (see ``memo``); later calls reuse its result."""
        if key not in self.memo:
            self.memo[key] = build()
        return self.memo[key]

    def const(self, array: np.ndarray | list | int | float, dtype=None) -> str:
        """A small helper initializer (axes, shapes, scalars), shared when equal."""
        arr = np.asarray(array, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._count += 1
            name = f"graphc.const_{len(self._consts)}"
            self._consts[key] = name
            self.extra_initializers.append(proto.from_array(arr, name))
        return self._consts[key]

    def option(self, op: OpNode, name: str, default: Any) -> Any:
        """A lowering option the layer recorded for ``op`` (Graph.lowering_options;
        the names its primitive declares in Prim.lowering_options), else ``default``."""
        return self.g.lowering_options.get(op.id, {}).get(name, default)

    def error(self, message: str) -> GraphcError:
        span = self.current.span if self.current else None
        where = f"layer '{self.current.layer}': " if self.current and self.current.layer else ""
        return GraphcError(f"{where}{message}", span)
