"""Checking and evaluating layer arguments against a kind's descriptors."""
from __future__ import annotations

import math
from collections import ChainMap
from typing import Any, Mapping

from ..errors import GraphcError, InternalError, Span, did_you_mean, known_list
from ..shapes import Dim, parse_expr
from ..source import Node
from .aliases import arg_alias_hint

MAX_DIM = 1 << 31          # no single axis of a real model is anywhere near this
MAX_INT = MAX_DIM          # integer arguments (widths, lengths, axes, sizes) are dims or index into them


class Env:
    """Names visible to expressions: hyperparameters (and block parameters) and dims."""

    def __init__(self, params: Mapping[str, Any], dims: Mapping[str, Dim]):
        self.params = params if isinstance(params, ChainMap) else ChainMap(dict(params))
        self.dims = dict(dims)

    def child(self, params: Mapping[str, Any]) -> "Env":
        # a view, not a copy: a spec of 49,000 params must not copy them per block use
        return Env(self.params.new_child(dict(params)), self.dims)

    def names(self) -> list[str]:
        return list(self.params) + list(self.dims)

    def lookup_number(self, name: str):
        v = self.params.get(name)
        if isinstance(v, bool) or isinstance(v, str):
            return None
        return v

    def lookup_dim(self, name: str):
        if name in self.dims:
            return self.dims[name]
        return self.lookup_number(name)


def eval_number(node: Node, env: Env, what: str, allow_dims: bool = False):
    v = node.value
    if isinstance(v, bool):
        raise GraphcError(f"{what} must be a number, not a boolean", node.span)
    if isinstance(v, (int, float)):
        return _finite(v, node, what)
    if isinstance(v, str):
        expr = parse_expr(v, node.span)
        for n in sorted(expr.names()):
            if allow_dims and n in env.dims:
                continue
            if n in env.params and isinstance(env.params[n], (bool, str)):
                raise GraphcError(f"'{n}' is {env.params[n]!r}, not a number", node.span)
            if n in env.params and env.params[n] is None:
                raise GraphcError(f"'{n}' has no value (it is null under 'params:'), so {what} cannot use it",
                                  node.span, hint=f"give '{n}' a number")
            if n in env.dims and env.lookup_number(n) is None:
                raise GraphcError(f"{what} must be a fixed number, but '{n}' is a symbolic dim", node.span,
                                  hint="a dim's size is known only at run time (its number under 'dims:' is "
                                       "only an example); use a number or a parameter from 'params:'")
        known = ChainMap(env.params, env.dims)     # for messages only; a copy would cost O(params) per value
        return _finite(expr.evaluate(env.lookup_dim if allow_dims else env.lookup_number, node.span, known),
                       node, what)
    raise GraphcError(f"{what} must be a number, not {node.type_name()}", node.span)


def _finite(v, node: Node, what: str):
    """NaN and infinity (YAML's .nan/.inf, or 1e308 * 10) are never meaningful
    arguments, and slip through range checks because NaN compares false."""
    if isinstance(v, float) and not math.isfinite(v):
        raise GraphcError(f"{what} must be a finite number, got {v}", node.span)
    return v


def eval_int(node: Node, env: Env, what: str, lo: float | None = None, hi: float | None = None) -> int:
    v = eval_number(node, env, what)
    if isinstance(v, float):
        if not v.is_integer():
            raise GraphcError(f"{what} must be an integer, got {v}", node.span)
        v = int(v)
    if isinstance(v, Dim):
        raise GraphcError(f"{what} must be a fixed integer, not the symbolic dim '{v}'", node.span)
    _check_range(v, node.span, what, lo, hi)
    if abs(v) > MAX_INT:
        # an unbounded width would reach numpy/ONNX as an int64 overflow, or as a
        # parameter tensor nobody can allocate; refuse it here, located
        raise GraphcError(f"{what} is absurdly large: {v} (the limit is {MAX_INT})", node.span)
    return v


def _check_range(v, span: Span, what: str, lo, hi) -> None:
    if lo is not None and v < lo:
        raise GraphcError(f"{what} must be at least {lo}, got {v}", span)
    if hi is not None and v > hi:
        raise GraphcError(f"{what} must be at most {hi}, got {v}", span)


def eval_shape(node: Node, env: Env, what: str, allow_minus_one: bool = False) -> tuple[Dim, ...]:
    if not node.is_list:
        raise GraphcError(f"{what} must be a list of dims, e.g. [batch, seq, 512], not {node.type_name()}", node.span)
    out = []
    for item in node.value:
        if isinstance(item.value, str) and item.value.isidentifier() and item.value not in env.dims \
                and item.value not in env.params:
            raise GraphcError(f"unknown dim '{item.value}' in {what}", item.span,
                              hint=did_you_mean(item.value, env.names()) or
                              f"declare it under 'dims:' (e.g. dims: [{item.value}])")
        v = eval_number(item, env, f"each dim of {what}", allow_dims=True)
        if isinstance(v, float):
            raise GraphcError(f"dims must be integers, got {v}", item.span)
        if isinstance(v, int) and v > MAX_DIM:
            raise GraphcError(f"dim {v} is absurdly large (limit {MAX_DIM})", item.span)
        if isinstance(v, int) and v < -MAX_DIM:
            raise GraphcError(f"dims must be positive, got {v}", item.span)
        d = v if isinstance(v, Dim) else Dim.const(v)
        if not d.is_const and all(c <= 0 for c in d.terms.values()):
            raise GraphcError(f"dims must be positive, but '{d}' is never positive", item.span)
        if d.is_const:
            if d.value == -1 and allow_minus_one:
                pass
            elif d.value <= 0:
                raise GraphcError(f"dims must be positive, got {d.value}", item.span,
                                  hint="-1 (infer this dim) is allowed only in a reshape target" if d.value < 0 else None)
            elif d.value > MAX_DIM:
                raise GraphcError(f"dim {d.value} is absurdly large (limit {MAX_DIM})", item.span)
        elif any(abs(c) > MAX_DIM for c in d.terms.values()):
            # 'seq * 2**67' is never a real axis: at any size of seq it is past the limit
            big = max(abs(c) for c in d.terms.values())
            raise GraphcError(f"dim '{item.value}' has a factor {big}, absurdly large (limit {MAX_DIM})", item.span)
        out.append(d)
    return tuple(out)


def eval_arg(param, node: Node, env: Env, where: str) -> Any:
    what = f"'{param.name}' of {where}"
    t = param.type
    if node.value is None:
        if param.required:
            raise GraphcError(f"{what} is required", node.span)
        return param.default
    if t == "int":
        return eval_int(node, env, what, param.min, param.max)
    if t == "float":
        v = eval_number(node, env, what)
        if isinstance(v, Dim):
            raise GraphcError(f"{what} must be a number, not a dim", node.span)
        v = float(v)
        _check_range(v, node.span, what, param.min, param.max)
        return v
    if t == "bool":
        v = node.value
        if isinstance(v, str) and isinstance(env.params.get(v), bool):
            v = env.params[v]
        if not isinstance(v, bool):
            raise GraphcError(f"{what} must be true or false, not {node.type_name()}", node.span)
        return v
    if t == "str":
        v = node.value
        if isinstance(v, str) and isinstance(env.params.get(v), str):
            v = env.params[v]
        if not isinstance(v, str):
            raise GraphcError(f"{what} must be text, not {node.type_name()}", node.span)
        if param.choices and v not in param.choices:
            raise GraphcError(f"{what} must be one of {', '.join(map(str, param.choices))}; got {v!r}", node.span,
                              hint=did_you_mean(v, map(str, param.choices)))
        return v
    if t == "ints":
        if not node.is_list:
            raise GraphcError(f"{what} must be a list of integers, not {node.type_name()}", node.span)
        return tuple(eval_int(x, env, f"each entry of {what}") for x in node.value)
    if t == "floats":
        if not node.is_list:
            raise GraphcError(f"{what} must be a list of numbers, not {node.type_name()}", node.span)
        out = []
        for x in node.value:
            v = eval_number(x, env, f"each entry of {what}")
            if isinstance(v, Dim):
                raise GraphcError(f"each entry of {what} must be a number, not a dim", x.span)
            out.append(v)
        return tuple(out)
    if t == "shape":
        return eval_shape(node, env, what, allow_minus_one=True)
    raise InternalError(f"unknown parameter type {t!r} for {what}")  # pragma: no cover


def resolve_args(kind, args: Mapping[str, Node], key_spans: Mapping[str, Span], env: Env, where: str,
                 layer_span: Span) -> dict[str, Any]:
    allowed = {p.name: p for p in kind.params}
    for key in args:
        if key not in allowed:
            raise GraphcError(f"unknown argument '{key}' for {where}", key_spans[key],
                              hint=arg_alias_hint(key, allowed) or
                              did_you_mean(key, list(allowed) + ["input", "inputs", "repeat"]) or
                              (f"{kind.kind} takes: {known_list(allowed)}" if allowed else f"{kind.kind} takes no arguments"))
    out: dict[str, Any] = {}
    for name, p in allowed.items():
        if name in args:
            out[name] = eval_arg(p, args[name], env, where)
        elif p.required:
            raise GraphcError(f"{where} needs '{name}'", layer_span, hint=p.doc or None)
        else:
            out[name] = p.default
    return out
