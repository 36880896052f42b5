"""The model contract: what graphc records in an ONNX file's metadata for
`graphc run` (dims' example sizes, integer inputs' ranges, run-time limits,
which inputs are sequence lengths), written and read here and nowhere else.

Written by graphc, but read from a file: another tool, an editor or a damaged
copy may have changed it, so every entry is validated on the way in (types,
sizes, expressions that parse) and a malformed one is a clear user error
naming the entry, never an internal error deep in a check. A model with no
graphc metadata (from another exporter) has an empty contract.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import GraphcError

DIM_EXAMPLES = "graphc.dim_examples"
INPUT_RANGES = "graphc.input_ranges"
RUN_LIMITS = "graphc.run_limits"
SEQUENCE_LENGTHS = "graphc.sequence_lengths"
LIMIT_KINDS = ("dim_max", "ids", "steps")

MAX_ENTRY_CHARS = 1 << 20      # a metadata value graphc wrote is kilobytes at most
MAX_SIZE = 1 << 31             # graphc.specfile.args.MAX_DIM: no axis or example is larger
MAX_INT = 1 << 63              # ranges of int64 inputs
MAX_EXPR_CHARS = 256           # graphc.shapes.expr's own limit


@dataclass(frozen=True)
class Contract:
    dim_examples: dict[str, int] = field(default_factory=dict)
    input_ranges: dict[str, tuple[int | str, int | str]] = field(default_factory=dict)
    run_limits: dict[str, dict[str, tuple[int | str, str]]] = field(default_factory=dict)
    sequence_lengths: tuple[str, ...] = ()


class _Bad(Exception):
    pass


def _json(meta: Mapping[str, str], key: str) -> Any:
    text = meta.get(key)
    if text is None or text == "":
        return None
    if not isinstance(text, str) or len(text) > MAX_ENTRY_CHARS:
        raise _Bad(f"is longer than {MAX_ENTRY_CHARS} characters")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Bad(f"is not valid JSON ({str(exc)[:80]})") from None


def _kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _object(v, what: str) -> dict:
    if not isinstance(v, dict):
        raise _Bad(f"{what} must be an object, not {_kind(v)}")
    for k in v:
        if not k or len(k) > MAX_EXPR_CHARS:
            raise _Bad(f"{what} has a key of {len(k)} characters")
    return v


def _int(v, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"{what} must be an integer, not {_kind(v)}")
    if not lo <= v <= hi:
        raise _Bad(f"{what} is {v}, outside [{lo}, {hi}]")
    return v


def _int_or_expr(v, what: str) -> int | str:
    if isinstance(v, str):
        from ..shapes import parse_expr
        if len(v) > MAX_EXPR_CHARS:
            raise _Bad(f"{what} is an expression of {len(v)} characters")
        try:
            parse_expr(v)
        except GraphcError as exc:
            raise _Bad(f"{what} '{v}' is not an expression over dims ({exc.message})") from None
        return v
    return _int(v, -MAX_INT, MAX_INT, what)


def _dim_examples(meta) -> dict[str, int]:
    data = _json(meta, DIM_EXAMPLES)
    if data is None:
        return {}
    return {k: _int(n, 0, MAX_SIZE, f"the example size of '{k}'") for k, n in _object(data, "it").items()}


def _input_ranges(meta) -> dict[str, tuple[int | str, int | str]]:
    data = _json(meta, INPUT_RANGES)
    if data is None:
        return {}
    out = {}
    for name, r in _object(data, "it").items():
        if not isinstance(r, list) or len(r) != 2:
            raise _Bad(f"the range of '{name}' must be a list [low, high], not {_kind(r)}"
                       + (f" of {len(r)}" if isinstance(r, list) else ""))
        out[name] = (_int_or_expr(r[0], f"the low end for '{name}'"), _int_or_expr(r[1], f"the high end for '{name}'"))
    return out


def _run_limits(meta) -> dict[str, dict[str, tuple[int | str, str]]]:
    data = _json(meta, RUN_LIMITS)
    if data is None:
        return {}
    out: dict[str, dict[str, tuple[int | str, str]]] = {}
    for kind, entries in _object(data, "it").items():
        if kind not in LIMIT_KINDS:
            continue            # a later graphc's kind: not ours to check
        got = {}
        for subject, entry in _object(entries, f"'{kind}'").items():
            if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], str):
                raise _Bad(f"'{kind}' of '{subject}' must be [limit, layer name], not {_kind(entry)}")
            what = f"the '{kind}' limit of '{subject}'"
            if kind == "steps":
                limit = _int_or_expr(entry[0], what)
            elif kind == "dim_max" and isinstance(entry[0], str) and entry[0].isidentifier():
                limit = entry[0]        # another dim (a shared KV buffer's capacity, graphc.ir.kv_cache)
            else:
                limit = _int(entry[0], 0, MAX_INT, what)
            got[subject] = (limit, entry[1][:MAX_EXPR_CHARS])
        out[kind] = got
    return out


def _sequence_lengths(meta) -> tuple[str, ...]:
    text = meta.get(SEQUENCE_LENGTHS, "")
    if not isinstance(text, str) or len(text) > MAX_ENTRY_CHARS:
        raise _Bad("is not a short comma-separated list of input names")
    return tuple(filter(None, text.split(",")))


_READERS = {DIM_EXAMPLES: _dim_examples, INPUT_RANGES: _input_ranges, RUN_LIMITS: _run_limits,
            SEQUENCE_LENGTHS: _sequence_lengths}


def read(meta: Mapping[str, str], source: str = "the model") -> Contract:
    """The validated contract of a model's metadata; a malformed entry is a
    GraphcError naming it (``source``: the model's path, for the message)."""
    values = {}
    for key, reader in _READERS.items():
        try:
            values[key] = reader(meta)
        except _Bad as exc:
            raise GraphcError(f"{source}: its metadata entry '{key}' is malformed: {exc}",
                              hint="the file was edited or written by another tool; rebuild it with graphc build "
                                   "(or remove the graphc.* metadata entries to run it without graphc's checks)") \
                from None
    return Contract(values[DIM_EXAMPLES], values[INPUT_RANGES], values[RUN_LIMITS], values[SEQUENCE_LENGTHS])


def load_run_limits_lenient(text: str | None) -> dict[str, dict[str, list]]:
    """The run limits as record() keeps them while a graph is built (its own
    text, never a file's): kind -> subject -> [limit, layer]."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in LIMIT_KINDS and isinstance(v, dict)}


def encode(dim_examples: Mapping[str, int], input_ranges: Mapping[str, tuple]) -> dict[str, str]:
    """The entries lowering writes for a graph's dims and input ranges."""
    out = {}
    if dim_examples:
        out[DIM_EXAMPLES] = json.dumps(dict(dim_examples), sort_keys=True)
    if input_ranges:
        out[INPUT_RANGES] = json.dumps({k: list(v) for k, v in input_ranges.items()}, sort_keys=True)
    return out


def add_sequence_lengths(metadata: dict[str, str], name: str) -> None:
    known = set(_sequence_lengths(metadata))
    metadata[SEQUENCE_LENGTHS] = ",".join(sorted(known | {name}))


__all__ = ["Contract", "read", "encode", "add_sequence_lengths", "LIMIT_KINDS"]
