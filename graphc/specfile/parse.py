"""Parse a spec (its located YAML tree) into a :class:`Spec`; reading a file and
the files it includes is graphc.specfile.includes.

Only structure is checked here: known top-level keys, well-formed layers,
blocks, inputs and outputs, hyperparameters evaluated. Layer arguments are
checked against each layer kind's descriptors during expansion.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import GraphcError, Span, did_you_mean, known_list
from ..shapes import Dim, parse_expr
from ..source import Node, load_yaml_text
from .model import BlockDecl, DimDecl, InputDecl, InputRef, LayerDecl, Spec
from .quantize import parse_quantize
from .refs import LAYER_NAME_RE, LAYER_NAME_RULE, REF_RE, extends

FORMAT_VERSION = 1
TOP_KEYS = ("graphc", "name", "doc", "include", "dims", "params", "inputs", "blocks", "layers", "outputs", "quantize",
            "weights", "generation")
LAYER_RESERVED = ("name", "kind", "input", "inputs", "repeat", "first", "doc")
BLOCK_KEYS = ("params", "inputs", "layers", "outputs", "doc")
INPUT_KEYS = ("dtype", "shape", "range", "doc")
SPEC_DTYPES = ("float32", "float16", "int64", "int32", "bool")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_BLOCK_NESTING = 64      # blocks using blocks; real models nest a handful of levels
NAME_RULE = "a name starts with a letter or '_' and goes on with letters, digits or '_'"
# a param string that is meant as arithmetic: an operator, a parenthesis, or a leading digit
_LOOKS_LIKE_EXPR = re.compile(r"[-+*/%()]|^\s*[0-9.]")


def check_keys(node: Node, allowed: Iterable[str], what: str) -> None:
    allowed = tuple(allowed)
    for key, span in node.key_spans.items():
        if key not in allowed:
            raise GraphcError(f"unknown key '{key}' in {what}", span,
                              hint=did_you_mean(key, allowed) or f"allowed keys: {known_list(allowed)}")


def expect_map(node: Node, what: str) -> Node:
    if not node.is_map:
        raise GraphcError(f"{what} must be a mapping, not {node.type_name()}", node.span)
    return node


def expect_list(node: Node, what: str) -> Node:
    if not node.is_list:
        raise GraphcError(f"{what} must be a list, not {node.type_name()}", node.span)
    return node


def expect_name(node: Node, what: str) -> str:
    if not isinstance(node.value, str) or not NAME_RE.match(node.value):
        shown = node.value if node.is_scalar else node.type_name()
        if isinstance(node.value, str) and node.value[:1].isdigit():
            why = "must start with a letter or '_'"
        else:
            why = "must be a name (a letter or '_', then letters, digits or '_')"
        raise GraphcError(f"{what} {why}, got {shown!r}", node.span)
    return node.value


def _expect_plain(name: str, what: str, span: Span) -> None:
    if not NAME_RE.match(name):
        raise GraphcError(f"{what} '{name}' must be a plain name", span, hint=NAME_RULE)


def expect_int(node: Node, what: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(node.value, bool) or not isinstance(node.value, int):
        raise GraphcError(f"{what} must be an integer, not {node.type_name()}", node.span)
    if lo is not None and node.value < lo:
        raise GraphcError(f"{what} must be at least {lo}, got {node.value}", node.span)
    if hi is not None and node.value > hi:
        raise GraphcError(f"{what} must be at most {hi}, got {node.value}", node.span)
    return node.value


def _doc(node: Node | None) -> str:
    if node is None:
        return ""
    if not isinstance(node.value, str):
        raise GraphcError(f"'doc' must be text, not {node.type_name()}", node.span)
    return node.value


def parse_ref(node: Node, what: str, port: str | None = None) -> InputRef:
    if not isinstance(node.value, str) or not REF_RE.match(node.value):
        shown = node.value if node.is_scalar else node.type_name()
        raise GraphcError(f"{what} must name an input or a layer (optionally 'layer.output'), got {shown!r}",
                          node.span)
    return InputRef(node.value, node.span, port)


def _layer_name(node: Node) -> str:
    if isinstance(node.value, str) and "." in node.value and LAYER_NAME_RE.match(node.value):
        return node.value
    try:
        return expect_name(node, "a layer name")
    except GraphcError as exc:
        raise GraphcError(exc.message, exc.span, hint=LAYER_NAME_RULE) from None


def parse_layer(node: Node, where: str) -> LayerDecl:
    expect_map(node, f"a layer in {where}")
    m = node.value
    if "name" not in m:
        raise GraphcError("this layer has no 'name'", node.span,
                          hint="every layer needs a name; it prefixes its parameter names")
    name = _layer_name(m["name"])
    if "kind" not in m:
        raise GraphcError(f"layer '{name}' has no 'kind'", node.span,
                          hint="run 'graphc layers' for the list of layer kinds")
    kind = expect_name(m["kind"], "a layer kind")
    if "input" in m and "inputs" in m:
        raise GraphcError(f"layer '{name}' has both 'input' and 'inputs'", node.key_spans["inputs"])
    refs: list[InputRef] = []
    if "input" in m:
        refs.append(parse_ref(m["input"], "'input'"))
    elif "inputs" in m:
        ins = m["inputs"]
        if ins.is_list:
            refs = [parse_ref(x, "each of 'inputs'") for x in ins.value]
        elif ins.is_map:
            for port, ref in ins.value.items():
                if ref.value is None:
                    continue
                refs.append(parse_ref(ref, f"input '{port}'", port=port))
        else:
            refs.append(parse_ref(ins, "'inputs'"))
    args = {k: v for k, v in m.items() if k not in LAYER_RESERVED}
    spans = {k: s for k, s in node.key_spans.items() if k not in LAYER_RESERVED}
    first, first_spans = {}, {}
    if "first" in m:
        if "repeat" not in m:
            raise GraphcError(f"layer '{name}' has 'first' but no 'repeat'", node.key_spans["first"],
                              hint="first: {arg: value} replaces arguments of copy 0 of a repeated layer")
        f = expect_map(m["first"], "'first' (arguments for copy 0)")
        for key, span in f.key_spans.items():
            if key in LAYER_RESERVED:
                raise GraphcError(f"'first' sets the arguments of copy 0, not '{key}'", span,
                                  hint="copy 0 reads the layer's own input")
        first, first_spans = dict(f.value), dict(f.key_spans)
    return LayerDecl(name, kind, m["name"].span, m["kind"].span, refs, args, spans,
                     m.get("repeat"), _doc(m.get("doc")), first, first_spans)


def parse_layers(node: Node, where: str) -> list[LayerDecl]:
    expect_list(node, f"'layers' of {where}")
    layers = [parse_layer(x, where) for x in node.value]
    seen: dict[str, Span] = {}
    for item, layer in zip(node.value, layers):
        if layer.name in seen:
            # a layer repeated through an alias ('- *L') has the very position of the
            # first: point at the alias instead
            alias = item.alias_span or item.value["name"].alias_span
            notes = [f"first defined at {seen[layer.name]}"]
            if alias is not None:
                notes.append("an alias ('*name') copies the whole layer, its name included")
            raise GraphcError(f"duplicate layer name '{layer.name}'", alias or layer.span, notes=notes,
                              hint="give each layer its own name; 'repeat: N' makes N copies with distinct "
                                   "names" if alias is not None else None)
        for other, span in seen.items():
            shorter, longer = sorted((other, layer.name), key=len)
            if extends(longer, shorter):
                raise GraphcError(f"layer name '{longer}' extends layer name '{shorter}', so '{longer}' could also "
                                  f"mean an output of '{shorter}'", layer.span, notes=[f"'{other}' is at {span}"],
                                  hint="rename one of them")
        seen[layer.name] = layer.span
    return layers


def parse_outputs(node: Node, where: str) -> dict[str, InputRef]:
    out: dict[str, InputRef] = {}
    if node.is_map:
        for key, ref in node.value.items():
            _expect_plain(key, "output name", node.key_spans[key])
            out[key] = parse_ref(ref, f"output '{key}'")
    elif node.is_list:
        for item in node.value:
            r = parse_ref(item, "an output")
            key = r.ref.replace(".", "_")
            if key in out:
                raise GraphcError(f"duplicate output '{key}'", item.use_span)
            out[key] = r
    else:
        raise GraphcError(f"'outputs' of {where} must map output names to layers, e.g. {{y: fc2}}", node.span)
    if not out:
        raise GraphcError(f"{where} declares no outputs", node.span)
    return out


def parse_block(name: str, node: Node, name_span: Span | None = None) -> BlockDecl:
    """``name_span``: where the block's name is written, the place errors about
    the block as a whole (defined twice) point at."""
    expect_map(node, f"block '{name}'")
    check_keys(node, BLOCK_KEYS, f"block '{name}'")
    m = node.value
    params: dict[str, Node] = {}
    pspans: dict[str, Span] = {}
    if "params" in m:
        expect_map(m["params"], f"'params' of block '{name}'")
        for k, v in m["params"].value.items():
            _expect_plain(k, "parameter name", m["params"].key_spans[k])
            params[k], pspans[k] = v, m["params"].key_spans[k]
    inputs: list[tuple[str, Span, bool]] = []
    if "inputs" not in m:
        raise GraphcError(f"block '{name}' has no 'inputs'", node.span)
    ins = m["inputs"]
    if ins.is_list:
        for item in ins.value:
            inputs.append((expect_name(item, "a block input"), item.span, False))
    elif ins.is_map:
        for k, v in ins.value.items():
            _expect_plain(k, "block input name", ins.key_spans[k])
            opt = False
            if v.is_map:
                check_keys(v, ("optional", "doc"), f"block input '{k}'")
                if "optional" in v.value:
                    flag = v.value["optional"]
                    if not isinstance(flag.value, bool):
                        raise GraphcError(f"'optional' of block input '{k}' must be true or false, "
                                          f"not {flag.type_name()}", flag.span)
                    opt = flag.value
            elif v.value is not None and not isinstance(v.value, str):
                raise GraphcError(f"block input '{k}' takes {{optional: true}} or a doc string, "
                                  f"not {v.type_name()}", v.span)
            inputs.append((k, ins.key_spans[k], opt))
    else:
        raise GraphcError(f"'inputs' of block '{name}' must be a list of names", ins.span)
    if "layers" not in m:
        raise GraphcError(f"block '{name}' has no 'layers'", node.span)
    layers = parse_layers(m["layers"], f"block '{name}'")
    if "outputs" not in m:
        raise GraphcError(f"block '{name}' has no 'outputs'", node.span)
    outputs = parse_outputs(m["outputs"], f"block '{name}'")
    return BlockDecl(name, name_span or node.span, params, pspans, inputs, layers, outputs, _doc(m.get("doc")))


def _evaluate_params(node: Node) -> tuple[dict[str, Any], dict[str, Span]]:
    """Hyperparameters, evaluated in order: each may use the ones above it."""
    expect_map(node, "'params'")
    values: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    order = {k: i for i, k in enumerate(node.value)}
    for key, v in node.value.items():
        kspan = node.key_spans[key]
        _expect_plain(key, "parameter name", kspan)
        if isinstance(v.value, str):
            try:
                expr = parse_expr(v.value, v.span)
            except GraphcError as exc:
                if not _LOOKS_LIKE_EXPR.search(v.value):
                    values[key] = v.value   # plain text (an activation name, say)
                else:
                    # meant as arithmetic (an operator, a parenthesis, a leading digit): an
                    # error here, not a text param that fails wherever it is used
                    raise GraphcError(f"parameter '{key}': {exc.message}", v.span,
                                      hint=exc.hint or "a parameter is a number, true/false, text, or an integer "
                                      "expression over the parameters above it (+ - * / // % and parentheses)") \
                        from None
            else:
                names = expr.names()
                # O(len(names)), never O(len(values)) (a set difference with the dict's keys
                # copies them): checking is linear in the number of params (49,000 chained
                # params took 58 s)
                undefined = {n for n in names if n not in values}
                later = [n for n in sorted(undefined) if order.get(n, -1) > order[key]]
                if later:
                    raise GraphcError(f"parameter '{key}' uses '{later[0]}', which is defined below it", v.span,
                                      hint=f"a parameter may only use the parameters above it; move '{later[0]}' "
                                           f"above '{key}'")
                if undefined:
                    missing = sorted(undefined)
                    if len(names) == 1 and expr.tree[0] == "name":
                        values[key] = v.value   # a bare word that names nothing: text
                    else:
                        raise GraphcError(f"unknown name '{missing[0]}' in '{v.value}'", v.span,
                                          hint=did_you_mean(missing[0], values) or
                                          "a parameter may only use parameters defined above it")
                else:
                    for n in sorted(names):
                        if values[n] is None:
                            raise GraphcError(f"'{n}' has no value (it is null), in '{v.value}'", v.span,
                                              hint=f"give '{n}' a number")
                        if isinstance(values[n], (bool, str)):
                            raise GraphcError(f"'{n}' is {values[n]!r}, not a number, in '{v.value}'", v.span)
                    values[key] = expr.evaluate(values.get, v.span, values)
        elif v.is_scalar:
            values[key] = v.value
        else:
            raise GraphcError(f"parameter '{key}' must be a number, a boolean or text, not {v.type_name()}", v.span)
        spans[key] = kspan
    return values, spans


def _parse_dims(node: Node) -> dict[str, DimDecl]:
    dims: dict[str, DimDecl] = {}
    if node.is_list:
        for item in node.value:
            name = expect_name(item, "a dim name")
            if name in dims:
                raise GraphcError(f"duplicate dim '{name}'", item.span)
            dims[name] = DimDecl(name, item.span)
    elif node.is_map:
        for name, v in node.value.items():
            kspan = node.key_spans[name]
            _expect_plain(name, "dim name", kspan)
            example = mx = None
            if v.is_map:
                check_keys(v, ("example", "max", "doc"), f"dim '{name}'")
                if "example" in v.value:
                    example = expect_int(v.value["example"], f"the example size of '{name}'", 1, 1 << 20)
                if "max" in v.value:
                    mx = expect_int(v.value["max"], f"the maximum of '{name}'", 1, 1 << 31)
                if example is not None and mx is not None and example > mx:
                    raise GraphcError(f"the example size of '{name}' ({example}) is above its maximum ({mx})",
                                      v.value["example"].span, hint=f"an example size is at most {mx}")
            elif v.value is not None:
                example = expect_int(v, f"the example size of '{name}'", 1, 1 << 20)
            dims[name] = DimDecl(name, kspan, example, mx)
    else:
        raise GraphcError("'dims' must be a list of names or a mapping of name to example size", node.span)
    return dims


def _range_end(node: Node, params: dict, dims: Iterable[str], what: str) -> int | str:
    """An integer, or an expression over params and dims ('vocab', 'seq + 1').
    Params are substituted now; an end that still names dims is kept as text
    (e.g. 'seq + 1') and evaluated when the dims are known (graphc run --random)."""
    if isinstance(node.value, str):
        dims = set(dims)

        def lookup(n):
            if n in dims:
                return Dim.sym(n)
            v = params.get(n)
            return None if isinstance(v, (bool, str)) else v
        known = {**params, **{d: Dim.sym(d) for d in dims}}
        v = parse_expr(node.value, node.span).evaluate(lookup, node.span, known)
        if isinstance(v, Dim):
            return v.value if v.is_const else str(v)
        if not isinstance(v, int):
            raise GraphcError(f"{what} must be an integer, got {v}", node.span)
        return v
    return expect_int(node, what)


def _parse_inputs(node: Node, params: dict | None = None, dims: Iterable[str] = ()) -> list[InputDecl]:
    params = params or {}
    expect_map(node, "'inputs'")
    out = []
    for name, v in node.value.items():
        kspan = node.key_spans[name]
        _expect_plain(name, "input name", kspan)
        expect_map(v, f"input '{name}'")
        check_keys(v, INPUT_KEYS, f"input '{name}'")
        if "dtype" not in v.value:
            raise GraphcError(f"input '{name}' has no 'dtype'", kspan, hint=f"one of {', '.join(SPEC_DTYPES)}")
        dt = v.value["dtype"]
        if not isinstance(dt.value, str) or dt.value not in SPEC_DTYPES:
            shown = repr(dt.value) if dt.is_scalar else dt.type_name()
            raise GraphcError(f"unknown dtype {shown} for input '{name}'", dt.span,
                              hint=did_you_mean(str(dt.value), SPEC_DTYPES) or f"one of {', '.join(SPEC_DTYPES)}")
        if "shape" not in v.value:
            raise GraphcError(f"input '{name}' has no 'shape'", kspan, hint="e.g. shape: [batch, seq, 512]")
        shape = expect_list(v.value["shape"], f"the shape of '{name}'")
        rng = None
        if "range" in v.value:
            r = expect_list(v.value["range"], f"the range of '{name}'")
            if len(r.value) != 2:
                raise GraphcError("'range' is [low, high) for random integer inputs", r.span)
            lo, hi = (_range_end(x, params, dims, f"the range of '{name}'") for x in r.value)
            if isinstance(lo, int) and isinstance(hi, int) and hi <= lo:
                raise GraphcError(f"the range of '{name}' is empty: [{lo}, {hi})", r.span)
            rng = (lo, hi)
        out.append(InputDecl(name, kspan, dt.value, shape.value, rng, _doc(v.value.get("doc"))))
    return out


def check_version(root: Node, what: str, required: bool) -> Any:
    m = root.value
    if "graphc" not in m:
        if not required:
            return None
        raise GraphcError(f"{what} has no format version", root.span,
                          hint=f"start the file with 'graphc: {FORMAT_VERSION}'")
    version = m["graphc"]
    if isinstance(version.value, (str, float)) and not isinstance(version.value, bool) \
            and str(version.value).strip() in (str(FORMAT_VERSION), f"{FORMAT_VERSION}.0"):
        raise GraphcError(f"the format version must be the integer {FORMAT_VERSION}, not {version.type_name()} "
                          f"{version.value!r}", version.span, hint=f"write 'graphc: {FORMAT_VERSION}', without quotes")
    if isinstance(version.value, bool) or not isinstance(version.value, int) or version.value != FORMAT_VERSION:
        shown = repr(version.value) if version.is_scalar else version.type_name()
        raise GraphcError(f"unsupported spec format version {shown}", version.span,
                          hint=f"this graphc reads format version {FORMAT_VERSION} (write 'graphc: {FORMAT_VERSION}')")
    return version.value


def parse_spec_text(text: str, path: str = "<spec>") -> Spec:
    """Parse a spec held in memory (no includes relative to a file; a spec file
    and its includes are read by graphc.specfile.includes.load_spec)."""
    root = load_yaml_text(text, path)
    expect_map(root, "a spec")
    if "include" in root.value:
        raise GraphcError("includes need a spec file on disk", root.key_spans["include"])
    return build_spec(root, parse_blocks(root), path, [(path, text)])


def parse_blocks(root: Node) -> dict[str, BlockDecl]:
    """The blocks a file defines itself (its ``blocks:``), parsed; {} if none.
    Included files' blocks are merged by graphc.specfile.includes."""
    if "blocks" not in root.value:
        return {}
    from ..layers import LAYERS
    b = expect_map(root.value["blocks"], "'blocks'")
    own: dict[str, BlockDecl] = {}
    for name, body in b.value.items():
        _expect_plain(name, "block name", b.key_spans[name])
        if name in LAYERS:
            # a layer 'kind: linear' would read the built-in kind, and the block's own
            # layers would never run: the spec is refused where the block is named
            raise GraphcError(f"block '{name}' has the name of a built-in layer kind", b.key_spans[name],
                              hint=f"rename the block (e.g. '{name}_block'); 'graphc layers {name}' "
                                   f"documents the built-in kind")
        own[name] = parse_block(name, body, b.key_spans[name])
    return own


def build_spec(root: Node, blocks: dict[str, BlockDecl], path: str, texts: list[tuple[str, str]]) -> Spec:
    expect_map(root, "a spec")
    check_keys(root, TOP_KEYS, "the spec")
    m = root.value
    version = check_version(root, "the spec", required=True)
    name = expect_name(m["name"], "the spec name") if "name" in m else Path(path).stem.replace("-", "_")
    dims = _parse_dims(m["dims"]) if "dims" in m else {}
    params, pspans = _evaluate_params(m["params"]) if "params" in m else ({}, {})
    for k in params:
        if k in dims:
            raise GraphcError(f"'{k}' is both a dim and a parameter", pspans[k])
    if "inputs" not in m:
        raise GraphcError("the spec has no 'inputs'", root.span, hint="e.g. inputs: {x: {dtype: float32, shape: [batch, 784]}}")
    inputs = _parse_inputs(m["inputs"], params, dims)
    if "layers" not in m:
        raise GraphcError("the spec has no 'layers'", root.span)
    layers = parse_layers(m["layers"], "the spec")
    if "outputs" not in m:
        raise GraphcError("the spec has no 'outputs'", root.span, hint="e.g. outputs: {y: last_layer}")
    outputs = parse_outputs(m["outputs"], "the spec")
    digest = hashlib.sha256()
    for _, t in texts:
        # the texts only, not the file names: the same spec under another name builds the
        # same bytes (an include's name is in the text that includes it)
        data = t.encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    _check_outputs_against_inputs(m["outputs"], outputs, inputs)
    _check_block_nesting(layers, blocks)
    spec = Spec(path, name, version, dims, params, pspans, inputs, blocks, layers, outputs, root.span,
                _doc(m.get("doc")), [p for p, _ in texts], digest.hexdigest())
    if "quantize" in m:
        spec.quantize = parse_quantize(m["quantize"])
    if "weights" in m:
        from ..weights_map import parse_weights_section     # how a checkpoint's names become the parameters'
        spec.weights = parse_weights_section(m["weights"])
    if "generation" in m:
        from .generation import parse_generation          # how the model generates (--kv-cache)
        spec.generation = parse_generation(m["generation"], inputs, outputs)
    return spec


def _check_outputs_against_inputs(node: Node, outputs: dict[str, InputRef], inputs: list[InputDecl]) -> None:
    """ONNX needs distinct input and output names: the culprit is the output's
    name (its key), not the layer it names."""
    names = {d.name for d in inputs}
    for public, ref in outputs.items():
        if public in names:
            span = node.key_spans.get(public, ref.span) if node.is_map else ref.span
            raise GraphcError(f"output '{public}' has the name of an input", span,
                              hint="ONNX needs distinct input and output names; rename the output")


def _check_block_nesting(layers: list[LayerDecl], blocks: dict[str, BlockDecl]) -> None:
    """Refuse blocks nested deeper than MAX_BLOCK_NESTING, at the use that crosses
    the limit, before the (recursive) expansion would run out of stack. Cycles
    are left to the expansion, which names them."""
    if not blocks:
        return
    depth: dict[str, int] = {}          # levels of blocks in the deepest chain from a block, itself included
    for start in blocks:
        if start in depth:
            continue
        gray = {start}
        stack = [(start, iter(blocks[start].layers))]
        while stack:
            name, it = stack[-1]
            for layer in it:
                kid = layer.kind
                if kid in blocks and kid not in depth and kid not in gray:
                    gray.add(kid)
                    stack.append((kid, iter(blocks[kid].layers)))
                    break
            else:
                stack.pop()
                gray.discard(name)
                depth[name] = 1 + max((depth.get(layer.kind, 0) for layer in blocks[name].layers
                                       if layer.kind in blocks), default=0)
    for top in layers:
        if top.kind not in blocks or depth[top.kind] <= MAX_BLOCK_NESTING:
            continue
        use, level, chain = top, 1, [top.kind]
        while level <= MAX_BLOCK_NESTING:
            inner = [layer for layer in blocks[use.kind].layers if layer.kind in blocks]
            use = max(inner, key=lambda layer: depth[layer.kind])
            level += 1
            chain.append(use.kind)
        raise GraphcError(f"blocks are nested more than {MAX_BLOCK_NESTING} deep: block '{chain[-2]}' uses "
                          f"block '{use.kind}' at level {level}", use.kind_span,
                          notes=[f"the chain starts at layer '{top.name}' ({top.span}): "
                                 f"{' -> '.join(chain[:3])} -> ... -> {' -> '.join(chain[-2:])}"],
                          hint="real models nest blocks a few levels deep; flatten the chain")
