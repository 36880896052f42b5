"""The public pipeline: spec -> graph -> weights -> ONNX."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from .build import build_graph
from .ir import Graph
from .spec import Spec, load_spec
from .weights import load_weights, materialize


@dataclass
class Compiled:
    spec: Spec
    graph: Graph
    model: object          # onnx.ModelProto (kept untyped: only graphc.lower imports onnx)

    def to_bytes(self) -> bytes:
        from .lower import serialize
        return serialize(self.model)


def check_spec(path: str | os.PathLike, include_dirs: Iterable[str] = ()) -> tuple[Spec, Graph]:
    """Parse and shape-check a spec; no weights are allocated."""
    spec = load_spec(path, include_dirs)
    return spec, build_graph(spec)


def compile_spec(path: str | os.PathLike, weights: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
                 seed: int = 0, opset: int | None = None, include_dirs: Iterable[str] = (),
                 attention: str = "auto") -> Compiled:
    from .lower import DEFAULT_OPSET, lower
    spec, graph = check_spec(path, include_dirs)
    if isinstance(weights, (str, os.PathLike)):
        source = str(weights)
        weights = load_weights(weights)
    else:
        source = "weights"
    materialize(graph, weights, seed, source)
    graph.metadata["graphc.attention"] = attention
    graph.metadata["graphc.seed"] = str(seed) if weights is None else "weights"
    model = lower(graph, opset or DEFAULT_OPSET)
    return Compiled(spec, graph, model)
