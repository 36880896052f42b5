"""JSON Schema (draft-07) of the spec format, generated from the parser's key
lists and the layer registry's ``Param`` descriptors.

Why generated: editors with YAML language support (yaml-language-server in VS
Code, Neovim, JetBrains, Helix) validate and complete specs from a schema; if
the schema were written by hand it would lag behind every new layer kind.
Draft-07 because it is the draft yaml-language-server supports fully.

The schema is deliberately *looser* than graphc itself, never stricter: a
spec that compiles must validate. So every number may also be a string (a
hyperparameter name or an expression like ``d_model / heads``), ``bool`` and
``str`` parameters may name a hyperparameter, and a ``kind`` that is not a
built-in may be a user block (whose arguments the schema cannot know).
Shape errors, unknown names and the like are left to ``graphc check``.
"""
from __future__ import annotations

import json
from typing import Any

from .errors import InternalError
from .layers import LAYERS, LayerKind, Param
from .layer_docs import param_allowed, param_default, param_type, yaml_literal
from .specfile.quantize import quantize_schema
from .specfile.refs import LAYER_NAME_RE
from .specfile.parse import (BLOCK_KEYS, FORMAT_VERSION, INPUT_KEYS, LAYER_RESERVED, NAME_RE, REF_RE, SPEC_DTYPES,
                         TOP_KEYS)

MAX_EXAMPLE_DIM = 1 << 20
MAX_DIM = 1 << 31

_EXPR = {"type": "string", "minLength": 1,
         "description": "a hyperparameter name or an arithmetic expression, e.g. d_model / heads"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/definitions/{name}"}


def _numeric(json_type: str, p: Param | None = None) -> dict:
    num: dict[str, Any] = {"type": json_type}
    if p is not None and p.min is not None:
        num["minimum"] = p.min
    if p is not None and p.max is not None:
        num["maximum"] = p.max
    return {"anyOf": [num, _ref("expr")]}


def param_schema(p: Param) -> dict:
    """One layer argument. Mirrors graphc.specfile.args.eval_arg's acceptance."""
    t = p.type
    if t == "int":
        s = _numeric("integer", p)
    elif t == "float":
        s = _numeric("number", p)
    elif t == "bool":
        s = {"anyOf": [{"type": "boolean"}, _ref("param_name")]}
    elif t == "str":
        if p.choices:
            # a choice, or the name of a hyperparameter holding one
            s = {"anyOf": [{"enum": list(p.choices)}, _ref("param_name")]}
        else:
            s = {"type": "string"}
    elif t == "ints":
        s = {"type": "array", "items": _numeric("integer")}
    elif t == "floats":
        s = {"type": "array", "items": {"anyOf": [{"type": "number"}, _ref("expr")]}}
    elif t == "shape":
        s = {"type": "array", "items": {"anyOf": [{"type": "integer"}, _ref("expr")]}}
    else:   # a type added to Param later: accept anything rather than reject valid specs
        s = {}
    if not p.required and "anyOf" in s:
        s["anyOf"].append({"type": "null"})
    elif not p.required and s:
        s = {"anyOf": [s, {"type": "null"}]}
    s["description"] = _param_description(p)
    if not p.required and p.default is not None and isinstance(p.default, (bool, int, float, str)):
        s["default"] = p.default
    return s


def _param_description(p: Param) -> str:
    bits = [param_type(p), "required" if p.required else f"default {param_default(p)}"]
    allowed = param_allowed(p)
    if allowed:
        bits.append(f"allowed: {allowed}")
    return f"{p.doc} ({'; '.join(bits)})" if p.doc else f"({'; '.join(bits)})"


def kind_schema(kind: LayerKind) -> dict:
    """The keys one built-in kind accepts: the reserved layer keys plus its params."""
    props: dict[str, Any] = {k: True for k in LAYER_RESERVED}
    for p in kind.params:
        props[p.name] = param_schema(p)
    ports = [p.name for p in kind.inputs]
    lists: dict[str, Any] = {"type": "array"}
    if not kind.variadic:
        lists["maxItems"] = len(ports)
    props["inputs"] = {"anyOf": [{"type": "string"}, lists,
                                 {"type": "object", "propertyNames": {"enum": ports}}]}
    s: dict[str, Any] = {
        "description": f"{kind.kind}: {kind.summary}",
        "properties": props,
        "additionalProperties": False,
    }
    required = [p.name for p in kind.params if p.required]
    if required:
        s["required"] = required
    return s


def _kind_enum() -> dict:
    options = [{"const": k.kind, "description": k.summary} for k in LAYERS.values()]
    options.append({"type": "string", "pattern": NAME_RE.pattern,
                    "description": "a block defined under 'blocks:' here or in an included file"})
    return {"description": "a built-in layer kind ('graphc layers' lists them) or a block's name",
            "anyOf": options}


def _layer_def() -> dict:
    port_map = {"type": "object", "propertyNames": {"pattern": NAME_RE.pattern},
                "additionalProperties": {"anyOf": [_ref("ref"), {"type": "null"}]}}
    return {
        "type": "object",
        "description": "one layer: a name, a kind, its inputs and the kind's arguments",
        "required": ["name", "kind"],
        "properties": {
            "name": {"type": "string", "pattern": LAYER_NAME_RE.pattern,
                     "description": "the layer's name; prefixes its parameter names (dotted segments allowed: "
                                    "block.0.layer.1)"},
            "kind": _kind_enum(),
            "input": {**_ref("ref"), "description": "the one input: an input, a layer, or layer.output"},
            "inputs": {"description": "several inputs: a list (in port order) or a mapping port -> value",
                       "anyOf": [_ref("ref"), {"type": "array", "items": _ref("ref")}, port_map]},
            "repeat": {"description": "stack N copies with distinct weights, each feeding the next",
                       "anyOf": [{"type": "integer", "minimum": 1}, _ref("expr")]},
            "first": {"type": "object", "description": "with repeat: arguments that replace the layer's own for "
                                                       "copy 0 (e.g. first: {bias: false})"},
            "doc": {"type": "string"},
        },
        "not": {"required": ["input", "inputs"]},
        "allOf": [{"if": {"properties": {"kind": {"const": k.kind}}, "required": ["kind"]},
                   "then": _ref(f"kind_{k.kind}")} for k in LAYERS.values()],
    }


def _top_properties() -> dict:
    scalar = {"type": ["number", "string", "boolean", "null"]}
    dim_value = {"anyOf": [
        {"type": "null"},
        {"type": "integer", "minimum": 1, "maximum": MAX_EXAMPLE_DIM, "description": "example size (for --random)"},
        {"type": "object", "additionalProperties": False, "properties": {
            "example": {"type": "integer", "minimum": 1, "maximum": MAX_EXAMPLE_DIM},
            "max": {"type": "integer", "minimum": 1, "maximum": MAX_DIM},
            "doc": {"type": "string"}}}]}
    input_decl = {
        "type": "object", "additionalProperties": False, "required": ["dtype", "shape"],
        "properties": {
            "dtype": {"enum": list(SPEC_DTYPES)},
            "shape": {"type": "array", "description": "dims: integers, dim names or expressions",
                      "items": {"anyOf": [{"type": "integer", "minimum": 1}, _ref("expr")]}},
            "range": {"type": "array", "minItems": 2, "maxItems": 2,
                      "items": {"anyOf": [{"type": "integer"}, _ref("expr")]},
                      "description": "[low, high) for random integer inputs; ends may use params (vocab)"},
            "doc": {"type": "string"},
        }}
    if set(input_decl["properties"]) != set(INPUT_KEYS):   # pragma: no cover - caught by the tests
        raise InternalError("schema input keys differ from graphc.specfile.parse.INPUT_KEYS")
    return {
        "graphc": {"const": FORMAT_VERSION, "description": f"spec format version (this graphc reads {FORMAT_VERSION})"},
        "name": {**_ref("name"), "description": "the model's name (default: the file name)"},
        "doc": {"type": "string", "description": "what the model is"},
        "include": {"description": "files whose blocks this spec uses (relative to this file)",
                    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "dims": {"description": "symbolic dims (batch, seq): a list of names, or name -> example size",
                 "anyOf": [{"type": "array", "items": _ref("name")},
                           {"type": "object", "propertyNames": {"pattern": NAME_RE.pattern},
                            "additionalProperties": dim_value}]},
        "params": {"description": "hyperparameters; each may use the ones above it",
                   "type": "object", "propertyNames": {"pattern": NAME_RE.pattern},
                   "additionalProperties": scalar},
        "inputs": {"description": "the model's inputs: name -> {dtype, shape}",
                   "type": "object", "propertyNames": {"pattern": NAME_RE.pattern},
                   "additionalProperties": input_decl},
        "blocks": {"description": "reusable sub-graphs, used as layer kinds",
                   "type": "object", "propertyNames": {"pattern": NAME_RE.pattern},
                   "additionalProperties": _ref("block")},
        "layers": _ref("layers"),
        "outputs": _ref("outputs"),
        "quantize": quantize_schema(),
        "weights": _weights_def(),
        "generation": _generation_def(),
    }


def _weights_def() -> dict:
    names = {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]}
    ints = {"type": "array", "items": {"type": "integer"}}
    rule = {"type": "object", "additionalProperties": False, "required": ["from", "to"], "properties": {
        "from": {**names, "description": "checkpoint tensor name pattern(s): '*' one segment, '**' several; "
                                         "several are concatenated"},
        "to": {**names, "description": "spec parameter name(s); {1} is what the first wildcard matched; "
                                       "several split the tensor"},
        "transpose": {"type": "boolean", "description": "transpose 2-D sources first ([in, out] -> [out, in])"},
        "axis": {"type": "integer", "minimum": 0, "description": "concatenation axis (default 0)"},
        "rows": {**ints, "minItems": 2, "maxItems": 2, "description": "[start, end) rows to keep"},
        "reshape": {**ints, "description": "target shape (one -1 allowed)"},
        "split": {**ints, "description": "row counts of the targets (default: equal parts)"},
        "doc": {"type": "string"}}}
    return {"description": "how a checkpoint's tensors load: names to ignore, and a weight map",
            "type": "object", "additionalProperties": False, "properties": {
                "ignore": {**names, "description": "tensor name patterns to drop (with a note)"},
                "map": {"type": "array", "items": rule, "description": "rules, applied in order"},
                "doc": {"type": "string"}}}


def _generation_def() -> dict:
    from .specfile.generation import GENERATION_KEYS, LOGITS_KINDS, SOURCE_MASK_ROLES
    token_id = {"type": "integer", "minimum": 0}
    props = {
        "tokens": {**_ref("name"), "description": "the int [batch, seq] input carrying the generated tokens"},
        "tokens_mask": {**_ref("name"), "description": "the tokens' int [batch, seq] padding mask input (1 = real "
                        "token); in a --kv-cache build the bundle's attention_mask"},
        "source": {**_ref("name"), "description": "encoder-decoder models: the encoder's int [batch, src_seq] input"},
        "source_masks": {"type": "object", "description": "other source inputs: name -> role",
                         "propertyNames": {"pattern": NAME_RE.pattern},
                         "additionalProperties": {"enum": list(SOURCE_MASK_ROLES)}},
        "logits": {**_ref("name"), "description": "the [batch, seq, vocab] output scored at each step"},
        "logits_kind": {"enum": list(LOGITS_KINDS),
                        "description": "default: log_probs when the output is a log_softmax layer, else logits"},
        "bos": {"anyOf": [token_id, {"type": "null"}], "description": "beginning-of-sequence id"},
        "eos": {"anyOf": [token_id, {"type": "array", "items": token_id, "minItems": 1}],
                "description": "end-of-sequence id(s): a row stops when it produces one"},
        "pad": {**token_id, "description": "the padding id"},
        "decoder_start": {**token_id, "description": "encoder-decoder: the decoder's first token (default bos)"},
        "doc": {"type": "string"},
    }
    if set(props) != set(GENERATION_KEYS):   # pragma: no cover - caught by the tests
        raise InternalError("schema generation keys differ from graphc.specfile.generation.GENERATION_KEYS")
    return {"type": "object", "additionalProperties": False, "required": ["tokens", "logits", "pad"],
            "description": "how the model generates (graphc build --kv-cache; docs/generation.md)",
            "properties": props}


def _block_def() -> dict:
    props = {
        "params": {"type": "object", "description": "block parameters with defaults (null = required)",
                   "propertyNames": {"pattern": NAME_RE.pattern},
                   "additionalProperties": {"type": ["number", "string", "boolean", "null"]}},
        "inputs": {"description": "input names, or name -> {optional, doc}",
                   "anyOf": [{"type": "array", "items": _ref("name")},
                             {"type": "object", "propertyNames": {"pattern": NAME_RE.pattern},
                              "additionalProperties": {"anyOf": [
                                  {"type": "null"}, {"type": "string", "description": "what the input is"},
                                  {"type": "object", "additionalProperties": False,
                                   "properties": {"optional": {"type": "boolean"}, "doc": {"type": "string"}}}]}}]},
        "layers": _ref("layers"),
        "outputs": _ref("outputs"),
        "doc": {"type": "string"},
    }
    if set(props) != set(BLOCK_KEYS):   # pragma: no cover - caught by the tests
        raise InternalError("schema block keys differ from graphc.specfile.parse.BLOCK_KEYS")
    return {"type": "object", "additionalProperties": False, "required": ["inputs", "layers", "outputs"],
            "properties": props}


def spec_schema() -> dict:
    """The whole schema as a dict. Deterministic for a given registry."""
    props = _top_properties()
    if set(props) != set(TOP_KEYS):   # pragma: no cover - caught by the tests
        raise InternalError("schema top-level keys differ from graphc.specfile.parse.TOP_KEYS")
    definitions: dict[str, Any] = {
        "name": {"type": "string", "pattern": NAME_RE.pattern},
        "ref": {"type": "string", "pattern": REF_RE.pattern,
                "description": "an input, a layer, or layer.output (e.g. rnn.h_n)"},
        "expr": _EXPR,
        "param_name": {"type": "string", "pattern": NAME_RE.pattern,
                       "description": "the name of a hyperparameter holding the value"},
        "layer": _layer_def(),
        "layers": {"type": "array", "items": _ref("layer"), "description": "the layers, wired by name"},
        "outputs": {"description": "name -> layer (or layer.output), or a list of layers",
                    "anyOf": [{"type": "object", "minProperties": 1, "propertyNames": {"pattern": NAME_RE.pattern},
                               "additionalProperties": _ref("ref")},
                              {"type": "array", "minItems": 1, "items": _ref("ref")}]},
        "block": _block_def(),
    }
    for k in LAYERS.values():
        definitions[f"kind_{k.kind}"] = kind_schema(k)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": f"graphc model spec (format {FORMAT_VERSION})",
        "description": "A graphc YAML spec. Generated from graphc's layer registry by 'graphc schema'.",
        "type": "object",
        "additionalProperties": False,
        "required": ["graphc", "inputs", "layers", "outputs"],
        "properties": props,
        "definitions": definitions,
    }


def schema_json() -> str:
    """The schema as stable text: sorted keys, two-space indent, final newline."""
    return json.dumps(spec_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


__all__ = ["spec_schema", "schema_json", "param_schema", "kind_schema", "yaml_literal"]
