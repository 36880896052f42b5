"""Frozen objects a parsed spec is made of. Layer arguments stay located
YAML nodes here: they are evaluated during expansion, where block parameters
are known, so the same error path serves top-level layers and block bodies."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import Span
from ..source import Node


@dataclass(frozen=True)
class InputRef:
    """A reference to a value: ``x``, ``fc1`` or ``rnn.h_n``; ``port`` names the
    layer input it feeds (None = positional)."""

    ref: str
    span: Span
    port: str | None = None


@dataclass
class LayerDecl:
    name: str
    kind: str
    span: Span
    kind_span: Span
    inputs: list[InputRef]
    args: dict[str, Node]
    arg_key_spans: dict[str, Span]
    repeat: Node | None = None
    doc: str = ""
    # 'first:' of a repeated layer: arguments that replace those of copy 0 only
    first: dict[str, Node] = field(default_factory=dict)
    first_key_spans: dict[str, Span] = field(default_factory=dict)


@dataclass
class BlockDecl:
    name: str
    span: Span
    params: dict[str, Node]              # defaults; a null default means required
    param_spans: dict[str, Span]
    inputs: list[tuple[str, Span, bool]]  # name, where, optional
    layers: list[LayerDecl]
    outputs: dict[str, InputRef]
    doc: str = ""


@dataclass
class DimDecl:
    name: str
    span: Span
    example: int | None = None
    max: int | None = None


@dataclass
class InputDecl:
    name: str
    span: Span
    dtype: str
    shape: list[Node]
    range: tuple[int, int] | None = None
    doc: str = ""


@dataclass
class Spec:
    path: str
    name: str
    version: int
    dims: dict[str, DimDecl]
    params: dict[str, Any]
    param_spans: dict[str, Span]
    inputs: list[InputDecl]
    blocks: dict[str, BlockDecl]
    layers: list[LayerDecl]
    outputs: dict[str, InputRef]
    span: Span
    doc: str = ""
    sources: list[str] = field(default_factory=list)   # every file read, root first
    digest: str = ""                                    # sha256 over the texts of all sources
    quantize: Any = None                                # graphc.specfile.quantize.QuantizeDecl, when given
    weights: Any = None        # graphc.weights_map.WeightsSection: ignore list and weight map, or None
    generation: Any = None                              # spec.generation.GenerationDecl, or None
