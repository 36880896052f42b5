"""The FLOP rules primitives register with (``@prim(..., flops=RULE)``).

A rule is ``rule(attrs, input types, output types, dims) -> int | None``: the
floating-point operations of one run of the op at the dims ``dims`` (name ->
size), or None when a dim it needs is not given. Conventions, as ``graphc
info`` prints them: a multiply-add counts 2; an elementwise op (and each of
softmax's or a norm's outputs) counts 1 per output element; moving data
(reshape, transpose, slice, gather, cast) counts 0; compile-time work
(``Derive``) counts 0 because it never runs at inference.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ..shapes import Dim
from ..tensors import TensorType


def numel(shape: Sequence[Dim], dims: Mapping[str, int]) -> int | None:
    """The element count of ``shape`` at ``dims``; None if a dim is not given."""
    total = 1
    for d in shape:
        try:
            total *= d.evaluate(dims)
        except KeyError:
            return None
    return total


def no_flops(attrs: dict, ins: list[TensorType], outs: list[TensorType], dims: Mapping[str, int]) -> int:
    """Data movement or compile-time work: 0."""
    return 0


def per_output_element(attrs: dict, ins: list[TensorType], outs: list[TensorType],
                       dims: Mapping[str, int]) -> int | None:
    """Elementwise work: 1 per element of the first output."""
    return numel(outs[0].shape, dims)


def matmul_flops(attrs: dict, ins: list[TensorType], outs: list[TensorType], dims: Mapping[str, int]) -> int | None:
    """2 * (output elements) * (contracted width): one multiply-add per term."""
    n = numel(outs[0].shape, dims)
    k = numel(ins[0].shape[-1:], dims)
    return None if n is None or k is None else 2 * n * k
